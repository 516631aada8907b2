"""Crash-safety scenarios: run a writing stage in a real process, SIGKILL it at a chosen point,
check the store, re-run (with --resume where the stage has it) and compare with an uninterrupted run.

A kill point is (label, killer options, in CI?) or (label, options, in CI?, expectations): the
expectations say what the kill must have left and what the re-run must report, so a kill that
lands somewhere else than its label says fails instead of passing for the wrong reason. Options
may be a list of option lists (successive killed runs; later ones get --resume unless their
options start with "--fresh").

Used by test_crash.py (pytest) and crash_table.py (prints the stage x kill point table).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
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
FSYNC = ("publish: fsync of files", ["--kill", "r1v3.artifacts:fsync_path@1~.staging"])
RENAME = ("publish: before rename", ["--kill", "os:rename@1~.staging"])
AFTER_RENAME = ("publish: after rename", ["--kill", "os:rename@1+after~.staging"])


@dataclass
class Stage:
    label: str
    name: str  # the artifact it publishes
    argv: list  # r1v3 arguments; "{inputs}" in an item is replaced by the inputs directory
    points: list  # (label, killer options or a list of them for successive kills, in CI?[, expectations])
    resumable: bool = False
    needs_store: bool = False  # starts from the prepared store (models and datasets in it)
    # files whose bytes legitimately differ between two uninterrupted runs: compared after
    # normalize(bytes) instead (sft: the wall-clock fields of log_history.json)
    volatile: dict = field(default_factory=dict)
    # manifest metrics that must also equal the uninterrupted run's
    same_metrics: tuple = ()
    resume_metric: str | None = None  # what the re-run reports about resuming (eval: items_resumed)
    after_kill: object = None  # callable(stage, store) -> (notes, facts) checking the work directory
    # callable(facts of after_kill, re-run's artifact, store) -> notes: what the re-run redid must be
    # exactly what the kill left undone (nothing asked twice, nothing lost)
    rerun_check: object = None


EVAL_ARGS = ["eval", "mmmu", "--model", "m", "--data", "mm", "--name", "ev", "--max-new-tokens", "8",
             "--temperature", "0", "--batch-size", "4"]

STAGES = {
    "data synth": Stage(
        "data synth", "ds", ["data", "synth", "--name", "ds", "--n", "60", "--seed", "3"],
        [
            ("loading inputs (drawing problems)", ["--kill", "PIL.ImageDraw:Draw@30"], False),
            ("mid-write (1 of 3 parquet files)", ["--kill", "pyarrow.parquet:ParquetWriter.write_table@2"], True),
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
             [["--kill", "r1v3.mmmu:judge@10"], ["--kill-open", "r1v3-run.json@1"]], False),
            ("publish: draft half written", ["--kill", "stages.evaluate:chart"], False),
            (*FSYNC, False), (*RENAME, True), (*AFTER_RENAME, False),
        ],
        resumable=True, needs_store=True, resume_metric="items_resumed",
    ),
}


def _without_wall_clock(blob: bytes) -> bytes:
    """log_history.json minus what a clock decides (train_runtime, *_per_second) and the closing
    summary's train_loss, which transformers reports for the last train() call only (after a resume:
    the resumed steps' mean; 0.0 if nothing was left to train). Every per-step entry must match."""
    log = json.loads(blob)
    keep = [{k: v for k, v in h.items() if not (k.endswith("_runtime") or k.endswith("_per_second"))
             and not (k == "train_loss" and "total_flos" in h)} for h in log]
    return json.dumps(keep, sort_keys=True).encode()


# a tiny InternVL on 8 chat rows, 2 per step: 6 optimizer steps, a checkpoint every 2 (kept: the last 2)
SFT_ARGS = ["sft", "--model", "m", "--data", "sftd", "--name", "ft", "--trainable", "connector+llm", "--lr", "5e-3",
            "--batch-size", "2", "--max-steps", "6", "--save-steps", "2"]
STEP = "transformers:Trainer.training_step"  # N-th call: step N's forward+backward (+after: before its optimizer step)
CKPT_STATE = "transformers.trainer_callback:TrainerState.save_to_json"  # the last file of a checkpoint
CKPT_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json")


