"""`--reuse` / R1V3_REUSE=1: a stage whose latest artifact came from the same settings and the same
input contents is not run again; any difference in either runs it."""

import json

import pytest

from r1v3 import config
from stages import select_ckpt

SYNTH = ("data", "synth", "--name", "shapes", "--n", "20", "--tasks", "color")
EVAL = ("eval", "mmmu", "--model", "tiny", "--data", "shapes", "--name", "scores", "--limit", "3",
        "--max-new-tokens", "2", "--temperature", "0", "--batch-size", "4")


def versions(cli, name):
    return cli.store.versions(name)


def test_same_settings_reused_changed_setting_runs(cli):
    code, out, err = cli(*SYNTH, "--reuse")
    assert code == 0 and "published shapes@v1" in out, err
    code, out, err = cli(*SYNTH, "--reuse")
    assert code == 0, err
    assert out.strip() == "up to date: shapes@v1 (reused)"
    assert versions(cli, "shapes") == [1]
    code, out, _ = cli(*SYNTH, "--seed", "1", "--reuse")  # one setting changed
    assert code == 0 and "published shapes@v2" in out
    code, out, _ = cli(*SYNTH, "--reuse")  # the latest (v2) has seed 1: seed 0 runs again
    assert code == 0 and "published shapes@v3" in out
    code, out, _ = cli(*SYNTH)  # off unless asked
    assert code == 0 and "published shapes@v4" in out


def test_env_turns_it_on_and_no_reuse_turns_it_off(cli, monkeypatch):
    assert cli(*SYNTH)[0] == 0
    monkeypatch.setenv("R1V3_REUSE", "1")
    code, out, _ = cli(*SYNTH)
    assert code == 0 and "up to date: shapes@v1 (reused)" in out
    code, out, _ = cli(*SYNTH, "--no-reuse")
    assert code == 0 and "published shapes@v2" in out


def test_changed_input_runs(cli, monkeypatch):
    monkeypatch.setenv("R1V3_REUSE", "1")
    assert cli("init", "tiny", "--name", "tiny")[0] == 0
    code, out, _ = cli("init", "tiny", "--name", "tiny")
    assert code == 0 and "up to date: tiny@v1 (reused)" in out
    assert cli(*SYNTH)[0] == 0
    code, out, err = cli(*EVAL)
    assert code == 0 and "published scores@v1" in out, err
    code, out, _ = cli(*EVAL, "--resume")  # --resume changes how a run continues, not what it computes
    assert code == 0 and "up to date: scores@v1 (reused)" in out
    # the data republished with the same content (synth is deterministic): nothing to redo
    assert cli(*SYNTH, "--no-reuse")[0] == 0
    code, out, _ = cli(*EVAL)
    assert code == 0 and "up to date: scores@v1 (reused)" in out
    # a new version of the data with other rows under the same name: `--data shapes` reads it now
    assert cli(*SYNTH, "--seed", "2")[0] == 0
    code, out, _ = cli(*EVAL)
    assert code == 0 and "published scores@v2" in out
    assert cli.store.resolve("scores@v2").manifest["inputs"][1]["ref"] == "shapes@v3"
    code, out, _ = cli(*EVAL)
    assert code == 0 and "up to date: scores@v2 (reused)" in out
    code, out, _ = cli(*EVAL[:5], "shapes@v1", *EVAL[6:])  # pinned to the old version: a setting changed
    assert code == 0 and "published scores@v3" in out


def test_model_input_changed(cli, monkeypatch):
    monkeypatch.setenv("R1V3_REUSE", "1")
    assert cli("init", "tiny", "--name", "tiny")[0] == 0
    assert cli(*SYNTH)[0] == 0
    assert cli(*EVAL)[0] == 0
    assert cli("init", "tiny", "--name", "tiny", "--seed", "3")[0] == 0  # other weights, same name
    code, out, _ = cli(*EVAL)
    assert code == 0 and "published scores@v2" in out


def test_damaged_or_foreign_latest_runs(cli, monkeypatch):
    monkeypatch.setenv("R1V3_REUSE", "1")
    assert cli(*SYNTH)[0] == 0
    art = cli.store.resolve("shapes")
    victim = next(p for p in sorted(art.path.rglob("*.parquet")))
    victim.chmod(0o644)
    victim.write_bytes(victim.read_bytes()[:-1] + bytes([victim.read_bytes()[-1] ^ 1]))
    code, out, _ = cli(*SYNTH)  # damaged: not trusted, published anew
    assert code == 0 and "published shapes@v2" in out
    # an artifact of the same name from another stage is not this stage's output
    assert cli("init", "tiny", "--name", "tiny")[0] == 0
    code, out, _ = cli("data", "synth", "--name", "tiny", "--n", "20", "--tasks", "color", "--force-kind")
    assert code == 0 and "published tiny@v2" in out


