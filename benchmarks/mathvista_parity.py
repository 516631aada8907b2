"""Re-score the official MathVista outputs and compare with the official scores files.

    python benchmarks/mathvista_parity.py DIR [--markdown]

DIR is a local copy of the `results/` folder of github.com/lupantech/MathVista (or the whole
repository). Every `output_X.json` is re-scored from its `extraction` fields by r1v3's
port of `evaluation/calculate_score.py` (what `r1v3 eval mathvista --responses FILE` runs), and
compared with `scores_X.json` beside it: the overall numbers and every per-category number
(correct, total, and the accuracy as the file writes it), under each of the two integer rules
(mathvista.INTEGER_RULES: the published files were scored by two versions of the script). Published files write accuracies as
percentage strings with two decimals (the first version of the script: "48.70", and the
average as "34.8"); newer ones as fractions; both are read. Exit 1 if a file matches under neither rule.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from r1v3 import jsonio, mathvista  # noqa: E402


def _same_accuracy(published, correct: int, total: int, average: bool) -> bool:
    if isinstance(published, str):  # the first calculate_score.py: percentages as text
        ours = str(round(correct / total * 100, 2)) if average else "{:.2f}".format(correct / total * 100)
        return ours == published
    return published == correct / total


def compare(output: Path, scores_file: Path, integer: str) -> dict:
    rows = mathvista.load_responses(output)
    scores = mathvista.aggregate(mathvista.judge_responses(rows, integer=integer))
    published = jsonio.read(scores_file)
    checked, differ = 0, []
    avg = published["average"]
    ours = scores["average"]
    if not (avg["correct"] == ours["correct"] and avg["total"] == ours["total"]
            and _same_accuracy(avg["accuracy"], ours["correct"], ours["total"], True)):
        differ.append(f"average: official {avg}, ours {ours}")
    for key in mathvista.BREAKDOWN:
        theirs, mine = published.get(key, {}), scores[key]
        for name in sorted(set(theirs) | set(mine)):
            checked += 1
            t, m = theirs.get(name), mine.get(name)
            if t is None or m is None or t["correct"] != m["correct"] or t["total"] != m["total"] \
                    or not _same_accuracy(t["accuracy"], m["correct"], m["total"], False):
                differ.append(f"{key}/{name}: official {t}, ours {m}")
    return {"model": output.stem.removeprefix("output_"), "n": ours["total"], "official": avg["accuracy"],
            "ours": 100 * ours["correct"] / ours["total"], "categories": checked, "differ": differ}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="the official results/ folder (or the repository)")
    parser.add_argument("--markdown", action="store_true", help="print the README table")
    args = parser.parse_args(argv)
    root = args.dir / "results" if (args.dir / "results").is_dir() else args.dir
    outputs = sorted(root.glob("*/output_*.json"))
    if not outputs:
        print(f"{root}: no */output_*.json files", file=sys.stderr)
        return 2
    results, unpaired = [], []
    for output in outputs:
        scores_file = output.with_name(output.name.replace("output_", "scores_", 1))
        if not scores_file.is_file():
            unpaired.append(output.name)
            continue
        results.append({rule: compare(output, scores_file, rule) for rule in mathvista.INTEGER_RULES})
    if args.markdown:
        print("| outputs | official overall | ours, `--integer-answers float` | ours, `int` | per-category numbers (74) |")
        print("|---|---:|---:|---:|---|")
    failed = False
    for by_rule in results:
        exact = [rule for rule, r in by_rule.items() if not r["differ"]]
        best = by_rule[exact[0]] if exact else min(by_rule.values(), key=lambda r: len(r["differ"]))
        failed |= not exact
        verdict = (f"all match with {' and '.join(exact)}" if exact else
                   f"{len(best['differ'])} of {best['categories']} differ with either rule")
        r = by_rule["float"]
        if args.markdown:
            print(f"| {r['model']} | {r['official']} | {r['ours']:.1f} | {by_rule['int']['ours']:.1f} | {verdict} |")
        else:
            print(f"{r['model']:46} official {r['official']:>5}  ours float {r['ours']:5.1f}  int "
                  f"{by_rule['int']['ours']:5.1f}  {verdict}")
            for line in ([] if exact else best["differ"][:6]):
                print(f"    {line}")
    for name in unpaired:
        print(f"(no scores file beside {name})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
