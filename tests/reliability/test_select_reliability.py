"""select-ckpt bad inputs: one `error:` line naming the problem, exit 2, and the store (artifacts,
.staging and .work) exactly as it was."""

import os

import pytest

from r1v3 import synthetic
from r1v3.artifacts import Store
from r1v3.cli import main

pytestmark = pytest.mark.reliability


def snapshot(root):
    return sorted((os.path.relpath(d, root), sorted(f)) for d, _, f in os.walk(root))


@pytest.fixture(scope="module")
def bad_store(tmp_path_factory, publisher):
    root = tmp_path_factory.mktemp("select") / "store"
    store = Store(root)
    made = publisher(store)
    splits = synthetic.generate(30, 0, tasks=["counting"], difficulties=["normal"])
    train = made.dataset("problems", splits)
    made.dataset("blind", {"validation": [dict(r, images=[]) for r in splits["validation"]]})
    base = made.model("start", 0)
    made.run("rl", base, train, [2, 4])
    made.run("mixed", base, train, [2, 4], families=["internvl", "llava"])
    with store.publish("empty", "run", stage="rl", inputs=[base, train]) as d:
        (d.path / "log.json").write_text("[]\n")
    return root


CASES = [
    (["--run", "empty"], "the run has no checkpoints"),
    (["--run", "mixed"], "checkpoints of different families"),
    (["--probe", "blind"], "no images"),
    (["--words", ""], "--words (words) is empty"),
    (["--words", "Wait,wait"], "--words (words): critical word 'wait' is listed twice"),
    (["--split", "train"], "are training rows of rl@v1"),
    (["--split", "nope"], "no split 'nope'"),
    (["--by", "loss"], "by"),
    (["--samples", "2", "--temperature", "0"], "--samples > 1"),
    (["--run", "problems"], "is a dataset artifact, expected run"),
]


@pytest.mark.parametrize("extra,message", CASES, ids=[c[1][:30] for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(bad_store, capsys, extra, message):
    before = snapshot(bad_store)
    args = {"--run": "rl", "--probe": "problems", "--name": "sel", "--max-new-tokens": "4"}
    for flag, value in zip(extra[::2], extra[1::2]):
        args[flag] = value
    code = main(["--store", str(bad_store), "select-ckpt", *[x for kv in args.items() for x in kv]])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert snapshot(bad_store) == before
