#!/usr/bin/env bash
# The test suite against the newest releases the registry serves today (unlocked), in its own venv
# (.venv-latest), to find the next drift before a fresh machine does. Not part of CI. Prints the
# packages whose newest release differs from requirements-lock.txt, then runs pytest like test.sh.
# Arguments go to pytest. If it passes, `bash scripts/lock.sh` moves the lock to these versions.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
rm -f .venv-latest/.welfare-axis-latest
install_project .venv-latest ""
date -u +%Y-%m-%dT%H:%MZ > .venv-latest/.welfare-axis-latest
echo "newest releases that differ from requirements-lock.txt (lock -> newest):"
.venv-latest/bin/python -m pip freeze --all --exclude-editable | python3 scripts/lockfile.py diff requirements-lock.txt
. .venv-latest/bin/activate
marker=()
if [ "${WELFARE_AXIS_SKIP_SLOW:-0}" = "1" ]; then marker=(-m "not slow"); fi
exec python -m pytest -n 2 --dist loadgroup -p no:cacheprovider "${marker[@]}" "$@"
