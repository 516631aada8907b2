#!/usr/bin/env bash
# Does GRPO raise held-out accuracy on the embedded default, beyond noise, in two seeds, and does it
# come from correctness? From one cold-start model, for each seed: `rl --curriculum none`,
# `rl --curriculum hard` (normal then hard, the paper's order) and the control `--accuracy-reward coin`
# (the accuracy reward replaced by a fair coin: what RL gives when the reward says nothing about being
# right), each on the same rows, steps and seed; then every final model and the start greedy on the
# same EVAL_N held-out items, and `r1v3 compare` against the start: chance, paired bootstrap 95% intervals and
# McNemar p, overall and by difficulty level and task. The start's blind score (images blanked) is
# compared the same way.
#
# Decided before the run: the primary figure is greedy accuracy on the test split, RL minus its start;
# a claim needs the interval above 0 in both seeds, and the coin control's interval must not be.
#
# Usage: START=smol-signal bash recipes/smol-rl-signal.sh
#   (after recipes/smol-signal.sh in the same store, or any cold-start model; R1V3_STORE picks the store)
# Knobs: SEEDS ("0 1"), ARMS ("none hard coin"), STEPS (40), LR (5e-6), GROUP (group size, 4), PROMPTS
#   (prompts a step, 2: rollouts a step = GROUP x PROMPTS), RL_FLAGS (more `rl` flags or trl.KEY=VALUE, e.g.
#   "--loss-type dr_grpo --scale-rewards none"), TAG (appended to the run names, so arms of a sweep
#   share a store: rl-none-s0-TAG), MAX_NEW (64 new tokens), PROBLEMS (12000 synthetic colour and counting problems, seed 1,
#   whose test split holds EVAL_N=1200 items; the blind start on the first BLIND_N of them, default all),
#   TRAIN (the RL rows; default DATA's train split; e.g. a `difficulty` output with
#   DROP="--drop-solved --drop-unsolved" to keep rows a group can learn from),
#   SAMPLES (>0: also evaluate each model at temperature 1, mean@SAMPLES, the paper's Avg@k).
# Time on 2 cores: about 12 min per RL run of 40 steps (group 4) and 12 min per greedy eval of 1200 items.
source "$(dirname "$0")/lib.sh"
export R1V3_REUSE=1
START=${START:-smol-signal}
DATA=${DATA:-rl-problems}
PROBLEMS=${PROBLEMS:-12000}
TRAIN=${TRAIN:-$DATA}
SEEDS=${SEEDS:-0 1}
ARMS=${ARMS:-none hard coin}
STEPS=${STEPS:-40}
SAVE=${SAVE:-10}
LR=${LR:-5e-6}
GROUP=${GROUP:-4}
PROMPTS=${PROMPTS:-2}
RL_FLAGS=${RL_FLAGS:-}
TAG=${TAG:+-$TAG}
MAX_NEW=${MAX_NEW:-64}
EVAL_N=${EVAL_N:-1200}
BLIND_N=${BLIND_N:-$EVAL_N}
SAMPLES=${SAMPLES:-0}
DROP=${DROP:-}

evaluate() {  # evaluate MODEL NAME [extra]: test split, reasoning prompt, greedy, MAX_NEW tokens
    local model=$1 name=$2
    shift 2
    $R1V3 eval mmmu --model "$model" --data "$DATA" --split test --limit "$EVAL_N" --style reasoning \
        --temperature 0 --max-new-tokens "$MAX_NEW" --batch-size 16 --name "$name" --resume "$@"
    if [ "$SAMPLES" -gt 0 ]; then
        $R1V3 eval mmmu --model "$model" --data "$DATA" --split test --limit "$EVAL_N" --style reasoning \
            --temperature 1 --samples "$SAMPLES" --max-new-tokens "$MAX_NEW" --batch-size 16 --name "$name-t1" --resume "$@"
    fi
}

for arm in $ARMS; do  # said now, not after the first arm's hour
    [[ " none hard coin " == *" $arm "* ]] || { echo "error: ARMS holds '$arm': use none, hard or coin" >&2; exit 2; }
done

$R1V3 data synth --name "$DATA" --problems "$PROBLEMS" --seed 1 --tasks color,counting --messages reflect
evaluate "$START" rl-start
evaluate "$START" rl-start-blind --blank-images --limit "$BLIND_N"  # a level, not a paired difference: fewer items do
evals=(rl-start)
for seed in $SEEDS; do
    for arm in $ARMS; do
        rl_arm "$arm" "$seed" "$TAG"  # recipes/lib.sh: the ablations run the same command
        evaluate "$RL_NAME-final" "$RL_NAME-eval"
        evals+=("$RL_NAME-eval")
    done
done

echo
echo "== blind: the start with every image blanked (what it scores without looking) =="
$R1V3 compare rl-start rl-start-blind --by difficulty
echo
echo "== each RL run against its start, greedy, $EVAL_N held-out items =="
$R1V3 compare "${evals[@]}" --by difficulty,subject
if [ "$SAMPLES" -gt 0 ]; then
    echo
    echo "== the same at temperature 1, mean@$SAMPLES per item =="
    $R1V3 compare "${evals[@]/%/-t1}" --by difficulty
fi
