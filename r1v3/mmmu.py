"""MMMU: the subject table, prompts, import of a local copy, scoring and re-scoring.

Scoring follows the official MMMU rules (see r1v3.answers) and its item-weighted
aggregation: a discipline's accuracy is correct items over items, not a mean of subject
accuracies.
"""

from __future__ import annotations

import ast
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from r1v3 import answers, data, jsonio
# the benchmark's prompts: the official wording and the reasoning (think + \\boxed{}) one every stage trains and asks with
from r1v3.prompts import (MC_INSTRUCTION, OPEN_INSTRUCTION, REASONING_MC_INSTRUCTION,  # noqa: F401
                          REASONING_OPEN_INSTRUCTION, STYLES, build_prompt, prompt_text, request, user_message)
from r1v3.errors import UserError

# The six disciplines and their 30 subjects, named as the benchmark's subject folders.
DISCIPLINES: dict[str, tuple[str, ...]] = {
    "Art & Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health & Medicine": (
        "Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy", "Public_Health",
    ),
    "Humanities & Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech & Engineering": (
        "Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
        "Energy_and_Power", "Materials", "Mechanical_Engineering",
    ),
}
SUBJECT_DISCIPLINE = {s: d for d, subjects in DISCIPLINES.items() for s in subjects}
SUBJECTS: tuple[str, ...] = tuple(sorted(SUBJECT_DISCIPLINE))

# The short names the official scripts accept on their command line.
SHORT_NAMES = {
    "acc": "Accounting", "agri": "Agriculture", "arch": "Architecture_and_Engineering",
    "art": "Art", "art_theory": "Art_Theory", "bas_med": "Basic_Medical_Science",
    "bio": "Biology", "chem": "Chemistry", "cli_med": "Clinical_Medicine",
    "cs": "Computer_Science", "design": "Design", "diag_med": "Diagnostics_and_Laboratory_Medicine",
    "econ": "Economics", "elec": "Electronics", "ep": "Energy_and_Power", "fin": "Finance",
    "geo": "Geography", "his": "History", "liter": "Literature", "manage": "Manage",
    "mark": "Marketing", "mate": "Materials", "math": "Math", "mech": "Mechanical_Engineering",
    "music": "Music", "phar": "Pharmacy", "phys": "Physics", "psy": "Psychology",
    "pub_health": "Public_Health", "socio": "Sociology",
}

NAME = "MMMU"
OFFICIAL_BUDGET = 128  # direct answers are a letter or a short phrase
GROUPS = (("disciplines", "discipline"), ("subjects", "subject / task"))
JSON_KEYS = ("overall", "disciplines", "subjects", "parse_failures", "samples")

MAX_IMAGES = 7  # image_1 .. image_7 in the hub schema
HUB_COLUMNS = (
    "id", "question", "options", "explanation",
    *(f"image_{k}" for k in range(1, MAX_IMAGES + 1)),
    "img_type", "answer", "topic_difficulty", "question_type", "subfield",
)


def subject_name(name: str) -> str:
    """The folder name of a subject given as folder name (any case) or official short name."""
    if name in SUBJECT_DISCIPLINE:
        return name
    lowered = str(name).lower()
    for subject in SUBJECTS:
        if subject.lower() == lowered:
            return subject
    if lowered in SHORT_NAMES:
        return SHORT_NAMES[lowered]
    raise UserError(f"unknown MMMU subject {name!r}; expected one of {', '.join(SUBJECTS)}")


def subject_of_id(item_id: str) -> str | None:
    """"validation_Art_Theory_1" -> "Art_Theory" (the official id layout), else None."""
    parts = str(item_id).split("_")
    if len(parts) < 3:
        return None
    subject = "_".join(parts[1:-1])
    return subject if subject in SUBJECT_DISCIPLINE else None


# --------------------------------------------------------------------------------------
# import of a local copy laid out as on the hub
# --------------------------------------------------------------------------------------


def _split_files(folder: Path, split: str) -> list[Path]:
    return sorted(p for p in folder.glob(f"{split}-*.parquet") if p.is_file())


