#!/usr/bin/env bash
# The main job on the bundled default model (set-up included, idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec welfare-axis run "$@"
