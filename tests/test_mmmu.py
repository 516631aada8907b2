import json

import pytest
from PIL import Image

from tests import mmmu_fixture
from tests.mmmu_fixture import hub_features, write_sample_copy
from r1v3 import UserError
from r1v3 import mmmu


def img(colour=(255, 0, 0)):
    return Image.new("RGB", (8, 8), colour)


# --- the subject table ----------------------------------------------------------------


def test_thirty_subjects_in_six_disciplines():
    assert list(mmmu.DISCIPLINES) == [
        "Art & Design", "Business", "Science", "Health & Medicine",
        "Humanities & Social Science", "Tech & Engineering",
    ]
    assert len(mmmu.SUBJECTS) == 30 == len(set(mmmu.SUBJECTS))
    assert sum(len(v) for v in mmmu.DISCIPLINES.values()) == 30
    assert mmmu.SUBJECT_DISCIPLINE["Art_Theory"] == "Art & Design"
    assert mmmu.SUBJECT_DISCIPLINE["Computer_Science"] == "Tech & Engineering"
    assert mmmu.SUBJECT_DISCIPLINE["Diagnostics_and_Laboratory_Medicine"] == "Health & Medicine"
    assert set(mmmu.SHORT_NAMES.values()) == set(mmmu.SUBJECTS)


def test_subject_names_and_ids():
    assert mmmu.subject_name("cs") == "Computer_Science"
    assert mmmu.subject_name("art_theory") == "Art_Theory"
    with pytest.raises(UserError, match="unknown MMMU subject 'Astrology'"):
        mmmu.subject_name("Astrology")
    assert mmmu.subject_of_id("validation_Art_Theory_1") == "Art_Theory"
    assert mmmu.subject_of_id("dev_Diagnostics_and_Laboratory_Medicine_12") == "Diagnostics_and_Laboratory_Medicine"
    assert mmmu.subject_of_id("validation_Astrology_1") is None


# --- prompts -----------------------------------------------------------------------------


MC_ROW = {"id": "q1", "question": "Which colour is shown?", "options": ["red", "blue"],
          "question_type": "multiple-choice", "images": [img()]}
OPEN_ROW = {"id": "q2", "question": "How many dots?", "options": [],
            "question_type": "open", "images": []}


def test_official_prompt_multiple_choice():
    parts = mmmu.build_prompt(MC_ROW, "official")
    assert parts == [
        {"type": "image", "index": 0},
        {"type": "text", "text": "Which colour is shown?\n(A) red\n(B) blue\n\n"
                                 "Answer with the option's letter from the given choices directly."},
    ]


def test_official_prompt_open():
    assert mmmu.build_prompt(OPEN_ROW, "official") == [
        {"type": "text", "text": "How many dots?\nAnswer the question using a single word or phrase."},
    ]


def test_reasoning_prompt_asks_for_think_and_boxed():
    text = mmmu.build_prompt(MC_ROW, "reasoning")[-1]["text"]
    assert text.startswith("Which colour is shown?\n(A) red\n(B) blue\n\n")
    assert "<think>" in text and "</think>" in text and "\\boxed{}" in text and "letter" in text
    text = mmmu.build_prompt(OPEN_ROW, "reasoning")[-1]["text"]
    assert "\\boxed{}" in text and "letter" not in text


def test_prompt_interleaves_images_at_placeholders():
    row = {"id": "q3", "question": "Compare <image 1> with the options.",
           "options": ["<image 2>", "<image 3>", "neither"], "question_type": "multiple-choice",
           "images": [img(), img(), img(), img()]}
    parts = mmmu.build_prompt(row, "official")
    assert parts[0] == {"type": "image", "index": 3}  # not referenced: before the text
    assert parts[1] == {"type": "text", "text": "Compare "}
    assert parts[2] == {"type": "image", "index": 0}
    assert parts[3] == {"type": "text", "text": " with the options.\n(A) "}
    assert parts[4] == {"type": "image", "index": 1}
    assert parts[5] == {"type": "text", "text": "\n(B) "}
    assert parts[6] == {"type": "image", "index": 2}
    assert parts[7]["text"].startswith("\n(C) neither\n\n")


