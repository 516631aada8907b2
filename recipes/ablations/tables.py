"""The tables and figures of the ablation recipes (recipes/ablations/*.sh), from the store and from
`r1v3 compare --json`: no statistics of its own beyond what r1v3 already has (the paired intervals come
from compare, Spearman from r1v3.entropy).

Usage (the scripts call it): python recipes/ablations/tables.py COMMAND ... --store STORE
  findings CLAIMS.tsv        the finding's table: paper, ours per seed with paired 95% intervals, chance,
                             blind, verdict
  require REF KIND           exit 2 with one line when the store has no such artifact
  dynamics RUN...            reward, gradient norm and per-phase reward of RL runs
  repetition EVAL...         how repetitive held-out responses are: zlib compression, distinct bigrams
  walltime REF...            what making each artifact took (its manifest's seconds)
  validation MODEL...        an SFT run's validation loss, the checkpoint kept and whether it stopped early
  entropy SELECTION          select-ckpt's evidence per checkpoint, and Spearman of three entropy measures
  best-step SELECTION        the checkpoint with the highest probe (validation) accuracy
  budget OUT.png LABEL=EVAL,EVAL... [--blind EVAL]   accuracy against the generation budget, drawn
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from r1v3 import plots
from r1v3.artifacts import Store
from r1v3.errors import UserError

# the stage modules load datasets or torch (seconds each): imported by the commands that need them

VERDICTS = ("reproduced", "reversed", "within noise", "not run")


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


# ---------------------------------------------------------------------------------------------
# the findings table


def read_claims(path: Path) -> list[dict]:
    """The rows lib.sh's `claim` and `claim_spearman` wrote, one per seed (tab-separated)."""
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        cells = line.split("\t")
        if len(cells) != 9 or cells[0] not in ("paired", "spearman") or cells[4] not in ("+", "-", "=", "?"):
            raise UserError(f"{path} line {n}: not a claim row (kind, finding, label, paper, sign, seed, file, what, blind)")
        kind, finding, label, paper, sign, seed, file, what, blind = cells
        out.append({"kind": kind, "finding": finding, "label": label, "paper": paper, "sign": sign, "seed": seed,
                    "file": file, "what": what, "blind": blind})
    return out


def paired_figures(claim: dict) -> dict | None:
    """The comparison's group (before, after, interval, chance) from compare's JSON; None if not run."""
    path = Path(claim["file"])
    if not path.is_file() or not path.stat().st_size:
        return None
    result = json.loads(path.read_text())
    ref, _, group = claim["what"].partition("|")
    by, _, value = group.partition("=")
    for comp in result["comparisons"]:
        if comp["eval"].split("@")[0] != ref.split("@")[0]:
            continue
        for g in comp["groups"]:
            if (group in ("", "all") and g["by"] == "overall") or (g["by"] == by and g["value"] == value):
                return g | {"baseline": result["baseline"], "eval": comp["eval"]}
    raise UserError(f"{path}: no comparison of {ref} in group {group or 'all'}")


def blind_accuracy(store: Store, ref: str, group: str) -> float | None:
    """Accuracy of a blind eval (images blanked), overall or within one field=value group."""
    from stages import compare

    if not ref:
        return None
    try:
        art = store.resolve(ref, kind="eval")
    except UserError:
        return None
    scores = compare.item_scores(art)
    if group not in ("", "all"):
        by, _, value = group.partition("=")
        keep = {r["id"] for r in compare.evaluated_rows(store, art) if str(r.get(by) or "") == value}
        scores = {i: s for i, s in scores.items() if i in keep}
    return sum(scores.values()) / len(scores) if scores else None


