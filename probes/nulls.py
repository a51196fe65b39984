"""Permutation nulls: what a readout gives when the class labels carry no information.

Eq. 1's cosine needs one. With balanced classes, ``v_Mold = μ_Mold − (μ_Gold + μ_Path)/2`` and ``v_Gold``
share ``μ_Path`` with opposite signs, so for pure noise ``cos(v_Mold, v_Gold)`` is about **−0.5, not 0**,
and its minimum over 30 layers is lower still. A raw cosine therefore says nothing until it is placed
in the distribution it would have without a reward signal.

:func:`eq1_cosine_null` draws that distribution by shuffling the labels **within matched triplets**:
sample ``i`` of Mold, Gold and Path come from the same design cell of the scripted trajectories (step
count and final letter), so each shuffle permutes the three labels of every triplet independently and
keeps the matched design. The p-values are one-sided (a more negative cosine is more extreme) with the
usual ``(1 + #{null ≤ observed}) / (1 + n_shuffles)``.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> noise = {c: {0: torch.randn(60, 256, generator=g)} for c in ("Mold", "Gold", "Path")}
    >>> null = eq1_cosine_null(noise, n_shuffles=100, seed=0)
    >>> round(float(null.null_avg.mean()), 1), null.p_avg > 0.05
    (-0.5, True)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

CLASSES = ("Mold", "Gold", "Path")


@dataclass(frozen=True)
class CosineNull:
    """Observed Eq. 1 cosines and their permutation null.

    Attributes:
        observed: ``cos(v_Mold, v_Gold)`` per layer on the true labels.
        observed_avg, observed_min: their average and minimum over layers.
        null_avg, null_min: the same two statistics for each shuffle, ``(n_shuffles,)``.
        p_avg, p_min: one-sided p-values (the null at or below the observation).
        layers: the layers, in order.
    """

    observed: dict[int, float]
    observed_avg: float
    observed_min: float
    null_avg: np.ndarray
    null_min: np.ndarray
    p_avg: float
    p_min: float
    layers: list[int]

    def summary(self) -> dict[str, Any]:
        """JSON-ready: observed, null mean ± sd and p for the average and the minimum over layers."""
        return {
            "avg": {"observed": self.observed_avg, "null_mean": float(self.null_avg.mean()),
                    "null_sd": float(self.null_avg.std(ddof=1)), "p": self.p_avg},
            "min": {"observed": self.observed_min, "null_mean": float(self.null_min.mean()),
                    "null_sd": float(self.null_min.std(ddof=1)), "p": self.p_min},
            "n_shuffles": int(self.null_avg.size),
        }  # fmt: skip


def _by_class(activations: Any) -> dict[str, Mapping[int, Tensor]]:
    raw = getattr(activations, "activations", activations)
    found = {str(name).lower(): by_layer for name, by_layer in raw.items()}
    missing = [c for c in CLASSES if c.lower() not in found]
    if missing:
        raise ValueError(f"eq1_cosine_null needs the classes {CLASSES}; missing {missing}")
    return {c: found[c.lower()] for c in CLASSES}


def _eq1_cosines(means: Tensor) -> Tensor:
    """``cos(v_Mold, v_Gold)`` from class means ``(..., 3, d)`` (Eq. 1 with balanced classes)."""
    v_mold = means[..., 0, :] - (means[..., 1, :] + means[..., 2, :]) / 2
    v_gold = means[..., 1, :] - (means[..., 0, :] + means[..., 2, :]) / 2
    return torch.nn.functional.cosine_similarity(v_mold, v_gold, dim=-1)


def eq1_cosine_null(
    activations: Any, *, n_shuffles: int = 200, seed: int = 0, layers: list[int] | None = None
) -> CosineNull:
    """Eq. 1's ``cos(v_Mold, v_Gold)`` per layer, with its null from labels shuffled within matched triplets.

    Args:
        activations: ``{class: {layer: (n, d_model)}}`` or a ``probes.extract.ClassActivations``, with the
            same ``n`` in every class and sample ``i`` of each class from the same design cell.
        n_shuffles: label shuffles (each permutes the three labels of every triplet independently).
        seed: the shuffles' seed.
        layers: the layers to use (default: every layer present).

    Raises:
        ValueError: a missing class, unequal class sizes, or ``n_shuffles < 1``.
    """
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be >= 1; got {n_shuffles}")
    by_class = _by_class(activations)
    layers = sorted(layers if layers is not None else by_class["Mold"])
    sizes = {c: int(by_class[c][layers[0]].shape[0]) for c in CLASSES}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"matched triplets need one size per class; got {sizes}")
    n = sizes["Mold"]
    rng = np.random.default_rng(seed)
    # perms[k, i] = which source class each label takes in triplet i under shuffle k
    perms = torch.from_numpy(np.argsort(rng.random((n_shuffles, n, 3)), axis=-1))  # (S, n, 3)
    weights = torch.nn.functional.one_hot(perms, 3).to(torch.float64)  # (S, n, label, source)
    observed: dict[int, float] = {}
    null = torch.zeros(n_shuffles, len(layers), dtype=torch.float64)
    for j, layer in enumerate(layers):
        x = torch.stack([by_class[c][layer].to(torch.float64) for c in CLASSES])  # (source, n, d)
        observed[layer] = float(_eq1_cosines(x.mean(1)))
        shuffled_means = torch.einsum("kilc,cid->kld", weights, x) / n  # (S, label, d)
        null[:, j] = _eq1_cosines(shuffled_means)
    values = np.array([observed[layer] for layer in layers])
    null_avg, null_min = null.mean(1).numpy(), null.min(1).values.numpy()
    obs_avg, obs_min = float(values.mean()), float(values.min())

    def p(null_stat: np.ndarray, stat: float) -> float:
        return float((1 + np.sum(null_stat <= stat + 1e-12)) / (1 + null_stat.size))

    return CosineNull(
        observed=observed,
        observed_avg=obs_avg,
        observed_min=obs_min,
        null_avg=null_avg,
        null_min=null_min,
        p_avg=p(null_avg, obs_avg),
        p_min=p(null_min, obs_min),
        layers=layers,
    )
