"""Typed results of :func:`probes.readout_report.readout_report`: one dataclass per readout, read by attribute.

``ReadoutReport.to_dict()`` is the report's JSON (the file ``readout_report`` writes) and
``ReadoutReport.load(path)`` reads it back, so code that compares runs (the study, its report, compare)
reads ``report.geometry.cos_mold_gold.min`` rather than string keys.

Example:
    >>> curve = CosineCurve(avg=-0.2, min=-0.5, argmin=3, by_layer=[0.1, -0.5])
    >>> CosineCurve.from_dict(curve.to_dict()) == curve
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T", bound="Readout")


class Readout:
    """Shared JSON round trip: fields in order; nested readouts and ``{str: readout}`` maps recurse."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _dump(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.name in data:
                kwargs[f.name] = _load(hints[f.name], data[f.name])
        return cls(**kwargs)


def _dump(value: Any) -> Any:
    if isinstance(value, Readout):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _dump(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_dump(v) for v in value]
    if isinstance(value, list):
        return [_dump(v) for v in value]
    return value


def _load(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is types.UnionType:  # X | None: load as X
        options = [a for a in args if a is not type(None)]
        return _load(options[0], value) if len(options) == 1 else value
    if isinstance(hint, type) and issubclass(hint, Readout):
        return hint.from_dict(value)
    if origin is dict and len(args) == 2:
        return {k: _load(args[1], v) for k, v in value.items()}
    if origin is list and args:
        return [_load(args[0], v) for v in value]
    if origin is tuple and args and args[-1] is not Ellipsis:
        return tuple(_load(a, v) for a, v in zip(args, value))
    return value


# ----------------------------------------------------------------------------------------------------
# The sections
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Extraction(Readout):
    """The vectors' data and their selected layers (ℓ*: best held-out AUROC)."""

    n_per_class: dict[str, int]
    n_held_out: dict[str, int]
    layer_star: dict[str, int]
    auroc_at_layer_star: dict[str, float]
    norm_at_layer_star: dict[str, float]
    best_mean_auroc_layer: int
    consistency_at_layer_star: dict[str, float] | None = None
    """Mean pairwise cosine of the matched-triplet differences behind each vector at its ℓ* (training split;
    ``probes.consistency``): the consistency predictor of steerability (Braun et al. 2025)."""


@dataclass(frozen=True)
class CosineCurve(Readout):
    """A per-layer cosine with its average, minimum and the layer of the minimum."""

    avg: float
    min: float
    argmin: int
    by_layer: list[float]


@dataclass(frozen=True)
class PathReference(Readout):
    """cos(μ_Mold − μ_Path, μ_Gold − μ_Path) per layer (the Path-reference cosine)."""

    avg: float
    min: float
    argmin: int
    last_layer: float
    by_layer: list[float]


@dataclass(frozen=True)
class CentredCosines(Readout):
    """Cosines of the centred class means at one layer, by pair name (``"Mold·Gold"``, ...)."""

    layer: int
    pairs: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, **self.pairs}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CentredCosines:
        return cls(layer=int(data["layer"]), pairs={k: v for k, v in data.items() if k != "layer"})


@dataclass(frozen=True)
class Estimate(Readout):
    """A readout number with its uncertainty and the control it must beat (``probes.nulls``).

    ``ci_low``/``ci_high`` are a 95% percentile bootstrap over the matched triplets (and, for tracking,
    over the held-out items too); ``null_mean`` ± ``null_sd`` is the value with the class labels shuffled
    within triplets, and ``p`` the permutation p-value in the direction ``alternative`` (the sign of the
    paper's claim; ``two-sided`` where it has none).
    """

    value: float
    ci_low: float | None
    ci_high: float | None
    null_mean: float
    null_sd: float
    p: float
    alternative: str

    @classmethod
    def of(cls, resampled: Any) -> Estimate:
        """From a ``probes.nulls.Resampled``, rounded like every report number."""
        low, high = resampled.ci()
        return cls(
            value=_r(resampled.observed),
            ci_low=_r(low) if math.isfinite(low) else None,
            ci_high=_r(high) if math.isfinite(high) else None,
            null_mean=_r(resampled.null_mean),
            null_sd=_r(resampled.null_sd),
            p=_r(resampled.p),
            alternative=resampled.alternative,
        )

    def text(self) -> str:
        """``value [low, high] (null m ± sd, p)`` for tables."""
        ci = f" [{self.ci_low:+.3f}, {self.ci_high:+.3f}]" if self.ci_low is not None else ""
        return f"{self.value:+.3f}{ci} (null {self.null_mean:+.3f} ± {self.null_sd:.3f}, p {self.p:.3f})"


