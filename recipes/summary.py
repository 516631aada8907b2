"""The table a recipe ends with: each stage, the artifact it published, its key figure and its wall time
(what making the artifact took, and what this run of the recipe spent on the stage);
then the accuracy of every evaluated model per task and level, next to chance and the blind baseline.

Usage (run.sh calls it): python recipes/summary.py STORE TIMES.tsv PROBLEMS [SPLIT]
TIMES.tsv has one line per stage: label, the artifact names it publishes (comma-separated), seconds.
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

from r1v3 import data
from r1v3.artifacts import Store


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def number(x, fmt=".4f") -> str:
    return "n/a" if x is None else format(x, fmt)


def key_figure(art) -> str:
    """The one number a reader checks for this stage, from its manifest."""
    m, stage = art.metrics, art.manifest["stage"]
    if stage == "init":
        return f"{m.get('family', '')} model"
    if stage == "synth":
        return ", ".join(f"{k} {v}" for k, v in m.get("splits", {}).items()) + " rows"
    if stage == "sft":
        what = "+".join(m.get("trainable", []))
        return f"{what}: loss {number(m.get('final_loss'))} after {m.get('steps')} steps"
    if stage == "distill":
        return f"traces kept {m.get('kept')} of {m.get('outputs')} (teacher pass rate {pct(m.get('pass_rate'))})"
    if stage == "difficulty":
        levels = ", ".join(f"{k} {pct(v['mean_pass_rate'])}" for k, v in m.get("by_difficulty", {}).items())
        return f"mean pass rate {pct(m.get('mean_pass_rate'))} ({levels})"
    if stage == "rl":
        last = (m.get("checkpoints") or [{}])[-1]
        acc = last.get("rewards/accuracy/mean")
        return (f"{m.get('steps')} steps, curriculum {m.get('curriculum')}: last reward {number(last.get('reward'))}, "
                f"accuracy reward {number(acc, '.2f')}")
    if stage == "rl-export":
        return f"step {m.get('step')} of {m.get('run')}"
    if stage == "select-ckpt" and art.kind == "selection":
        return f"step {m.get('step')} ({m.get('reason', '')})"[:90]
    if stage == "select-ckpt":
        return (f"step {m.get('step')}: critical entropy {number(m.get('critical_entropy'))} "
                f"over {m.get('critical_count')} positions, probe accuracy {pct(m.get('accuracy'))}")
    if stage == "eval-mmmu":
        return f"accuracy {pct(m.get('acc'))} (n={m.get('n')}, parse failures {pct(m.get('parse_failure_rate'))})"
    return ""


def accuracy_rows(store: Store, evals: list, problems, split: str):
    """(tasks, levels, rows): chance first, then each eval by task and by difficulty level."""
    rows = {split_: data.read_split(problems.path, split_) for split_ in data.list_splits(problems.path)}
    open_answers = defaultdict(set)  # chance for an open question: one of the answers its task ever has
    for split_rows in rows.values():
        for r in split_rows:
            if r["question_type"] == "open":
                open_answers[r["subject"]].add(r["answer"])
    held_out = {r["id"]: r for r in rows[split]}
    chance = defaultdict(list)
    for r in held_out.values():
        p = 1 / len(r["options"]) if r["question_type"] == "multiple-choice" else 1 / len(open_answers[r["subject"]])
        for key in ("overall", r["subject"], r.get("difficulty") or "(none)"):
            chance[key].append(p)
    tasks = sorted({r["subject"] for r in held_out.values()})
    levels = sorted({r.get("difficulty") or "(none)" for r in held_out.values()})
    out = [("chance", {k: sum(v) / len(v) for k, v in chance.items()})]
    for label, art in evals:
        got = defaultdict(list)
        for line in art.file("predictions.jsonl").read_text().splitlines():
            p = json.loads(line)
            r = held_out.get(p["id"])
            if r is not None:
                for key in ("overall", r["subject"], r.get("difficulty") or "(none)"):
                    got[key].append(bool(p["correct"]))
        out.append((label, {k: sum(v) / len(v) for k, v in got.items()}))
    return tasks, levels, out


def main(store_dir: str, times_path: str, problems_ref: str, split: str = "test") -> None:
    store = Store(store_dir)
    times = [line.split("\t") for line in Path(times_path).read_text().splitlines() if line.strip()]
    # "made in": the wall time the artifact records; "this run": run.sh's clock, a few seconds when reused
    print("\n| stage | artifact | key figure | made in (s) | this run (s) |\n|---|---|---|---:|---:|")
    evals, made_total, run_total = [], 0.0, 0
    for label, names, seconds in times:
        arts = [store.resolve(name) for name in names.split(",")]
        recorded = [a.manifest["seconds"] for a in arts if "seconds" in a.manifest]  # none before the field existed
        made = max(recorded) if recorded else None
        for i, art in enumerate(arts):
            first = i == 0
            print(f"| {label if first else ''} | {art.ref} | {key_figure(art)} | "
                  f"{number(made, '.0f') if first else ''} | {seconds if first else ''} |")
            if art.kind == "eval":
                blind = " (images blanked)" if art.manifest["config"].get("blank_images") else ""
                evals.append((art.manifest["config"]["model"] + blind, art))
        made_total += made or 0.0
        run_total += int(seconds)
    print(f"| total | | | {made_total:.0f} | {run_total} |")
    problems = store.resolve(problems_ref, kind="dataset")
    tasks, levels, rows = accuracy_rows(store, evals, problems, split)
    n = len(data.read_split(problems.path, split))
    print(f"\n| model ({split} split, n={n}) | overall | " + " | ".join(tasks + levels) + " |")
    print("|---|---:|" + "---:|" * (len(tasks) + len(levels)))
    for label, acc in rows:
        print(f"| {label} | " + " | ".join(pct(acc.get(k)) for k in ["overall", *tasks, *levels]) + " |")


if __name__ == "__main__":
    main(*sys.argv[1:])
