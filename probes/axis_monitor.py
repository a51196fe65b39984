"""Watch the reward axis form while a model trains: a cheap, fixed readout taken every few steps.

The paper's App. G shows the reward vectors rotating into place over training; ``welfare_axis.checkpoint_series``
measures that after the fact from saved checkpoints. :class:`AxisMonitor` measures it live: it is built once on
the untrained model and then read at any model state (the trainer calls it every ``monitor_every`` steps).

- **Probe set**: a fixed, seeded set of scripted Mold / Gold / Path trajectories (``probes.extract``, the paper's
  §A.3 recipe; the same chats at every reading), split into matched halves (``ClassActivations.split``): the
  vectors come from one half, the tracking d from the other.
- **Frame** (computed once, on the untrained model): the control vectors u at every layer, and the valence
  axis (emotion PC1 of a fixed emotion subset, ``probes.emotions``) at the analysis layer (floor(2L/3)).
- **A reading** (:class:`AxisReading`): one capture of the probe set at all layers; per layer cos(v_Mold, v_Gold)
  (Eq. 1) and cos(v, u) (how far training moved each vector); at the analysis layer cos(v, PC1) and the tracking
  d (Cohen's d of the held-out Gold-final vs Mold-final trajectories' projections on v_Gold).

A reading equals ``probes.extract.reward_activations`` + ``aggregate`` on the same model (tested on a saved
checkpoint).

Example:
    >>> from probes.models import tiny_model
    >>> from maze_env import MazeConfig
    >>> model, tok = tiny_model("llama", n_layers=2)
    >>> monitor = AxisMonitor(model, tok, config=MazeConfig(size=12, n_turns=3), n_per_class=8, valence=False)
    >>> reading = monitor.read(model)
    >>> reading.cos_mold_u == [1.0, 1.0]  # the untrained model: v = u
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from probes import layers as _layers
from probes.emotions import emotion_vectors, load_emotion_stories, load_neutral_texts, subset_stories
from probes.emotions import valence_axis as _valence_axis
from probes.extract import PAPER_SEED, ClassActivations, aggregate, reward_activations
from probes.geometry import analysis_layer, cosine
from probes.tracking import tracking_from_activations


@dataclass(frozen=True)
class AxisReading:
    """The monitor's numbers at one model state (lists are per layer, index = layer)."""

    layer: int
    """The analysis layer of the scalar numbers."""
    cos_mold_gold: list[float]
    cos_mold_u: list[float]
    cos_gold_u: list[float]
    cos_mold_valence: float | None
    cos_gold_valence: float | None
    tracking_d: float
    """Cohen's d of held-out Gold-final minus Mold-final projections on v_Gold at ``layer``."""

    @property
    def cos_mold_gold_min(self) -> float:
        return min(self.cos_mold_gold)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(float(x), 6) for x in values]


class AxisMonitor:
    """The fixed probe set and reference frame of a training run; :meth:`read` takes one reading.

    Args:
        base: the untrained model (u and the valence axis are computed on it, once).
        tokenizer: its tokenizer (the same for every model read).
        config: the maze of the probe trajectories (the run's maze: its tiles included).
        n_per_class: trajectories per class (half make the vectors, half the tracking d).
        seed: base maze seed of the trajectories.
        layer: analysis layer (None: floor(2L/3), ``probes.geometry.analysis_layer``).
        valence: compute the valence axis (emotion PC1 over ``n_emotions`` emotions × ``stories_per_emotion``
            stories and ``n_neutral`` neutral texts); False leaves the valence cosines None.
        batch_size: texts per forward.
    """

    def __init__(
        self,
        base: nn.Module,
        tokenizer: Any,
        *,
        config: Any,
        n_per_class: int = 16,
        seed: int = PAPER_SEED,
        layer: int | None = None,
        valence: bool = True,
        n_emotions: int = 12,
        stories_per_emotion: int = 2,
        n_neutral: int = 12,
        batch_size: int = 8,
    ) -> None:
        if n_per_class < 8:
            raise ValueError(
                f"n_per_class must be >= 8 (4 held out per class for the tracking d); got {n_per_class}"
            )
        self.tokenizer = tokenizer
        self.config = config
        self.n_per_class = n_per_class
        self.seed = seed
        self.batch_size = batch_size
        n_layers = _layers.n_layers(base)
        self.layer = analysis_layer(n_layers) if layer is None else _layers.check_layer(base, layer)
        train, _ = self._activations(base)
        u = aggregate(train, "mean_diff", classes=["Mold", "Gold"])
        self.u = {c: dict(u[c].directions) for c in ("Mold", "Gold")}
        self.pc1 = None
        self.valence_info: dict[str, Any] = {}
        if valence:
            stories = subset_stories(load_emotion_stories(), n_emotions, stories_per_emotion)
            neutral = load_neutral_texts()[:n_neutral]
            ev = emotion_vectors(
                base, tokenizer, [self.layer], stories=stories, neutral_texts=neutral, batch_size=batch_size
            )
            axis = _valence_axis(ev, self.layer)
            self.pc1 = axis.pc1
            r = axis.r_valence
            self.valence_info = {"r_valence": r if math.isfinite(r) else None, "n_emotions": len(ev.emotions)}

    def _activations(self, model: nn.Module) -> tuple[ClassActivations, ClassActivations]:
        acts = reward_activations(
            model,
            self.tokenizer,
            n_per_class=self.n_per_class,
            config=self.config,
            seed=self.seed,
            batch_size=self.batch_size,
        )
        return acts.split(0.5, seed=0, matched=True)

    def settings(self) -> dict[str, Any]:
        """What the readings depend on (logged with them)."""
        maze = self.config.to_dict() if hasattr(self.config, "to_dict") else str(self.config)
        return {"n_per_class": self.n_per_class, "seed": self.seed, "layer": self.layer, "maze_config": maze,
                "valence": self.valence_info}  # fmt: skip

    @torch.no_grad()
    def read(self, model: nn.Module) -> AxisReading:
        """One reading of ``model`` (any state of the trained model; eval mode is the caller's choice)."""
        train, held = self._activations(model)
        v = aggregate(train, "mean_diff", classes=["Mold", "Gold"])
        layers = v["Mold"].layers
        mold, gold = v["Mold"].directions, v["Gold"].directions
        tracking = tracking_from_activations(
            v["Gold"].select([self.layer]),
            held.activations["Gold"],
            held.activations["Mold"],
            labels=("Gold", "Mold"),
        )
        return AxisReading(
            layer=self.layer,
            cos_mold_gold=_rounded(cosine(mold[layer], gold[layer]) for layer in layers),
            cos_mold_u=_rounded(cosine(mold[layer], self.u["Mold"][layer]) for layer in layers),
            cos_gold_u=_rounded(cosine(gold[layer], self.u["Gold"][layer]) for layer in layers),
            cos_mold_valence=None if self.pc1 is None else round(cosine(mold[self.layer], self.pc1), 6),
            cos_gold_valence=None if self.pc1 is None else round(cosine(gold[self.layer], self.pc1), 6),
            tracking_d=round(float(tracking.d[self.layer]), 6),
        )
