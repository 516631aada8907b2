"""`r1v3 distill` under SIGKILL and torn work files: a killed run keeps every acknowledged teacher
output, publishes nothing, and --resume finishes with the uninterrupted run's dataset without
asking the teacher again for what it has."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1v3 import data
from stages import distill
from tests.scripted_teacher import SCRIPT, Teacher, put_dataset, row

pytestmark = pytest.mark.reliability
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def teacher(monkeypatch):
    monkeypatch.setenv("TEACHER_KEY", "sk-distill-test")
    t = Teacher()
    yield t
    t.close()


def args(teacher, store, name):
    return ["--store", str(store), "distill", "--teacher", teacher.url, "--teacher-model", "scripted",
            "--data", "probs", "--name", name, "--api-key-env", "TEACHER_KEY", "--samples", "2", "--keep", "2",
            "--max-retries", "0", "--max-think-chars", "2000", "--concurrency", "1"]


def published(store, name):
    art = store.resolve(name, kind="dataset", verify=True)
    rows = data.read_split(art.path, "train")
    attempts = [json.loads(line) for line in art.file("attempts.jsonl").read_text().splitlines()]
    return [(r["id"], r["messages"]) for r in rows], sorted((a["id"], a["sample"], a["reason"]) for a in attempts)


def test_sigkill_midway_then_resume_matches_uninterrupted(cli, teacher):
    put_dataset(cli.store, "probs", [row(q, t, a) for q, (t, a, _) in SCRIPT.items()])
    root = cli.store.root
    assert cli(*args(teacher, root, "full")[2:])[0] == 0
    full_calls = len(teacher.calls)

    teacher.stall_after = teacher.answered + 8  # 4 problems of 2 samples, one call at a time
    work = root / ".work" / "cut" / "distill" / "attempts.jsonl"
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "r1v3.cli", *args(teacher, root, "cut")], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(distill.read_attempts(work)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the fifth problem's call hangs: the kill lands between acknowledged problems
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    teacher.stall_after = None
    saved = distill.read_attempts(work)
    assert len(saved) == 4 and all(sorted(s) == [0, 1] for s in saved.values())
    assert [a.ref for a in cli.store.list() if a.name == "cut"] == []
    assert not (root / ".staging").exists() or not list((root / ".staging").iterdir())

    # a torn last line (a write the kill cut short) is dropped, not trusted
    with open(work, "a") as f:
        f.write('{"id": "p99", "sample": 0, "resp')
    before = len(teacher.calls)
    code, _, err = cli(*args(teacher, root, "cut")[2:], "--resume")
    assert code == 0, err
    asked = {q for q, _ in teacher.calls[before:]}
    assert asked == {q for q in SCRIPT if f"p{q}" not in saved}
    assert len(teacher.calls) - before == 2 * len(asked) and full_calls == 2 * len(SCRIPT)
    assert published(cli.store, "cut") == published(cli.store, "full")
    assert not (root / ".work" / "cut").exists()


def test_resume_with_other_generation_settings_is_refused(cli, teacher):
    put_dataset(cli.store, "probs", [row(q, t, a) for q, (t, a, _) in SCRIPT.items()])
    teacher.fail_after = 3
    assert cli(*args(teacher, cli.store.root, "t")[2:])[0] == 2
    teacher.fail_after = None
    code, _, err = cli(*args(teacher, cli.store.root, "t")[2:], "--resume", "--temperature", "0.7")
    assert code == 2 and "temperature" in err and err.count("\n") == 1
    # filters and the number of samples are not part of the key: judging happens at the end
    code, _, err = cli(*args(teacher, cli.store.root, "t")[2:], "--resume", "--samples", "1",
                       "--min-think-chars", "5")
    assert code == 0, err
