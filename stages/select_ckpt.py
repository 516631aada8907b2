"""`r1v3 select-ckpt`: choose an RL checkpoint by the entropy of its critical reasoning tokens
(Skywork-R1V3 section 5.1), and publish the evidence.

For every `checkpoints/step-K/` model of a run artifact (and, with --base, the run's starting
model as step 0), the stage generates reasoning for a held-out probe split with fixed sampling
settings and seed, through the batched transformers backend, which records the entropy of
each generated token's distribution as it generates (generation.StepEntropies; probe.jsonl lets
anyone re-check a number with one teacher-forced pass, r1v3/entropy.py), read at the critical words ("Wait", "Alternatively", "Hmm" by default). The same generations give probe
accuracy (answers.extract + verify, the reward's rule), format rate (rewards.well_formed) and the
reward (accuracy and format weighted as the run's accuracy_weight and format_weight, else the paper's 0.8/0.2).

Choice (`choose`): among checkpoints that pass the guards (probe accuracy at most
--max-accuracy-drop and format rate at most --max-format-drop below the first checkpoint's),
--by critical-entropy takes the highest mean critical entropy among those with at least
--min-positions critical positions. When none has that many, the result says "not enough
evidence" and takes the fallback: the highest probe accuracy, ties to the higher format rate, then
the earlier step (which is also what --by accuracy takes). --by reward takes the highest mean reward.

Outputs: a selection artifact (figures.json: every checkpoint's figures; selection.json: the
choice, the reason, the guards, Spearman's rho between critical entropy and accuracy with its
p-value; probe.jsonl: entropy.py's records, one per generation, with the checkpoint's step and the
generation's judgments; entropy-vs-accuracy.png), and a model artifact of the chosen checkpoint
whose inputs are the run and the selection.

Resumable: each checkpoint's records are appended to its work file as batches finish
(generation.generate_records); `--resume` reuses them, loads no checkpoint whose records are all
there, and generates only what the others lack.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from r1v3 import config, data, entropy, jsonl, mmmu, models, plots, rewards, stats
from r1v3.artifacts import Artifact, Store, check_name, printable, published, shown
from r1v3.config import GenerationSettings, retold, setting, to_dict
from r1v3.errors import UserError

BY = ("critical-entropy", "accuracy", "reward")
FALLBACK_RULE = "highest probe accuracy among checkpoints that pass the guards, ties to the higher format rate, then the earlier step"
CHECKPOINT = re.compile(r"checkpoints/step-([0-9]{1,9})/config\.json")
# training state a trainer may leave beside the weights: pickles, never copied into a model artifact


@dataclass
class Config(GenerationSettings):
    STAGE = "select-ckpt"

    run: str = setting(help="Run artifact (from `r1v3 rl`) whose checkpoints/step-K/ models are compared.", artifact="input")
    probe: str = setting(help="Dataset artifact of held-out problems with images and answers.", artifact="input")
    name: str = setting(help="Selection artifact name.", artifact="output")
    model_name: Optional[str] = setting(lambda c: f"{c.name}-model", shown="NAME-model",
                                        help="Name of the model artifact of the chosen checkpoint.", artifact="output")
    split: str = setting("validation", help="Probe split (held out from the run's training rows).")
    base: bool = setting(False, help="Also score the run's starting model (its model input) as step 0.")
    words: list[str] = setting(list(entropy.DEFAULT_WORDS), help="Critical words, comma-separated.")
    ignore_case: bool = setting(False, help=(
        "Count the critical words in any casing (default: as given; lower-case \"wait\" is mostly prose)."))
    high_entropy: float = setting(entropy.HIGH_ENTROPY, gt=0, help=(
        "Threshold (nats) of the high-entropy token share (0.672: the 80th percentile of Qwen3-8B's CoT tokens)."))
    by: Literal["critical-entropy", "accuracy", "reward"] = setting("critical-entropy", help=(
        f"What to maximise among checkpoints that pass the guards; fallback: {FALLBACK_RULE}."))
    min_positions: int = setting(20, ge=1, le=config.MAX_ROWS, help="Critical positions a checkpoint needs to be chosen by their entropy.")
    max_accuracy_drop: float = setting(0.1, ge=0, le=1, help=(
        "Guard: a checkpoint whose probe accuracy is more than this below the first checkpoint's is out."))
    max_format_drop: float = setting(0.2, ge=0, le=1, help=(
        "Guard: a checkpoint whose format rate is more than this below the first checkpoint's is out."))
    limit: Optional[int] = retold(GenerationSettings, "limit", help="Only the first N probe rows.")
    temperature: float = retold(GenerationSettings, "temperature", help="Sampling temperature (the paper: 1.0); 0 is greedy.")
    samples: int = retold(GenerationSettings, "samples", help="Responses per probe row.")
    # the transformers backend only: it records each token's entropy as it generates
    batch_size: int = retold(GenerationSettings, "batch_size", help="Generated sequences per batch.")
    resume: bool = retold(GenerationSettings, "resume", help=(
        "Continue an interrupted selection of the same name; what it generated is kept."))
    force_overlap: bool = setting(False, help="Score even when probe rows are among the run's training rows.")

    def check(self) -> None:
        check_name(self.name)
        check_name(self.model_name)
        if self.model_name == self.name:
            raise UserError(f"{self.label('model_name')} must differ from --name: one name cannot hold two kinds")
        if not [w for w in self.words if w.strip()]:
            raise UserError(f"{self.label('words')} is empty: give critical words, e.g. Wait,Alternatively,Hmm")
        try:
            entropy.check_words(self.words)
        except UserError as e:
            raise UserError(f"{self.label('words')}: {e}") from None
        if self.samples > 1 and self.temperature == 0:
            raise UserError("--samples > 1 with --temperature 0 gives identical greedy answers; set temperature > 0")


# ---------------------------------------------------------------------------------------------
# inputs


@dataclass
class Checkpoint:
    step: int
    path: Path
    label: str  # where it came from, for tables and errors
    source: Artifact  # the artifact holding it (the run, or the base model)


def checkpoints(store: Store, run: Artifact, base: bool) -> list[Checkpoint]:
    steps = sorted({int(m.group(1)) for f in run.manifest["files"] if (m := CHECKPOINT.fullmatch(f))})
    if not steps:
        raise UserError(f"{run.ref}: the run has no checkpoints (no checkpoints/step-K/config.json in its files)")
    out = [Checkpoint(k, run.path / "checkpoints" / f"step-{k}", f"{run.ref} step-{k}", run) for k in steps]
    if base and 0 not in steps:
        starts = [i for i in run.manifest.get("inputs", []) if i.get("kind") == "model"]
        if len(starts) != 1:
            raise UserError(f"--base (key base): {run.ref} names {len(starts)} model inputs, not one starting model")
        model = store.resolve(starts[0]["ref"], kind="model")
        out.insert(0, Checkpoint(0, model.path, f"{model.ref} (start)", model))
    families = {}
    for c in out:
        families.setdefault(models.vlm_config(c.path, c.label, "select-ckpt").get("model_type"), c.label)
    if len(families) > 1:
        raise UserError(f"{run.ref}: checkpoints of different families: "
                        + ", ".join(f"{label} is {t!r}" for t, label in families.items()))
    return out


def probe_rows(cfg: Config, probe: Artifact) -> list[dict]:
    rows = data.load_split(probe, cfg.split)[: cfg.limit]
    if not rows:
        raise UserError(f"{probe.ref} split {cfg.split}: no rows to probe")
    for i, r in enumerate(rows):
        where = f"{probe.ref} split {cfg.split} row {i} (id {r['id']})"
        if not r["images"]:
            raise UserError(f"{where}: no images; a probe set holds visual problems")
        if not isinstance(r["answer"], str) or not r["answer"].strip():
            raise UserError(f"{where}: no answer; probe accuracy needs one")
    return rows


def _key(row: dict) -> str:
    """A problem's identity across datasets: its question and the pixels of its images."""
    h = hashlib.sha256(row["question"].encode())
    for im in row["images"]:
        h.update(f"|{im.mode}|{im.size}|".encode())
        h.update(im.tobytes())
    return h.hexdigest()


