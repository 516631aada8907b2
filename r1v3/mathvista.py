"""MathVista: import of a local copy, prompts, and scoring by the official rules.

The official pipeline (github.com/lupantech/MathVista, `evaluation/`) scores in two steps:
`extract_answer.py` turns a response into an `extraction` (a few quick rules, then GPT-4),
and `calculate_score.py` normalises the extraction by question and answer type and compares
it with the gold answer by plain equality, overall and per metadata field. The second step is
reproduced here exactly (`normalize`, `aggregate`), so saved responses that carry the official
`extraction` re-score to the official numbers. The first is rule-based here: the last
`\\boxed{}`, else the official quick rules for a bare answer, else a parse failure (no model
is asked).

Rows are problem rows (r1v3.data) whose `meta` holds what the official scorer reads:
answer_type, precision, unit, the official `query` (the prompt of `--style official`) and the
metadata (language, source, category, task, context, grade, skills, ...). A multiple-choice
row's answer is the letter of the official answer text among its options.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from r1v3 import answers, data, jsonio
from r1v3.errors import UserError

NAME = "MathVista"
HUB_REPO = "AI4Math/MathVista"
SPLITS = ("testmini",)  # the test split's answers are withheld: nothing to score
OFFICIAL_BUDGET = 1024  # the official query asks for the answer "at the end", after any working
STYLES = ("official", "reasoning")
QUESTION_TYPES = {"multi_choice": "multiple-choice", "free_form": "open"}  # official -> row
FREE_FORM_TYPES = ("integer", "float", "list")  # the official scorer has no rule for another
# the official per-category breakdown, in the order calculate_score.py writes it
BREAKDOWN = ("question_type", "answer_type", "language", "source", "category", "task", "context", "grade", "skills")
METADATA_KEYS = BREAKDOWN[2:]
# How the official scorer reads an integer answer. "float": int(float(x)), as calculate_score.py
# has done since its first commit ("1.5" -> "1"). "int": int(x) ("1.5" is no answer), as the
# scorer did that wrote most of the repository's published results (their own `prediction`
# fields show it): re-scoring those files reproduces their scores only with this rule.
INTEGER_RULES = ("float", "int")
JSON_KEYS = ("overall", "average", *BREAKDOWN, "parse_failures", "samples")  # what `--json` prints
GROUPS = (("task", "task"), *((k, k.replace("_", " ")) for k in BREAKDOWN if k != "task"))  # chart: by task

_FORMAT = {  # what the reasoning prompt asks to put in \boxed{}, by answer type
    "integer": "an integer",
    "list": "a Python list, for example \\boxed{[1, 2, 3]}",
}


# --------------------------------------------------------------------------------------
# rows
# --------------------------------------------------------------------------------------


def _text(raw: dict, key: str, where: str, *, optional: bool = False) -> str | None:
    value = raw.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: '{key}' must be a non-empty string, got {value!r:.60}")
    return value


def _metadata(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise UserError(f"{where}: 'metadata' must be an object, got {type(value).__name__}")
    for key in METADATA_KEYS:
        item = value.get(key)
        if key == "skills":
            if not isinstance(item, list) or not all(isinstance(s, str) and s for s in item):
                raise UserError(f"{where}: 'metadata.skills' must be a list of strings, got {item!r:.60}")
        elif not isinstance(item, str) or not item:
            raise UserError(f"{where}: 'metadata.{key}' must be a non-empty string, got {item!r:.60}")
    return value


def _precision(value, answer_type: str, where: str):
    """The decimal places of a float answer: a whole number (the hub stores it as a float)."""
    if answer_type != "float":
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value < 0 \
            or value != int(value):
        raise UserError(f"{where}: 'precision' must be a whole number of decimal places for a float answer, "
                        f"got {value!r:.60}")
    return value


def _choices(value, question_type: str, where: str) -> list[str]:
    if question_type == "free_form":
        if value:
            raise UserError(f"{where}: 'choices' must be empty for a free_form question, got {value!r:.60}")
        return []
    if not isinstance(value, list) or len(value) < 2 or len(value) > len(data.LETTERS):
        raise UserError(f"{where}: 'choices' must be a list of 2 to 26 option texts for a multi_choice question, "
                        f"got {value!r:.60}")
    for i, choice in enumerate(value):
        if not isinstance(choice, str) or not choice.strip():
            raise UserError(f"{where}: 'choices' item {i} must be a non-empty string, got {choice!r:.60}")
    return value


def _types(raw: dict, where: str) -> tuple[str, str]:
    question_type, answer_type = raw.get("question_type"), raw.get("answer_type")
    if question_type not in QUESTION_TYPES:
        raise UserError(f"{where}: 'question_type' must be one of {', '.join(QUESTION_TYPES)}, got {question_type!r:.60}")
    if question_type == "free_form" and answer_type not in FREE_FORM_TYPES:
        raise UserError(f"{where}: 'answer_type' of a free_form question must be one of "
                        f"{', '.join(FREE_FORM_TYPES)}, got {answer_type!r:.60}")
    if not isinstance(answer_type, str) or not answer_type:
        raise UserError(f"{where}: 'answer_type' must be a non-empty string, got {answer_type!r:.60}")
    return question_type, answer_type


def _hub_row(raw: dict, split: str, where: str, root: Path) -> dict:
    pid = raw.get("pid")
    if not isinstance(pid, str) or not pid.strip():
        raise UserError(f"{where}: 'pid' must be a non-empty string, got {pid!r:.60}")
    where = f"{where} (pid {pid})"
    question_type, answer_type = _types(raw, where)
    choices = _choices(raw.get("choices"), question_type, where)
    answer = _text(raw, "answer", where)
    if answer != answer.strip():
        # rows keep answers stripped; the official equality would then differ from ours
        raise UserError(f"{where}: 'answer' {answer!r:.60} has surrounding blanks")
    if question_type == "multi_choice":
        if answer not in choices:
            raise UserError(f"{where}: 'answer' {answer!r:.60} is not one of the 'choices'")
        answer = data.LETTERS[choices.index(answer)]
    image = raw.get("decoded_image")
    if not isinstance(image, dict) or not (image.get("bytes") or image.get("path")):
        image = raw.get("image")  # a path into the copy (the hub's images/ folder)
        if not isinstance(image, str) or not image:
            raise UserError(f"{where}: no image: 'decoded_image' is empty and 'image' names no file")
    meta = {
        "answer_type": answer_type,
        "precision": _precision(raw.get("precision"), answer_type, where),
        "unit": _text(raw, "unit", where, optional=True) if raw.get("unit") else None,
        "query": _text(raw, "query", where),
        "metadata": _metadata(raw.get("metadata"), where),
    }
    return data.normalize_row({
        "id": pid,
        "images": [data._image(image, 1, where, str(root))],
        "question": _text(raw, "question", where),
        "options": choices,
        "answer": answer,
        "question_type": QUESTION_TYPES[question_type],
        "subject": meta["metadata"]["task"],
        "source": f"{NAME}/{split}",
        "meta": meta,
    }, where)


def import_local(path, split: str = "testmini") -> list[dict]:
    """Problem rows from a local copy laid out as the hub's AI4Math/MathVista
    (`<path>/data/<split>-*.parquet`; an image is the embedded `decoded_image`, else the file
    its `image` column names inside the copy)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root}: no such directory (expected a local {HUB_REPO} copy with a data/ folder)")
    files = sorted(p for p in (root / "data").glob(f"{split}-*.parquet") if p.is_file())
    if not files:
        raise UserError(f"{root / 'data'}: no parquet files for split {split!r} "
                        f"(expected {split}-00000-of-00001-*.parquet, the hub layout)")
    rows, seen = [], {}
    for file in files:
        try:
            table = pq.read_table(file)
        except (pa.ArrowException, OSError) as e:
            raise UserError(f"{file}: not a readable parquet file: {str(e).splitlines()[0]}")
        needed = ("pid", "question", "choices", "answer", "question_type", "answer_type", "precision",
                  "metadata", "query")
        missing = [c for c in needed if c not in table.column_names]
        if missing:
            raise UserError(f"{file}: not in the {NAME} schema, missing column(s) {', '.join(missing)}")
        i = 0
        for batch in table.to_batches():
            for raw in batch.to_pylist():
                row = _hub_row(raw, split, f"{file} row {i}", root)
                if row["id"] in seen:
                    raise UserError(f"{file} row {i}: pid {row['id']!r} also in row {seen[row['id']]}")
                seen[row["id"]] = i
                rows.append(row)
                i += 1
    if not rows:
        raise UserError(f"{root}: split {split!r} is empty")
    return rows


