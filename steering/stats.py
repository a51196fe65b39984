"""Dose-response statistics: OLS slope with its standard error, seeded bootstrap CIs, per-cell summaries.

The paper reports, per (vector, eval, layer), the OLS slope of the metric against α pooled over
prompts × samples, with its standard error. We add a percentile bootstrap CI that resamples responses
*within* each α level (the α design stays fixed, so every resample has a defined slope).

Example:
    >>> fit = ols_slope([0, 1, 2, 3], [1, 3, 2, 5])
    >>> round(fit.slope, 6), round(fit.intercept, 6), round(fit.se, 6)
    (1.1, 1.1, 0.519615)
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from probes.ols import OLSFit, ols_slope


def bootstrap_slope_ci(
    x: Sequence[float],
    y: Sequence[float],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of the OLS slope, resampling ``y`` within each distinct ``x`` (seeded).

    Example:
        >>> low, high = bootstrap_slope_ci([0, 0, 1, 1], [0.0, 0.2, 1.0, 1.2], n_boot=200, seed=1)
        >>> 0.6 <= low <= high <= 1.4
        True
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if not isinstance(n_boot, int) or n_boot < 10:
        raise ValueError(f"n_boot must be an int >= 10, got {n_boot!r}")
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    ols_slope(xs, ys)  # validates
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(xs == value) for value in np.unique(xs)]
    # (n_boot, n) indices: each x level resampled with replacement from its own rows
    index = np.concatenate([g[rng.integers(0, g.size, size=(n_boot, g.size))] for g in groups], axis=1)
    bx = xs[index]
    by = ys[index]
    dx = bx - bx.mean(axis=1, keepdims=True)
    slopes = (dx * (by - by.mean(axis=1, keepdims=True))).sum(axis=1) / (dx * dx).sum(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(slopes, [tail, 1 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class SlopeRow:
    """Dose-response slope of one (vector, eval, layer)."""

    vector: str
    eval: str
    layer: int
    slope: float
    se: float
    ci_low: float
    ci_high: float
    intercept: float
    n: int
    alphas: tuple[float, ...]
    masked_alphas: tuple[float, ...]

    @property
    def excludes_zero(self) -> bool:
        """Whether the bootstrap CI excludes 0."""
        return self.ci_low > 0 or self.ci_high < 0


@dataclass(frozen=True)
class CellSummary:
    """Mean metric of one (vector, eval, layer, α) pooled over seeds, prompts and samples."""

    vector: str
    eval: str
    layer: int
    alpha: float
    mean: float
    se: float
    ci_low: float
    ci_high: float
    n: int
    incoherent_rate: float
    masked: bool


def expand_baselines(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Shared α = 0 baseline records (``vector is None``) copied into every (vector, layer) of their eval."""
    records = [dict(r) for r in records]
    baselines = [r for r in records if r.get("vector") is None]
    steered = [r for r in records if r.get("vector") is not None]
    pairs = {(r["vector"], r["layer"], r["eval"]) for r in steered}
    out = list(steered)
    for base in baselines:
        for vector, layer, eval_name in sorted(pairs, key=str):
            if eval_name == base["eval"]:
                out.append({**base, "vector": vector, "layer": layer})
    return out


def _pool(records: Sequence[Mapping[str, Any]]) -> tuple[list[float], list[bool]]:
    values: list[float] = []
    incoherent: list[bool] = []
    for record in records:
        incoherent += [bool(x) for x in record["incoherent"]]
        values += [float(v) for v in record["values"] if v is not None]
    return values, incoherent


def summarize_cells(
    records: Iterable[Mapping[str, Any]], *, mask_threshold: float = 0.9
) -> list[CellSummary]:
    """Per (vector, eval, layer, α): mean ± 1.96·SE of the pooled values, incoherence rate and the mask flag."""
    grouped: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for record in expand_baselines(records):
        grouped[(record["vector"], record["eval"], record["layer"], float(record["alpha"]))].append(record)
    out = []
    for (vector, eval_name, layer, alpha), group in sorted(grouped.items(), key=lambda kv: str(kv[0])):
        values, incoherent = _pool(group)
        n = len(values)
        mean = float(np.mean(values)) if n else math.nan
        se = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
        rate = sum(incoherent) / len(incoherent) if incoherent else 0.0
        out.append(
            CellSummary(
                vector=vector,
                eval=eval_name,
                layer=layer,
                alpha=alpha,
                mean=mean,
                se=se,
                ci_low=mean - 1.96 * se,
                ci_high=mean + 1.96 * se,
                n=n,
                incoherent_rate=rate,
                masked=rate > mask_threshold,
            )
        )
    return sorted(out, key=lambda c: (c.vector, c.eval, c.layer, c.alpha))


def dose_response_slopes(
    records: Iterable[Mapping[str, Any]],
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    mask_threshold: float = 0.9,
    exclude_masked: bool = True,
) -> list[SlopeRow]:
    """OLS slope, SE and bootstrap CI of metric vs α per (vector, eval, layer), pooled over responses.

    Masked cells (> ``mask_threshold`` incoherent) are left out when ``exclude_masked``.
    """
    records = expand_baselines(records)
    masked = {
        (c.vector, c.eval, c.layer, c.alpha)
        for c in summarize_cells(records, mask_threshold=mask_threshold)
        if c.masked
    }
    grouped: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[(record["vector"], record["eval"], record["layer"])].append(record)
    out = []
    for (vector, eval_name, layer), group in sorted(grouped.items(), key=lambda kv: str(kv[0])):
        xs: list[float] = []
        ys: list[float] = []
        used: set[float] = set()
        dropped: set[float] = set()
        for record in group:
            alpha = float(record["alpha"])
            if exclude_masked and (vector, eval_name, layer, alpha) in masked:
                dropped.add(alpha)
                continue
            values = [float(v) for v in record["values"] if v is not None]
            xs += [alpha] * len(values)
            ys += values
            if values:
                used.add(alpha)
        if len(used) < 2:
            fit, ci = OLSFit(math.nan, math.nan, math.nan, len(xs)), (math.nan, math.nan)
        else:
            fit = ols_slope(xs, ys)
            ci = bootstrap_slope_ci(xs, ys, n_boot=n_boot, level=level, seed=seed)
        out.append(
            SlopeRow(
                vector=vector,
                eval=eval_name,
                layer=layer,
                slope=fit.slope,
                se=fit.se,
                ci_low=ci[0],
                ci_high=ci[1],
                intercept=fit.intercept,
                n=fit.n,
                alphas=tuple(sorted(used)),
                masked_alphas=tuple(sorted(dropped)),
            )
        )
    return out


def is_monotonic(values: Sequence[float], *, increasing: bool = True, strict: bool = False) -> bool:
    """Whether ``values`` (ordered by α) never decrease (or never increase); NaNs fail."""
    pairs = list(zip(values, values[1:]))
    if any(math.isnan(v) for v in values):
        return False
    if increasing:
        return all(b > a if strict else b >= a for a, b in pairs)
    return all(b < a if strict else b <= a for a, b in pairs)
