"""Every prompt r1v3 writes, in one place: the benchmark's official wording (MMMU's), the reasoning
prompt (think, then the final answer in \\boxed{}) that eval, difficulty, select-ckpt, rl and the
synthetic traces all use, so RL trains on what eval asks; and distill's teacher template, which sft
`--format text-rendering` shares so a taught teacher sees what distill will ask it."""

from __future__ import annotations

import re

from r1v3 import answers, data
from r1v3.errors import UserError

STYLES = ("official", "reasoning")
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."
REASONING_MC_INSTRUCTION = (
    "First think the problem through step by step inside <think> and </think>. "
    "After </think>, give the final answer as the letter of the correct option inside "
    "\\boxed{}, for example \\boxed{A}."
)
REASONING_OPEN_INSTRUCTION = (
    "First think the problem through step by step inside <think> and </think>. "
    "After </think>, give the final answer as a single number, word or phrase inside "
    "\\boxed{}."
)


def _prompt_text(row: dict, style: str) -> str:
    question = str(row.get("question", ""))
    qtype = row.get("question_type")
    if qtype not in answers.QUESTION_TYPES:
        raise UserError(f"row {row.get('id', '?')}: question_type {qtype!r} is not 'multiple-choice' or 'open'")
    if qtype == "multiple-choice":
        options = list(row.get("options") or [])
        if not options:
            raise UserError(f"row {row.get('id', '?')}: a multiple-choice question needs options")
        letters, _ = answers.choices_for(options)
        # The official layout: question, one "(A) text" line per option, a blank line,
        # then the instruction.
        listing = "".join(f"({letter}) {option}\n" for letter, option in zip(letters, options))
        instruction = MC_INSTRUCTION if style == "official" else REASONING_MC_INSTRUCTION
        return f"{question}\n{listing}\n{instruction}"
    instruction = OPEN_INSTRUCTION if style == "official" else REASONING_OPEN_INSTRUCTION
    return f"{question}\n{instruction}"


def build_prompt(row: dict, style: str) -> list[dict]:
    """The user turn for one problem as content parts, images interleaved.

    style "official": the benchmark's own wording and option layout; "reasoning": the think
    template (reason in <think>...</think>, final answer in \\boxed{}). Each `<image N>` in
    the question or options becomes {"type": "image", "index": N-1} at that place; images
    no placeholder mentions come first. A second mention of the same image stays as text,
    so that each image is sent once.
    """
    if style not in STYLES:
        raise UserError(f"prompt style must be one of {', '.join(STYLES)}, got {style!r}")
    text = _prompt_text(row, style)
    parts, _ = data.interleave_images([text], len(row.get("images") or []), f"row {row.get('id', '?')}")
    return parts[0]


def user_message(row: dict, style: str) -> tuple[dict, list]:
    """The user turn as one chat message with its image parts in place, and the images they take,
    in order: what eval, difficulty, select-ckpt and rl all prompt with."""
    content, images = [], []
    for part in build_prompt(row, style):
        if part["type"] == "image":
            content.append({"type": "image"})
            images.append(row["images"][part["index"]])
        else:
            content.append({"type": "text", "text": part["text"]})
    return {"role": "user", "content": content}, images


def request(row: dict, style: str):
    """A generation request for one problem."""
    from r1v3.generation import Request

    message, images = user_message(row, style)
    return Request(id=row["id"], messages=[message], images=images)


def prompt_text(row: dict, style: str) -> str:
    """The user turn's text alone (the chat template puts unmentioned images first), as synthetic
    conversations and distilled traces write it."""
    return "".join(p["text"] for p in build_prompt(row, style) if p["type"] == "text")


# --------------------------------------------------------------------------------------
# distill's teacher: a text-only model reads a description of the image
# --------------------------------------------------------------------------------------

PLACEHOLDERS = ("caption", "question", "options", "instruction")
TEACHER_TEMPLATE = (
    "You cannot see the image of this problem; here is a description of it:\n{caption}\n\n"
    "{question}\n{options}\n"
    "Reason as if you were looking at the image yourself: call it \"the image\", never mention a description. "
    "{instruction}"
)
_FIELD = re.compile(r"\{\{|\}\}|\{([A-Za-z_]\w*)\}")


def fill(template: str, values: dict[str, str]) -> str:
    """The template with its {placeholders} replaced; an unknown one is a one-line error."""

    def sub(m: re.Match) -> str:
        if m.group(1) is None:
            return m.group(0)[0]
        if m.group(1) not in values:
            raise UserError(f"--template (template): unknown placeholder {{{m.group(1)}}}; use "
                            f"{', '.join('{' + k + '}' for k in PLACEHOLDERS)}, or {{{{ }}}} for literal braces")
        return values[m.group(1)]

    return _FIELD.sub(sub, template)


def teacher_prompt(row: dict, template: str = TEACHER_TEMPLATE) -> str:
    """The teacher's user turn for one problem: its caption in the image's place, the options, and the
    reasoning instruction (so its traces answer as the student will be asked to)."""
    mc = row["question_type"] == "multiple-choice"
    letters, _ = answers.choices_for(row["options"]) if mc else ([], {})
    options = "".join(f"({letter}) {option}\n" for letter, option in zip(letters, row["options"]))
    instruction = REASONING_MC_INSTRUCTION if mc else REASONING_OPEN_INSTRUCTION
    return fill(template, {"caption": row["caption"], "question": row["question"], "options": options,
                           "instruction": instruction})