def _r(x: float) -> float:
    return float(round(x, 6)) if math.isfinite(x) else float(x)


@dataclass(frozen=True)
class GeometryEstimates(Readout):
    """The geometry numbers with bootstrap intervals and their permutation nulls (``probes.nulls``)."""

    n_shuffles: int
    n_boot: int
    cos_mold_gold_avg: Estimate
    cos_mold_gold_min: Estimate
    path_reference_avg: Estimate
    path_reference_last: Estimate
    centred: dict[str, Estimate]
    """By pair (``"Mold·Gold"``, ...), at the centred-geometry layer."""
    last_layer_pre_norm: Estimate
    """cos(v_Mold, v_Gold) at the last layer, on the residual stream (the block output)."""
    last_layer_post_norm: Estimate
    """The same with the final norm applied to every activation first (what the unembedding reads)."""


@dataclass(frozen=True)
class Geometry(Readout):
    cos_mold_gold: CosineCurve
    path_reference: PathReference
    centred: CentredCosines
    estimates: GeometryEstimates | None = None
    """Intervals and nulls (None: ``null_shuffles=0``)."""


@dataclass(frozen=True)
class LensList(Readout):
    """One vector's logit lens: the tokens it promotes and suppresses, and its failure-token score."""

    top: list[str]
    bottom: list[str]
    failure_auroc: float
    failure_standardized: float
    failure_auroc_estimate: Estimate | None = None


