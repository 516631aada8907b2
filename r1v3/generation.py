"""Generation backends shared by evaluation, distillation and RL checkpoint scoring.

Three backends, one interface: `backend.generate(requests, sampling, on_result=None)` yields
`(request_id, [Completion, ...])` as results become available, so a caller can append them to a
file and resume after a crash; `backend.generate_all(...)` collects them into a dict.

- TransformersBackend: batched `model.generate` on any device (the default; the only one on CPU).
- VLLMBackend: vLLM's offline engine (`pip install 'r1v3[vllm]'`, GPU machines).
- OpenAIBackend: an OpenAI-compatible HTTP endpoint, text only (text-only teacher LLMs).

A request is a chat (`messages`, content as a list of {"type": "text"|"image"} parts) plus its
images: the k-th image part of the conversation takes `images[k]`.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import html
import json
import logging
import math
import os
import random
import threading
import time
import urllib.parse
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import httpx2
import torch

from r1v3 import jsonio
from r1v3.errors import UserError

THINK_TAGS = ("<think>", "</think>")
VLLM_INSTALL = "pip install 'r1v3[vllm]'"


@dataclass
class Request:
    id: str
    messages: list[dict]
    images: list = field(default_factory=list)  # PIL images, in the order of the image parts


@dataclass
class Sampling:
    max_new_tokens: int = 512
    temperature: float = 0.0  # 0.0 means greedy
    top_p: float = 1.0
    n: int = 1  # completions per request
    seed: int = 0
    # index of the first sample: samples first..first+n-1 are the ones a run asking for
    # first+n samples would draw, so a resumed or extended run asks only for what is missing
    first: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Completion:
    text: str
    n_tokens: int  # generated tokens, including the stop token when there is one
    finish_reason: str  # "stop" (end-of-sequence token) | "length" (hit max_new_tokens)
    # the generated ids up to and including the stop token, special tokens kept (local backends;
    # empty from an HTTP endpoint): what a teacher-forced pass over the completion needs
    token_ids: tuple[int, ...] = ()
    # with TransformersBackend(entropies=True): the entropy (nats, temperature 1) of the distribution
    # that emitted each of token_ids
    entropies: tuple[float, ...] = ()
    # the prompt's tokens once the processor expanded its images (local backends; 0 when not known)
    prompt_tokens: int = 0


OnResult = Callable[[str, list[Completion]], None]


# ---------------------------------------------------------------------------------------------
# validation shared by all backends


def count_image_parts(messages: list[dict]) -> int:
    n = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            n += sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image")
    return n


def check_requests(requests: list[Request]) -> None:
    """Raise UserError on the first malformed request (named by id)."""
    seen = set()
    for i, r in enumerate(requests):
        if not isinstance(r, Request):
            raise UserError(f"generation request #{i} is a {type(r).__name__}, not a Request")
        if not isinstance(r.id, str) or not r.id:
            raise UserError(f"generation request #{i}: id must be a non-empty string, got {r.id!r}")
        if r.id in seen:
            raise UserError(f"generation request {r.id!r}: duplicate request id")
        seen.add(r.id)
        if not isinstance(r.messages, list) or not r.messages:
            raise UserError(f"generation request {r.id!r}: messages must be a non-empty list of chat messages")
        for k, m in enumerate(r.messages):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise UserError(f"generation request {r.id!r}: message #{k} needs 'role' and 'content'")
        n_parts = count_image_parts(r.messages)
        if n_parts != len(r.images):
            raise UserError(
                f"generation request {r.id!r}: {n_parts} image parts in messages but {len(r.images)} images given"
            )


def check_sampling(s: Sampling) -> None:
    if not isinstance(s.max_new_tokens, int) or s.max_new_tokens < 1:
        raise UserError(f"sampling max_new_tokens must be a positive integer, got {s.max_new_tokens!r}")
    if s.temperature < 0:
        raise UserError(f"sampling temperature must be >= 0 (0 means greedy), got {s.temperature!r}")
    if not 0 < s.top_p <= 1:
        raise UserError(f"sampling top_p must be in (0, 1], got {s.top_p!r}")
    if not isinstance(s.n, int) or s.n < 1:
        raise UserError(f"sampling n must be a positive integer, got {s.n!r}")


def _rgb(images: list) -> list:
    # MMMU and friends ship palette/RGBA/greyscale images; not every image processor converts them
    return [im if getattr(im, "mode", "RGB") == "RGB" else im.convert("RGB") for im in images]


# ---------------------------------------------------------------------------------------------
# progress


class _Progress:
    """A rich progress bar showing items/s and generated tokens/s; a no-op when disabled."""

    def __init__(self, total: int, enabled: bool, description: str = "generating"):
        self.enabled = enabled and total > 0
        self.items = self.tokens = 0
        self.start = time.perf_counter()
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rates]}"),
                TimeElapsedColumn(),
            )
            self.task = self.bar.add_task(description, total=total, rates="")
            self.bar.start()

    def advance(self, items: int, tokens: int) -> None:
        self.items += items
        self.tokens += tokens
        if self.enabled:
            dt = max(time.perf_counter() - self.start, 1e-9)
            rates = f"{self.items / dt:.2f} items/s {self.tokens / dt:.0f} tok/s"
            self.bar.update(self.task, advance=items, rates=rates)

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()
            self.enabled = False


class Backend:
    """Common surface: subclasses implement `generate` as a generator."""

    def generate(
        self, requests: Iterable[Request], sampling: Sampling, on_result: OnResult | None = None
    ) -> Iterator[tuple[str, list[Completion]]]:
        raise NotImplementedError

    def generate_all(self, requests: Iterable[Request], sampling: Sampling, on_result: OnResult | None = None):
        """{request id: [Completion] * n}, in request order."""
        requests = list(requests)
        got = dict(self.generate(requests, sampling, on_result=on_result))
        return {r.id: got[r.id] for r in requests}


# ---------------------------------------------------------------------------------------------
# transformers


def special_ids_to_drop(tokenizer) -> set[int]:
    """Ids that skip_special_tokens would drop, minus the think tags (reasoning traces need them).

    Some reasoning tokenizers register <think>/</think> as special added tokens; decoding with
    skip_special_tokens=True would silently delete them, so we filter ids ourselves instead.
    """
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    for tag in THINK_TAGS:
        i = tokenizer.convert_tokens_to_ids(tag)
        if isinstance(i, int) and i != tokenizer.unk_token_id:
            ids.discard(i)
    return ids


def think_tags_are_special(tokenizer) -> bool:
    """Whether decoding with skip_special_tokens=True would delete <think>/</think>."""
    for tag in THINK_TAGS:
        i = tokenizer.convert_tokens_to_ids(tag)
        if isinstance(i, int) and i != tokenizer.unk_token_id:
            tok = (getattr(tokenizer, "added_tokens_decoder", None) or {}).get(i)
            if getattr(tok, "special", False) or i in (getattr(tokenizer, "all_special_ids", None) or []):
                return True
    return False


def _eos_ids(model, tokenizer) -> list[int]:
    ids = []
    for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for i in source if isinstance(source, (list, tuple)) else [source]:
            if i is not None and i not in ids:
                ids.append(int(i))
    return ids


def row_seed(seed: int, request_id: str, sample: int) -> int:
    """A 63-bit seed for one completion, stable across runs, processes and batchings."""
    digest = hashlib.sha256(f"{seed}\0{request_id}\0{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


_CHUNK_ROWS = 512  # float32 rows of V logits converted at a time


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats over the last dimension, computed in float32 from raw logits.

    -inf logits (masked tokens) contribute 0, not NaN.
    """
    out = []
    flat = logits.reshape(-1, logits.shape[-1])
    for s in range(0, flat.shape[0], _CHUNK_ROWS):
        logp = torch.log_softmax(flat[s : s + _CHUNK_ROWS].float(), dim=-1)
        p = logp.exp()
        out.append(-torch.where(p > 0, p * logp, 0.0).sum(-1))
    if not out:
        return torch.zeros(logits.shape[:-1], dtype=torch.float32)
    return torch.cat(out).reshape(logits.shape[:-1])


