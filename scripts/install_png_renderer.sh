#!/usr/bin/env bash
# PNG figures on a machine without Chrome/Chromium: kaleido 0.2.1 ships its own headless Chromium on PyPI.
# It is installed into a cache outside the project's venv (it cannot share one with kaleido 1.x, which
# plotly uses); welfare_axis.report.export_figures falls back to it when kaleido 1.x finds no browser.
#   WELFARE_AXIS_PNG_RENDERER   where to install (default ~/.cache/welfare-axis/kaleido-0.2.1)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${WELFARE_AXIS_PNG_RENDERER:-$HOME/.cache/welfare-axis/kaleido-0.2.1}
if [ -d "$target/kaleido" ]; then echo "already installed: $target"; exit 0; fi
.venv/bin/python -m pip install -q --target "$target.partial" --no-deps kaleido==0.2.1
mv "$target.partial" "$target"
echo "installed: $target"
