#!/usr/bin/env bash
# Does the recipe teach the embedded default to see? On a 2-core CPU in about 35 minutes:
# connector-only alignment on captions (R1V), then SFT on problems, then held-out accuracy of the
# untrained, aligned and trained models by the official MMMU rules, next to chance and to the trained
# model with every image blanked (what it scores without looking).
#
# Usage: bash recipes/smol-signal.sh   (after ./setup.sh; R1V3_STORE picks the store, default: the repository's artifacts/)
#
# Scaled to a CPU, not to the paper: two tasks (colour and counting, normal level), short captions
# ("a red circle at top left, a blue square at center"), one-sentence think traces ("There are 2
# triangles: purple at top left, yellow at bottom right.") instead of long ones, and learning rates far
# above the paper's (5e-3 for a fresh 0.6M-parameter connector, 1e-4 for the LLM) because a few
# hundred steps is all there is.
source "$(dirname "$0")/lib.sh"
need_python
N=${N:-1000}                      # problems: 80% train, 10% validation (the eval), 10% test
ALIGN_STEPS=${ALIGN_STEPS:-150}   # batch 8, ~4 s a step
SFT_STEPS=${SFT_STEPS:-150}       # batch 8, ~9 s a step (the LLM trains too)
TASKS=(--tasks color,counting --difficulty normal)
TIMES="$R1V3_STORE/smol-signal-times.tsv"
: > "$TIMES"

evaluate() {  # evaluate MODEL NAME [extra]: held-out validation split, think template, greedy, short budget
    local model=$1 name=$2
    shift 2
    timed "eval $name" "$name" $R1V3 eval mmmu --model "$model" --data signal-problems --split validation \
        --style reasoning --temperature 0 --max-new-tokens 48 --batch-size 16 --name "$name" "$@"
}

# 1. The smol VLM: SmolLM2-135M-Instruct + a small random vision tower + a fresh connector.
timed "init smol" smol $R1V3 init smol --name smol
# 2. The same problems twice: image -> short caption pairs for alignment, and conversations for SFT
#    (the eval's reasoning prompt -> a one-sentence trace grounded in the drawing, then \boxed{answer}).
timed "data synth (captions)" signal-captions $R1V3 data synth --name signal-captions --n "$N" --seed 0 --messages caption "${TASKS[@]}"
timed "data synth (problems)" signal-problems $R1V3 data synth --name signal-problems --n "$N" --seed 0 --messages brief "${TASKS[@]}"
evaluate smol signal-untrained
# 3. Connector-only alignment on captions: vision tower and LLM frozen.
timed "sft connector-align" smol-aligned $R1V3 sft --preset connector-align --model smol --data signal-captions \
    --name smol-aligned --lr 5e-3 --max-steps "$ALIGN_STEPS" --batch-size 8
evaluate smol-aligned signal-aligned
# 4. SFT on the problems: connector and LLM.
timed "sft problems" smol-signal $R1V3 sft --model smol-aligned --data signal-problems --name smol-signal \
    --trainable connector+llm --lr 1e-4 --max-steps "$SFT_STEPS" --batch-size 8
evaluate smol-signal signal-trained
evaluate smol-signal signal-trained-blind --blank-images

# The accuracies next to chance, and what each stage took.
"$PYTHON" -m recipes.signal_tables signal "$R1V3_STORE" "$TIMES"
