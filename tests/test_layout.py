"""The layout the README describes: stages meet only through artifacts, so no stage imports another,
and every stage module has the contract the CLI relies on."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from r1v3 import cli

STAGES_DIR = Path(__file__).resolve().parents[1] / "stages"


@pytest.mark.parametrize("path", sorted(STAGES_DIR.glob("*.py")), ids=lambda p: p.name)
def test_no_stage_imports_another(path):
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        assert not any(n == "stages" or n.startswith("stages.") for n in names), f"{path.name}:{node.lineno}"


@pytest.mark.parametrize("module_name", sorted({m for _, _, m, _ in cli.STAGES}))
def test_every_stage_has_a_config_a_run_and_a_report(module_name):
    module = importlib.import_module(module_name)
    assert hasattr(module, "Config") and callable(module.run) and callable(module.report)


def test_the_cli_holds_no_stage_printer():
    """What a stage prints lives in its module (`report`), not in the CLI."""
    source = Path(cli.__file__).read_text()
    assert "def _report" not in source and "print_report" not in source


def _commands():
    return [(group, name) for group, name, _, _ in cli.STAGES]


@pytest.mark.parametrize("group, name", _commands(), ids=lambda v: v or "-")
def test_every_stage_command_builds_its_help(group, name, capsys):
    """The stage commands are built when invoked, so `r1v3 --help` alone cannot show a broken one."""
    words = [w for w in (group, *name.split()) if w]
    assert cli.main([*words, "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: r1v3 " + " ".join(words) in " ".join(out.split())
