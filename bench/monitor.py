"""What the axis monitor costs: training time with it at its cadence ÷ training time without it.

The monitor reads the model outside the steps (``monitor_seconds`` in ``metrics.jsonl``, not in
``step_seconds``) and changes nothing that is trained, so one monitored run measures both sides in the same
run: ``(Σ step_seconds + Σ monitor_seconds) / Σ step_seconds``, plus the one-off frame (u and the valence axis
on the untrained model) measured separately and reported beside it.

Headline line (shared/BENCH.md):
    BENCH monitor_overhead <ratio> <=1.10

Run:
    python -m bench.monitor RUN_DIR                                  # a finished run trained with monitor_every
    flock /tmp/wa/heavy.lock python -m bench.monitor --train OUT [--steps 2] [--monitor-every 1]
        # the default study's training run (welfare_axis.study.StudyConfig), monitored, for --steps steps
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


def overhead(run_dir: str | Path) -> tuple[float, float, float, int]:
    """``(ratio, Σ step seconds, Σ monitor seconds, readings)`` of a monitored run.

    Raises:
        ValueError: the run has no monitor readings.
    """
    records = [
        json.loads(line)
        for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    steps = sum(float(r["step_seconds"]) for r in records)
    monitor = sum(float(r.get("monitor_seconds", 0.0)) for r in records)
    readings = sum("axis" in r for r in records)
    if not readings:
        raise ValueError(f"{run_dir} has no axis readings: train with monitor_every > 0")
    return (steps + monitor) / steps, steps, monitor, readings


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", nargs="?", help="a finished run trained with monitor_every")
    parser.add_argument("--train", default=None, metavar="OUT")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--monitor-every", type=int, default=1)
    a = parser.parse_args()
    run = a.run
    if a.train:
        from training import main as train
        from welfare_axis.study import StudyConfig

        args = StudyConfig().train_args(Path(a.train))
        args = dataclasses.replace(args, stop_at_step=a.steps, monitor_every=a.monitor_every, eval_episodes=0,
                                   resume=(Path(a.train) / "config.json").is_file())  # fmt: skip
        train(args)
        run = a.train
    if run is None:
        parser.error("give a run directory or --train OUT")
    ratio, steps, monitor, readings = overhead(run)
    print(f"{run}: {readings} readings, {monitor:.0f} s of monitoring over {steps:.0f} s of training steps "
          f"(every {json.loads((Path(run) / 'config.json').read_text())['monitor_every']} steps)")  # fmt: skip
    print(f"BENCH monitor_overhead {ratio:.3f} <=1.10")


if __name__ == "__main__":
    main()