class StepEntropies:
    """A logits processor that records the entropy (nats) of each row's scores at every step and passes
    them on unchanged. First among the backend's processors it sees the model's logits at temperature
    1 (before them transformers applies only processors the generation config asks for, such as a
    repetition penalty), so the entropy of the distribution that emitted each token comes with the
    generation, without a second forward pass."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids, scores):
        self.steps.append(entropy(scores).cpu())
        return scores

    def per_row(self) -> torch.Tensor:
        """(rows, steps): the entropies of every generated position."""
        return torch.stack(self.steps, dim=1)


class SeededSampler:
    """A logits processor that samples row i with its own torch.Generator(seeds[i]).

    `model.generate` samples a whole batch from the global RNG, so a row's tokens would depend on
    its batch mates. Here each row draws one uniform number per step from its own generator and
    picks its token by inverse CDF under temperature and top-p; the returned scores put all mass
    on that token, so generate's own sampling step (run with no warpers) can only pick it.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]  # CPU: same draws on any device
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids, scores):
        if scores.shape[0] != len(self.generators):
            raise RuntimeError(f"SeededSampler got {scores.shape[0]} rows for {len(self.generators)} seeds")
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            # keep the smallest set of most likely tokens whose mass reaches top_p
            sorted_p, order = probs.sort(dim=-1, descending=True)
            sorted_p = sorted_p.masked_fill(sorted_p.cumsum(-1) - sorted_p >= self.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        u = torch.cat([torch.rand(1, generator=g) for g in self.generators]).to(probs.device)
        cdf = probs.cumsum(-1)
        # first token whose cdf exceeds u * total: never a zero-probability token
        choice = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).clamp_(max=probs.shape[-1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(-1, choice, 0.0)


class TransformersBackend(Backend):
    """Batched `model.generate` with left padding.

    Requests are sorted by prompt length (text tokens plus an estimate of image tokens) and cut
    into batches of similar length, so little compute goes to padding; results are yielded per
    batch under their request ids. Longest batches run first so an out-of-memory shows at once.

    `batch_size` counts generated sequences: a batch holds max(1, batch_size // n) requests.

    Determinism: a completion is a function of (model, request, Sampling including seed, sample
    index) only. It is the same whatever the batch size, whichever requests share its batch, and
    whether the run was resumed: greedy needs nothing for that, and sampling draws each row's
    tokens from its own generator seeded by (seed, request id, sample index) (see SeededSampler).
    The one caveat is floating point: a padded batch can change logits in the last bits, which
    could flip a near-tie argmax or a draw within ~1e-7 of a boundary; the tests check that the
    six tiny families give identical batched and one-at-a-time outputs. Across devices, dtypes
    or library versions outputs may differ.
    """

    def __init__(self, model, processor, batch_size: int = 8, progress: bool = True, entropies: bool = False):
        if batch_size < 1:
            raise UserError(f"generation batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.batch_size = batch_size
        self.progress = progress
        self.entropies = entropies  # record each generated token's entropy (Completion.entropies)
        if self.tokenizer.pad_token is None:
            # many base LLM tokenizers ship without one; any id works since padding is masked out
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_ids = _eos_ids(model, self.tokenizer)
        self.drop_ids = special_ids_to_drop(self.tokenizer)

    # -- prompts

    def prompt_text(self, request: Request) -> str:
        return self.processor.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)

    def _prompt_length(self, text: str, images: list) -> int:
        n = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if images:
            # only a sort key: an estimate is enough, so a processor without this helper costs nothing
            try:
                mm = self.processor._get_num_multimodal_tokens(image_sizes=[(im.height, im.width) for im in images])
                n += sum(mm["num_image_tokens"])
            except Exception:
                pass
        return n

    def encode(self, texts: list[str], images: list[list]):
        """Left-padded model inputs for one batch.

        Images go in as one flat list in prompt order (every supported processor accepts that,
        including requests with no image mixed with image requests; Idefics3 re-splits it by its
        placeholders), and as None when no request in the batch has one.
        """
        flat = [im for ims in images for im in ims]
        inputs = self.processor(
            text=texts,
            images=flat or None,
            padding=True,
            padding_side="left",  # per call, so the shared processor stays as training wants it
            add_special_tokens=False,  # the chat template already wrote BOS where the model wants one
            return_tensors="pt",
        )
        inputs = inputs.to(self.model.device)
        dtype = self.model.dtype
        return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}

    def batches(self, requests: list[Request], sampling: Sampling) -> list[list[tuple[Request, str]]]:
        prepared = [(r, self.prompt_text(r)) for r in requests]
        lengths = [self._prompt_length(text, r.images) for r, text in prepared]
        order = sorted(range(len(prepared)), key=lambda i: -lengths[i])  # stable: ties keep input order
        per_batch = max(1, self.batch_size // (1 if sampling.greedy else sampling.n))
        return [[prepared[i] for i in order[s : s + per_batch]] for s in range(0, len(order), per_batch)]

    # -- decoding

    def _completion(self, ids, entropies=None, prompt_tokens: int = 0) -> Completion:
        ids = ids.tolist()
        stop = next((k for k, t in enumerate(ids) if t in self.eos_ids), None)
        if stop is None:
            # no EOS: the row ran to max_new_tokens (trailing pads would only follow an EOS)
            body, n_tokens, reason = ids, len(ids), "length"
        else:
            body, n_tokens, reason = ids[:stop], stop + 1, "stop"
        body = [t for t in body if t not in self.drop_ids]
        text = self.tokenizer.decode(body, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        measured = () if entropies is None else tuple(entropies[:n_tokens].tolist())
        return Completion(text=text, n_tokens=n_tokens, finish_reason=reason, token_ids=tuple(ids[:n_tokens]),
                          entropies=measured, prompt_tokens=prompt_tokens)

    # -- generation

    def generate(self, requests, sampling: Sampling, on_result: OnResult | None = None):
        from transformers import LogitsProcessorList

        requests = list(requests)
        check_requests(requests)
        check_sampling(sampling)
        kwargs = dict(
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.eos_ids or None,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if sampling.greedy:
            # greedy n>1 would be n identical rows: compute once, copy
            kwargs.update(do_sample=False, num_return_sequences=1, temperature=None, top_p=None, top_k=None)
            n_rows = 1
        else:
            # do_sample=True only so generate accepts num_return_sequences and expands the inputs
            # (pixel values included) the way each model needs; temperature and top-p live in
            # SeededSampler. Warpers a model's generation_config adds after it (min_p, typical_p, ...)
            # all keep the one token it leaves possible.
            kwargs.update(do_sample=True, num_return_sequences=sampling.n, temperature=1.0, top_p=1.0, top_k=0)
            n_rows = sampling.n

        bar = _Progress(len(requests), self.progress)
        was_training = self.model.training
        self.model.eval()
        try:
            for batch in self.batches(requests, sampling):
                inputs = self.encode([text for _, text in batch], [_rgb(r.images) for r, _ in batch])
                recorder = StepEntropies() if self.entropies else None
                processors = [recorder] if recorder else []
                if not sampling.greedy:
                    # generate expands each request to n consecutive rows: request i sample j is row i*n + j
                    seeds = [row_seed(sampling.seed, r.id, sampling.first + j) for r, _ in batch for j in range(n_rows)]
                    processors.append(SeededSampler(seeds, sampling.temperature, sampling.top_p))
                extra = {"logits_processor": LogitsProcessorList(processors)} if processors else {}
                with torch.inference_mode():
                    out = self.model.generate(**inputs, **kwargs, **extra)
                new = out[:, inputs["input_ids"].shape[1] :]
                per_row = recorder.per_row() if recorder else [None] * new.shape[0]
                prompt_lengths = inputs["attention_mask"].sum(1).tolist()  # left-padded: each row's real tokens
                tokens = 0
                for i, (request, _) in enumerate(batch):
                    rows = [self._completion(new[i * n_rows + j], per_row[i * n_rows + j], int(prompt_lengths[i]))
                            for j in range(n_rows)]
                    completions = rows * sampling.n if sampling.greedy else rows
                    tokens += sum(c.n_tokens for c in rows)
                    if on_result is not None:
                        on_result(request.id, completions)
                    yield request.id, completions
                bar.advance(len(batch), tokens)
        finally:
            bar.close()
            self.model.train(was_training)


# ---------------------------------------------------------------------------------------------
# vLLM


def vllm_prompt(processor, request: Request) -> dict:
    """One vLLM offline input: {"prompt": chat-templated text, "multi_modal_data": {"image": [...]}}.

    vLLM tokenizes a string prompt with add_special_tokens=True, so a BOS the chat template already
    wrote would be doubled: strip it from the text when the tokenizer adds one itself.
    """
    text = processor.apply_chat_template(request.messages, add_generation_prompt=True, tokenize=False)
    tok = getattr(processor, "tokenizer", processor)
    bos = tok.bos_token
    if bos and text.startswith(bos):
        ids = tok("x")["input_ids"]
        if ids and ids[0] == tok.bos_token_id:
            text = text[len(bos) :]
    prompt = {"prompt": text}
    if request.images:
        prompt["multi_modal_data"] = {"image": _rgb(request.images)}
    return prompt


def vllm_sampling_kwargs(sampling: Sampling, request_id: str, keep_special: bool = False) -> dict:
    """SamplingParams keyword arguments for one request.

    The seed is per request (derived from the sampling seed and the request id), so vLLM's
    outputs do not depend on how its scheduler batches requests.
    """
    greedy = sampling.greedy
    return dict(
        n=1 if greedy else sampling.n,
        temperature=0.0 if greedy else sampling.temperature,
        top_p=1.0 if greedy else sampling.top_p,
        max_tokens=sampling.max_new_tokens,
        seed=row_seed(sampling.seed, request_id, sampling.first) % (2**31),
        skip_special_tokens=not keep_special,
    )


def _strip_specials(text: str, specials: list[str]) -> str:
    for s in specials:
        text = text.replace(s, "")
    return text


class VLLMBackend(Backend):
    """vLLM's offline engine; vLLM schedules its own batches, we feed it `chunk_size` requests at a time
    so results still stream back for resume."""

    def __init__(
        self,
        model_path,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        limit_images: int = 8,
        trust_remote_code: bool = False,
        chunk_size: int = 512,
        progress: bool = True,
    ):
        try:
            import vllm
        except ImportError as e:
            raise UserError(f"the vllm backend needs vLLM (CUDA machines only): {VLLM_INSTALL}") from e
        from transformers import AutoProcessor

        path = Path(model_path)
        if not path.is_dir():
            raise UserError(f"vllm backend: model directory {path} does not exist")
        self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        tok = getattr(self.processor, "tokenizer", self.processor)
        # vLLM's detokenizer can only skip all specials or none: when the think tags are special,
        # keep them all and strip the other special strings ourselves
        self.keep_special = think_tags_are_special(tok)
        self.specials = sorted(tok.convert_ids_to_tokens(sorted(special_ids_to_drop(tok))), key=len, reverse=True)
        self.limit_images = limit_images
        self.chunk_size = chunk_size
        self.progress = progress
        self.SamplingParams = vllm.SamplingParams
        self.llm = vllm.LLM(
            model=str(path),
            tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            limit_mm_per_prompt={"image": limit_images},
            trust_remote_code=trust_remote_code,
        )

    def generate(self, requests, sampling: Sampling, on_result: OnResult | None = None):
        requests = list(requests)
        check_requests(requests)
        check_sampling(sampling)
        for r in requests:
            if len(r.images) > self.limit_images:
                raise UserError(
                    f"generation request {r.id!r} has {len(r.images)} images, more than limit_images={self.limit_images}"
                )
        bar = _Progress(len(requests), self.progress)
        try:
            for s in range(0, len(requests), self.chunk_size):
                chunk = requests[s : s + self.chunk_size]
                prompts = [vllm_prompt(self.processor, r) for r in chunk]
                params = [self.SamplingParams(**vllm_sampling_kwargs(sampling, r.id, self.keep_special)) for r in chunk]
                outputs = self.llm.generate(prompts, params, use_tqdm=False)
                tokens = 0
                for r, out in zip(chunk, outputs):
                    rows = []
                    for o in out.outputs:
                        text = _strip_specials(o.text, self.specials) if self.keep_special else o.text
                        reason = "length" if o.finish_reason == "length" else "stop"
                        rows.append(Completion(text=text, n_tokens=len(o.token_ids), finish_reason=reason,
                                               token_ids=tuple(o.token_ids)))
                    tokens += sum(c.n_tokens for c in rows)
                    completions = rows * sampling.n if sampling.greedy else rows
                    if on_result is not None:
                        on_result(r.id, completions)
                    yield r.id, completions
                bar.advance(len(chunk), tokens)
        finally:
            bar.close()


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP endpoint (text only)


def text_messages(request: Request) -> list[dict]:
    """Chat messages with string contents; UserError if the request holds an image."""
    if request.images or count_image_parts(request.messages):
        raise UserError(
            f"generation request {request.id!r} has images, but the OpenAI backend is text-only "
            "(give text-only teachers the image caption instead)"
        )
    out = []
    for m in request.messages:
        content = m["content"]
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
        out.append({"role": m["role"], "content": content})
    return out


_RETRY_STATUS = (408, 409, 429)  # and every 5xx; 409 too because OpenAI answers lock timeouts with it
_MAX_ANSWER = 64 << 20  # a reasoning trace is well under 1 MB; anything near this is a broken or hostile server
_KEY_ENVS: set[str] = set()  # names of the env vars whose values are scrubbed from errors, logs and answers
_SCRUBBED = "***"
# How a key may come back transformed: a server echoing the header inside JSON (\" and \\, \/ or
# \uXXXX), Python's repr of the text or of its bytes (b'Bearer sk-...\r'), a URL (a Location
# naming it), HTML. Each is applied once and twice (a JSON string inside a JSON string).
_ESCAPES = (
    lambda s: json.dumps(s)[1:-1],
    lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
    lambda s: repr(s)[1:-1],
    lambda s: repr(s.encode("utf-8", "backslashreplace"))[2:-1],
    lambda s: s.encode("unicode_escape").decode("ascii"),
    lambda s: urllib.parse.quote(s, safe=""),
    lambda s: urllib.parse.quote_plus(s, safe=""),
    lambda s: html.escape(s, quote=True),
)


@functools.lru_cache(maxsize=16)
def _key_forms(value: str) -> tuple[str, ...]:
    """Every spelling of a key value to scrub, longest first (a longer form holds shorter ones)."""
    forms: set[str] = set()
    for key in {value, value.strip()}:
        if not key:
            continue
        spelled = {key}
        for _ in range(2):
            spelled |= {escape(k) for k in spelled for escape in _ESCAPES}
        forms |= {form.strip() for form in spelled}  # the text around a key keeps its own blanks
    return tuple(sorted(forms - {""}, key=len, reverse=True))


def scrub_secrets(text: str) -> str:
    """`text` without any form of the API keys the HTTP backend was given (see _ESCAPES)."""
    for name in tuple(_KEY_ENVS):  # a backend made in another thread may add one meanwhile
        value = os.environ.get(name)
        if value:
            for form in _key_forms(value):
                text = text.replace(form, _SCRUBBED)
    return text


def api_key(env: str) -> str | None:
    """The API key in $`env` as an Authorization header carries it, or None when `env` is empty or
    unset. Surrounding whitespace is dropped (a key read from a CRLF file ends in \\r\\n); a blank key,
    or one holding a character a header cannot carry (control characters, non-ASCII), is a
    UserError that names the variable and never the value."""
    if not env:
        return None
    _KEY_ENVS.add(env)  # scrubbed from here on, refused or not
    raw = os.environ.get(env)
    if raw is None:
        return None
    key = raw.strip()
    if not key:
        raise UserError(f"${env} is set but blank: export the endpoint's API key in it")
    bad = next((c for c in key if not " " <= c <= "~"), None)
    if bad is not None:
        what = "a non-ASCII character" if ord(bad) > 127 else f"a control character (code {ord(bad)})"
        raise UserError(f"${env} holds {what}, which an HTTP header cannot carry: set it to the key alone "
                        "(a stray line break, quote or pasted symbol?)")
    return key


class _ScrubLogs(logging.Filter):
    """httpcore logs response headers at DEBUG: a server echoing the key in one would put it in a log."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = scrub_secrets(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


# a filter on a logger covers only records made by that very logger, not by its children
for _name in ("httpx2", "httpcore2.http11", "httpcore2.http2", "httpcore2.connection", "httpcore2.proxy"):
    logging.getLogger(_name).addFilter(_ScrubLogs())


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _NotStarted(Exception):
    pass


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - (time.time() if now is None else now)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


class OpenAIBackend(Backend):
    """Chat completions from an OpenAI-compatible server (vLLM serve, llama.cpp, a hosted API).

    One HTTP call per completion (n calls for n samples, seeds seed..seed+n-1): not every server
    supports `n`, and per-call usage gives exact token counts. Up to `concurrency` calls are in
    flight at once on one pooled httpx2 client; a request's completions are yielded (and handed to
    `on_result`) as soon as all its calls are back, so a caller can save them before a later call
    fails. Connection errors, timeouts and HTTP 408/409/429/5xx are retried `max_retries` times
    after an exponential back-off with jitter, or after the server's Retry-After, both capped at
    `max_wait` seconds. `timeout` bounds each call: connecting, and the whole answer arriving.

    When a call fails for good, no new call starts, the calls in flight finish (their requests
    are still delivered), and a one-line UserError names the endpoint, the status and how many
    requests were done. The API key is read from the environment variable `api_key_env` (none is
    sent if unset), goes only to `base_url` (redirects are refused, not followed), and is replaced
    by *** in errors, logs and answers, including text a server echoes back.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 600.0,
        max_retries: int = 3,
        backoff: float = 1.0,
        concurrency: int = 4,
        progress: bool = True,
        max_wait: float = 60.0,
    ):
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise UserError(f"OpenAI backend base_url must start with http:// or https://, got {base_url!r}")
        for name, value in (("timeout", timeout), ("backoff", backoff), ("max_wait", max_wait)):
            low = "> 0" if name == "timeout" else ">= 0"
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf
            if not ok or (name == "timeout" and value == 0):
                raise UserError(f"OpenAI backend {name} must be a finite number of seconds {low}, got {value!r}")
        for name, value, low in (("concurrency", concurrency, 1), ("max_retries", max_retries, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UserError(f"OpenAI backend {name} must be an integer >= {low}, got {value!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff = float(backoff)
        self.max_wait = float(max_wait)
        self.concurrency = concurrency
        self.progress = progress
        self._key = api_key(api_key_env)  # checked before any request
        self._client = httpx2.Client(
            timeout=httpx2.Timeout(self.timeout),
            limits=httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=False,  # a redirect would carry the Authorization header to another address
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _scrub(self, text: str) -> str:
        return scrub_secrets(text)

    # -- one HTTP call

    def _post(self, payload: dict) -> dict:
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        deadline = time.monotonic() + self.timeout
        try:
            with self._client.stream("POST", self.url, content=json.dumps(payload).encode(), headers=headers) as resp:
                raw = self._read(resp, deadline)
                status, resp_headers = resp.status_code, resp.headers
        except httpx2.TransportError as e:  # connection refused or reset, timeouts, broken HTTP
            raise _Retryable(f"{self.url}: {self._scrub(str(e) or type(e).__name__)}") from None
        return self._answer(status, resp_headers, raw)

    def _read(self, resp, deadline: float) -> bytes:
        body = bytearray()
        for chunk in resp.iter_bytes():
            body += chunk
            if len(body) > _MAX_ANSWER:
                raise UserError(f"{self.url} answered more than {_MAX_ANSWER >> 20} MiB; is base_url an OpenAI-compatible server?")
            if time.monotonic() > deadline:
                # read timeouts bound each wait; this bounds a server that trickles bytes
                raise _Retryable(f"{self.url}: no complete answer within {self.timeout:g} s (timeout)")
        return bytes(body)

    def _answer(self, status: int, headers, raw: bytes) -> dict:
        if 300 <= status < 400:
            where = self._scrub(headers.get("Location", "?"))
            raise UserError(f"{self.url} redirects (HTTP {status}) to {where}; set base_url to the final address")
        if status >= 400 or status < 200:
            # scrub before cutting: a key cut in half by the cut would no longer be recognised
            body = self._scrub(raw[: 1 << 16].decode(errors="replace"))[:300]
            message = f"{self.url} returned HTTP {status}: {body}".replace("\n", " ")
            if status in _RETRY_STATUS or status >= 500:
                raise _Retryable(message, retry_after_seconds(headers.get("Retry-After")))
            hint = f" (check ${self.api_key_env})" if status in (401, 403) else ""
            raise UserError(message + hint)
        try:
            return jsonio.loads(raw, self.url)
        except UserError as e:  # a cut-off answer: worth another try
            raise _Retryable(self._scrub(str(e))) from None

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        # jitter, so that many calls refused together do not all come back at the same instant
        if retry_after is not None:
            return min(self.max_wait, retry_after + self.backoff * random.random())
        return min(self.max_wait, self.backoff * 2**attempt * (0.5 + random.random()))

    def _one(self, messages: list[dict], sampling: Sampling, seed: int, stop: threading.Event | None = None) -> Completion:
        payload = {
            "model": self.model,
            "messages": messages,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": seed,
            "n": 1,
        }
        for attempt in range(self.max_retries + 1):
            try:
                return self._completion(self._post(payload))
            except _Retryable as e:
                if attempt == self.max_retries:
                    raise UserError(f"OpenAI backend gave up after {attempt + 1} attempts: {e}".replace("\n", " ")) from None
                delay = self._delay(attempt, e.retry_after)
            if stop is None:
                time.sleep(delay)
            elif stop.wait(delay):
                raise UserError("OpenAI backend call cancelled")

    def _completion(self, data) -> Completion:
        try:
            choice = data["choices"][0]
            message = choice["message"]
            if not isinstance(message, dict) or not isinstance(choice, dict):
                raise TypeError
        except (KeyError, IndexError, TypeError):
            raise UserError(f"{self.url} answered without choices[0].message: {self._scrub(str(data))[:200]}") from None
        # a server's answer is data: anything but a string where text belongs counts as none
        text = message.get("content")
        text = text if isinstance(text, str) else ""
        # reasoning servers (vLLM --reasoning-parser, DeepSeek) return the trace apart from the answer;
        # distillation needs it, in the think template
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str) and reasoning and "<think>" not in text:
            text = f"<think>\n{reasoning.strip()}\n</think>\n\n{text.lstrip()}"
        usage = data.get("usage") if isinstance(data, dict) else None
        used = usage.get("completion_tokens") if isinstance(usage, dict) else None
        ok = isinstance(used, (int, float)) and not isinstance(used, bool) and 0 <= used < 1e12
        n_tokens = int(used) if ok else len(text.split())
        reason = "length" if choice.get("finish_reason") == "length" else "stop"
        # a key echoed into the text would otherwise be written into a dataset
        return Completion(text=self._scrub(text), n_tokens=n_tokens, finish_reason=reason)

    # -- many requests

    def _call(self, messages, sampling, seed, stop: threading.Event, halt: threading.Event) -> Completion:
        """`_one`, unless a call has already failed for good: then no new call starts (calls in flight
        finish). The failing worker sets `halt` itself, before it can pick up the next queued call."""
        if halt.is_set():
            raise _NotStarted
        try:
            return self._one(messages, sampling, seed, stop)
        except UserError:
            halt.set()
            raise

    def generate(self, requests, sampling: Sampling, on_result: OnResult | None = None):
        requests = list(requests)
        check_requests(requests)
        check_sampling(sampling)
        prompts = {r.id: text_messages(r) for r in requests}  # fail on an image request before any HTTP call
        n = 1 if sampling.greedy else sampling.n
        calls = iter([(r.id, j) for r in requests for j in range(n)])
        rows: dict[str, list] = {}
        pending: dict = {}
        failure, done = None, 0
        bar = _Progress(len(requests), self.progress)
        stop, halt = threading.Event(), threading.Event()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="r1v3-http")
        try:
            while True:
                # a short queue, not every call at once: a failure leaves little to cancel
                while failure is None and len(pending) < 2 * self.concurrency and (call := next(calls, None)):
                    args = (prompts[call[0]], sampling, sampling.seed + sampling.first + call[1], stop, halt)
                    pending[pool.submit(self._call, *args)] = call
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    rid, j = pending.pop(fut)
                    try:
                        row = fut.result()
                    except _NotStarted:
                        continue
                    except UserError as e:
                        failure = failure or (rid, e)
                        continue
                    got = rows.setdefault(rid, [None] * n)
                    got[j] = row
                    if all(c is not None for c in got):
                        got = rows.pop(rid)
                        completions = got * sampling.n if sampling.greedy else got
                        done += 1
                        bar.advance(1, sum(c.n_tokens for c in completions))
                        if on_result is not None:
                            on_result(rid, completions)
                        yield rid, completions
            if failure is not None:
                rid, e = failure
                raise UserError(f"{e} [request {rid!r}; {done} of {len(requests)} requests completed, results delivered]")
        finally:
            stop.set()  # calls waiting to retry give up at once
            pool.shutdown(wait=False, cancel_futures=True)
            bar.close()


# ---------------------------------------------------------------------------------------------


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def make_backend(
    name: str,
    model_dir,
    *,
    batch_size: int = 8,
    trust_remote_code: bool = False,
    progress: bool = True,
    **vllm_kwargs,
) -> Backend:
    """"transformers" | "vllm" | "auto" (vLLM when a GPU and vLLM are both present) for a local model dir."""
    if name not in ("auto", "transformers", "vllm"):
        raise UserError(f"unknown generation backend {name!r}: choose auto, transformers or vllm")
    if name == "transformers" and vllm_kwargs:
        raise UserError(f"options {', '.join(sorted(vllm_kwargs))} apply to the vllm backend only")
    if name == "auto":
        # a recipe written for GPUs (tensor_parallel_size=...) still runs on a laptop: vLLM options are then unused
        name = "vllm" if torch.cuda.is_available() and vllm_available() else "transformers"
    if name == "vllm":
        return VLLMBackend(model_dir, trust_remote_code=trust_remote_code, progress=progress, **vllm_kwargs)
    from r1v3.models import load_model

    model, processor = load_model(model_dir, trust_remote_code=trust_remote_code)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return TransformersBackend(model, processor, batch_size=batch_size, progress=progress)


def resolve_backend(name: str) -> str:
    """`auto` resolved, so a resumed run is keyed on the backend that sampled (they differ per seed)."""
    if name != "auto":
        return name
    return "vllm" if torch.cuda.is_available() and vllm_available() else "transformers"


def open_backend(cfg, model, rows: list[dict], where: str) -> Backend:
    """The generation backend of a generating stage's settings (backend, batch_size,
    tensor_parallel_size, trust_remote_code) on the model artifact `model`, once every row's
    images are checked against its processor."""
    from r1v3 import data

    vllm = {"tensor_parallel_size": cfg.tensor_parallel_size} if cfg.tensor_parallel_size > 1 else {}
    backend = make_backend(cfg.backend, model.path, batch_size=cfg.batch_size,
                           trust_remote_code=cfg.trust_remote_code, **vllm)
    data.check_images(rows, getattr(backend, "processor", None), where)
    return backend
