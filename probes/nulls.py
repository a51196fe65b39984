"""Nulls and intervals for readouts of the reward vectors: what a number would be without a reward signal.

Eq. 1's cosine needs both. With balanced classes, ``v_Mold = μ_Mold − (μ_Gold + μ_Path)/2`` and ``v_Gold``
share ``μ_Path`` with opposite signs, so for pure noise ``cos(v_Mold, v_Gold)`` is about **−0.5, not 0**,
and its minimum over 30 layers is lower still. The Path-reference cosine sits at **+0.5** on noise, and
three centred class means at **−0.5** per pair. A raw number therefore says nothing until it is placed
in the distribution it would have without a reward signal.

:class:`TripletResampler` draws, from the class activations of the matched scripted design (sample ``i`` of
Mold, Gold and Path come from the same design cell: step count and final letter):

- **the permutation null**: the three labels of every triplet shuffled independently (the matched design
  is kept; the labels, not the data, move), ``n_shuffles`` times;
- **a bootstrap**: triplets resampled with replacement (the same indices in every class), ``n_boot``
  times, for a 95% percentile interval.

Any readout that is a function of the class means, or of the Eq. 1 vectors built from them, is then
evaluated on the observed labels, on every shuffle and on every bootstrap draw (:meth:`statistic`,
:meth:`across_layers`, :meth:`vectors`), giving a :class:`Resampled`: the observed value, its null, its
interval and a p-value. p-values use ``(1 + #{null at least as extreme}) / (1 + n_shuffles)``, one-sided
(``"less"``, ``"greater"``) where the paper's claim has a sign, two-sided otherwise.

:func:`eq1_cosine_null` is the Eq. 1 cosine's null on its own (average and minimum over layers).

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> noise = {c: {0: torch.randn(60, 256, generator=g)} for c in ("Mold", "Gold", "Path")}
    >>> null = eq1_cosine_null(noise, n_shuffles=100, seed=0)
    >>> round(float(null.null_avg.mean()), 1), null.p_avg > 0.05
    (-0.5, True)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

CLASSES = ("Mold", "Gold", "Path")

Alternative = Literal["less", "greater", "two-sided"]


def p_value(null: np.ndarray, observed: float, alternative: Alternative = "less") -> float:
    """Permutation p: ``(1 + #{null at least as extreme as observed}) / (1 + n)``.

    ``"two-sided"`` measures extremity as the distance from the null's mean.

    Example:
        >>> p_value(np.array([0.0, 1.0, 2.0, 3.0]), 0.5, "less")
        0.4
    """
    null = np.asarray(null, dtype=np.float64)
    if null.size == 0 or not np.isfinite(observed):
        return float("nan")
    eps = 1e-12
    if alternative == "less":
        extreme = np.sum(null <= observed + eps)
    elif alternative == "greater":
        extreme = np.sum(null >= observed - eps)
    elif alternative == "two-sided":
        centre = null.mean()
        extreme = np.sum(np.abs(null - centre) >= abs(observed - centre) - eps)
    else:
        raise ValueError(f"alternative must be 'less', 'greater' or 'two-sided'; got {alternative!r}")
    return float((1 + extreme) / (1 + null.size))


@dataclass(frozen=True)
class Resampled:
    """One statistic on the observed labels, under the permutation null and under the bootstrap.

    Attributes:
        observed: the statistic on the true labels and all the data.
        null: its value under each label shuffle, ``(n_shuffles,)``.
        boot: its value on each bootstrap resample, ``(n_boot,)`` (may be empty).
        alternative: the direction the p-value tests (the sign of the paper's claim).
    """

    observed: float
    null: np.ndarray
    boot: np.ndarray
    alternative: Alternative = "less"

    @property
    def p(self) -> float:
        return p_value(self.null, self.observed, self.alternative)

    def ci(self, level: float = 0.95) -> tuple[float, float]:
        """Percentile bootstrap interval (NaN, NaN without bootstrap draws)."""
        finite = self.boot[np.isfinite(self.boot)]
        if finite.size == 0:
            return (float("nan"), float("nan"))
        tail = (1.0 - level) / 2 * 100
        low, high = np.percentile(finite, [tail, 100 - tail])
        return (float(low), float(high))

    @property
    def null_mean(self) -> float:
        return float(np.mean(self.null)) if self.null.size else float("nan")

    @property
    def null_sd(self) -> float:
        return float(np.std(self.null, ddof=1)) if self.null.size > 1 else float("nan")


def _by_class(activations: Any) -> dict[str, Mapping[int, Tensor]]:
    raw = getattr(activations, "activations", activations)
    found = {str(name).lower(): by_layer for name, by_layer in raw.items()}
    missing = [c for c in CLASSES if c.lower() not in found]
    if missing:
        raise ValueError(f"the triplet resampler needs the classes {CLASSES}; missing {missing}")
    return {c: found[c.lower()] for c in CLASSES}


def eq1_vectors(means: Float[Tensor, "... 3 d"]) -> Float[Tensor, "... 3 d"]:
    """Eq. 1 with balanced classes: ``v_c = μ_c − mean of the other two``, rows (Mold, Gold, Path)."""
    total = means.sum(-2, keepdim=True)
    return means - (total - means) / 2


def eq1_cosine(means: Float[Tensor, "... 3 d"]) -> Float[Tensor, "*batch"]:
    """``cos(v_Mold, v_Gold)`` from class means ``(..., 3, d)``."""
    v = eq1_vectors(means)
    return torch.nn.functional.cosine_similarity(v[..., 0, :], v[..., 1, :], dim=-1)


def path_reference_cosine(means: Float[Tensor, "... 3 d"]) -> Float[Tensor, "*batch"]:
    """``cos(μ_Mold − μ_Path, μ_Gold − μ_Path)`` from class means ``(..., 3, d)``."""
    return torch.nn.functional.cosine_similarity(
        means[..., 0, :] - means[..., 2, :], means[..., 1, :] - means[..., 2, :], dim=-1
    )


def centred_cosine(a: int, b: int) -> Callable[[Tensor], Tensor]:
    """The cosine of centred class means ``a`` and ``b`` (indices into Mold, Gold, Path)."""

    def statistic(means: Tensor) -> Tensor:
        centred = means - means.mean(-2, keepdim=True)
        return torch.nn.functional.cosine_similarity(centred[..., a, :], centred[..., b, :], dim=-1)

    return statistic


class TripletResampler:
    """Class means under the observed labels, label shuffles within triplets, and a triplet bootstrap.

    Args:
        activations: ``{class: {layer: (n, d_model)}}`` or a ``probes.extract.ClassActivations`` with the
            same ``n`` in every class, sample ``i`` of each class from the same design cell.
        n_shuffles: label shuffles for the null (each permutes the labels of every triplet independently).
        n_boot: bootstrap resamples of the triplets (0: no intervals).
        seed: seeds both.

    Raises:
        ValueError: a missing class, unequal class sizes, or ``n_shuffles < 1``.
    """

    def __init__(self, activations: Any, *, n_shuffles: int = 200, n_boot: int = 200, seed: int = 0) -> None:
        if n_shuffles < 1:
            raise ValueError(f"n_shuffles must be >= 1; got {n_shuffles}")
        if n_boot < 0:
            raise ValueError(f"n_boot must be >= 0; got {n_boot}")
        self._by_class = _by_class(activations)
        self.layers = sorted(self._by_class["Mold"])
        sizes = {c: int(self._by_class[c][self.layers[0]].shape[0]) for c in CLASSES}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"matched triplets need one size per class; got {sizes}")
        self.n = n = sizes["Mold"]
        rng = np.random.default_rng(seed)
        # perms[k, i] = which source class each label takes in triplet i under shuffle k
        perms = torch.from_numpy(np.argsort(rng.random((n_shuffles, n, 3)), axis=-1))  # (S, n, 3)
        self._shuffle = torch.nn.functional.one_hot(perms, 3).to(torch.float64) / n  # (S, n, label, source)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) if n_boot else np.zeros((0, n))
        self._boot = torch.from_numpy(counts).to(torch.float64) / n  # (B, n)
        self._cache: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    @property
    def n_shuffles(self) -> int:
        return int(self._shuffle.shape[0])

    @property
    def n_boot(self) -> int:
        return int(self._boot.shape[0])

    def means(
        self, layer: int
    ) -> tuple[Float[Tensor, "3 d"], Float[Tensor, "S 3 d"], Float[Tensor, "B 3 d"]]:
        """Class means (Mold, Gold, Path) at ``layer``: observed, under each shuffle, on each bootstrap draw."""
        if layer not in self._cache:
            if layer not in self._by_class["Mold"]:
                raise KeyError(f"layer {layer} is not in the activations (layers {self.layers})")
            x = torch.stack([self._by_class[c][layer].to(torch.float64) for c in CLASSES])  # (source, n, d)
            observed = x.mean(1)
            null = torch.einsum("kilc,cid->kld", self._shuffle, x)
            boot = torch.einsum("bi,cid->bcd", self._boot, x)
            self._cache = {layer: (observed, null, boot)}  # one layer at a time: bounded memory
        return self._cache[layer]

    def vectors(
        self, layer: int
    ) -> tuple[Float[Tensor, "3 d"], Float[Tensor, "S 3 d"], Float[Tensor, "B 3 d"]]:
        """Eq. 1 vectors (v_Mold, v_Gold, v_Path) at ``layer``: observed, null and bootstrap."""
        return tuple(eq1_vectors(m) for m in self.means(layer))  # type: ignore[return-value]

    def statistic(
        self, fn: Callable[[Tensor], Tensor], layer: int, alternative: Alternative = "less"
    ) -> Resampled:
        """``fn(class means (..., 3, d)) -> (...)`` at one layer, observed, null and bootstrap."""
        observed, null, boot = self.means(layer)
        return Resampled(
            observed=float(fn(observed)),
            null=fn(null).numpy(),
            boot=fn(boot).numpy() if self.n_boot else np.zeros(0),
            alternative=alternative,
        )

    def per_layer(
        self, fn: Callable[[Tensor], Tensor], layers: Sequence[int] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``fn`` at every layer: observed ``(L,)``, null ``(S, L)``, bootstrap ``(B, L)``."""
        layers = list(layers if layers is not None else self.layers)
        observed = np.zeros(len(layers))
        null = np.zeros((self.n_shuffles, len(layers)))
        boot = np.zeros((self.n_boot, len(layers)))
        for j, layer in enumerate(layers):
            o, s, b = self.means(layer)
            observed[j], null[:, j] = float(fn(o)), fn(s).numpy()
            if self.n_boot:
                boot[:, j] = fn(b).numpy()
        return observed, null, boot

    def across_layers(
        self,
        fn: Callable[[Tensor], Tensor],
        reduce: Literal["mean", "min", "max"],
        alternative: Alternative = "less",
        layers: Sequence[int] | None = None,
    ) -> Resampled:
        """``fn`` per layer, reduced over layers (the paper's "Avg" and "Min" columns)."""
        observed, null, boot = self.per_layer(fn, layers)
        op = {"mean": np.mean, "min": np.min, "max": np.max}[reduce]
        return Resampled(
            observed=float(op(observed)),
            null=op(null, axis=1),
            boot=op(boot, axis=1) if self.n_boot else np.zeros(0),
            alternative=alternative,
        )


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


def eq1_cosine_null(
    activations: Any, *, n_shuffles: int = 200, seed: int = 0, layers: list[int] | None = None
) -> CosineNull:
    """Eq. 1's ``cos(v_Mold, v_Gold)`` per layer, with its null from labels shuffled within matched triplets.

    Args:
        activations: as for :class:`TripletResampler`.
        n_shuffles: label shuffles (each permutes the three labels of every triplet independently).
        seed: the shuffles' seed.
        layers: the layers to use (default: every layer present).

    Raises:
        ValueError: a missing class, unequal class sizes, or ``n_shuffles < 1``.
    """
    resampler = TripletResampler(activations, n_shuffles=n_shuffles, n_boot=0, seed=seed)
    layers = sorted(layers if layers is not None else resampler.layers)
    observed, null, _ = resampler.per_layer(eq1_cosine, layers)
    null_avg, null_min = null.mean(1), null.min(1)
    obs_avg, obs_min = float(observed.mean()), float(observed.min())
    return CosineNull(
        observed={layer: float(v) for layer, v in zip(layers, observed)},
        observed_avg=obs_avg,
        observed_min=obs_min,
        null_avg=null_avg,
        null_min=null_min,
        p_avg=p_value(null_avg, obs_avg, "less"),
        p_min=p_value(null_min, obs_min, "less"),
        layers=layers,
    )


# ----------------------------------------------------------------------------------------------------
# Readouts of the vectors, evaluated on the observed, shuffled and bootstrapped vectors
# ----------------------------------------------------------------------------------------------------

ROW = {"Mold": 0, "Gold": 1, "Path": 2}


def _row(concept: str) -> int:
    try:
        return ROW[concept.title()]
    except KeyError:
        raise ValueError(f"concept must be Mold, Gold or Path; got {concept!r}") from None


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-300)


def cosine_with(
    resampler: TripletResampler, concept: str, layer: int, axis: Float[Tensor, " d"], alternative: Alternative
) -> Resampled:
    """``cos(v_concept, axis)`` at ``layer`` for a fixed ``axis`` (an emotion PC1, a sentiment axis)."""
    axis = _unit(torch.as_tensor(axis, dtype=torch.float64).flatten())
    observed, null, boot = (v[..., _row(concept), :] for v in resampler.vectors(layer))
    return Resampled(
        observed=float(_unit(observed) @ axis),
        null=(_unit(null) @ axis).numpy(),
        boot=(_unit(boot) @ axis).numpy() if resampler.n_boot else np.zeros(0),
        alternative=alternative,
    )


def _pearson_and_slope(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Row-wise OLS slope of ``y`` on ``x`` and Pearson r, for ``(k, n)`` inputs."""
    dx, dy = x - x.mean(-1, keepdim=True), y - y.mean(-1, keepdim=True)
    sxx, syy, sxy = (dx * dx).sum(-1), (dy * dy).sum(-1), (dx * dy).sum(-1)
    return sxy / sxx.clamp_min(1e-300), sxy / (sxx * syy).sqrt().clamp_min(1e-300)


def emotion_scatter_stats(
    resampler: TripletResampler, layer: int, emotions: Float[Tensor, "E d"]
) -> tuple[Resampled, Resampled]:
    """The emotion scatter (x = cos(e, v_Mold), y = cos(e, v_Gold) over emotions ``e``): slope and r.

    The paper's claim is a line of slope about −1 (``alternative="less"``). Note that shuffled-label
    vectors give a negative slope too (v_Mold and v_Gold share −μ_Path/2): the null says how much.
    """
    e = _unit(torch.as_tensor(emotions, dtype=torch.float64))  # (E, d)

    def stats(vectors: Tensor) -> tuple[Tensor, Tensor]:
        v = _unit(vectors.reshape(-1, 3, vectors.shape[-1]))  # (k, 3, d)
        x, y = v[:, 0, :] @ e.T, v[:, 1, :] @ e.T  # (k, E)
        return _pearson_and_slope(x, y)

    observed, null, boot = resampler.vectors(layer)
    (slope_o, r_o), (slope_n, r_n) = stats(observed), stats(null)
    slope_b, r_b = stats(boot) if resampler.n_boot else (torch.zeros(0), torch.zeros(0))
    return (
        Resampled(float(slope_o[0]), slope_n.numpy(), slope_b.numpy(), "less"),
        Resampled(float(r_o[0]), r_n.numpy(), r_b.numpy(), "less"),
    )


def _cohens_d_rows(pos: Tensor, neg: Tensor) -> Tensor:
    """Cohen's d (pooled, (n−1)-weighted) row-wise for ``(k, n1)`` and ``(k, n2)`` scores."""
    n1, n2 = pos.shape[-1], neg.shape[-1]
    pooled = (((n1 - 1) * pos.var(-1) + (n2 - 1) * neg.var(-1)) / (n1 + n2 - 2)).sqrt()
    return (pos.mean(-1) - neg.mean(-1)) / pooled.clamp_min(1e-300)


def projection_d(
    resampler: TripletResampler,
    concept: str,
    layer: int,
    positive: Float[Tensor, "n1 d"],
    negative: Float[Tensor, "n2 d"],
    alternative: Alternative,
    *,
    seed: int = 0,
) -> Resampled:
    """Cohen's d of the projections of two held-out groups onto ``v_concept`` at ``layer`` (tracking).

    The null projects the same activations on the shuffled-label vectors (would a vector without reward
    information separate the groups as well?). Each bootstrap draw pairs a bootstrap vector with a
    resample of each group's items, so the interval covers both the vector's and the items' noise.
    """
    pos = torch.as_tensor(positive, dtype=torch.float64)
    neg = torch.as_tensor(negative, dtype=torch.float64)
    if pos.shape[0] < 2 or neg.shape[0] < 2:
        raise ValueError(f"Cohen's d needs >= 2 items per group; got {pos.shape[0]} and {neg.shape[0]}")
    observed, null, boot = (_unit(v[..., _row(concept), :]) for v in resampler.vectors(layer))
    d_obs = float(_cohens_d_rows((pos @ observed)[None], (neg @ observed)[None])[0])
    d_null = _cohens_d_rows(null @ pos.T, null @ neg.T).numpy()
    if resampler.n_boot:
        rng = np.random.default_rng(seed)
        b = resampler.n_boot
        ip = torch.from_numpy(rng.integers(0, pos.shape[0], (b, pos.shape[0])))
        ineg = torch.from_numpy(rng.integers(0, neg.shape[0], (b, neg.shape[0])))
        proj_pos = torch.gather(boot @ pos.T, 1, ip)
        proj_neg = torch.gather(boot @ neg.T, 1, ineg)
        d_boot = _cohens_d_rows(proj_pos, proj_neg).numpy()
    else:
        d_boot = np.zeros(0)
    return Resampled(d_obs, d_null, d_boot, alternative)


def lens_auroc(
    resampler: TripletResampler,
    concept: str,
    layer: int,
    lens: Callable[[Tensor], Tensor],
    failure_ids: Sequence[int],
    success_ids: Sequence[int],
    alternative: Alternative,
) -> Resampled:
    """AUROC of failure over success tokens in the logit lens of ``v_concept`` (the failure-token score).

    ``lens(vectors (k, d)) -> (k, n_tokens)`` gives the lens values of ``failure_ids + success_ids`` for a
    batch of directions (raw ``v @ W_U`` or through the final norm).
    """
    n_fail = len(failure_ids)
    if n_fail == 0 or len(success_ids) == 0:
        raise ValueError("the failure-token AUROC needs failure and success tokens")

    def auroc_rows(vectors: Tensor) -> np.ndarray:
        values = lens(vectors).double()  # (k, n_fail + n_success)
        fail, good = values[:, :n_fail], values[:, n_fail:]
        greater = (fail[:, :, None] > good[:, None, :]).double().mean((1, 2))
        ties = (fail[:, :, None] == good[:, None, :]).double().mean((1, 2))
        return (greater + 0.5 * ties).numpy()

    observed, null, boot = (v[..., _row(concept), :] for v in resampler.vectors(layer))
    return Resampled(
        observed=float(auroc_rows(observed[None])[0]),
        null=auroc_rows(null),
        boot=auroc_rows(boot) if resampler.n_boot else np.zeros(0),
        alternative=alternative,
    )


def group_d(
    positive: Any,
    negative: Any,
    alternative: Alternative,
    *,
    n_shuffles: int = 200,
    n_boot: int = 200,
    seed: int = 0,
) -> Resampled:
    """Cohen's d of two groups of scores for a fixed direction, with a group-label permutation null and an
    item bootstrap (each group resampled on its own): tracking on another model's vector, feedback tracking.
    """
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if pos.size < 2 or neg.size < 2:
        raise ValueError(f"Cohen's d needs >= 2 items per group; got {pos.size} and {neg.size}")
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([pos, neg])
    order = np.argsort(rng.random((n_shuffles, pooled.size)), axis=1)
    shuffled = torch.from_numpy(pooled[order])
    null = _cohens_d_rows(shuffled[:, : pos.size], shuffled[:, pos.size :]).numpy()
    if n_boot:
        bp = torch.from_numpy(pos[rng.integers(0, pos.size, (n_boot, pos.size))])
        bn = torch.from_numpy(neg[rng.integers(0, neg.size, (n_boot, neg.size))])
        boot = _cohens_d_rows(bp, bn).numpy()
    else:
        boot = np.zeros(0)
    observed = float(_cohens_d_rows(torch.from_numpy(pos)[None], torch.from_numpy(neg)[None])[0])
    return Resampled(observed, null, boot, alternative)


def _pooled_spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman of per-state-centred values pooled over states, for ``(k, n, 4)`` pairs (average ranks)."""
    from scipy import stats

    ca = (a - a.mean(-1, keepdims=True)).reshape(a.shape[0], -1)
    cb = (b - b.mean(-1, keepdims=True)).reshape(b.shape[0], -1)
    ra, rb = stats.rankdata(ca, axis=1), stats.rankdata(cb, axis=1)
    ra, rb = ra - ra.mean(1, keepdims=True), rb - rb.mean(1, keepdims=True)
    denom = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(1) / denom, np.nan)


def q_spearman(
    values: Any, q_true: Any, *, n_shuffles: int = 200, n_boot: int = 200, seed: int = 0
) -> Resampled:
    """Pooled per-state-centred Spearman of read-out values with the true Q (``probes.q_readout.q_correlation``'s
    ``pooled``), with a null that permutes the four read-out values within each state (the readout's
    values kept, their link to the actions broken) and a bootstrap over states."""
    a = np.asarray(values, dtype=np.float64)
    b = np.asarray(q_true, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"values {a.shape} and q_true {b.shape} must be the same (n_states, n_actions)")
    rng = np.random.default_rng(seed)
    order = np.argsort(rng.random((n_shuffles, *a.shape)), axis=-1)
    null = _pooled_spearman_rows(
        np.take_along_axis(np.broadcast_to(a, order.shape), order, -1), np.broadcast_to(b, order.shape)
    )
    if n_boot:
        rows = rng.integers(0, a.shape[0], (n_boot, a.shape[0]))
        boot = _pooled_spearman_rows(a[rows], b[rows])
    else:
        boot = np.zeros(0)
    observed = float(_pooled_spearman_rows(a[None], b[None])[0])
    return Resampled(observed, null[np.isfinite(null)], boot, "greater")
