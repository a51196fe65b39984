"""Intervene on a direction while training: is the reward axis needed for learning?

``Args.intervene_vector`` (a saved ``probes.concept_vector.ConceptVector`` directory, e.g. the untrained
model's u_Gold or a trained v) at ``intervene_layer`` changes the policy's update forwards (the ones with
gradients) in one of three ways (``intervene_mode``):

- ``add``: the block output becomes ``h + α·v`` at every token (steering during training);
- ``ablate``: ``h − (h·v̂) v̂`` (the direction removed; α is ignored);
- ``penalty``: nothing changes in the forward, and the loss gains ``α · mean((h·v̂)²)`` over the real tokens
  (preventative regularisation, as persona-vector work penalises a projection while fine-tuning).

Rollouts, evaluations, the reference policy and the axis monitor run without it: the hook exists only inside
:func:`intervening`, which the update enters around each micro-batch's forward and which removes it on exit.

Example:
    >>> iv = Intervention(torch.ones(64), layer=1, mode="ablate")  # doctest: +SKIP
    >>> with intervening(model, iv) as penalty:  # doctest: +SKIP
    ...     loss = model(**batch).logits.sum() + penalty.value()
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from probes.emotions import project_out
from probes.layers import blocks, check_layer

Mode = Literal["add", "ablate", "penalty"]
MODES: tuple[str, ...] = ("add", "ablate", "penalty")


@dataclass(frozen=True)
class Intervention:
    """A direction, the block output it acts on, how, and how strongly."""

    direction: Tensor
    layer: int
    mode: Mode = "add"
    alpha: float = 1.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"intervene_mode must be one of {MODES}; got {self.mode!r}")
        if self.direction.ndim != 1 or not bool(torch.isfinite(self.direction).all()):
            raise ValueError("the intervention direction must be a finite 1-D Tensor (d_model,)")
        if float(self.direction.double().norm()) == 0:
            raise ValueError("the intervention direction must not be zero")
        if not math.isfinite(float(self.alpha)):
            raise ValueError(f"intervene_alpha must be finite; got {self.alpha!r}")

    @property
    def unit(self) -> Tensor:
        return self.direction / self.direction.norm()

    @classmethod
    def load(cls, path: str, layer: int | None, mode: str, alpha: float) -> Intervention:
        """From a saved ConceptVector directory: its direction at ``layer`` (None: the vector's only layer)."""
        from probes.concept_vector import ConceptVector

        vector = ConceptVector.load(path)
        if layer is None:
            if len(vector.layers) != 1:
                raise ValueError(
                    f"{path} has layers {vector.layers}: set intervene_layer to the one to intervene at"
                )
            layer = vector.layers[0]
        if layer not in vector.layers:
            raise ValueError(f"{path} has no direction at layer {layer}; it has layers {vector.layers}")
        return cls(vector[layer].detach().float().cpu(), int(layer), mode, float(alpha))  # type: ignore[arg-type]


@dataclass
class Penalty:
    """The projections a ``penalty`` intervention saw in one forward; :meth:`value` is α·mean(proj²)."""

    alpha: float
    mask: Tensor | None = None
    projections: list[Tensor] = field(default_factory=list)

    def value(self) -> Tensor | float:
        if not self.projections:
            return 0.0
        proj = torch.cat([p.reshape(-1) for p in self.projections])
        if self.mask is not None and self.mask.numel() == proj.numel():
            proj = proj[self.mask.reshape(-1).to(proj.device).bool()]
        return self.alpha * (proj.float() ** 2).mean()


@contextlib.contextmanager
def intervening(
    model: nn.Module, intervention: Intervention | None, attention_mask: Tensor | None = None
) -> Iterator[Penalty]:
    """The intervention's hook on ``model`` for the ``with`` block only (removed on exit, even after an error).

    Yields a :class:`Penalty` (empty unless the mode is ``penalty``); ``attention_mask`` restricts its mean to
    the real tokens when it matches the hidden states' shape.
    """
    penalty = Penalty(alpha=0.0 if intervention is None else intervention.alpha, mask=attention_mask)
    if intervention is None:
        yield penalty
        return
    layer = check_layer(model, intervention.layer)
    cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    def hook(module: nn.Module, args: tuple, output: object) -> object:
        hidden = output[0] if isinstance(output, tuple) else output
        key = (hidden.device, hidden.dtype)
        if key not in cache:
            cache[key] = (
                intervention.direction.to(device=hidden.device, dtype=hidden.dtype),
                intervention.unit.to(device=hidden.device, dtype=hidden.dtype),
            )
        direction, unit = cache[key]
        if intervention.mode == "penalty":
            penalty.projections.append(hidden @ unit)
            return None
        new = (
            hidden + intervention.alpha * direction
            if intervention.mode == "add"
            else project_out(hidden, unit[None])
        )
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = blocks(model)[layer].register_forward_hook(hook)
    try:
        yield penalty
    finally:
        handle.remove()


def from_args(args: object) -> Intervention | None:
    """The run's intervention (``Args.intervene_*``), loaded once per setting; None when off."""
    path = getattr(args, "intervene_vector", None)
    if path is None:
        return None
    return _load(str(path), args.intervene_layer, args.intervene_mode, float(args.intervene_alpha))  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=4)
def _load(path: str, layer: int | None, mode: str, alpha: float) -> Intervention:
    return Intervention.load(path, layer, mode, alpha)
