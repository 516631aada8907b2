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
