"""Ways to turn class activations into one direction: small typed callables made by factories.

An :class:`Aggregator` takes the activations of every class at one layer and the name of the target
class, and returns the target's direction ``(d_model,)``. The contrast is part of the aggregator:

- :func:`mean_diff` — one-vs-rest difference of means (the paper's Eq. 1):
  ``v_c = μ_c − μ_{others}``, where ``μ_{others}`` is the mean over the *pooled* samples of every other
  class (``mean_{T_Gold ∪ T_Path}``, so larger classes weigh more).
- :func:`single_reference` — ``μ_c − μ_ref`` (the paper's App. C.8 variant, ``ref="Path"``).
- :func:`pca_diff` — RepE-style: the first principal direction of paired differences
  ``pos_i − neg_i`` (uncentred, as in steering-vectors, so a constant shift is found), signed so that
  positives project higher.
- :func:`logistic` — the coefficient direction of a seeded scikit-learn ``LogisticRegression``
  separating the target from the rest.

No hidden normalisation: mean differences keep their norm. PCA and logistic regression only define a
direction ``û``; they return it scaled by the mean difference along it, ``((μ_pos − μ_neg)·û) û``, so
their norms are on the same scale as ``mean_diff`` (documented, never unit-normalised).

Example:
    >>> import torch
    >>> acts = {"Mold": torch.tensor([[2.0, 0.0], [4.0, 0.0]]), "Gold": torch.tensor([[0.0, 1.0]]),
    ...         "Path": torch.tensor([[0.0, -1.0], [0.0, 3.0]])}
    >>> mean_diff()(acts, "Mold").tolist()  # mean of Mold minus mean of the 3 Gold/Path rows
    [3.0, -1.0]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from jaxtyping import Float
from torch import Tensor

ClassActivations = Mapping[str, Float[Tensor, "n d_model"]]


class AggregationError(ValueError):
    """Bad class activations: unknown or empty class, NaN, mismatched widths."""


class Aggregator(Protocol):
    """``(activations by class, target class) -> direction (d_model,)``; ``name`` goes into provenance."""

    name: str

    def __call__(self, activations: ClassActivations, target: str) -> Float[Tensor, " d_model"]: ...


def _validate(activations: ClassActivations, target: str) -> dict[str, Tensor]:
    if not isinstance(activations, Mapping) or len(activations) < 2:
        raise AggregationError(
            f"need activations of at least two classes, got {list(activations) if isinstance(activations, Mapping) else activations!r}"
        )
    if target not in activations:
        raise AggregationError(f"unknown target class {target!r}; classes are {sorted(activations)}")
    width = None
    clean: dict[str, Tensor] = {}
    for name, acts in activations.items():
        if not isinstance(acts, Tensor) or acts.ndim != 2:
            raise AggregationError(f"class {name!r}: activations must be a (n, d_model) tensor")
        if acts.shape[0] == 0:
            raise AggregationError(f"class {name!r} is empty: every class needs at least one sample")
        if width is None:
            width = acts.shape[1]
        elif acts.shape[1] != width:
            raise AggregationError(f"class {name!r} has width {acts.shape[1]}, others have {width}")
        if not bool(torch.isfinite(acts).all()):
            raise AggregationError(f"class {name!r} has NaN or inf activations")
        clean[name] = acts
    return clean


def _negatives(acts: dict[str, Tensor], target: str, ref: str | None) -> Tensor:
    if ref is None:
        return torch.cat([a for name, a in acts.items() if name != target])
    if ref not in acts:
        raise AggregationError(f"unknown reference class {ref!r}; classes are {sorted(acts)}")
    if ref == target:
        raise AggregationError(f"the reference class {ref!r} is the target itself")
    return acts[ref]


def _mean(x: Tensor) -> Tensor:
    return x.double().mean(dim=0)


def _scaled_to_mean_difference(unit: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """``((μ_pos − μ_neg)·û) û``: the mean difference's component along ``û`` (sign follows the data)."""
    delta = _mean(pos) - _mean(neg)
    return (delta @ unit) * unit


