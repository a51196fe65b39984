"""Figures for steering results; every helper returns a ``plotly.graph_objects.Figure`` (no ``.show()``).

- :func:`dose_response_figure`: the paper's "X" plot: metric vs α with 95 % CIs, one panel per eval, one
  line per vector (trained v vs norm-matched control u); masked cells (> 90 % incoherent) are left out.
- :func:`layer_sweep_heatmap`: dose-response slope per layer × vector for one eval, colour centred at 0.

Example:
    >>> from steering.stats import summarize_cells, dose_response_slopes
    >>> fig = dose_response_figure(summarize_cells(records))  # doctest: +SKIP
    >>> fig = layer_sweep_heatmap(dose_response_slopes(records), eval_name="sentiment")  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from steering.stats import CellSummary, SlopeRow

METRIC_LABELS = {
    "sentiment": "sentiment (−5..+5)",
    "confidence": "normalised P(True)",
    "refusal": "refusal rate",
    "backtracking": "backtracking rate",
}


def dose_response_figure(
    cells: Sequence[CellSummary],
    *,
    layer: int | None = None,
    evals: Sequence[str] | None = None,
    title: str | None = None,
) -> go.Figure:
    """Metric vs α with CI error bars; one subplot per eval, one trace per vector.

    Args:
        cells: from :func:`steering.stats.summarize_cells`.
        layer: which layer to show (default: the only one; required when the cells hold several).
        evals: evals to show, in order (default: all present).
    """
    if not cells:
        raise ValueError("no cells to plot")
    layers = sorted({c.layer for c in cells})
    if layer is None:
        if len(layers) > 1:
            raise ValueError(f"cells cover layers {layers}: pass layer=... to pick one")
        layer = layers[0]
    chosen = [c for c in cells if c.layer == layer]
    if not chosen:
        raise ValueError(f"no cells at layer {layer}; layers present: {layers}")
    eval_names = list(evals) if evals is not None else sorted({c.eval for c in chosen})
    vectors = sorted({c.vector for c in chosen})
    fig = make_subplots(rows=1, cols=len(eval_names), subplot_titles=eval_names, horizontal_spacing=0.08)
    palette = ["#1f77b4", "#7f7f7f", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]
    for col, eval_name in enumerate(eval_names, 1):
        for index, vector in enumerate(vectors):
            points = sorted(
                (c for c in chosen if c.eval == eval_name and c.vector == vector and not c.masked),
                key=lambda c: c.alpha,
            )
            if not points:
                continue
            half = [0.0 if math.isnan(c.se) else 1.96 * c.se for c in points]
            fig.add_trace(
                go.Scatter(
                    x=[c.alpha for c in points],
                    y=[c.mean for c in points],
                    error_y={"type": "data", "array": half, "visible": True},
                    mode="lines+markers",
                    name=vector,
                    legendgroup=vector,
                    showlegend=col == 1,
                    line={"color": palette[index % len(palette)]},
                    hovertemplate="α=%{x}<br>mean=%{y:.3f}<extra>" + vector + "</extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text="α", row=1, col=col)
        fig.update_yaxes(title_text=METRIC_LABELS.get(eval_name, eval_name), row=1, col=col)
    fig.update_layout(
        title=title or f"Dose-response at layer {layer} (95% CI; masked cells omitted)",
        template="plotly_white",
        height=380,
        width=max(420, 360 * len(eval_names)),
    )
    return fig


def layer_sweep_heatmap(slopes: Sequence[SlopeRow], *, eval_name: str, title: str | None = None) -> go.Figure:
    """Slope of metric vs α per layer (x) and vector (y) for one eval; hover shows SE and CI."""
    rows = [s for s in slopes if s.eval == eval_name]
    if not rows:
        present = sorted({s.eval for s in slopes})
        raise ValueError(f"no slopes for eval {eval_name!r}; present: {present}")
    layers = sorted({s.layer for s in rows})
    vectors = sorted({s.vector for s in rows})
    lookup = {(s.vector, s.layer): s for s in rows}
    z, text = [], []
    for vector in vectors:
        z_row, text_row = [], []
        for layer in layers:
            s = lookup.get((vector, layer))
            z_row.append(None if s is None or math.isnan(s.slope) else s.slope)
            text_row.append(
                "" if s is None else f"{s.slope:+.3f} ± {s.se:.3f}<br>CI [{s.ci_low:+.3f}, {s.ci_high:+.3f}]"
            )
        z.append(z_row)
        text.append(text_row)
    finite = [abs(v) for row in z for v in row if v is not None]
    bound = max(finite) if finite else 1.0
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=layers,
            y=vectors,
            text=text,
            hovertemplate="layer %{x}, %{y}<br>%{text}<extra></extra>",
            colorscale="RdBu",
            reversescale=True,
            zmid=0.0,
            zmin=-bound,
            zmax=bound,
            colorbar={"title": "slope / α"},
        )
    )
    fig.update_layout(
        title=title or f"Layer sweep: slope of {METRIC_LABELS.get(eval_name, eval_name)} vs α",
        xaxis_title="layer",
        yaxis_title="vector",
        template="plotly_white",
    )
    return fig