def subject_name(name: str) -> str:
    """A row's subject is its task ("geometry problem solving"), named as the metadata names it."""
    return name


def _meta(row: dict) -> dict:
    """The official fields of a row; a row that is not MathVista's is one line naming it."""
    meta = row.get("meta") or {}
    where = f"row {row.get('id', '?')}"
    if "answer_type" not in meta or "metadata" not in meta:
        raise UserError(f"{where}: has no {NAME} fields (answer_type, precision, metadata in 'meta'): "
                        f"import the benchmark with `r1v3 data mathvista`, or score other rows with `r1v3 eval mmmu`")
    official = {"question_type": "multi_choice" if row.get("question_type") == "multiple-choice" else "free_form",
                "answer_type": meta["answer_type"]}
    _types(official, where)
    _precision(meta.get("precision"), meta["answer_type"], where)
    _metadata(meta["metadata"], where)
    return meta


def official_fields(row: dict) -> dict:
    """What the official scorer reads of a problem row: question and answer type, precision,
    choices, the gold answer as the official file writes it (the option text for multiple
    choice) and the metadata."""
    meta = _meta(row)
    mc = row["question_type"] == "multiple-choice"
    choices = list(row.get("options") or [])
    return {
        "question_type": "multi_choice" if mc else "free_form",
        "answer_type": meta["answer_type"],
        "precision": meta.get("precision"),
        "choices": choices if mc else None,
        "answer": choices[data.LETTERS.index(row["answer"])] if mc else row["answer"],
        "metadata": meta["metadata"],
    }


