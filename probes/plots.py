"""Plotly figures for the readouts. Every helper returns a ``go.Figure`` (never shows it).

Example:
    >>> fig = layer_cosine_curves({"trained": {0: -0.2, 1: -0.9}, "control": {0: 0.1, 1: -0.1}})
    >>> [trace.name for trace in fig.data]
    ['trained', 'control']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from probes.emotions import EmotionScatter
from probes.env_probes import ProbeTable
from probes.geometry import CentredGeometry, LayerCosines
from probes.logit_lens import LogitLens
from probes.q_readout import QReadout

_LAYOUT = {"template": "plotly_white", "width": 720, "height": 440}


def _series(curve: LayerCosines | Mapping[int, float]) -> tuple[list[int], list[float]]:
    values = curve.cosines if isinstance(curve, LayerCosines) else dict(curve)
    layers = sorted(values)
    return layers, [float(values[layer]) for layer in layers]


def layer_cosine_curves(
    curves: Mapping[str, LayerCosines | Mapping[int, float]],
    *,
    title: str = "cos(v_Mold, v_Gold) by layer",
    y_title: str = "cosine",
    y_range: tuple[float, float] | None = (-1.05, 1.05),
) -> go.Figure:
    """One line per named curve (e.g. ``{"trained": ..., "control": ...}``), with a zero line.

    ``y_range=None`` lets the axis fit the data (for values that are not cosines, e.g. Cohen's d)."""
    if not curves:
        raise ValueError("no curves to plot")
    fig = go.Figure()
    for name, curve in curves.items():
        layers, values = _series(curve)
        fig.add_trace(go.Scatter(x=layers, y=values, mode="lines+markers", name=name))
    fig.add_hline(y=0.0, line_dash="dot", line_color="grey")
    fig.update_layout(
        title=title,
        xaxis_title="layer",
        yaxis_title=y_title,
        yaxis_range=list(y_range) if y_range else None,
        **_LAYOUT,
    )
    return fig


def centred_geometry_heatmap(geometry: CentredGeometry, *, title: str | None = None) -> go.Figure:
    """Pairwise cosines of centred class means (diverging colours, midpoint 0, annotated)."""
    matrix = geometry.cosines.numpy()
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=list(geometry.classes),
            y=list(geometry.classes),
            zmin=-1.0,
            zmax=1.0,
            zmid=0.0,
            colorscale="RdBu",
            text=np.round(matrix, 3),
            texttemplate="%{text}",
        )
    )
    fig.update_layout(
        title=title or f"centred class-mean cosines, layer {geometry.layer}",
        yaxis_autorange="reversed",
        **{**_LAYOUT, "width": 480},
    )
    return fig


def logit_lens_bars(lens: LogitLens, *, title: str | None = None) -> go.Figure:
    """Horizontal bars: promoted tokens (top) and suppressed tokens (bottom) with their lens values."""
    tokens = [repr(t.token) for t in lens.top] + [repr(t.token) for t in reversed(lens.bottom)]
    values = [t.value for t in lens.top] + [t.value for t in reversed(lens.bottom)]
    colours = ["#2b8cbe"] * len(lens.top) + ["#e34a33"] * len(lens.bottom)
    fig = go.Figure(go.Bar(x=values, y=tokens, orientation="h", marker_color=colours))
    where = f" layer {lens.layer}" if lens.layer is not None else ""
    fig.update_layout(
        title=title or f"logit lens ({lens.mode}) of {lens.concept or 'vector'}{where}",
        xaxis_title="W_U · v" if lens.mode == "raw" else "W_U · norm(v)",
        yaxis_autorange="reversed",
        **_LAYOUT,
    )
    return fig


def emotion_scatter_plot(
    scatter: EmotionScatter, *, title: str | None = None, label_top: int = 5
) -> go.Figure:
    """Emotions at (cos with v_Mold, cos with v_Gold), the OLS line, the extreme emotions labelled."""
    extremes = {name for name, _ in scatter.top("y", label_top) + scatter.top("y", label_top, largest=False)}
    fig = go.Figure(
        go.Scatter(
            x=scatter.x,
            y=scatter.y,
            mode="markers+text",
            text=[e if e in extremes else "" for e in scatter.emotions],
            hovertext=list(scatter.emotions),
            textposition="top center",
            name="emotions",
        )
    )
    xs = np.linspace(float(scatter.x.min()), float(scatter.x.max()), 2)
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=scatter.slope * xs + scatter.intercept,
            mode="lines",
            name=f"OLS slope {scatter.slope:.2f}, r {scatter.r:.2f}",
        )
    )
    fig.update_layout(
        title=title or f"emotion alignment, layer {scatter.layer}",
        xaxis_title=scatter.x_label,
        yaxis_title=scatter.y_label,
        **_LAYOUT,
    )
    return fig


