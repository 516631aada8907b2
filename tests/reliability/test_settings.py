"""Settings from every source (options, recipe YAML, overrides, presets) through the real CLI:
one `error:` line naming flag and key, exit 2, nothing published."""

import os

import pytest

pytestmark = pytest.mark.reliability

SFT = ["sft", "--model", "m", "--data", "d", "--name", "x", "--trainable", "connector"]
EVAL = ["eval", "mmmu", "--model", "m", "--data", "d", "--name", "e"]


def one_line_refusal(cli, argv, fragment):
    code, out, err = cli(*argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
    assert fragment in lines[0], (argv, lines[0])
    assert "Traceback" not in out + err and not cli.store.list()


@pytest.mark.parametrize("argv,fragment", [
    (SFT + ["--lr", "inf"], "--lr (learning_rate) must be a finite number, got inf"),
    (SFT + ["--lr", "nan"], "--lr (learning_rate) must be a finite number, got nan"),
    (SFT + ["--learning-rate", "-inf"], "--lr (learning_rate) must be a finite number"),
    (SFT + ["--epochs", "nan"], "--epochs (epochs) must be a finite number"),
    (SFT + ["--lr", "-1"], "--lr (learning_rate) must be positive, got -1.0"),
    (SFT + ["learning_rate=.nan"], "learning_rate must be a finite number"),
    (SFT + ["warmup_ratio=1e999"], "warmup_ratio must be a finite number"),
    (EVAL + ["--temperature", "nan"], "--temperature (temperature) must be a finite number"),
    (EVAL + ["--top-p", "Infinity"], "--top-p (top_p) must be a finite number"),
    (EVAL + ["top_p=-.inf"], "top_p must be a finite number"),
    (["data", "synth", "--name", "s", "--problems", "3"], "--problems (n) must be at least 10, got 3"),
    (["data", "synth", "--name", "s", "--n", "3"], "--problems (n) must be at least 10, got 3"),
    (SFT + ["--preset", "fast"], "--preset (preset) must be a shipped preset of sft"),
    (SFT + ["--trainable", "connector,wings"], "--trainable (trainable): unknown trainable part 'wings'"),
])
def test_bad_settings_are_one_line(cli, argv, fragment):
    one_line_refusal(cli, argv, fragment)


def test_non_finite_yaml_refused_naming_the_file(cli, tmp_path):
    for value in (".nan", ".NaN", ".inf", "-.Inf"):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"sft:\n  learning_rate: {value}\n")
        one_line_refusal(cli, SFT + ["--config", recipe], f"{recipe}: learning_rate must be a finite number")
        recipe.write_text(f"eval-mmmu:\n  temperature: {value}\n")
        one_line_refusal(cli, EVAL + ["--config", recipe], f"{recipe}: temperature must be a finite number")


def test_float_spellings_accepted_on_the_command_line(cli):
    for spelling in ("2e-4", "1E-5", "3e+2", ".5", "1_000"):
        code, _, err = cli(*SFT, "--lr", spelling, f"weight_decay={spelling}")
        assert "must be" not in err and "published" not in err  # refused later, for the missing model
        assert code == 2 and "no artifact named 'm'" in err, err


def test_anchor_bomb_recipe_is_refused_in_one_short_line(cli, tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join(['*a' + str(i - 1)] * 9)}]" for i in range(1, 10)]
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("\n".join(lines) + "\nname: *a9\n")
    code, _, err = cli("data", "synth", "--config", recipe)
    assert code == 2 and len(err) < 300 and "aliases are expanded" in err


def test_store_before_or_after_the_command(cli, tmp_path, monkeypatch):
    from r1v3.artifacts import Store
    from r1v3.cli import main

    after = tmp_path / "after"
    assert main(["data", "synth", "--name", "s", "--problems", "10", "--store", str(after)]) == 0
    assert [a.ref for a in Store(after).list()] == ["s@v1"]
    # after the command wins over before it
    assert main(["--store", str(tmp_path / "before"), "data", "show", "s", "--store", str(after)]) == 0
    assert main(["artifacts", "ls", "--store", str(after)]) == 0


def test_empty_store_variable_is_refused_not_the_current_directory(tmp_path, monkeypatch, capsys):
    from r1v3.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("R1V3_STORE", "")
    assert main(["data", "synth", "--name", "s", "--problems", "10"]) == 2
    assert "R1V3_STORE is set but empty" in capsys.readouterr().err and not os.listdir(tmp_path)
    monkeypatch.delenv("R1V3_STORE")
    for argv in (["--store", "", "data", "synth"], ["data", "synth", "--store", " "]):
        assert main([*argv, "--name", "s", "--problems", "10"]) == 2
        assert "--store is empty" in capsys.readouterr().err and not os.listdir(tmp_path)


def test_lists_take_commas_everywhere_and_repeats_as_well(cli):
    from r1v3 import config
    from stages import evaluate, synth

    code, _, err = cli("data", "synth", "--name", "s", "--problems", "20", "--tasks", "color", "--tasks", "counting,chart")
    assert code == 0, err
    assert cli.store.resolve("s").manifest["config"]["tasks"] == ["color", "counting", "chart"]
    cfg = config.load(evaluate.Config, options={"model": "m", "data": "d", "name": "e", "subjects": "Art,Math"})
    assert cfg.subjects == ["Art", "Math"]
    assert config.load(synth.Config, options={"name": "s"}, overrides=["tasks=[color, chart]"]).tasks == ["color", "chart"]


@pytest.mark.parametrize("argv,keys", [
    (["sft", "--help"], ["learning_rate=2e-05", "--lr", "--preset", "cold-start"]),
    (["eval", "mmmu", "--help"], ["limit", "--temperature", "--json"]),
    (["data", "synth", "--help"], ["--problems", "n=500"]),
])
def test_help_is_derived_from_the_config(cli, argv, keys):
    code, out, _ = cli(*argv)
    assert code == 0
    for key in keys:
        assert key in out, key
    assert "n=200" not in " ".join(argv[:1]) or argv[0] == "data"
    for line in out.splitlines():  # flags take no value: no type shown beside them
        if "--resume" in line or "--trust-remote-code" in line or "--blank-images" in line:
            assert "<bool>" not in line, line


def test_library_progress_bars_are_off_when_output_is_not_a_terminal(cli, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    cli("--version")
    assert os.environ.get("TQDM_DISABLE") == "1"  # pytest captures output: not a terminal
    monkeypatch.delenv("TQDM_DISABLE")
