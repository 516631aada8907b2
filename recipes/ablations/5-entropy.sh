#!/usr/bin/env bash
# Finding 5 (Skywork-R1V3 sections 5.1, 6.5, Fig. 5): the entropy of the critical words (Wait, Alternatively,
# Hmm) tracks capability, so a checkpoint can be chosen by it.
# Ours: one GRPO run (`--curriculum hard`, a checkpoint every ENT_SAVE steps: >= 5 of them) and select-ckpt over
# its checkpoints and its start (--base) on PROBE_N validation rows; Spearman's rho (with p) of critical
# entropy with probe accuracy, and of the two measures the literature offers where GRPO removes the words
# (mean token entropy, the share of high-entropy tokens); the critical-word counts per checkpoint; then the
# rule's choice, the last checkpoint and the best on validation (select-ckpt's accuracy rule over the same
# table) on the same EVAL_N held-out test items, paired.
#
# Usage: bash recipes/ablations/5-entropy.sh   (after recipes/smol-signal.sh; knobs: lib.sh and below)
# Knobs: ENT_SEED (0), ENT_SAVE (8: 5 checkpoints of 40 steps; when it equals SAVE, the other findings' run of
#   that seed is reused), PROBE_N (200), MIN_POSITIONS (5: short generations hold few critical words;
#   select-ckpt's default is 20).
# Time on 2 cores at the defaults: ~1.4 h (GRPO 40 steps ~11 min; select-ckpt over 6 models x 200 rows at
# ~0.75 s a row: ~15 min; five evals of 1200 items, ~12 min each, the start's two reused from the others).
FINDING=5
source "$(dirname "$0")/lib.sh"
ENT_SEED=${ENT_SEED:-0}
ENT_SAVE=${ENT_SAVE:-8}
PROBE_N=${PROBE_N:-200}
MIN_POSITIONS=${MIN_POSITIONS:-5}

problems
start_evals
# a run saved as often as the others is theirs (reused); else its own, named by its save interval
suffix=""
[ "$ENT_SAVE" = "$SAVE" ] || suffix="-save$ENT_SAVE"
SAVE=$ENT_SAVE rl_arm hard "$ENT_SEED" "$suffix"
run=$RL_NAME
sel=$run-select
$R1V3 select-ckpt --run "$run" --probe "$DATA" --split validation --limit "$PROBE_N" --base \
    --max-new-tokens "$MAX_NEW" --min-positions "$MIN_POSITIONS" --seed "$ENT_SEED" --name "$sel" --resume
# the best on validation: select-ckpt's accuracy rule over the same figures; step 0 is the start itself
best=$(ablations best-step "$sel")
if [ "$best" = 0 ]; then
    best_model=$START
else
    best_model=$run-step$best
    $R1V3 rl export "$run" --step "$best" --name "$best_model"
fi
evaluate "$sel-model" "$sel-eval"
evaluate "$run-final" "$run-eval"
evaluate "$best_model" "$run-bestval-eval"
compare_json "choice.json" "$run-eval" "$sel-eval"
compare_json "bestval.json" "$run-bestval-eval" "$sel-eval"
claim_spearman "$sel" "critical-token entropy vs probe accuracy across checkpoints" "positive (Fig. 5)"
claim "choice.json" "$sel-eval" "$ENT_SEED" + "the rule's choice vs the last checkpoint" "the rule picks a better model"
claim "bestval.json" "$sel-eval" "$ENT_SEED" "?" "the rule's choice vs the best on validation (step $best)" \
    "(not compared in the paper)"
echo
echo "== select-ckpt's evidence per checkpoint (step 0: the start) =="
ablations entropy "$sel"
findings_table