def q_scatter(
    readout: QReadout, q_true: np.ndarray, *, centred: bool = True, title: str | None = None
) -> go.Figure:
    """Read-out ``Q^`` against the true ``Q``, one point per (state, action), coloured by action."""
    q_hat = readout.values.numpy()
    q_true = np.asarray(q_true, dtype=np.float64)
    if q_true.shape != q_hat.shape:
        raise ValueError(f"q_true shape {q_true.shape} != readout values {q_hat.shape}")
    if centred:
        q_hat = q_hat - q_hat.mean(axis=1, keepdims=True)
        q_true = q_true - q_true.mean(axis=1, keepdims=True)
    fig = go.Figure()
    for column, action in enumerate(readout.action_tokens):
        fig.add_trace(
            go.Scatter(x=q_true[:, column], y=q_hat[:, column], mode="markers", name=action, opacity=0.6)
        )
    suffix = " (centred per state)" if centred else ""
    fig.update_layout(
        title=title or f"logit-as-Q, beta={readout.beta:g}",
        xaxis_title=f"true Q{suffix}",
        yaxis_title=f"beta * logit{suffix}",
        **_LAYOUT,
    )
    return fig


def probe_accuracy(
    tables: Mapping[str, ProbeTable] | ProbeTable,
    tasks: Sequence[str] | None = None,
    *,
    field: str = "score",
    title: str | None = None,
) -> go.Figure:
    """Probe ``field`` by layer: one line per (table, task); dashed lines are the control tasks."""
    if isinstance(tables, ProbeTable):
        tables = {"": tables}
    fig = go.Figure()
    for name, table in tables.items():
        for task in tasks or table.tasks:
            values = table.by_layer(task, field)
            label = f"{name} {task}".strip()
            fig.add_trace(
                go.Scatter(x=list(values), y=list(values.values()), mode="lines+markers", name=label)
            )
            if field == "score":
                control = table.by_layer(task, "control_score")
                fig.add_trace(
                    go.Scatter(
                        x=list(control),
                        y=list(control.values()),
                        mode="lines",
                        line_dash="dash",
                        name=f"{label} (control)",
                    )
                )
    fig.update_layout(
        title=title or f"environment probes: {field} by layer",
        xaxis_title="layer",
        yaxis_title=field,
        **_LAYOUT,
    )
    return fig


def axis_monitor_figure(
    head: Mapping[str, object], records: Sequence[Mapping[str, object]], *, title: str | None = None
) -> go.Figure:
    """Training and the reward axis on one time axis (a run trained with ``monitor_every``;
    ``training.monitor.axis_records`` reads ``head`` and ``records``, also while the run is going).

    Rows: the rollout return (and the held-out return where evaluated); at the monitor's analysis layer
    cos(v_Mold, v_Gold) (and its minimum over layers), cos(v, u) and cos(v, valence PC1); the tracking d. Step 0
    is the untrained model's reading.
    """
    from plotly.subplots import make_subplots

    base = dict(head["base"])  # type: ignore[arg-type]
    layer = int(base["layer"])
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=("return", f"reward axis at layer {layer}", "tracking d (held-out)"))  # fmt: skip
    steps = [int(r["step"]) + 1 for r in records]  # type: ignore[call-overload]
    fig.add_trace(go.Scatter(x=steps, y=[r.get("mean_return") for r in records], name="rollout return",
                             mode="lines+markers"), row=1, col=1)  # fmt: skip
    evaluated = [(s, r["eval_mean_return"]) for s, r in zip(steps, records) if "eval_mean_return" in r]
    if evaluated:
        fig.add_trace(go.Scatter(x=[s for s, _ in evaluated], y=[y for _, y in evaluated], name="held-out return",
                                 mode="markers"), row=1, col=1)  # fmt: skip
    readings = [(0, base)] + [(s, dict(r["axis"])) for s, r in zip(steps, records) if "axis" in r]  # type: ignore[arg-type]
    xs = [s for s, _ in readings]

    def at_layer(name: str) -> list[float]:
        return [float(a[name][layer]) for _, a in readings]

    curves = {
        "cos(v_Mold, v_Gold)": at_layer("cos_mold_gold"),
        "min over layers": [min(a["cos_mold_gold"]) for _, a in readings],
        "cos(v_Mold, u_Mold)": at_layer("cos_mold_u"),
        "cos(v_Gold, u_Gold)": at_layer("cos_gold_u"),
    }
    if base.get("cos_mold_valence") is not None:
        curves["cos(v_Mold, valence)"] = [a["cos_mold_valence"] for _, a in readings]
        curves["cos(v_Gold, valence)"] = [a["cos_gold_valence"] for _, a in readings]
    for name, ys in curves.items():
        fig.add_trace(go.Scatter(x=xs, y=ys, name=name, mode="lines+markers"), row=2, col=1)
    fig.add_trace(go.Scatter(x=xs, y=[a["tracking_d"] for _, a in readings], name="tracking d",
                             mode="lines+markers"), row=3, col=1)  # fmt: skip
    fig.update_yaxes(range=[-1.05, 1.05], row=2, col=1)
    fig.update_xaxes(title_text="training step (0: untrained)", row=3, col=1)
    fig.update_layout(title=title or "training and the reward axis", height=760, template="plotly_white")
    return fig