@dataclass(frozen=True)
class LogitLensReadout(Readout):
    """The logit lens of v_Mold and v_Gold at one layer, raw and through the final norm."""

    layer: int
    lists: dict[str, LensList]
    """By ``"{Mold|Gold}_{raw|norm}"``; :meth:`of` reads them."""
    overlap_mold_top_gold_bottom: dict[str, Any]
    failure_tokens: list[str] = field(default_factory=list)
    """The whole-word failure tokens the score used (this tokenizer's vocabulary)."""
    success_tokens: list[str] = field(default_factory=list)

    _OTHER = ("layer", "overlap_mold_top_gold_bottom", "failure_tokens", "success_tokens")

    def of(self, concept: str, mode: str = "raw") -> LensList:
        return self.lists[f"{concept}_{mode}"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            **{k: v.to_dict() for k, v in self.lists.items()},
            "overlap_mold_top_gold_bottom": self.overlap_mold_top_gold_bottom,
            "failure_tokens": list(self.failure_tokens),
            "success_tokens": list(self.success_tokens),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogitLensReadout:
        lists = {k: LensList.from_dict(v) for k, v in data.items() if k not in cls._OTHER}
        return cls(
            layer=int(data["layer"]),
            lists=lists,
            overlap_mold_top_gold_bottom=data["overlap_mold_top_gold_bottom"],
            failure_tokens=list(data.get("failure_tokens", [])),
            success_tokens=list(data.get("success_tokens", [])),
        )


@dataclass(frozen=True)
class EmotionScatterSummary(Readout):
    """cos(emotion, v_Mold) against cos(emotion, v_Gold) over the emotions, at one layer."""

    layer: int
    slope: float
    r: float
    top_gold: list[tuple[str, float]]
    top_mold: list[tuple[str, float]]
    max_abs_cos: float
    slope_estimate: Estimate | None = None
    r_estimate: Estimate | None = None


@dataclass(frozen=True)
class ValenceAxisSummary(Readout):
    """Emotion PC1 (valence) at one layer: its fit to the ratings and its cosine with the vectors."""

    r_valence: float
    r_arousal_pc2: float
    explained_pc1: float
    explained_pc2: float
    cos_pc1_gold: float
    cos_pc1_mold: float
    cos_pc1_gold_estimate: Estimate | None = None
    cos_pc1_mold_estimate: Estimate | None = None


@dataclass(frozen=True)
class Emotions(Readout):
    n_emotions: int
    n_short_texts: int
    neutral_pcs_removed: dict[str, int]
    scatter: EmotionScatterSummary
    valence_axis: dict[str, ValenceAxisSummary]
    basis_model: str = ""
    """The model the emotion vectors were built on (the paper: the maze-naive one, for every model read)."""


@dataclass(frozen=True)
class SentimentAlignment(Readout):
    """Cosines of one sentiment axis with v_Mold and v_Gold."""

    cos_mold_at_emotion_layer: float
    cos_gold_at_emotion_layer: float
    max_abs_cos_mold: float
    max_abs_cos_gold: float
    cos_mold_estimate: Estimate | None = None
    """At the emotion layer."""
    cos_gold_estimate: Estimate | None = None


@dataclass(frozen=True)
class Tracking(Readout):
    """Cohen's d of the projection on v between goal achieved and not (maze) or right and wrong (feedback)."""

    maze_d_gold_vector_at_layer_star: float
    maze_d_mold_vector_at_layer_star: float
    maze_d_gold_vector_max_abs: float
    maze_d_gold_vector_by_layer: list[float]
    feedback_d_gold_vector_at_layer_star: float | None
    """None: fewer than 2 right or 2 wrong own answers (``feedback_n_correct``, ``feedback_n_incorrect``)."""
    feedback_d_mold_vector_at_layer_star: float | None
    maze_d_gold_estimate: Estimate | None = None
    """At ℓ*_Gold: the null projects on shuffled-label vectors; the interval resamples vectors and items."""
    maze_d_mold_estimate: Estimate | None = None
    maze_d_on_reference_vectors: dict[str, Estimate] | None = None
    feedback_answers: str = "model"
    """Whose answers the feedback follows: ``model`` (graded own answers) or ``reference``."""
    feedback_n_correct: int | None = None
    feedback_n_incorrect: int | None = None
    feedback_d_gold_estimate: Estimate | None = None
    """Null: correct/incorrect labels permuted; interval: conversations resampled."""
    feedback_d_mold_estimate: Estimate | None = None
    """This model's maze activations projected on another model's vectors (``tracking_vectors``: the trained
    v, for the control), by concept; null: group labels permuted; interval: items resampled."""


@dataclass(frozen=True)
class QReadoutSummary(Readout):
    """Logits as Q-values: Spearman correlation with the maze's true Q."""

    n_states: int
    n_states_used: int
    spearman_pooled_centred: float
    spearman_mean_per_state: float
    lens_layer_spearman_pooled_centred: float
    policy_entropy_nats: float
    action_share: list[float]
    horizon: int
    beta: float
    spearman_pooled_estimate: Estimate | None = None
    """Null: the four read-out values permuted within each state; interval: states resampled."""
    implicit_reward_spearman_estimate: Estimate | None = None
    """β(log π − log π_ref) against the true Q, with π_ref the maze-naive model (None: no reference)."""


@dataclass(frozen=True)
class ProbeSummary(Readout):
    """One environment-probe task at its best layer, with its control task and majority baseline."""

    best_layer: int
    metric: str
    score: float
    control: float | None
    selectivity: float | None
    baseline: float


@dataclass(frozen=True)
class EnvProbes(Readout):
    layers: list[int]
    n_states: int
    tasks: dict[str, ProbeSummary | None]
    """By task name; None where no layer gave a finite score (tiny runs)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "n_states": self.n_states,
            **{k: (v.to_dict() if v is not None else None) for k, v in self.tasks.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnvProbes:
        tasks = {
            k: (ProbeSummary.from_dict(v) if v is not None else None)
            for k, v in data.items()
            if k not in ("layers", "n_states")
        }
        return cls(layers=list(data["layers"]), n_states=int(data["n_states"]), tasks=tasks)


@dataclass(frozen=True)
class ReadoutReport(Readout):
    """Every readout of one model's reward vectors (see :func:`probes.readout_report.readout_report`)."""

    model: str
    n_layers: int
    d_model: int
    settings: dict[str, Any]
    extraction: Extraction
    geometry: Geometry
    logit_lens: LogitLensReadout
    emotions: Emotions
    sentiment: dict[str, SentimentAlignment]
    tracking: Tracking
    q_readout: QReadoutSummary
    env_probes: EnvProbes
    timings_s: dict[str, float] = field(default_factory=dict)
    peak_rss_gb: dict[str, float] = field(default_factory=dict)
    """The process's peak resident memory when each stage finished (``ru_maxrss``: it only grows), to see
    which stage sets the peak."""
    figures: str | None = None
    """The figures file written beside the report JSON (``load_figures`` reads it), if any."""

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if out["figures"] is None:
            del out["figures"]
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReadoutReport:
        """Read a report JSON written by ``readout_report(..., settings.out=path)``."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