def check_overlap(store: Store, run: Artifact, probe: Artifact, rows: list[dict], split: str) -> None:
    """Refuse probe rows that the run trained on (same id in the same dataset, or same question and images)."""
    trained = [i for i in run.manifest.get("inputs", []) if i.get("kind") == "dataset"]
    if not trained:
        raise UserError(f"{run.ref} names no training dataset among its inputs, so probe rows cannot be checked "
                        "against it; --force-overlap (key force_overlap) skips the check")
    run_cfg = run.manifest.get("config") or {}
    train_split = run_cfg.get("split") if isinstance(run_cfg.get("split"), str) else "train"
    for inp in trained:
        dataset = store.resolve(inp["ref"], kind="dataset")
        if train_split not in data.list_splits(dataset.path):
            continue  # the run's split is in another of its datasets
        train = data.read_split(dataset.path, train_split)
        ids = {r["id"] for r in train} if dataset.digest == probe.digest else set()
        keys = {_key(r) for r in train}
        hits = [r["id"] for r in rows if r["id"] in ids or _key(r) in keys]
        if hits:
            raise UserError(
                f"{probe.ref} split {split}: {len(hits)} of {len(rows)} probe rows (first: {hits[0]}) are training rows "
                f"of {run.ref} ({dataset.ref} split {train_split}); probe a held-out split, or --force-overlap")


