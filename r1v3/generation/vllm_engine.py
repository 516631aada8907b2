"""The vLLM backend: vLLM's offline engine (`pip install 'r1v3[vllm]'`, CUDA machines only)."""

from __future__ import annotations

from pathlib import Path

from r1v3.errors import UserError
from r1v3.generation.base import (
    VLLM_INSTALL, Backend, Completion, OnResult, Progress, Request, Sampling, ban_spellings, rgb_images, row_seed,
    special_ids_to_drop, think_tags_are_special,
)


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
        prompt["multi_modal_data"] = {"image": rgb_images(request.images)}
    return prompt


def vllm_sampling_kwargs(sampling: Sampling, request_id: str, keep_special: bool = False) -> dict:
    """SamplingParams keyword arguments for one request.

    The seed is per request (derived from the sampling seed and the request id), so vLLM's
    outputs do not depend on how its scheduler batches requests. Banned words go to SamplingParams'
    `bad_words` (vLLM >= 0.6).
    """
    greedy = sampling.greedy
    return dict(
        n=1 if greedy else sampling.n,
        temperature=0.0 if greedy else sampling.temperature,
        top_p=1.0 if greedy else sampling.top_p,
        max_tokens=sampling.max_new_tokens,
        seed=row_seed(sampling.seed, request_id, sampling.first) % (2**31),
        skip_special_tokens=not keep_special,
        # vLLM bans each word as its tokenizer writes it with and without a leading space
        **({"bad_words": ban_spellings(sampling.ban_words)} if sampling.ban_words else {}),
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
        requests = self._checked(requests, sampling)
        for r in requests:
            if len(r.images) > self.limit_images:
                raise UserError(
                    f"generation request {r.id!r} has {len(r.images)} images, more than limit_images={self.limit_images}"
                )
        bar = Progress(len(requests), self.progress)
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
                    yield r.id, self._deliver(r.id, rows, sampling, on_result)
                bar.advance(len(chunk), tokens)
        finally:
            bar.close()
