"""Which layer to steer at: the paper's App. L rule on held-out samples.

For each layer ℓ the held-out positive and negative activations are compared along ``v_ℓ``:

- AUROC of the scalar projections ``a · v_ℓ / ‖v_ℓ‖`` (positives labelled 1; ties count one half),
- Cohen's d of the same projections (pooled standard deviation), used as ``|d|``,
- overlap of the 50-bin histograms of the *cosines* ``cos(a, v_ℓ)`` of positives and negatives
  (both histograms on one shared range, each normalised to sum 1, overlap = Σ min; lower is better),

and ``ℓ* = ⌊(argmax AUROC + argmax |d| + argmin overlap) / 3⌋`` (first layer on ties). With a layer list
that is not contiguous, ℓ* is the evaluated layer nearest to that value (lower on ties).

Example:
    >>> sel = select_layer(vectors["Mold"], held_out)  # doctest: +SKIP
    >>> sel.layer, sel.auroc.round(2)  # doctest: +SKIP
    (20, array([0.51, ..., 0.98, ...]))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from probes.concept_vector import ConceptVector

__all__ = [
    "LayerSelection",
    "SelectionError",
    "auroc",
    "best_mean_auroc_layer",
    "cohens_d",
    "histogram_overlap",
    "layer_metrics",
    "select_layer",
]


class SelectionError(ValueError):
    """Bad selection input: empty samples, missing layers or classes, NaN."""


def _as_numpy(x: Tensor | np.ndarray | Sequence[float], what: str) -> np.ndarray:
    array = x.detach().double().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
    array = array.reshape(-1)
    if array.size == 0:
        raise SelectionError(f"{what} is empty")
    if not np.isfinite(array).all():
        raise SelectionError(f"{what} contains NaN or inf")
    return array


def auroc(positive: Tensor | np.ndarray, negative: Tensor | np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count 1/2)."""
    pos, neg = _as_numpy(positive, "positive scores"), _as_numpy(negative, "negative scores")
    # Mann–Whitney U from pairwise comparisons, chunked for memory; exact with ties.
    greater = 0.0
    ties = 0.0
    for start in range(0, pos.size, 4096):
        block = pos[start : start + 4096, None]
        greater += float((block > neg[None, :]).sum())
        ties += float((block == neg[None, :]).sum())
    return (greater + 0.5 * ties) / (pos.size * neg.size)


def cohens_d(positive: Tensor | np.ndarray, negative: Tensor | np.ndarray) -> float:
    """``(mean_pos − mean_neg) / pooled_sd`` with the (n−1)-weighted pooled variance (signed)."""
    pos, neg = _as_numpy(positive, "positive scores"), _as_numpy(negative, "negative scores")
    if pos.size + neg.size < 3:
        raise SelectionError("Cohen's d needs at least 3 samples in total")
    var_pos = pos.var(ddof=1) if pos.size > 1 else 0.0
    var_neg = neg.var(ddof=1) if neg.size > 1 else 0.0
    pooled = math.sqrt(((pos.size - 1) * var_pos + (neg.size - 1) * var_neg) / (pos.size + neg.size - 2))
    diff = pos.mean() - neg.mean()
    if pooled == 0.0:
        return 0.0 if diff == 0 else math.copysign(math.inf, diff)
    return float(diff / pooled)