def reward_weights(run: Artifact) -> dict:
    """The run's accuracy and format weights (`r1v3 rl`'s accuracy_weight, format_weight), else the paper's."""
    cfg = run.manifest.get("config") or {}
    out = dict(rewards.PAPER_WEIGHTS)
    for key in out:
        w = cfg.get(f"{key}_weight")
        if isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w):
            out[key] = float(w)
    return out


# ---------------------------------------------------------------------------------------------
# scoring one checkpoint


def score(cfg: Config, model, processor, row: dict, request, sample: int, c, step: int) -> dict:
    """One generation's probe record (entropy.py's format, from the entropies recorded while generating)
    with the checkpoint's step and the generation's judgments."""
    if len(c.entropies) != len(c.token_ids):
        raise RuntimeError("the generation backend returned completions without their entropies")
    record = entropy.make_record(model, processor, request, c.token_ids, sample=sample, words=cfg.words,
                                 case_sensitive=not cfg.ignore_case, high_threshold=cfg.high_entropy,
                                 measured=(c.prompt_tokens, list(c.entropies)))
    correct = rewards.accuracy([""], [c.text], answer=[row["answer"]], question_type=[row["question_type"]],
                               options=[row["options"] or None])[0]
    record.update(step=step, correct=bool(correct), well_formed=rewards.well_formed(c.text, record["think_open"]),
                  finish_reason=c.finish_reason)
    return record


def figures(step: int, label: str, records: list[dict], weights: dict) -> dict:
    """One checkpoint's row of the table."""
    n = len(records)
    acc = sum(r["correct"] for r in records) / n
    fmt = sum(r["well_formed"] for r in records) / n
    return {"step": step, "checkpoint": label, **entropy.summarize(records), "accuracy": acc, "format_rate": fmt,
            "reward": weights["accuracy"] * acc + weights["format"] * fmt}


# ---------------------------------------------------------------------------------------------
# the choice


def guard_failures(row: dict, first: dict, max_accuracy_drop: float, max_format_drop: float) -> list[str]:
    out = []
    if row["accuracy"] < first["accuracy"] - max_accuracy_drop - 1e-12:
        out.append(f"accuracy {row['accuracy']:.3f} is more than {max_accuracy_drop:g} below step {first['step']}'s "
                   f"{first['accuracy']:.3f}")
    if row["format_rate"] < first["format_rate"] - max_format_drop - 1e-12:
        out.append(f"format rate {row['format_rate']:.3f} is more than {max_format_drop:g} below step "
                   f"{first['step']}'s {first['format_rate']:.3f}")
    return out


