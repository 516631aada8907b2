"""Time per GRPO step: `r1v3 rl` vs a bare TRL GRPOTrainer script; rows/s of `r1v3 difficulty` vs
a one-at-a-time generate loop. Tiny InternVL, CPU, one process.

    python benchmarks/bench_grpo.py [--steps 6] [--repeats 3] [--rows 16] [--samples 4]
    python benchmarks/bench_grpo.py --profile [--store DIR --model smol-signal --data rl-problems]
        [--group 8 --batch 16 --tokens 64 --steps 5]

GRPO: both sides train the same model artifact on the same rows (the eval's reasoning prompt and
the images), with the same group size, batch, completion length, learning rate and rewards
(accuracy + format); runs alternate (ours, bare, bare, ours, ...) and each run's time per step
is the median optimizer step after the first (r1v3's `seconds_per_step`; the same StepTimer
measure on the bare trainer). Reported: the median over repeats and the ratio ours / bare;
exits 1 above 1.05x. Difficulty: the stage's rows/s (generation only, from its metrics) against
generating each sample of each row alone with the same backend and sampling.

--profile: where one `r1v3 rl` step's time goes, against the machine's floor. It runs `rl.run` on
the given model and rows (default: the tiny InternVL in a temporary store) with TRL's and
transformers' methods wrapped in timers that count exclusive time (a nested call's time goes to the
nested part): data loading, tokenization and image preprocessing (every processor call), the vision
encoder, generation, rewards, the rest of scoring and collation, policy forward, backward,
gradient clipping, optimizer step, logging and saving, and everything else. The same process
times a float32 `torch.mm` loop before and after training (the machine's matmul rate under the load
of the moment), counts each step's FLOPs (6 x trained parameters x tokens of the policy pass, 2 x
parameters x tokens for generation, prompt and image tokens counted, the frozen vision encoder at
2 x its parameters x patches in both passes) and prints the step as a multiple of that floor.
"""

from __future__ import annotations

import argparse
import functools
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


# ---------------------------------------------------------------------------------------------
# --profile: one GRPO step's parts against the machine's matmul floor


class Clock:
    """Exclusive wall time per label: entering a nested label pauses its parent's clock."""

    def __init__(self) -> None:
        self.stack: list[list] = []
        self.excl: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def enter(self, label: str) -> None:
        now = time.perf_counter()
        if self.stack:
            self.excl[self.stack[-1][0]] = self.excl.get(self.stack[-1][0], 0.0) + now - self.stack[-1][1]
        self.stack.append([label, now])
        self.calls[label] = self.calls.get(label, 0) + 1

    def leave(self) -> None:
        now = time.perf_counter()
        label, since = self.stack.pop()
        self.excl[label] = self.excl.get(label, 0.0) + now - since
        if self.stack:
            self.stack[-1][1] = now

    def snapshot(self) -> dict[str, float]:
        """Totals so far, the running label's time included."""
        now = time.perf_counter()
        if self.stack:
            self.excl[self.stack[-1][0]] = self.excl.get(self.stack[-1][0], 0.0) + now - self.stack[-1][1]
            self.stack[-1][1] = now
        return dict(self.excl)

    def wrap(self, owner, name: str, label: str) -> None:
        fn = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            self.enter(label)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()

        setattr(owner, name, timed)


PARTS = [  # (label, what it is): the table's rows, in step order
    ("data loading", "rows fetched from the Arrow dataset, images decoded to PIL (get_batch_samples)"),
    ("tokenize + image preprocessing", "every processor call: chat template, tokenizer, image processor (3 passes a step for InternVL)"),
    ("vision encoder + connector", "get_image_features, in generation and in the policy forward"),
    ("generation", "model.generate: prefill and decoding, vision encoder excluded"),
    ("rewards", "accuracy + format rewards (_calculate_rewards)"),
    ("scoring and collation, rest", "padding, decoding, advantages, metrics in _generate_and_score_completions"),
    ("policy forward", "compute_loss: LLM forward over prompt + completion, log-probs, loss; vision excluded"),
    ("backward", "accelerator.backward"),
    ("grad norm + clip", "_clip_grad_norm / _get_grad_norm"),
    ("optimizer step", "AdamW step"),
    ("logging and saving", "_maybe_log_save_evaluate (a checkpoint on save steps)"),
    ("everything else", "the trainer loop, callbacks, scheduler, zero_grad"),
]


