"""`r1v3 difficulty`: measure each problem's pass rate under a model, for filtering and the
pass-rate curriculum of `r1v3 rl`.

Every row of the chosen splits gets `samples` answers from the model (batched backend,
temperature 1.0 by default, the eval's reasoning prompt), each judged by the answer rules the
GRPO accuracy reward uses (`rewards.accuracy`: `answers.extract` + `answers.verify`). The
dataset is published again, every split, with `pass_rate` = the fraction of right answers beside
the row's `difficulty` label (kept as it was); `--limit N` measures only the first N rows of each
measured split and publishes those alone (the rows RL will train on: the rest would cost a
generation pass for nothing); `--drop-solved` / `--drop-unsolved` leave out rows
every / no sample solved (they give GRPO no signal), and pass_rates.jsonl lists each row's
verdicts. Responses are appended (fsynced) to the run's work directory as batches finish, so
`--resume` continues an interrupted run without redoing finished rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from r1v3 import config, data, jsonl, mmmu, rewards
from r1v3.artifacts import Artifact, Store, check_name, published
from r1v3.config import BackendSettings, retold, setting, to_dict
from r1v3.errors import UserError

PARTIAL = "responses.partial.jsonl"  # one line per sample, appended as batches finish


@dataclass
class Config(BackendSettings):
    STAGE = "difficulty"
    DEFAULTS = {"samples": 8, "max_new_tokens": 4096}

    model: str = setting(help="Model artifact whose pass rates to measure (the policy RL will start from).", artifact="input")
    data: str = setting(help="Dataset artifact of problem rows.", artifact="input")
    name: str = setting(help="Name of the dataset artifact published with pass rates.", artifact="output")
    splits: list[str] = setting([], shown="every split", help="Splits to measure; the others are published unmeasured.")
    samples: int = retold(BackendSettings, "samples", help="Answers per problem k: pass rate = right answers / k.")
    max_new_tokens: int = retold(BackendSettings, "max_new_tokens", help=(
        "Generation budget per answer (rl's default completion length)."))
    # a pass rate needs samples that can differ: no greedy here
    temperature: float = retold(BackendSettings, "temperature", ge=None, gt=0,
                                help="Sampling temperature (rl's rollout temperature).")
    limit: Optional[int] = retold(BackendSettings, "limit", help=(
        "Measure only the first N rows of each measured split and publish those alone (size it to the rows RL "
        "will train on)."))
    drop_solved: bool = setting(False, help="Leave out rows every sample answered right.", resumable=True)
    drop_unsolved: bool = setting(False, help="Leave out rows no sample answered right.", resumable=True)

    def check(self) -> None:
        check_name(self.name)


def _rows(cfg: Config, dataset: Artifact) -> tuple[dict[str, list[dict]], list[str]]:
    """All splits' rows, and the splits to measure."""
    splits = data.list_splits(dataset.path)
    for split in cfg.splits:
        if split not in splits:
            raise UserError(f"{dataset.ref}: no split {split!r} (has {', '.join(splits)}) (--splits, key splits)")
    rows = {s: data.read_split(dataset.path, s) for s in splits}
    measured = cfg.splits or splits
    for split in measured:
        rows[split] = rows[split][: cfg.limit]
        for r in rows[split]:
            if not str(r.get("answer") or "").strip():
                raise UserError(f"{dataset.ref} [{split}] row {r['id']}: no answer to judge samples against")
    if not any(rows[s] for s in measured):
        raise UserError(f"{dataset.ref}: no rows to measure in {', '.join(measured)}")
    return rows, measured


def _is_answer(rec) -> bool:
    return isinstance(rec.get("text"), str) and isinstance(rec.get("n_tokens"), int)


def _answer(request, sample: int, c) -> dict:
    return {"text": c.text, "n_tokens": c.n_tokens}


