"""Crash-safety scenarios: run a writing stage in a real process, SIGKILL it at a chosen point,
check the store, re-run (with --resume where the stage has it) and compare with an uninterrupted run.

Used by test_crash.py (pytest) and crash_table.py (prints the stage x kill point table).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from r1v3.artifacts import Store
from r1v3.cli import main

KILLER = Path(__file__).with_name("killer.py")
REPO = Path(__file__).resolve().parents[2]

# kill points shared by every stage: inside Store._commit
FSYNC = ("publish: fsync of files", ["--kill", "r1v3.artifacts:_fsync_path@1"])
RENAME = ("publish: before rename", ["--kill", "os:rename@1~.staging"])
AFTER_RENAME = ("publish: after rename", ["--kill", "os:rename@1+after~.staging"])


@dataclass
class Stage:
    label: str
    name: str  # the artifact it publishes
    argv: list  # r1v3 arguments; "{inputs}" in an item is replaced by the inputs directory
    points: list  # (label, killer options or a list of them for successive kills, in CI?)
    resumable: bool = False
    needs_store: bool = False  # starts from the prepared store (a model and a dataset in it)
    extra: dict = field(default_factory=dict)


EVAL_ARGS = ["eval", "mmmu", "--model", "m", "--data", "mm", "--name", "ev", "--max-new-tokens", "8",
             "--temperature", "0", "--batch-size", "4"]

STAGES = {
    "data synth": Stage(
        "data synth", "ds", ["data", "synth", "--name", "ds", "--n", "60", "--seed", "3"],
        [
            ("loading inputs (drawing problems)", ["--kill", "PIL.ImageDraw:Draw@30"], False),
            ("mid-write (1 of 3 parquet files)", ["--kill", "pyarrow.parquet:write_table@2"], True),
            (*FSYNC, False), (*RENAME, True), (*AFTER_RENAME, False),
        ],
    ),
    "data import": Stage(
        "data import", "imp", ["data", "import", "{inputs}/rows/rows.jsonl", "--name", "imp"],
        [
            ("loading inputs (row 5 of 24)", ["--kill", "r1v3.data:normalize_row@5"], False),
            ("mid-write (parquet written, not renamed)", ["--kill", "pyarrow.parquet:write_table+after"], True),
            (*FSYNC, False), (*RENAME, True), (*AFTER_RENAME, False),
        ],
    ),
    "data mmmu": Stage(
        "data mmmu", "mmv", ["data", "mmmu", "--path", "{inputs}/mmmu", "--name", "mmv"],
        [
            ("loading inputs (item 10 of 30)", ["--kill", "r1v3.mmmu:_hub_row@10"], False),
            ("mid-write (parquet written, not renamed)", ["--kill", "pyarrow.parquet:write_table+after"], True),
            (*FSYNC, False), (*RENAME, True), (*AFTER_RENAME, False),
        ],
    ),
    "init tiny": Stage(
        "init tiny", "tiny", ["init", "tiny", "--name", "tiny", "--family", "internvl", "--seed", "2"],
        [
            ("model built, nothing saved", ["--kill", "r1v3.models:build_tiny+after"], False),
            ("checkpoint save (weights written, processor not)",
             ["--kill", "transformers:ProcessorMixin.save_pretrained"], True),
            (*FSYNC, False), (*RENAME, False), (*AFTER_RENAME, False),
        ],
    ),
    "import-model": Stage(
        "import-model", "hf", ["import-model", "{inputs}/hfmodel", "--name", "hf"],
        [
            ("model directory inspected", ["--kill", "stages.import_model:inspect_dir+after"], False),
            ("mid-copy (file 3)", ["--kill", "stages.import_model:_link_or_copy@3"], True),
            (*FSYNC, False), (*RENAME, False), (*AFTER_RENAME, False),
        ],
    ),
    "eval mmmu": Stage(
        "eval mmmu", "ev", EVAL_ARGS,
        [
            ("loading inputs (dataset read)", ["--kill", "r1v3.data:read_split+after"], False),
            ("mid-generation (item 10 of 30)", ["--kill", "r1v3.mmmu:judge@10"], True),
            ("torn progress write (record 12)", ["--torn", "12"], True),
            ("mid-generation, killed twice", [["--kill", "r1v3.mmmu:judge@6"]] * 2, False),
            ("resume killed while saving its state",
             [["--kill", "r1v3.mmmu:judge@10"], ["--kill-open", "state.json@1"]], False),
            ("publish: draft half written", ["--kill", "stages.eval_mmmu:chart"], False),
            (*FSYNC, False), (*RENAME, True), (*AFTER_RENAME, False),
        ],
        resumable=True, needs_store=True,
    ),
}


def points(ci_only: bool = False) -> list[tuple[str, str]]:
    return [(s, p[0]) for s, stage in STAGES.items() for p in stage.points if p[2] or not ci_only]


# ---- inputs ---------------------------------------------------------------------------------


def prepare_inputs(base: Path) -> Path:
    """Everything the stages read: a jsonl dataset, an MMMU copy, a plain HF model directory, and a
    store holding model `m` and dataset `mm` (for eval)."""
    from PIL import Image

    from r1v3 import mmmu, models

    base.mkdir(parents=True, exist_ok=True)
    rows = base / "rows"
    rows.mkdir()
    with open(rows / "rows.jsonl", "w") as f:
        for i in range(24):
            Image.new("RGB", (12, 12), (10 * i, 255 - 10 * i, 80)).save(rows / f"{i}.png")
            f.write(json.dumps({"id": f"r{i}", "images": [f"{i}.png"], "question": f"What is {i} + 1?",
                                "options": [], "answer": str(i + 1), "question_type": "open"}) + "\n")
    mmmu.write_sample_copy(base / "mmmu", per_subject=1, seed=0)
    model, processor = models.build_tiny("internvl", seed=1)
    models.save_model(model, processor, base / "hfmodel")
    quiet(["--store", str(base / "store"), "init", "tiny", "--name", "m", "--family", "internvl"])
    quiet(["--store", str(base / "store"), "data", "mmmu", "--path", str(base / "mmmu"), "--name", "mm"])
    return base


def quiet(argv: list[str]) -> int:
    """`r1v3 ARGV` in this process, output swallowed; fails loudly on a non-zero exit."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    if code != 0:
        raise AssertionError(f"r1v3 {' '.join(argv)} exited {code}: {err.getvalue()[-2000:]}")
    return code