def _sft_after_kill(stage: Stage, store: Store) -> tuple[list[str], dict]:
    """What --resume will see: the newest checkpoint it accepts must hold everything a resume reads."""
    from r1v3 import training

    work = store.root / ".work" / stage.name / "sft"
    if not work.exists():
        aside = list(work.parent.glob("sft.discarded-*")) if work.parent.exists() else []
        note = "work directory discarded (a half-deleted copy set aside, ignored)" if aside else (
            "no checkpoints" if work.parent.exists() else "no work directory (the store was not touched)")
        return [note], {"work": work.parent.exists(), "resume_from": None}
    complete = training.complete_checkpoints(work)
    steps = [int(p.name.split("-")[1]) for p in complete]
    skipped = sorted(int(p.name.split("-")[1]) for p in work.glob("checkpoint-*") if p not in complete)
    if complete:
        newest = complete[-1]
        missing = [f for f in CKPT_FILES if not (newest / f).is_file()]
        assert not missing, f"{newest.name} is taken as complete but lacks {missing}"
        state = json.loads((newest / "trainer_state.json").read_text())
        assert state["global_step"] == steps[-1], f"{newest.name} holds step {state['global_step']}"
    notes = [f"checkpoints {steps or 'none'} complete" + (f", {skipped} incomplete (skipped)" if skipped else "")]
    return notes, {"work": True, "resume_from": steps[-1] if steps else None}


STAGES["sft"] = Stage(
    "sft --resume", "ft", SFT_ARGS,
    [
        ("loading inputs (measuring row 5 of 8)", ["--kill", "trl.data_utils:prepare_multimodal_messages@5"], False,
         {"work": False, "resume_from": None}),
        ("run key write cut short (r1v3-run.json)", ["--kill-open", "r1v3-run.json@1"], False, {"resume_from": None}),
        ("mid-step 2, no checkpoint yet", ["--kill", f"{STEP}@2+after"], False, {"resume_from": None}),
        ("mid-step 3, after checkpoint-2", ["--kill", f"{STEP}@3+after"], True, {"resume_from": 2}),
        ("checkpoint-4 save begun, nothing written", ["--kill", "transformers:Trainer._save_checkpoint@2"], False,
         {"resume_from": 2}),
        ("checkpoint-4 save: weights, optimizer, RNG written, trainer_state.json not",
         ["--kill", f"{CKPT_STATE}~checkpoint-4/trainer_state.json"], True, {"resume_from": 2}),
        ("checkpoint-4 save: trainer_state.json torn", ["--kill-open", "checkpoint-4/trainer_state.json@1"], False,
         {"resume_from": 2}),
        ("checkpoint rotation: checkpoint-2 half deleted", ["--kill", "os:unlink@1+after~model.safetensors"], False,
         {"resume_from": 6}),
        ("resume killed in its checkpoint-4 save",
         [["--kill", f"{STEP}@3+after"], ["--kill", f"{CKPT_STATE}~checkpoint-4/trainer_state.json"]], False,
         {"resume_from": 2}),
        ("resume killed while saving its run key",
         [["--kill", f"{STEP}@3+after"], ["--kill-open", "r1v3-run.json@1"]], False, {"resume_from": 2}),
        ("starting over killed while discarding the old checkpoints",
         [["--kill", f"{STEP}@3+after"], ["--fresh", "--kill", "os:unlink@1+after~scheduler.pt"]], False,
         {"resume_from": None}),
        ("publish: draft half written (weights in, loss.png not)", ["--kill", "r1v3.training:plot_loss"], True,
         {"resume_from": 6}),
        (*FSYNC, False, {"resume_from": 6}), (*RENAME, False, {"resume_from": 6}),
        (*AFTER_RENAME, False, {"resume_from": 6}),
        ("published, killed while removing the checkpoints", ["--kill", "os:unlink@2+after~model.safetensors"], False,
         {"published": True, "resume_from": None}),
    ],
    resumable=True, needs_store=True, volatile={"log_history.json": _without_wall_clock},
    same_metrics=("steps", "loss_curve", "tokens_seen", "final_loss"), resume_metric="resumed_from_step",
    after_kill=_sft_after_kill,
)

