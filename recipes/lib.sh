# Sourced by every recipe script (recipes/ablations/lib.sh builds on it): the store, the CLI, the Python
# that prints the tables (`need_python`: checked now, not after an hour), offline hub access, `timed`, and
# `rl_arm`, the GRPO run that recipes/smol-rl-signal.sh and the ablations share (so each reuses the other's).
#   R1V3_STORE  the store (default: the repository's artifacts/; a relative path counts from where you are)
#   R1V3        the CLI, split at spaces, so it may be "python -m r1v3.cli" (default: .venv/bin/r1v3)
#   PYTHON      the Python that prints the tables (default: .venv/bin/python)
set -euo pipefail
RECIPES=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export R1V3_STORE=$(realpath -m "${R1V3_STORE:-$RECIPES/../artifacts}")
cd "$RECIPES/.."
R1V3=${R1V3:-.venv/bin/r1v3}
PYTHON=${PYTHON:-.venv/bin/python}
$R1V3 --version >/dev/null 2>&1 || { echo "error: $R1V3 does not run (run ./setup.sh, or set R1V3)" >&2; exit 2; }
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}  # every recipe reads local models and data
mkdir -p "$R1V3_STORE"

timed() {  # timed LABEL ARTIFACT[,ARTIFACT] command...: run it, then append label, artifacts and seconds to $TIMES
    local label=$1 artifact=$2 t0=$SECONDS
    shift 2
    echo "== $label"
    "$@" || return  # explicit: set -e does not apply inside a function called left of || or in an `if`
    printf '%s\t%s\t%s\n' "$label" "$artifact" "$((SECONDS - t0))" >> "$TIMES"
}

need_python() {  # a script that prints tables with $PYTHON says so first: checked before any work
    "$PYTHON" -c "import r1v3" 2>/dev/null || { echo "error: $PYTHON cannot import r1v3 (run ./setup.sh, or set PYTHON)" >&2; exit 2; }
}

rl_arm() {  # rl_arm ARM SEED [NAME-SUFFIX [more rl flags]]: GRPO from START on TRAIN, then its final step as a model
    # ARM: none (levels shuffled), hard (normal then hard, half the steps each) or coin (none, rewarded by a coin
    # flip: the control that should teach nothing). The caller sets START, TRAIN, GROUP (completions a prompt),
    # PROMPTS (prompts a step), STEPS, SAVE, LR, MAX_NEW; DROP and RL_FLAGS (lists of rl flags) may add to them.
    # Published as rl-ARM-sSEED[SUFFIX] and rl-ARM-sSEED[SUFFIX]-final; RL_NAME holds the run's name afterwards.
    local arm=$1 seed=$2 suffix=${3:-}
    shift "$(($# > 2 ? 3 : 2))"
    local extra
    case $arm in
        none) extra=(--curriculum none) ;;
        hard) extra=(--curriculum hard --curriculum-unit steps --curriculum-lengths "$((STEPS / 2)),$((STEPS - STEPS / 2))") ;;
        coin) extra=(--curriculum none --accuracy-reward coin) ;;
        *) echo "error: arm '$arm': use none, hard or coin" >&2; return 2 ;;
    esac
    RL_NAME="rl-$arm-s$seed$suffix"
    # shellcheck disable=SC2086  # DROP and RL_FLAGS are lists of flags
    $R1V3 rl --preset cpu-smol --model "$START" --data "$TRAIN" "${extra[@]}" ${DROP:-} --num-generations "$GROUP" \
        --batch-size "$((PROMPTS * GROUP))" --max-steps "$STEPS" --save-steps "$SAVE" --lr "$LR" --max-new-tokens "$MAX_NEW" \
        --seed "$seed" --name "$RL_NAME" --resume ${RL_FLAGS:-} "$@"
    $R1V3 rl export "$RL_NAME" --name "$RL_NAME-final"
}
