#!/usr/bin/env bash
# The test suite, as CI runs it: set-up (idempotent), then pytest on 2 workers.
# Slow tests (real bundled models) run too unless WELFARE_AXIS_SKIP_SLOW=1.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
marker=()
if [ "${WELFARE_AXIS_SKIP_SLOW:-0}" = "1" ]; then marker=(-m "not slow"); fi
exec python -m pytest -n 2 --dist loadgroup "${marker[@]}" "$@"
