"""The shared training core (r1v3.training) and the Store's work directories (Store.work)."""

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from r1v3 import training
from r1v3.work import WORK_STATE
from r1v3.errors import UserError

from tests.helpers import SHORT, changed_parts, snapshot, state_dict


def publish_text(store, name, text):
    with store.publish(name, "run", stage="test") as d:
        (d.path / "data.txt").write_text(text)
    return d.artifact


def has_file(path):
    return (path / "progress.txt").is_file()


def open_work(store, resume=False, seed=0, source=None, name="w"):
    source = source or store.resolve("src")
    return store.work(name, "demo", settings={"seed": seed, "lr": 0.1}, inputs={"model": source}, resume=resume,
                      has_progress=has_file)


# ---- Store.work ---------------------------------------------------------------------------------


def test_work_success_removes_the_directory_and_its_lock(store):
    publish_text(store, "src", "a")
    work = open_work(store)
    assert not work.path.exists()  # nothing is touched before entering
    with work:
        assert (work.path / WORK_STATE).is_file() and (work.path.parent / "demo.lock").is_file()
        (work.path / "progress.txt").write_text("1")
    assert not (store.root / ".work" / "w").exists()  # no litter: neither the directory nor the lock
    assert not (store.root / ".work").exists()


def test_work_failure_keeps_progress_only(store):
    publish_text(store, "src", "a")
    with pytest.raises(RuntimeError):
        with open_work(store) as work:
            raise RuntimeError("before any progress")
    assert not (store.root / ".work" / "w").exists()
    with pytest.raises(RuntimeError):
        with open_work(store) as work:
            (work.path / "progress.txt").write_text("1")
            raise RuntimeError("after some progress")
    assert (work.path / "progress.txt").is_file()
    with open_work(store, resume=True) as again:
        assert again.resumed and (again.path / "progress.txt").read_text() == "1"


def test_work_resume_names_what_differs(store, capsys):
    publish_text(store, "src", "a")
    with pytest.raises(RuntimeError):
        with open_work(store) as work:
            (work.path / "progress.txt").write_text("1")
            raise RuntimeError("interrupted")
    changed = publish_text(store, "src", "b")
    with pytest.raises(UserError) as e:
        with open_work(store, resume=True, seed=1, source=changed):
            pass
    message = str(e.value)
    assert "\n" not in message
    assert "seed 0 -> 1" in message and "the model changed (src@v1 -> src@v2)" in message
    assert "lr " not in message  # unchanged settings are not listed
    assert (work.path / "progress.txt").is_file()  # a refused resume keeps what it refused
    # a state file from before settings were recorded still refuses, and says so
    (work.path / WORK_STATE).write_text(json.dumps({"key": "0" * 16}))
    with pytest.raises(UserError, match="predates recording them"):
        with open_work(store, resume=True):
            pass
    (work.path / WORK_STATE).unlink()
    with pytest.raises(UserError, match="cannot tell which settings .* is missing"):
        with open_work(store, resume=True):
            pass
    # without --resume the progress is discarded, with a note
    capsys.readouterr()
    with open_work(store) as fresh:
        assert not fresh.resumed and not (fresh.path / "progress.txt").exists()
    assert "starting 'w' over" in capsys.readouterr().out


def test_work_resume_with_nothing_says_it_starts_fresh(store, capsys):
    publish_text(store, "src", "a")
    with open_work(store, resume=True) as work:
        assert not work.resumed
    assert "has no saved progress to resume; starting fresh" in capsys.readouterr().out


def test_work_one_live_run_per_name(store):
    publish_text(store, "src", "a")
    with open_work(store):
        with pytest.raises(UserError, match=r"^another run of 'w' \(demo\) is in progress in this store"):
            with open_work(store):
                pass
        with open_work(store, name="other"):  # another name is another directory
            pass
    with open_work(store):  # released
        pass


# ---- training -----------------------------------------------------------------------------------


