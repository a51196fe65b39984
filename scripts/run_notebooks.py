"""Execute the notebooks in their real mode (SmolLM2-135M-Instruct and the shipped trained model) and save
their outputs in place, as committed; then check that no output shows a warning, a traceback or a path of the
machine that ran them.

    flock /tmp/wa/heavy.lock python scripts/run_notebooks.py [notebooks/02_train_and_extract.ipynb ...]

The test suite executes the same notebooks on tiny settings (tests/test_notebooks.py).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
MACHINE = re.compile(r"(/root/|/work/|/home/|/tmp/|site-packages|\\\\Users\\\\)")


def problems(nb: nbformat.NotebookNode) -> list[str]:
    """Outputs a reader should not see: errors, stderr (warnings, progress bars) and machine paths."""
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            kind = output.get("output_type")
            if kind == "error":
                found.append(f"cell {index}: error {output.get('ename')}: {output.get('evalue')}")
                continue
            if kind == "stream" and output.get("name") == "stderr":
                found.append(f"cell {index}: stderr: {output.get('text', '')[:200]!r}")
            texts = [output.get("text", "")] if kind == "stream" else []
            texts += [str(v) for k, v in output.get("data", {}).items() if k.startswith("text/")]
            for text in texts:
                match = MACHINE.search(text)
                if match:
                    start = max(0, match.start() - 60)
                    found.append(f"cell {index}: a machine path: {text[start : match.end() + 60]!r}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("notebooks", nargs="*", help="default: notebooks/*.ipynb")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    a = parser.parse_args(argv)
    paths = [Path(p) for p in a.notebooks] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    os.environ["WELFARE_AXIS_NOTEBOOK_REAL"] = "1"
    os.environ["PYTHONPATH"] = str(ROOT)
    os.environ.setdefault("TQDM_DISABLE", "1")
    failed = False
    for path in paths:
        start = time.perf_counter()
        nb = nbformat.read(path, as_version=4)
        NotebookClient(nb, timeout=a.timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()  # fmt: skip
        nbformat.write(nb, path)
        bad = problems(nb)
        print(f"{path.name}: {time.perf_counter() - start:.0f} s, {len(bad)} problem(s)", flush=True)
        for line in bad:
            print(f"  {line}", flush=True)
        failed |= bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
