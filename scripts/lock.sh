#!/usr/bin/env bash
# Refresh requirements-lock.txt: the exact version of every dependency, read from a venv with the
# newest releases (.venv-latest, made by scripts/test_latest.sh; made here when missing).
# Then run `bash scripts/test.sh` (it re-applies the new lock to .venv) and commit the lock.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
if [ ! -f .venv-latest/.welfare-axis-latest ]; then
  install_project .venv-latest ""
  date -u +%Y-%m-%dT%H:%MZ > .venv-latest/.welfare-axis-latest
fi
.venv-latest/bin/python -m pip freeze --all --exclude-editable \
  | python3 scripts/lockfile.py write requirements-lock.txt \
      --python "$(.venv-latest/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
      --resolved "$(cat .venv-latest/.welfare-axis-latest)"
echo "wrote requirements-lock.txt ($(grep -c '==' requirements-lock.txt) packages)"
