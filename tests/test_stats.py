"""Dose-response statistics checked against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from steering.stats import (
    bootstrap_slope_ci,
    dose_response_slopes,
    is_monotonic,
    ols_slope,
    summarize_cells,
)


def test_ols_slope_hand_computed() -> None:
    # x̄ = 1.5, ȳ = 2.75, Sxx = 5, Sxy = 5.5 -> slope 1.1, intercept 1.1
    # residuals (-0.1, 0.8, -1.3, 0.6): SSR = 2.7, s² = 1.35, se = sqrt(1.35 / 5) = sqrt(0.27)
    fit = ols_slope([0, 1, 2, 3], [1, 3, 2, 5])
    assert fit.slope == pytest.approx(1.1, abs=1e-12)
    assert fit.intercept == pytest.approx(1.1, abs=1e-12)
    assert fit.se == pytest.approx(math.sqrt(0.27), abs=1e-12)
    assert fit.n == 4


def test_ols_matches_numpy_polyfit() -> None:
    rng = np.random.default_rng(0)
    x = np.repeat([-4.0, -2.0, 0.0, 2.0, 4.0], 7)
    y = 0.3 * x + rng.normal(size=x.size)
    fit = ols_slope(x, y)
    (slope, intercept), cov = np.polyfit(x, y, 1, cov="unscaled")
    residuals = y - (slope * x + intercept)
    se = math.sqrt(cov[0, 0] * (residuals @ residuals) / (x.size - 2))
    assert fit.slope == pytest.approx(slope, abs=1e-12)
    assert fit.intercept == pytest.approx(intercept, abs=1e-12)
    assert fit.se == pytest.approx(se, rel=1e-10)


def test_ols_edge_cases() -> None:
    assert math.isnan(ols_slope([0, 1], [0, 2]).se)
    assert ols_slope([0, 1], [0, 2]).slope == 2.0
    with pytest.raises(ValueError, match="all x values are equal"):
        ols_slope([1, 1, 1], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 2"):
        ols_slope([1], [1])
    with pytest.raises(ValueError, match="same length"):
        ols_slope([1, 2], [1, 2, 3])


def test_bootstrap_ci_is_seeded_and_sensible() -> None:
    rng = np.random.default_rng(1)
    x = np.repeat([-4.0, -2.0, 0.0, 2.0, 4.0], 20)
    y = 0.5 * x + rng.normal(scale=1.0, size=x.size)
    fit = ols_slope(x, y)
    low, high = bootstrap_slope_ci(x, y, n_boot=500, seed=3)
    assert (low, high) == bootstrap_slope_ci(x, y, n_boot=500, seed=3)
    assert (low, high) != bootstrap_slope_ci(x, y, n_boot=500, seed=4)
    assert low < fit.slope < high
    # the percentile CI width is close to the normal-theory 2 * 1.96 * se
    assert (high - low) == pytest.approx(2 * 1.96 * fit.se, rel=0.25)
    # a noiseless line: every resample gives the same slope
    low, high = bootstrap_slope_ci([0, 0, 1, 1, 2, 2], [1, 1, 3, 3, 5, 5], n_boot=50)
    assert low == pytest.approx(2.0) and high == pytest.approx(2.0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_slope_ci(x, y, level=1.5)


def _record(vector, layer, alpha, values, incoherent=None, eval_name="sentiment"):
    return {
        "vector": vector,
        "layer": layer,
        "alpha": alpha,
        "eval": eval_name,
        "values": values,
        "incoherent": incoherent if incoherent is not None else [False] * len(values),
    }


def test_summaries_share_the_baseline_and_mask_incoherent_cells() -> None:
    records = [
        _record(None, None, 0.0, [0.0, 2.0]),  # shared alpha = 0 baseline
        _record("v", 3, 2.0, [2.0, 4.0]),
        _record("v", 3, -2.0, [-3.0, -1.0]),
        _record("u", 3, 2.0, [1.0, None], incoherent=[False, True]),
        _record("u", 3, -2.0, [None] * 10, incoherent=[True] * 10),  # 100 % incoherent: masked
    ]
    cells = {(c.vector, c.alpha): c for c in summarize_cells(records)}
    assert set(cells) == {("u", -2.0), ("u", 0.0), ("u", 2.0), ("v", -2.0), ("v", 0.0), ("v", 2.0)}
    assert cells[("v", 0.0)].mean == 1.0 and cells[("u", 0.0)].mean == 1.0
    assert cells[("v", 2.0)].mean == 3.0
    assert cells[("v", 2.0)].se == pytest.approx(1.0)  # std([2, 4], ddof=1) / sqrt(2)
    assert cells[("u", 2.0)].incoherent_rate == 0.5 and not cells[("u", 2.0)].masked
    assert cells[("u", -2.0)].masked and math.isnan(cells[("u", -2.0)].mean)

    slopes = {s.vector: s for s in dose_response_slopes(records, n_boot=100)}
    # v: x = (-2, -2, 0, 0, 2, 2), y = (-3, -1, 0, 2, 2, 4): x̄ = 0, Sxy = 6 + 2 + 4 + 8 = 20, Sxx = 16
    assert slopes["v"].slope == pytest.approx(1.25)
    assert slopes["v"].alphas == (-2.0, 0.0, 2.0)
    assert slopes["v"].excludes_zero
    # u: the masked α = -2 cell is dropped; x = (0, 0, 2), y = (0, 2, 1): slope = 0
    assert slopes["u"].slope == pytest.approx(0.0, abs=1e-12)
    assert slopes["u"].masked_alphas == (-2.0,)


def test_is_monotonic() -> None:
    assert is_monotonic([-1, 0, 0, 2])
    assert not is_monotonic([-1, 0, 0, 2], strict=True)
    assert is_monotonic([3, 2, 1], increasing=False, strict=True)
    assert not is_monotonic([0, float("nan"), 1])


def test_plots_return_figures_with_the_data() -> None:
    import plotly.graph_objects as go

    from steering.plots import dose_response_figure, layer_sweep_heatmap

    records = [
        _record(None, None, 0.0, [0.0, 2.0]),
        _record("v", 3, 2.0, [2.0, 4.0]),
        _record("v", 3, -2.0, [-3.0, -1.0]),
        _record("u", 3, 2.0, [1.0, 1.0]),
        _record("u", 3, -2.0, [None] * 10, incoherent=[True] * 10),
        _record("v", 5, 2.0, [0.0, 0.0]),
        _record("v", 5, -2.0, [0.0, 0.0]),
    ]
    cells = summarize_cells(records)
    with pytest.raises(ValueError, match="layer=..."):
        dose_response_figure(cells)
    fig = dose_response_figure(cells, layer=3)
    assert isinstance(fig, go.Figure)
    traces = {t.name: t for t in fig.data}
    assert list(traces["v"].x) == [-2.0, 0.0, 2.0] and list(traces["v"].y) == [-2.0, 1.0, 3.0]
    assert list(traces["u"].x) == [0.0, 2.0]  # the masked α = -2 cell is omitted
    heat = layer_sweep_heatmap(dose_response_slopes(records, n_boot=50), eval_name="sentiment")
    assert list(heat.data[0].x) == [3, 5] and list(heat.data[0].y) == ["u", "v"]
    # v at layer 5: x = (0, 0, 2, 2, -2, -2), y = (0, 2, 0, 0, 0, 0): Sxy = 0
    assert heat.data[0].z[1][0] == pytest.approx(1.25) and heat.data[0].z[1][1] == pytest.approx(
        0.0, abs=1e-12
    )
    with pytest.raises(ValueError, match="no slopes for eval 'refusal'"):
        layer_sweep_heatmap(dose_response_slopes(records, n_boot=50), eval_name="refusal")