def _load_image(value, where: str, k: int, folder: Path):
    """The image in column image_k, decoded now (so a broken one fails here, with its id) and
    within data's size limits; None for an empty slot. A path stays inside the subject folder."""
    if not isinstance(value, dict) or not (value.get("bytes") or value.get("path")):
        return None
    return data._image(value if value.get("bytes") else value["path"], k, where, folder)


def _renumber(text: str, mapping: dict[int, int], where: str) -> str:
    def sub(m: re.Match) -> str:
        n = int(m.group(1))
        if n not in mapping:
            raise UserError(f"{where}: '{m.group(0)}' refers to image_{n}, which is empty")
        return f"<image {mapping[n]}>"

    return data.IMAGE_REF.sub(sub, text)


def _hub_row(raw: dict, subject: str, split: str, where: str, folder: Path) -> dict:
    item_id = raw.get("id")
    if not item_id:
        raise UserError(f"{where}: missing 'id'")
    where = f"{where} (id {item_id})"
    images, mapping = [], {}
    for k in range(1, MAX_IMAGES + 1):
        img = _load_image(raw.get(f"image_{k}"), where, k, folder)
        if img is not None:
            images.append(img)
            mapping[k] = len(images)  # gaps in image_1..7 close up: placeholders follow
    try:
        options = ast.literal_eval(raw.get("options") or "[]")
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise UserError(f"{where}: 'options' is not a Python list literal: {str(raw.get('options'))[:80]!r}")
    if not isinstance(options, list):
        raise UserError(f"{where}: 'options' must hold a list, got {type(options).__name__}")
    qtype = raw.get("question_type")
    if qtype not in answers.QUESTION_TYPES:
        raise UserError(f"{where}: question_type {qtype!r} is not 'multiple-choice' or 'open'")
    # the row checks every dataset gets (empty option texts, answer letters), named by source row
    return data.normalize_row({
        "id": str(item_id),
        "images": images,
        "question": _renumber(str(raw.get("question") or ""), mapping, where),
        "options": [_renumber(str(o), mapping, where) for o in options],
        "answer": str(raw.get("answer") or ""),
        "question_type": qtype,
        "subject": subject,
        "difficulty": str(raw.get("topic_difficulty") or ""),
        "pass_rate": None,
        "source": f"MMMU/{split}",
        "caption": "",
        "messages": [],
    }, where)