def test_prompt_sends_each_image_once():
    row = {"id": "q", "question": "<image 1> and again <image 1>", "options": [],
           "question_type": "open", "images": [img()]}
    parts = mmmu.build_prompt(row, "official")
    assert [p for p in parts if p["type"] == "image"] == [{"type": "image", "index": 0}]
    assert "again <image 1>" in parts[1]["text"]


def test_prompt_errors():
    row = dict(MC_ROW, question="See <image 2>")
    with pytest.raises(UserError, match="'<image 2>' refers to image 2 but the row has 1 image"):
        mmmu.build_prompt(row, "official")
    with pytest.raises(UserError, match="style"):
        mmmu.build_prompt(MC_ROW, "fancy")
    with pytest.raises(UserError, match="needs options"):
        mmmu.build_prompt(dict(MC_ROW, options=[]), "official")


# --- import of a local copy ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_copy(tmp_path_factory):
    return write_sample_copy(tmp_path_factory.mktemp("mmmu"), per_subject=4, seed=0)


@pytest.fixture(scope="module")
def sample_rows(sample_copy):
    return mmmu.import_local(sample_copy, "validation")


def test_sample_copy_is_in_the_hub_layout(sample_copy):
    import pyarrow.parquet as pq

    folders = sorted(p.name for p in sample_copy.iterdir())
    assert folders == sorted(mmmu.SUBJECTS)
    table = pq.read_table(sample_copy / "Art_Theory" / "validation-00000-of-00001.parquet")
    assert tuple(table.column_names) == mmmu.HUB_COLUMNS
    meta = json.loads(table.schema.metadata[b"huggingface"])
    assert meta["info"]["features"]["image_1"]["_type"] == "Image"
    assert meta["info"]["features"]["options"] == {"dtype": "string", "_type": "Value"}


def test_import_sample_copy(sample_rows):
    assert len(sample_rows) == 30 * 4
    assert {r["subject"] for r in sample_rows} == set(mmmu.SUBJECTS)
    assert {r["question_type"] for r in sample_rows} == {"multiple-choice", "open"}
    row = sample_rows[0]
    assert row["id"] == "validation_Accounting_1"
    assert row["source"] == "MMMU/validation" and row["caption"] == ""
    assert row["difficulty"] in ("Easy", "Medium", "Hard")
    assert isinstance(row["options"], list) and len(row["options"]) == 4
    assert all(isinstance(i, Image.Image) for r in sample_rows for i in r["images"])
    assert all(mmmu.build_prompt(r, "official") for r in sample_rows)


def test_import_two_images_with_option_placeholder(sample_rows):
    row = next(r for r in sample_rows if r["id"] == "validation_Art_4")
    assert len(row["images"]) == 2
    assert row["options"][1] == "<image 2>"
    assert row["answer"] == "B"


def test_import_renumbers_placeholders_across_empty_slots(sample_rows):
    # stored as image_1 and image_3 (image_2 empty), the question says "<image 3>"
    row = next(r for r in sample_rows if r["id"] == "validation_Art_1")
    assert len(row["images"]) == 2
    assert "<image 2>" in row["question"] and "<image 3>" not in row["question"]
    # the renumbered placeholder points at the square (a solid block of one colour),
    # images[0] is the dotted reference picture
    square = row["images"][1]
    letter = row["answer"]
    colour = row["options"][ord(letter) - ord("A")]
    assert square.getpixel((24, 24)) == mmmu_fixture._COLOURS[colour]
    assert row["images"][0].getpixel((0, 0)) == (255, 255, 255)


