"""The tables the signal recipes end with (they read the store only). Paired comparisons of evals
are `r1v3 compare`.

    python -m recipes.signal_tables signal STORE TIMES
        recipes/smol-signal.sh: held-out accuracy of the untrained, aligned and trained smol and of the
        trained one blind, next to chance, per task; then each stage's wall time (TIMES)
    python -m recipes.signal_tables distill STORE TIMES
        recipes/smol-distill-signal.sh: each teacher's pass rate and kept traces, then the cold start on
        distilled traces against the one on the generator's traces, with its blind score
    python -m recipes.signal_tables headroom STORE GREEDY_EVAL RATED_DATASET
        before RL: per task x level, greedy accuracy (an eval), mean@k, pass@k and the share of rows with a
        pass rate in [0.1, 0.9] (a `difficulty` run's pass_rates.jsonl on the same rows): where sampling
        finds answers greedy decoding misses, which is where GRPO at this scale can act
"""
import argparse
import json
from collections import defaultdict
from pathlib import Path

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


def scores(store, name):
    return json.loads(store.resolve(name, kind="eval").file("scores.json").read_text())


def times_of(path) -> list[list[str]]:
    """recipes/lib.sh's `timed` lines: label, artifact names, seconds."""
    return [line.split("\t") for line in Path(path).read_text().splitlines() if line.strip()]


def signal(store, times_path):
    problems = store.resolve("signal-problems", kind="dataset").path
    # chance: a uniform guess among the options (multiple choice), or among the answers the task ever has (open)
    open_answers = defaultdict(set)
    for split in ("train", "validation", "test"):
        for r in data.read_split(problems, split):
            if r["question_type"] == "open":
                open_answers[r["subject"]].add(r["answer"])
    chance = defaultdict(list)
    for r in data.read_split(problems, "validation"):
        p = 1 / len(r["options"]) if r["question_type"] == "multiple-choice" else 1 / len(open_answers[r["subject"]])
        chance[r["subject"]].append(p)
        chance["overall"].append(p)
    rows = [("chance", {k: sum(v) / len(v) for k, v in chance.items()}, None)]
    for label, name in (("untrained smol", "signal-untrained"), ("aligned (captions, connector only)", "signal-aligned"),
                        ("aligned + SFT on problems", "signal-trained"), ("the same, images blanked", "signal-trained-blind")):
        s = scores(store, name)
        rows.append((label, {"overall": s["overall"]["acc"], **{k: v["acc"] for k, v in s["subjects"].items()}},
                     s["parse_failures"]))
    tasks = sorted(k for k in chance if k != "overall")
    print(f"\n| model | overall (n={len(chance['overall'])}) | " + " | ".join(tasks) + " | parse failures |")
    print("|---|---:|" + "---:|" * len(tasks) + "---:|")
    for label, acc, failures in rows:
        cells = [f"{acc['overall'] * 100:.0f}%"] + [f"{acc[t] * 100:.0f}%" for t in tasks]
        print(f"| {label} | " + " | ".join(cells) + f" | {'' if failures is None else failures['n']} |")
    times = times_of(times_path)
    print("\n| stage | wall time (s) |\n|---|---:|")
    for label, _, seconds in times:
        print(f"| {label} | {seconds} |")
    print(f"| total | {sum(int(s) for _, _, s in times)} |")


def distill(store, times_path):
    print("\n| teacher | problems | outputs | pass rate | chance | colour | counting | problems with a kept trace | kept |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, name in (("packaged SmolLM2-135M", "traces-smol"), ("SmolLM2 taught on captions", "traces-taught")):
        if not store.versions(name):  # nothing kept, nothing published: the report is in the work directory's attempts
            print(f"| {label} | | | | | | | 0 | 0 |")
            continue
        m = store.resolve(name, kind="dataset").metrics
        subj = {k: f"{100 * v['verified'] / max(1, v['outputs']):.0f}%" for k, v in m["subjects"].items()}
        kept_problems = sum(g["problems_kept"] for g in m["subjects"].values())
        problems = sum(g["problems"] for g in m["subjects"].values())
        print(f"| {label} | {problems} | {m['outputs']} | {100 * m['pass_rate']:.1f}% | {100 * m['chance_rate']:.1f}% | "
              f"{subj.get('color', '')} | {subj.get('counting', '')} | {kept_problems} | {m['kept']} |")
    print("\n| cold start (150 steps from smol-aligned) | overall | colour | counting | blind |")
    print("|---|---:|---:|---:|---:|")
    for label, name, blind in (("generator's brief traces (smol-signal.sh)", "signal-trained", "signal-trained-blind"),
                               ("distilled traces (taught teacher)", "signal-distilled", "signal-distilled-blind")):
        s = scores(store, name)
        b = scores(store, blind) if store.versions(blind) else None
        cells = [f"{100 * s['overall']['acc']:.0f}%"] + [f"{100 * s['subjects'][t]['acc']:.0f}%" for t in ("color", "counting")]
        blind_cell = f"{100 * b['overall']['acc']:.0f}%" if b else ""
        print(f"| {label} (n={s['overall']['n']}) | " + " | ".join(cells) + f" | {blind_cell} |")
    print(f"aligned model before any SFT: {100 * scores(store, 'signal-aligned')['overall']['acc']:.0f}%")
    print("wall time:", ", ".join(f"{label} {seconds}s" for label, _, seconds in times_of(times_path)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="table", required=True)
    for name in ("signal", "distill"):
        p = sub.add_parser(name)
        p.add_argument("store")
        p.add_argument("times")
    p = sub.add_parser("headroom")
    for arg in ("store", "greedy_eval", "rated_dataset"):
        p.add_argument(arg)
    args = parser.parse_args(argv)
    store = Store(args.store)
    if args.table == "headroom":
        headroom(store, args.greedy_eval, args.rated_dataset)
    else:
        {"signal": signal, "distill": distill}[args.table](store, args.times)


if __name__ == "__main__":
    main()
