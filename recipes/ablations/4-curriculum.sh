#!/usr/bin/env bash
# Finding 4 (Skywork-R1V3 section 5.3): the curriculum. Normal problems, then hard ones, raised the reward of
# the hard phase but lowered accuracy on normal problems (no table in the paper).
# Ours: per seed, `rl --curriculum none` (levels shuffled) against `--curriculum hard` (normal, then hard,
# half the steps each): the same runs and evals as recipes/smol-rl-signal.sh (reused from a store that ran
# it), compared on the same EVAL_N held-out items overall and within each level, and each run's mean
# training reward per phase.
#
# Usage: bash recipes/ablations/4-curriculum.sh   (after recipes/smol-signal.sh; knobs: lib.sh)
# Time on 2 cores at the defaults: ~2 h (per seed: two GRPO runs of 40 steps, ~11 min each, and two evals of
# 1200 items, ~12 min each; the start's two evals once); a minute or two after recipes/smol-rl-signal.sh.
FINDING=4
source "$(dirname "$0")/lib.sh"

problems
start_evals
runs=()
for seed in $SEEDS; do
    for arm in none hard; do
        rl_arm "$arm" "$seed"
        evaluate "$RL_NAME-final" "$RL_NAME-eval"
        runs+=("$RL_NAME")
    done
    compare_json "s$seed.json" "rl-none-s$seed-eval" "rl-hard-s$seed-eval"
    claim "s$seed.json" "rl-hard-s$seed-eval" "$seed" - "hard curriculum vs none, normal-level items" \
        "normal accuracy lowered" difficulty=normal
    claim "s$seed.json" "rl-hard-s$seed-eval" "$seed" + "hard curriculum vs none, hard-level items" \
        "hard-phase reward raised (training)" difficulty=hard
done
echo
echo "== training reward per phase (none has one phase, hard two) =="
ablations dynamics "${runs[@]}"
findings_table