def histogram_overlap(positive: Tensor | np.ndarray, negative: Tensor | np.ndarray, bins: int = 50) -> float:
    """Σ_bins min(p, q) of the two normalised histograms on their shared range (1 = identical, 0 = apart)."""
    pos, neg = _as_numpy(positive, "positive values"), _as_numpy(negative, "negative values")
    if not isinstance(bins, int) or bins < 1:
        raise SelectionError(f"bins must be a positive int, got {bins!r}")
    low, high = min(pos.min(), neg.min()), max(pos.max(), neg.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    p, _ = np.histogram(pos, bins=bins, range=(low, high))
    q, _ = np.histogram(neg, bins=bins, range=(low, high))
    return float(np.minimum(p / p.sum(), q / q.sum()).sum())


@dataclass(frozen=True)
class LayerSelection:
    """Per-layer separability of held-out samples along a vector, and the chosen layer ℓ*.

    Arrays are aligned with ``layers``.
    """

    concept: str
    layers: list[int]
    auroc: np.ndarray
    cohens_d: np.ndarray
    overlap: np.ndarray
    layer: int
    n_positive: int
    n_negative: int
    candidates: list[int] | None = None
    """The layers ℓ* was chosen among (None: all of ``layers``); see :meth:`within`."""

    def within(self, candidates: Sequence[int]) -> LayerSelection:
        """The same metrics with ℓ* chosen by the paper's rule among ``candidates`` only (argmax AUROC,
        argmax |d| and argmin overlap taken over them), e.g. the layers a LoRA run adapted, so that ℓ* lies
        where the trained model can differ from the untrained one. The per-layer arrays stay complete.

        Example:
            >>> sel = LayerSelection("Gold", [0, 1, 2, 3], np.array([.9, .6, .7, .8]), np.array([3., 1, 2, 2.5]),
            ...                      np.array([.1, .5, .4, .3]), layer=0, n_positive=4, n_negative=8)
            >>> sel.within([2, 3]).layer, sel.within([2, 3]).candidates
            (3, [2, 3])
        """
        chosen = sorted(set(candidates))
        unknown = [layer for layer in chosen if layer not in self.layers]
        if unknown or not chosen:
            raise SelectionError(
                f"candidate layers {unknown or '[]'} are not among the evaluated layers {self.layers[0]}..{self.layers[-1]}"
            )
        index = [self.layers.index(layer) for layer in chosen]
        layer = _paper_rule(chosen, self.auroc[index], self.cohens_d[index], self.overlap[index])
        return dataclasses.replace(self, layer=layer, candidates=chosen)

    @property
    def abs_cohens_d(self) -> np.ndarray:
        return np.abs(self.cohens_d)

    @property
    def best_auroc_layer(self) -> int:
        return self.layers[int(np.argmax(self.auroc))]

    @property
    def best_d_layer(self) -> int:
        return self.layers[int(np.argmax(self.abs_cohens_d))]

    @property
    def best_overlap_layer(self) -> int:
        return self.layers[int(np.argmin(self.overlap))]

    def as_dict(self) -> dict[str, object]:
        """JSON-ready summary (e.g. for ConceptVector metadata)."""
        return {
            "concept": self.concept,
            "layer": self.layer,
            "layers": list(self.layers),
            "auroc": self.auroc.tolist(),
            "cohens_d": self.cohens_d.tolist(),
            "overlap": self.overlap.tolist(),
            "best_auroc_layer": self.best_auroc_layer,
            "best_d_layer": self.best_d_layer,
            "best_overlap_layer": self.best_overlap_layer,
            "n_positive": self.n_positive,
            "n_negative": self.n_negative,
            "candidates": None if self.candidates is None else list(self.candidates),
        }


def _paper_rule(
    layers: list[int], auroc_values: np.ndarray, d_values: np.ndarray, overlap: np.ndarray
) -> int:
    total = (
        layers[int(np.argmax(auroc_values))]
        + layers[int(np.argmax(np.abs(d_values)))]
        + layers[int(np.argmin(overlap))]
    )
    target = total // 3
    if target in layers:
        return target
    return min(layers, key=lambda layer: (abs(layer - target), layer))


def layer_metrics(
    vector: ConceptVector | Mapping[int, Tensor],
    positives: Mapping[int, Float[Tensor, "n_pos d_model"]],
    negatives: Mapping[int, Float[Tensor, "n_neg d_model"]],
    *,
    layers: Sequence[int] | None = None,
    bins: int = 50,
    concept: str = "",
) -> LayerSelection:
    """Metrics for explicit positive / negative activations ``{layer: (n, d_model)}``."""
    directions = vector.directions if isinstance(vector, ConceptVector) else dict(vector)
    if isinstance(vector, ConceptVector) and not concept:
        concept = vector.concept
    chosen = sorted(layers) if layers is not None else sorted(directions)
    missing = [
        layer
        for layer in chosen
        if layer not in directions or layer not in positives or layer not in negatives
    ]
    if missing:
        raise SelectionError(f"layers {missing} are missing from the vector or the held-out activations")
    if not chosen:
        raise SelectionError("no layers to select from")
    au, dd, ov = [], [], []
    n_pos = n_neg = 0
    for layer in chosen:
        v = directions[layer].detach().double().cpu()
        norm = v.norm()
        if norm == 0:
            raise SelectionError(f"the vector is zero at layer {layer}")
        pos, neg = positives[layer].detach().double().cpu(), negatives[layer].detach().double().cpu()
        if pos.ndim != 2 or neg.ndim != 2 or pos.shape[1] != v.shape[0] or neg.shape[1] != v.shape[0]:
            raise SelectionError(
                f"layer {layer}: activations must be (n, {v.shape[0]}), got {tuple(pos.shape)} and {tuple(neg.shape)}"
            )
        n_pos, n_neg = pos.shape[0], neg.shape[0]
        proj_pos, proj_neg = pos @ v / norm, neg @ v / norm
        au.append(auroc(proj_pos, proj_neg))
        dd.append(cohens_d(proj_pos, proj_neg))
        cos_pos = proj_pos / pos.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
        cos_neg = proj_neg / neg.norm(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
        ov.append(histogram_overlap(cos_pos, cos_neg, bins))
    auroc_values, d_values, overlap = np.array(au), np.array(dd), np.array(ov)
    return LayerSelection(
        concept=concept,
        layers=chosen,
        auroc=auroc_values,
        cohens_d=d_values,
        overlap=overlap,
        layer=_paper_rule(chosen, auroc_values, d_values, overlap),
        n_positive=n_pos,
        n_negative=n_neg,
    )


def select_layer(
    vector: ConceptVector,
    held_out: object,
    *,
    target: str | None = None,
    reference: str | None = None,
    bins: int = 50,
) -> LayerSelection:
    """ℓ* for ``vector`` on held-out class activations (``probes.extract.ClassActivations``).

    Positives are the held-out samples of ``target`` (default ``vector.concept``); negatives are all
    other classes pooled (one-vs-rest, as Eq. 1), or only ``reference``.
    """
    activations = getattr(held_out, "activations", held_out)
    if not isinstance(activations, Mapping):
        raise SelectionError("held_out must be ClassActivations or {class: {layer: (n, d_model)}}")
    target = target or vector.concept
    if target not in activations:
        raise SelectionError(f"target class {target!r} not in held-out classes {sorted(activations)}")
    if reference is not None and reference not in activations:
        raise SelectionError(f"reference class {reference!r} not in held-out classes {sorted(activations)}")
    negative_names = (
        [reference] if reference is not None else [name for name in activations if name != target]
    )
    if not negative_names or target in negative_names:
        raise SelectionError("need at least one negative class different from the target")
    layers = [layer for layer in vector.layers if layer in activations[target]]
    positives = {layer: activations[target][layer] for layer in layers}
    negatives = {layer: torch.cat([activations[name][layer] for name in negative_names]) for layer in layers}
    return layer_metrics(vector, positives, negatives, layers=layers, bins=bins, concept=target)


def best_mean_auroc_layer(*selections: LayerSelection, candidates: Sequence[int] | None = None) -> int:
    """argmax over layers of the mean AUROC of several selections (the paper's emotion-scatter layer,
    argmax ½(AUROC_Mold + AUROC_Gold)), among ``candidates`` when given."""
    if not selections:
        raise SelectionError("pass at least one LayerSelection")
    layers = selections[0].layers
    if any(s.layers != layers for s in selections):
        raise SelectionError("selections cover different layers")
    mean = np.mean([s.auroc for s in selections], axis=0)
    if candidates is None:
        return layers[int(np.argmax(mean))]
    allowed = [i for i, layer in enumerate(layers) if layer in set(candidates)]
    if not allowed:
        raise SelectionError(f"no candidate layer among the evaluated layers {layers[0]}..{layers[-1]}")
    return layers[max(allowed, key=lambda i: (mean[i], -i))]
