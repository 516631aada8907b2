"""Generation: the request, sampling and completion types, the Backend base, the progress bar and
opening a backend by name. The backends live beside it:

- local.py, TransformersBackend: batched `model.generate` on any device (the default; the only one
  on CPU), with the seeded per-row sampler and per-token entropies.
- vllm_engine.py, VLLMBackend: vLLM's offline engine (`pip install 'r1v3[vllm]'`, GPU machines).
- openai_http.py, OpenAIBackend: an OpenAI-compatible HTTP endpoint, text only (text-only teacher LLMs).
- records.py: the resumable generate-to-records loop every generating stage runs.

One interface: `backend.generate(requests, sampling, on_result=None)` yields
`(request_id, [Completion, ...])` as results become available, so a caller can append them to a
file and resume after a crash; `backend.generate_all(...)` collects them into a dict.

A request is a chat (`messages`, content as a list of {"type": "text"|"image"} parts) plus its
images: the k-th image part of the conversation takes `images[k]`.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

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
    # words the model may not write, banned while decoding (backends.ban_spellings says how)
    ban_words: tuple[str, ...] = ()

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
    for w in s.ban_words:
        if not isinstance(w, str) or not w.strip() or w != w.strip():
            raise UserError(f"banned word {w!r}: give words without surrounding blanks")


def rgb_images(images: list) -> list:
    # MMMU and friends ship palette/RGBA/greyscale images; not every image processor converts them
    return [im if getattr(im, "mode", "RGB") == "RGB" else im.convert("RGB") for im in images]


# ---------------------------------------------------------------------------------------------
# progress


class Progress:
    """A rich progress bar showing items/s and generated tokens/s while it runs; a no-op when disabled.
    It draws on stderr, so that a command's stdout (`--json`) holds its result alone, and only on a
    terminal (the run's rates are in its metrics). `completed` items (a resumed
    run's) start the bar without counting in the rates."""

    def __init__(self, total: int, enabled: bool, description: str = "generating", completed: int = 0):
        self.items = self.tokens = 0
        self.start = time.perf_counter()
        self.enabled = enabled and total > completed
        if self.enabled:
            from rich.console import Console

            console = Console(stderr=True)
            self.enabled = console.is_terminal
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rates]}"),
                TimeElapsedColumn(),
                console=console,
                transient=True,  # gone when done: an error after it stays the one line under the command
            )
            self.task = self.bar.add_task(description, total=total, completed=completed, rates="")
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
    """Common surface: subclasses implement `generate` as a generator, starting with `_checked` and
    handing each request's completions to `_deliver`."""

    BANS_WORDS = True  # whether it can honour Sampling.ban_words

    def generate(
        self, requests: Iterable[Request], sampling: Sampling, on_result: OnResult | None = None
    ) -> Iterator[tuple[str, list[Completion]]]:
        raise NotImplementedError

    def generate_all(self, requests: Iterable[Request], sampling: Sampling, on_result: OnResult | None = None):
        """{request id: [Completion] * n}, in request order."""
        requests = list(requests)
        got = dict(self.generate(requests, sampling, on_result=on_result))
        return {r.id: got[r.id] for r in requests}

    def _checked(self, requests: Iterable[Request], sampling: Sampling) -> list[Request]:
        requests = list(requests)
        check_requests(requests)
        check_sampling(sampling)
        if sampling.ban_words and not self.BANS_WORDS:
            raise UserError(f"{type(self).__name__} cannot ban words while decoding; drop --ban-words or use a "
                            "local backend (transformers, vllm)")
        return requests

    @staticmethod
    def rows_per_request(sampling: Sampling) -> int:
        """Completions to compute per request: greedy n>1 would be n identical rows, so compute one and copy."""
        return 1 if sampling.greedy else sampling.n

    @staticmethod
    def _deliver(request_id: str, rows: list[Completion], sampling: Sampling,
                 on_result: OnResult | None) -> list[Completion]:
        """The request's n completions from its `rows_per_request` rows, handed to `on_result`."""
        completions = rows * sampling.n if sampling.greedy else rows
        if on_result is not None:
            on_result(request_id, completions)
        return completions


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


