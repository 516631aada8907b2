"""Distillation with a local teacher: traces per second batched vs one request at a time.

    python benchmarks/bench_distill.py [--problems 48] [--samples 2] [--batch-size 16] [--max-new-tokens 48]

Builds a tiny random-weight Qwen2 text LLM offline, turns synthetic problems into teacher prompts
exactly as `r1v3 distill` does (stages.distill.teacher_prompt, default template), and generates
`samples` sampled outputs per problem through TransformersBackend twice: batch_size 1 (one request
at a time) and --batch-size. Per-row seeded sampling makes both runs draw the same outputs; the
benchmark asserts that, then prints outputs/s of each and the ratio. Runs in well under 60 s on
2 CPU cores. (The HTTP teacher's concurrency benchmark is bench_http_teacher.py.)
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
import transformers as tf  # noqa: E402

from r1v3 import models, prompts, synthetic  # noqa: E402
from r1v3.generation import Request, Sampling, TransformersBackend  # noqa: E402
from stages import distill  # noqa: E402

CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)


def tiny_teacher(seed: int = 0):
    tok = models.tiny_tokenizer(chat_template=CHATML)
    config = tf.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=len(tok), eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval(), tok


def run(model, tok, requests, sampling, batch_size):
    backend = TransformersBackend(model, tok, batch_size=batch_size, progress=False)
    start = time.perf_counter()
    out = backend.generate_all(requests, sampling)
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=48)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, tok = tiny_teacher()
    rows = [r for split in synthetic.generate(max(args.problems, 10), seed=0).values() for r in split][: args.problems]
    requests = [Request(r["id"], [{"role": "user", "content": prompts.teacher_prompt(r)}])
                for r in rows]
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=1.0, n=args.samples, seed=0)
    single, t1 = run(model, tok, requests, sampling, 1)
    batched, tb = run(model, tok, requests, sampling, args.batch_size)
    assert {k: [c.text for c in v] for k, v in single.items()} == {k: [c.text for c in v] for k, v in batched.items()}, \
        "batched outputs differ from one-at-a-time outputs"
    n = len(requests) * args.samples
    print(f"| teacher run | outputs | seconds | outputs/s |\n|---|---:|---:|---:|\n"
          f"| one request at a time | {n} | {t1:.2f} | {n / t1:.1f} |\n"
          f"| batched (batch_size {args.batch_size}) | {n} | {tb:.2f} | {n / tb:.1f} |")
    print(f"batched / one at a time: {t1 / tb:.2f}x (identical outputs)")


if __name__ == "__main__":
    main()