def test_non_finite_training_stops_with_one_line_and_publishes_nothing(ready):
    before = snapshot(ready.store)
    code, out, err = ready("sft", *SHORT, "--trainable", "connector+llm", "--lr", "1e30", "--name", "boom")
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: training diverged at step 2: the gradient norm is"), err
    assert "nothing was published" in err and "1e+30" in err
    assert snapshot(ready.store) == before  # no model, and no work directory (no checkpoint was saved)


def test_a_non_finite_logged_loss_stops_training():
    callbacks = {type(c).__name__: c for c in training._callbacks(None, {})}

    class Args:
        learning_rate = 0.5

    class State:
        global_step = 7

    callbacks["NonFiniteLoss"].on_log(Args, State, None, logs={"loss": 1.5, "grad_norm": 2.0})
    with pytest.raises(training.NonFiniteTraining, match="at step 7: the loss is nan"):
        callbacks["NonFiniteLoss"].on_log(Args, State, None, logs={"loss": math.nan})


def test_non_finite_weights_are_never_published(ready, monkeypatch):
    real = training.train

    def then_poison(trainer, resume_from=None):
        run = real(trainer, resume_from)
        p = next(p for p in trainer.model.parameters() if p.requires_grad)
        with torch.no_grad():
            p.view(-1)[0] = math.inf
        return run

    monkeypatch.setattr(training, "train", then_poison)
    before = snapshot(ready.store)
    code, _, err = ready("sft", *SHORT, "--trainable", "connector", "--name", "inf")
    assert code == 2 and "the trained weights hold NaN or inf in 1 tensor(s)" in err, err
    assert snapshot(ready.store)[0] == before[0]  # nothing published


def test_non_finite_tensors(tmp_path):
    save_file({"a": torch.ones(3), "b": torch.tensor([1.0, math.nan]), "ids": torch.arange(3)}, tmp_path / "x.safetensors")
    save_file({"c": torch.tensor([-math.inf])}, tmp_path / "y.safetensors")
    assert training.non_finite_tensors(tmp_path) == ["b", "c"]


def test_one_step_with_warmup_still_trains(ready):
    # 8 rows in one batch of 8: one optimizer step, so connector-align's warmup (ratio 0.03, which
    # transformers rounds up to 1 step) would run that step at learning rate 0
    code, out, err = ready("sft", "--model", "tiny", "--data", "sftdata", "--preset", "connector-align",
                           "--batch-size", "8", "--epochs", "1", "--name", "one")
    assert code == 0, err
    assert "training without warmup" in out
    assert ready.store.resolve("one").metrics["steps"] == 1
    moved = changed_parts(state_dict("tiny", ready.store), state_dict("one", ready.store))
    assert moved["connector"][0] > 0 and moved["llm"][0] == 0


def test_trainer_class_keeps_the_base():
    from trl import GRPOTrainer, SFTTrainer

    for base in (SFTTrainer, GRPOTrainer):
        cls = training.trainer_class(base)
        assert issubclass(cls, base) and cls.__mro__[1] is training.TrainingFixes


def test_checkpoint_completeness(tmp_path):
    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    save_file({"w": torch.zeros(64)}, ckpt / "model.safetensors")
    (ckpt / "optimizer.pt").write_bytes(b"x")
    assert not training.checkpoint_is_complete(ckpt)  # no trainer_state.json: the save was cut short
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    assert training.checkpoint_is_complete(ckpt) and training.last_checkpoint(tmp_path) == str(ckpt)
    (ckpt / "trainer_state.json").write_text("[4]")  # parses, but is not a state
    assert not training.checkpoint_is_complete(ckpt)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    with open(ckpt / "model.safetensors", "r+b") as f:
        f.truncate(100)
    assert not training.checkpoint_is_complete(ckpt)
    (tmp_path / "checkpoint-2").mkdir()
    assert training.complete_checkpoints(tmp_path) == [] and not training.has_checkpoint(tmp_path)