def test_import_subset_and_errors(sample_copy, tmp_path):
    rows = mmmu.import_local(sample_copy, "validation", subjects=["cs", "Music"])
    assert {r["subject"] for r in rows} == {"Computer_Science", "Music"}
    with pytest.raises(UserError, match="unknown MMMU subject"):
        mmmu.import_local(sample_copy, "validation", subjects=["Astrology"])
    with pytest.raises(UserError, match="no parquet files for split 'test'"):
        mmmu.import_local(sample_copy, "test", subjects=["Music"])
    with pytest.raises(UserError, match="no such directory"):
        mmmu.import_local(tmp_path / "nowhere", "validation")
    with pytest.raises(UserError, match="none of the 30 MMMU subject folders"):
        mmmu.import_local(tmp_path, "validation")
    (tmp_path / "Art").mkdir()
    with pytest.raises(UserError, match="subject folder missing"):
        mmmu.import_local(tmp_path, "validation", subjects=["Art", "Music"])


def test_import_empty_split(tmp_path):
    import datasets

    folder = tmp_path / "Music"
    folder.mkdir()
    empty = {c: [] for c in mmmu.HUB_COLUMNS}
    datasets.Dataset.from_dict(empty, features=hub_features()).to_parquet(
        str(folder / "validation-00000-of-00001.parquet"))
    with pytest.raises(UserError, match="split 'validation' is empty"):
        mmmu.import_local(tmp_path, "validation")


def test_import_bad_options_and_placeholders(tmp_path):
    import datasets

    def write(**fields):
        row = {c: None for c in mmmu.HUB_COLUMNS}
        row.update(id="validation_Music_1", question="q <image 1>", options="['a', 'b']", answer="A",
                   question_type="multiple-choice", image_1=img())
        row.update(fields)
        folder = tmp_path / "Music"
        folder.mkdir(exist_ok=True)
        datasets.Dataset.from_dict({c: [row[c]] for c in mmmu.HUB_COLUMNS},
                                   features=hub_features()).to_parquet(
            str(folder / "validation-00000-of-00001.parquet"))

    write(options="['a', 'b'")
    with pytest.raises(UserError, match="validation_Music_1.*not a Python list literal"):
        mmmu.import_local(tmp_path, "validation")
    write(question="q <image 2>")
    with pytest.raises(UserError, match="'<image 2>' refers to image_2, which is empty"):
        mmmu.import_local(tmp_path, "validation")
    write(question_type="essay")
    with pytest.raises(UserError, match="question_type 'essay'"):
        mmmu.import_local(tmp_path, "validation")


# --- judging and aggregation ---------------------------------------------------------------


ROW_MC = {"id": "validation_Art_1", "subject": "Art", "question": "?", "options": ["red", "blue", "green"],
          "answer": "B", "question_type": "multiple-choice", "images": []}
ROW_OPEN = {"id": "validation_Math_1", "subject": "Math", "question": "?", "options": [],
            "answer": "0.5", "question_type": "open", "images": []}


def test_judge_multiple_choice():
    got = mmmu.judge(ROW_MC, "<think>hmm (A)?</think> \\boxed{B}", "reasoning")
    assert got["correct"] and got["extracted"] == "B" and got["method"] == "boxed"
    assert got["response"].startswith("<think>") and not got["parse_failure"]
    got = mmmu.judge(ROW_MC, "I am not sure", "reasoning")
    assert got["parse_failure"] and not got["correct"] and got["extracted"] is None
    got = mmmu.judge(ROW_MC, "(B)", "official")
    assert got["correct"] and got["method"] == "parse"
    got = mmmu.judge(ROW_MC, "<think>long thoughts", "reasoning")
    assert got["parse_failure"] and not got["correct"]


def test_judge_styles_differ_where_the_official_rules_are_blind():
    # "B. blue" has neither "(B)" nor a lone " B ": the official parser finds nothing
    assert mmmu.judge(ROW_MC, "B. blue", "official")["parse_failure"]
    assert mmmu.judge(ROW_MC, "B. blue", "reasoning")["correct"]


