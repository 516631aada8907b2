"""Critical-token entropy: the measurement behind RL checkpoint selection (Skywork-R1V3 section 5.1).

A checkpoint that really reasons hesitates where it writes "Wait", "Alternatively" or "Hmm": the
next-token distribution that produced such a word is broad. We measure, per generation:

1. critical positions: where the decoded completion begins a critical word (`find_critical`);
2. the Shannon entropy, in nats at temperature 1, of the distribution that emitted each generated
   token: one teacher-forced forward pass over prompt + completion, logits at t-1 predicting
   token t (`teacher_forced_entropies`), the raw per-step logits of `generate(...,
   output_logits=True)` (`step_entropies`), or recorded while generating
   (`TransformersBackend(entropies=True)`, which select-ckpt uses: no second pass). All agree to
   float rounding; none resamples.

Matching rules (`find_critical`):
- words match whole, at word boundaries of the decoded text: "Waiting", "await", "Hmmm" do not
  count; "Wait," "(Wait" ".\"Wait" do, whatever token the punctuation was merged into;
- case-sensitive by default (the capitalised forms reasoning models write when they change
  course; lower-case "wait" is mostly prose such as "wait for"); `case_sensitive=False` counts
  every casing under the configured spelling;
- only inside the think block, read as `answers.split_think` reads it: from after the first
  `<think>` (or from the start when the chat template opened the block in the prompt) to the last
  `</think>`, or to the end when the block is never closed; no think block, no critical positions;
- the position is the generated token that emits the word's first character, found by
  decoding prefixes of the generated ids (exact for byte-level BPE, SentencePiece and merged
  punctuation alike, without re-tokenizing text the model may have tokenized differently).

Record format (one JSON object per generation, a line of `probe.jsonl`), version RECORD_VERSION:
    version          1
    id, sample       request id and sample index
    prompt_text      the chat-templated prompt (image placeholders unexpanded)
    prompt_tokens    its token count after the processor expanded images
    n_images         how many images the prompt takes (not stored: pass them to `recompute`)
    generated_ids    the generated token ids, through the end-of-sequence token when there is one
    words, case_sensitive, think_open   the matching settings used
    critical         [{"index": i into generated_ids, "word": configured spelling,
                       "char": offset in decode(generated_ids) (special tokens kept, no
                       clean-up), "entropy": nats}]
    token_entropy    mean entropy over all generated tokens
    high_threshold, n_high   the threshold (nats) and how many generated tokens exceed it
`recompute(model, processor, record, images)` redoes the forward pass and returns a fresh record.

High-entropy threshold: HIGH_ENTROPY = 0.672 nats, the 80th percentile of chain-of-thought token
entropy that Wang et al. measured on Qwen3-8B ("Beyond the 80/20 Rule", arXiv 2506.01939): a
reasoning model of that kind puts about 20% of its tokens above it, the "forking" tokens, so the
share moves visibly both ways across checkpoints. 2.0 nats (a flat choice among ~7 tokens) is
rarely reached by a trained model at temperature 1 and would read as ~0 everywhere.

Memory: the forward pass keeps logits for the generated tokens only (`logits_to_keep`), n x V in
the model's dtype, and turns them into float32 entropies a chunk of rows at a time.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from r1v3 import jsonio
from r1v3.errors import UserError
from r1v3.generation import THINK_TAGS, Request, entropy, rgb_images

DEFAULT_WORDS = ("Wait", "Alternatively", "Hmm")
HIGH_ENTROPY = 0.672
RECORD_VERSION = 1


# ---------------------------------------------------------------------------------------------
# entropy


def step_entropies(step_logits, row: int = 0) -> list[float]:
    """Entropies of one row from `generate(..., output_logits=True, return_dict_in_generate=True).logits`.

    Use the raw logits (`output_logits`), not `output_scores`: scores come after the logits
    processors (temperature, top-p, the seeded sampler), which are not the model's distribution.
    """
    return entropy(torch.stack([step[row] for step in step_logits])).tolist()


def trim_at_eos(ids, eos_ids) -> list[int]:
    """Generated ids through the first end-of-sequence token: what follows it is padding."""
    ids = [int(t) for t in ids]
    eos = set(eos_ids)
    stop = next((k for k, t in enumerate(ids) if t in eos), None)
    return ids if stop is None else ids[: stop + 1]


# ---------------------------------------------------------------------------------------------
# critical positions


@dataclass(frozen=True)
class Critical:
    index: int  # into the generated ids
    word: str  # the configured spelling
    char: int  # offset of the word in the decoded completion


def check_words(words) -> tuple[str, ...]:
    if isinstance(words, str) or not words:
        raise UserError(f"critical words must be a non-empty list of words, got {words!r}")
    seen = set()
    for w in words:
        if not isinstance(w, str) or not w or w != w.strip():
            raise UserError(f"critical word {w!r}: must be a non-empty string without surrounding spaces")
        if w.casefold() in seen:
            raise UserError(f"critical word {w!r} is listed twice")
        seen.add(w.casefold())
    return tuple(words)


def _pattern(words, case_sensitive: bool) -> re.Pattern:
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", 0 if case_sensitive else re.IGNORECASE)


def think_span(text: str, think_open: bool = False) -> tuple[int, int] | None:
    """[start, end) of the reasoning in `text`, or None when there is no think block.

    `think_open`: the prompt already ended with `<think>`, so the completion starts inside it.
    """
    open_tag, close_tag = THINK_TAGS
    opened = text.find(open_tag)
    close = text.rfind(close_tag)
    if opened >= 0 and (close < 0 or opened < close):
        start = opened + len(open_tag)
    elif think_open or close >= 0:
        start = 0
    else:
        return None
    return start, close if close >= start else len(text)


def decode(tokenizer, ids) -> str:
    """The text char offsets refer to: special tokens kept (think tags may be special), no clean-up."""
    return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def _settled(prefix: str, full: str) -> int:
    """How many leading chars of `full` the decoded `prefix` already fixes.

    A prefix that ends inside a multi-byte character decodes to a replacement char there, so
    only the agreeing part counts; found by bisection on str.startswith.
    """
    if full.startswith(prefix):
        return len(prefix)
    lo, hi = 0, min(len(prefix), len(full))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if full.startswith(prefix[:mid]):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _incremental_ends(tokenizer, ids, full: str) -> list[int] | None:
    """ends[k]: chars of `full` fixed once tokens 0..k are out, decoding a short window per token.

    The window starts at the last token that produced text, so a SentencePiece piece keeps the
    context that decides its leading space and a partial UTF-8 character waits for its last byte
    (as streaming detokenizers do). None when the pieces do not add up to `full`.
    """
    ends, text, start, read = [], "", 0, 0
    for k in range(len(ids)):
        before = decode(tokenizer, ids[start:read])
        now = decode(tokenizer, ids[start : k + 1])
        if len(now) > len(before) and now.startswith(before) and not now.endswith("\ufffd"):
            text += now[len(before) :]
            start, read = read, k + 1
        ends.append(len(text))
    return ends if text == full else None


def token_of_char(tokenizer, ids, chars: list[int], text: str | None = None) -> list[int]:
    """For each char offset of decode(ids), the index of the first token whose decoding includes it.

    Exact without re-tokenizing: one linear incremental pass, or, for a tokenizer whose
    windowed decodes do not add up, a bisection per offset over full prefix decodes.
    """
    ids = list(ids)
    full = decode(tokenizer, ids) if text is None else text
    ends = _incremental_ends(tokenizer, ids, full) if chars else []
    if ends is not None:
        return [bisect.bisect_right(ends, c) for c in chars]
    settled = {}

    def end(k: int) -> int:
        if k not in settled:
            settled[k] = _settled(decode(tokenizer, ids[: k + 1]), full)
        return settled[k]

    return [bisect.bisect_right(range(len(ids)), c, key=end) for c in chars]


def find_critical(
    tokenizer, ids, words=DEFAULT_WORDS, *, case_sensitive: bool = True, think_open: bool = False
) -> list[Critical]:
    """Critical words the completion `ids` begins inside its think block, in order."""
    words = check_words(words)
    text = decode(tokenizer, ids)
    span = think_span(text, think_open)
    if span is None:
        return []
    canonical = {w if case_sensitive else w.casefold(): w for w in words}
    matches = list(_pattern(words, case_sensitive).finditer(text, *span))
    index = token_of_char(tokenizer, ids, [m.start() for m in matches], text)
    return [
        Critical(k, canonical[m.group() if case_sensitive else m.group().casefold()], m.start())
        for k, m in zip(index, matches)
    ]


# ---------------------------------------------------------------------------------------------
# the teacher-forced pass


def prompt_text(processor, request: Request) -> str:
    """The chat-templated prompt, exactly as the transformers generation backend builds it."""
    return processor.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)


def _per_token(key: str) -> bool:
    return key in ("input_ids", "attention_mask") or key.endswith("token_type_ids")


def _inputs(processor, text: str, images: list, completion: list[int]) -> tuple[dict, int]:
    """Model inputs for prompt + completion (one row, no padding), and the prompt's token count."""
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:  # a bare tokenizer: a text-only causal LM
        if images:
            raise UserError(f"{len(images)} images given but the model has a tokenizer, not an image processor")
        enc = processor([text], add_special_tokens=False, return_tensors="pt")
    else:
        enc = processor(text=[text], images=rgb_images(images) or None, add_special_tokens=False, return_tensors="pt")
    n_prompt = enc["input_ids"].shape[1]
    tail = torch.tensor([completion], dtype=torch.long)
    inputs = {}
    for key, value in enc.items():
        if torch.is_tensor(value) and _per_token(key):
            fill = {"input_ids": tail, "attention_mask": torch.ones_like(tail)}.get(key, torch.zeros_like(tail))
            value = torch.cat([value, fill.to(value.dtype)], dim=1)
        inputs[key] = value
    return inputs, n_prompt