def _argv(stage: Stage, inputs: Path) -> list[str]:
    return [a.replace("{inputs}", str(inputs)) for a in stage.argv]


def _fresh_store(stage: Stage, inputs: Path, root: Path) -> Store:
    if stage.needs_store:
        shutil.copytree(inputs / "store", root)
    return Store(root)


def reference(stage_key: str, inputs: Path, workdir: Path, _cache: dict = {}) -> dict:
    """The uninterrupted run's file list (name -> sha256, size), computed once per process."""
    key = (stage_key, str(inputs))
    if key not in _cache:
        stage = STAGES[stage_key]
        store = _fresh_store(stage, inputs, workdir / f"reference-{stage.name}")
        quiet(["--store", str(store.root), *_argv(stage, inputs)])
        _cache[key] = store.resolve(stage.name, verify=True).manifest["files"]
    return _cache[key]


# ---- one scenario ---------------------------------------------------------------------------


def _kill_run(stage: Stage, options: list, inputs: Path, store: Store, resume: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, R1V3_STORE=str(store.root), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PYTHONPATH=str(REPO))
    argv = _argv(stage, inputs) + (["--resume"] if resume else [])
    return subprocess.run([sys.executable, str(KILLER), *options, "--", *argv], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def _check_store_after_kill(stage: Stage, store: Store, published_ok: bool) -> list[str]:
    """What is visible must be complete: every listed artifact verifies; the killed one is absent
    unless the kill came after its rename."""
    notes = []
    for art in store.list():
        problems = store.check(art, full=True)
        assert not problems, f"{art.ref} is visible but broken after the kill: {problems}"
        quiet(["--store", str(store.root), "artifacts", "verify", art.ref])
    quiet(["--store", str(store.root), "artifacts", "ls"])
    versions = store.versions(stage.name)
    leftovers = [p.name for p in (store.root / stage.name).glob("v*")] if (store.root / stage.name).exists() else []
    if published_ok:
        assert versions == [1], f"a kill after the rename should leave {stage.name}@v1 complete, found {versions}"
        notes.append("published before the kill, verifies")
    else:
        assert versions == [] and leftovers == [], f"{stage.name} is visible after a kill before publishing: {leftovers}"
    return notes


def run_scenario(stage_key: str, point_label: str, inputs: Path, workdir: Path) -> dict:
    """Kill, check, re-run, compare. Raises AssertionError saying what broke; returns details."""
    stage = STAGES[stage_key]
    _, options, _ = next(p for p in stage.points if p[0] == point_label)
    ref = reference(stage_key, inputs, workdir)
    root = workdir / ("crash-" + re.sub(r"[^A-Za-z0-9]+", "-", f"{stage.name}-{point_label}"))
    store = _fresh_store(stage, inputs, root)
    start = time.perf_counter()
    details = {"stage": stage_key, "point": point_label}

    runs = options if isinstance(options[0], list) else [options]  # several kills in a row
    for k, opts in enumerate(runs):
        proc = _kill_run(stage, opts, inputs, store, resume=stage.resumable and k > 0)
        assert proc.returncode == -9, (
            f"kill point not reached (exit {proc.returncode}): {proc.stderr[-1500:]}"
        )
    after_rename = point_label == AFTER_RENAME[0]
    details["notes"] = _check_store_after_kill(stage, store, after_rename)
    drafts = sorted(p.name for p in (store.root / ".staging").iterdir()) if (store.root / ".staging").exists() else []
    details["leftover_drafts"] = len(drafts)
    # the dead writer's drafts are recognisable as abandoned (its lock died with it)
    assert sorted(p.name for p in store.abandoned_drafts(min_age=0)) == drafts

    # re-run: the leftovers must not be in the way
    quiet(["--store", str(store.root), *_argv(stage, inputs), *(["--resume"] if stage.resumable else [])])
    art = store.resolve(stage.name, verify=True)
    assert art.version == (2 if after_rename else 1), f"re-run published {art.ref}"
    quiet(["--store", str(store.root), "artifacts", "verify", art.ref])
    if art.manifest["files"] != ref:
        diff = sorted(k for k in set(ref) | set(art.manifest["files"]) if ref.get(k) != art.manifest["files"].get(k))
        raise AssertionError(f"re-run differs from the uninterrupted run in {diff}")
    if stage.resumable:
        details["items_resumed"] = art.metrics.get("items_resumed")
        if "generation" in point_label or "torn" in point_label or "resume" in point_label:
            assert art.metrics["items_resumed"] > 0, "resume redid every item"
        assert not list((store.root / ".work").rglob("*.jsonl")), "work files left after publishing"
    removed = store.clean_staging(min_age=0)
    assert len(removed) == len(drafts) and not any((store.root / ".staging").iterdir())
    details["seconds"] = round(time.perf_counter() - start, 1)
    return details
