#!/usr/bin/env bash
# Does GRPO raise held-out accuracy on the embedded default, and does the paper's curriculum help?
# Starts from a cold-start model (default: smol-reflect, SFT on `data synth --messages reflect` traces),
# runs `rl --curriculum none` and `rl --curriculum hard` on the same budget and seed, evaluates the start
# and both final models on the same held-out problems (both levels), and prints the gains with a paired
# bootstrap 95% interval over items. Then select-ckpt picks a checkpoint of the `none` run by
# critical-token entropy on the test split and that checkpoint is evaluated too.
#
# Usage: START=smol-cold bash recipes/smol-rl-signal.sh
#   (after a cold-start SFT, e.g. the one of recipes/smol/run.sh in the same store; R1V3_STORE picks the
#   store; DATA names the held-out problems, synthesized here when missing: 2500 colour and counting
#   problems of both levels with reflective traces, seed 1, of which the 250 of the validation split are
#   evaluated; TRAIN names the RL rows (default DATA; e.g. smol-rated, the recipe's `difficulty` output, with
#   DROP_UNSOLVED=1 to train only on problems the start model solved at least once); SELECT=0 skips
#   select-ckpt; see README "Does RL help?")
# Scaled to a 2-core CPU: group 4, 2 prompts a step (`rl --preset cpu-smol`), 64 new tokens (the longest
# reflective trace is 62), 40 steps, a learning rate above the paper's (2e-5, because tens of steps is
# all there is); select-ckpt probes 100 test rows.
set -euo pipefail
export R1V3_STORE=$(realpath -m "${R1V3_STORE:-$(dirname "$0")/../artifacts}")
cd "$(dirname "$0")/.."
R1V3=${R1V3:-.venv/bin/r1v3}
PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -c "import r1v3" 2>/dev/null || { echo "error: $PYTHON cannot import r1v3 (run ./setup.sh, or set PYTHON)" >&2; exit 2; }
export HF_HUB_OFFLINE=1
START=${START:-smol-reflect}
DATA=${DATA:-rl-problems}
STEPS=${STEPS:-40}
SAVE=${SAVE:-8}
LR=${LR:-2e-5}
MAX_NEW=${MAX_NEW:-64}
TRAIN=${TRAIN:-$DATA}
DROP_UNSOLVED=${DROP_UNSOLVED:-0}
SELECT=${SELECT:-1}
TIMES="$R1V3_STORE/smol-rl-signal-times.tsv"
: > "$TIMES"

timed() {
    local label=$1 t0=$SECONDS
    shift
    "$@"
    printf '%s\t%s\n' "$label" "$((SECONDS - t0))" >> "$TIMES"
}
evaluate() {  # evaluate MODEL NAME [extra]: validation split, reasoning prompt, greedy, MAX_NEW tokens
    local model=$1 name=$2
    shift 2
    timed "eval $name" $R1V3 eval mmmu --model "$model" --data "$DATA" --split validation --style reasoning \
        --temperature 0 --max-new-tokens "$MAX_NEW" --batch-size 16 --name "$name" --reuse "$@"
}

$R1V3 data synth --name "$DATA" --problems 2500 --seed 1 --tasks color,counting --messages reflect --reuse
evaluate "$START" rl-start
for mode in none hard; do
    extra=()
    [ "$mode" = hard ] && extra=(--curriculum-unit steps --curriculum-lengths "$((STEPS / 2)),$((STEPS - STEPS / 2))")
    [ "$DROP_UNSOLVED" = 1 ] && extra+=(--drop-unsolved)
    timed "rl $mode" $R1V3 rl --preset cpu-smol --model "$START" --data "$TRAIN" --curriculum "$mode" "${extra[@]}" \
        --max-steps "$STEPS" --save-steps "$SAVE" --lr "$LR" --max-new-tokens "$MAX_NEW" --name "rl-$mode" --reuse --resume
    timed "export $mode" $R1V3 rl export "rl-$mode" --name "rl-$mode-final" --reuse
    evaluate "rl-$mode-final" "rl-$mode-eval"
done
if [ "$SELECT" = 1 ]; then
    timed "select-ckpt" $R1V3 select-ckpt --run rl-none --probe "$DATA" --split test --base --temperature 1.0 \
        --max-new-tokens "$MAX_NEW" --limit 100 --name rl-none-selected --reuse --resume
    evaluate rl-none-selected-model rl-selected-eval
fi

"$PYTHON" - "$R1V3_STORE" "$TIMES" <<'EOF'
import json, random, sys
from pathlib import Path

from r1v3.artifacts import Store

store, times = Store(sys.argv[1]), [l.split("\t") for l in Path(sys.argv[2]).read_text().splitlines()]


def judged(name):
    rows = [json.loads(l) for l in store.resolve(name, kind="eval").file("predictions.jsonl").read_text().splitlines()]
    return {r["id"]: (int(r["correct"]), r["subject"], r["id"]) for r in rows}


def level(problems):
    from r1v3 import data
    return {r["id"]: r["difficulty"] for r in data.read_split(store.resolve(problems, kind="dataset").path, "validation")}


start = judged("rl-start")
levels = level(store.resolve("rl-start", kind="eval").manifest["config"]["data"])
print(f"| model | overall (n={len(start)}) | normal | hard | colour | counting | gain vs start [95% paired bootstrap] |")
print("|---|---:|---:|---:|---:|---:|---|")
rng = random.Random(0)
ids = sorted(start)
for label, name in [("start (cold-start SFT)", "rl-start"), ("rl --curriculum none", "rl-none-eval"),
                    ("rl --curriculum hard", "rl-hard-eval"), ("select-ckpt choice (none run)", "rl-selected-eval")]:
    if not store.versions(name):
        continue
    got = judged(name)
    acc = lambda keep: 100 * sum(got[i][0] for i in ids if keep(i)) / max(1, sum(1 for i in ids if keep(i)))  # noqa: E731
    diffs = [got[i][0] - start[i][0] for i in ids]
    boots = sorted(sum(rng.choice(diffs) for _ in ids) / len(ids) for _ in range(2000))
    gain = "" if name == "rl-start" else \
        f"{100 * sum(diffs) / len(ids):+.1f} pts [{100 * boots[50]:+.1f}, {100 * boots[1949]:+.1f}]"
    print(f"| {label} | {acc(lambda i: True):.1f}% | {acc(lambda i: levels[i] == 'normal'):.1f}% | "
          f"{acc(lambda i: levels[i] == 'hard'):.1f}% | {acc(lambda i: got[i][1] == 'color'):.1f}% | "
          f"{acc(lambda i: got[i][1] == 'counting'):.1f}% | {gain} |")
for mode in ("none", "hard"):
    run = store.resolve(f"rl-{mode}", kind="run")
    rewards = [r for _, r in run.metrics["reward_curve"]]
    k = max(1, len(rewards) // 3)
    print(f"rl-{mode}: mean reward, first {k} steps {sum(rewards[:k]) / k:.3f} -> last {k} steps "
          f"{sum(rewards[-k:]) / k:.3f}; {run.metrics['seconds_per_step']} s/step; phases {run.metrics['phases']}")
if store.versions("rl-none-selected"):
    sel = json.loads(store.resolve("rl-none-selected", kind="selection").file("selection.json").read_text())
    print("select-ckpt:", json.dumps(sel.get("choice"), default=str)[:400])
print("wall time:", ", ".join(f"{k} {v}s" for k, v in times))
EOF