def import_local(path, split: str, subjects: Sequence[str] | None = None) -> list[dict]:
    """Problem rows from a local MMMU copy (`<path>/<Subject>/<split>-*.parquet`).

    `subjects` (folder or short names) limits the import; by default every subject folder
    present is read. Images keep the order image_1..image_7 with empty slots dropped, and
    `<image N>` placeholders are renumbered to match.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(path)
    if not root.is_dir():
        raise UserError(f"{root}: no such directory (expected a local MMMU copy with one folder per subject)")
    if subjects is None:
        chosen = [s for s in SUBJECTS if (root / s).is_dir()]
        if not chosen:
            raise UserError(f"{root}: holds none of the 30 MMMU subject folders (e.g. {root / 'Art_Theory'})")
    else:
        chosen = list(dict.fromkeys(subject_name(s) for s in subjects))
        if not chosen:
            raise UserError(f"{root}: an empty list of subjects to import")
        for s in chosen:
            if not (root / s).is_dir():
                raise UserError(f"{root / s}: subject folder missing from the local MMMU copy")
    rows = []
    for subject in chosen:
        folder = root / subject
        files = _split_files(folder, split)
        if not files:
            raise UserError(f"{folder}: no parquet files for split {split!r} (expected {split}-00000-of-00001.parquet)")
        n_before = len(rows)
        for file in files:
            try:
                table = pq.read_table(file)
            except (pa.ArrowException, OSError) as e:
                raise UserError(f"{file}: not a readable parquet file: {str(e).splitlines()[0]}")
            needed = ("id", "question", "options", "answer", "question_type")
            missing = [c for c in needed if c not in table.column_names]
            if missing:
                raise UserError(f"{file}: not in the MMMU schema, missing column(s) {', '.join(missing)}")
            for i, raw in enumerate(table.to_pylist()):
                rows.append(_hub_row(raw, subject, split, f"{file} row {i}", folder))
        if len(rows) == n_before:
            raise UserError(f"{folder}: split {split!r} is empty")
    return rows


# --------------------------------------------------------------------------------------
# scoring
# --------------------------------------------------------------------------------------


def _judge_core(gold, response, question_type, options, style) -> dict:
    if style not in STYLES:
        raise UserError(f"scoring style must be one of {', '.join(STYLES)}, got {style!r}")
    response = response if isinstance(response, str) else ""
    gold = answers.gold_answer(gold)
    if style == "official":
        # The official parser on the text after the last </think> (for a model that does
        # not think, the whole response, exactly as officially).
        _, final = answers.split_think(response)
        if question_type == "multiple-choice":
            letters, index2ans = answers.choices_for(options)
            pred = answers.parse_multi_choice(final, letters, index2ans) if final else None
            extraction = answers.Extraction(pred, "parse" if pred else "none")
            correct = answers.eval_multi_choice(gold, pred)
        else:
            if final:
                # shown: the last key sub-response; judged: every official candidate
                shown = answers.key_subresponses(final)[-1].strip()
                extraction = answers.Extraction(shown or final, "parse")
                correct = answers.eval_open(gold, answers.parse_open(final))
            else:
                extraction, correct = answers.Extraction(None, "none"), False
    else:
        extraction = answers.extract(response, options=options, question_type=question_type)
        pred = extraction.answer
        if question_type == "multiple-choice":
            correct = answers.eval_multi_choice(gold, pred)
        elif pred is None:
            correct = False
        elif extraction.method == "parse":
            _, final = answers.split_think(response)
            correct = answers.eval_open(gold, answers.parse_open(final))
        else:
            # An explicit final answer: the official judgment, or an equivalent form the
            # official string rules miss (\frac{1}{2} for 0.5, "12 cm" for 12).
            correct = answers.eval_open(gold, answers.parse_open(pred)) or answers.verify(
                pred, gold, question_type="open"
            )
    return {
        "response": response,
        "extracted": extraction.answer,
        "method": extraction.method,
        "parse_failure": extraction.method == "none",
        "correct": bool(correct),
    }


def judge(row: dict, response: str, style: str) -> dict:
    """Score one response to one problem row.

    style "official": the official parser (after </think>), as the benchmark scripts
    score direct answers; "reasoning": `answers.extract` (last \\boxed{}, else an answer
    statement, else the official parse), as R1V3 scores its think-template runs.
    """
    qtype = row.get("question_type")
    if qtype not in answers.QUESTION_TYPES:
        raise UserError(f"row {row.get('id', '?')}: question_type {qtype!r} is not 'multiple-choice' or 'open'")
    out = {
        "id": row.get("id"),
        "subject": row.get("subject", ""),
        "question_type": qtype,
        "answer": row.get("answer"),
    }
    out.update(_judge_core(row.get("answer"), response, qtype, row.get("options") or None, style))
    return out


def _acc(correct: int, n: int) -> dict:
    return {"acc": correct / n if n else 0.0, "n": n}


def aggregate(judged_rows: Sequence[dict]) -> dict:
    """Accuracy overall, per discipline and per subject, and the parse-failure rate.

    Weighted by items, as the official script does (a discipline's accuracy is its correct
    items over its items). With k responses per item every response counts once, so the
    overall accuracy is mean@k. Subjects outside the 30 count overall and per subject only.
    """
    per_subject: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    failures = 0
    for row in judged_rows:
        counts = per_subject[row.get("subject") or ""]
        counts[0] += bool(row.get("correct"))
        counts[1] += 1
        failures += bool(row.get("parse_failure"))
    subjects = {s: _acc(c, n) for s, (c, n) in sorted(per_subject.items())}
    disciplines = {}
    for discipline, members in DISCIPLINES.items():
        c = sum(per_subject[s][0] for s in members if s in per_subject)
        n = sum(per_subject[s][1] for s in members if s in per_subject)
        if n:
            disciplines[discipline] = _acc(c, n)
    total = sum(n for _, n in per_subject.values())
    correct = sum(c for c, _ in per_subject.values())
    return {
        "overall": _acc(correct, total),
        "disciplines": disciplines,
        "subjects": subjects,
        "parse_failures": {"n": failures, "rate": failures / total if total else 0.0},
    }


def print_scores(scores: dict, console) -> None:
    from rich.table import Table

    title = {
        "official": "MMMU accuracy: official rules, weighted by items",
        "reasoning": "MMMU accuracy: answer after </think> (last \\boxed{}, else a stated answer, else the official parse); "
                     "official judgments, open answers also by numeric/symbolic equivalence; weighted by items",
    }.get(scores.get("style"), "MMMU accuracy, weighted by items")
    table = Table(title=title)
    table.add_column("discipline / subject")
    table.add_column("n", justify="right")
    table.add_column("acc %", justify="right")
    from r1v3.artifacts import shown

    listed = set()
    for discipline, d in scores["disciplines"].items():
        table.add_row(shown(discipline, style="bold"), str(d["n"]), f"{100 * d['acc']:.1f}")
        for subject in DISCIPLINES[discipline]:
            if subject in scores["subjects"]:
                s = scores["subjects"][subject]
                listed.add(subject)
                table.add_row(shown(f"  {subject}"), str(s["n"]), f"{100 * s['acc']:.1f}")
    for subject, s in scores["subjects"].items():  # a dataset's own subjects: any text at all
        if subject not in listed:
            table.add_row(shown(subject or "(no subject)"), str(s["n"]), f"{100 * s['acc']:.1f}")
    from r1v3.benchmarks import print_overall

    print_overall(table, scores, console)


# mean@k and pass@k read only ids and `correct`: every benchmark's records use them
def _by_item(judged_rows: Sequence[dict]) -> dict:
    items: dict = defaultdict(list)
    for row in judged_rows:
        items[row.get("id")].append(bool(row.get("correct")))
    return items


def mean_at_k(judged_rows: Sequence[dict]) -> float:
    """Mean accuracy over items of the fraction of each item's k responses that are right."""
    items = _by_item(judged_rows)
    if not items:
        return 0.0
    return sum(sum(v) / len(v) for v in items.values()) / len(items)


