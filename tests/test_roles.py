"""Every setting of every stage declares its role, and --resume and --reuse follow the declarations.

For each stage's Config and each of its settings, the test changes that one setting to another valid
value and checks what the derived keys do: a setting the result does not depend on (`result=False`)
changes neither key; a `resumable` one changes the reuse key only; an output artifact's name changes
the reuse key only (the work directory is already keyed by it); every other setting changes both.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import typing

import pytest

from r1v3 import cli, config
from r1v3.errors import UserError

# what each stage needs to construct; fixed values a CLI command adds count as given
GIVEN = {
    "stages.sft": {"model": "m", "data": "d", "name": "n", "trainable": "connector"},
    "stages.rl": {"model": "m", "data": "d", "name": "n", "vllm": "server", "reward": ["json:dumps"]},
    "stages.evaluate": {"model": "m", "data": "d", "name": "n"},
    "stages.mathvista_import": {"path": "mathvista-dir", "name": "n"},
    "stages.difficulty": {"model": "m", "data": "d", "name": "n"},
    "stages.distill": {"teacher": "t", "data": "d", "name": "n"},
    "stages.select_ckpt": {"run": "r", "probe": "p", "name": "n"},
    "stages.compose": {"vlm": "v", "llm": "l", "name": "n"},
    "stages.compare": {"evals": ["a", "b"]},
    "stages.data_import": {"path": "rows.jsonl", "name": "n"},
    "stages.import_model": {"path": "model-dir", "name": "n"},
    "stages.init_model": {"model": "tiny", "name": "n"},
    "stages.mmmu_import": {"path": "mmmu-dir", "name": "n"},
    "stages.report": {"ref": "a"},
    "stages.rl_export": {"run": "r", "name": "n"},
    "stages.synth": {"name": "n"},
}
MODULES = sorted({module for _, _, module, _ in cli.STAGES})


def test_every_stage_module_is_covered():
    assert sorted(GIVEN) == MODULES


NAMED = {"subjects": [["Math"], ["Art"]], "words": [["Wait"]], "trl": [{"max_grad_norm": 0.5}],
         "reward_weight": [[0.5]], "report_to": [["tensorboard"]]}  # values a generic guess would not find


def _candidates(value, tp, f):
    """Other values of the setting's type, nearest first."""
    if f.name in NAMED:
        return NAMED[f.name]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        inner = [a for a in args if a is not type(None)]
        out = [c for a in inner for c in _candidates(value, a, f)]
        return out + ([None] if type(None) in args and value is not None else [])
    if origin is typing.Literal:
        return [a for a in args if a != value]
    if tp is bool:
        return [not value] if isinstance(value, bool) else [True, False]
    if tp is int:
        base = value if isinstance(value, int) and not isinstance(value, bool) else 1
        return [base + 1, base + 2, base - 1, base * 2, 2, 1, 64]
    if tp is float:
        base = value if isinstance(value, float) else 0.5
        return [base * 0.5 if base else 0.1, base + 0.1, 0.5, 0.9, 1.5]
    if tp is str:
        return [(value or "") + "x", "connector", "connector+llm", "other"]
    if origin is list:
        items = list(value or [])
        return [items[:1] if len(items) > 1 else items + ["x"], ["color"], [0.5], [1, 1], ["rw.py:fn"]]
    if origin is dict:
        return [{"x": 1}]
    return []


def _keys(cfg):
    dump = lambda d: json.dumps(d, sort_keys=True, default=str)  # noqa: E731
    return dump(config.resume_settings(cfg)), dump(config.reuse_settings(cfg))


@pytest.mark.parametrize("module_name", MODULES)
def test_resume_and_reuse_follow_each_setting_s_role(module_name):
    module = importlib.import_module(module_name)
    cls = module.Config
    given = GIVEN[module_name]
    base = cls(**given)
    hints = typing.get_type_hints(cls)
    tried, untried = [], []
    for f in dataclasses.fields(cls):
        if f.name == "preset":
            continue  # a preset sets other settings: covered through them
        value = getattr(base, f.name)
        changed = None
        for candidate in _candidates(value, hints[f.name], f):
            try:
                changed = cls(**{**given, f.name: candidate})
            except (UserError, TypeError, ValueError):
                continue
            if getattr(changed, f.name) != value:
                break
            changed = None
        if changed is None:
            if typing.get_origin(hints[f.name]) is not typing.Literal or len(typing.get_args(hints[f.name])) > 1:
                untried.append(f.name)  # a one-value Literal has nothing to vary
            continue
        tried.append(f.name)
        role = config.role(f)
        (resume0, reuse0), (resume1, reuse1) = _keys(base), _keys(changed)
        if not role["result"]:
            expect = (False, False)
        elif role["resumable"] or role["artifact"] == "output":
            expect = (False, True)
        else:
            expect = (True, True)
        assert (resume0 != resume1, reuse0 != reuse1) == expect, (f.name, role)
    assert len(untried) <= max(1, len(tried) // 4), f"settings no other value was found for: {untried}"


@pytest.mark.parametrize("module_name", MODULES)
def test_settings_that_name_artifacts_declare_it(module_name):
    """A setting whose help says it names an artifact is declared input or output, so --reuse compares
    the artifact's content, not its name; the stage's own output names are outputs."""
    cls = importlib.import_module(module_name).Config
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        role = config.role(f)
        text = hints[f.name] in (str, typing.Optional[str])
        if f.name == "name" or f.name.endswith("_name") and "artifact" in config.meta(f)["help"].lower():
            assert role["artifact"] == "output", f.name
        elif text and "artifact" in config.meta(f)["help"].lower().split(".")[0] and role["reads"] is None:
            assert role["artifact"] is not None, f.name


def test_a_reward_file_s_content_enters_both_keys(tmp_path, monkeypatch):
    from stages import rl

    monkeypatch.chdir(tmp_path)
    (tmp_path / "rw.py").write_text("def fn(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    given = {"model": "m", "data": "d", "name": "n", "reward": ["rw.py:fn"]}
    before = _keys(rl.Config(**given))
    (tmp_path / "rw.py").write_text("def fn(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    after = rl.Config(**given)
    assert [a != b for a, b in zip(before, _keys(after))] == [True, True]
    assert config.to_dict(after)["reads"]["reward"]["rw.py:fn"] == config.path_digests("rw.py")["rw.py"]
    module = rl.Config(**{**given, "reward": ["json:dumps"]})
    assert config.undigested(module) == [("reward", "json:dumps")]


@pytest.mark.parametrize("module_name", MODULES)
def test_every_stage_config_constructs_from_its_defaults_and_every_preset(module_name):
    cls = importlib.import_module(module_name).Config
    assert cls(**GIVEN[module_name])
    for preset in config.preset_names(cls.STAGE):
        cfg = cls(**GIVEN[module_name], preset=preset)
        for key, value in config.preset_values(cls.STAGE, preset).items():
            assert getattr(cfg, key) == value or key == "trainable", (preset, key)  # trainable is normalised
