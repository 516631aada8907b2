"""Headroom and paired comparison tables for the RL signal runs (reads the store only; see
recipes/RESULTS-rl-signal.md).

    python recipes/rl_signal_tables.py headroom STORE GREEDY_EVAL RATED_DATASET
        per task x level: greedy accuracy (an eval), mean@k, pass@k and the share of rows with a
        pass rate in [0.1, 0.9] (a `difficulty` run's pass_rates.jsonl on the same rows)
    python recipes/rl_signal_tables.py compare STORE START_EVAL OTHER_EVAL [OTHER_EVAL ...]
        accuracy per level and task, the gain over the start with a paired bootstrap 95% interval
        (2000 resamples, seed 0, as recipes/smol-rl-signal.sh), the flips and an exact McNemar p
"""
import json
import math
import random
import sys
from collections import defaultdict

from r1v3 import data, rewards
from r1v3.artifacts import Store


def rows_of(store, eval_name):
    art = store.resolve(eval_name, kind="eval")
    ds = store.resolve(art.manifest["config"]["data"], kind="dataset")
    split = art.manifest["config"]["split"]
    return {r["id"]: r for r in data.read_split(ds.path, split)}, art


def predictions(art):
    return [json.loads(l) for l in art.file("predictions.jsonl").read_text().splitlines()]


def headroom(store, greedy_name, rated_name):
    rows, art = rows_of(store, greedy_name)
    greedy = {p["id"]: p for p in predictions(art)}
    # the reward's rule on the same greedy text, to show the eval's and the reward's judgments agree
    disagree = 0
    for i, p in greedy.items():
        r = rows[i]
        acc = rewards.accuracy([None], [p["response"]], answer=[r["answer"]], question_type=[r["question_type"]],
                               options=[list(r["options"])])[0]
        disagree += (acc == 1.0) != bool(p["correct"])
    rated = store.resolve(rated_name, kind="dataset")
    verdicts = [json.loads(l) for l in rated.file("pass_rates.jsonl").read_text().splitlines()]
    verdicts = {v["id"]: v for v in verdicts if v["id"] in greedy}
    assert len(verdicts) == len(greedy), (len(verdicts), len(greedy))
    buckets = defaultdict(list)
    for i, v in verdicts.items():
        r = rows[i]
        key = (r["subject"], r["difficulty"])
        item = (int(greedy[i]["correct"]), v["pass_rate"], any(v["correct"]), len(v["correct"]),
                r["question_type"], greedy[i].get("n_tokens"), greedy[i].get("finish_reason"))
        for k in (key, (r["subject"], "all"), ("all", r["difficulty"]), ("all", "all")):
            buckets[k].append(item)
    k = len(next(iter(verdicts.values()))["correct"])
    print(f"greedy responses judged by the eval and by the accuracy reward: {disagree} disagreements of {len(greedy)}")
    print(f"\n| task | level | n | greedy | mean@{k} (T=1) | pass@{k} (T=1) | pass@{k} - greedy | "
          f"share with {k}-sample pass rate in [0.1, 0.9] | solved by all {k} | by none |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    order = sorted(buckets, key=lambda t: (t[0] == "all", t[0], t[1] == "all", t[1]))
    for key in order:
        items = buckets[key]
        n = len(items)
        g = 100 * sum(x[0] for x in items) / n
        m = 100 * sum(x[1] for x in items) / n
        pk = 100 * sum(x[2] for x in items) / n
        mid = 100 * sum(0.1 <= x[1] <= 0.9 for x in items) / n
        allr = 100 * sum(x[1] >= 1 for x in items) / n
        none = 100 * sum(x[1] <= 0 for x in items) / n
        b = "**" if "all" in key else ""
        print(f"| {b}{key[0]}{b} | {b}{key[1]}{b} | {n} | {g:.1f}% | {m:.1f}% | {pk:.1f}% | {pk - g:+.1f} | {mid:.0f}% | "
              f"{allr:.0f}% | {none:.0f}% |")
    lengths = [p.get("n_tokens") for p in greedy.values() if p.get("n_tokens") is not None]
    cut = sum(p.get("finish_reason") == "length" for p in greedy.values())
    if lengths:
        print(f"\ngreedy completion tokens: mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}; "
              f"{cut} of {len(greedy)} stopped at the token limit")


def mcnemar_p(b, c):
    """Exact two-sided McNemar (binomial on the discordant pairs)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    p = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * p)


def compare(store, start_name, others):
    rows, art = rows_of(store, start_name)
    def judged(name):
        preds = predictions(store.resolve(name, kind="eval"))
        out = defaultdict(list)
        for p in preds:
            out[p["id"]].append(int(p["correct"]))
        return {i: sum(v) / len(v) for i, v in out.items()}
    start = judged(start_name)
    ids = sorted(start)
    groups = {"overall": lambda i: True}
    for lv in ("normal", "hard"):
        groups[lv] = lambda i, lv=lv: rows[i]["difficulty"] == lv
    for t in sorted({r["subject"] for r in rows.values()}):
        groups[t] = lambda i, t=t: rows[i]["subject"] == t
    header = " | ".join(f"{g} (n={sum(1 for i in ids if f(i))})" for g, f in groups.items())
    print(f"| model | {header} | minus start [95% paired bootstrap] | flips (+/-) | McNemar p |")
    print("|---|" + "---:|" * len(groups) + "---|---|---:|")
    for name in [start_name] + others:
        got = judged(name)
        assert set(got) == set(start), name
        cells = [f"{100 * sum(got[i] for i in ids if f(i)) / max(1, sum(1 for i in ids if f(i))):.1f}%"
                 for f in groups.values()]
        extra = " | | | "
        if name != start_name:
            rng = random.Random(0)
            diffs = [got[i] - start[i] for i in ids]
            boots = sorted(sum(rng.choice(diffs) for _ in ids) / len(ids) for _ in range(2000))
            up = sum(1 for d in diffs if d > 0)
            down = sum(1 for d in diffs if d < 0)
            extra = (f" | {100 * sum(diffs) / len(ids):+.1f} pts [{100 * boots[50]:+.1f}, {100 * boots[1949]:+.1f}] | "
                     f"+{up} / -{down} | {mcnemar_p(up, down):.3f} ")
        print(f"| {name} | " + " | ".join(cells) + extra + "|")


if __name__ == "__main__":
    store = Store(sys.argv[2])
    if sys.argv[1] == "headroom":
        headroom(store, sys.argv[3], sys.argv[4])
    else:
        compare(store, sys.argv[3], sys.argv[4:])
