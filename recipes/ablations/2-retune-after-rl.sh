#!/usr/bin/env bash
# Finding 2 (Skywork-R1V3 section 3.4, Table 2): what to re-tune after RL. MMMU: the RL model 74.5; connector
# only 76.0; connector + LLM 73.2; connector + vision tower + LLM 69.7 (10K samples, 2 epochs, lr 1e-5 cosine,
# early stopping on validation loss).
# Ours: per seed, from the RL model (`rl --curriculum hard` from START, shared with findings 1, 3 and 4), the
# three re-tunes (`sft --preset connector-retune --trainable connector | connector+llm | all`) on the same
# rows (RETUNE_DATA: RETUNE_N fresh reflective problems, 80% train, 10% validation), the same steps and lr,
# validation loss every EVAL_STEPS with early stopping (`--eval-split validation --early-stopping-patience`),
# each evaluated on the same EVAL_N held-out items and with its images blanked (its own blind score).
#
# Usage: bash recipes/ablations/2-retune-after-rl.sh   (after recipes/smol-signal.sh; knobs: lib.sh and below)
# Knobs: RETUNE_DATA (retune-problems), RETUNE_N (1000), RETUNE_STEPS (40), RETUNE_LR (1e-5, the paper's),
#   EVAL_STEPS (10), PATIENCE (2).
# Time on 2 cores at the defaults: ~4 h; ~3.3 h when the RL runs and their evals are reused (findings 1, 3, 4 or
# recipes/smol-rl-signal.sh). Per seed: GRPO ~11 min; three re-tunes of 40 steps at ~6, ~12 and ~12 s a step,
# plus up to four validation passes of 100 rows each (~2 min a run); seven evals of 1200 items, ~12 min each.
FINDING=2
source "$(dirname "$0")/lib.sh"
RETUNE_DATA=${RETUNE_DATA:-retune-problems}
RETUNE_N=${RETUNE_N:-1000}
RETUNE_STEPS=${RETUNE_STEPS:-40}
RETUNE_LR=${RETUNE_LR:-1e-5}
EVAL_STEPS=${EVAL_STEPS:-10}
PATIENCE=${PATIENCE:-2}

problems
$R1V3 data synth --name "$RETUNE_DATA" --problems "$RETUNE_N" --seed 3 --tasks color,counting --messages reflect
declare -A PAPER=([connector]="74.5 -> 76.0 (+1.5)" [connector+llm]="74.5 -> 73.2 (-1.3)" [all]="74.5 -> 69.7 (-4.8)")
declare -A SIGN=([connector]=+ [connector+llm]=- [all]=-)
for seed in $SEEDS; do
    rl_arm hard "$seed"
    rl_model=$RL_NAME-final
    evaluate "$rl_model" "$RL_NAME-eval"
    evals=()
    retuned=()
    for parts in connector connector+llm all; do
        name="retune-${parts//+/-}-s$seed"
        $R1V3 sft --preset connector-retune --model "$rl_model" --data "$RETUNE_DATA" --trainable "$parts" \
            --lr "$RETUNE_LR" --max-steps "$RETUNE_STEPS" --eval-split validation --eval-steps "$EVAL_STEPS" \
            --save-steps "$EVAL_STEPS" --early-stopping-patience "$PATIENCE" --seed "$seed" --name "$name" --resume
        evaluate "$name" "$name-eval"
        evaluate "$name" "$name-blind" --blank-images
        evals+=("$name-eval")
        retuned+=("$name")
    done
    echo
    echo "== seed $seed: the re-tunes' validation loss (early stopping keeps the best checkpoint) =="
    ablations validation "${retuned[@]}"
    compare_json "rl-s$seed.json" "$RL_NAME-eval" "${evals[@]}"
    for parts in connector connector+llm all; do
        name="retune-${parts//+/-}-s$seed"
        claim "rl-s$seed.json" "$name-eval" "$seed" "${SIGN[$parts]}" "re-tune $parts vs the RL model" \
            "${PAPER[$parts]}" all "$name-blind"
    done
done
findings_table