def generate(cfg: Config, work, model: Artifact, rows: list[dict], where: str) -> tuple[dict, dict]:
    """Samples by row id (an interrupted run's included on resume) and timing."""
    from r1v3.generation import generate_records, open_backend, sampling_of

    requests = [mmmu.request(r, "reasoning") for r in rows]
    done, n = generate_records(work.path / PARTIAL, requests, sampling_of(cfg), _answer,
                               lambda: open_backend(cfg, model.path, rows, where), resumed=work.resumed,
                               valid=_is_answer)
    asked, seconds = n["requests_asked"], n["seconds"]
    return {r["id"]: [done[r["id"]][k] for k in range(cfg.samples)] for r in rows}, {
        "generation_seconds": seconds, "generated_tokens": n["generated_tokens"], "rows_generated": asked,
        "rows_resumed": n["requests_resumed"], "rows_per_second": round(asked / seconds, 3) if asked and seconds > 0 else None}


def judge(row: dict, samples: list[dict]) -> list[bool]:
    """Each sample right or wrong, by the GRPO accuracy reward's own rules."""
    k = len(samples)
    scores = rewards.accuracy(prompts=[None] * k, completions=[s["text"] for s in samples], answer=[row["answer"]] * k,
                              question_type=[row["question_type"]] * k, options=[list(row["options"])] * k)
    return [s == 1.0 for s in scores]


report = published  # what the terminal shows: the artifact published


def run(cfg: Config, store: Store) -> Artifact:
    from r1v3.generation import has_records, resolve_backend

    model = store.resolve(cfg.model, kind="model")
    dataset = store.resolve(cfg.data, kind="dataset")
    splits, measured = _rows(cfg, dataset)
    rows = [r for s in measured for r in splits[s]]
    for r in rows:
        mmmu.request(r, "reasoning")  # every prompt checked before any work
    with store.work(cfg.name, "difficulty", settings=config.resume_settings(cfg, backend=resolve_backend(cfg.backend)),
                    inputs={"model": model, "data": dataset}, resume=cfg.resume,
                    has_progress=has_records(PARTIAL, _is_answer)) as work:
        done, timing = generate(cfg, work, model, rows, f"{dataset.ref} splits {', '.join(measured)}")
        return publish(cfg, store, splits, measured, done, timing, [model, dataset])


def publish(cfg: Config, store: Store, splits: dict, measured: list[str], done: dict, timing: dict,
            inputs: list[Artifact]) -> Artifact:
    out, verdicts = {}, []
    dropped = {"solved": 0, "unsolved": 0}
    for split, rows in splits.items():
        kept = []
        for r in rows:
            if split in measured:
                right = judge(r, done[r["id"]])
                r = dict(r, pass_rate=sum(right) / len(right))
                verdicts.append({"id": r["id"], "split": split, "difficulty": r["difficulty"],
                                 "pass_rate": r["pass_rate"], "correct": right,
                                 "n_tokens": [s["n_tokens"] for s in done[r["id"]]]})
                if cfg.drop_solved and r["pass_rate"] >= 1.0:
                    dropped["solved"] += 1
                    continue
                if cfg.drop_unsolved and r["pass_rate"] <= 0.0:
                    dropped["unsolved"] += 1
                    continue
            kept.append(r)
        out[split] = kept
    if not any(out.values()):
        raise UserError(f"every measured row was dropped ({dropped['solved']} solved, {dropped['unsolved']} unsolved): "
                        "nothing to publish; leave out --drop-solved / --drop-unsolved")
    rates = [v["pass_rate"] for v in verdicts]
    with store.publish(cfg.name, "dataset", stage="difficulty", config=to_dict(cfg), inputs=inputs) as draft:
        data.write_splits(draft.path, {s: rows for s, rows in out.items() if rows})
        (draft.path / "pass_rates.jsonl").write_text(jsonl.lines(verdicts))
        draft.metrics.update(
            measured_splits=measured, rows_measured=len(verdicts), samples=cfg.samples,
            mean_pass_rate=round(sum(rates) / len(rates), 6), limit=cfg.limit,
            solved=sum(r >= 1.0 for r in rates), unsolved=sum(r <= 0.0 for r in rates), dropped=dropped,
            by_difficulty=_by_label(verdicts), rows={s: len(r) for s, r in out.items()}, **timing)
    return draft.artifact


def _by_label(verdicts: list[dict]) -> dict:
    groups: dict[str, list[float]] = {}
    for v in verdicts:
        groups.setdefault(v["difficulty"] or "(none)", []).append(v["pass_rate"])
    return {k: {"rows": len(g), "mean_pass_rate": round(sum(g) / len(g), 6)} for k, g in sorted(groups.items())}