def matmul_rate(seconds: float = 3.0, n: int = 1024) -> float:
    """float32 FLOP/s of a square torch.mm loop on this process's threads."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        done += 1
    return 2 * n**3 * done / (time.perf_counter() - start)


def _instrument(clock: Clock, record: dict):
    """Wrap the trainer's parts (class-level: rl.run builds its own trainer) and return the callback
    that cuts the clock into steps and counts each step's tokens."""
    import accelerate
    import accelerate.optimizer
    import transformers
    from transformers import TrainerCallback
    from trl import GRPOTrainer

    T, G = transformers.Trainer, GRPOTrainer
    clock.wrap(T, "get_batch_samples", "data loading")
    clock.wrap(G, "_generate_single_turn", "generation")
    clock.wrap(G, "_calculate_rewards", "rewards")
    clock.wrap(G, "_generate_and_score_completions", "scoring and collation, rest")
    clock.wrap(G, "compute_loss", "policy forward")
    clock.wrap(accelerate.Accelerator, "backward", "backward")
    clock.wrap(T, "_clip_grad_norm", "grad norm + clip")
    clock.wrap(T, "_get_grad_norm", "grad norm + clip")
    clock.wrap(accelerate.optimizer.AcceleratedOptimizer, "step", "optimizer step")
    clock.wrap(T, "_maybe_log_save_evaluate", "logging and saving")
    compute_loss = G.compute_loss

    def counting_loss(self, model, inputs, *args, **kwargs):
        record["tokens"].append({
            "prompt": int(inputs["prompt_mask"].sum()), "completion": int(inputs["completion_mask"].sum()),
            "padded": int(inputs["prompt_ids"].numel() + inputs["completion_ids"].numel()),
            "sequences": int(inputs["prompt_ids"].size(0)),
            "pixels": tuple(inputs["pixel_values"].shape) if "pixel_values" in inputs else None})
        return compute_loss(self, model, inputs, *args, **kwargs)

    G.compute_loss = counting_loss

    class Steps(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
            from r1v3 import families

            for obj in (processing_class, getattr(processing_class, "image_processor", None)):
                owner = next(c for c in type(obj).__mro__ if "__call__" in c.__dict__)  # where __call__ is defined
                if not getattr(owner.__dict__["__call__"], "__wrapped__", None):
                    clock.wrap(owner, "__call__", "tokenize + image preprocessing")

            record["threads"] = __import__("torch").get_num_threads()
            parts = families.part_of_parameters(model)
            record["params"] = {k: 0 for k in ("vision", "connector", "llm")}
            for name, p in model.named_parameters():
                record["params"][parts[name]] += p.numel()
            record["trained"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
            vc = model.config.vision_config
            patch = vc.patch_size if isinstance(vc.patch_size, int) else vc.patch_size[0]
            record["patch"] = patch
            inner = model.model if hasattr(model.model, "get_image_features") else model
            clock.wrap(inner, "get_image_features", "vision encoder + connector")
            clock.enter("everything else")
            record["marks"].append(clock.snapshot())

        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step:
                record["marks"].append(clock.snapshot())

        def on_train_end(self, args, state, control, **kwargs):
            record["marks"].append(clock.snapshot())
            clock.leave()

    return Steps()


def step_flops(tokens: dict, record: dict) -> dict:
    """The step's floor in FLOPs: policy 6 x trained x tokens (frozen vision 2 x), generation 2 x."""
    p = record["params"]
    seq = tokens["prompt"] + tokens["completion"]
    patches = 0
    if tokens["pixels"]:
        tiles, _, h, w = tokens["pixels"]
        patches = tiles * (h // record["patch"]) * (w // record["patch"])
    trained_llm = p["llm"] + p["connector"] if record["trained"] >= p["llm"] else record["trained"]
    policy = 6 * trained_llm * seq + 2 * p["vision"] * patches
    generation = 2 * (p["llm"] + p["connector"]) * seq + 2 * p["vision"] * patches
    return {"policy": policy, "generation": generation, "total": policy + generation, "patches": patches}


def profile(a) -> int:
    import torch

    from stages import rl as rl_stage

    clock, record = Clock(), {"tokens": [], "marks": []}
    steps_callback = _instrument(clock, record)
    callbacks = rl_stage._callbacks
    rl_stage._callbacks = lambda *args, **kwargs: callbacks(*args, **kwargs) + [steps_callback]
    with tempfile.TemporaryDirectory(prefix="bench-grpo-") as tmp:
        if a.store:
            store, model, dataset = Store(Path(a.store)), a.model, a.data
        else:
            store, model, dataset = Store(Path(tmp) / "store"), "tiny", "probs"
            setup(store, a.rows)
        rate_before = matmul_rate()
        cfg = rl_stage.Config(model=model, data=dataset, name=a.name, num_generations=a.group, batch_size=a.batch,
                              grad_accum=1, max_new_tokens=a.tokens, learning_rate=a.lr, max_steps=a.steps,
                              save_steps=a.steps, seed=0)
        start = time.perf_counter()
        run = rl_stage.run(cfg, store)
        wall = time.perf_counter() - start
        rate_after = matmul_rate()
    rate = (rate_before + rate_after) / 2
    marks = record["marks"]
    per_step = [{k: b.get(k, 0.0) - a_.get(k, 0.0) for k in b} for a_, b in zip(marks, marks[1:])]
    # the first step pays for warm-up, the last one for the final checkpoint: the middle ones are the steady state
    kept = list(range(1, len(per_step) - 1)) or list(range(len(per_step)))
    mean = {label: statistics.mean(per_step[i].get(label, 0.0) for i in kept) for label, _ in PARTS}
    step = sum(mean.values())
    flops = [step_flops(record["tokens"][i], record) for i in kept]
    floor_flops = statistics.mean(f["total"] for f in flops)
    tok = {k: statistics.mean(record["tokens"][i][k] for i in kept) for k in ("prompt", "completion", "padded", "sequences")}
    p = record["params"]
    print(f"GRPO step profile: {model} ({p['llm'] / 1e6:.1f}M LLM, {p['connector'] / 1e6:.2f}M connector, "
          f"{p['vision'] / 1e6:.2f}M vision; {record['trained'] / 1e6:.1f}M trained), rows {dataset}, group {a.group}, "
          f"{a.batch // a.group} prompts a step, {a.tokens} new tokens, {a.steps} steps (mean of steps "
          f"{kept[0] + 1}-{kept[-1] + 1}), {record['threads']} threads; run {wall:.0f} s, "
          f"r1v3 seconds_per_step {run.metrics['seconds_per_step']}\n")
    print(f"tokens per step: {tok['sequences']:.0f} sequences, {tok['prompt']:.0f} prompt (image tokens included) + "
          f"{tok['completion']:.0f} completion = {tok['prompt'] + tok['completion']:.0f} real of {tok['padded']:.0f} "
          f"padded positions; {statistics.mean(f['patches'] for f in flops):.0f} vision patches")
    print(f"float32 matmul rate: {rate_before / 1e9:.1f} GFLOP/s before, {rate_after / 1e9:.1f} after "
          f"(torch.mm 1024x1024, {record['threads']} threads); the floor uses the mean, {rate / 1e9:.1f}")
    gen_f = statistics.mean(f["generation"] for f in flops)
    pol_f = statistics.mean(f["policy"] for f in flops)
    print(f"FLOPs per step: generation {gen_f / 1e9:.1f} G, policy forward+backward {pol_f / 1e9:.1f} G, "
          f"total {floor_flops / 1e9:.1f} G = {floor_flops / rate:.2f} s at that rate\n")
    print("| part | s/step | share | what |\n|---|---:|---:|---|")
    for label, what in PARTS:
        print(f"| {label} | {mean[label]:.2f} | {100 * mean[label] / step:.0f}% | {what} |")
    print(f"| **step** | **{step:.2f}** | 100% | |\n")
    gen_s = mean["generation"]
    pol_s = mean["policy forward"] + mean["backward"]
    print(f"generation: {gen_s:.2f} s for a floor of {gen_f / rate:.2f} s ({gen_s / (gen_f / rate):.1f}x)")
    print(f"policy forward + backward: {pol_s:.2f} s for a floor of {pol_f / rate:.2f} s ({pol_s / (pol_f / rate):.1f}x)")
    print(f"step: {step:.2f} s for a floor of {floor_flops / rate:.2f} s: **{step / (floor_flops / rate):.1f}x the floor**")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--profile", action="store_true", help="time one GRPO step's parts against the matmul floor")
    ap.add_argument("--store", help="--profile: the store holding --model and --data (default: a tiny model)")
    ap.add_argument("--model", default="smol-signal")
    ap.add_argument("--data", default="rl-problems")
    ap.add_argument("--name", default="bench-grpo-profile", help="--profile: the run artifact's name")
    ap.add_argument("--lr", type=float, default=5e-6)
    a = ap.parse_args(argv)
    if a.profile:
        return profile(a)
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
