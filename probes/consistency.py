"""The consistency predictor of steerability (Braun et al. 2025, arXiv 2505.22637): how well the per-example
activation differences behind a mean-difference vector agree with each other.

Example:
    >>> import torch
    >>> difference_consistency(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))  # pairs: 1, 0, 0
    0.3333333333333333
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor


def difference_consistency(differences: Float[Tensor, "n d"]) -> float:
    """Mean pairwise cosine of the rows of ``differences`` (each pair once, no row with itself).

    With unit rows ``û_i``, ``Σ_{i≠j} û_i·û_j = ‖Σ û_i‖² − n``, so this is ``(‖Σ û_i‖² − n) / (n(n−1))``.
    Zero rows are left out.

    Raises:
        ValueError: fewer than two non-zero rows.
    """
    x = differences.detach().double().cpu()
    norms = x.norm(dim=1)
    x = x[norms > 0] / norms[norms > 0, None]
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"need at least two non-zero differences; got {n}")
    total = x.sum(0)
    return float((total @ total - n) / (n * (n - 1)))


def triplet_differences(activations: Any, concept: str, layer: int) -> Float[Tensor, "n d"]:
    """Per-example differences behind Eq. 1's ``v_concept`` on a matched design: row ``i`` is the
    ``concept`` trajectory's activation minus the mean of the other classes' ``i``-th activations (the same
    maze cell), so their mean is exactly ``v_concept`` (``probes.extract.aggregate(..., "mean_diff")``).

    Args:
        activations: ``probes.extract.ClassActivations`` (or ``{class: {layer: (n, d)}}``) with one size per class.
    """
    by_class = getattr(activations, "activations", activations)
    if concept not in by_class:
        raise KeyError(f"no class {concept!r}; classes: {sorted(by_class)}")
    sizes = {c: int(by_class[c][layer].shape[0]) for c in by_class}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"matched differences need one size per class; got {sizes}")
    others = [c for c in sorted(by_class) if c != concept]
    if not others:
        raise ValueError("need at least two classes")
    rest = torch.stack([by_class[c][layer].double() for c in others]).mean(0)
    return by_class[concept][layer].double() - rest


def consistency_table(activations: Any, layers: Mapping[str, int]) -> dict[str, float]:
    """``{concept: difference_consistency(triplet_differences(...))}`` at each concept's layer."""
    return {
        c: difference_consistency(triplet_differences(activations, c, layer)) for c, layer in layers.items()
    }
