"""`r1v3 compare BASELINE EVAL [EVAL ...]`: did a stage help, by how much, and could it be noise?

Each eval is compared with the first on the items both answered: accuracy of each, the difference
with its 95% paired bootstrap interval over items, and McNemar's exact p on the items exactly one
of them got right (with several samples per item, each item scores its mean@k and there is no
McNemar p). `--by` repeats the comparison within each value of row fields of the evaluated dataset
(subject, difficulty, ...). Publishes nothing; `--json` prints the figures for scripts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from r1v3 import config, data, jsonl, stats
from r1v3.artifacts import Artifact, Store
from r1v3.config import Settings, setting
from r1v3.errors import UserError


@dataclass
class Config(Settings):
    STAGE = "compare"

    evals: list[str] = setting(argument=True, artifact="input", metavar="BASELINE EVAL...", help=(
        "Eval artifacts (from `r1v3 eval`); the first is the baseline the others are compared with."))
    by: list[str] = setting(["subject", "difficulty"], help=(
        "Also compare within each value of these fields of the evaluated rows (none: overall only)."))
    resamples: int = setting(stats.RESAMPLES, ge=100, le=1_000_000, help="Bootstrap resamples.")
    level: float = setting(0.95, gt=0, lt=1, help="Coverage of the interval.")
    seed: int = setting(0, ge=0, le=config.MAX_SEED, help="Seed of the bootstrap resampling.")

    def check(self) -> None:
        if len(self.evals) < 2:
            raise UserError(f"compare needs a baseline and at least one eval to compare with it, got {len(self.evals)}")


def item_scores(art: Artifact) -> dict[str, float]:
    """Each item's score in an eval: correct (1/0), or the mean over its samples."""
    by_item: dict[str, list[float]] = {}
    for rec in jsonl.read(art.file("predictions.jsonl"), lambda r: isinstance(r, dict) and isinstance(r.get("id"), str)):
        by_item.setdefault(rec["id"], []).append(float(bool(rec.get("correct"))))
    if not by_item:
        raise UserError(f"{art.ref}: no predictions to compare")
    return {i: sum(v) / len(v) for i, v in by_item.items()}


def evaluated_rows(store: Store, art: Artifact) -> list[dict]:
    """The rows an eval read, from its dataset (none for re-scored responses)."""
    split = (art.manifest.get("config") or {}).get("split")
    found = [i for i in art.manifest.get("inputs", []) if i.get("kind") == "dataset"]
    if not found or not isinstance(split, str):
        return []
    return data.read_split(store.resolve(found[0]["ref"], kind="dataset").path, split)


def chance(rows: list[dict]) -> dict[str, float]:
    """Each row's chance of being right by guessing: one over its options, or for an open question one over
    the distinct answers its subject has in these rows."""
    answers: dict[str, set] = {}
    for r in rows:
        if r["question_type"] == "open":
            answers.setdefault(r.get("subject") or "", set()).add(r["answer"])
    return {r["id"]: 1 / len(r["options"]) if r["question_type"] == "multiple-choice" and r["options"]
            else 1 / len(answers.get(r.get("subject") or "", ()) or [None]) for r in rows}


def run(cfg: Config, store: Store) -> dict:
    arts = [store.resolve(ref, kind="eval") for ref in cfg.evals]
    scores = [item_scores(a) for a in arts]
    common = sorted(set.intersection(*(set(s) for s in scores)))
    if not common:
        raise UserError(f"{', '.join(a.ref for a in arts)} share no item: compare evals of the same data")
    rows = evaluated_rows(store, arts[0])
    fields = {r["id"]: {f: str(r.get(f) or "") for f in cfg.by} for r in rows}
    guess = chance(rows)
    groups: dict[tuple[str, str], list[str]] = {("overall", ""): common}
    for field in cfg.by:
        for i in common:
            if i in fields and fields[i][field]:
                groups.setdefault((field, fields[i][field]), []).append(i)

    def compare(base: dict, other: dict, ids: list[str]) -> dict:
        p = stats.paired([base[i] for i in ids], [other[i] for i in ids], resamples=cfg.resamples, seed=cfg.seed,
                         level=cfg.level)
        return p._asdict()

    return {
        "baseline": arts[0].ref,
        "level": cfg.level,
        "items": {"common": len(common), **{a.ref: len(s) for a, s in zip(arts, scores)}},
        "comparisons": [
            {"eval": a.ref, "groups": [{"by": by, "value": value, "chance": sum(guess[i] for i in ids) / len(ids)
                                        if guess and all(i in guess for i in ids) else None} | compare(scores[0], s, ids)
                                      for (by, value), ids in groups.items()]}
            for a, s in zip(arts[1:], scores[1:])
        ],
    }


def report(result: dict, console, as_json: bool = False) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    if as_json:
        print(json.dumps(result, indent=1))
        return
    pct = lambda x: f"{100 * x:.1f}"  # noqa: E731
    level = round(100 * result["level"])
    for comp in result["comparisons"]:
        table = Table(title=escape(f"{comp['eval']} against {result['baseline']}: paired over items, accuracy %"),
                      box=box.SIMPLE_HEAD)
        for col, justify in (("items", "left"), ("n", "right"), ("chance", "right"), ("base", "right"),
                             ("this", "right"), (f"this - base [{level}% CI]", "right"), ("McNemar p", "right")):
            table.add_column(col, justify=justify, no_wrap=col == "items" or col.startswith("this -"))
        for g in comp["groups"]:
            label = "all" if g["by"] == "overall" else f"{g['by']}={g['value']}"
            sign = "[green]" if g["low"] > 0 else "[red]" if g["high"] < 0 else ""
            diff = f"{100 * g['diff']:+.1f} [{100 * g['low']:+.1f}, {100 * g['high']:+.1f}]"
            table.add_row(escape(label), str(g["n"]), "" if g["chance"] is None else pct(g["chance"]), pct(g["a"]), pct(g["b"]),
                          f"{sign}{escape(diff)}{'[/]' if sign else ''}",
                          "" if g["p_mcnemar"] is None else f"{g['p_mcnemar']:.3g}")
        console.print(table)
    items = result["items"]
    dropped = {k: v - items["common"] for k, v in items.items() if k != "common" and v != items["common"]}
    if dropped:
        console.print(escape("items left out (not answered by every eval): "
                             + ", ".join(f"{k} {v}" for k, v in dropped.items())), highlight=False)
    console.print(f"an interval that excludes 0 is a difference at the {level}% level on these items; "
                  "one seed is one draw of the training noise", highlight=False)