def choose(table: list[dict], *, by: str = "critical-entropy", min_positions: int = 20,
           max_accuracy_drop: float = 0.1, max_format_drop: float = 0.2) -> dict:
    """The selection over a table of checkpoint figures (ordered by step; the first is the reference)."""
    if by not in BY:
        raise UserError(f"--by must be one of {', '.join(BY)}, got {by!r}")
    if not table:
        raise UserError("no checkpoints to choose from")
    first = table[0]
    guards = {row["step"]: guard_failures(row, first, max_accuracy_drop, max_format_drop) for row in table}
    passing = [row for row in table if not guards[row["step"]]]  # the first always passes its own guards
    fallback = max(passing, key=lambda r: (r["accuracy"], r["format_rate"], -r["step"]))
    enough = [r for r in passing if r["critical_count"] >= min_positions]
    out = {"by": by, "guards": {str(k): v for k, v in guards.items()}, "fallback_rule": FALLBACK_RULE,
           "min_positions": min_positions, "enough_evidence": True}
    if by == "critical-entropy" and enough:
        pick = max(enough, key=lambda r: (r["critical_entropy"], r["accuracy"], -r["step"]))
        reason = (f"highest mean critical-token entropy ({pick['critical_entropy']:.4f} nats over "
                  f"{pick['critical_count']} positions) among {len(enough)} checkpoint(s) that pass the guards "
                  f"and have at least {min_positions} critical positions")
    elif by == "critical-entropy":
        most = max(passing, key=lambda r: r["critical_count"])
        pick, out["enough_evidence"] = fallback, False
        reason = (f"not enough evidence: no checkpoint that passes the guards has {min_positions} critical positions "
                  f"(most: {most['critical_count']} at step {most['step']}); fallback rule: {FALLBACK_RULE}")
    elif by == "accuracy":
        pick, reason = fallback, f"highest probe accuracy ({fallback['accuracy']:.3f}) among checkpoints that pass the guards"
    else:
        pick = max(passing, key=lambda r: (r["reward"], r["accuracy"], -r["step"]))
        reason = f"highest mean reward ({pick['reward']:.3f}) among checkpoints that pass the guards"
    out.update(step=pick["step"], checkpoint=pick["checkpoint"], reason=reason)
    return out


def correlation(table: list[dict]) -> dict:
    """Spearman's rho between critical entropy and probe accuracy across checkpoints, with its p-value."""
    pairs = [(r["critical_entropy"], r["accuracy"]) for r in table if r["critical_entropy"] is not None]
    out = {"n": len(pairs), "rho": None, "p_value": None}
    if len(pairs) < 2:
        return out | {"note": "fewer than 2 checkpoints with critical positions"}
    rho, p = stats.spearman([x for x, _ in pairs], [y for _, y in pairs])
    if math.isnan(rho):
        return out | {"note": "constant entropy or accuracy across checkpoints"}
    return out | {"rho": rho, "p_value": p}


# ---------------------------------------------------------------------------------------------
# the run


def _done_file(work_path: Path, step: int) -> Path:
    return work_path / f"step-{step}.jsonl"


def _has_progress(work_path: Path) -> bool:
    from r1v3.generation import read_records

    return any(read_records(f) for f in work_path.glob("step-*.jsonl"))


def _finished(step: int):
    return lambda r: r.get("step") == step and isinstance(r.get("correct"), bool) and isinstance(r.get("well_formed"), bool)


