"""Hardening, round 3: six classes a hostile new user broke, each tested by several members.

1. secrets in error lines: the API key in any transformed spelling (CRLF, escaped, repr, URL);
2. sizes that build something in memory before checking it: every count-like setting of every stage;
3. (resume and reuse keys: elsewhere)
4. plug-ins that end the process: SystemExit and other BaseException from user code;
5. user text reaching a renderer that interprets it: plots, rich markup, terminals, the report;
6. a name of one kind shadowing another at publish.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import time
import types
import typing
from pathlib import Path

import pytest

from r1v3 import cli, config, curriculum
from r1v3.cli import main

pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[2]


def run(root, *argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--store", str(root), *map(str, argv)])
    return code, out.getvalue(), err.getvalue()


def one_line(code, out, err, fragment="", exit_code=2):
    lines = err.strip().splitlines()
    assert code == exit_code, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in out + err
    return lines[0]


def snapshot(root: Path):
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")) \
        if root.exists() else []


# ---- 2. sizes: every count-like setting of every stage is bounded at the config layer ---------


def stage_configs() -> dict[str, type]:
    """Every stage module's Config, by module name (stages/*.py)."""
    found = {}
    for path in sorted((REPO / "stages").glob("*.py")):
        module = importlib.import_module(f"stages.{path.stem}")
        if isinstance(getattr(module, "Config", None), type) and dataclasses.is_dataclass(module.Config):
            found[path.stem] = module.Config
    return found


def _base_types(tp) -> set:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return set().union(*(_base_types(a) for a in args if a is not type(None)))
    if typing.get_origin(tp) is list:
        return {("list", a) for a in args}
    return {tp}


def count_like(cls) -> list[dataclasses.Field]:
    """Int settings (ints, optional ints, lists of ints) and float counts (epochs)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        types_ = _base_types(hints[f.name])
        if int in types_ or ("list", int) in types_ or (float in types_ and "epoch" in f.name):
            out.append(f)
    return out


def test_every_count_like_setting_of_every_stage_is_bounded():
    configs = stage_configs()
    assert {"rl", "sft", "distill", "difficulty", "eval_mmmu", "select_ckpt", "synth"} <= set(configs)
    unbounded, seen = [], 0
    for module, cls in configs.items():
        for f in count_like(cls):
            seen += 1
            if f.metadata.get("le") is None and f.metadata.get("lt") is None:
                unbounded.append(f"{module}.{f.name}")
    assert seen >= 40 and not unbounded, unbounded


def _commands() -> list[tuple[list[str], type, dict]]:
    """(command words, Config, fixed settings) of every stage command, one per stage module."""
    out, seen = [], set()
    for group, name, module, options in cli.STAGES:
        if module in seen:
            continue
        seen.add(module)
        cls = importlib.import_module(module).Config
        words = [w for w in (group, *name.split()) if w]
        out.append((words, cls, options.get("fixed") or {}))
    return out


def _argv(words, cls, fixed, flag, value) -> list[str]:
    """The command with every required setting given a plain value and `flag VALUE`."""
    argv, positional = list(words), []
    for f in dataclasses.fields(cls):
        m = config.meta(f)
        if f.name in fixed or m["default"] is not config.REQUIRED:
            continue
        if m.get("argument"):
            positional.append("x")
        else:
            argv += [config.flag_of(f), "x"]
    return [*argv, *positional, flag, value]


HUGE = [str(10**12), "9" * 5000]  # the last: more digits than int() converts


def _members():
    for words, cls, fixed in _commands():
        for f in count_like(cls):
            if f.name in fixed:
                continue
            for huge in HUGE:
                yield pytest.param(words, cls, fixed, f, huge, id=f"{' '.join(words)} {config.flag_of(f)} {len(huge)} digits")


@pytest.mark.parametrize("words, cls, fixed, f, huge", list(_members()))
def test_a_huge_count_is_refused_in_under_a_second(tmp_path, words, cls, fixed, f, huge):
    value = f"{huge},1" if ("list", int) in _base_types(typing.get_type_hints(cls)[f.name]) else huge
    argv = _argv(words, cls, fixed, config.flag_of(f), value)
    importlib.import_module(cls.__module__)  # imports (torch, transformers, the stage) are not what is timed
    run(tmp_path / "store", "--version")
    start = time.perf_counter()
    code, out, err = run(tmp_path / "store", *argv)
    took = time.perf_counter() - start
    one_line(code, out, err, f.name)
    assert took < 1.0, f"{took:.2f} s"
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("text", ["max_steps: 1000000000\n", f"max_steps: {'9' * 5000}\n",
                                  "rl:\n  epochs: 1000000000\n", "curriculum_lengths: [1000000000000, 1]\n"
                                  "curriculum_unit: steps\n", "max_new_tokens: 1e400\n"])
def test_a_huge_count_in_a_recipe_is_refused(tmp_path, text):
    recipe = tmp_path / "rl.yaml"
    recipe.write_text(text)
    start = time.perf_counter()
    code, out, err = run(tmp_path / "store", "rl", "--model", "m", "--data", "d", "--name", "r", "-c", recipe)
    one_line(code, out, err, str(recipe))
    assert time.perf_counter() - start < 5.0  # the first call imports the stage module


def test_a_huge_count_as_an_override_is_refused(tmp_path):
    code, out, err = run(tmp_path / "store", "sft", "--model", "m", "--data", "d", "--name", "r", "--trainable", "llm",
                         f"max_steps={'9' * 5000}")
    one_line(code, out, err, "max_steps")


def _rows(n):
    return [{"id": f"r{i}", "difficulty": "normal" if i % 2 else "hard", "pass_rate": 0.5} for i in range(n)]


@pytest.mark.parametrize("settings", [
    dict(mode="none", unit="steps", lengths=(10**12,)),
    dict(mode="hard", unit="steps", lengths=(10**12, 1)),
    dict(mode="none", unit="epochs", lengths=(10**9,)),
    dict(mode="pass-rate", unit="epochs", lengths=(10**7,)),
    dict(mode="hard", unit="epochs", lengths=(1, 10**7)),
])
def test_the_schedule_size_is_checked_before_it_is_laid_out(settings):
    """What the config bounds let through one by one can still multiply: the plan refuses at once."""
    batching = curriculum.Batching(prompts=2, micro_steps=1, accumulation=1)
    start = time.perf_counter()
    with pytest.raises(curriculum.UserError, match="more than the 10,000,000 a schedule holds"):
        curriculum.plan(_rows(40), curriculum.Settings(**settings), batching, dataset="d@v1", split="train")
    assert time.perf_counter() - start < 0.5


def test_a_schedule_at_a_real_size_is_still_laid_out():
    batching = curriculum.Batching(prompts=2, micro_steps=1, accumulation=1)
    s = curriculum.plan(_rows(40), curriculum.Settings(mode="none", unit="steps", lengths=(5000,)), batching,
                        dataset="d@v1", split="train")
    assert s.total_steps == 5000 and len(s.order) == 10_000
