"""Store a finished training run's adapter as a model that ships with the toolkit (training.shipped).

    python scripts/ship_trained.py RUN_DIR RECIPE --command "python -m training.train ..." [--commit SHA]

Evaluates the stored (bfloat16) weights on the run's held-out mazes and writes
training/shipped/<model>/<recipe>/{adapter.safetensors, provenance.json}.
"""

from __future__ import annotations

import argparse

from training.shipped import ship_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dir")
    parser.add_argument("recipe", help="name it ships under: load_trained(model, recipe)")
    parser.add_argument("--command", required=True, help="the exact command that trained the run")
    parser.add_argument("--commit", default=None, help="commit the run was trained at (default: HEAD)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--notes", default="")
    a = parser.parse_args(argv)
    shipped = ship_run(a.run_dir, a.recipe, command=a.command, commit=a.commit, dtype=a.dtype, notes=a.notes)
    print(shipped.provenance.line())
    print(f"stored {shipped.provenance.size_bytes / 2**20:.1f} MiB at {shipped.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