def test_judge_open():
    assert mmmu.judge(ROW_OPEN, "So the answer is 0.5", "official")["correct"]
    assert not mmmu.judge(ROW_OPEN, "So the answer is 0.6", "official")["correct"]
    # an explicit final answer in another notation still counts in the reasoning style
    got = mmmu.judge(ROW_OPEN, "<think>...</think>\\boxed{\\frac{1}{2}}", "reasoning")
    assert got["correct"] and got["method"] == "boxed"
    assert mmmu.judge(ROW_OPEN, "   ", "official")["parse_failure"]
    with pytest.raises(UserError, match="style"):
        mmmu.judge(ROW_OPEN, "0.5", "loose")


def _j(subject, correct, item=None, failure=False):
    return {"id": item or f"{subject}-{id(object())}", "subject": subject,
            "correct": correct, "parse_failure": failure}


def test_aggregate_is_item_weighted():
    judged = [
        _j("Art", True), _j("Art", True), _j("Art", False, failure=True),  # 2/3
        _j("Music", True),                                                  # 1/1
        _j("Accounting", False), _j("Accounting", False, failure=True),    # 0/2
        _j("Computer_Science", True), _j("Computer_Science", False),       # 1/2
    ]
    result = mmmu.aggregate(judged)
    assert result["overall"] == {"acc": 4 / 8, "n": 8}
    # 3 of 4 items right, not the mean of the subject accuracies (2/3 and 1)
    assert result["disciplines"]["Art & Design"] == {"acc": 0.75, "n": 4}
    assert result["disciplines"]["Business"] == {"acc": 0.0, "n": 2}
    assert result["disciplines"]["Tech & Engineering"] == {"acc": 0.5, "n": 2}
    assert "Science" not in result["disciplines"]
    assert result["subjects"]["Art"] == {"acc": 2 / 3, "n": 3}
    assert result["parse_failures"] == {"n": 2, "rate": 0.25}


def test_aggregate_empty():
    assert mmmu.aggregate([])["overall"] == {"acc": 0.0, "n": 0}


def test_mean_and_pass_at_k():
    judged = [_j("Art", c, item="x") for c in (True, False, False, False)]
    judged += [_j("Art", c, item="y") for c in (False, False, False, False)]
    judged += [_j("Art", c, item="z") for c in (True, True, True, True)]
    assert mmmu.mean_at_k(judged) == pytest.approx((0.25 + 0 + 1) / 3)
    assert mmmu.pass_at_k(judged, 1) == pytest.approx((0.25 + 0 + 1) / 3)
    assert mmmu.pass_at_k(judged, 4) == pytest.approx((1 + 0 + 1) / 3)
    assert mmmu.pass_at_k(judged, 2) == pytest.approx((0.5 + 0 + 1) / 3)  # 1 - C(3,2)/C(4,2)
    with pytest.raises(UserError, match="only 4 response"):
        mmmu.pass_at_k(judged, 5)


# --- re-scoring saved responses -------------------------------------------------------------


def _out(subject, n, qtype, answer, response):
    row = {"id": f"validation_{subject}_{n}", "question_type": qtype, "answer": answer, "response": response}
    if qtype == "multiple-choice":
        row["all_choices"] = ["A", "B", "C", "D"]
        row["index2ans"] = {"A": "red", "B": "blue", "C": "green", "D": "yellow"}
    return row


SAVED = {
    "Art_Theory": [
        _out("Art_Theory", 1, "multiple-choice", "B", "(B)"),
        _out("Art_Theory", 2, "multiple-choice", "C", "The colour is green in this painting"),
        _out("Art_Theory", 3, "multiple-choice", "A", "no idea"),  # parse failure
    ],
    "Math": [
        _out("Math", 1, "open", "12", "Therefore the result is 12."),
        _out("Math", 2, "short-answer", "3.5", "x = 4"),
    ],
}


