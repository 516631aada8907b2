#!/usr/bin/env bash
# The Skywork-R1V3 recipe end to end on the embedded default, in the paper's order, on a 2-core CPU:
#   init smol -> connector alignment -> distill (teacher: smol) -> cold-start SFT -> difficulty ->
#   rl --curriculum hard -> select-ckpt -> connector-only re-tune -> eval of every stage's model
# on held-out problems (both levels), blind too; then a table of what each stage made and took.
#
# Usage: bash recipes/smol/run.sh   (after ./setup.sh; R1V3_STORE picks the store, default: the repository's artifacts/)
# Scale knobs (the defaults are the run in the README's results):
#   N=1000 problems (80% train, 10% validation: select-ckpt's probe, 10% test: the evals), ALIGN_STEPS=150,
#   DISTILL_N=40 problems asked of the teacher (2 outputs each), SFT_STEPS=150, RL_NORMAL=20 and RL_HARD=20 GRPO
#   steps, DIFFICULTY_N pass rates measured (default: the 2 x 40 rows RL draws), RETUNE_STEPS=20.
#   Measured: these took 84 min here; ALIGN_STEPS=100 SFT_STEPS=120 RL_NORMAL=16 RL_HARD=16 took 68 min and
#   the model no longer used its images (final 27%, blind 29%): the shorter alignment did it; 120 cold-start
#   steps after 150 alignment steps reached 45% (README "The whole recipe").
#   COLD_START_DATA: synthetic (default) trains the cold start on the generator's brief traces, a quarter
#   of which correct themselves after "Wait," or weigh an alternative (`data synth --messages reflect`),
#   distill on the teacher's verified traces. The 135M teacher kept 1 of 80 outputs when measured (it
#   rarely ends in \boxed{}), so distill is for a stronger teacher: set `distill.teacher` in recipe.yaml to
#   a model artifact or an http(s) endpoint (recipes/smol-distill-signal.sh teaches one on captions).
#
# Re-running skips each stage whose artifact is up to date (same settings and inputs: R1V3_REUSE=1) and
# resumes an interrupted one (--resume): kill it anywhere, run it again, and it finishes.
source "$(dirname "$0")/../lib.sh"
need_python
export R1V3_REUSE=${R1V3_REUSE:-1}  # a stage whose artifact is up to date prints "up to date: NAME@vN (reused)"
N=${N:-1000}
ALIGN_STEPS=${ALIGN_STEPS:-150}     # batch 8, ~4 s a step (connector only)
DISTILL_N=${DISTILL_N:-40}
SFT_STEPS=${SFT_STEPS:-150}         # batch 8, ~9 s a step (the LLM trains too)
RL_NORMAL=${RL_NORMAL:-20}
RL_HARD=${RL_HARD:-20}
DIFFICULTY_N=${DIFFICULTY_N:-$((2 * (RL_NORMAL + RL_HARD)))}  # rl's preset draws 2 prompts a step
RETUNE_STEPS=${RETUNE_STEPS:-20}
COLD_START_DATA=${COLD_START_DATA:-synthetic}
RECIPE=recipes/smol/recipe.yaml     # each stage's settings: its section of this file
TIMES="$R1V3_STORE/smol-times.tsv"
: > "$TIMES"

stage() {  # stage LABEL ARTIFACT[,ARTIFACT] r1v3-args...: one stage with the recipe's settings, timed
    timed "$1" "$2" $R1V3 "${@:3}" --config "$RECIPE"
}

# 1. The smol VLM, and the same problems twice: image -> short caption pairs for alignment, and the
#    problems with one-sentence think traces, a quarter of which correct themselves after "Wait," or weigh
#    an alternative (the cold start's data by default, the re-tune data; select-ckpt reads those words).
stage "init smol" smol                      init smol --name smol
stage "data synth (captions)" smol-captions data synth --name smol-captions --n "$N" --messages caption
# a quarter: enough "Wait," for select-ckpt; at half (each first misreading the image) the cold start reached 27%
stage "data synth (problems)" smol-problems data synth --name smol-problems --n "$N" --messages reflect \
    --reflect-share 0.25
# 2. Connector alignment (R1V): connector only, vision tower and LLM frozen; lr 5e-3 for a fresh connector.
stage "sft connector-align" smol-aligned sft --preset connector-align --model smol --data smol-captions \
    --name smol-aligned --lr 5e-3 --max-steps "$ALIGN_STEPS" --resume
# 3. Cold start: the text-only teacher reads each problem's caption; traces whose answer verifies are kept.
#    A 135M teacher rarely ends with a verifiable \boxed{} answer: when it keeps none, distill publishes
#    nothing and the cold start trains on the synthetic traces instead (said below, and in the table).
cold_data=smol-traces
stage "distill (teacher smol)" smol-traces distill --data smol-problems --name smol-traces \
    --limit "$DISTILL_N" --resume || {
    status=$?
    [ "$status" -eq 3 ] || exit "$status"  # 3: distill ran and kept nothing; anything else is an error
    echo "note: the smol teacher kept no trace; the cold start trains on the synthetic traces of smol-problems"
    cold_data=smol-problems
}
if [ "$COLD_START_DATA" = synthetic ]; then
    cold_data=smol-problems
    echo "note: COLD_START_DATA=synthetic: the cold start trains on the synthetic traces of smol-problems, not the teacher's"
fi
stage "sft cold-start" smol-cold sft --preset cold-start --model smol-aligned --data "$cold_data" \
    --name smol-cold --lr 1e-4 --max-steps "$SFT_STEPS" --resume
# 4. Pass rates of the cold-start policy on the rows RL will draw (the first DIFFICULTY_N training rows, both
#    levels interleaved), then GRPO on them: normal problems, then hard ones.
stage "difficulty" smol-rated difficulty --model smol-cold --data smol-problems --name smol-rated \
    --limit "$DIFFICULTY_N" --resume
stage "rl --curriculum hard" smol-rl rl --model smol-cold --data smol-rated --name smol-rl \
    --curriculum-lengths "$RL_NORMAL,$RL_HARD" --resume
stage "rl export (final step)" smol-rl-final rl export smol-rl --name smol-rl-final
# 5. The checkpoint whose "Wait" / "Alternatively" / "Hmm" carry the most entropy on the validation split.
stage "select-ckpt" smol-selected,smol-selected-model select-ckpt --run smol-rl --probe smol-problems \
    --name smol-selected --model-name smol-selected-model --resume
# 6. Connector-only re-tune after RL, early stopping on the validation loss.
stage "sft connector-retune" smol-retuned sft --preset connector-retune --model smol-selected-model \
    --data smol-problems --name smol-retuned --lr 5e-4 --max-steps "$RETUNE_STEPS" --eval-steps 10 --save-steps 10 --resume
# 7. Every stage's model on the held-out test split (both levels), greedy, 64 tokens; the last one blind.
for model in smol smol-aligned smol-cold smol-rl-final smol-selected-model smol-retuned; do
    stage "eval $model" "eval-$model" eval mmmu --model "$model" --data smol-problems --name "eval-$model" --resume
done
stage "eval smol-retuned, blind" eval-smol-retuned-blind eval mmmu --model smol-retuned --data smol-problems \
    --name eval-smol-retuned-blind --blank-images --resume

"$PYTHON" recipes/summary.py "$R1V3_STORE" "$TIMES" smol-problems test
# One page with the final model's lineage, every stage's settings, metrics and plots, and its scores.
$R1V3 report smol-retuned --out "$R1V3_STORE/report-smol.html"