def pass_at_k(judged_rows: Sequence[dict], k: int) -> float:
    """Unbiased pass@k over items (each with n >= k responses, c right):
    1 - C(n-c, k) / C(n, k), averaged over items.
    """
    items = _by_item(judged_rows)
    if k < 1:
        raise UserError(f"pass@k needs k >= 1, got {k}")
    if not items:
        return 0.0
    total = 0.0
    for item_id, results in items.items():
        n, c = len(results), sum(results)
        if n < k:
            raise UserError(f"pass@{k}: item {item_id!r} has only {n} response(s)")
        if n - c < k:
            total += 1.0
        else:
            total += 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
    return total / len(items)


# --------------------------------------------------------------------------------------
# re-scoring saved responses (the official output layout)
# --------------------------------------------------------------------------------------

_RESPONSE_KEYS = ("id", "question_type", "answer", "response")


def _check_gold(answer, letters: list[str], at: str) -> None:
    """A gold answer is a text or a list of texts (official open answers), and for a
    multiple-choice row one of its letters."""
    golds = answer if isinstance(answer, list) else [answer]
    if not golds or not all(isinstance(g, str) and g.strip() for g in golds):
        raise UserError(f"{at}: 'answer' must be a non-empty string or list of strings, got {answer!r}"[:300])
    if letters:
        gold = answers.gold_answer(answer)  # as scoring reads it: "['A', 'B']" is a list
        wrong = [g for g in (gold if isinstance(gold, list) else [gold]) if g not in letters]
        if wrong:
            raise UserError(f"{at}: 'answer' {wrong[0]!r} is not one of the option letters {', '.join(letters)}"[:300])


