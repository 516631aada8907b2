# Sourced by every recipe script (recipes/ablations/lib.sh builds on it): the store, the CLI, the Python
# that prints the tables (`need_python`: checked now, not after an hour), offline hub access, and `timed`.
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
