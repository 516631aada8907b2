"""`--report-to tensorboard`: sft and rl log through TRL to TensorBoard, offline, and the event files
are published with the artifact; the scalars read back with TensorBoard's own reader."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from r1v3 import config
from r1v3.errors import UserError
from stages import rl

pytest.importorskip("tensorboard")


def scalars(art) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, list[float]] = {}
    for run in sorted({p.parent for p in (art.path / "tensorboard").rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(run))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend(e.value for e in acc.Scalars(tag))
    return out


@pytest.fixture
def ready(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli("init", "tiny", "--name", "tiny", "--family", "internvl")[0] == 0
    assert cli("data", "synth", "--name", "probs", "--problems", "20", "--tasks", "color", "--messages", "brief")[0] == 0
    return cli


def test_sft_logs_loss_and_learning_rate_to_tensorboard(ready):
    code, out, err = ready("sft", "--model", "tiny", "--data", "probs", "--name", "m", "--trainable", "connector",
                           "--max-steps", "3", "--batch-size", "2", "--report-to", "tensorboard")
    assert code == 0, err
    art = ready.store.resolve("m")
    found = scalars(art)
    assert len(found["train/loss"]) == 3 and len(found["train/learning_rate"]) == 3, sorted(found)
    assert any(f.startswith("tensorboard/") for f in art.manifest["files"])
    assert art.manifest["config"]["report_to"] == ["tensorboard"]
    code, out, err = ready("report", "m", "--out", "page.html")
    assert code == 0, err
    page = open("page.html").read()  # in the working directory: the fixture's tmp_path
    assert "TensorBoard event files: " in page and "tensorboard --logdir " in page


def test_rl_logs_reward_and_the_run_config(ready):
    code, out, err = ready("rl", "--model", "tiny", "--data", "probs", "--name", "run", "--num-generations", "2",
                           "--batch-size", "4", "--grad-accum", "1", "--max-new-tokens", "4", "--max-steps", "2",
                           "--save-steps", "2", "--report-to", "tensorboard")
    assert code == 0, err
    art = ready.store.resolve("run")
    found = scalars(art)
    assert len(found["train/reward"]) == 2 and "train/loss" in found, sorted(found)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = next((art.path / "tensorboard").rglob("events.out.tfevents.*")).parent
    acc = EventAccumulator(str(run), size_guidance={"tensors": 0})
    acc.Reload()
    texts = [e.tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"] if tag.startswith("r1v3")
             for e in acc.Tensors(tag)]
    assert texts and '"name": "run"' in texts[0] and "tiny@v1" in texts[0]  # the settings and the lineage


def test_a_tracker_that_is_not_installed_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(UserError, match=r"--report-to wandb \(report_to\): the wandb package is not installed; "
                                        r"pip install 'r1v3\[tracking\]'"):
        config.load(rl.Config, stage="rl", options={"model": "m", "data": "d", "name": "n", "report_to": "wandb"})
    with pytest.raises(UserError, match="report_to.* must be one of"):
        config.load(rl.Config, stage="rl", options={"model": "m", "data": "d", "name": "n", "report_to": "comet"})


@pytest.mark.slow
def test_tensorboard_serves_the_published_scalars_over_http(ready):
    assert ready("sft", "--model", "tiny", "--data", "probs", "--name", "m", "--trainable", "connector",
                 "--max-steps", "2", "--batch-size", "2", "--report-to", "tensorboard")[0] == 0
    logdir = ready.store.resolve("m").path / "tensorboard"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
                               "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, body = time.monotonic() + 60, None
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags", timeout=5) as r:
                    tags = json.loads(r.read())
                if any("train/loss" in run for run in tags.values()):
                    body = tags
            except OSError:
                time.sleep(1)
        assert body is not None, "tensorboard did not serve the scalars within 60 s"
        run = next(r for r, t in body.items() if "train/loss" in t)
        query = urllib.parse.urlencode({"run": run, "tag": "train/loss"})
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?{query}", timeout=5) as r:
            points = json.loads(r.read())
        assert len(points) == 2
    finally:
        server.terminate()
        server.wait(timeout=30)