def verdict(sign: str, seeds: list[tuple[float, float]], seeded: bool = True, distinct: int | None = None) -> str:
    """From each seed's paired interval (low, high) of after - before and the paper's direction.

    +/-: reproduced when every seed's interval excludes 0 on the paper's side, reversed when every one
    excludes it on the other side, else within noise. '=' (the paper: no harm): reproduced unless every
    seed is significantly worse (reversed); a claim of no change cannot be told from noise at all. '?' (no
    claim in the paper): higher, lower or within noise. A claim about training needs two seeds: with fewer
    than two distinct ones (`distinct`; by default one a comparison), a verdict other than within noise says
    so. Decoding modes of one fixed model (not `seeded`) have no training seed to vary: greedy decoding and
    the paired interval over items are the whole story."""
    if not seeds:
        return "not run"
    above = [low > 0 for low, _ in seeds]
    below = [high < 0 for _, high in seeds]
    if sign == "?":
        out = "higher" if all(above) else "lower" if all(below) else "within noise"
    elif sign == "=":
        out = "reversed" if all(below) else "reproduced"
    elif all(above):
        out = "reproduced" if sign == "+" else "reversed"
    elif all(below):
        out = "reproduced" if sign == "-" else "reversed"
    else:
        out = "within noise"
    if seeded and (len(seeds) if distinct is None else distinct) < 2 and out != "within noise":
        out += " in one seed (a claim needs two)"
    return out


def spearman_verdict(rho, p) -> str:
    if rho is None or p is None:
        return "not run"
    if p < 0.05:  # the checkpoints of one run: one seed, so never a claim on its own
        return ("reproduced" if rho > 0 else "reversed") + " in one run (a claim needs two)"
    return "within noise"


