#!/usr/bin/env bash
# Does a cold start on distilled traces teach the embedded default to see? Run recipes/smol-signal.sh
# first in the same store: it leaves the problems (signal-problems), the aligned model (smol-aligned) and
# the eval of SFT on the generator's own `brief` traces that this compares with, at the same step budget.
#
#   1. The packaged 135M teacher (distill --teacher smol) reasons over the text renderings of the first
#      LIMIT training problems: its pass rate against chance, and how many traces survive.
#   2. A stronger text teacher that runs here: SmolLM2 fine-tuned by `sft --format text-rendering` on
#      OTHER problems (seed 2, never distilled) to reason over a caption. It distills every training
#      problem; only verified, filtered traces are kept.
#   3. Cold-start SFT of the aligned model on those traces (the steps, learning rate and batch of
#      smol-signal.sh's SFT), scored on the same held-out rows, with images and blind.
#
# Usage: bash recipes/smol-distill-signal.sh   (R1V3_STORE as for smol-signal.sh; about 45 minutes on 2 cores)
#
# The taught teacher learned from the generator's traces of other problems, so this measures the
# pipeline (teacher prompt, sampling, verification, filters, SFT on what survives) with a teacher
# that can read a caption, not a teacher that knows more than the generator.
source "$(dirname "$0")/lib.sh"
need_python
LIMIT=${LIMIT:-100}                 # problems the packaged teacher tries (it rambles to its budget: slow)
SAMPLES=${SAMPLES:-2}               # teacher outputs per problem
TAUGHT_LIMIT=${TAUGHT_LIMIT:-}      # problems the taught teacher tries (default: all 800)
TEACHER_STEPS=${TEACHER_STEPS:-60}  # text-only SFT of the taught teacher, batch 8 (480 rows)
SFT_STEPS=${SFT_STEPS:-150}         # as smol-signal.sh's SFT
TIMES="$R1V3_STORE/smol-distill-signal-times.tsv"
: > "$TIMES"
for needed in signal-problems smol-aligned signal-trained; do
    [ -d "$R1V3_STORE/$needed" ] || { echo "error: $R1V3_STORE has no $needed: run recipes/smol-signal.sh first" >&2; exit 2; }
done

evaluate() {  # as smol-signal.sh: held-out validation split, reasoning prompt, greedy, 48 new tokens
    local model=$1 name=$2
    shift 2
    timed "eval $name" "$name" $R1V3 eval mmmu --model "$model" --data signal-problems --split validation \
        --style reasoning --temperature 0 --max-new-tokens 48 --batch-size 16 --name "$name" --reuse "$@"
}

# 1. the packaged teacher; keeping nothing is a result here, not a failure of the script
timed "distill (packaged smol)" traces-smol $R1V3 distill --teacher smol --data signal-problems --limit "$LIMIT" \
    --samples "$SAMPLES" --max-new-tokens 96 --batch-size 16 --name traces-smol --reuse \
    || { [ $? -eq 3 ] && echo "(the packaged teacher kept no trace; its outputs and report are in the store's .work/traces-smol)"; }
# 2. teach a text teacher on other problems, then distill every training problem with it
timed "data synth (teacher problems)" teacher-problems $R1V3 data synth --name teacher-problems --n 1000 --seed 2 --messages brief \
    --tasks color,counting --difficulty normal --reuse
timed "init smol-llm" smol-llm $R1V3 init smol-llm --name smol-llm --reuse
timed "sft text teacher" text-teacher $R1V3 sft --model smol-llm --data teacher-problems --format text-rendering --trainable llm \
    --lr 1e-4 --max-steps "$TEACHER_STEPS" --batch-size 8 --name text-teacher --reuse
timed "distill (taught teacher)" traces-taught $R1V3 distill --teacher text-teacher --data signal-problems --samples "$SAMPLES" \
    ${TAUGHT_LIMIT:+--limit "$TAUGHT_LIMIT"} --max-new-tokens 64 --batch-size 16 --name traces-taught --reuse --resume
# 3. cold start on the verified traces: the SFT of smol-signal.sh with the data swapped
timed "sft on distilled traces" smol-distilled $R1V3 sft --model smol-aligned --data traces-taught --name smol-distilled \
    --trainable connector+llm --lr 1e-4 --max-steps "$SFT_STEPS" --batch-size 8 --reuse
evaluate smol-distilled signal-distilled
evaluate smol-distilled signal-distilled-blind --blank-images

"$PYTHON" -m recipes.signal_tables distill "$R1V3_STORE" "$TIMES"