# early stopping (connector-retune's validation loss): training ends before --max-steps, at the step
# whose checkpoint records should_training_stop; a resume from there must train nothing more.
# A regression test of its own (test_crash.py, slow), not a row of the crash table.
OTHER_STAGES = {}
OTHER_STAGES["sft early stop"] = Stage(
    "sft --resume (early stopping)", "es",
    ["sft", "--model", "m", "--data", "esd", "--name", "es", "--preset", "connector-retune", "--trainable",
     "connector+llm", "--lr", "1e-2", "--batch-size", "4", "--max-steps", "30", "--save-steps", "2",
     "early_stopping_patience=2"],
    [("publish: draft half written, after the early stop at step 18", ["--kill", "r1v3.training:plot_loss"], False,
      {"resume_from": 18})],
    resumable=True, needs_store=True, volatile={"log_history.json": _without_wall_clock},
    same_metrics=("steps", "stopped_early", "best_checkpoint_step", "loss_curve", "eval_loss_curve", "eval_loss",
                  "tokens_seen"),
    resume_metric="resumed_from_step", after_kill=_sft_after_kill,
)

STAGES["compose"] = Stage(
    "compose", "cm", ["compose", "--vlm", "m", "--llm", "llm", "--name", "cm", "--seed", "3"],
    [
        ("model composed, nothing saved", ["--kill", "r1v3.compose:compose_sources+after"], False),
        ("save: weights written, processor not", ["--kill", "transformers:ProcessorMixin.save_pretrained"], True),
        (*FSYNC, False), (*RENAME, True), (*AFTER_RENAME, False),
    ],
    needs_store=True,
)


# ---- distill, difficulty, rl, select-ckpt ---------------------------------------------------

DISTILL_ROWS = 8  # problems of dataset `dprobs`, 2 teacher samples each


def _distill_rows() -> list[dict]:
    """Synthetic problems, numbered in the question so the loopback teacher knows which it is asked."""
    from r1v3 import synthetic

    rows = synthetic.generate(40, seed=5)["train"][:DISTILL_ROWS]
    return [dict(r, id=f"d{i}", question=f"Q{i}: {r['question']}") for i, r in enumerate(rows)]


def _teacher_answer(row: dict, seed: int) -> str:
    """Sample `seed` of problem `row`: every third problem's even samples answer wrong, the rest
    reason in a think block (lengths differ per sample, so `keep` has a choice) and box the answer."""
    i = int(row["id"][1:])
    if i % 3 == 0 and seed % 2 == 0:
        wrong = next(c for c in "ABCD" if c != row["answer"]) if row["options"] else "nothing"
        return f"<think>The image seems to show something else entirely.</think>\n\\boxed{{{wrong}}}"
    more = " I check the count once more." * (seed % 2)
    return f"<think>Looking at the image for problem {i}, the shapes and colours settle it.{more}</think>\n\\boxed{{{row['answer']}}}"


_TEACHER: dict = {}


