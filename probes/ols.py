"""Ordinary least squares of y on x: slope, intercept, the slope's standard error and Pearson r.

One implementation for every fitted line in the toolkit (emotion scatter, dose-response slopes).

Example:
    >>> fit = ols_slope([0, 1, 2, 3], [1, 3, 2, 5])
    >>> round(fit.slope, 6), round(fit.intercept, 6), round(fit.se, 6), round(fit.r, 6)
    (1.1, 1.1, 0.519615, 0.831522)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class OLSFit:
    """``y ≈ intercept + slope * x``; ``se`` is the classical standard error of the slope (NaN when
    ``n < 3``) and ``r`` the Pearson correlation (NaN when ``y`` is constant)."""

    slope: float
    intercept: float
    se: float
    n: int
    r: float = math.nan


def ols_slope(x: Sequence[float], y: Sequence[float]) -> OLSFit:
    """Ordinary least squares of ``y`` on ``x``.

    Raises:
        ValueError: different lengths, fewer than 2 points, or all ``x`` equal.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.shape != ys.shape or xs.ndim != 1:
        raise ValueError(f"x and y must be 1-D and the same length, got {xs.shape} and {ys.shape}")
    n = xs.size
    if n < 2:
        raise ValueError(f"need at least 2 points for a slope, got {n}")
    dx, dy = xs - xs.mean(), ys - ys.mean()
    sxx = float(dx @ dx)
    if sxx == 0:
        raise ValueError("all x values are equal (x is constant): the slope is undefined")
    sxy = float(dx @ dy)
    slope = sxy / sxx
    intercept = float(ys.mean() - slope * xs.mean())
    syy = float(dy @ dy)
    r = sxy / math.sqrt(sxx * syy) if syy > 0 else math.nan
    if n < 3:
        return OLSFit(slope, intercept, math.nan, n, r)
    residuals = ys - (intercept + slope * xs)
    se = math.sqrt(float(residuals @ residuals) / (n - 2) / sxx)
    return OLSFit(slope, intercept, se, n, r)
