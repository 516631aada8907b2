"""The ablation recipes (recipes/ablations/*.sh) run end to end at tiny scale, so they cannot rot: a random tiny
InternVL as the start, a few rows and steps, one seed. Nothing learns; the tables' shape is what is checked.
The scripts share one store, as they do for real: what one made (the data, the start's evals, the RL run
of seed 0) the next reuses.

Each `r1v3` command would spend seconds importing torch, transformers and datasets, and a script runs 10 to
20 of them; forked from one process that imported them once (tests/forkserver.py), all six scripts run in
the default suite in a few minutes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from r1v3.cli import main

REPO = Path(__file__).resolve().parents[1]
ABLATIONS = REPO / "recipes" / "ablations"
SCRIPTS = sorted(p.name for p in ABLATIONS.glob("[0-9]-*.sh"))
# the smallest run of every knob: 40 problems (4 held out), 2 GRPO steps of 2 prompts x 2, 8 new tokens
TINY = dict(START="tiny", PROBLEMS="40", EVAL_N="4", SEEDS="0", STEPS="2", SAVE="1", GROUP="2", MAX_NEW="8",
            SFT_STEPS="1", TRANSFER_N="20", RETUNE_N="20", RETUNE_STEPS="2", EVAL_STEPS="1", PATIENCE="1",
            ENT_SAVE="1", PROBE_N="4", MIN_POSITIONS="1", BUDGETS="4 8")
# each script's table: its comparisons, one row each (seeds share a row)
ROWS = {"1": 6, "2": 3, "3": 2, "4": 2, "5": 3, "6": 6}
VERDICTS = {"reproduced", "reversed", "within noise", "not run", "higher", "lower"}
ONE_SEED = (" in one seed (a claim needs two)", " in one run (a claim needs two)")


def verdict_of(cell: str) -> str:
    """The verdict without its one-seed qualifier."""
    for tail in ONE_SEED:
        cell = cell.removesuffix(tail)
    return cell


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablations") / "store"
    assert main(["--store", str(root), "init", "tiny", "--name", "tiny"]) == 0
    return root


def run_script(name: str, store: Path, r1v3: dict, **env) -> subprocess.CompletedProcess:
    env = dict(os.environ, R1V3_STORE=str(store), PYTHON=sys.executable, HF_HUB_OFFLINE="1") | r1v3 | TINY | env
    return subprocess.run(["bash", str(ABLATIONS / name)], env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("script", SCRIPTS)
def test_ablation_script_prints_its_table(script, tiny_store, forked_r1v3):
    proc = run_script(script, tiny_store, forked_r1v3)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    header = next(i for i, line in enumerate(out.splitlines()) if line.startswith("| finding | comparison | paper |"))
    table = []
    for line in out.splitlines()[header + 2:]:
        if not line.startswith("| "):
            break
        table.append([c.strip() for c in line.strip().strip("|").split("|")])
    finding = script.split("-")[0]
    assert len(table) == ROWS[finding], out
    for cells in table:
        assert len(cells) == 7, cells
        assert cells[0] == finding and cells[2] and verdict_of(cells[6]) in VERDICTS, cells
        if "->" in cells[3] and "(n=" in cells[3]:  # a paired comparison ran: before -> after, difference, interval, n
            assert cells[3].startswith("s0: ") or (finding == "6" and "(start model)" in cells[1]), cells
            assert "->" in cells[3] and "[" in cells[3] and "(n=" in cells[3], cells
            assert cells[4] != "n/a" and cells[5] != "n/a", cells  # chance and blind beside it
            assert cells[6] != "not run", cells
        else:  # finding 5's Spearman row
            assert finding == "5" and ("rho" in cells[3] or cells[6] == "not run"), cells
    if finding in ("3", "4"):
        assert "| run | trained | steps |" in out
    if finding == "5":
        assert "| step | critical positions" in out and "| entropy measure |" in out
    if finding == "6":
        assert (tiny_store / "ablations" / "6" / "budget.png").stat().st_size > 1000


def test_thinking_budget_on_the_start_alone_trains_nothing(tmp_path, forked_r1v3):
    store = tmp_path / "store"
    assert main(["--store", str(store), "init", "tiny", "--name", "tiny"]) == 0
    bad = run_script("6-thinking-budget.sh", store, forked_r1v3, MODELS="start strat")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: MODELS holds 'strat': use start, rl or both"
    proc = run_script("6-thinking-budget.sh", store, forked_r1v3, MODELS="start")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 6 |")]
    assert len(rows) == 3 and all("(start model)" in row for row in rows), proc.stdout
    assert "rl-hard-s0" not in proc.stdout  # no GRPO run, not even a reused one


def test_a_missing_start_is_one_line(tmp_path, forked_r1v3):
    proc = run_script("4-curriculum.sh", tmp_path / "empty", forked_r1v3, START="no-such-model")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: no model no-such-model in {tmp_path / 'empty'}: run recipes/smol-signal.sh first, "
        "or set START to a cold-start model"]


def load_tables():
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation_tables", ABLATIONS / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verdict_needs_every_seed_on_one_side():
    verdict = load_tables().verdict
    assert verdict("+", [(0.01, 0.1), (0.02, 0.2)]) == "reproduced"
    assert verdict("-", [(0.01, 0.1), (0.02, 0.2)]) == "reversed"
    assert verdict("+", [(0.01, 0.1), (-0.02, 0.2)]) == "within noise"  # one seed inside noise
    assert verdict("-", [(-0.2, -0.01), (-0.1, -0.02)]) == "reproduced"
    assert verdict("=", [(-0.1, 0.1)], seeded=False) == "reproduced"
    assert verdict("=", [(-0.2, -0.01)], seeded=False) == "reversed"
    assert verdict("?", [(0.01, 0.1)], seeded=False) == "higher" and verdict("?", [(-0.1, 0.1)]) == "within noise"
    assert verdict("+", []) == "not run"
    # one seed of a trained model is never a claim; one fixed model's decoding modes have no seed to vary
    assert verdict("+", [(0.01, 0.1)]) == "reproduced in one seed (a claim needs two)"
    assert verdict("+", [(-0.1, 0.1)]) == "within noise"
    assert verdict("-", [(-0.2, -0.01)], seeded=False) == "reproduced"
    assert verdict("+", [(0.01, 0.1), (0.02, 0.2)], distinct=1).endswith("in one seed (a claim needs two)")  # 0 twice


def test_rl_flags_are_refused_since_the_runs_are_shared_by_name(tmp_path, forked_r1v3):
    proc = run_script("3-rl-trainable.sh", tmp_path / "empty", forked_r1v3, RL_FLAGS="--loss-type dr_grpo")
    assert proc.returncode == 2 and proc.stderr.startswith("error: RL_FLAGS and DROP are") and proc.stderr.count("\n") == 1
