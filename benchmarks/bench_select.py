"""Scoring a checkpoint for `r1v3 select-ckpt` vs generating the same probe completions alone.

    python benchmarks/bench_select.py [--rows 32] [--samples 2] [--max-new-tokens 48] [--batch-size 16]

Builds a tiny random-weight InternVL model offline and synthetic probe rows (reflect traces), then
times, in one run and on the same model:
  (a) generation alone: TransformersBackend.generate over the probe prompts, sampled with a seed;
  (b) scoring: the same generation recording each token's entropy as it goes, then
      stages.select_ckpt.score per completion (no second forward pass since 2026-11-30; a teacher-forced pass per completion before,
      1.34-1.41x), the critical positions, and the accuracy and format judgments.
Both draw identical completions (the seeded sampler), which is checked. The target is (b)/(a)
within 1.25x. Each is timed three times, alternating, and the fastest of each kept.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from r1v3 import mmmu, synthetic  # noqa: E402
from r1v3.generation import Sampling, TransformersBackend  # noqa: E402
from r1v3.models import build_tiny  # noqa: E402
from stages import select_ckpt  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    splits = synthetic.generate(max(args.rows * 10 // 8 + 2, 10), 0)
    rows = synthetic.with_solutions(splits["train"][: args.rows], "reflect")
    requests = [mmmu.request(r, "reasoning") for r in rows]
    model, processor = build_tiny("internvl", seed=0)
    cfg = select_ckpt.Config(run="r", probe="p", name="bench", max_new_tokens=args.max_new_tokens,
                             samples=args.samples, batch_size=args.batch_size, seed=0)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=cfg.temperature, n=args.samples, seed=0)

    def generate_alone():
        backend = TransformersBackend(model, processor, batch_size=args.batch_size, progress=False)
        return dict(backend.generate(requests, sampling))

    def score():
        backend = TransformersBackend(model, processor, batch_size=args.batch_size, progress=False, entropies=True)
        found = dict(backend.generate(requests, sampling))
        return [select_ckpt.score(cfg, model, processor, r, q, j, c, step=1)
                for q, r in zip(requests, rows) for j, c in enumerate(found[q.id])]

    times = {"generate": [], "score": []}
    for _ in range(3):
        for name, fn in (("generate", generate_alone), ("score", score)):
            start = time.perf_counter()
            out = fn()
            times[name].append(time.perf_counter() - start)
            if name == "generate":
                generated = out
            else:
                records = out
    ids = [list(c.token_ids) for q in requests for c in generated[q.id]]
    assert ids == [r["generated_ids"] for r in records], "scoring drew other completions than generation alone"
    gen, sc = min(times["generate"]), min(times["score"])
    tokens = sum(len(i) for i in ids)
    print(f"{len(requests)} probe rows x {args.samples} samples, {tokens} generated tokens, batch {args.batch_size}, "
          f"1 torch thread")
    print("| method | seconds | tokens/s |\n|---|---:|---:|")
    print(f"| generation alone | {gen:.2f} | {tokens / gen:.0f} |")
    print(f"| scoring (generation + entropies + judgments) | {sc:.2f} | {tokens / sc:.0f} |")
    ratio = sc / gen
    print(f"ratio scoring / generation: {ratio:.2f}x (target <= 1.25x): {'ok' if ratio <= 1.25 else 'OVER'}")


if __name__ == "__main__":
    main()
