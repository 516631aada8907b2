"""MathVista: import of a hub-layout copy, the official normalisation and breakdown, `eval mathvista`.

The copy is drawn here: one row of each question type / answer type / precision the benchmark has,
images by Pillow, written as the hub's `data/testmini-*.parquet`.
"""

import io
import json

import pytest

from r1v3 import mathvista
from r1v3.errors import UserError

CHOICES = ["red", "green", "blue"]


def _png(colour, size=(40, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def _meta(task="figure question answering", skills=("arithmetic reasoning",), language="english", grade="daily life"):
    return {"split": "testmini", "language": language, "img_width": 40, "img_height": 30, "source": "Drawn",
            "category": "math-targeted-vqa", "task": task, "context": "synthetic scene", "grade": grade,
            "skills": list(skills)}


def _problem(pid, question, answer, question_type, answer_type, precision=None, choices=None, unit=None, **meta):
    hint = {"text": "provide the correct option letter", "integer": "requiring an integer answer",
            "float": f"requiring a floating-point number with {precision} decimal places", "list": "a Python list"}
    query = f"Hint: Please answer the question {hint[answer_type]}.\nQuestion: {question}"
    if choices:
        query += "\nChoices:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
    return {"pid": pid, "question": question, "image": f"images/{pid}.png", "choices": choices, "unit": unit,
            "precision": precision, "answer": answer, "question_type": question_type, "answer_type": answer_type,
            "metadata": _meta(**meta), "query": query}


def problems() -> list[dict]:
    """One problem of each question_type/answer_type/precision combination of MathVista."""
    return [
        _problem("1", "What colour is the square?", "green", "multi_choice", "text", choices=CHOICES,
                 skills=("numeric commonsense", "arithmetic reasoning")),
        _problem("2", "How many squares are there?", "3", "free_form", "integer", unit="squares",
                 task="math word problem", language="chinese"),
        _problem("3", "What is the width in cm?", "1.5", "free_form", "float", precision=1.0,
                 task="math word problem", grade="high school"),
        _problem("4", "What fraction is red?", "0.25", "free_form", "float", precision=2.0,
                 skills=("statistical reasoning",), grade="high school"),
        _problem("5", "Which two bars are tallest?", "[1, 2]", "free_form", "list",
                 skills=("statistical reasoning", "arithmetic reasoning")),
    ]


def write_copy(root, rows=None, *, image_paths=("5",)):
    """A local copy in the hub layout; the rows named in `image_paths` keep their image as a file
    under images/ (the hub's images.zip) instead of embedded bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = problems() if rows is None else rows
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    out = []
    for i, p in enumerate(rows):
        png = _png(["red", "green", "blue", "white", "black"][i % 5])
        if p["pid"] in image_paths:
            (root / p["image"]).write_bytes(png)
            out.append(dict(p, decoded_image=None))
        else:
            out.append(dict(p, decoded_image={"bytes": png, "path": None}))
    pq.write_table(pa.Table.from_pylist(out), root / "data" / "testmini-00000-of-00001-fixture.parquet")
    return root


# --------------------------------------------------------------------------------------
# the official normalisation, rule by rule


def norm(extraction, question_type="free_form", answer_type="integer", precision=None, **kw):
    return mathvista.normalize(extraction, CHOICES if question_type == "multi_choice" else None, question_type,
                               answer_type, precision, **kw)


@pytest.mark.parametrize("extraction, expected", [
    ("B", "green"),                 # a letter is its choice
    ("(C) blue, I think", "blue"),  # "(X)" anywhere wins
    ("(c)", "blue"),                # ... upper-cased
    ("  A  ", "red"),               # stripped first
    ("green", "green"),             # the choice's own text
    ("gren", "green"),              # else the nearest choice by edit distance
    ("b", "red"),                   # a bare lower-case letter is no letter: "red" and "blue" are both 3 away, first wins
    ("D", "red"),                   # a letter past the choices: nearest text ("red", "blue" are 3 away)
    (2, "red"),                     # not a string: str() first
    ("", "red"),                    # empty: the nearest choice is the shortest
])
def test_multi_choice_maps_every_extraction_to_a_choice(extraction, expected):
    assert norm(extraction, "multi_choice", "text") == expected


def test_multi_choice_empty_extraction_is_none_only_when_asked():
    assert norm("", "multi_choice", "text", ignore_empty=True) is None
    assert norm("  ", "multi_choice", "text", ignore_empty=True) is None
    assert norm("A", "multi_choice", "text", ignore_empty=True) == "red"


@pytest.mark.parametrize("extraction, by_float, by_int", [
    ("3", "3", "3"),
    ("3.7", "3", None),       # truncated by int(float()), no answer for int()
    ("-0.5", "0", None),
    ("1e3", "1000", None),
    (" 12 ", "12", "12"),
    ("1,000", None, None),
    ("nan", None, None),
    ("inf", None, None),
    (None, None, None),
    (7, "7", "7"),
    (7.9, "7", "7"),
])
def test_integer_answers_under_both_rules(extraction, by_float, by_int):
    assert norm(extraction, answer_type="integer") == by_float
    assert norm(extraction, answer_type="integer", integer="int") == by_int


@pytest.mark.parametrize("extraction, precision, expected", [
    ("1.55", 1, "1.6"),
    ("2.675", 2, "2.67"),   # Python's round on the binary value, as the official script
    ("0.25", 1, "0.2"),     # round half to even
    ("3", 2.0, "3.0"),      # a float precision (the hub stores 1.0) is used as a whole number
    ("-0.004", 2, "-0.0"),
    ("1/2", 1, None),
    ("", 1, None),
    (None, 1, None),
])
def test_float_answers_round_to_the_precision(extraction, precision, expected):
    assert norm(extraction, answer_type="float", precision=precision) == expected


@pytest.mark.parametrize("extraction, expected", [
    ("[1, 2]", "[1, 2]"),
    ([1, 2], "[1, 2]"),
    ("[1,2]", "[1,2]"),   # no parsing: the text as given
    (None, "None"),
])
def test_list_answers_are_their_text(extraction, expected):
    assert norm(extraction, answer_type="list") == expected


def test_equality_is_plain_and_typed():
    fields = {"question_type": "free_form", "answer_type": "integer", "precision": None, "choices": None}
    record = mathvista._record(fields | {"answer": "3"}, "3.0", "official", False, "float")
    assert record["prediction"] == "3" and record["correct"]
    assert not mathvista._record(fields | {"answer": 3}, "3", "official", False, "float")["correct"]  # "3" != 3
    float_fields = fields | {"answer_type": "float", "precision": 1, "answer": "1.5"}
    assert mathvista._record(float_fields, "1.50", "official", False, "float")["correct"]
    assert mathvista._record(float_fields, "1.54", "official", False, "float")["correct"]  # rounds to 1.5
    assert not mathvista._record(float_fields, "1.56", "official", False, "float")["correct"]


@pytest.mark.parametrize("a, b, distance", [
    ("kitten", "sitting", 3), ("", "abc", 3), ("abc", "", 3), ("abc", "abc", 0), ("é", "e", 1), ("ab", "ba", 2),
])
def test_edit_distance(a, b, distance):
    assert mathvista.edit_distance(a, b) == mathvista.edit_distance(b, a) == distance


# --------------------------------------------------------------------------------------
# our extraction


@pytest.mark.parametrize("response, question_type, answer_type, expected, method", [
    ("<think>maybe \\boxed{2}</think> so \\boxed{3}", "free_form", "integer", "3", "boxed"),
    ("<think>\\boxed{2}</think> It is three.", "free_form", "integer", None, "none"),  # only after </think>
    ("\\boxed{ (B) }", "multi_choice", "text", "(B)", "boxed"),
    ("green", "multi_choice", "text", "green", "quick"),
    (" 12\n", "free_form", "integer", "12", "quick"),
    ("1.25", "free_form", "float", "1.25", "quick"),
    ("12.5", "free_form", "integer", None, "none"),        # int() fails and it is not a float question
    ('The answer is "[3, 4]".', "free_form", "list", "[3, 4]", "quick"),
    ("(b).", "multi_choice", "text", "B", "quick"),
    ("The colour is green.", "multi_choice", "text", None, "none"),
    ("", "free_form", "integer", None, "none"),
    ("<think>never closed \\boxed{3}", "free_form", "integer", None, "none"),
])
def test_extraction_rules(response, question_type, answer_type, expected, method):
    found = mathvista.extract(response, question_type, answer_type, CHOICES if question_type == "multi_choice" else None)
    assert found == (expected, method)


# --------------------------------------------------------------------------------------
# the breakdown


def _records(correct: list[bool]) -> list[dict]:
    out = []
    for p, ok in zip(problems(), correct):
        out.append({"id": p["pid"], "question_type": p["question_type"], "answer_type": p["answer_type"],
                    "metadata": p["metadata"], "correct": ok, "parse_failure": False})
    return out


def test_breakdown_layout_counts_and_order():
    scores = mathvista.aggregate(_records([True, False, True, False, True]))
    assert scores["average"] == {"accuracy": 0.6, "correct": 3, "total": 5}
    assert scores["overall"] == {"acc": 0.6, "n": 5}
    assert list(scores) == ["overall", "average", *mathvista.BREAKDOWN, "parse_failures"]
    assert scores["question_type"] == {"multi_choice": {"accuracy": 1.0, "correct": 1, "total": 1},
                                       "free_form": {"accuracy": 0.5, "correct": 2, "total": 4}}
    assert scores["answer_type"]["float"] == {"accuracy": 0.5, "correct": 1, "total": 2}
    # a problem counts once under each of its skills
    assert scores["skills"]["arithmetic reasoning"] == {"accuracy": 0.75, "correct": 3, "total": 4}
    assert scores["skills"]["statistical reasoning"] == {"accuracy": 0.5, "correct": 1, "total": 2}
    assert scores["language"]["chinese"] == {"accuracy": 0.0, "correct": 0, "total": 1}
    # highest accuracy first; equal ones in the order they first appear
    assert list(scores["answer_type"]) == ["text", "list", "float", "integer"]
    assert list(scores["grade"]) == ["daily life", "high school"]


# --------------------------------------------------------------------------------------
# rows and prompts


def test_import_keeps_the_official_fields(tmp_path):
    rows = mathvista.import_local(write_copy(tmp_path / "copy"))
    assert [r["id"] for r in rows] == ["1", "2", "3", "4", "5"]
    mc, integer, float1 = rows[0], rows[1], rows[2]
    assert mc["question_type"] == "multiple-choice" and mc["options"] == CHOICES and mc["answer"] == "B"
    assert integer["question_type"] == "open" and integer["answer"] == "3" and integer["meta"]["unit"] == "squares"
    assert float1["meta"]["precision"] == 1.0 and float1["meta"]["answer_type"] == "float"
    assert rows[4]["images"][0].size == (40, 30)  # the image read from images/5.png
    assert all(r["subject"] == r["meta"]["metadata"]["task"] and r["source"] == "MathVista/testmini" for r in rows)
    assert [mathvista.official_fields(r)["answer"] for r in rows] == [p["answer"] for p in problems()]


def test_prompts(tmp_path):
    rows = mathvista.import_local(write_copy(tmp_path / "copy"))
    assert mathvista.prompt_text(rows[0], "official") == problems()[0]["query"]
    mc = mathvista.prompt_text(rows[0], "reasoning")
    assert "Choices:\n(A) red\n(B) green\n(C) blue" in mc and "letter of the correct option" in mc
    assert "(Unit: squares)" in mathvista.prompt_text(rows[1], "reasoning")
    assert "1 decimal place " in mathvista.prompt_text(rows[2], "reasoning")
    assert "2 decimal places" in mathvista.prompt_text(rows[3], "reasoning")
    assert "Python list" in mathvista.prompt_text(rows[4], "reasoning")
    request = mathvista.request(rows[0], "reasoning")
    assert request.messages[0]["content"][0] == {"type": "image"} and len(request.images) == 1


@pytest.mark.parametrize("change, message", [
    ({"answer": "purple"}, "row 0 (pid 1): 'answer' 'purple' is not one of the 'choices'"),
    ({"question_type": "yes_no"}, "row 0 (pid 1): 'question_type' must be one of multi_choice, free_form"),
    ({"choices": ["red"]}, "row 0 (pid 1): 'choices' must be a list of 2 to 26 option texts"),
    ({"choices": ["red", "", "green"]}, "row 0 (pid 1): 'choices' item 1 must be a non-empty string"),
    ({"metadata": _meta(skills=("x", ""))}, "row 0 (pid 1): 'metadata.skills' must be a list of strings"),
    ({"metadata": {k: v for k, v in _meta().items() if k != "task"}}, "row 0 (pid 1): 'metadata.task' must be"),
    ({"pid": ""}, "row 0: 'pid' must be a non-empty string"),
    ({"query": None}, "row 0 (pid 1): 'query' must be a non-empty string"),
])
def test_a_bad_multi_choice_row_is_one_line(tmp_path, change, message):
    copy = write_copy(tmp_path / "copy", [dict(problems()[0], **change)])
    with pytest.raises(UserError, match="testmini-00000-of-00001-fixture.parquet " + _re(message)):
        mathvista.import_local(copy)


@pytest.mark.parametrize("change, message", [
    ({"answer_type": "text"}, "'answer_type' of a free_form question must be one of integer, float, list"),
    ({"precision": None}, "'precision' must be a whole number of decimal places for a float answer"),
    ({"precision": 1.5}, "'precision' must be a whole number"),
    ({"choices": ["a", "b"]}, "'choices' must be empty for a free_form question"),
    ({"answer": " 1.5"}, "'answer' ' 1.5' has surrounding blanks"),
])
def test_a_bad_free_form_row_is_one_line(tmp_path, change, message):
    copy = write_copy(tmp_path / "copy", [dict(problems()[2], **change)])
    with pytest.raises(UserError, match=r"row 0 \(pid 3\): " + _re(message)):
        mathvista.import_local(copy)


def _re(text):
    import re

    return re.escape(text)


def test_copies_that_are_not_mathvista(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        mathvista.import_local(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no parquet files for split 'testmini'"):
        mathvista.import_local(tmp_path / "empty")
    copy = write_copy(tmp_path / "copy", [{k: v for k, v in problems()[0].items() if k != "query"}])
    with pytest.raises(UserError, match="missing column"):
        mathvista.import_local(copy)
    copy = write_copy(tmp_path / "dup", [problems()[0], problems()[0]])
    with pytest.raises(UserError, match="pid '1' also in row 0"):
        mathvista.import_local(copy)
    copy = write_copy(tmp_path / "noimage", [problems()[0]], image_paths=("1",))
    (copy / "images" / "1.png").unlink()
    with pytest.raises(UserError, match="row 0 \\(pid 1\\): image 1 not found"):
        mathvista.import_local(copy)
    with pytest.raises(UserError, match="has no MathVista fields"):
        mathvista.request({"id": "syn-1", "question_type": "open", "options": [], "images": [], "meta": {}}, "official")


# --------------------------------------------------------------------------------------
# saved responses in the official layout


def _official_output(tmp_path, extractions: dict) -> str:
    out = {}
    for p in problems():
        out[p["pid"]] = dict(p, response=f"response {p['pid']}", extraction=extractions[p["pid"]])
    path = tmp_path / "output_model.json"
    path.write_text(json.dumps(out))
    return path


def test_rescoring_official_extractions(cli, tmp_path):
    # right: "B" -> green, "3.0" -> 3, "1.50" -> 1.5; wrong: "0.3", "[2, 1]"
    path = _official_output(tmp_path, {"1": "B", "2": "3.0", "3": "1.50", "4": "0.3", "5": "[2, 1]"})
    code, out, err = cli("eval", "mathvista", "--responses", path, "--json")
    assert code == 0, err
    scores = json.loads(out)
    assert scores["average"] == {"accuracy": 0.6, "correct": 3, "total": 5}
    assert scores["answer_type"]["float"]["correct"] == 1 and scores["question_type"]["multi_choice"]["correct"] == 1
    code, out, _ = cli("eval", "mathvista", "--responses", path, "--json", "--integer-answers", "int")
    assert code == 0 and json.loads(out)["answer_type"]["integer"]["correct"] == 0  # "3.0" is no int()
    code, out, err = cli("eval", "mathvista", "--responses", path, "--name", "rescored")
    assert code == 0, err
    art = cli.store.resolve("rescored", kind="eval", verify=True)
    assert art.manifest["stage"] == "eval-mathvista" and art.metrics["acc"] == 0.6
    assert "skills" in out and "Overall" in out


def test_rescoring_responses_without_extraction_uses_our_rules(tmp_path):
    out = {p["pid"]: dict(p, response=[f"\\boxed{{{p['answer']}}}", "I cannot tell."]) for p in problems()}
    path = tmp_path / "output_k.json"
    path.write_text(json.dumps(out))
    judged = mathvista.judge_responses(mathvista.load_responses(path))
    # the boxed gold answer is right under every rule (multiple choice: the choice's text); the
    # second sample states nothing: a parse failure, wrong, not the nearest choice
    assert [(j["id"], j["sample"], j["correct"], j["parse_failure"]) for j in judged] == [
        (p["pid"], k, k == 0, k == 1) for p in problems() for k in (0, 1)]
    scores = mathvista.aggregate(judged)
    assert scores["parse_failures"] == {"n": 5, "rate": 0.5} and scores["average"]["correct"] == 5


@pytest.mark.parametrize("change, message", [
    ({"metadata": None}, "problem 0 (pid 1): 'metadata' must be an object"),
    ({"question_type": "open"}, "problem 0 (pid 1): 'question_type' must be one of"),
    ({"response": 3}, "problem 0 (pid 1): needs 'extraction', or 'response' as a string"),
])
def test_bad_saved_responses_are_one_line(tmp_path, change, message):
    problem = dict(problems()[0], response="B")
    problem.update(change)
    path = tmp_path / "out.json"
    path.write_text(json.dumps({"1": problem}))
    with pytest.raises(UserError, match=_re(f"{path} {message}")):
        mathvista.load_responses(path)
    path.write_text(json.dumps({"1": {k: v for k, v in problems()[0].items() if k != "answer_type"}}))
    with pytest.raises(UserError, match="missing key 'answer_type'"):
        mathvista.load_responses(path)
    path.write_text(json.dumps([problem]))
    with pytest.raises(UserError, match="expected a JSON object of pid -> problem"):
        mathvista.load_responses(path)


# --------------------------------------------------------------------------------------
# the commands end to end


@pytest.fixture
def ready(cli, tmp_path):
    assert cli("init", "tiny", "--name", "tiny", "--family", "internvl")[0] == 0
    code, _, err = cli("data", "mathvista", "--path", write_copy(tmp_path / "copy"), "--name", "mv")
    assert code == 0, err
    return cli


EVAL = ["eval", "mathvista", "--model", "tiny", "--data", "mv", "--max-new-tokens", "8", "--batch-size", "4"]


def test_data_and_eval_mathvista(ready):
    art = ready.store.resolve("mv", kind="dataset", verify=True)
    assert art.metrics["rows"] == 5 and art.metrics["multiple_choice"] == 1
    assert art.metrics["answer_types"] == {"float": 2, "integer": 1, "list": 1, "text": 1}
    code, out, err = ready(*EVAL, "--temperature", "0", "--name", "ev")
    assert code == 0, err
    ev = ready.store.resolve("ev", kind="eval", verify=True)
    scores = json.loads(ev.file("scores.json").read_text())
    preds = [json.loads(line) for line in ev.file("predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 5 == scores["average"]["total"] == scores["overall"]["n"]
    assert set(mathvista.BREAKDOWN) <= set(scores) and scores["style"] == "reasoning"
    assert all({"extraction", "prediction", "method", "correct", "parse_failure"} <= set(p) for p in preds)
    assert scores["average"]["correct"] == sum(p["correct"] for p in preds)
    assert ev.manifest["stage"] == "eval-mathvista" and ev.file("chart.png").stat().st_size > 1000
    assert "Overall" in out and "skills" in out


def test_eval_mathvista_samples_and_blank_images(ready, monkeypatch):
    from r1v3 import generation

    seen = []
    real = generation.TransformersBackend.generate

    def spy(self, requests, sampling, on_result=None):
        requests = list(requests)
        seen.extend(im for r in requests for im in r.images)
        yield from real(self, requests, sampling, on_result)

    monkeypatch.setattr(generation.TransformersBackend, "generate", spy)
    code, out, err = ready(*EVAL, "--samples", "2", "--temperature", "1", "--blank-images", "--style", "official",
                           "--name", "k2")
    assert code == 0, err
    scores = json.loads(ready.store.resolve("k2", kind="eval").file("scores.json").read_text())
    assert scores["samples"] == 2 and "mean@2" in scores and "pass@2" in scores and scores["average"]["total"] == 10
    assert seen and all(im.getextrema() == ((255, 255),) * 3 for im in seen)


def test_eval_mathvista_refuses_rows_of_another_benchmark(ready):
    assert ready("data", "synth", "--name", "syn", "--n", "10")[0] == 0
    code, _, err = ready("eval", "mathvista", "--model", "tiny", "--data", "syn", "--name", "e", "--split", "train")
    assert code == 2 and "has no MathVista fields" in err and "eval mmmu" in err
    code, _, err = ready("data", "mathvista", "--from-hub", "--name", "m")  # tests run offline
    assert code == 2 and "cannot download AI4Math/MathVista@main" in err
    assert [a.name for a in ready.store.list() if a.kind == "eval"] == []


def test_each_benchmark_shows_its_own_breakdown():
    from r1v3 import benchmarks, mmmu

    scores = mathvista.aggregate(_records([True, False, True, False, True]))
    tables = benchmarks.groups(benchmarks.of_stage("eval-mathvista"), scores)
    assert [label for label, _ in tables] == ["task", *[k.replace("_", " ") for k in mathvista.BREAKDOWN if k != "task"]]
    assert tables[0][1]["math word problem"] == (0.5, 2)
    mmmu_scores = {"disciplines": {}, "subjects": {"Art": {"acc": 0.5, "n": 2}}}
    assert benchmarks.groups(benchmarks.of_stage("eval-mmmu"), mmmu_scores) == [("subject / task", {"Art": (0.5, 2)})]
    assert benchmarks.of_stage("anything else") is mmmu and benchmarks.of_stage(None) is mmmu
    # a scores file is anyone's text: what is not a table is left out
    assert benchmarks.groups(mathvista, {"task": ["x"], "skills": {"a": 3, "b": {"accuracy": 1.0}}}) == [
        ("skills", {"b": (1.0, None)})]
