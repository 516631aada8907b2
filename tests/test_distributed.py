"""`r1v3 sft` and `r1v3 rl` as 2 CPU processes (DDP over gloo): one artifact is published (by the
main process), it verifies, and for sft its weights are what a single-process run with the same
global batch trains. rl samples with each process's own RNG and a world-size-dependent generation
batch, so its weights are not compared: the run must publish once, every checkpoint must load,
both processes must have scored rollouts at every step, and the metrics must be logged once per step.

The launcher is `accelerate launch --multi_gpu --num_processes 2`: without CUDA it starts the
processes through torch.distributed.run and they meet over gloo on the CPU. (`--cpu` with
`--num_processes 2` starts one process: accelerate's multi-CPU launch goes through mpirun.)
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from r1v3 import data, synthetic

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def r1v3(store: Path, argv: list[str], processes: int = 1, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`r1v3 ARGV` in a fresh interpreter, or under `accelerate launch` with `processes` CPU processes."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    launcher = [sys.executable] if processes == 1 else [
        str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--main_process_port", str(free_port())]
    proc = subprocess.run([*launcher, "-m", "r1v3.cli", "--store", str(store), *argv], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def publish_dataset(store, name, splits):
    with store.publish(name, "dataset", stage="test") as draft:
        data.write_splits(draft.path, splits)
    return draft.artifact


@pytest.fixture(scope="module")
def ready(tmp_path_factory):
    from r1v3.artifacts import Store
    from r1v3.cli import main

    root = tmp_path_factory.mktemp("dist") / "store"
    assert main(["--store", str(root), "init", "tiny", "--name", "tiny", "--family", "internvl"]) == 0
    store = Store(root)
    rows = synthetic.generate(40, seed=0)["train"][:8]
    chat = [dict(r, id=f"s{i}", messages=[
        {"role": "user", "content": r["question"]},
        {"role": "assistant", "content": f"<think>The image shows {r['subject']}.</think>\n\\boxed{{{r['answer']}}}"}])
        for i, r in enumerate(rows)]
    publish_dataset(store, "chat", {"train": chat})
    publish_dataset(store, "probs", {"train": [dict(r, id=f"p{i}") for i, r in enumerate(rows)]})
    return store


def weights(art, rel="model.safetensors") -> dict:
    return load_file(art.file(rel))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def published(store, name: str) -> list[str]:
    return [a.ref for a in store.list() if a.name == name]


# 8 rows, a global batch of 4 (2 processes x 2, or 1 x 4), 2 optimizer steps, one checkpoint
SFT = ["sft", "--model", "tiny", "--data", "chat", "--trainable", "connector+llm", "--lr", "5e-3", "--max-steps", "2",
       "--save-steps", "2"]


def test_sft_two_processes_match_one_with_the_same_global_batch(ready):
    r1v3(ready.root, [*SFT, "--batch-size", "4", "--name", "one"])
    r1v3(ready.root, [*SFT, "--batch-size", "2", "--name", "two"], processes=2)
    assert published(ready, "two") == ["two@v1"]  # the main process alone published
    two = ready.resolve("two", kind="model", verify=True)
    one = ready.resolve("one", kind="model", verify=True)
    assert two.metrics["world_size"] == 2 and one.metrics["world_size"] == 1
    assert two.metrics["steps"] == one.metrics["steps"] == 2
    assert not (ready.root / ".work" / "two").exists()
    base = weights(ready.resolve("tiny"))
    a, b = weights(one), weights(two)
    moved = max_diff(a, base)
    # DDP averages the two halves' gradients: the same update up to float summation order. A real
    # divergence (other rows, a missing all-reduce) moves weights by the order of the update itself.
    assert max_diff(a, b) < 1e-3 * moved, (max_diff(a, b), moved)
    # the tolerance tells runs apart: one process with half the global batch (other rows per step)
    r1v3(ready.root, [*SFT, "--batch-size", "2", "--name", "half"])
    assert max_diff(weights(ready.resolve("half")), b) > 1e-2 * moved
    la = [h["loss"] for h in json.loads(one.file("log_history.json").read_text()) if "loss" in h]
    lb = [h["loss"] for h in json.loads(two.file("log_history.json").read_text()) if "loss" in h]
    assert len(la) == len(lb) == 2 and la == pytest.approx(lb, rel=1e-4)


# records which process scored which step; a reward with a signal, so the weights move
REWARD = """
import json, os


def rank(prompts, completions, trainer_state, **kwargs):
    with open(f"rank-{os.environ.get('RANK', '0')}.jsonl", "a") as f:
        f.write(json.dumps({"step": trainer_state.global_step, "n": len(completions)}) + "\\n")
    return [len(c[0]["content"]) / 10 for c in completions]
"""


def test_rl_two_processes_publish_one_run_both_train(ready, tmp_path):
    (tmp_path / "myreward.py").write_text(REWARD)
    # 2 prompts x group 2 per optimizer step on either layout: 4 per process, or 2 on each of 2
    args = ["rl", "--model", "tiny", "--data", "probs", "--num-generations", "2", "--grad-accum", "1",
            "--max-new-tokens", "4", "--lr", "5e-3", "--max-steps", "2", "--save-steps", "1",
            "--reward", "myreward.py:rank", "--reward-weight", "1", "--name", "rl2", "--batch-size", "2"]
    proc = r1v3(ready.root, args, processes=2, cwd=tmp_path)
    assert published(ready, "rl2") == ["rl2@v1"]
    assert proc.stdout.count("published rl2@v1") == 1, proc.stdout[-2000:]
    art = ready.resolve("rl2", kind="run", verify=True)
    assert art.metrics["world_size"] == 2 and art.metrics["steps"] == 2
    assert [c["step"] for c in art.metrics["checkpoints"]] == [1, 2]
    log = json.loads(art.file("log_history.json").read_text())
    assert [h["step"] for h in log if "reward" in h] == [1, 2]  # once per step, not once per process
    for r in (0, 1):  # each process scored its own 2 completions at steps 0 and 1
        seen = [json.loads(line) for line in (tmp_path / f"rank-{r}.jsonl").read_text().splitlines()]
        assert [(s["step"], s["n"]) for s in seen] == [(0, 2), (1, 2)], (r, seen)
    from r1v3 import models

    base = weights(ready.resolve("tiny"))
    for step in (1, 2):
        models.load_model(art.path / "checkpoints" / f"step-{step}")  # what `rl export` and eval load
        assert max_diff(weights(art, f"checkpoints/step-{step}/model.safetensors"), base) > 0
    assert not (ready.root / ".work" / "rl2").exists()
