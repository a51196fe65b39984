#!/usr/bin/env bash
# The main job on the bundled default model (set-up included, idempotent): the whole study,
# train -> forgetting -> readouts -> steering -> runs/default/report.html and summary.json.
# Arguments go to `welfare-axis run` (e.g. --fast, --preset gemma).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
exec welfare-axis run "$@"