# --------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------


def _instruction(row: dict, meta: dict) -> str:
    if row["question_type"] == "multiple-choice":
        what = "the letter of the correct option, for example \\boxed{A}"
    elif meta["answer_type"] == "float":
        places = int(meta["precision"])
        what = f"a number with {places} decimal place{'s' if places != 1 else ''}"
    else:
        what = _FORMAT[meta["answer_type"]]
    return ("First think the problem through step by step inside <think> and </think>. "
            f"After </think>, give the final answer as {what} inside \\boxed{{}}.")


def prompt_text(row: dict, style: str) -> str:
    """official: the benchmark's `query` as published (hint, question, choices); reasoning: the
    question, its unit and choices laid out as the official query does, then the think template."""
    if style not in STYLES:
        raise UserError(f"prompt style must be one of {', '.join(STYLES)}, got {style!r}")
    meta = _meta(row)
    if style == "official":
        return meta["query"]
    question = f"Question: {row['question']}" + (f" (Unit: {meta['unit']})" if meta.get("unit") else "")
    listing = "".join(f"\n({letter}) {option}" for letter, option in zip(data.LETTERS, row["options"]))
    choices = f"\nChoices:{listing}" if listing else ""
    return f"{question}{choices}\n{_instruction(row, meta)}"


def request(row: dict, style: str):
    """A generation request for one problem: its image(s) first, then the prompt text."""
    from r1v3.generation import Request

    parts, order = data.interleave_images([prompt_text(row, style)], len(row["images"]), f"row {row['id']}")
    content = [{"type": "image"} if p["type"] == "image" else {"type": "text", "text": p["text"]} for p in parts[0]]
    return Request(id=row["id"], messages=[{"role": "user", "content": content}],
                   images=[row["images"][k] for k in order])


# --------------------------------------------------------------------------------------
# extraction (ours) and normalisation + equality (the official calculate_score.py)
# --------------------------------------------------------------------------------------

_QUOTED = re.compile(r'The answer is "(.*)"\.')
_BARE_LETTER = re.compile(r"\(?([A-Za-z])\)?\.?")


def quick_extract(response: str, question_type: str, answer_type: str, choices: Sequence[str] | None) -> str | None:
    """The official quick rules for a bare answer, in their order: a response that is one of the
    choices, an integer, a float, `The answer is "..."`. Where the official pipeline then asks
    GPT-4, one more rule here: a bare option letter ("B", "(B)", "B."). None: nothing found."""
    if not response:
        return None
    if question_type == "multi_choice" and response in (choices or []):
        return response
    try:
        if answer_type == "integer":
            return str(int(response))
        if answer_type == "float":
            return str(float(response))
    except (ValueError, OverflowError):
        pass
    quoted = _QUOTED.search(response)
    if quoted:
        return quoted.group(1)
    letter = _BARE_LETTER.fullmatch(response.strip()) if question_type == "multi_choice" else None
    if letter and letter.group(1).upper() in data.LETTERS[:len(choices or [])]:
        return letter.group(1).upper()
    return None