def test_every_output_must_match(cli):
    """An artifact citing another this command publishes must cite the latest one (here a model citing
    its selection; select-ckpt itself publishes the model first, then the selection naming it)."""
    cfg = config.load(select_ckpt.Config, stage="select-ckpt", options={"run": "rl", "probe": "probe", "name": "sel"})
    settings = json.loads(json.dumps(config.to_dict(cfg), default=str))
    assert cli("data", "synth", "--name", "probe", "--n", "10")[0] == 0
    store = cli.store
    probe = store.resolve("probe")
    with store.publish("sel", "selection", stage="select-ckpt", config=settings, inputs=[probe]) as d:
        (d.path / "selection.json").write_text("{}")
    sel = d.artifact
    with store.publish("sel-model", "model", stage="select-ckpt", config=settings, inputs=[sel]) as d:
        (d.path / "model.safetensors").write_bytes(b"not read here")
        (d.path / "config.json").write_text("{}")
    assert [a.ref for a in store.up_to_date(cfg)] == ["sel@v1", "sel-model@v1"]
    with store.publish("sel", "selection", stage="select-ckpt", config=settings, inputs=[probe]) as d:
        (d.path / "selection.json").write_text("{}")
    # a newer selection whose model was never published (killed between the two): not up to date
    assert store.up_to_date(cfg) is None


@pytest.mark.parametrize("changed", [{"resume": True}, {"batch_size": 3}, {"seed": 5}, {"min_positions": 3}])
def test_only_settings_the_result_does_not_depend_on_are_ignored(store, changed):
    cfg = config.load(select_ckpt.Config, stage="select-ckpt", options={"run": "rl", "probe": "probe", "name": "sel"})
    settings = json.loads(json.dumps(config.to_dict(cfg), default=str))
    for name in ("sel", "sel-model"):
        with store.publish(name, "selection", stage="select-ckpt", config=settings) as d:
            (d.path / "f.txt").write_text(name)
    again = config.load(select_ckpt.Config, stage="select-ckpt",
                        options={"run": "rl", "probe": "probe", "name": "sel", **changed})
    assert (store.up_to_date(again) is not None) == (set(changed) <= {"resume", "batch_size"})


# what a stage reads besides artifacts: (stage module, given settings, the file to write, its two contents)
READS = [
    ("stages.rl", {"model": "m", "data": "d", "name": "n", "reward": ["rw.py:fn"]}, "rw.py",
     "def fn(prompts, completions, **kw):\n    return [0.0] * len(completions)\n",
     "def fn(prompts, completions, **kw):\n    return [1.0] * len(completions)\n"),
    ("stages.rl", {"model": "m", "data": "d", "name": "n", "reward": ["pkg/rw.py:fn"]}, "pkg/rw.py", "A = 1\n", "A = 2\n"),
    ("stages.data_import", {"path": "rows.jsonl", "name": "n"}, "rows.jsonl", '{"id": "a"}\n', '{"id": "b"}\n'),
    ("stages.import_model", {"path": "model", "name": "n"}, "model/config.json", "{}", '{"x": 1}'),
    ("stages.mmmu_import", {"path": "mmmu", "name": "n"}, "mmmu/Math/validation.parquet", "a", "b"),
    ("stages.evaluate", {"responses": "out.json", "name": "n"}, "out.json", "[]", "[ ]"),
]


@pytest.mark.parametrize("module_name, given, rel, before, after", READS, ids=[f"{r[0]}:{r[2]}" for r in READS])
def test_an_edited_file_a_stage_reads_is_not_up_to_date(store, tmp_path, monkeypatch, module_name, given, rel,
                                                        before, after):
    import importlib

    cls = importlib.import_module(module_name).Config
    monkeypatch.chdir(tmp_path)
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_text(before)
    cfg = cls(**given)
    with store.publish("n", "selection", stage=cls.STAGE, config=json.loads(json.dumps(config.to_dict(cfg), default=str))) as d:
        (d.path / "f.txt").write_text("x")
    assert [a.ref for a in store.up_to_date(cls(**given))] == ["n@v1"]
    (tmp_path / rel).write_text(after)
    assert store.up_to_date(cls(**given)) is None


def test_a_reward_from_an_installed_module_is_never_reused(cli):
    from stages import rl

    cfg = rl.Config(model="m", data="d", name="n", reward=["json:dumps"])
    with cli.store.publish("n", "selection", stage="rl", config=json.loads(json.dumps(config.to_dict(cfg), default=str))) as d:
        (d.path / "f.txt").write_text("x")
    assert cli.store.up_to_date(cfg) is None
    code, _, err = cli("rl", "--model", "m", "--data", "d", "--name", "n", "--reward", "json:dumps", "--reuse")
    assert "note: --reuse cannot tell whether json:dumps (reward) changed; running the stage" in err
    assert code == 2  # it ran: the model m does not exist
