"""The local transformers backend: batched `model.generate` with the seeded per-row sampler, the
per-token entropies select-ckpt reads, and banned words as `bad_words_ids`."""

from __future__ import annotations

import torch

from r1v3.errors import UserError
from r1v3.generation.base import (
    Backend, Completion, OnResult, Progress, Request, Sampling, ban_spellings, rgb_images, row_seed,
    special_ids_to_drop,
)


def _eos_ids(model, tokenizer) -> list[int]:
    ids = []
    for source in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for i in source if isinstance(source, (list, tuple)) else [source]:
            if i is not None and i not in ids:
                ids.append(int(i))
    return ids



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

    @classmethod
    def on_device(cls, model, processor, **kwargs) -> "TransformersBackend":
        """The backend on `model` moved to the GPU when there is one: how a stage opens a local model."""
        if torch.cuda.is_available():
            model = model.to("cuda")
        return cls(model, processor, **kwargs)

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
        per_batch = max(1, self.batch_size // self.rows_per_request(sampling))
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

        requests = self._checked(requests, sampling)
        kwargs = dict(
            max_new_tokens=sampling.max_new_tokens,
            eos_token_id=self.eos_ids or None,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        if sampling.ban_words:
            kwargs["bad_words_ids"] = bad_words_ids(self.tokenizer, sampling.ban_words)
        n_rows = self.rows_per_request(sampling)
        if sampling.greedy:
            kwargs.update(do_sample=False, num_return_sequences=1, temperature=None, top_p=None, top_k=None)
        else:
            # do_sample=True only so generate accepts num_return_sequences and expands the inputs
            # (pixel values included) the way each model needs; temperature and top-p live in
            # SeededSampler. Warpers a model's generation_config adds after it (min_p, typical_p, ...)
            # all keep the one token it leaves possible.
            kwargs.update(do_sample=True, num_return_sequences=sampling.n, temperature=1.0, top_p=1.0, top_k=0)

        bar = Progress(len(requests), self.progress)
        was_training = self.model.training
        self.model.eval()
        try:
            for batch in self.batches(requests, sampling):
                inputs = self.encode([text for _, text in batch], [rgb_images(r.images) for r, _ in batch])
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
                    tokens += sum(c.n_tokens for c in rows)
                    yield request.id, self._deliver(request.id, rows, sampling, on_result)
                bar.advance(len(batch), tokens)
        finally:
            bar.close()
            self.model.train(was_training)


def bad_words_ids(tokenizer, words) -> list[list[int]]:
    """transformers' `bad_words_ids` for `words`: every spelling of `ban_spellings`, alone and after a
    space, as the tokenizer writes it (a word in running text usually carries its space in its first
    token). generate then never emits a sequence's last token right after the rest of it."""
    out: list[list[int]] = []
    for spelling in ban_spellings(words):
        for text in (spelling, " " + spelling):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if ids and ids not in out:
                out.append(ids)
    return out
