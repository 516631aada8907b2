"""Concurrent publishers: real CLI processes writing the same artifact name at once get distinct
versions, and every artifact verifies. A live writer's draft is never taken for an abandoned one."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from r1v3.artifacts import Store

pytestmark = pytest.mark.reliability

KILLER = Path(__file__).with_name("killer.py")
REPO = Path(__file__).resolve().parents[2]
SYNTH = ["data", "synth", "--name", "same", "--n", "30", "--seed", "4"]


def start(root, argv, sync=None):
    env = dict(os.environ, R1V3_STORE=str(root), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    opts = ["--sync", sync] if sync else []
    return subprocess.Popen([sys.executable, str(KILLER), *opts, "--", *argv], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("writers,barrier", [(2, False), (2, True), (4, True)])
def test_concurrent_publishers_get_distinct_versions(tmp_path, writers, barrier):
    """With the barrier every writer has its draft complete and numbered before any renames, so
    all of them try the same version first and must move on to the next free one."""
    root, sync = tmp_path / "store", tmp_path / "barrier"
    sync.mkdir()
    procs = [start(root, SYNTH, f"{sync}:{writers}" if barrier else None) for _ in range(writers)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    store = Store(root)
    assert store.versions("same") == list(range(1, writers + 1))
    arts = [store.resolve(f"same@v{v}", verify=True) for v in range(1, writers + 1)]
    for art in arts:
        assert store.check(art, full=True) == []
        assert art.manifest["files"] == arts[0].manifest["files"]  # same seed, same rows
    assert not any((root / ".staging").iterdir())


def test_a_live_writers_draft_is_not_abandoned(tmp_path):
    root, sync = tmp_path / "store", tmp_path / "barrier"
    sync.mkdir()
    writer = start(root, SYNTH, f"{sync}:2")  # waits at its rename for a second writer that never comes
    try:
        deadline = time.monotonic() + 120
        while not any(sync.iterdir()) and time.monotonic() < deadline:
            assert writer.poll() is None, writer.communicate()[1]
            time.sleep(0.05)
        store = Store(root)
        drafts = list((root / ".staging").iterdir())
        assert len(drafts) == 1
        assert store.abandoned_drafts(min_age=0) == [] and store.clean_staging(min_age=0) == []
        (sync / "release").touch()
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
    finally:
        if writer.poll() is None:
            writer.kill()
    assert Store(root).resolve("same", verify=True).ref == "same@v1"


def test_a_second_sft_of_one_name_is_refused_while_the_first_lives(crash_inputs, tmp_path):
    """Without the lock, the second run (not resuming) discarded the first one's live checkpoints."""
    import shutil

    from r1v3 import training

    root = tmp_path / "store"
    shutil.copytree(crash_inputs / "store", root)
    argv = ["sft", "--model", "m", "--data", "sftd", "--name", "ft", "--trainable", "connector", "--batch-size", "2",
            "--max-steps", "100000", "--save-steps", "2"]
    first = start(root, argv)
    try:
        work = root / ".work" / "ft" / "sft"
        deadline = time.monotonic() + 300
        while not training.complete_checkpoints(work) and time.monotonic() < deadline:
            assert first.poll() is None, first.communicate()[1][-2000:]
            time.sleep(0.1)
        live = training.complete_checkpoints(work)
        assert live
        second = start(root, argv)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: another run of 'ft' (sft) is in progress"), err
        assert first.poll() is None  # the first run goes on, its checkpoints untouched
        step = lambda ckpt: int(ckpt.name.split("-")[1])  # noqa: E731
        now = training.complete_checkpoints(work)  # rotation removes old ones as the first run goes on
        assert now and step(now[-1]) >= step(live[-1])
    finally:
        first.kill()
        first.communicate()