def _response_rows(data, where: str, subject: str | None) -> list[dict]:
    if not isinstance(data, list):
        raise UserError(f"{where}: expected a JSON list of response rows, got a JSON {type(data).__name__}")
    rows = []
    for i, raw in enumerate(data):
        at = f"{where} row {i}"
        if not isinstance(raw, dict):
            raise UserError(f"{at}: expected an object, got {type(raw).__name__}")
        for key in _RESPONSE_KEYS:
            if key not in raw:
                raise UserError(f"{at}: missing key '{key}'")
        at = f"{at} (id {raw['id']})"
        # "short-answer" appears in official answer files; every non-multiple-choice type
        # is judged as open, as officially
        qtype = "multiple-choice" if raw["question_type"] == "multiple-choice" else "open"
        all_choices, index2ans = [], {}
        if qtype == "multiple-choice":
            all_choices, index2ans = raw.get("all_choices"), raw.get("index2ans")
            if not isinstance(all_choices, list) or not all_choices:
                raise UserError(f"{at}: a multiple-choice row needs a non-empty list 'all_choices'")
            expected = answers.choices_for(all_choices)[0]
            if [str(c) for c in all_choices] != expected:
                raise UserError(f"{at}: 'all_choices' must be the letters {', '.join(expected)} in order, "
                                f"got {all_choices!r}")
            if not isinstance(index2ans, dict):
                raise UserError(f"{at}: a multiple-choice row needs an object 'index2ans'")
            if sorted(map(str, index2ans)) != [str(c) for c in all_choices]:
                # a missing option text would become "", which every response contains
                raise UserError(f"{at}: 'index2ans' must have exactly the keys of 'all_choices' "
                                f"({', '.join(map(str, all_choices))}), got {', '.join(map(str, index2ans)) or 'none'}")
            for letter, text in index2ans.items():
                if not isinstance(text, str) or not text.strip():
                    raise UserError(f"{at}: 'index2ans' option {letter} must be a non-empty text, got {text!r:.60}")
        _check_gold(raw["answer"], [str(c) for c in all_choices], at)
        row_subject = subject or subject_of_id(raw["id"])
        if row_subject is None:
            raise UserError(
                f"{at}: cannot tell the subject from the id (expected '<split>_<Subject>_<n>', "
                f"e.g. validation_Art_Theory_1)"
            )
        responses = raw["response"]
        if isinstance(responses, str):
            responses = [responses]
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise UserError(f"{at}: 'response' must be a string or a list of strings")
        for sample, response in enumerate(responses):
            rows.append({
                "id": str(raw["id"]),
                "subject": row_subject,
                "question_type": qtype,
                "answer": raw["answer"],
                "all_choices": [str(c) for c in all_choices],
                "index2ans": {str(k): str(v) for k, v in index2ans.items()},
                "response": response,
                "sample": sample,
            })
    return rows


def _read_json(file: Path):
    return jsonio.read(file)


def load_responses(path) -> list[dict]:
    """Saved responses in the official output layout: a directory of `<Subject>/output.json`
    files, or one JSON list whose ids name the subject ("validation_Art_Theory_1").
    Each row: id, question_type, answer, all_choices and index2ans (multiple choice),
    response (a string, or a list of strings for k samples).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*/output.json"))
        if not files:
            raise UserError(f"{path}: no <Subject>/output.json files (the official output layout)")
        rows = []
        for file in files:
            subject = file.parent.name
            if subject not in SUBJECT_DISCIPLINE:
                raise UserError(f"{file}: folder {subject!r} is not an MMMU subject")
            rows.extend(_response_rows(_read_json(file), str(file), subject))
    elif path.is_file():
        rows = _response_rows(_read_json(path), str(path), None)
    else:
        raise UserError(f"{path}: no such file or directory")
    if not rows:
        raise UserError(f"{path}: holds no responses (empty list)")
    seen: dict[str, int] = {}
    for row in rows:
        if row["sample"] == 0:
            if row["id"] in seen:
                raise UserError(f"{path}: id {row['id']!r} appears twice (give k samples as a list in one 'response')")
            seen[row["id"]] = 1
    return rows


def judge_responses(rows: Sequence[dict], style: str = "official") -> list[dict]:
    """Judge rows from `load_responses` (options come from all_choices/index2ans)."""
    judged = []
    for row in rows:
        options = [row["index2ans"].get(c, "") for c in row["all_choices"]] or None
        out = {"id": row["id"], "subject": row["subject"], "question_type": row["question_type"],
               "answer": row["answer"], "sample": row.get("sample", 0)}
        out.update(_judge_core(row["answer"], row["response"], row["question_type"], options, style))
        judged.append(out)
    return judged


def score_responses(rows: Sequence[dict], style: str = "official") -> dict:
    """Re-score saved responses; the same summary as `aggregate`."""
    return aggregate(judge_responses(rows, style))
