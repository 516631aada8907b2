"""The assistant tokens of a rendered conversation, for chat templates without {% generation %} markers.

TRL marks the tokens to train on through {% generation %} blocks in the chat template; the LLMs the
paper composes with (the DeepSeek-R1-distilled Qwen models) ship templates without them, in a shape
TRL cannot patch once compose has taught it image parts. For those, `assistant_mask` finds the tokens
itself by rendering the conversation prefix by prefix, with the processor, exactly as the collator
renders it (image tokens expanded; a text-only LLM, such as a distill teacher, through its tokenizer):

    for an assistant turn k:  prompt   = messages[:k] + the generation prompt
                              rendered = messages[:k+1]
    the turn's tokens are those of `rendered` after its common token prefix with `prompt` (so the
    role header the template writes, and a generation prompt such as R1's "<think>\\n", are not
    trained), up to its end-of-sequence token when the template writes one.

Checks against the template's own rendering: messages[:k] rendered alone must be a token prefix of both
`prompt` and `rendered` (nothing before the turn changes when it is added), and the turn's text
must appear in the template's text rendering of it (a template that drops part of the turn, as the
shipped R1-distill template drops everything up to `</think>`, would train on the rest only).

Templates that rewrite earlier turns (R1-style: an earlier assistant turn loses its reasoning once
a later turn follows) break the prefix property for multi-turn rows. Decided: a turn is trained
where the full conversation renders it as it rendered it last; a turn that later turns rewrite is
context only, as the model sees it at inference, never a target (it would teach answering without
reasoning), and is counted. The last assistant turn is always trained.
"""

from __future__ import annotations

from r1v3.errors import UserError

PROCESSOR_KWARGS = {"padding": False, "truncation": False, "add_special_tokens": False}


def is_text_only(processor) -> bool:
    """A text-only LLM's tokenizer rather than a VLM's processor: its turns are plain strings."""
    return not hasattr(processor, "image_processor")


def _render(processor, messages: list[dict], images: list, template: str | None, prompt: bool, tokenize: bool):
    from trl.data_utils import prepare_multimodal_messages

    if is_text_only(processor):
        out = processor.apply_chat_template(messages, chat_template=template, add_generation_prompt=prompt,
                                            tokenize=tokenize, return_dict=tokenize)
        return [int(i) for i in out["input_ids"]] if tokenize else out
    out = processor.apply_chat_template(
        [prepare_multimodal_messages(messages, images=images)],
        chat_template=template,
        add_generation_prompt=prompt,
        tokenize=tokenize,
        return_dict=tokenize,
        processor_kwargs=PROCESSOR_KWARGS,
    )
    return [int(i) for i in out["input_ids"][0]] if tokenize else (out[0] if isinstance(out, list) else out)


def _common(a: list, b: list) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _text_of(message: dict) -> str:
    content = message["content"]
    return content if isinstance(content, str) else "".join(p.get("text") or "" for p in content if p["type"] == "text")


def _images_in(messages: list[dict]) -> int:
    return sum(1 for m in messages if not isinstance(m["content"], str) for p in m["content"] if p["type"] == "image")


def _turn_span(processor, messages, images, template, k: int, rendered: list[int], where: str) -> tuple[int, int]:
    """(start, end) of assistant turn k within `rendered` (messages[:k+1] rendered)."""
    before, shown = messages[:k], images[: _images_in(messages[:k])]
    plain = _render(processor, before, shown, template, False, True)
    prompt = _render(processor, before, shown, template, True, True)
    if prompt[: len(plain)] != plain or rendered[: len(plain)] != plain:
        raise UserError(
            f"{where}: the chat template renders the turns before assistant turn {k + 1} differently once a "
            "generation prompt or the turn follows them, so its tokens cannot be told apart"
        )
    start, end = max(_common(prompt, rendered), len(plain)), len(rendered)
    eos = getattr(processor, "tokenizer", processor).eos_token_id
    if eos is not None and eos in rendered[start:end]:
        # what a template writes after the end-of-sequence token (a newline) is never generated
        end = max(i for i in range(start, end) if rendered[i] == eos) + 1
    text = _text_of(messages[k]).strip()
    rendered_text = _render(processor, messages[: k + 1], shown, template, False, False)
    header = _common(_render(processor, before, shown, template, True, False), rendered_text)
    at = rendered_text.rfind(text)
    if start >= end or (text and (at < 0 or at + len(text) <= header)):
        raise UserError(
            f"{where}: the chat template does not render assistant turn {k + 1} as written (it drops or rewrites "
            "part of it, e.g. a template that removes everything up to </think>), so the loss would miss it"
        )
    return start, end


def token_ids(processor, messages: list[dict], images: list, template: str | None = None) -> list[int]:
    """The whole conversation's tokens as training renders it (no generation prompt)."""
    return _render(processor, messages, images, template, False, True)


def assistant_mask(processor, messages: list[dict], images: list, template: str | None, where: str) -> tuple[list[int], int]:
    """(mask over the full rendering's tokens, assistant turns left as context because later turns rewrite them).

    `messages` are in TRL's multimodal layout (content: parts with image placeholders), `images` in order;
    for a text-only LLM (`processor` is its tokenizer) plain-string turns and no images.
    """
    full = _render(processor, messages, images, template, False, True)
    mask, context_only = [0] * len(full), 0
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        upto = images[: _images_in(messages[: k + 1])]
        rendered = full if k == len(messages) - 1 else _render(processor, messages[: k + 1], upto, template, False, True)
        start, end = _turn_span(processor, messages, images, template, k, rendered, where)
        if full[: len(rendered)] != rendered:
            if k == last:
                raise UserError(f"{where}: the chat template renders the last assistant turn differently once the "
                                "turns after it are added, so its tokens cannot be located")
            context_only += 1
            continue
        mask[start:end] = [1] * (end - start)
    return mask, context_only


class OwnMaskCollator:
    """TRL's vision collator renders and pads the batch (right side); the labels then keep only the
    tokens of each example's precomputed `assistant_masks`."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        masks = [ex["assistant_masks"] for ex in examples]
        batch = self.inner([{k: v for k, v in ex.items() if k != "assistant_masks"} for ex in examples])
        lengths = batch["attention_mask"].sum(dim=1).tolist()
        if lengths != [len(m) for m in masks]:
            raise RuntimeError(f"the collator rendered {lengths} tokens where the assistant masks cover "
                               f"{[len(m) for m in masks]}: the rendering changed since the rows were measured")
        keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
        for i, m in enumerate(masks):
            keep[i, : len(m)] = torch.tensor(m, dtype=torch.bool)
        batch["labels"][~keep] = -100
        return batch
