"""Batched generation vs one generate() call per item, on MMMU-like prompts.

    python benchmarks/bench_generation.py [--items 120] [--batch-size 16] [--max-new-tokens 32]
                                          [--sweep 4,8,16,32]

Builds a tiny random-weight InternVL model offline, draws >= 120 multiple-choice items with
1-2 images each and questions of varied length, then times
  (a) the loop most evaluation harnesses run by default: processor -> model.generate -> decode,
      one item at a time;
  (b) r1v3.generation.TransformersBackend, batched by prompt length with left padding;
both greedy with the same max_new_tokens, checks that the predictions are identical, and prints
a markdown table. Tiny models make the per-step overhead dominate, which is what batching removes;
on a real model the gain depends on how far a batch of 1 is from saturating the device.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from r1v3.generation import Request, Sampling, TransformersBackend  # noqa: E402
from r1v3.models import build_tiny  # noqa: E402

SUBJECTS = ["Physics", "Chemistry", "Biology", "Math", "Geography", "Economics", "Art", "Music", "History"]
FILLER = (
    "Consider the figure carefully. The diagram shows several shapes drawn in different colours, "
    "with labels next to some of them. Assume all measurements are exact and ignore friction. "
    "A student claims the answer follows directly from the picture, but another disagrees. "
).split()
COLOURS = ["red", "green", "blue", "orange", "purple", "black", "yellow", "grey"]


def draw_image(rng: random.Random) -> Image.Image:
    w, h = rng.choice([(64, 48), (96, 96), (120, 80), (80, 120), (200, 150)])
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    for _ in range(rng.randint(1, 5)):
        x, y = rng.randrange(w - 10), rng.randrange(h - 10)
        box = [x, y, min(w - 1, x + rng.randint(5, 30)), min(h - 1, y + rng.randint(5, 30))]
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=rng.choice(COLOURS))
    d.text((2, 2), str(rng.randint(0, 99)), fill="black")
    return im


def make_items(n: int, seed: int = 0) -> list[Request]:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        k = rng.choice([1, 1, 2])
        stem = " ".join(rng.choice(FILLER) for _ in range(rng.randint(5, 80)))
        refs = " and ".join(f"<image {j + 1}>" for j in range(k))
        options = [rng.choice(COLOURS) for _ in range(4)]
        question = (
            f"[{rng.choice(SUBJECTS)}] {stem} Looking at {refs}, which colour is the largest shape?\n"
            + "\n".join(f"{'ABCD'[j]}. {o}" for j, o in enumerate(options))
            + "\nAnswer with the option's letter from the given choices directly."
        )
        content = [{"type": "image"}] * k + [{"type": "text", "text": question}]
        items.append(Request(f"item{i:04d}", [{"role": "user", "content": content}], [draw_image(rng) for _ in range(k)]))
    return items


def run_loop(model, processor, items: list[Request], max_new_tokens: int) -> dict[str, str]:
    """One generate() per item: the default of most evaluation harnesses."""
    out = {}
    for r in items:
        text = processor.apply_chat_template(r.messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=r.images, add_special_tokens=False, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        out[r.id] = processor.tokenizer.decode(ids[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def run_batched(model, processor, items: list[Request], max_new_tokens: int, batch_size: int) -> dict[str, str]:
    backend = TransformersBackend(model, processor, batch_size=batch_size, progress=False)
    results = backend.generate_all(items, Sampling(max_new_tokens=max_new_tokens))
    return {rid: cs[0].text for rid, cs in results.items()}


def timed(repeat, fn, *args):
    """(result, fastest wall time of `repeat` runs): the minimum is the least noisy on a shared machine."""
    best = float("inf")
    for _ in range(max(1, repeat)):
        t = time.perf_counter()
        result = fn(*args)
        best = min(best, time.perf_counter() - t)
    return result, best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=120)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--sweep", default="", help="comma-separated batch sizes to time as well, e.g. 4,8,16,32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1: the tiny model's matmuls are too small to split, and OpenMP "
        "threads spinning against other processes on a shared 2-core machine make timings swing 10-40x)",
    )
    ap.add_argument("--repeat", type=int, default=1, help="time each method this many times and keep the fastest")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    model, processor = build_tiny("internvl", seed=args.seed)
    items = make_items(args.items, seed=args.seed)
    n_images = sum(len(r.images) for r in items)

    # warm-up outside the clock: first calls pay for lazy init (kernels, tokenizer caches)
    run_loop(model, processor, items[:2], 4)
    run_batched(model, processor, items[:4], 4, 4)

    looped, t_loop = timed(args.repeat, run_loop, model, processor, items, args.max_new_tokens)
    sizes = sorted({args.batch_size, *(int(s) for s in args.sweep.split(",") if s.strip())})
    rows = []
    for bs in sizes:
        batched, t_batch = timed(args.repeat, run_batched, model, processor, items, args.max_new_tokens, bs)
        match = sum(looped[r.id] == batched[r.id] for r in items)
        rows.append((bs, t_batch, match))

    print(
        f"\n{args.items} MMMU-like items ({n_images} images), tiny InternVL, greedy, "
        f"max_new_tokens={args.max_new_tokens}, torch threads={torch.get_num_threads()}\n"
    )
    print("| method | batch size | items/s | speedup | predictions identical to loop |")
    print("|---|---:|---:|---:|---:|")
    print(f"| one `generate` per item | 1 | {len(items) / t_loop:.1f} | 1.0x | - |")
    for bs, t_batch, match in rows:
        print(
            f"| TransformersBackend (batched) | {bs} | {len(items) / t_batch:.1f} | "
            f"{t_loop / t_batch:.1f}x | {match}/{len(items)} |"
        )
    bad = [bs for bs, _, match in rows if match != len(items)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