def _score_checkpoint(cfg: Config, c: Checkpoint, rows, requests, where: str, work) -> list[dict]:
    """The checkpoint's probe records in request order, generating what its work file lacks."""
    from r1v3.generation import generate_records, open_backend, sampling_of

    opened = []  # the backend, once the loop needs it: records are made with its model

    def open_checkpoint():
        opened.append(open_backend(cfg, c.path, rows, where, entropies=True))
        return opened[0]

    by_id = {r["id"]: r for r in rows}
    done, _ = generate_records(
        _done_file(work.path, c.step), requests, sampling_of(cfg),
        lambda q, k, comp: score(cfg, opened[0].model, opened[0].processor, by_id[q.id], q, k, comp, c.step),
        open_checkpoint, resumed=work.resumed, valid=_finished(c.step), description=f"step {c.step}")
    return [done[q.id][k] for q in requests for k in range(cfg.samples)]


def run(cfg: Config, store: Store) -> tuple[Artifact, Artifact]:
    from r1v3.generation import read_records
    from r1v3.generation.records import missing

    run_art = store.resolve(cfg.run, kind="run")
    probe = store.resolve(cfg.probe, kind="dataset")
    ckpts = checkpoints(store, run_art, cfg.base)
    rows = probe_rows(cfg, probe)
    if not cfg.force_overlap:
        check_overlap(store, run_art, probe, rows, cfg.split)
    requests = [mmmu.request(r, "reasoning") for r in rows]
    weights = reward_weights(run_art)
    inputs = {"run": run_art, "probe": probe} | ({"base": ckpts[0].source} if ckpts[0].source is not run_art else {})
    with store.work(cfg.name, "select-ckpt", settings=config.resume_settings(cfg), inputs=inputs, resume=cfg.resume,
                    has_progress=_has_progress) as work:
        table, records, timing = [], [], {"checkpoints_scored": 0, "checkpoints_resumed": 0, "seconds": 0.0}
        for c in ckpts:
            saved = read_records(_done_file(work.path, c.step), _finished(c.step)) if work.resumed else {}
            if not missing([q.id for q in requests], saved, cfg.samples):
                recs = [saved[q.id][k] for q in requests for k in range(cfg.samples)]
                timing["checkpoints_resumed"] += 1
            else:
                start = time.perf_counter()
                recs = _score_checkpoint(cfg, c, rows, requests, f"{probe.ref} split {cfg.split}", work)
                timing["checkpoints_scored"] += 1
                timing["seconds"] += time.perf_counter() - start
            table.append(figures(c.step, c.label, recs, weights))
            records.extend(recs)
        timing["seconds"] = round(timing["seconds"], 2)
        return publish(cfg, store, run_art, ckpts, table, records, list(inputs.values()), weights, timing)


def publish(cfg: Config, store: Store, run_art: Artifact, ckpts: list[Checkpoint], table: list[dict],
            records: list[dict], inputs: list[Artifact], weights: dict, timing: dict) -> tuple[Artifact, Artifact]:
    choice = choose(table, by=cfg.by, min_positions=cfg.min_positions, max_accuracy_drop=cfg.max_accuracy_drop,
                    max_format_drop=cfg.max_format_drop)
    spearman = correlation(table)
    chosen = next(c for c in ckpts if c.step == choice["step"])
    picked = next(r for r in table if r["step"] == choice["step"])
    # the model first, then the selection naming it: a kill between the two leaves a model that a
    # re-run supersedes, never a selection whose model is missing
    with store.publish(cfg.model_name, "model", stage="select-ckpt", config=to_dict(cfg),
                       inputs=[chosen.source] if chosen.source is run_art else [chosen.source, run_art]) as draft:
        _copy_model(chosen, draft.path)
        draft.metrics.update(step=choice["step"], run=run_art.ref, selected_by=cfg.name,
                             **{k: picked[k] for k in ("critical_entropy", "critical_count", "accuracy", "format_rate")})
    model = draft.artifact
    # its files name the model by name (the same bytes whichever version a re-run makes), its manifest by version
    summary = {"choice": choice, "spearman": spearman, "reward_weights": weights, "model": cfg.model_name}
    with store.publish(cfg.name, "selection", stage="select-ckpt", config=to_dict(cfg), inputs=inputs) as draft:
        (draft.path / "figures.json").write_text(json.dumps(table, indent=2) + "\n")
        (draft.path / "selection.json").write_text(json.dumps(summary, indent=2) + "\n")
        (draft.path / "probe.jsonl").write_text(jsonl.lines(records))
        plot(table, choice["step"], draft.path / "entropy-vs-accuracy.png", f"{cfg.name}: {run_art.ref}")
        draft.metrics.update(step=choice["step"], by=cfg.by, enough_evidence=choice["enough_evidence"],
                             reason=choice["reason"], checkpoints=len(table), spearman=spearman, table=table,
                             model=model.ref, **timing)
    return draft.artifact, model


