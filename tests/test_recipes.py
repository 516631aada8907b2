"""The shell recipes run end to end (scaled down): they chain real stages, so they rot silently otherwise."""

import dataclasses
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from r1v3 import config
from r1v3.artifacts import Store
from r1v3.cli import STAGES, main

REPO = Path(__file__).resolve().parents[1]
slow = pytest.mark.slow  # the smol ones build the smol model and run every stage: minutes


def run_recipe(name: str, store: Path, **env) -> str:
    """Run recipes/NAME on STORE; env may set R1V3 (e.g. the forked_r1v3 fixture's), else `python -m r1v3.cli`."""
    env = dict(os.environ, R1V3_STORE=str(store), R1V3=f"{sys.executable} -m r1v3.cli", PYTHON=sys.executable,
               HF_HUB_OFFLINE="1") | env
    proc = subprocess.run(["bash", str(REPO / "recipes" / name)], env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@slow
def test_demo(tmp_path):
    out = run_recipe("demo.sh", tmp_path / "store")
    assert "smol-shapes-base" in out


@slow
def test_smol_signal_scaled_down(tmp_path):
    out = run_recipe("smol-signal.sh", tmp_path / "store", N="40", ALIGN_STEPS="2", SFT_STEPS="2")
    table = [line for line in out.splitlines() if line.startswith("| ")]
    labels = [line.split("|")[1].strip() for line in table]
    assert {"chance", "untrained smol", "aligned + SFT on problems", "the same, images blanked", "total"} <= set(labels)


def test_rl_signal_scaled_down(tmp_path, forked_r1v3):
    """The RL-signal script end to end on a random tiny model: a sweep arm's knobs (TAG, PROMPTS, RL_FLAGS)
    reach the runs, and the comparison names every arm."""
    store = tmp_path / "store"
    assert main(["--store", str(store), "init", "tiny", "--name", "tiny"]) == 0  # in process: no second torch import
    env = dict(os.environ, R1V3_STORE=str(store), PYTHON=sys.executable, ARMS="none cion") | forked_r1v3
    bad = subprocess.run(["bash", str(REPO / "recipes/smol-rl-signal.sh")], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr == "error: ARMS holds 'cion': use none, hard or coin\n"
    out = run_recipe("smol-rl-signal.sh", store, START="tiny", PROBLEMS="40", EVAL_N="4", SEEDS="0",
                     ARMS="none coin", STEPS="2", SAVE="1", GROUP="2", PROMPTS="1", MAX_NEW="8", TAG="dr",
                     RL_FLAGS="--loss-type dr_grpo --scale-rewards none", **forked_r1v3)
    assert "rl-none-s0-dr-eval" in out and "rl-coin-s0-dr-eval" in out
    manifest = json.loads(next((store / "rl-none-s0-dr").glob("v*/manifest.json")).read_text())
    settings = manifest["config"]
    assert (settings["loss_type"], settings["scale_rewards"]) == ("dr_grpo", "none")
    assert (settings["num_generations"], settings["batch_size"]) == (2, 2)  # PROMPTS=1: one prompt a step
    coin = json.loads(next((store / "rl-coin-s0-dr").glob("v*/manifest.json")).read_text())["config"]
    assert coin["accuracy_reward"] == "coin" and coin["curriculum"] == "none"


def recorded(store: Path, times: str) -> list[tuple[str, list[str]]]:
    """(label, artifact names) of each stage a recipe ran, from its times file."""
    lines = (store / times).read_text().splitlines()
    return [(line.split("\t")[0], line.split("\t")[1].split(",")) for line in lines]


def test_tiny_recipe_every_stage_then_a_rerun_reuses_all(tmp_path, forked_r1v3):
    store_dir = tmp_path / "store"
    start = time.perf_counter()
    out = run_recipe("tiny/run.sh", store_dir, **forked_r1v3)
    first = time.perf_counter() - start
    stages = recorded(store_dir, "tiny-times.tsv")
    labels = [label for label, _ in stages]
    # the random teacher keeps no trace: then the script says the cold start trains on synthetic ones
    assert "distill (teacher tiny-llm)" in labels or "the tiny teacher kept no trace" in out
    for expected in ("init tiny", "init tiny-llm", "compose", "data synth", "sft connector-align", "sft cold-start",
                     "difficulty",
                     "rl --curriculum hard", "rl export (final step)", "select-ckpt", "sft connector-retune",
                     "eval tiny-retuned", "eval tiny-retuned, blind"):
        assert expected in labels, (expected, labels)
    store = Store(store_dir)
    names = [n for _, ns in stages for n in ns]
    for name in names:  # each stage published its artifact, whole
        art, problems = store.verify(name)
        assert art is not None and not problems, (name, problems)
        assert art.version == 1
    assert store.resolve("tiny-aligned").manifest["inputs"][0]["ref"] == "tiny-composed@v1"
    assert store.resolve("tiny-rl").metrics["curriculum"] == "hard"
    assert {c["phase"] for c in store.resolve("tiny-rl").metrics["checkpoints"]} == {"normal", "hard"}
    assert store.resolve("tiny-retuned").manifest["inputs"][0]["ref"] == "tiny-selected-model@v1"
    assert store.resolve("eval-tiny-retuned-blind").manifest["config"]["blank_images"] is True
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert any(line.startswith("| chance |") for line in table) and any("(images blanked)" in line for line in table)
    assert (store_dir / "report-tiny.html").stat().st_size > 1000
    assert all(store.resolve(n).manifest["seconds"] >= 0 for n in names)  # a small synth takes 0.0 s
    made_total = next(line for line in table if line.startswith("| total |")).split("|")[4]
    # a second run: every stage up to date, nothing published again; the table still shows what each cost
    out = run_recipe("tiny/run.sh", store_dir, **forked_r1v3)
    assert out.count("(reused)") == len(names), out
    total = next(line for line in out.splitlines() if line.startswith("| total |")).split("|")
    assert total[4] == made_total, (total, made_total)
    assert "published" not in out
    assert all(store.versions(n) == [1] for n in names)
    print(f"tiny recipe: {first:.0f} s")


@slow
def test_tiny_recipe_killed_midway_finishes_on_rerun(tmp_path):
    """Kill the recipe while RL trains (its process group: the stage too), run it again: it finishes,
    reusing what was published and resuming RL, and every artifact verifies."""
    store_dir = tmp_path / "store"
    env = dict(os.environ, R1V3_STORE=str(store_dir), R1V3=f"{sys.executable} -m r1v3.cli", PYTHON=sys.executable,
               HF_HUB_OFFLINE="1")
    proc = subprocess.Popen(["bash", str(REPO / "recipes/tiny/run.sh")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    for line in proc.stdout:
        if line.startswith("== rl --curriculum hard"):
            time.sleep(15)
            break
    os.killpg(proc.pid, 9)
    proc.wait()
    out = run_recipe("tiny/run.sh", store_dir)
    assert "up to date: tiny-cold@v1 (reused)" in out
    store = Store(store_dir)
    for _, names in recorded(store_dir, "tiny-times.tsv"):
        for name in names:
            art, problems = store.verify(name)
            assert art is not None and not problems, (name, problems)


@slow
def test_smol_recipe_scaled_down(tmp_path):
    out = run_recipe("smol/run.sh", tmp_path / "store", N="40", ALIGN_STEPS="2", DISTILL_N="2", SFT_STEPS="2",
                     RL_NORMAL="1", RL_HARD="1", RETUNE_STEPS="2")
    table = [line for line in out.splitlines() if line.startswith("| ")]
    labels = [line.split("|")[1].strip() for line in table]
    # the 135M teacher may keep no trace of 4 outputs: then the script says it trains on synthetic ones
    assert "distill (teacher smol)" in labels or "the smol teacher kept no trace" in out
    for expected in ("init smol", "sft connector-align", "sft cold-start", "difficulty",
                     "rl --curriculum hard", "select-ckpt", "sft connector-retune", "eval smol-retuned, blind",
                     "total", "chance", "smol-retuned (images blanked)"):
        assert expected in labels, (expected, labels)


def stage_classes() -> dict:
    """Recipe section name -> the stage's Config, for every stage command of the CLI."""
    out = {}
    for _, _, module, _ in STAGES:
        cls = importlib.import_module(module).Config
        for section in (cls.STAGE, *cls.SECTIONS):
            out[section] = cls
    return out


def required(cls) -> dict:
    """Stand-in values of the settings a recipe leaves to the command line (names, references)."""
    out = {}
    for f in dataclasses.fields(cls):
        if config.meta(f)["default"] is config.REQUIRED or f.name in ("model", "data", "name"):
            out[f.name] = "smol" if f.name == "teacher" else "x"
    if cls.STAGE == "sft":  # the parts trained come from a preset on the command line
        out = {k: v for k, v in out.items() if k != "trainable"} | {"preset": "cold-start"}
    return out | ({"model": "tiny"} if cls.STAGE == "init" else {})


@pytest.mark.parametrize("recipe", ["tiny", "smol", "r1v3-38b"])
def test_recipe_sections_are_valid_settings(recipe):
    """Each section names a stage and validates against its Config (a typo in a section name would make
    that stage read the whole file); the recipe's script passes this file to every stage it configures."""
    path = REPO / "recipes" / recipe / "recipe.yaml"
    classes = stage_classes()
    sections = config.read_yaml(path)
    assert sections
    for name, values in sections.items():
        assert name in classes, f"{path}: section {name!r} is no stage"
        assert isinstance(values, dict)
        stand_ins = {k: v for k, v in required(classes[name]).items() if k not in values}
        cfg = config.load(classes[name], stage=name, path=path, options=stand_ins)
        for key, value in values.items():
            assert getattr(cfg, key) is not None, (name, key)
    script = (REPO / "recipes" / recipe / "run.sh").read_text()
    assert f"recipes/{recipe}/recipe.yaml" in script
    assert subprocess.run(["bash", "-n", str(REPO / "recipes" / recipe / "run.sh")]).returncode == 0


def test_r1v3_38b_paper_numbers_and_launch():
    from stages import evaluate, rl, sft

    base = REPO / "recipes" / "r1v3-38b"
    ev = config.load(evaluate.Config, stage="eval-mmmu", path=base / "recipe.yaml", options=required(evaluate.Config))
    assert (ev.style, ev.max_new_tokens, ev.temperature, ev.samples, ev.split) == \
        ("reasoning", 16384, 1.0, 5, "validation")
    script = (base / "run.sh").read_text()
    # every per-phase file the script passes exists and loads as that stage's settings
    for phase in ("connector-align", "cold-start", "connector-retune"):
        assert f"recipes/sft/{phase}.yaml" in script
        cfg = config.load(sft.Config, stage="sft", path=REPO / f"recipes/sft/{phase}.yaml",
                          options={"model": "m", "data": "d", "name": "n"},
                          overrides=["early_stopping_patience=0", "eval_split=null"] if phase == "connector-retune" else [])
        assert cfg.preset == phase
    assert "recipes/rl/r1v3-38b.yaml" in script
    grpo = config.load(rl.Config, stage="rl", path=REPO / "recipes/rl/r1v3-38b.yaml",
                       options={"model": "m", "data": "d", "name": "n"})
    for nodes in (1, 2, 4):  # 1024 completions per step on any number of 8-GPU nodes
        assert grpo.batch_size * 8 * nodes * (1024 // grpo.batch_size // (8 * nodes)) == 1024
    assert "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B" in script and "--teacher \"$TEACHER\"" in script
    multi = yaml.safe_load((base / "zero3-multinode.yaml").read_text())
    single = yaml.safe_load((REPO / "recipes/accelerate/zero3.yaml").read_text())
    assert multi["num_processes"] == 8 * multi["num_machines"] and single["num_processes"] == 8
    assert multi["deepspeed_config"]["zero_stage"] == single["deepspeed_config"]["zero_stage"] == 3
    assert multi["distributed_type"] == single["distributed_type"] == "DEEPSPEED"