def teacher_forced_entropies(model, processor, text: str, generated_ids, images=()) -> tuple[int, list[float]]:
    """(prompt token count, entropy of the distribution that emitted each generated token).

    One forward pass over prompt + generated[:-1]: the logits at position P-1+t predict
    generated token t. Inputs go through the same processor call as generation (images, their
    expanded placeholder tokens and pixel values), so VLMs and text-only LMs alike work.
    """
    ids = [int(t) for t in generated_ids]
    if not ids:
        raise UserError("no generated tokens to measure")
    vocab = model.get_input_embeddings().num_embeddings
    if not all(0 <= t < vocab for t in ids):
        raise UserError(f"generated ids must lie in 0..{vocab - 1}, the model's vocabulary; got {min(ids)}..{max(ids)}")
    placeholders = set(ids[:-1]) & _placeholder_ids(model)
    inputs, n_prompt = _inputs(processor, text, list(images), [] if placeholders else ids[:-1])
    inputs = inputs_to(inputs, model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if placeholders:
                logits = _prefill_then_completion(model, inputs, ids)
            else:
                logits = model(**inputs, logits_to_keep=len(ids), use_cache=False).logits
    finally:
        model.train(was_training)
    return n_prompt, entropy(logits[0, -len(ids) :]).tolist()


def _placeholder_ids(model) -> set[int]:
    """Token ids a VLM's forward takes for image or video slots (it counts them against the features)."""
    config = getattr(model, "config", None)
    keys = ("image_token_id", "image_token_index", "video_token_id")
    return {v for k in keys if isinstance(v := getattr(config, k, None), int)}


def _prefill_then_completion(model, prompt_inputs: dict, ids: list[int]) -> torch.Tensor:
    """Logits for a completion that holds an image placeholder token, computed as generation does:
    the prompt (with its images) once, then the completion against its cache, where a generated
    placeholder is a plain token. In one pass the model would count it as an image slot and refuse
    the inputs, since the images have features for the prompt's slots only."""
    out = model(**prompt_inputs, use_cache=True, logits_to_keep=1)
    if len(ids) == 1:
        return out.logits
    n_prompt = prompt_inputs["input_ids"].shape[1]
    tail = torch.tensor([ids[:-1]], dtype=torch.long, device=model.device)
    # no attention mask (one unpadded row): with one, M-RoPE models (Qwen-VL) would derive positions
    # for the whole sequence instead of continuing from the prompt's
    rest = model(input_ids=tail, past_key_values=out.past_key_values, use_cache=True,
                 cache_position=torch.arange(n_prompt, n_prompt + tail.shape[1], device=model.device))
    return torch.cat([out.logits[:, -1:], rest.logits], dim=1)


def inputs_to(inputs: dict, model) -> dict:
    """Tensors moved to the model's device, floating ones (pixel values) cast to its dtype."""
    out = {}
    for k, v in inputs.items():
        if torch.is_tensor(v):
            v = v.to(model.device)
            v = v.to(model.dtype) if v.is_floating_point() else v
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# records


def make_record(
    model,
    processor,
    request: Request,
    generated_ids,
    *,
    sample: int = 0,
    words=DEFAULT_WORDS,
    case_sensitive: bool = True,
    high_threshold: float = HIGH_ENTROPY,
    measured: tuple[int, list[float]] | None = None,
) -> dict:
    """The probe record (format in the module docstring) of one generation of `request`.

    `measured`: its (prompt tokens, entropies) as generation recorded them, else one pass is run here."""
    text = prompt_text(processor, request)
    return _record(model, processor, request.id, sample, text, list(request.images), generated_ids,
                   check_words(words), case_sensitive, high_threshold, measured)


def _record(model, processor, rid, sample, text, images, generated_ids, words, case_sensitive, threshold,
            measured=None) -> dict:
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = [int(t) for t in generated_ids]
    think_open = text.rstrip().endswith(THINK_TAGS[0])
    n_prompt, ents = measured or teacher_forced_entropies(model, processor, text, ids, images)
    critical = find_critical(tokenizer, ids, words, case_sensitive=case_sensitive, think_open=think_open)
    return {
        "version": RECORD_VERSION,
        "id": rid,
        "sample": sample,
        "prompt_text": text,
        "prompt_tokens": n_prompt,
        "n_images": len(images),
        "generated_ids": ids,
        "words": list(words),
        "case_sensitive": case_sensitive,
        "think_open": think_open,
        "critical": [{"index": c.index, "word": c.word, "char": c.char, "entropy": ents[c.index]} for c in critical],
        "token_entropy": sum(ents) / len(ents),
        "high_threshold": threshold,
        "n_high": sum(e > threshold for e in ents),
    }


def recompute(model, processor_or_tokenizer, record: dict, images=(), where: str = "record") -> dict:
    """Redo a record's measurement with one forward pass; returns the fresh record.

    `images`: the request's images (records do not store them). The prompt must tokenize to the
    recorded length, or the processor or images differ from the ones the record was made with.
    """
    check_record(record, where)
    images = list(images)
    if len(images) != record["n_images"]:
        raise UserError(f"{where}: the record takes {record['n_images']} images, {len(images)} given")
    # the processor call is cheap next to the forward pass: refuse a mismatch before running it
    _, n_prompt = _inputs(processor_or_tokenizer, record["prompt_text"], images, [])
    if n_prompt != record["prompt_tokens"]:
        raise UserError(
            f"{where}: the prompt now takes {n_prompt} tokens, the record says "
            f"{record['prompt_tokens']}: not the processor or images it was made with"
        )
    settings = tuple(record["words"]), record["case_sensitive"], record["high_threshold"]
    return _record(model, processor_or_tokenizer, record["id"], record["sample"], record["prompt_text"], images,
                   record["generated_ids"], *settings)


_RECORD_TYPES = {
    "version": int, "id": str, "sample": int, "prompt_text": str, "prompt_tokens": int, "n_images": int,
    "generated_ids": list, "words": list, "case_sensitive": bool, "think_open": bool, "critical": list,
    "token_entropy": (int, float), "high_threshold": (int, float), "n_high": int,
}  # fmt: skip


def check_record(record, where: str = "record") -> dict:
    """Raise a one-line UserError naming `where` and the key on the first malformed field."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: a probe record must be a JSON object")
    for key, kind in _RECORD_TYPES.items():
        value = record.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UserError(f"{where}: key {key!r} is missing or not {getattr(kind, '__name__', 'a number')}")
    if record["version"] != RECORD_VERSION:
        raise UserError(f"{where}: record version {record['version']}, this r1v3 reads version {RECORD_VERSION}")
    ids = record["generated_ids"]
    if not ids or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
        raise UserError(f"{where}: key 'generated_ids' must be a non-empty list of token ids")
    check_words(record["words"])
    for c in record["critical"]:
        ok = isinstance(c, dict) and isinstance(c.get("word"), str) and isinstance(c.get("entropy"), (int, float))
        if not ok or not isinstance(c.get("index"), int) or not 0 <= c["index"] < len(ids):
            what = "an index into generated_ids with word and entropy"
            raise UserError(f"{where}: key 'critical' holds {str(c)[:80]}, not {what}")
    if not 0 <= record["n_high"] <= len(ids):
        raise UserError(f"{where}: key 'n_high' is {record['n_high']}, outside 0..{len(ids)}")
    return record


def read_records(path) -> list[dict]:
    """A probe.jsonl file's records, each checked; errors name the file and line."""
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    out = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            where = f"{path} line {n}"
            out.append(check_record(jsonio.loads(line, where), where))
    return out


# ---------------------------------------------------------------------------------------------
# a checkpoint's figures


def summarize(records: list[dict]) -> dict:
    """A checkpoint's figures over its records (all made with the same words and threshold).

    Means are None where nothing was counted, so the result stays valid JSON.
    """
    if not records:
        raise UserError("no probe records to summarize")
    first = records[0]
    for r in records[1:]:
        for key in ("words", "case_sensitive", "high_threshold"):
            if r[key] != first[key]:
                raise UserError(
                    f"record {r['id']!r}: {key} {r[key]!r} differs from {first[key]!r} in record {first['id']!r}"
                )
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    critical = [c for r in records for c in r["critical"]]
    by_word = {w: [c["entropy"] for c in critical if c["word"] == w] for w in first["words"]}
    n_tokens = sum(len(r["generated_ids"]) for r in records)
    return {
        "generations": len(records),
        "critical_entropy": mean([c["entropy"] for c in critical]),
        "critical_count": len(critical),
        "per_word": {w: {"entropy": mean(es), "count": len(es)} for w, es in by_word.items()},
        "token_entropy": sum(r["token_entropy"] * len(r["generated_ids"]) for r in records) / n_tokens,
        "tokens": n_tokens,
        "high_entropy_share": sum(r["n_high"] for r in records) / n_tokens,
        "high_threshold": first["high_threshold"],
    }
