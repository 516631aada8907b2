from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from r1v3 import config
from r1v3.errors import UserError


@dataclass
class Optim:
    lr: float = 1e-5
    warmup: float = 0.03


@dataclass
class Cfg:
    name: str = "m"
    steps: int = 10
    trainable: Literal["connector", "llm", "all"] = "connector"
    subjects: list[str] = field(default_factory=list)
    limit: Optional[int] = None
    optim: Optim = field(default_factory=Optim)


def test_precedence_defaults_yaml_options_overrides(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("sft:\n  steps: 20\n  optim: {lr: 2.0e-4}\nrl:\n  steps: 99\n")
    cfg = config.load(Cfg, stage="sft", path=p, options={"name": "cli", "limit": None}, overrides=["optim.warmup=0.1", "subjects=Math"])
    assert cfg.steps == 20 and cfg.name == "cli" and cfg.optim.lr == 2e-4 and cfg.optim.warmup == 0.1
    assert cfg.subjects == ["Math"] and cfg.limit is None
    assert config.to_dict(cfg)["optim"] == {"lr": 2e-4, "warmup": 0.1}
    cfg = config.load(Cfg, stage="sft", overrides=["steps=3", "optim.lr=1"])
    assert cfg.steps == 3 and cfg.optim.lr == 1.0
    assert config.load(Cfg, stage="sft", overrides=["subjects=Math, Art"]).subjects == ["Math", "Art"]
    assert config.load(Cfg, stage="sft", overrides=["subjects=[Math, Art]"]).subjects == ["Math", "Art"]


@pytest.mark.parametrize("text,msg", [
    ("steps: [1\n", "line 2: malformed YAML"),
    ("- a\n- b\n", "must be a mapping"),
    ("stepz: 3\n", "unknown key 'stepz'"),
    ("steps: ten\n", "steps must be int, got 'ten'"),
    ("trainable: vision\n", "trainable must be one of connector, llm, all"),
    ("optim: {lr: fast}\n", "optim.lr must be float"),
    ("optim: {beta: 1}\n", "unknown key 'optim.beta'"),
])
def test_bad_yaml(tmp_path, text, msg):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(UserError, match=msg) as e:
        config.load(Cfg, stage="sft", path=p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("override,msg", [
    ("nokey", "expected key=value"),
    ("stepz=3", "unknown key 'stepz'"),
    ("steps=1.5", "steps must be int"),
    ("limit=abc", "limit must be int"),
    ("steps.x=1", "steps is not a section|steps must be int"),
])
def test_bad_overrides(override, msg):
    with pytest.raises(UserError, match=msg):
        config.load(Cfg, stage="sft", overrides=[override])


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        config.load(Cfg, stage="sft", path=tmp_path / "nope.yaml")


@pytest.mark.parametrize("text,value", [("2e-4", 2e-4), ("1E-5", 1e-5), ("3e+2", 300.0), (".5", 0.5), ("1_000", 1000.0),
                                        ("-1.5e3", -1500.0), ("7", 7.0)])
def test_float_spellings_in_yaml_overrides_and_options(tmp_path, text, value):
    p = tmp_path / "r.yaml"
    p.write_text(f"optim: {{lr: {text}}}\n")
    assert config.load(Cfg, stage="sft", path=p).optim.lr == value
    assert config.load(Cfg, stage="sft", overrides=[f"optim.lr={text}"]).optim.lr == value
    from stages import sft

    cfg = config.load(sft.Config, stage="sft", options={"name": "n", "model": "m", "data": "d", "trainable": "llm",
                                                       "weight_decay": text.lstrip("-")})
    assert cfg.weight_decay == abs(value)


@pytest.mark.parametrize("yaml_text,override,option", [(".nan", "nan", "nan"), (".inf", "inf", "inf"),
                                                       ("-.inf", "-inf", "-Infinity"), ("1e999", "1e999", "1e400")])
def test_non_finite_floats_refused_from_every_source(tmp_path, yaml_text, override, option):
    from stages import evaluate, sft

    base = {"name": "n", "model": "m", "data": "d", "trainable": "llm"}
    p = tmp_path / "r.yaml"
    p.write_text(f"learning_rate: {yaml_text}\n")
    with pytest.raises(UserError, match=f"^{p}: learning_rate must be a finite number"):
        config.load(sft.Config, stage="sft", path=p, options=base)
    with pytest.raises(UserError, match="^override: learning_rate must be a finite number"):
        config.load(sft.Config, stage="sft", options=base, overrides=[f"learning_rate={override}"])
    with pytest.raises(UserError, match=r"^--lr \(learning_rate\) must be a finite number"):
        config.load(sft.Config, stage="sft", options={**base, "learning_rate": option}, flags={"learning_rate": "--lr"})
    with pytest.raises(UserError, match="epochs must be a finite number"):
        sft.Config(**base, epochs=float(yaml_text.replace(".", "")))
    with pytest.raises(UserError, match="temperature must be a finite number"):
        evaluate.Config(model="m", data="d", name="e", temperature=override)


def test_every_float_setting_of_every_stage_is_checked_finite():
    import dataclasses
    import typing

    from stages import compose, data_import, evaluate, import_model, init_model, mathvista_import, mmmu_import, sft, synth

    floats = 0
    for module in (compose, data_import, evaluate, import_model, init_model, mathvista_import, mmmu_import, sft, synth):
        hints = typing.get_type_hints(module.Config)
        for f in dataclasses.fields(module.Config):
            if float in (hints[f.name], *typing.get_args(hints[f.name])):
                floats += 1
                with pytest.raises(UserError, match=f"{f.name} must be a finite number"):
                    config._coerce(float("nan"), hints[f.name], f)
    assert floats >= 6


def test_ranges_name_flag_and_key():
    from stages import sft

    base = {"name": "n", "model": "m", "data": "d", "trainable": "llm"}
    flags = {"learning_rate": "--lr", "warmup_ratio": "--warmup-ratio", "batch_size": "--batch-size"}
    for key, value, msg in [("learning_rate", "-1", r"--lr \(learning_rate\) must be positive, got -1.0"),
                            ("warmup_ratio", "1", r"--warmup-ratio \(warmup_ratio\) must be in \[0, 1\), got 1.0"),
                            ("batch_size", "0", r"--batch-size \(batch_size\) must be at least 1, got 0")]:
        with pytest.raises(UserError, match=f"^{msg}$"):
            config.load(sft.Config, stage="sft", options={**base, key: value}, flags=flags)
    with pytest.raises(UserError, match=r"^override: learning_rate must be positive"):
        config.load(sft.Config, stage="sft", options=base, overrides=["learning_rate=0"])


def test_anchor_bomb_is_refused_fast_with_a_short_message(tmp_path):
    import time

    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join(['*a' + str(i - 1)] * 9)}]" for i in range(1, 10)]
    p = tmp_path / "bomb.yaml"
    p.write_text("\n".join(lines) + "\nname: *a9\n")
    start = time.perf_counter()
    with pytest.raises(UserError) as e:
        config.load(Cfg, stage="sft", path=p)
    assert time.perf_counter() - start < 2 and len(str(e.value)) < 300 and "alias" in str(e.value)
    with pytest.raises(UserError, match="alias") as e:
        config.load(Cfg, stage="sft", overrides=["subjects={" + ", ".join(lines[:7]) + "}"])
    small = tmp_path / "small.yaml"  # a few aliases expanding to a long list: fine to read, short to report
    small.write_text("limit: [&a [" + ", ".join(["x" * 50] * 50) + "], *a, *a]\n")
    with pytest.raises(UserError) as e:
        config.load(Cfg, stage="sft", path=small)
    assert "limit must be int" in str(e.value) and len(str(e.value)) < 200


