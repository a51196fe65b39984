"""How fast a recipe learns the maze: training minutes until the paired held-out gain first reaches +25.

A run evaluated on its held-out mazes before training and every ``eval_every`` steps (``training.Args``;
each evaluation plays the same mazes with the same random numbers, so gains are paired by maze) is read
back from its episode logs: at every evaluated step, the paired gain over the untrained model with its
standard error, and the training minutes so far (the steps' own time, ``step_seconds`` in
``metrics.jsonl``; evaluations excluded). ``learn_minutes`` is the first evaluated step's training minutes
whose gain is at least ``--threshold``; a run that never gets there reports ``not reached`` with its best
gain. Runs evaluated only at the end (``eval_every`` 0) give one point, the end.

The baseline, printed beside it, is the recorded run of the CPU preset's TBRM (top 8 layers), whose
end-of-run gain first passed +25 (``docs/training_runs/tbrm_cpu_preset``; evaluated only at its end).

Headline line (shared/BENCH.md):
    BENCH learn_minutes <minutes, or the run's training minutes with "not reached"> <=8

Run:
    python -m bench.learn RUN_DIR [RUN_DIR ...]                 # read finished runs or study directories
    flock /tmp/wa/heavy.lock python -m bench.learn --train OUT [--eval-every 1] [--set key=value ...]
        # train the default study's run (welfare_axis.study.StudyConfig) with evaluations, then read it
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: drop bench/ from sys.path so it cannot shadow the packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse
import ast
import dataclasses
import json
from dataclasses import dataclass

BASELINE_RUN = Path(__file__).resolve().parent.parent / "docs" / "training_runs" / "tbrm_cpu_preset"


@dataclass(frozen=True)
class GainPoint:
    """The paired held-out gain after ``step`` training steps, and the training minutes they took."""

    step: int
    train_minutes: float
    gain: float
    se: float

    @property
    def z(self) -> float:
        return self.gain / self.se if self.se > 0 else float("inf")


def gain_curve(run_dir: str | Path) -> list[GainPoint]:
    """Paired gain at every evaluated step of a run (mid-run logs ``episodes/eval_step_*``, and the end).

    ``run_dir`` may also be a study directory (``welfare-axis run --out``): its training run, and with a warm
    start (the sft-grpo presets' SFT) the warm start's points first, then the run's, whose steps and minutes
    continue the warm start's and whose gains are over the untrained model (the warm start's "before": the
    same held-out mazes, so still paired by maze).

    Raises:
        FileNotFoundError: the run has no ``before`` evaluation.
    """
    run_dir = Path(run_dir)
    stages = run_dir / "stages"
    if stages.is_dir():
        warm = stages / "warm_start" / "run"
        if not warm.is_dir():
            return gain_curve(stages / "train" / "run")
        first, untrained = _curve(warm)
        rest, _ = _curve(stages / "train" / "run", untrained, first[-1].step, first[-1].train_minutes)
        return first + rest
    return _curve(run_dir)[0]


def _curve(
    run_dir: Path, before_record: dict | None = None, steps0: int = 0, minutes0: float = 0.0
) -> tuple[list[GainPoint], dict]:
    """The run's points against ``before_record`` (None: its own "before"), and the "before" record used."""
    from training.episodes import load_episodes
    from training.evaluation import EvalResult, compare_evals, summarize_episodes

    evals = json.loads((run_dir / "eval.json").read_text())
    if not evals.get("before"):
        raise FileNotFoundError(f"{run_dir}/eval.json has no 'before' evaluation (train with eval_before on)")
    before_record = before_record or evals["before"]
    before = EvalResult(**before_record)
    seconds: dict[int, float] = {}
    total = 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            total += float(record["step_seconds"])
            seconds[int(record["step"]) + 1] = total
    results: dict[int, EvalResult] = {}
    for log in sorted((run_dir / "episodes").glob("eval_step_*.safetensors")):
        step = int(log.stem.removeprefix("eval_step_"))
        results[step] = summarize_episodes(
            load_episodes(log), greedy=before.greedy, temperature=before.temperature
        )
    if evals.get("after") and seconds:
        results[max(seconds)] = EvalResult(**evals["after"])
    points = []
    for step, after in sorted(results.items()):
        gain = compare_evals(before, after)
        se = gain.get("stderr_diff_paired", gain["stderr_diff_unpaired"])
        points.append(GainPoint(steps0 + step, minutes0 + seconds[step] / 60, gain["return_diff"], se))
    return points, before_record


def learn_minutes(points: list[GainPoint], threshold: float = 25.0) -> float | None:
    """Training minutes of the first point whose gain reaches ``threshold`` (None: never). Returns are float32
    sums of per-turn rewards, so a gain within 1e-4 of the threshold (e.g. 24.999998 for +25) reaches it.

    Example:
        >>> learn_minutes([GainPoint(2, 9.0, 12.0, 5.0), GainPoint(4, 18.0, 26.0, 6.0)])
        18.0
    """
    for point in points:
        if point.gain >= threshold - 1e-4:
            return point.train_minutes
    return None


def _line(name: str, points: list[GainPoint], threshold: float) -> str:
    minutes = learn_minutes(points, threshold)
    curve = ", ".join(f"step {p.step} ({p.train_minutes:.1f} min) {p.gain:+.1f} ± {p.se:.1f}" for p in points)
    reached = f"{minutes:.1f} min" if minutes is not None else "not reached"
    return f"{name}: {reached} to +{threshold:g}; {curve}"


def train(out: Path, eval_every: int, overrides: dict) -> Path:
    from training import main
    from welfare_axis.study import StudyConfig

    args = StudyConfig().train_args(out)
    args = dataclasses.replace(
        args, eval_every=eval_every, resume=(out / "config.json").is_file(), **overrides
    )
    main(args)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="*", help="finished run directories to read")
    parser.add_argument(
        "--train", default=None, metavar="OUT", help="train the default study's run here first"
    )
    parser.add_argument("--eval-every", type=int, default=1)
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="training.Args override"
    )
    parser.add_argument("--threshold", type=float, default=25.0)
    a = parser.parse_args()
    runs = [Path(r) for r in a.runs]
    if a.train:
        overrides = {}
        for item in a.set:
            key, _, raw = item.partition("=")
            try:
                overrides[key] = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                overrides[key] = raw
        runs.append(train(Path(a.train), a.eval_every, overrides))
    if not runs:
        parser.error("give run directories, or --train OUT")
    print(_line(f"baseline {BASELINE_RUN.name}", gain_curve(BASELINE_RUN), a.threshold))
    for run in runs:
        points = gain_curve(run)
        print(_line(str(run), points, a.threshold))
        minutes = learn_minutes(points, a.threshold)
        value = f"{minutes:.1f}" if minutes is not None else f"not-reached({points[-1].train_minutes:.1f})"
        print(f"BENCH learn_minutes {value} <=8")


if __name__ == "__main__":
    main()