def extract(response: str, question_type: str, answer_type: str, choices: Sequence[str] | None) -> answers.Extraction:
    """The answer of a response, from the text after the last </think>: the last \\boxed{},
    else the quick rules. A \\boxed{} that is the last thing is trusted as the model's answer."""
    _, final = answers.split_think(response if isinstance(response, str) else "")
    final = final[-answers.MAX_FINAL_CHARS:]
    boxed = answers.last_boxed(final)
    if boxed is not None and boxed.strip():
        return answers.Extraction(boxed.strip(), "boxed")
    found = quick_extract(final, question_type, answer_type, choices)
    return answers.Extraction(found, "quick") if found is not None else answers.Extraction(None, "none")


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute, each 1), as the official scorer
    measures which choice a free-text extraction is closest to."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def normalize(extraction, choices, question_type: str, answer_type: str, precision, ignore_empty: bool = False,
              integer: str = "float"):
    """The prediction the official scorer compares with the gold answer:
    multi_choice: "(B) ..." -> "B"; a letter -> its choice; else the nearest choice by edit
      distance (the first of equals), so every extraction becomes some choice;
    integer: str(int(float(x))) (`integer` "int": str(int(x)), see INTEGER_RULES);
    float: str(round(float(x), precision)); list: str(x);
    None when the conversion fails (and, with ignore_empty, for an empty multi_choice one)."""
    if question_type == "multi_choice":
        text = extraction.strip() if isinstance(extraction, str) else str(extraction)
        if ignore_empty and not text:
            return None
        letter = re.findall(r"\(([a-zA-Z])\)", text)
        if letter:
            text = letter[0].upper()
        letters = [chr(ord("A") + i) for i in range(len(choices))]
        if text in letters:
            return choices[letters.index(text)]
        distances = [edit_distance(text, choice) for choice in choices]
        return choices[distances.index(min(distances))]
    try:
        if answer_type == "integer":
            return str(int(float(extraction) if integer == "float" else extraction))
        if answer_type == "float":
            return str(round(float(extraction), int(precision)))
        if answer_type == "list":
            return str(extraction)
    except (ValueError, TypeError, OverflowError):
        return None
    raise UserError(f"answer_type {answer_type!r} of a free_form question has no official rule")


def _record(fields: dict, extraction, method: str, ignore_empty: bool, integer: str) -> dict:
    if integer not in INTEGER_RULES:
        raise UserError(f"the integer rule must be one of {', '.join(INTEGER_RULES)}, got {integer!r}")
    if method == "none":
        prediction = None  # nothing extracted is wrong, not the nearest choice
    else:
        prediction = normalize(extraction, fields["choices"], fields["question_type"], fields["answer_type"],
                               fields["precision"], ignore_empty, integer)
    return {
        "extraction": extraction,
        "method": method,
        "prediction": prediction,
        "parse_failure": method == "none" or (method == "official" and not str(extraction).strip()),
        "correct": prediction == fields["answer"],  # the official equality, types included
    }


def judge(row: dict, response: str, style: str, integer: str = "float") -> dict:
    """Score one response to one problem row (either style: the extraction reads a \\boxed{}
    answer or a bare one)."""
    if style not in STYLES:
        raise UserError(f"scoring style must be one of {', '.join(STYLES)}, got {style!r}")
    fields = official_fields(row)
    found = extract(response, fields["question_type"], fields["answer_type"], fields["choices"])
    out = {"id": row["id"], **fields, "response": response if isinstance(response, str) else ""}
    return out | _record(fields, found.answer, found.method, ignore_empty=True, integer=integer)


def _acc(correct: int, total: int) -> dict:
    return {"accuracy": correct / total, "correct": correct, "total": total}


def aggregate(records: Sequence[dict]) -> dict:
    """The official scores (`average` and one table per BREAKDOWN field, each sorted by accuracy,
    highest first), plus `overall` and the parse failures every r1v3 eval reports. With k
    responses per item every response counts once, so the accuracy is mean@k."""
    total = len(records)
    correct = sum(bool(r["correct"]) for r in records)
    failures = sum(bool(r.get("parse_failure")) for r in records)
    scores = {"overall": {"acc": correct / total if total else 0.0, "n": total}}
    scores["average"] = _acc(correct, total) if total else {"accuracy": 0.0, "correct": 0, "total": 0}
    for key in BREAKDOWN:
        counts: dict = defaultdict(lambda: [0, 0])  # value -> [correct, total], in order of appearance
        for r in records:
            value = r["metadata"][key] if key in METADATA_KEYS else r[key]
            values = value if key == "skills" else [value]
            for value in dict.fromkeys(values):
                counts[value][0] += bool(r["correct"])
                counts[value][1] += 1
        table = {value: _acc(c, n) for value, (c, n) in counts.items()}
        scores[key] = dict(sorted(table.items(), key=lambda item: item[1]["accuracy"], reverse=True))
    scores["parse_failures"] = {"n": failures, "rate": failures / total if total else 0.0}
    return scores


