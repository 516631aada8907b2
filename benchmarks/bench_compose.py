"""Peak memory of `r1v3 compose` as a multiple of the composed model's size.

    python benchmarks/bench_compose.py [--keep DIR] [--gguf]

Setup (not measured): `r1v3 init smol` as the VLM (InternVL around SmolLM2-135M, float32) and the
SmolLM2 LLM saved as safetensors and brought in with `r1v3 import-model`: two safetensors
inputs of about the output's size, like a 38B VLM composed with a 32B LLM. Measured, each in its
own child process: the peak RSS (getrusage ru_maxrss) of `r1v3 compose --vlm vlm --llm llm`, and
of a child that only imports what compose imports (the floor any run pays: Python, torch,
transformers). Printed: the output's weight bytes (its *.safetensors files), the peak, and both
peak / output and (peak - floor) / output. --gguf also measures `--llm smol` (the packaged GGUF,
which is dequantized in memory as a whole).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}

# each child reports its own peak RSS (KiB on Linux) after doing its work
MEASURE = """
import json, resource, sys
{work}
print(json.dumps({{"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "code": code}}))
"""
RUN_CLI = "from r1v3.cli import main\ncode = main(sys.argv[1:])"
IMPORTS_ONLY = (
    "import torch, transformers\n"
    "from transformers import AutoModelForImageTextToText, AutoModelForCausalLM, AutoTokenizer, AutoProcessor\n"
    "from transformers.models.internvl import modeling_internvl\n"
    "from transformers.models.llama import modeling_llama\n"
    "import r1v3.cli, stages.compose\n"
    "code = 0"
)
SETUP_LLM = """
import sys
from pathlib import Path
from transformers import AutoModelForCausalLM
from r1v3.smol import load_smol_llm
# a GGUF-loaded model refuses save_pretrained: the same weights in a plain model of its config
model, tokenizer = load_smol_llm()
config = model.config
del config.quantization_config
plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype)
plain.load_state_dict(model.state_dict())
plain.generation_config = model.generation_config
plain.save_pretrained(Path(sys.argv[1]))
tokenizer.save_pretrained(Path(sys.argv[1]))
"""


def child(work: str, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE.format(work=work), *args],
        env=ENV, cwd=ROOT, capture_output=True, text=True, check=False,
    )
    if out.returncode != 0:
        sys.exit(f"child failed ({' '.join(args)}):\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["code"] != 0:
        sys.exit(f"r1v3 {' '.join(args)} exited {result['code']}:\n{out.stderr[-3000:]}")
    return result


def cli(store: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "r1v3.cli", "--store", str(store), *args], env=ENV, cwd=ROOT, check=True,
        stdout=subprocess.DEVNULL,
    )


def output_bytes(store: Path, name: str) -> int:
    from r1v3.artifacts import Store

    art = Store(store).resolve(name, kind="model")
    return sum(p.stat().st_size for p in Path(art.path).glob("*.safetensors"))


def measure(store: Path, llm: str, name: str, floor_kib: int) -> None:
    peak = child(RUN_CLI, "--store", str(store), "compose", "--vlm", "vlm", "--llm", llm, "--name", name)
    size = output_bytes(store, name)
    peak_b, floor_b = peak["maxrss_kib"] * 1024, floor_kib * 1024
    print(
        f"compose --llm {llm}: output {size / 2**20:.0f} MiB, peak RSS {peak_b / 2**20:.0f} MiB = "
        f"{peak_b / size:.2f}x output; above the import floor: {(peak_b - floor_b) / 2**20:.0f} MiB = "
        f"{(peak_b - floor_b) / size:.2f}x output"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", type=Path, help="store and LLM directory to reuse between runs (setup once)")
    ap.add_argument("--gguf", action="store_true", help="also measure --llm smol (the packaged GGUF)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_compose_"))
    store = work / "store"
    if not (work / "llm" / "config.json").is_file():
        cli(store, "init", "smol", "--name", "vlm")
        subprocess.run([sys.executable, "-c", SETUP_LLM, str(work / "llm")], env=ENV, cwd=ROOT, check=True)
        cli(store, "import-model", str(work / "llm"), "--name", "llm")
    floor = child(IMPORTS_ONLY)["maxrss_kib"]
    print(f"import floor: {floor * 1024 / 2**20:.0f} MiB")
    measure(store, "llm", "out", floor)
    if args.gguf:
        measure(store, "smol", "out_gguf", floor)


if __name__ == "__main__":
    main()
