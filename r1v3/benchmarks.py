"""The benchmarks `r1v3 eval` scores: each one a module of r1v3 with its rows, its prompts and its scorer.

A benchmark module has
    NAME, STYLES, OFFICIAL_BUDGET   its display name, prompt styles, and the token budget of its own prompt
    request(row, style)             the generation request of one row; a row it cannot take is a UserError
    judge(row, response, style, **options)
                                    one response scored: a record with at least id, correct, parse_failure
    aggregate(records)              the scores: "overall" {"acc", "n"}, "parse_failures" {"n", "rate"}, and
                                    the benchmark's own breakdown in the layout of its official scripts
    load_responses(path), judge_responses(rows, style, **options)
                                    `--responses`: saved outputs in its official layout, re-scored
    GROUPS                          (scores key, label) of the breakdown tables; the chart shows the first
    JSON_KEYS                       what `eval ... --json` prints (with mean@k and pass@k)
    print_scores(scores, console)   the terminal table
    subject_name(name)              a `--subjects` name as its rows spell it
and an import stage (`r1v3 data NAME`). `stages/evaluate.py` runs every benchmark the same way (a
Config subclass per benchmark); `r1v3/cli.py` registers the two commands.
"""

from __future__ import annotations

from r1v3.errors import UserError

NAMES = ("mmmu", "mathvista")


def get(name: str):
    # each module named in full: a benchmark name read from a manifest never chooses what is imported
    if name == "mmmu":
        from r1v3 import mmmu

        return mmmu
    if name == "mathvista":
        from r1v3 import mathvista

        return mathvista
    raise UserError(f"unknown benchmark {name!r}; expected one of {', '.join(NAMES)}")


def of_stage(stage) -> object:
    """The benchmark an eval artifact's stage scored (`eval-mathvista`); MMMU for any other."""
    name = stage.removeprefix("eval-") if isinstance(stage, str) else ""
    return get(name if name in NAMES else "mmmu")


def groups(benchmark, scores: dict) -> list[tuple[str, dict[str, tuple]]]:
    """The breakdown tables of a scores dict as (label, {name: (accuracy, n)}), empty ones left
    out. Read defensively: scores.json of an artifact is anyone's text."""
    out = []
    for key, label in benchmark.GROUPS:
        group = scores.get(key) if isinstance(scores, dict) else None
        if not isinstance(group, dict):
            continue
        rows = {str(name): (g.get("acc", g.get("accuracy")), g.get("n", g.get("total")))
                for name, g in group.items() if isinstance(g, dict)}
        if rows:
            out.append((label, rows))
    return out


def print_overall(table, scores: dict, console) -> None:
    """What every benchmark's score printer ends with: the overall row, the table, then parse failures
    and, with several samples per item, mean@k and pass@k."""
    o = scores["overall"]
    table.add_row("[bold]Overall[/bold]", str(o["n"]), f"[bold]{100 * o['acc']:.1f}[/bold]")
    console.print(table)
    k = scores.get("samples", 1)
    pf = scores["parse_failures"]
    extra = f"  mean@{k} {100 * scores[f'mean@{k}']:.1f}  pass@{k} {100 * scores[f'pass@{k}']:.1f}" if k > 1 else ""
    console.print(f"parse failures: {pf['n']} ({100 * pf['rate']:.1f}%){extra}")
