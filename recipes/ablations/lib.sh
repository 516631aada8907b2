# Sourced by every recipes/ablations/*.sh: the store, the CLI, the shared knobs and the commands that two
# findings share, written once so that the same command (same settings, same inputs) is reused across
# scripts and with recipes/smol-rl-signal.sh (R1V3_REUSE=1): its start evals are these, and both run their
# GRPO through recipes/lib.sh's rl_arm.
#
# Shared knobs (smol defaults: the RL-signal settings):
#   START (smol-signal: the SFT model of recipes/smol-signal.sh, or any cold-start model), DATA (rl-problems:
#   PROBLEMS=12000 synthetic colour and counting problems, seed 1, reflective traces; its test split holds
#   EVAL_N=1200 items), TRAIN (the RL rows: DATA's train split), SEEDS ("0 1"), STEPS (40 GRPO steps), SAVE (a
#   checkpoint every 10), LR (5e-6), GROUP (4 completions a prompt), PROMPTS (2 prompts a step), MAX_NEW (64 new tokens).
# Costs on 2 cores (README): a GRPO step ~16 s at group 4 and 64 tokens, an SFT step ~12 s (batch 8, connector
# + LLM) or ~6 s (connector only), a greedy eval ~0.6 s an item at 64 tokens (1200 items: ~12 min).
[ -n "${FINDING:-}" ] || { echo "error: set FINDING before sourcing lib.sh" >&2; exit 2; }
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
need_python
export R1V3_REUSE=${R1V3_REUSE:-1}  # a stage whose artifact is up to date prints "up to date: NAME@vN (reused)"
# the findings share their GRPO runs by name (rl-hard-s0, ...): a run with other flags would publish a new
# version under that name and change every finding's input, so those knobs stay with smol-rl-signal.sh
[ -z "${RL_FLAGS:-}${DROP:-}" ] || {
    echo "error: RL_FLAGS and DROP are recipes/smol-rl-signal.sh knobs (its TAG names the runs); the ablations share their runs by name: unset them" >&2
    exit 2
}
START=${START:-smol-signal}
DATA=${DATA:-rl-problems}
PROBLEMS=${PROBLEMS:-12000}
TRAIN=${TRAIN:-$DATA}
SEEDS=${SEEDS:-0 1}
STEPS=${STEPS:-40}
SAVE=${SAVE:-10}
LR=${LR:-5e-6}
GROUP=${GROUP:-4}
PROMPTS=${PROMPTS:-2}
MAX_NEW=${MAX_NEW:-64}
EVAL_N=${EVAL_N:-1200}
BLIND_N=${BLIND_N:-$EVAL_N}  # the blind start on the first BLIND_N items, as recipes/smol-rl-signal.sh
OUT="$R1V3_STORE/ablations/$FINDING"  # the comparisons (compare --json), the claims file, the figures
CLAIMS="$OUT/claims.tsv"
mkdir -p "$OUT"
: > "$CLAIMS"

problems() {  # the held-out items and the RL rows: the same command as recipes/smol-rl-signal.sh
    $R1V3 data synth --name "$DATA" --problems "$PROBLEMS" --seed 1 --tasks color,counting --messages reflect
}

evaluate_on() {  # evaluate_on DATA MODEL NAME [extra]: test split, reasoning prompt (or STYLE), greedy, MAX_NEW tokens
    local data=$1 model=$2 name=$3
    shift 3
    $R1V3 eval mmmu --model "$model" --data "$data" --split test --limit "$EVAL_N" --style "${STYLE:-reasoning}" \
        --temperature 0 --max-new-tokens "$MAX_NEW" --batch-size 16 --name "$name" --resume "$@"
}

evaluate() {  # evaluate MODEL NAME [extra]: on DATA, as recipes/smol-rl-signal.sh does
    evaluate_on "$DATA" "$@"
}

start_evals() {  # the start and the start blind (images blanked) on DATA: rl-start, rl-start-blind
    evaluate "$START" rl-start
    evaluate "$START" rl-start-blind --blank-images --limit "$BLIND_N"
}

compare_json() {  # compare_json FILE BASELINE EVAL...: r1v3 compare's figures (by difficulty and task) in OUT/FILE
    local file=$1
    shift
    $R1V3 compare "$@" --by difficulty,subject --json > "$OUT/$file"
}

claim() {  # claim FILE EVAL SEED SIGN "LABEL" "PAPER" [GROUP [BLIND-EVAL]]: a row of the finding's table
    # FILE: a compare_json output whose baseline is the claim's "before"; EVAL: its "after"; SEED: the training
    # seed of what differs, or - for decoding modes of one fixed model (no seed to vary); SIGN: the paper's
    # direction of after - before (+, -, = for "no harm", ? for no claim); GROUP: all (default) or difficulty=normal, ...;
    # BLIND-EVAL: the after model's eval with images blanked (default: the start's).
    printf 'paired\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$FINDING" "$5" "$6" "$4" "$3" "$OUT/$1" \
        "$2|${7:-all}" "${8:-rl-start-blind}" >> "$CLAIMS"
}

claim_spearman() {  # claim_spearman SELECTION "LABEL" "PAPER": does critical entropy rise with accuracy?
    printf 'spearman\t%s\t%s\t%s\t+\t-\t%s\t\t\n' "$FINDING" "$2" "$3" "$1" >> "$CLAIMS"
}

ablations() {  # ablations COMMAND ARGS...: the tables and figures (recipes/ablations/tables.py)
    "$PYTHON" recipes/ablations/tables.py "$@" --store "$R1V3_STORE"
}

findings_table() {  # the script's last words: its findings table
    echo
    ablations findings "$CLAIMS"
}

# the start model is made elsewhere (recipes/smol-signal.sh): said now, not after the first hour
ablations require "$START" model 2>/dev/null || {
    echo "error: no model $START in $R1V3_STORE: run recipes/smol-signal.sh first, or set START to a cold-start model" >&2
    exit 2
}
