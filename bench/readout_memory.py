"""Peak resident memory of the full readouts (``probes.readout_report``) on a real model.

Each measurement runs in its own child process, so ``ru_maxrss`` holds that readout alone (model load
included). Two runs, one after the other, same settings:

- ``trimmed``: the library as shipped: every batched forward hands the heap's freed pages back to the OS
  (``probes.resources.release_freed_memory``).
- ``baseline``: the same with that call made a no-op (what the readouts did before; ``--no-baseline`` skips
  it, halving the time).

Per-stage peaks (the report's ``peak_rss_gb``) are printed for both.

Headline lines (shared/BENCH.md):
    BENCH readout_peak_rss_gb <trimmed peak, GB> <=6
    BENCH readout_rss_vs_untrimmed <trimmed ÷ baseline> report

Run: flock /tmp/wa/heavy.lock python -m bench.readout_memory [--model smollm2-135m-instruct]
     [--scale full|study] [--n-per-class N] [--no-baseline] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: drop bench/ from sys.path so it cannot shadow the packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse
import dataclasses
import json
import subprocess
import tempfile
import time


def child(model_name: str, scale: str, n_per_class: int | None, trim: bool, out: Path) -> None:
    """Run one readout report in this process and write its peaks to ``out``."""
    from probes import resources
    from probes.models import load_model
    from probes.readout_report import ReportSettings, readout_report

    if not trim:
        resources.release_freed_memory = lambda: None  # type: ignore[assignment]
        import probes.maze_states
        import probes.record

        probes.record.release_freed_memory = resources.release_freed_memory  # type: ignore[attr-defined]
        probes.maze_states.release_freed_memory = resources.release_freed_memory  # type: ignore[attr-defined]
    settings = ReportSettings()
    if scale == "study":
        from welfare_axis.study import STUDY_READOUTS

        settings = dataclasses.replace(settings, **STUDY_READOUTS, n_per_class=24)
    if n_per_class is not None:
        settings = dataclasses.replace(settings, n_per_class=n_per_class)
    settings = dataclasses.replace(settings, progress=True)
    model, tok = load_model(model_name)
    start = time.perf_counter()
    report = readout_report(model, tok, settings)
    out.write_text(
        json.dumps(
            {
                "peak_rss_gb": resources.peak_rss_gb(),
                "stages": report.peak_rss_gb,
                "seconds": time.perf_counter() - start,
                "n_per_class": settings.n_per_class,
            }
        )
    )


def measure(model: str, scale: str, n_per_class: int | None, trim: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "peak.json"
        cmd = [sys.executable, "-m", "bench.readout_memory", "--child", "--model", model, "--scale", scale,
               "--out", str(out), *(["--n-per-class", str(n_per_class)] if n_per_class else []),
               *([] if trim else ["--untrimmed"])]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parent.parent)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--scale", default="full", choices=("full", "study"))
    parser.add_argument("--n-per-class", type=int, default=None)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--untrimmed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", default=None, help="child: where to write its peaks; else a JSON of both runs"
    )
    a = parser.parse_args()
    if a.child:
        child(a.model, a.scale, a.n_per_class, not a.untrimmed, Path(a.out))
        return
    runs = {"trimmed": measure(a.model, a.scale, a.n_per_class, True)}
    if not a.no_baseline:
        runs["baseline"] = measure(a.model, a.scale, a.n_per_class, False)
    for name, r in runs.items():
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["stages"].items())
        print(f"{name}: peak RSS {r['peak_rss_gb']:.2f} GB in {r['seconds'] / 60:.1f} min "
              f"({r['n_per_class']} per class); per stage: {stages}")  # fmt: skip
    if a.out:
        Path(a.out).write_text(json.dumps({"model": a.model, "scale": a.scale, **runs}, indent=1))
    print(f"BENCH readout_peak_rss_gb {runs['trimmed']['peak_rss_gb']:.2f} <=6")
    if "baseline" in runs:
        ratio = runs["trimmed"]["peak_rss_gb"] / runs["baseline"]["peak_rss_gb"]
        print(f"BENCH readout_rss_vs_untrimmed {ratio:.2f} report")


if __name__ == "__main__":
    main()
