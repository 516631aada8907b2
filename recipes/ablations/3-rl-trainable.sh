#!/usr/bin/env bash
# Finding 3 (Skywork-R1V3 section 5.2): freezing the connector during RL collapses training (the reward
# drops, the gradient norm turns unstable, the output repeats itself); freezing the vision tower does not.
# Ours: per seed, `rl --trainable llm` (connector frozen) against the default connector+llm (vision frozen)
# and all, same rows, steps and seed: held-out accuracy on the same EVAL_N items (paired), then the reward
# early and late, the gradient norm's mean, maximum and coefficient of variation from each run's log, and
# the repetition of its held-out answers (distill's zlib compression ratio, distinct bigrams).
#
# Usage: bash recipes/ablations/3-rl-trainable.sh   (after recipes/smol-signal.sh; knobs: lib.sh)
# Time on 2 cores at the defaults: ~2.7 h (per seed: three GRPO runs of 40 steps, ~11 min each, and three evals
# of 1200 items, ~12 min each; the start's two evals once); ~1.5 h when the connector+llm runs, their evals and
# the start's are reused (findings 1, 2, 4 or recipes/smol-rl-signal.sh).
FINDING=3
source "$(dirname "$0")/lib.sh"

problems
start_evals
runs=()
evals=()
for seed in $SEEDS; do
    rl_arm hard "$seed"
    base=$RL_NAME
    evaluate "$base-final" "$base-eval"
    runs+=("$base")
    evals+=("$base-eval")
    for parts in llm all; do
        rl_arm hard "$seed" "-$parts" --trainable "$parts"
        evaluate "$RL_NAME-final" "$RL_NAME-eval"
        runs+=("$RL_NAME")
        evals+=("$RL_NAME-eval")
    done
    compare_json "s$seed.json" "$base-eval" "$base-llm-eval" "$base-all-eval"
    claim "s$seed.json" "$base-llm-eval" "$seed" - "RL with the connector frozen (llm) vs connector+llm" \
        "collapse: reward drops, unstable gradient norm, repetition"
    claim "s$seed.json" "$base-all-eval" "$seed" = "RL training the vision tower too (all) vs connector+llm" \
        "no collapse (vision frozen or not)"
done
echo
echo "== training: reward early and late, gradient norm (connector+llm, llm, all per seed) =="
ablations dynamics "${runs[@]}"
echo
echo "== held-out answers: how repetitive (a zlib ratio above 4 is a loop) =="
ablations repetition rl-start "${evals[@]}"
findings_table