def print_scores(scores: dict, console) -> None:
    from rich.table import Table

    title = {
        "official": f"{NAME} accuracy: the official query; answer = last \\boxed{{}} or the official quick rules; "
                    "official normalisation and equality",
        "reasoning": f"{NAME} accuracy: answer after </think> (last \\boxed{{}}, else the official quick rules); "
                     "official normalisation and equality",
    }.get(scores.get("style"), f"{NAME} accuracy: official normalisation and equality")
    from r1v3.artifacts import shown

    table = Table(title=title)
    table.add_column("category")
    table.add_column("n", justify="right")
    table.add_column("acc %", justify="right")
    for key in BREAKDOWN:
        table.add_row(f"[bold]{key}[/bold]", "", "")
        for name, g in scores[key].items():  # the dataset's own category names: any text at all
            table.add_row(shown(f"  {name}"), str(g["total"]), f"{100 * g['accuracy']:.1f}")
    from r1v3.benchmarks import print_overall

    print_overall(table, scores, console)


# --------------------------------------------------------------------------------------
# re-scoring saved responses (the official output layout)
# --------------------------------------------------------------------------------------


def _response_rows(raw, pid: str, at: str) -> list[dict]:
    if not isinstance(raw, dict):
        raise UserError(f"{at}: expected an object, got {type(raw).__name__}")
    for key in ("question_type", "answer_type", "answer", "metadata"):
        if key not in raw:
            raise UserError(f"{at}: missing key '{key}'")
    question_type, answer_type = _types(raw, at)
    choices = _choices(raw.get("choices"), question_type, at)
    if raw["answer"] is None:
        raise UserError(f"{at}: 'answer' is null")
    fields = {
        "question_type": question_type,
        "answer_type": answer_type,
        "precision": _precision(raw.get("precision"), answer_type, at),
        "choices": choices if question_type == "multi_choice" else raw.get("choices"),
        "answer": raw["answer"],
        "metadata": _metadata(raw["metadata"], at),
    }
    if "extraction" in raw:
        # scored as the official calculate_score.py scores it, whatever the response says
        return [{"id": pid, **fields, "response": raw.get("response"), "extraction": raw["extraction"], "sample": 0}]
    responses = raw.get("response")
    if isinstance(responses, str):
        responses = [responses]
    if not isinstance(responses, list) or not responses or not all(isinstance(r, str) for r in responses):
        raise UserError(f"{at}: needs 'extraction', or 'response' as a string or a list of strings")
    return [{"id": pid, **fields, "response": r, "sample": i} for i, r in enumerate(responses)]


def load_responses(path) -> list[dict]:
    """Saved responses in the official output layout: one JSON object of pid -> problem, each
    with question_type, answer_type, precision, choices, answer, metadata, and either the
    official `extraction` or a `response` (a string, or a list of strings for k samples)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected the official output JSON: pid -> problem)")
    problems = jsonio.read(path)
    if not isinstance(problems, dict):
        raise UserError(f"{path}: expected a JSON object of pid -> problem, got a JSON {type(problems).__name__}")
    rows = []
    for i, (pid, raw) in enumerate(problems.items()):
        rows.extend(_response_rows(raw, pid, f"{path} problem {i} (pid {pid})"))
    if not rows:
        raise UserError(f"{path}: holds no responses (empty object)")
    return rows


def judge_responses(rows: Sequence[dict], style: str = "official", integer: str = "float") -> list[dict]:
    """Judge rows from `load_responses`: an official extraction as calculate_score.py does
    (an empty one is normalised too: to the nearest choice), else our extraction."""
    judged = []
    for row in rows:
        fields = {k: row[k] for k in ("question_type", "answer_type", "precision", "choices", "answer", "metadata")}
        if "extraction" in row:
            scored = _record(fields, row["extraction"], "official", ignore_empty=False, integer=integer)
        else:
            found = extract(row["response"], fields["question_type"], fields["answer_type"], fields["choices"])
            scored = _record(fields, found.answer, found.method, ignore_empty=True, integer=integer)
        judged.append({"id": row["id"], **fields, "response": row["response"], "sample": row["sample"]} | scored)
    return judged
