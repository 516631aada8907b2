#!/usr/bin/env bash
# Finding 1 (Skywork-R1V3 section 6.1, Table 3): from the same cold start, RL beats SFT on distilled traces
# (MMMU: start 68.1, RL 74.5, SFT 65.4; MathVista 71.3 / 77.2 / 75.9).
# Ours: from START, per seed, GRPO (`rl --curriculum hard`, the RL-signal settings) on the RL rows against SFT
# (connector + LLM) on the same rows' traces for about the same wall clock (STEPS GRPO steps at ~16 s against
# SFT_STEPS SFT steps at ~12 s: ~11 min each at the defaults), all on the same EVAL_N held-out items of the
# trained tasks (colour, counting) and on a task neither saw (TRANSFER_TASK, spatial: the paper's transfer
# claim; its rows come from another `data synth`, TRANSFER_N problems, 10% of them held out).
#
# Usage: bash recipes/ablations/1-rl-vs-sft.sh   (after recipes/smol-signal.sh; knobs: lib.sh and below)
# Knobs: SFT_STEPS (50), SFT_LR (1e-5, the paper's SFT rate), TRANSFER_TASK (spatial), TRANSFER_N (3000).
# Time on 2 cores at the defaults, nothing reused: ~2.3 h (2 x 11 min GRPO, 2 x 10 min SFT, 6 evals of 1200
# items at ~12 min, 6 of 300 transfer items at ~3 min); after recipes/smol-rl-signal.sh in the same store,
# whose RL runs and evals are these, ~1.1 h.
FINDING=1
source "$(dirname "$0")/lib.sh"
SFT_STEPS=${SFT_STEPS:-50}
SFT_LR=${SFT_LR:-1e-5}
TRANSFER_TASK=${TRANSFER_TASK:-spatial}
TRANSFER_N=${TRANSFER_N:-3000}
TRANSFER=transfer-$TRANSFER_TASK

problems
$R1V3 data synth --name "$TRANSFER" --problems "$TRANSFER_N" --seed 2 --tasks "$TRANSFER_TASK" --messages reflect
start_evals
evaluate_on "$TRANSFER" "$START" "$TRANSFER-start"
evaluate_on "$TRANSFER" "$START" "$TRANSFER-start-blind" --blank-images
trained=()
for seed in $SEEDS; do
    rl_arm hard "$seed"
    evaluate "$RL_NAME-final" "$RL_NAME-eval"
    evaluate_on "$TRANSFER" "$RL_NAME-final" "$RL_NAME-$TRANSFER"
    sft="sft-same-rows-s$seed"
    $R1V3 sft --model "$START" --data "$TRAIN" --trainable connector+llm --lr "$SFT_LR" --max-steps "$SFT_STEPS" \
        --batch-size 8 --save-steps "$SFT_STEPS" --seed "$seed" --name "$sft" --resume
    evaluate "$sft" "$sft-eval"
    trained+=("$RL_NAME" "$sft")
    evaluate_on "$TRANSFER" "$sft" "$sft-$TRANSFER"
    compare_json "start-s$seed.json" rl-start "$RL_NAME-eval" "$sft-eval"
    compare_json "sft-s$seed.json" "$sft-eval" "$RL_NAME-eval"
    compare_json "transfer-start-s$seed.json" "$TRANSFER-start" "$RL_NAME-$TRANSFER" "$sft-$TRANSFER"
    compare_json "transfer-sft-s$seed.json" "$sft-$TRANSFER" "$RL_NAME-$TRANSFER"
    claim "start-s$seed.json" "$RL_NAME-eval" "$seed" + "RL vs start (trained tasks)" "68.1 -> 74.5 (+6.4)"
    claim "start-s$seed.json" "$sft-eval" "$seed" - "SFT vs start (trained tasks)" "68.1 -> 65.4 (-2.7)"
    claim "sft-s$seed.json" "$RL_NAME-eval" "$seed" + "RL vs SFT (trained tasks)" "65.4 vs 74.5 (+9.1)"
    claim "transfer-start-s$seed.json" "$RL_NAME-$TRANSFER" "$seed" + "RL vs start ($TRANSFER_TASK, unseen)" \
        "MathVista 71.3 -> 77.2 (+5.9)" all "$TRANSFER-start-blind"
    claim "transfer-start-s$seed.json" "$sft-$TRANSFER" "$seed" + "SFT vs start ($TRANSFER_TASK, unseen)" \
        "MathVista 71.3 -> 75.9 (+4.6)" all "$TRANSFER-start-blind"
    claim "transfer-sft-s$seed.json" "$RL_NAME-$TRANSFER" "$seed" + "RL vs SFT ($TRANSFER_TASK, unseen)" \
        "MathVista 75.9 vs 77.2 (+1.3)" all "$TRANSFER-start-blind"
done
echo
echo "== the budget: what each training took (the same wall clock is the comparison's premise) =="
ablations walltime "${trained[@]}"
findings_table
