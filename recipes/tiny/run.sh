#!/usr/bin/env bash
# Every stage of the recipe on a random-weight tiny InternVL (`r1v3 init tiny`) composed with a random
# tiny text LLM (`r1v3 init tiny-llm`) and a small synthetic dataset: a few minutes on 2 CPU cores. It
# proves that the stages chain through the store and that each one publishes an artifact that verifies;
# nothing here learns (see recipes/smol/run.sh).
#
# Usage: bash recipes/tiny/run.sh   (after ./setup.sh; R1V3_STORE picks the store, default: the repository's artifacts/)
#
# Re-running it skips each stage whose artifact is up to date (same settings, same inputs: R1V3_REUSE=1)
# and resumes an interrupted one (--resume): kill it anywhere, run it again, and it finishes.
#
# The random teacher keeps no trace (it never ends in a \boxed{} answer): distill then publishes nothing
# and the cold start trains on the template traces of `data synth --messages reflect`, as the smol recipe
# does when its teacher keeps none.
source "$(dirname "$0")/../lib.sh"
need_python
export R1V3_REUSE=${R1V3_REUSE:-1}  # a stage whose artifact is up to date prints "up to date: NAME@vN (reused)"
RECIPE=recipes/tiny/recipe.yaml     # each stage's settings: its section of this file
TIMES="$R1V3_STORE/tiny-times.tsv"
: > "$TIMES"

stage() {  # stage LABEL ARTIFACT[,ARTIFACT] r1v3-args...: one stage with the recipe's settings, timed
    timed "$1" "$2" $R1V3 "${@:3}" --config "$RECIPE"
}

# 1. A random-weight tiny InternVL and a tiny text LLM; compose (R1V) keeps the VLM's vision tower and
#    connector around the text LLM. Problems (colour and counting, normal and hard) with captions and
#    think-template traces.
stage "init tiny" tiny                 init tiny --name tiny
stage "init tiny-llm" tiny-llm         init tiny-llm --name tiny-llm
stage "compose" tiny-composed          compose --vlm tiny --llm tiny-llm --name tiny-composed
stage "data synth" tiny-problems       data synth --name tiny-problems
# 2. Connector alignment (R1V): connector only, on image -> caption pairs made from each row's caption.
stage "sft connector-align" tiny-aligned \
    sft --preset connector-align --format caption --model tiny-composed --data tiny-problems --name tiny-aligned --resume
# 3. Cold start: the text LLM reads each problem's caption; traces whose answer verifies are kept. When it
#    keeps none, distill publishes nothing and the cold start trains on the synthetic traces.
cold_data=tiny-traces
stage "distill (teacher tiny-llm)" tiny-traces \
    distill --teacher tiny-llm --data tiny-problems --name tiny-traces --resume || {
    status=$?
    [ "$status" -eq 3 ] || exit "$status"  # 3: distill ran and kept nothing; anything else is an error
    echo "note: the tiny teacher kept no trace; the cold start trains on the synthetic traces of tiny-problems"
    cold_data=tiny-problems
}
stage "sft cold-start" tiny-cold \
    sft --preset cold-start --model tiny-aligned --data "$cold_data" --name tiny-cold --resume
# 4. Pass rates of the cold-start model on the training problems (the policy RL starts from).
stage "difficulty" tiny-rated \
    difficulty --model tiny-cold --data tiny-problems --name tiny-rated --resume
# 5. GRPO with the hard curriculum: normal problems, then hard ones; a checkpoint every step.
stage "rl --curriculum hard" tiny-rl \
    rl --model tiny-cold --data tiny-rated --name tiny-rl --resume
stage "rl export (final step)" tiny-rl-final \
    rl export tiny-rl --name tiny-rl-final
# 6. The checkpoint whose critical tokens ("Wait", "Alternatively", "Hmm") carry the most entropy on the
#    held-out validation split (a random model says too few of them: then the accuracy fallback decides).
stage "select-ckpt" tiny-selected,tiny-selected-model \
    select-ckpt --run tiny-rl --probe tiny-problems --name tiny-selected --model-name tiny-selected-model --resume
# 7. Connector-only re-tune after RL, early stopping on the validation loss.
stage "sft connector-retune" tiny-retuned \
    sft --preset connector-retune --model tiny-selected-model --data tiny-problems --name tiny-retuned --resume
# 8. The untrained and the final model on the held-out test split, and the final one blind (images
#    blanked). EVAL_MODELS="tiny-composed tiny-aligned tiny-cold tiny-rl-final tiny-selected-model tiny-retuned"
#    scores every stage's model, as recipes/smol/run.sh does (each eval costs a model load).
for model in ${EVAL_MODELS:-tiny-composed tiny-retuned}; do
    stage "eval $model" "eval-$model" eval mmmu --model "$model" --data tiny-problems --name "eval-$model" --resume
done
stage "eval tiny-retuned, blind" eval-tiny-retuned-blind \
    eval mmmu --model tiny-retuned --data tiny-problems --name eval-tiny-retuned-blind --blank-images --resume

"$PYTHON" recipes/summary.py "$R1V3_STORE" "$TIMES" tiny-problems test
# One page with the final model's lineage, every stage's settings, metrics and plots, and its scores.
$R1V3 report tiny-retuned --out "$R1V3_STORE/report-tiny.html"
