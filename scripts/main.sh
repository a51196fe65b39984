#!/usr/bin/env bash
# The main job on the bundled default model (set-up included, idempotent).
# Until the study pipeline (`welfare-axis run`) lands, this shows the maze and lets the expert play it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if welfare-axis run --help >/dev/null 2>&1; then
  exec welfare-axis run "$@"
fi
welfare-axis maze show --seed 0
welfare-axis maze play --seed 0 --expert
