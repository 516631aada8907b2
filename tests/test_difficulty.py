"""`r1v3 difficulty` on a tiny InternVL: pass rates beside the difficulty labels, the verifier,
filtering, resume, bad inputs."""

import json

import pytest

from r1v3 import data, synthetic
from stages import difficulty


def publish_dataset(store, name, splits):
    with store.publish(name, "dataset", stage="test") as draft:
        data.write_splits(draft.path, splits)
    return draft.artifact


@pytest.fixture
def ready(cli):
    assert cli("init", "tiny", "--name", "tiny", "--family", "internvl")[0] == 0
    rows = synthetic.generate(40, seed=0)
    publish_dataset(cli.store, "probs", {"train": rows["train"][:6], "validation": rows["validation"][:2]})
    return cli


ARGS = ["--model", "tiny", "--data", "probs", "--samples", "3", "--max-new-tokens", "3", "--batch-size", "4"]


def test_pass_rates_beside_labels_for_every_measured_row(ready):
    code, out, err = ready("difficulty", *ARGS, "--splits", "train", "--name", "rated")
    assert code == 0, err
    art = ready.store.resolve("rated", kind="dataset")
    source = data.read_split(ready.store.resolve("probs").path, "train")
    rows = data.read_split(art.path, "train")
    verdicts = [json.loads(line) for line in art.file("pass_rates.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [r["id"] for r in source] == [v["id"] for v in verdicts]
    for row, before, v in zip(rows, source, verdicts):
        assert row["difficulty"] == before["difficulty"] and row["difficulty"] in ("normal", "hard")
        assert len(v["correct"]) == 3 and row["pass_rate"] == sum(v["correct"]) / 3
    assert all(r["pass_rate"] is None for r in data.read_split(art.path, "validation"))  # not measured
    m = art.metrics
    assert m["rows_measured"] == 6 and m["samples"] == 3 and m["rows_generated"] == 6
    assert set(m["by_difficulty"]) <= {"normal", "hard"}
    assert art.manifest["inputs"][0]["ref"].startswith("tiny@")


def test_limit_measures_and_publishes_the_first_rows_only(ready):
    code, _, err = ready("difficulty", *ARGS, "--splits", "train", "--limit", "4", "--name", "capped")
    assert code == 0, err
    art = ready.store.resolve("capped", kind="dataset")
    source = data.read_split(ready.store.resolve("probs").path, "train")
    assert [r["id"] for r in data.read_split(art.path, "train")] == [r["id"] for r in source[:4]]
    assert len(data.read_split(art.path, "validation")) == 2  # not measured: published whole
    assert art.metrics["rows_measured"] == art.metrics["rows_generated"] == 4 and art.metrics["limit"] == 4


def test_judge_uses_the_reward_rules():
    row = {"answer": "B", "question_type": "multiple-choice", "options": ["red", "blue", "green"]}
    texts = ["<think>hm</think>\\boxed{B}", "<think>hm</think>\\boxed{A}", "The answer is blue", "nothing"]
    assert difficulty.judge(row, [{"text": t} for t in texts]) == [True, False, True, False]
    row = {"answer": "12", "question_type": "open", "options": []}
    assert difficulty.judge(row, [{"text": "\\boxed{12.0}"}, {"text": "\\boxed{13}"}]) == [True, False]


def test_drop_unsolved_and_resume_after_a_failure(ready, monkeypatch):
    code, _, err = ready("difficulty", *ARGS, "--name", "straight")
    assert code == 0, err
    # a crash after every row was generated (while judging): the responses stay for --resume
    real = difficulty.judge
    monkeypatch.setattr(difficulty, "judge", lambda row, samples: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        ready("difficulty", *ARGS, "--name", "again")
    monkeypatch.setattr(difficulty, "judge", real)
    code, _, err = ready("difficulty", *ARGS, "--name", "again", "--resume")
    assert code == 0, err
    again, straight = ready.store.resolve("again"), ready.store.resolve("straight")
    assert again.metrics["rows_resumed"] == 8 and again.metrics["rows_generated"] == 0
    assert again.file("pass_rates.jsonl").read_text() == straight.file("pass_rates.jsonl").read_text()
    unsolved = straight.metrics["unsolved"]
    if unsolved < 8:  # a random tiny model rarely answers right; all-dropped is an error (below)
        assert ready("difficulty", *ARGS, "--name", "hardest", "--drop-unsolved")[0] == 0
        assert ready.store.resolve("hardest").metrics["dropped"]["unsolved"] == unsolved
    else:
        code, _, err = ready("difficulty", *ARGS, "--name", "none", "--drop-unsolved")
        assert code == 2 and "every measured row was dropped (0 solved, 8 unsolved)" in err


def test_bad_inputs(ready):
    code, _, err = ready("difficulty", *ARGS, "--splits", "test", "--name", "x")
    assert code == 2 and "no split 'test' (has train, validation)" in err
    code, _, err = ready("difficulty", *ARGS, "--samples", "0", "--name", "x")
    assert code == 2 and "--samples (samples) must be at least 1" in err
    code, _, err = ready("difficulty", "--model", "probs", "--data", "probs", "--name", "x")
    assert code == 2 and "is a dataset artifact, expected model" in err
    assert "x" not in [a.name for a in ready.store.list()]