def row_seed(seed: int, request_id: str, sample: int) -> int:
    """A 63-bit seed for one completion, stable across runs, processes and batchings."""
    digest = hashlib.sha256(f"{seed}\0{request_id}\0{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)



def ban_spellings(words) -> list[str]:
    """The spellings of banned words a backend refuses: each word as given and with its first letter
    in the other case ("Wait" and "wait"), so a word cannot come back at the start of a sentence or in
    the middle of one. Each spelling is banned as the tokenizer writes it (local.bad_words_ids adds
    the variant after a space; vLLM does so itself); another tokenization of the same letters, or the
    word inside a longer word, is not refused."""
    out: list[str] = []
    for w in words:
        for s in (w, w[:1].swapcase() + w[1:]):
            if s not in out:
                out.append(s)
    return out


# ---------------------------------------------------------------------------------------------
# opening a backend by name

BACKENDS = ("auto", "transformers", "vllm")


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def resolve_backend(name: str) -> str:
    """`auto` resolved (vLLM when a GPU and vLLM are both present, else transformers), so a resumed run
    is keyed on the backend that sampled (they differ per seed)."""
    if name not in BACKENDS:
        raise UserError(f"unknown generation backend {name!r}: choose auto, transformers or vllm")
    if name != "auto":
        return name
    import torch

    return "vllm" if torch.cuda.is_available() and vllm_available() else "transformers"


def make_backend(
    name: str,
    model_dir,
    *,
    batch_size: int = 8,
    trust_remote_code: bool = False,
    progress: bool = True,
    text_only: bool = False,
    entropies: bool = False,
    **vllm_kwargs,
) -> Backend:
    """"transformers" | "vllm" | "auto" for a local model dir (`text_only`: a causal LM, no processor)."""
    if name not in BACKENDS:
        raise UserError(f"unknown generation backend {name!r}: choose auto, transformers or vllm")
    if name == "transformers" and vllm_kwargs:
        raise UserError(f"options {', '.join(sorted(vllm_kwargs))} apply to the vllm backend only")
    # a recipe written for GPUs (tensor_parallel_size=...) still runs on a laptop: vLLM options are then unused
    name = resolve_backend(name)
    if name == "vllm":
        if entropies:
            raise UserError("per-token entropies come from the transformers backend only")
        from r1v3.generation.vllm_engine import VLLMBackend

        return VLLMBackend(model_dir, trust_remote_code=trust_remote_code, progress=progress, **vllm_kwargs)
    from r1v3 import models
    from r1v3.generation.local import TransformersBackend

    load = models.load_llm if text_only else models.load_model
    model, processor = load(model_dir, trust_remote_code=trust_remote_code)
    return TransformersBackend.on_device(model, processor, batch_size=batch_size, progress=progress, entropies=entropies)


def open_backend(cfg, model_dir, rows: list[dict] = (), where: str = "", **options) -> Backend:
    """The backend of a generating stage's settings (GenerationSettings: backend, batch_size,
    tensor_parallel_size, trust_remote_code) on the model at `model_dir`, once every row's images are
    checked against its processor. It draws no progress bar: the records loop draws one for the run."""
    from r1v3 import data

    tp = getattr(cfg, "tensor_parallel_size", 1)
    vllm = {"tensor_parallel_size": tp} if tp > 1 else {}
    backend = make_backend(getattr(cfg, "backend", "transformers"), model_dir, batch_size=cfg.batch_size,
                           trust_remote_code=cfg.trust_remote_code, progress=False, **options, **vllm)
    if rows:
        data.check_images(rows, getattr(backend, "processor", None), where)
    return backend