def findings_rows(store: Store, claims: list[dict]) -> list[dict]:
    """One row per (finding, comparison): every seed's figures and the verdict."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for c in claims:
        groups.setdefault((c["finding"], c["label"]), []).append(c)
    rows = []
    for (finding, label), cs in groups.items():
        row = {"finding": finding, "label": label, "paper": cs[0]["paper"], "ours": [], "chance": None, "blind": None}
        if cs[0]["kind"] == "spearman":
            sel = store.resolve(cs[0]["file"], kind="selection") if _exists(store, cs[0]["file"], "selection") else None
            s = sel.metrics["spearman"] if sel else {}
            rho, p = s.get("rho"), s.get("p_value")
            row["ours"] = [f"rho {rho:+.2f}, p {p:.2g} over {s['n']} checkpoints" if rho is not None
                           else (s.get("note") or "not run")]
            row["verdict"] = spearman_verdict(rho, p)
            rows.append(row)
            continue
        intervals, seeds = [], set()
        for c in cs:
            g = paired_figures(c)
            if g is None:
                continue
            intervals.append((g["low"], g["high"]))
            seeds.add(c["seed"])
            seed = "" if c["seed"] == "-" else f"s{c['seed']}: "
            row["ours"].append(f"{seed}{pct(g['a'])} -> {pct(g['b'])}, {100 * g['diff']:+.1f} "
                               f"[{100 * g['low']:+.1f}, {100 * g['high']:+.1f}] (n={g['n']})")
            row["chance"] = g["chance"]
            row["blind"] = blind_accuracy(store, c["blind"], c["what"].partition("|")[2])
        row["verdict"] = verdict(cs[0]["sign"], intervals, seeded=cs[0]["seed"] != "-", distinct=len(seeds))
        if not row["ours"]:
            row["ours"] = ["not run"]
        rows.append(row)
    return rows


def _exists(store: Store, ref: str, kind: str) -> bool:
    try:
        store.resolve(ref, kind=kind)
        return True
    except UserError:
        return False


def print_findings(rows: list[dict]) -> None:
    print("| finding | comparison | paper | ours: before -> after, after - before [95% paired CI] (seed) "
          "| chance | blind | verdict |")
    print("|---|---|---|---|---:|---:|---|")
    for r in rows:
        print(f"| {r['finding']} | {r['label']} | {r['paper']} | {'; '.join(r['ours'])} | {pct(r['chance'])} | "
              f"{pct(r['blind'])} | {r['verdict']} |")
    print("\naccuracy in %; blind: the after model (else the start) with every image blanked; an interval is a "
          "paired bootstrap over the same items (r1v3 compare); reproduced/reversed: every seed's interval excludes 0, "
          "and a claim about training needs two seeds; no seed: decoding modes of one fixed model")


# ---------------------------------------------------------------------------------------------
# training dynamics and repetition


def run_dynamics(store: Store, ref: str) -> dict:
    """Reward early and late, gradient norm spread and each phase's mean reward of one RL run."""
    art = store.resolve(ref, kind="run")
    log = json.loads(art.file("log_history.json").read_text())
    rewards = [h["reward"] for h in log if isinstance(h.get("reward"), (int, float))]
    norms = [h["grad_norm"] for h in log if isinstance(h.get("grad_norm"), (int, float)) and math.isfinite(h["grad_norm"])]
    q = max(1, len(rewards) // 4)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    gm = mean(norms)
    sd = math.sqrt(sum((x - gm) ** 2 for x in norms) / len(norms)) if norms else None
    m = art.metrics
    return {"run": art.ref, "trainable": "+".join(m.get("trainable") or []), "steps": m.get("steps"),
            "reward_first": mean(rewards[:q]), "reward_last": mean(rewards[-q:]),
            "grad_norm_mean": gm, "grad_norm_max": max(norms) if norms else None,
            "grad_norm_cv": sd / gm if gm else None,
            "phases": {p: v.get("mean reward") for p, v in (m.get("phases") or {}).items()}}


def print_dynamics(rows: list[dict]) -> None:
    num = lambda x, f=".3f": "n/a" if x is None else format(x, f)  # noqa: E731
    print("| run | trained | steps | reward, first quarter | reward, last quarter | mean reward per phase "
          "| grad norm mean | max | CV |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        phases = ", ".join(f"{p} {num(v)}" for p, v in r["phases"].items())
        print(f"| {r['run']} | {r['trainable']} | {r['steps']} | {num(r['reward_first'])} | {num(r['reward_last'])} | "
              f"{phases} | {num(r['grad_norm_mean'], '.3g')} | {num(r['grad_norm_max'], '.3g')} | {num(r['grad_norm_cv'], '.2f')} |")


def distinct_bigrams(text: str) -> float | None:
    words = text.split()
    pairs = list(zip(words, words[1:]))
    return len(set(pairs)) / len(pairs) if pairs else None


def repetition(store: Store, ref: str) -> dict:
    """How repetitive an eval's responses are (distill's zlib ratio; its filter's 4.0 marks a loop), how often
    they ran out of budget, and how many say a critical word."""
    from r1v3.entropy import DEFAULT_WORDS as words
    from stages import distill

    art = store.resolve(ref, kind="eval")
    preds = [json.loads(line) for line in art.file("predictions.jsonl").read_text().splitlines() if line.strip()]
    texts = [p.get("response") or "" for p in preds]
    ratios = [distill.compression_ratio(t) for t in texts]
    distinct = [d for d in map(distinct_bigrams, texts) if d is not None]
    n = len(preds) or 1
    return {"eval": art.ref, "n": len(preds), "acc": sum(bool(p.get("correct")) for p in preds) / n,
            "compression": sum(ratios) / n, "loops": sum(r > 4.0 for r in ratios) / n,
            "distinct_bigrams": sum(distinct) / len(distinct) if distinct else None,
            "truncated": sum(p.get("finish_reason") == "length" for p in preds) / n,
            "critical": sum(any(w in t for w in words) for t in texts) / n,
            "tokens": sum(p.get("n_tokens") or 0 for p in preds) / n}


def print_repetition(rows: list[dict]) -> None:
    print("| eval | n | accuracy | zlib ratio (mean) | share > 4 (loops) | distinct bigrams | truncated "
          "| says Wait/Alternatively/Hmm | tokens |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        d = "n/a" if r["distinct_bigrams"] is None else f"{r['distinct_bigrams']:.2f}"
        print(f"| {r['eval']} | {r['n']} | {pct(r['acc'])} | {r['compression']:.2f} | {pct(r['loops'])} | {d} | "
              f"{pct(r['truncated'])} | {pct(r['critical'])} | {r['tokens']:.0f} |")


def print_walltime(store: Store, refs: list[str]) -> None:
    print("| artifact | stage | made in (s) |\n|---|---|---:|")
    for ref in refs:
        art = store.resolve(ref)
        seconds = art.manifest.get("seconds")
        print(f"| {art.ref} | {art.manifest['stage']} | {'n/a' if seconds is None else f'{seconds:.0f}'} |")


def print_validation(store: Store, refs: list[str]) -> None:
    print("| model | trained | steps | validation loss, first -> kept (step) | stopped early |\n|---|---|---:|---|---|")
    for ref in refs:
        art = store.resolve(ref, kind="model")
        m = art.metrics
        curve = m.get("eval_loss_curve") or []
        first = f"{curve[0][1]:.4f} -> " if curve else ""
        kept = "n/a" if m.get("eval_loss") is None else f"{first}{m['eval_loss']:.4f} ({m.get('best_checkpoint_step')})"
        print(f"| {art.ref} | {'+'.join(m.get('trainable') or [])} | {m.get('steps')} | {kept} | "
              f"{'yes' if m.get('stopped_early') else 'no'} |")


# ---------------------------------------------------------------------------------------------
# critical-token entropy


def entropy_table(store: Store, ref: str) -> tuple[list[dict], dict]:
    """select-ckpt's figures per checkpoint, and Spearman's rho with probe accuracy of the critical-token
    entropy (the rule), the mean token entropy and the share of tokens above the high-entropy threshold (the
    literature's "top 20%" tokens), the last two measurable even where no critical word is left."""
    from r1v3 import stats

    sel = store.resolve(ref, kind="selection")
    table = sel.metrics["table"]
    out = {}
    for key in ("critical_entropy", "token_entropy", "high_entropy_share"):
        pairs = [(r[key], r["accuracy"]) for r in table if r.get(key) is not None]
        rho, p = (stats.spearman(*zip(*pairs)) if len(pairs) >= 2 else (math.nan, math.nan))
        out[key] = {"n": len(pairs), "rho": None if math.isnan(rho) else rho, "p": None if math.isnan(p) else p}
    return table, out


def print_entropy(table: list[dict], corr: dict, chosen: int) -> None:
    words = list(table[0]["per_word"])
    num = lambda x, f=".3f": "-" if x is None else format(x, f)  # noqa: E731
    print("| step | critical positions (" + " / ".join(words) + ") | critical H | token H | share > threshold "
          "| probe accuracy | format |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in table:
        counts = " / ".join(str(r["per_word"][w]["count"]) for w in words)
        mark = " (chosen)" if r["step"] == chosen else ""
        print(f"| {r['step']}{mark} | {r['critical_count']} ({counts}) | {num(r['critical_entropy'])} | "
              f"{num(r['token_entropy'])} | {pct(r['high_entropy_share'])} | {pct(r['accuracy'])} | {pct(r['format_rate'])} |")
    print("\n| entropy measure | checkpoints | Spearman rho with probe accuracy | p |")
    print("|---|---:|---:|---:|")
    for key, label in (("critical_entropy", "at critical words (select-ckpt's rule)"),
                       ("token_entropy", "mean over all tokens"), ("high_entropy_share", "share of high-entropy tokens")):
        c = corr[key]
        print(f"| {label} | {c['n']} | {num(c['rho'], '+.2f')} | {num(c['p'], '.2g')} |")


def best_step(store: Store, ref: str) -> int:
    """The best-on-validation choice: select-ckpt's own accuracy rule (guards, ties) over its table."""
    from stages import select_ckpt  # loads torch: only this command needs it
    sel = store.resolve(ref, kind="selection")
    return select_ckpt.choose(sel.metrics["table"], by="accuracy")["step"]


# ---------------------------------------------------------------------------------------------
# the budget curve


def budget_points(store: Store, refs: list[str]) -> list[tuple[int, dict]]:
    out = []
    for ref in refs:
        art = store.resolve(ref, kind="eval")
        out.append((int(art.manifest["config"]["max_new_tokens"]), repetition(store, ref)))
    return sorted(out, key=lambda p: p[0])


def budget(store: Store, path: Path, series: list[str], blind: str | None) -> None:
    from stages import compare

    curves = {}
    for s in series:
        label, sep, refs = s.partition("=")
        if not sep or not refs:
            raise UserError(f"a series is LABEL=EVAL,EVAL...: got {s!r}")
        curves[label] = budget_points(store, refs.split(","))
    first = store.resolve(series[0].partition("=")[2].split(",")[0], kind="eval")
    guess = compare.chance(compare.evaluated_rows(store, first))
    ids = compare.item_scores(first)
    chance = sum(guess[i] for i in ids if i in guess) / max(1, sum(i in guess for i in ids)) if guess else None
    blind_acc = blind_accuracy(store, blind or "", "all")
    print("| model | budget (new tokens) | accuracy | truncated | tokens used |\n|---|---:|---:|---:|---:|")
    for label, points in curves.items():
        for b, r in points:
            print(f"| {label} | {b} | {pct(r['acc'])} | {pct(r['truncated'])} | {r['tokens']:.0f} |")
    print(f"chance {pct(chance)}, blind {pct(blind_acc)}")
    with plots.figure(path, figsize=(6, 4)) as (fig, ax):
        for label, points in curves.items():
            ax.plot([b for b, _ in points], [100 * r["acc"] for _, r in points], marker="o", label=label)
        if chance is not None:
            ax.axhline(100 * chance, color="#888", ls=":", label="chance")
        if blind_acc is not None:
            ax.axhline(100 * blind_acc, color="#c44e52", ls="--", label="blind (images blanked)")
        ax.set_xscale("log", base=2)
        ticks = sorted({b for points in curves.values() for b, _ in points})
        ax.set_xticks(ticks, [str(b) for b in ticks])
        ax.set_xlabel("generation budget (max new tokens)")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", required=True)
    parser = argparse.ArgumentParser(prog="tables.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("findings", parents=[common]).add_argument("claims")
    p = sub.add_parser("require", parents=[common])
    p.add_argument("ref")
    p.add_argument("kind")
    sub.add_parser("dynamics", parents=[common]).add_argument("runs", nargs="+")
    sub.add_parser("repetition", parents=[common]).add_argument("evals", nargs="+")
    sub.add_parser("walltime", parents=[common]).add_argument("refs", nargs="+")
    sub.add_parser("validation", parents=[common]).add_argument("models", nargs="+")
    sub.add_parser("entropy", parents=[common]).add_argument("selection")
    sub.add_parser("best-step", parents=[common]).add_argument("selection")
    p = sub.add_parser("budget", parents=[common])
    p.add_argument("out")
    p.add_argument("series", nargs="+")
    p.add_argument("--blind")
    args = parser.parse_args(argv)
    store = Store(args.store)
    try:
        if args.command == "findings":
            print_findings(findings_rows(store, read_claims(Path(args.claims))))
        elif args.command == "require":
            if not _exists(store, args.ref, args.kind):
                raise UserError(f"no {args.kind} {args.ref} in {args.store}")
        elif args.command == "dynamics":
            print_dynamics([run_dynamics(store, r) for r in args.runs])
        elif args.command == "repetition":
            print_repetition([repetition(store, r) for r in args.evals])
        elif args.command == "walltime":
            print_walltime(store, args.refs)
        elif args.command == "validation":
            print_validation(store, args.models)
        elif args.command == "entropy":
            table, corr = entropy_table(store, args.selection)
            print_entropy(table, corr, store.resolve(args.selection, kind="selection").metrics["step"])
        elif args.command == "best-step":
            print(best_step(store, args.selection))
        else:
            budget(store, Path(args.out), args.series, args.blind)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
