"""A study's headline numbers as typed objects: what ``summary.json`` holds and what compare and the report read.

A :class:`StudySummary` has the training result (:class:`TrainingSummary`) and one :class:`Measure` per
headline number: the trained model's value (v) beside the untrained control's (u), each with its 95%
interval and permutation null where the readout gives one (``probes.readouts.Estimate``), and the paper's
values. Measures are grouped by ``section`` (geometry, logit lens, emotions, tracking, logit-as-Q,
environment probes) and read by name::

    summary = StudySummary.load("runs/default")
    summary.measure("cos_min").trained, summary.measure("cos_min").trained_estimate.p

Example:
    >>> m = Measure(section="geometry", trained=-0.8, control=-0.5)
    >>> Measure.from_dict(m.to_dict()) == m
    True
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probes.readouts import Estimate, Readout

SECTIONS: tuple[str, ...] = ("geometry", "logit_lens", "emotions", "tracking", "q_readout", "env_probes")
"""The measure sections, in report order."""


@dataclass(frozen=True)
class Measure(Readout):
    """One headline number: trained (v) and control (u), their uncertainty where measured, the paper's value.

    ``trained``/``control`` are the plain values (a number, a layer, a token list, or None where a run
    could not measure it); ``*_estimate`` add the interval and the null when the readout has them.
    """

    section: str
    trained: Any
    control: Any
    trained_estimate: Estimate | None = None
    control_estimate: Estimate | None = None
    paper_trained: str = ""
    paper_control: str = ""


@dataclass(frozen=True)
class ReturnGain(Readout):
    """Held-out mean return after minus before training, its standard error and z: paired by maze when
    both evaluations played the same mazes (``training.evaluation.compare_evals``), else unpaired."""

    diff: float
    se: float
    z: float
    paired: bool = False
    gold_diff: float | None = None
    mold_diff: float | None = None


@dataclass(frozen=True)
class WarmStart(Readout):
    """The run a study's training started from (``StudyConfig.warm_start``): its algorithm, steps, held-out
    evaluations and gain over the untrained model, and the study's run's gain over it (``then_gain``)."""

    algo: str
    steps: int
    run: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    return_gain: ReturnGain | None = None
    then_gain: ReturnGain | None = None


@dataclass(frozen=True)
class TrainingSummary(Readout):
    """Optimizer steps and the held-out evaluation before and after training (``training.evaluation``).
    After a warm start, ``before`` is the untrained model's (so ``return_gain`` is over it, like every other
    configuration's) and ``warm_start`` holds the first run and the second run's gain over it."""

    steps: int
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    return_gain: ReturnGain | None = None
    warm_start: WarmStart | None = None
    trained_by: dict[str, Any] | None = None
    """For a finished run that a study trained (``--from-run <study>/stages/train/run``): that study's
    settings (its ``study_config.json``), so ``welfare-axis compare`` counts this readout as a seed of the
    configuration that trained it rather than of a run path (:func:`welfare_axis.claims.configuration_of`)."""


@dataclass(frozen=True)
class StudySummary(Readout):
    """Everything ``welfare-axis run`` reports in one object (``summary.json``)."""

    config: dict[str, Any]
    fast: bool
    model: str
    training: TrainingSummary
    measures: dict[str, Measure]
    layer_star: dict[str, int]
    forgetting: dict[str, Any] | None = None
    checkpoint_series: dict[str, Any] | None = None
    steering: dict[str, dict[str, Any] | None] | None = None
    """Dose-response slope rows by ``"{vector}_{eval}"`` (``steering.stats``), None where not swept."""
    paper: dict[str, str] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Each stage's own run time (a cached stage keeps the time it took when it ran)."""
    stage_peak_rss_gb: dict[str, float] = field(default_factory=dict)
    """The process's peak resident memory (GB) when each stage finished, as it ran (``ru_maxrss`` only grows:
    the first stage whose value jumps needed the memory); empty in records made before it was kept."""

    @property
    def study_minutes(self) -> float:
        """The whole study's compute time: the sum of its stages' run times, in minutes."""
        return sum(self.stage_seconds.values()) / 60

    @property
    def peak_rss_gb(self) -> float | None:
        """The largest of the stages' recorded peak resident memories (GB); None in older records."""
        return max(self.stage_peak_rss_gb.values(), default=None)

    @property
    def peak_rss_stage(self) -> str | None:
        """The first stage (in run order) whose recorded peak equals :attr:`peak_rss_gb`: the stage that needed
        the memory, since later stages carry the same high-water mark; None in older records."""
        peak = self.peak_rss_gb
        return next((name for name, gb in self.stage_peak_rss_gb.items() if gb == peak), None)

    def measure(self, name: str) -> Measure:
        """The measure called ``name``; a KeyError lists the names there are."""
        if name not in self.measures:
            raise KeyError(f"no measure {name!r}; this summary has {sorted(self.measures)}")
        return self.measures[name]

    def section(self, section: str) -> dict[str, Measure]:
        """The measures of one section, in order."""
        return {name: m for name, m in self.measures.items() if m.section == section}

    @classmethod
    def load(cls, run: str | os.PathLike[str]) -> StudySummary:
        """Read ``<run>/summary.json`` (or the file itself)."""
        path = Path(run)
        path = path / "summary.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(
                f"{path.parent} has no summary.json: run `welfare-axis run --out {path.parent}` to finish it first"
            )
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
