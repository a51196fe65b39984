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
    if origin is types.UnionType:  # X | None
        readouts = [a for a in args if isinstance(a, type) and issubclass(a, Readout)]
        return readouts[0].from_dict(value) if readouts else value
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
class NullSummary(Readout):
    """A statistic's permutation null: mean ± sd of the shuffled values and the one-sided p of the observed
    (``probes.nulls``), for the average and the minimum over layers."""

    n_shuffles: int
    avg_null_mean: float
    avg_null_sd: float
    p_avg: float
    min_null_mean: float
    min_null_sd: float
    p_min: float

    @classmethod
    def of(cls, null: Any) -> NullSummary:
        """From a ``probes.nulls.CosineNull`` (its :meth:`summary`, rounded like every report number)."""
        s = null.summary()
        avg, low = s["avg"], s["min"]
        return cls(
            n_shuffles=s["n_shuffles"],
            avg_null_mean=round(avg["null_mean"], 6),
            avg_null_sd=round(avg["null_sd"], 6),
            p_avg=round(avg["p"], 6),
            min_null_mean=round(low["null_mean"], 6),
            min_null_sd=round(low["null_sd"], 6),
            p_min=round(low["p"], 6),
        )


@dataclass(frozen=True)
class Geometry(Readout):
    cos_mold_gold: CosineCurve
    path_reference: PathReference
    centred: CentredCosines
    cos_mold_gold_null: NullSummary | None = None
    """cos(v_Mold, v_Gold)'s null from labels shuffled within matched triplets (None: not computed)."""


@dataclass(frozen=True)
class LensList(Readout):
    """One vector's logit lens: the tokens it promotes and suppresses, and its failure-token score."""

    top: list[str]
    bottom: list[str]
    failure_auroc: float
    failure_standardized: float


@dataclass(frozen=True)
class LogitLensReadout(Readout):
    """The logit lens of v_Mold and v_Gold at one layer, raw and through the final norm."""

    layer: int
    lists: dict[str, LensList]
    """By ``"{Mold|Gold}_{raw|norm}"``; :meth:`of` reads them."""
    overlap_mold_top_gold_bottom: dict[str, Any]

    def of(self, concept: str, mode: str = "raw") -> LensList:
        return self.lists[f"{concept}_{mode}"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            **{k: v.to_dict() for k, v in self.lists.items()},
            "overlap_mold_top_gold_bottom": self.overlap_mold_top_gold_bottom,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogitLensReadout:
        lists = {
            k: LensList.from_dict(v)
            for k, v in data.items()
            if k not in ("layer", "overlap_mold_top_gold_bottom")
        }
        return cls(
            layer=int(data["layer"]),
            lists=lists,
            overlap_mold_top_gold_bottom=data["overlap_mold_top_gold_bottom"],
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


@dataclass(frozen=True)
class ValenceAxisSummary(Readout):
    """Emotion PC1 (valence) at one layer: its fit to the ratings and its cosine with the vectors."""

    r_valence: float
    r_arousal_pc2: float
    explained_pc1: float
    explained_pc2: float
    cos_pc1_gold: float
    cos_pc1_mold: float


@dataclass(frozen=True)
class Emotions(Readout):
    n_emotions: int
    n_short_texts: int
    neutral_pcs_removed: dict[str, int]
    scatter: EmotionScatterSummary
    valence_axis: dict[str, ValenceAxisSummary]


@dataclass(frozen=True)
class SentimentAlignment(Readout):
    """Cosines of one sentiment axis with v_Mold and v_Gold."""

    cos_mold_at_emotion_layer: float
    cos_gold_at_emotion_layer: float
    max_abs_cos_mold: float
    max_abs_cos_gold: float


@dataclass(frozen=True)
class Tracking(Readout):
    """Cohen's d of the projection on v between goal achieved and not (maze) or right and wrong (feedback)."""

    maze_d_gold_vector_at_layer_star: float
    maze_d_mold_vector_at_layer_star: float
    maze_d_gold_vector_max_abs: float
    maze_d_gold_vector_by_layer: list[float]
    feedback_d_gold_vector_at_layer_star: float
    feedback_d_mold_vector_at_layer_star: float


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