def _copy_model(c: Checkpoint, dest: Path) -> None:
    prefix = "" if c.source.kind == "model" else c.path.relative_to(c.source.path).as_posix() + "/"
    for rel in sorted(c.source.manifest["files"]):
        if rel.startswith(prefix) and not rel.endswith((*models.PICKLE_SUFFIXES, ".gguf")):
            target = dest / rel[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(c.source.path / rel, target)


def plot(table: list[dict], chosen: int, path: Path, title: str) -> None:
    """One point per checkpoint: mean critical-token entropy against probe accuracy, labelled by step."""
    with plots.figure(path, figsize=(6, 4.5)) as (fig, ax):
        shown = [r for r in table if r["critical_entropy"] is not None]
        for r in shown:
            hit = r["step"] == chosen
            ax.scatter(r["critical_entropy"], 100 * r["accuracy"], s=60 if hit else 30, color="#c44e52" if hit else "#4c72b0",
                       zorder=3)
            ax.annotate(f"step {r['step']}", (r["critical_entropy"], 100 * r["accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
        missing = [str(r["step"]) for r in table if r["critical_entropy"] is None]
        if missing:
            ax.text(0.01, 0.01, f"no critical positions: step {', '.join(missing)}", transform=ax.transAxes, fontsize=8)
        ax.set_xlabel("mean entropy at critical tokens (nats)")
        ax.set_ylabel("probe accuracy (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)


def report(result: tuple[Artifact, Artifact], console) -> None:
    """The checkpoints' entropy table, the choice and its reason, the Spearman figure, what was published."""
    from rich.table import Table

    selection, model = result
    metrics = selection.metrics
    table = Table(title=shown(f"select-ckpt {selection.ref}: entropy (nats) at critical words, by checkpoint", 200))
    words = list(metrics["table"][0]["per_word"])
    for col in ("step", "critical H (n)", *words, "token H", "high", "acc", "format", "reward", "guards"):
        table.add_column(shown(col, 40), justify="left" if col == "guards" else "right")
    guards = json.loads(selection.file("selection.json").read_text())["choice"]["guards"]
    fmt = lambda v, spec=".3f": "-" if v is None else format(v, spec)  # noqa: E731
    for r in metrics["table"]:
        mark = "*" if r["step"] == metrics["step"] else ""
        per_word = [f"{fmt(r['per_word'][w]['entropy'])} ({r['per_word'][w]['count']})" for w in words]
        table.add_row(f"{mark}{r['step']}", f"{fmt(r['critical_entropy'])} ({r['critical_count']})", *per_word,
                      fmt(r["token_entropy"]), fmt(r["high_entropy_share"], ".2f"), fmt(r["accuracy"], ".2f"),
                      fmt(r["format_rate"], ".2f"), fmt(r["reward"], ".2f"), shown("; ".join(guards[str(r["step"])]) or "ok", 200))
    console.print(table)
    s = metrics["spearman"]
    rho = f"rho {s['rho']:.3f}, p {s['p_value']:.3g}" if s["rho"] is not None else s.get("note", "n/a")
    console.print(f"chosen: step {metrics['step']} ({metrics['by']}): {printable(metrics['reason'])}", markup=False,
                  highlight=False)
    console.print(f"Spearman, critical entropy vs probe accuracy over {s['n']} checkpoints: {rho}", markup=False,
                  highlight=False)
    published(model, console)
    published(selection, console)  # after the model: the selection names it
