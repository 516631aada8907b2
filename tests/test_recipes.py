"""The shell recipes run end to end (scaled down): they chain real stages, so they rot silently otherwise."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # each builds the smol model and runs every stage: minutes


def run_recipe(name: str, store: Path, **env) -> str:
    env = dict(os.environ, R1V3_STORE=str(store), R1V3=f"{sys.executable} -m r1v3.cli", PYTHON=sys.executable,
               HF_HUB_OFFLINE="1", **env)
    proc = subprocess.run(["bash", str(REPO / "recipes" / name)], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_demo(tmp_path):
    out = run_recipe("demo.sh", tmp_path / "store")
    assert "smol-shapes-base" in out


def test_smol_signal_scaled_down(tmp_path):
    out = run_recipe("smol-signal.sh", tmp_path / "store", N="40", ALIGN_STEPS="2", SFT_STEPS="2")
    table = [line for line in out.splitlines() if line.startswith("| ")]
    labels = [line.split("|")[1].strip() for line in table]
    assert {"chance", "untrained smol", "aligned + SFT on problems", "the same, images blanked", "total"} <= set(labels)
