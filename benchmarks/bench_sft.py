"""Connector-only SFT vs full SFT: peak memory and time per step, same model, data and steps.

    python benchmarks/bench_sft.py [--steps 8] [--batch-size 4] [--n 200]
                                   [--modes connector,connector+llm,all] [--keep STORE]

Runs the real stages, each in its own process through the CLI: `r1v3 init smol`, `r1v3 data
synth` (short direct-answer conversations), then one `r1v3 sft` per trainable mode with the same
data, seed, batch size and steps. Each sft process reports its own peak RSS (getrusage
ru_maxrss, so model loading counts too: that is what the machine must hold); time per step is
the artifact's `seconds_per_step` (median optimizer step after the first, so model loading, data
measuring, warm-up and saving are left out). Prints a markdown table with ratios against
connector-only, and exits 1 if connector-only is not cheaper in both.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Runs one CLI command in this process, then prints its own peak RSS (Linux: KiB) as the last line.
WRAPPER = (
    "import resource, sys\n"
    "from r1v3.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)\n"
    "sys.exit(code)\n"
)


def cli(argv: list[str], env: dict) -> tuple[str, int]:
    """(stdout, peak RSS in KiB) of `r1v3 ARGV` run in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *argv], env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"r1v3 {shlex.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    peak = next(int(line.split()[1]) for line in proc.stdout.splitlines()[::-1] if line.startswith("PEAK_RSS_KB"))
    return proc.stdout, peak


def manifest(store: Path, name: str) -> dict:
    return json.loads((store / name / "v1" / "manifest.json").read_text())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--n", type=int, default=200, help="synthetic problems (80%% train)")
    ap.add_argument("--modes", default="connector,connector+llm,all", help="trainable parts, first is the baseline")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--keep", default=None, help="store directory to keep (default: a temporary one, removed)")
    args = ap.parse_args(argv)

    store = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-sft-"))
    env = dict(os.environ, R1V3_STORE=str(store), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    started = time.perf_counter()
    try:
        cli(["init", "smol", "--name", "smol"], env)
        cli(["data", "synth", "--name", "probs", "--n", str(args.n), "--seed", "0", "--messages", "direct"], env)
        results = []
        for i, mode in enumerate(modes):
            name = f"sft{i}"
            command = ["sft", "--model", "smol", "--data", "probs", "--name", name, "--trainable", mode,
                    "--lr", str(args.lr), "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
                    "--save-steps", str(10 * args.steps), "--seed", "0"]
            _, peak_kb = cli(command, env)
            m = manifest(store, name)["metrics"]
            results.append(dict(mode=mode, peak_mb=peak_kb / 1024, s_step=m["seconds_per_step"],
                                trainable=m["parameters"]["trainable"], optimizer=m["optimizer_parameters"],
                                tokens=m["tokens_seen"], steps=m["steps"]))
    finally:
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)

    import torch

    base = results[0]
    print(f"\nsmol (InternVL + SmolLM2-135M), {args.steps} steps of batch {args.batch_size} on synthetic direct-answer "
          f"rows, AdamW, float32, torch threads={torch.get_num_threads()}, {os.cpu_count()} CPUs; "
          f"total {time.perf_counter() - started:.0f} s\n")
    print("| trainable | trainable params | peak RSS (MB) | s/step | peak RSS vs connector | s/step vs connector |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['mode']} | {r['trainable'] / 1e6:.2f}M | {r['peak_mb']:.0f} | {r['s_step']:.2f} | "
              f"{r['peak_mb'] / base['peak_mb']:.2f}x | {r['s_step'] / base['s_step']:.2f}x |")
    if any(r["tokens"] != base["tokens"] for r in results):
        print("warning: the runs saw different numbers of tokens", [r["tokens"] for r in results])
    print(f"\ncommand: python benchmarks/bench_sft.py {shlex.join(argv if argv is not None else sys.argv[1:])}".rstrip())
    full = next((r for r in results if r["mode"] == "all"), results[-1])
    return 0 if full["peak_mb"] > base["peak_mb"] and full["s_step"] > base["s_step"] else 1


if __name__ == "__main__":
    sys.exit(main())