def teacher_url() -> str:
    """A scripted OpenAI-compatible teacher on loopback, one per process (its URL is part of distill's
    resume key, so the reference, the killed run and the re-run must all ask the same one)."""
    if "url" not in _TEACHER:
        import re
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        rows = {int(r["id"][1:]): r for r in _distill_rows()}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                q = int(re.search(r"Q(\d+):", body["messages"][-1]["content"]).group(1))
                text = _teacher_answer(rows[q], body["seed"])
                raw = json.dumps({"choices": [{"message": {"role": "assistant", "content": text},
                                               "finish_reason": "stop"}],
                                  "usage": {"completion_tokens": len(text) // 4}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                try:
                    self.wfile.write(raw)
                except BrokenPipeError:  # the killed client
                    pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        _TEACHER["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    return _TEACHER["url"]


def _saved(stage: Stage, store: Store, work_stage: str, read) -> tuple[list[str], dict]:
    """How much finished work the kill left for --resume (`read(work dir) -> count`)."""
    work = store.root / ".work" / stage.name / work_stage
    n = read(work) if work.exists() else 0
    return [f"{n} kept for --resume"], {"saved": n}


def _distill_after_kill(stage: Stage, store: Store) -> tuple[list[str], dict]:
    from stages import distill

    return _saved(stage, store, "distill",
                  lambda w: sum(len(s) for s in distill.read_attempts(w / distill.ATTEMPTS).values()))


def _without_this_runs_work(blob: bytes) -> bytes:
    """distill's report.json minus what this invocation asked the teacher for (_distill_rerun checks those)."""
    report = json.loads(blob)
    return json.dumps({k: v for k, v in report.items() if k not in ("problems_asked", "outputs_generated")},
                      sort_keys=True).encode()


def _distill_rerun(facts: dict, art, store: Store) -> list[str]:
    m = art.metrics
    assert m["outputs"] == 2 * DISTILL_ROWS, m["outputs"]
    assert m["outputs_generated"] == m["outputs"] - facts["saved"], (
        f"the re-run asked the teacher for {m['outputs_generated']} outputs; {facts['saved']} of {m['outputs']} were saved")
    return [f"re-run asked for the other {m['outputs_generated']}"]


STAGES["distill"] = Stage(
    "distill --resume", "dst",
    ["distill", "--teacher", "{teacher}", "--teacher-model", "scripted", "--data", "dprobs", "--name", "dst",
     "--api-key-env", "", "--samples", "2", "--max-retries", "0", "--concurrency", "1"],
    [
        ("mid-sampling (teacher call 5 of 16)", ["--kill", "r1v3.generation:OpenAIBackend._one@5"], False),
        ("torn append of a result (problem 3)", ["--torn-append", "attempts.jsonl@3"], True),
        ("mid-sampling, killed twice", [["--kill", "r1v3.generation:OpenAIBackend._one@4"]] * 2, False),
        ("publish: draft half written (dataset in, lengths.png not)", ["--kill", "stages.distill:length_chart"], False),
        (*FSYNC, False), (*RENAME, False), (*AFTER_RENAME, False),
    ],
    resumable=True, needs_store=True, volatile={"report.json": _without_this_runs_work},
    resume_metric="outputs_generated", after_kill=_distill_after_kill,
    rerun_check=_distill_rerun,
)


def _difficulty_after_kill(stage: Stage, store: Store) -> tuple[list[str], dict]:
    from r1v3.generation import read_records
    from stages import difficulty

    # rows with both their samples (--samples 2): a torn write can leave a row its first one alone,
    # and a resumed run asks that row for the second only
    return _saved(stage, store, "difficulty",
                  lambda w: sum(len(s) == 2 for s in read_records(w / difficulty.PARTIAL).values()))


def _difficulty_rerun(facts: dict, art, store: Store) -> list[str]:
    m = art.metrics
    assert (m["rows_resumed"], m["rows_generated"]) == (facts["saved"], m["rows_measured"] - facts["saved"]), (
        f"re-run resumed {m['rows_resumed']} and generated {m['rows_generated']} rows; {facts['saved']} were saved")
    return [f"re-run sampled the other {m['rows_generated']} rows"]


STAGES["difficulty"] = Stage(
    "difficulty --resume", "dif",
    ["difficulty", "--model", "m", "--data", "probs", "--name", "dif", "--splits", "train", "--samples", "2",
     "--max-new-tokens", "4", "--batch-size", "4", "--seed", "1"],
    [
        ("mid-sampling (batch 3 of 4)", ["--kill", "r1v3.generation:TransformersBackend._completion@9"], True),
        ("torn append of a row's samples (row 3)", ["--torn-append", "responses.partial.jsonl@3"], False),
        ("judging (every row sampled)", ["--kill", "stages.difficulty:judge@2"], False),
        (*FSYNC, False), (*RENAME, False), (*AFTER_RENAME, False),
    ],
    resumable=True, needs_store=True, resume_metric="rows_resumed", after_kill=_difficulty_after_kill,
    rerun_check=_difficulty_rerun,
)


def rl_length_reward(prompts, completions, **kwargs):
    """A reward with a signal (longer scores more): with the default rewards a random model scores 0
    everywhere, GRPO's advantages are 0 and the weights never move, so every run would look equal."""
    return [len(c[0]["content"]) / 10 for c in completions]


def _rl_log_without_wall_clock(blob: bytes) -> bytes:
    """rl's log_history.json: as sft's (_without_wall_clock), and TRL's per-step `step_time` too."""
    return _without_wall_clock(json.dumps([{k: v for k, v in h.items() if k != "step_time"}
                                           for h in json.loads(blob)]).encode())


def _rl_step_metrics_without_wall_clock(blob: bytes) -> bytes:
    """A checkpoint's metrics.json: that step's log entries merged into one."""
    return _rl_log_without_wall_clock(f"[{blob.decode()}]".encode())


def _rl_after_kill(stage: Stage, store: Store) -> tuple[list[str], dict]:
    """The checkpoint --resume continues from, and the published copies (checkpoints/step-K) beside it."""
    from r1v3 import training

    work = store.root / ".work" / stage.name / "rl"
    if not work.exists():
        return ["no work directory"], {"resume_from": None}
    steps = [int(p.name.split("-")[1]) for p in training.complete_checkpoints(work)]
    copies = sorted(int(p.name.split("-")[1]) for p in (work / "checkpoints").glob("step-*")) if (
        work / "checkpoints").is_dir() else []
    return [f"checkpoints {steps or 'none'} complete, published copies {copies or 'none'}"], {
        "resume_from": steps[-1] if steps else None}


RL_VOLATILE = {"log_history.json": _rl_log_without_wall_clock} | {
    f"checkpoints/step-{k}/metrics.json": _rl_step_metrics_without_wall_clock for k in (2, 4)}
# three GRPO runs per point (about 25 s on 2 idle cores): none in CI
STAGES["rl"] = Stage(
    "rl --resume", "rlr",
    ["rl", "--model", "m", "--data", "probs", "--name", "rlr", "--num-generations", "2", "--batch-size", "4",
     "--grad-accum", "1", "--max-new-tokens", "4", "--lr", "5e-3", "--max-steps", "4", "--save-steps", "2",
     "--reward", "tests.reliability.harness:rl_length_reward", "--reward-weight", "1"],
    [
        ("mid-rollouts of step 3, after checkpoint-2", ["--kill", "trl:GRPOTrainer._generate@3"], False,
         {"resume_from": 2}),
        ("checkpoint-4 save: weights, optimizer, RNG written, trainer_state.json not",
         ["--kill", f"{CKPT_STATE}~checkpoint-4/trainer_state.json"], False, {"resume_from": 2}),
        ("checkpoint-4 saved, its published copy (step-4) not", ["--kill", "stages.rl:save_product@2"], False,
         {"resume_from": 4}),
        ("publish: draft half written (checkpoints in, curves.png not)", ["--kill", "stages.rl:plot_curves"],
         False, {"resume_from": 4}),
        (*FSYNC, False, {"resume_from": 4}), (*RENAME, False, {"resume_from": 4}),
        (*AFTER_RENAME, False, {"resume_from": 4}),
    ],
    resumable=True, needs_store=True, volatile=RL_VOLATILE, same_metrics=("steps", "reward_curve"),
    resume_metric="resumed_from_step", after_kill=_rl_after_kill,
)


def _select_after_kill(stage: Stage, store: Store) -> tuple[list[str], dict]:
    from r1v3.generation import read_records

    # a checkpoint is finished when its work file holds a record of each of the 3 probe rows (--limit 3)
    return _saved(stage, store, "select-ckpt",
                  lambda w: sum(len(read_records(f)) == 3 for f in w.glob("step-*.jsonl")))


def _select_rerun(facts: dict, art, store: Store) -> list[str]:
    m = art.metrics
    assert (m["checkpoints_resumed"], m["checkpoints_scored"]) == (facts["saved"], 3 - facts["saved"]), (
        f"re-run resumed {m['checkpoints_resumed']} and scored {m['checkpoints_scored']} checkpoints; "
        f"{facts['saved']} were finished")
    model = store.resolve(f"{art.name}-model", kind="model", verify=True)
    # the selection names the model published just before it, the latest one
    assert model.metrics["step"] == m["step"] and m["model"] == model.ref, (m["model"], model.ref)
    for sel in (a for a in store.list() if a.name == art.name):  # no selection names a model that is not there
        store.resolve(sel.metrics["model"], kind="model", verify=True)
    return [f"re-run scored the other {m['checkpoints_scored']} checkpoints"]


STAGES["select-ckpt"] = Stage(
    "select-ckpt --resume", "sel",
    ["select-ckpt", "--run", "rlrun", "--probe", "probs", "--name", "sel", "--limit", "3", "--max-new-tokens", "6",
     "--min-positions", "1", "--batch-size", "3"],
    [
        ("scoring step-4 (step-2 finished)", ["--kill", "r1v3.entropy:make_record@4"], True),
        ("scoring, killed twice (step-2, then step-4 finished)", [["--kill", "r1v3.entropy:make_record@4"]] * 2,
         False),
        ("step-6's records half written", ["--kill-open", "step-6.jsonl@1"], False),
        # the chosen model is published first, then the selection naming it
        (*FSYNC, False), (*RENAME, False),
        ("publish: after the model's rename, before the selection's", ["--kill", "os:rename@1+after~.staging"], False,
         {"published": False}),
        ("publish: before the selection's rename (model published)", ["--kill", "os:rename@2~.staging"], False,
         {"published": False}),
        ("publish: after the selection's rename", ["--kill", "os:rename@2+after~.staging"], False, {"published": True}),
    ],
    resumable=True, needs_store=True, resume_metric="checkpoints_resumed", after_kill=_select_after_kill,
    rerun_check=_select_rerun,
)


def prepare_new_stage_inputs(base: Path) -> None:
    """In the store: `dprobs` (captioned problems for distill), `probs` (problems with train and
    validation splits: rl and difficulty train on train, select-ckpt probes validation), and run
    `rlrun` laid out as `r1v3 rl` publishes it (checkpoints/step-2, 4, 6: tiny InternVLs)."""
    from r1v3 import data, models, synthetic

    store = Store(base / "store")
    splits = synthetic.generate(40, seed=0)
    for name, content in (("dprobs", {"train": _distill_rows()}),
                          ("probs", {"train": splits["train"][:8], "validation": splits["validation"]})):
        with store.publish(name, "dataset", stage="test") as draft:
            data.write_splits(draft.path, content)
    start, probs = store.resolve("m", kind="model"), store.resolve("probs", kind="dataset")
    with store.publish("rlrun", "run", stage="rl", config={"split": "train", "accuracy_weight": 0.8,
                                                             "format_weight": 0.2}, inputs=[start, probs]) as draft:
        for k, step in enumerate((2, 4, 6)):
            model, processor = models.build_tiny("internvl", seed=10 + k)
            models.save_model(model, processor, draft.path / "checkpoints" / f"step-{step}")


def points(ci_only: bool = False) -> list[tuple[str, str]]:
    return [(s, p[0]) for s, stage in STAGES.items() for p in stage.points if p[2] or not ci_only]


# ---- inputs ---------------------------------------------------------------------------------


# a ChatML template without {% generation %} markers, like a Qwen2.5 instruct model's
CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _tiny_llm(path: Path) -> None:
    """A random text-only Qwen2 (hidden 48, so compose re-initialises the connector) with a chat template."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1v3 import models

    tok = models.tiny_tokenizer(chat_template=CHATML)
    config = Qwen2Config(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=len(tok), tie_word_embeddings=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(1)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)


def prepare_inputs(base: Path) -> Path:
    """Everything the stages read: a jsonl dataset, an MMMU copy, a plain HF model directory, and a
    store holding model `m`, datasets `mm` (for eval) and `sftd` (chat rows, for sft), and a
    text-only LLM `llm` (for compose)."""
    from PIL import Image

    from r1v3 import data, models

    from tests.mmmu_fixture import write_sample_copy

    base.mkdir(parents=True, exist_ok=True)
    rows = base / "rows"
    rows.mkdir()
    with open(rows / "rows.jsonl", "w") as f:
        for i in range(24):
            Image.new("RGB", (12, 12), (10 * i, 255 - 10 * i, 80)).save(rows / f"{i}.png")
            f.write(json.dumps({"id": f"r{i}", "images": [f"{i}.png"], "question": f"What is {i} + 1?",
                                "options": [], "answer": str(i + 1), "question_type": "open"}) + "\n")
    write_sample_copy(base / "mmmu", per_subject=1, seed=0)
    model, processor = models.build_tiny("internvl", seed=1)
    models.save_model(model, processor, base / "hfmodel")
    quiet(["--store", str(base / "store"), "init", "tiny", "--name", "m", "--family", "internvl"])
    quiet(["--store", str(base / "store"), "data", "mmmu", "--path", str(base / "mmmu"), "--name", "mm"])
    sft_rows = base / "sftrows"
    sft_rows.mkdir()
    with open(sft_rows / "rows.jsonl", "w") as f:
        for i in range(8):
            Image.new("RGB", (12, 12), (30 * i, 200 - 20 * i, 90)).save(sft_rows / f"{i}.png")
            f.write(json.dumps({
                "id": f"s{i}", "images": [f"{i}.png"], "question": f"How many squares? ({i})", "options": [],
                "answer": str(i % 5), "question_type": "open",
                "messages": [{"role": "user", "content": f"How many squares are there? ({i})"},
                             {"role": "assistant", "content": f"<think>I count {i % 5}.</think>\n\\boxed{{{i % 5}}}"}],
            }) + "\n")
    quiet(["--store", str(base / "store"), "data", "import", str(sft_rows / "rows.jsonl"), "--name", "sftd"])
    # train and validation disagree, so the validation loss soon rises and early stopping ends the run
    splits = {}
    for split, n, answer in (("train", 8, "<think>Wait, the circles are red.</think>\n\\boxed{A}"),
                             ("validation", 4, "<think>Hmm, so the total is 12.</think>\n\\boxed{9}")):
        with open(sft_rows / f"{split}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({
                    "id": f"{split[0]}{i}", "images": [f"{i}.png"], "question": f"Which option? ({i})", "options": [],
                    "answer": "A", "question_type": "open",
                    "messages": [{"role": "user", "content": f"Which option is right? ({split} {i})"},
                                 {"role": "assistant", "content": answer}],
                }) + "\n")
        splits[split] = data.load_rows(str(sft_rows / f"{split}.jsonl"))
    with Store(base / "store").publish("esd", "dataset", stage="test") as draft:
        data.write_splits(draft.path, splits)
    _tiny_llm(base / "llm")
    quiet(["--store", str(base / "store"), "import-model", str(base / "llm"), "--name", "llm"])
    prepare_new_stage_inputs(base)
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
    argv = [a.replace("{inputs}", str(inputs)) for a in stage.argv]
    return [teacher_url() if a == "{teacher}" else a for a in argv]


def _fresh_store(stage: Stage, inputs: Path, root: Path) -> Store:
    if stage.needs_store:
        shutil.copytree(inputs / "store", root)
    return Store(root)


def fingerprint(stage: Stage, art) -> dict:
    """What must equal the uninterrupted run's: every file's sha256 and size (a volatile file's
    after normalising), and the stage's `same_metrics`."""
    out = dict(art.manifest["files"])
    for rel, normalize in stage.volatile.items():
        if rel in out:
            out[rel] = {"normalized_sha256": hashlib.sha256(normalize(art.file(rel).read_bytes())).hexdigest()}
    for key in stage.same_metrics:
        out[f"metrics.{key}"] = art.metrics.get(key)
    return out


def reference(stage_key: str, inputs: Path, workdir: Path, _cache: dict = {}) -> dict:
    """The uninterrupted run's fingerprint, computed once per process."""
    key = (stage_key, str(inputs))
    if key not in _cache:
        stage = STAGES.get(stage_key) or OTHER_STAGES[stage_key]
        store = _fresh_store(stage, inputs, workdir / f"reference-{stage.name}")
        quiet(["--store", str(store.root), *_argv(stage, inputs)])
        _cache[key] = fingerprint(stage, store.resolve(stage.name, verify=True))
    return _cache[key]


# ---- one scenario ---------------------------------------------------------------------------


def _kill_run(stage: Stage, options: list, inputs: Path, store: Store, resume: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, R1V3_STORE=str(store.root), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    if options[:1] == ["--fresh"]:
        options, resume = options[1:], False
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
    stage = STAGES.get(stage_key) or OTHER_STAGES[stage_key]
    point = next(p for p in stage.points if p[0] == point_label)
    options, expect = point[1], (point[3] if len(point) > 3 else {})
    ref = reference(stage_key, inputs, workdir)
    # named by index, not label: a label's words in the store path would match the killer's ~TEXT filters
    root = workdir / f"crash-{stage.name}-{[p[0] for p in stage.points].index(point_label)}"
    store = _fresh_store(stage, inputs, root)
    start = time.perf_counter()
    details = {"stage": stage_key, "point": point_label}

    runs = options if isinstance(options[0], list) else [options]  # several kills in a row
    for k, opts in enumerate(runs):
        proc = _kill_run(stage, opts, inputs, store, resume=stage.resumable and k > 0)
        assert proc.returncode == -9, (
            f"kill point not reached (exit {proc.returncode}): {proc.stderr[-1500:]}"
        )
    after_rename = point_label == AFTER_RENAME[0] or expect.get("published", False)
    details["notes"] = _check_store_after_kill(stage, store, after_rename)
    facts = {}
    if stage.after_kill is not None:
        notes, facts = stage.after_kill(stage, store)
        details["notes"] += notes
        for k, want in expect.items():
            assert k not in facts or facts[k] == want, f"the kill left {k}={facts.get(k)!r}, expected {want!r} ({notes})"
    drafts = sorted(p.name for p in (store.root / ".staging").iterdir()) if (store.root / ".staging").exists() else []
    details["leftover_drafts"] = len(drafts)
    # the dead writer's drafts are recognisable as abandoned (its lock died with it)
    assert sorted(p.name for p in store.abandoned_drafts(min_age=0)) == drafts

    # re-run: the leftovers must not be in the way
    argv = ["--store", str(store.root), *_argv(stage, inputs), *(["--resume"] if stage.resumable else [])]
    try:
        quiet(argv)
    except AssertionError:
        raise
    except Exception as e:  # a traceback where a re-run should just work
        raise AssertionError(f"re-run crashed: {type(e).__name__}: {e}") from e
    art = store.resolve(stage.name, verify=True)
    assert art.version == (2 if after_rename else 1), f"re-run published {art.ref}"
    quiet(["--store", str(store.root), "artifacts", "verify", art.ref])
    got = fingerprint(stage, art)
    if got != ref:
        diff = sorted(k for k in set(ref) | set(got) if ref.get(k) != got.get(k))
        raise AssertionError(f"re-run differs from the uninterrupted run in {diff}")
    if stage.rerun_check is not None:
        details["notes"] += stage.rerun_check(facts, art, store)
    if stage.resume_metric == "items_resumed":  # eval
        details["items_resumed"] = art.metrics.get("items_resumed")
        if "generation" in point_label or "torn" in point_label or "resume" in point_label:
            assert art.metrics["items_resumed"] > 0, "resume redid every item"
        assert not list((store.root / ".work").rglob("*.jsonl")), "work files left after publishing"
        assert not (store.root / ".work" / stage.name).exists(), "work directory or its lock left after publishing"
    elif stage.resume_metric:
        details[stage.resume_metric] = art.metrics.get(stage.resume_metric)
        if "resume_from" in expect:
            assert art.metrics.get(stage.resume_metric) == expect["resume_from"], (
                f"re-run reports {stage.resume_metric}={art.metrics.get(stage.resume_metric)}, "
                f"expected {expect['resume_from']}")
        assert not (store.root / ".work" / stage.name).exists(), "work directory left after publishing"
    removed = store.clean_staging(min_age=0)
    assert len(removed) == len(drafts) and not any((store.root / ".staging").iterdir())
    details["seconds"] = round(time.perf_counter() - start, 1)
    return details
