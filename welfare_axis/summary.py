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

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probes.readouts import Estimate, Readout, ReadoutReport

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
        summary = cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        return summary.with_readout_measures(path.parent)

    def with_readout_measures(self, run: str | os.PathLike[str]) -> StudySummary:
        """This summary with every :func:`readout_measures` entry it lacks, read from the two readouts saved
        with it (``<run>/readouts_{trained,control}.json`` in a record of ``docs/study_runs``, or
        ``<run>/stages/readouts/`` in a study directory). So a measure added to the toolkit after a study ran
        is read from that study's own readouts; the recorded measures are kept as they are. Without the
        readouts, the summary is returned unchanged."""
        for folder in (Path(run), Path(run) / "stages" / "readouts"):
            trained, control = folder / "readouts_trained.json", folder / "readouts_control.json"
            if trained.is_file() and control.is_file():
                break
        else:
            return self
        derived = readout_measures(ReadoutReport.load(trained), ReadoutReport.load(control), self.paper)
        added = {name: m for name, m in derived.items() if name not in self.measures}
        return dataclasses.replace(self, measures={**self.measures, **added}) if added else self


def readout_measures(
    trained: ReadoutReport, control: ReadoutReport, paper: Mapping[str, str] | None = None
) -> dict[str, Measure]:
    """The study's headline measures that the two readouts alone determine: the trained model's (v) beside
    the untrained control's (u), with their intervals and nulls where the readout has them, and the paper's
    values from ``paper`` (``f"{name}_trained"``/``f"{name}_control"`` keys, e.g. ``welfare_axis.study.PAPER``).

    ``cos_last_layer`` is cos(v_Mold, v_Gold) at the last layer of the residual stream (before the final
    norm), the statistic of the test preregistered in docs/results.md (session 20);
    ``cos_last_layer_post_norm`` is the same after the final norm, as the logit lens reads it.
    """
    paper = paper or {}
    measures: dict[str, Measure] = {}

    def add(section: str, name: str, read: Callable[[ReadoutReport], Any],
            estimate: Callable[[ReadoutReport], Any] | None = None) -> None:  # fmt: skip
        measures[name] = Measure(
            section=section,
            trained=read(trained),
            control=read(control),
            trained_estimate=estimate(trained) if estimate else None,
            control_estimate=estimate(control) if estimate else None,
            paper_trained=paper.get(f"{name}_trained", ""),
            paper_control=paper.get(f"{name}_control", ""),
        )

    def geometry(attribute: str) -> Callable[[ReadoutReport], Any]:
        return lambda r: getattr(r.geometry.estimates, attribute) if r.geometry.estimates else None

    add("geometry", "cos_min", lambda r: r.geometry.cos_mold_gold.min, geometry("cos_mold_gold_min"))
    add("geometry", "cos_argmin", lambda r: r.geometry.cos_mold_gold.argmin)
    add("geometry", "cos_avg", lambda r: r.geometry.cos_mold_gold.avg, geometry("cos_mold_gold_avg"))
    add("geometry", "cos_last_layer", lambda r: r.geometry.cos_mold_gold.by_layer[-1],
        geometry("last_layer_pre_norm"))  # fmt: skip
    add("geometry", "cos_last_layer_post_norm", lambda r: geometry("last_layer_post_norm")(r)
        and geometry("last_layer_post_norm")(r).value, geometry("last_layer_post_norm"))  # fmt: skip
    add("geometry", "centred_mold_gold", lambda r: r.geometry.centred.pairs.get("Mold·Gold"),
        lambda r: r.geometry.estimates.centred.get("Mold·Gold") if r.geometry.estimates else None)  # fmt: skip
    add("geometry", "path_reference_last_layer", lambda r: r.geometry.path_reference.last_layer,
        geometry("path_reference_last"))  # fmt: skip
    add("logit_lens", "v_mold_top_raw", lambda r: r.logit_lens.of("Mold").top)
    add("logit_lens", "v_gold_bottom_raw", lambda r: r.logit_lens.of("Gold").bottom)
    add("logit_lens", "v_mold_failure_auroc", lambda r: r.logit_lens.of("Mold").failure_auroc,
        lambda r: r.logit_lens.of("Mold").failure_auroc_estimate)  # fmt: skip
    add("emotions", "slope", lambda r: r.emotions.scatter.slope, lambda r: r.emotions.scatter.slope_estimate)
    add("emotions", "r", lambda r: r.emotions.scatter.r, lambda r: r.emotions.scatter.r_estimate)
    add("tracking", "maze_d_gold_vector", lambda r: r.tracking.maze_d_gold_vector_at_layer_star,
        lambda r: r.tracking.maze_d_gold_estimate)  # fmt: skip
    add("tracking", "feedback_d", lambda r: r.tracking.feedback_d_gold_vector_at_layer_star,
        lambda r: r.tracking.feedback_d_gold_estimate)  # fmt: skip
    on_v = (control.tracking.maze_d_on_reference_vectors or {}).get("Gold")
    measures["control_maze_d_on_v_gold"] = Measure(
        section="tracking", trained=None, control=on_v.value if on_v else None, control_estimate=on_v
    )
    add("q_readout", "spearman_pooled_centred", lambda r: r.q_readout.spearman_pooled_centred,
        lambda r: r.q_readout.spearman_pooled_estimate)  # fmt: skip
    implicit = trained.q_readout.implicit_reward_spearman_estimate
    measures["implicit_reward_spearman"] = Measure(
        section="q_readout",
        trained=implicit.value if implicit else None,
        control=None,
        trained_estimate=implicit,
    )
    for task, row in trained.env_probes.tasks.items():
        if row is not None:
            add("env_probes", task,
                lambda r, t=task: None if r.env_probes.tasks.get(t) is None else r.env_probes.tasks[t].score)  # fmt: skip
    return measures
