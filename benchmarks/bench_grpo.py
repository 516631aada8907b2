"""Time per GRPO step: `r1v3 rl` vs a bare TRL GRPOTrainer script; rows/s of `r1v3 difficulty` vs
a one-at-a-time generate loop. Tiny InternVL, CPU, one process.

    python benchmarks/bench_grpo.py [--steps 6] [--repeats 3] [--rows 16] [--samples 4]

GRPO: both sides train the same model artifact on the same rows (the eval's reasoning prompt and
the images), with the same group size, batch, completion length, learning rate and rewards
(accuracy + format); runs alternate (ours, bare, bare, ours, ...) and each run's time per step
is the median optimizer step after the first (r1v3's `seconds_per_step`; the same StepTimer
measure on the bare trainer). Reported: the median over repeats and the ratio ours / bare;
exits 1 above 1.05x. Difficulty: the stage's rows/s (generation only, from its metrics) against
generating each sample of each row alone with the same backend and sampling.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from r1v3 import data, families, mmmu, models, rewards, synthetic, training  # noqa: E402
from r1v3.artifacts import Store  # noqa: E402
from stages import difficulty, init_model, rl  # noqa: E402


def setup(store: Store, n_rows: int) -> None:
    init_model.run(init_model.Config(model="tiny", name="tiny", family="internvl"), store)
    rows = synthetic.generate(max(40, 2 * n_rows), seed=0)["train"][:n_rows]
    with store.publish("probs", "dataset", stage="bench") as draft:
        data.write_splits(draft.path, {"train": rows})


def ours(store: Store, i: int, a) -> float:
    cfg = rl.Config(model="tiny", data="probs", name=f"ours{i}", num_generations=a.group, batch_size=a.batch,
                    grad_accum=1, max_new_tokens=a.tokens, learning_rate=1e-4, max_steps=a.steps,
                    save_steps=a.steps)
    return rl.run(cfg, store).metrics["seconds_per_step"]


def bare(store: Store, i: int, a) -> float:
    """A plain TRL script: GRPOConfig, GRPOTrainer, train; nothing of r1v3's training core."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    model, processor = models.load_model(store.resolve("tiny").path)
    families.set_trainable(model, "connector+llm")
    rows = data.read_split(store.resolve("probs").path, "train")
    dataset = rl.to_dataset([rl.example(r, "bench") for r in rows])
    args = GRPOConfig(output_dir=str(store.root / f"bare{i}"), per_device_train_batch_size=a.batch,
                      num_generations=a.group, max_completion_length=a.tokens, learning_rate=1e-4, max_steps=a.steps,
                      beta=0.0, epsilon=0.2, loss_type="grpo", scale_rewards="group", temperature=1.0,
                      lr_scheduler_type="constant", reward_weights=[0.8, 0.2], use_cpu=True, report_to="none",
                      save_strategy="steps", save_steps=a.steps, logging_steps=1, disable_tqdm=True, seed=0)
    ends: list[float] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *_, **__):
            ends.append(time.perf_counter())

        def on_step_end(self, *_, **__):
            ends.append(time.perf_counter())

    built = rewards.build()
    trainer = GRPOTrainer(model=model, args=args, reward_funcs=built.funcs, train_dataset=dataset,
                          processing_class=processor, callbacks=[Timer()])
    trainer.remove_callback(PrinterCallback)  # as r1v3 does: no per-log dict printing in the timed loop
    trainer.train()
    return training.seconds_per_step(ends)


def difficulty_rates(store: Store, a) -> tuple[float, float]:
    from r1v3.generation import Sampling, TransformersBackend

    cfg = difficulty.Config(model="tiny", data="probs", name="rated", samples=a.samples, max_new_tokens=a.tokens,
                            batch_size=a.batch, backend="transformers")
    batched = difficulty.run(cfg, store).metrics["rows_per_second"]
    model, processor = models.load_model(store.resolve("tiny").path)
    backend = TransformersBackend(model, processor, batch_size=1, progress=False)
    rows = data.read_split(store.resolve("probs").path, "train")
    start = time.perf_counter()
    for row in rows:
        request = mmmu.request(row, "reasoning")
        for j in range(a.samples):
            backend.generate_all([request], Sampling(max_new_tokens=a.tokens, temperature=1.0, n=1, first=j))
    return batched, len(rows) / (time.perf_counter() - start)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        store = Store(Path(tmp) / "store")
        setup(store, a.rows)
        times = {"r1v3 rl": [], "bare GRPOTrainer": []}
        for i in range(a.repeats):
            order = [("r1v3 rl", ours), ("bare GRPOTrainer", bare)]
            for label, fn in order if i % 2 == 0 else order[::-1]:
                times[label].append(fn(store, i, a))
                print(f"repeat {i + 1} {label}: {times[label][-1]:.3f} s/step", file=sys.stderr)
        batched, single = difficulty_rates(store, a)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["r1v3 rl"] / med["bare GRPOTrainer"]
    print(f"GRPO, tiny InternVL on CPU: {a.rows} rows, group {a.group}, batch {a.batch}, {a.tokens} new tokens, "
          f"{a.steps} steps x {a.repeats} repeats (alternating)\n")
    print("| run | median s/step | runs |\n|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {med[k]:.3f} | {', '.join(f'{x:.3f}' for x in v)} |")
    print(f"\nr1v3 rl / bare: {ratio:.3f}x (limit 1.05x)\n")
    print(f"| difficulty, {a.samples} samples/row | rows/s |\n|---|---|")
    print(f"| r1v3 difficulty (batched, {a.batch} sequences) | {batched:.2f} |\n| one sample at a time | {single:.2f} |")
    print(f"\nbatched / one at a time: {batched / single:.2f}x")
    return 0 if ratio <= 1.05 else 1


if __name__ == "__main__":
    sys.exit(main())