@dataclass(frozen=True)
class MeanDiff:
    """``μ_target − μ_negatives``; negatives are all other classes pooled, or ``ref`` alone."""

    ref: str | None = None

    @property
    def name(self) -> str:
        return "mean_diff" if self.ref is None else f"single_reference:{self.ref}"

    def __call__(self, activations: ClassActivations, target: str) -> Tensor:
        acts = _validate(activations, target)
        pos, neg = acts[target], _negatives(acts, target, self.ref)
        return (_mean(pos) - _mean(neg)).to(pos.dtype)


@dataclass(frozen=True)
class PCADiff:
    """Uncentred PCA of paired differences ``pos_i − neg_{π(i)}`` (seeded pairing), sign-fixed."""

    ref: str | None = None
    seed: int = 0

    @property
    def name(self) -> str:
        return "pca_diff" if self.ref is None else f"pca_diff:{self.ref}"

    def __call__(self, activations: ClassActivations, target: str) -> Tensor:
        acts = _validate(activations, target)
        pos, neg = acts[target].double(), _negatives(acts, target, self.ref).double()
        generator = torch.Generator().manual_seed(self.seed)
        n = min(pos.shape[0], neg.shape[0])
        pos_idx = torch.randperm(pos.shape[0], generator=generator)[:n]
        neg_idx = torch.randperm(neg.shape[0], generator=generator)[:n]
        diffs = pos[pos_idx] - neg[neg_idx]  # (n, d)
        # Top right-singular vector of the (uncentred) difference matrix.
        _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
        unit = vh[0]
        # PCA might find the negative of the correct vector: make positives project higher.
        if (diffs @ unit).mean() < 0:
            unit = -unit
        return _scaled_to_mean_difference(unit, pos, neg).to(acts[target].dtype)


@dataclass(frozen=True)
class Logistic:
    """Coefficient direction of a scikit-learn ``LogisticRegression`` (target = 1, negatives = 0)."""

    ref: str | None = None
    seed: int = 0
    sk_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "logistic" if self.ref is None else f"logistic:{self.ref}"

    def __call__(self, activations: ClassActivations, target: str) -> Tensor:
        from sklearn.linear_model import LogisticRegression

        acts = _validate(activations, target)
        pos, neg = acts[target], _negatives(acts, target, self.ref)
        features = torch.cat([pos, neg]).double().cpu().numpy()
        labels = [1] * pos.shape[0] + [0] * neg.shape[0]
        kwargs = {"max_iter": 2000, "random_state": self.seed, **self.sk_kwargs}
        classifier = LogisticRegression(**kwargs).fit(features, labels)
        coef = torch.as_tensor(classifier.coef_[0], dtype=torch.float64)
        norm = coef.norm()
        if norm == 0:
            raise AggregationError("logistic regression returned a zero coefficient vector (no separation)")
        return _scaled_to_mean_difference(coef / norm, pos, neg).to(pos.dtype)


def mean_diff() -> MeanDiff:
    """One-vs-rest difference of means, ``v_c = μ_c − μ_{all other classes pooled}`` (paper Eq. 1)."""
    return MeanDiff()


def single_reference(ref: str = "Path") -> MeanDiff:
    """``v_c = μ_c − μ_ref`` (paper App. C.8 uses ``ref="Path"``)."""
    return MeanDiff(ref=ref)


def pca_diff(*, ref: str | None = None, seed: int = 0) -> PCADiff:
    """RepE-style PCA of paired differences (one-vs-rest, or against ``ref``), seeded pairing."""
    return PCADiff(ref=ref, seed=seed)


def logistic(*, ref: str | None = None, seed: int = 0, **sk_kwargs: Any) -> Logistic:
    """Logistic-regression probe direction; ``sk_kwargs`` go to ``sklearn.linear_model.LogisticRegression``."""
    return Logistic(ref=ref, seed=seed, sk_kwargs=dict(sk_kwargs))


METHODS = {
    "mean_diff": mean_diff,
    "single_reference": single_reference,
    "pca_diff": pca_diff,
    "logistic": logistic,
}


def resolve(method: str | Aggregator) -> Aggregator:
    """An aggregator from a name in :data:`METHODS` (default arguments) or an aggregator itself."""
    if isinstance(method, str):
        if method not in METHODS:
            raise AggregationError(
                f"unknown method {method!r}: choose one of {sorted(METHODS)} or pass an aggregator"
            )
        return METHODS[method]()
    if not callable(method):
        raise TypeError(f"method must be a name or an aggregator callable, got {type(method).__name__}")
    return method