def test_long_values_are_cut_in_errors():
    with pytest.raises(UserError) as e:
        config.load(Cfg, stage="sft", overrides=["steps=" + "x" * 100_000])
    assert len(str(e.value)) < 150


def test_unknown_preset_and_preset_precedence(tmp_path):
    from stages import sft

    base = {"name": "n", "model": "m", "data": "d"}
    with pytest.raises(UserError, match="preset must be a shipped preset of sft .*; got 'fast'"):
        config.load(sft.Config, stage="sft", options={**base, "preset": "fast"})
    p = tmp_path / "r.yaml"
    p.write_text("preset: connector-align\nweight_decay: 0.1\nepochs: 3\n")
    cfg = config.load(sft.Config, stage="sft", path=p, options={**base, "epochs": "2"}, overrides=["seed=4"])
    assert (cfg.learning_rate, cfg.weight_decay, cfg.epochs, cfg.seed, cfg.trainable) == (2e-4, 0.1, 2.0, 4, "connector")
    assert sft.PRESETS["connector-align"]["learning_rate"] == 2e-4  # read from r1v3/presets/sft/connector-align.yaml


def test_warmup_covering_every_step_is_dropped():
    from stages import sft

    base = {"name": "n", "model": "m", "data": "d", "trainable": "llm", "warmup_ratio": 0.03}
    one = sft.Config(**base, max_steps=1)
    assert one.warmup_ratio == 0.0 and "warmup is off" in one.notes[0]
    assert sft.Config(**base, max_steps=100).warmup_ratio == 0.03
    assert sft.Config(**base).warmup_for(1) == 0.0 and sft.Config(**base).warmup_for(1000) == 0.03


def test_configs_are_complete_and_checked_on_construction():
    from stages import evaluate, sft, synth

    with pytest.raises(UserError, match="say what to train"):
        sft.Config(name="n", model="m", data="d")
    with pytest.raises(UserError, match="n must be at least 10"):
        synth.Config(name="x", n=3)
    cfg = evaluate.Config(responses="r.json")
    assert (cfg.style, cfg.max_new_tokens, cfg.temperature) == ("official", 128, 0.0)
    with pytest.raises(UserError, match="samples do not apply"):
        evaluate.Config(responses="r.json", samples=3)
    assert sft.Config(name="n", model="m", data="d", trainable="connector,llm").trainable == "connector+llm"


def test_eval_reads_its_stage_section_and_the_older_one(tmp_path):
    from stages import evaluate

    for section in ("eval-mmmu", "eval"):
        p = tmp_path / f"{section}.yaml"
        p.write_text(f"{section}:\n  style: reasoning\nsft:\n  style: official\n")
        assert config.load(evaluate.Config, path=p, options={"responses": "r.json"}).style == "reasoning"