def _expected_scores(result):
    assert result["overall"] == {"acc": 3 / 5, "n": 5}
    assert result["subjects"]["Art_Theory"] == {"acc": 2 / 3, "n": 3}
    assert result["subjects"]["Math"] == {"acc": 0.5, "n": 2}
    assert result["disciplines"] == {"Art & Design": {"acc": 2 / 3, "n": 3}, "Science": {"acc": 0.5, "n": 2}}
    assert result["parse_failures"] == {"n": 1, "rate": 0.2}


def test_rescore_official_directory_layout(tmp_path):
    for subject, rows in SAVED.items():
        (tmp_path / subject).mkdir()
        (tmp_path / subject / "output.json").write_text(json.dumps(rows))
    rows = mmmu.load_responses(tmp_path)
    assert len(rows) == 5 and {r["subject"] for r in rows} == {"Art_Theory", "Math"}
    _expected_scores(mmmu.score_responses(rows))


def test_rescore_single_json_list(tmp_path):
    path = tmp_path / "responses.json"
    path.write_text(json.dumps(SAVED["Art_Theory"] + SAVED["Math"]))
    _expected_scores(mmmu.score_responses(mmmu.load_responses(path)))


def test_rescore_k_responses_per_item(tmp_path):
    path = tmp_path / "k.json"
    path.write_text(json.dumps([_out("Music", 1, "multiple-choice", "A", ["(A)", "(B)", "(A)", "(C)"])]))
    judged = mmmu.judge_responses(mmmu.load_responses(path))
    assert [j["correct"] for j in judged] == [True, False, True, False]
    assert mmmu.mean_at_k(judged) == 0.5 and mmmu.pass_at_k(judged, 4) == 1.0


@pytest.mark.parametrize("content, message", [
    ("{not json", "malformed JSON"),
    (json.dumps({"validation_Art_1": "A"}), "expected a JSON list of response rows, got a JSON dict"),
    (json.dumps(["A"]), "row 0: expected an object"),
    (json.dumps([{"id": "validation_Art_1", "question_type": "open", "answer": "1"}]), "missing key 'response'"),
    (json.dumps([{"id": "q17", "question_type": "open", "answer": "1", "response": "1"}]),
     "cannot tell the subject from the id"),
    (json.dumps([{"id": "validation_Art_1", "question_type": "multiple-choice", "answer": "A",
                  "response": "A"}]), "needs a non-empty list 'all_choices'"),
    (json.dumps([{"id": "validation_Art_1", "question_type": "multiple-choice", "answer": "A",
                  "response": "A", "all_choices": ["B", "A"], "index2ans": {}}]), "must be the letters A, B"),
    (json.dumps([{"id": "validation_Art_1", "question_type": "open", "answer": "1", "response": 5}]),
     "'response' must be a string"),
])
def test_bad_responses_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as err:
        mmmu.load_responses(path)
    assert str(path) in str(err.value)


def test_bad_responses_directory(tmp_path):
    with pytest.raises(UserError, match="no <Subject>/output.json"):
        mmmu.load_responses(tmp_path)
    (tmp_path / "Astrology").mkdir()
    (tmp_path / "Astrology" / "output.json").write_text("[]")
    with pytest.raises(UserError, match="'Astrology' is not an MMMU subject"):
        mmmu.load_responses(tmp_path)
    with pytest.raises(UserError, match="no such file or directory"):
        mmmu.load_responses(tmp_path / "missing.json")


def test_rescoring_refuses_holes_and_duplicates(tmp_path):
    row = {"id": "validation_Art_1", "question_type": "multiple-choice", "answer": "B",
           "all_choices": ["A", "B"], "index2ans": {"A": "red"}, "response": "It is definitely the first one here."}
    (tmp_path / "holes.json").write_text(json.dumps([row]))
    with pytest.raises(UserError, match="'index2ans' must have exactly the keys of 'all_choices'"):
        mmmu.load_responses(tmp_path / "holes.json")
    row["index2ans"] = {"A": "red", "B": "blue"}
    (tmp_path / "dup.json").write_text(json.dumps([row, row]))
    with pytest.raises(UserError, match="appears twice"):
        mmmu.load_responses(tmp_path / "dup.json")
