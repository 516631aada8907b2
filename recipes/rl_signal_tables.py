"""Headroom of a cold-start model before RL (reads the store only): where sampling finds answers that
greedy decoding misses, which is where GRPO at this scale can act. Paired comparisons of evals are
`r1v3 compare`.

    python recipes/rl_signal_tables.py headroom STORE GREEDY_EVAL RATED_DATASET
        per task x level: greedy accuracy (an eval), mean@k, pass@k and the share of rows with a
        pass rate in [0.1, 0.9] (a `difficulty` run's pass_rates.jsonl on the same rows)
"""
import json
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


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "headroom":
        sys.exit("usage: python recipes/rl_signal_tables.py headroom STORE GREEDY_EVAL RATED_DATASET")
    headroom(Store(sys.argv[2]), sys.argv[3], sys.argv[4])
