"""The CLI end to end: the foundation commands, and one clear line + exit 2 for every bad input."""

import json

import pytest
from PIL import Image
from r1v3.artifacts import Store

from tests.helpers import bad_cli_inputs, png_bytes


def snapshot(store: Store):
    """Everything visible in the store: artifact refs, and whatever is left in staging."""
    staging = store.root / ".staging"
    leftovers = sorted(p.name for p in staging.iterdir()) if staging.exists() else []
    return sorted(a.ref for a in store.list()), leftovers


@pytest.fixture
def populated(cli, tmp_path):
    code, _, err = cli("data", "synth", "--name", "shapes", "--n", "40")
    assert code == 0, err
    good = tmp_path / "good.jsonl"
    (tmp_path / "img.png").write_bytes(png_bytes())
    good.write_text(json.dumps({"id": "a", "images": ["img.png"], "question": "What colour?", "options": [],
                                "answer": "red", "question_type": "open"}) + "\n")
    return tmp_path


def test_help_lists_stages(cli):
    code, out, _ = cli("--help")
    assert code == 0
    for command in ("init", "import-model", "data", "artifacts", "eval"):
        assert command in out


def test_synth_show_and_import(cli, populated, tmp_path):
    code, out, _ = cli("data", "show", "shapes", "--n", "2", "--sheet", tmp_path / "sheet.png")
    assert code == 0 and "shapes@v1" in out and "answer:" in out
    assert Image.open(tmp_path / "sheet.png").size[0] > 100
    code, out, _ = cli("data", "import", populated / "good.jsonl", "--name", "mine")
    assert code == 0 and "mine@v1" in out
    art = cli.store.resolve("mine", kind="dataset", verify=True)
    assert art.manifest["inputs"] == [] and art.metrics["splits"] == {"train": 1}


def test_init_tiny_and_import_model_roundtrip(cli, tmp_path):
    code, out, err = cli("init", "tiny", "--name", "tiny", "--family", "llava", "--seed", "1")
    assert code == 0, err
    art = cli.store.resolve("tiny", kind="model", verify=True)
    assert art.metrics["family"] == "llava" and art.manifest["config"]["seed"] == 1
    code, out, err = cli("import-model", art.path, "--name", "imported")
    assert code == 0, err
    imported = cli.store.resolve("imported", kind="model", verify=True)
    assert imported.metrics["model_class"] == "vlm"
    weights = [f for f in imported.manifest["files"] if f.endswith(".safetensors")]
    assert weights and all(imported.manifest["files"][f]["sha256"] == art.manifest["files"][f]["sha256"] for f in weights)


def test_init_tiny_llm_composes_with_a_tiny_vlm(cli):
    code, _, err = cli("init", "tiny-llm", "--name", "llm", "--seed", "2")
    assert code == 0, err
    llm = cli.store.resolve("llm", kind="model", verify=True)
    assert llm.metrics["model_class"] == "causal-lm" and llm.metrics["model_type"] == "qwen2"
    assert "family" not in llm.metrics and llm.manifest["config"]["seed"] == 2
    assert cli("init", "tiny", "--name", "vlm")[0] == 0
    code, _, err = cli("compose", "--vlm", "vlm", "--llm", "llm", "--name", "composed")
    assert code == 0, err
    composed = cli.store.resolve("composed", kind="model", verify=True)
    assert [i["ref"] for i in composed.manifest["inputs"]] == ["vlm@v1", "llm@v1"]


def test_bad_inputs_one_line_exit_2_nothing_written(cli, populated, tmp_path):
    before = snapshot(cli.store)
    cases = bad_cli_inputs(tmp_path)
    for argv, fragment in cases:
        code, out, err = cli(*argv)
        lines = err.strip().splitlines()
        assert code == 2, (argv, code, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        assert fragment in lines[0], (argv, lines[0])
        assert "Traceback" not in out + err
        assert snapshot(cli.store) == before, argv


def test_corrupted_manifest_is_one_line(cli, populated):
    art = cli.store.resolve("shapes")
    (art.path / "manifest.json").write_text("{")
    code, _, err = cli("data", "show", "shapes")
    assert code == 2 and "corrupted manifest" in err and len(err.strip().splitlines()) == 1


def test_debug_shows_traceback(cli):
    from r1v3.errors import UserError

    with pytest.raises(UserError):
        cli("--debug", "data", "show", "nope")


def test_ls_reports_damaged_and_gc_removes_abandoned_drafts(cli, populated):
    art = cli.store.resolve("shapes")
    (art.path / "manifest.json").write_text("{")
    code, out, err = cli("artifacts", "ls")
    assert code == 0 and "damaged:" in err and "corrupted manifest" in err
    code, _, err = cli("artifacts", "verify", "shapes@v1")
    assert code == 1 and "corrupted manifest" in err
    leftover = cli.store.root / ".staging" / "dead-draft"
    leftover.mkdir(parents=True)
    (leftover / "half.parquet").write_bytes(b"x")
    code, out, _ = cli("artifacts", "gc", "--older-than", "0")
    assert code == 0 and "removed 1 abandoned draft" in out and not leftover.exists()


def test_missing_required_setting_is_one_line(cli):
    code, _, err = cli("compose", "--vlm", "x", "--name", "y")
    assert code == 2 and "missing required setting 'llm' (give --llm or llm=...)" in err


@pytest.mark.parametrize("argv,fragment", [
    (["data", "synth"], "missing required setting 'name' (give --name or name=...)"),  # a recipe may give it
    (["data", "synth", "--name", "x", "--bogus"], "No such option: --bogus"),
    (["eval", "mmmu", "--limit", "abc"], "--limit (limit) must be int, got 'abc'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["artifacts", "ls", "--kind", "bogus"], "--kind must be one of"),
    (["data", "show", "x", "--n", "-1"], "--limit must be 0 or more"),
])
def test_usage_errors_are_one_line(cli, argv, fragment):
    code, out, err = cli(*argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    assert "Traceback" not in out + err


def test_version(cli):
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("r1v3 ")


def test_one_writer_per_work_dir(store):
    from r1v3.errors import UserError

    held = store.lock_work("run", "eval")
    with pytest.raises(UserError, match="another run of 'run' .eval. is in progress"):
        store.lock_work("run", "eval")
    held.close()
    store.lock_work("run", "eval").close()
