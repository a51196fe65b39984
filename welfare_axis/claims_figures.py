"""The figures of the claims table, across runs: one per claim family, every configuration and seed on it.

Each reads finished study run directories (``welfare-axis run --out DIR``) and returns a ``go.Figure``; the
runs of one configuration (``welfare_axis.claims.configuration_of``: the seed and the tile set aside) are
pooled, trained seeds as a mean with their min–max band, the untrained model's readout of each run as the
control, tile-swap runs as their own configuration-and-tiles group.

- :func:`layer_cosine_bands`: per-layer cos(v_Mold, v_Gold) (the paper's Eq. 1, Fig. 2).
- :func:`q_agreement_points`: logits-as-Q Spearman with the true Q, trained vs untrained, per seed.
- :func:`steering_dose_response`: the steering sweeps of v and its norm-matched u, pooled over seeds.
- :func:`emotion_overlay`: the emotion scatter of a trained run over its untrained control.
- :func:`rotation_over_training`: cos(v, u) at the monitor's layer over training steps (runs trained with the
  axis monitor).

Example:
    >>> figures = claims_figures([Path("runs/default"), Path("runs/default_seed1")])  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go

from steering.plots import dose_response_figure
from steering.stats import summarize_cells
from steering.sweep import load_records
from welfare_axis.claims import configuration_of
from welfare_axis.summary import StudySummary

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_LAYOUT = dict(template="plotly_white", height=480, legend=dict(orientation="h", yanchor="top", y=-0.2, x=0))
"""Legends go below the plot, so long labels never squeeze it."""


def _readouts(run: Path, which: str) -> dict[str, Any] | None:
    """A study's readouts of its trained or control model: in its run directory, or in a record of it
    (``docs/study_runs/<name>/``, which keeps ``readouts_<which>.json`` beside ``summary.json``)."""
    for path in (run / "stages" / "readouts" / f"readouts_{which}.json", run / f"readouts_{which}.json"):
        if path.is_file():
            return json.loads(path.read_text())
    return None


def group_runs(runs: Sequence[Path]) -> dict[str, list[Path]]:
    """``{label: [run, ...]}`` per configuration and tile set, in the order given (the seeds of one configuration
    together). A label keeps only what tells the groups apart (the parts of ``configuration_of`` that all groups
    share are left out; the claims table names them in full), plus the tile set when it is not office."""
    keyed: dict[tuple[str, str], list[Path]] = defaultdict(list)
    for run in runs:
        summary = StudySummary.load(run)
        keyed[(configuration_of(summary), summary.config.get("tiles", "office"))].append(run)
    common = set.intersection(*(set(name.split()) for name, _ in keyed)) if len(keyed) > 1 else set()
    groups: dict[str, list[Path]] = {}
    for (name, tiles), members in keyed.items():
        if len(keyed) > 1:
            name = " ".join(t for t in name.split() if t not in common)
        label = " ".join(x for x in (name, "" if tiles == "office" else f"tiles {tiles}") if x)
        groups[label or "office tiles"] = members
    return groups


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _band(
    fig: go.Figure, x: list[int], rows: np.ndarray, colour: str, name: str, dash: str | None = None
) -> None:
    mean = rows.mean(axis=0)
    if len(rows) > 1:
        fig.add_trace(go.Scatter(x=x + x[::-1], y=list(rows.max(axis=0)) + list(rows.min(axis=0))[::-1],
                                 fill="toself", fillcolor=_rgba(colour, 0.15), line=dict(width=0),
                                 hoverinfo="skip", showlegend=False, legendgroup=name))  # fmt: skip
    label = f"{name} (mean of {len(rows)}, band min–max)" if len(rows) > 1 else name
    fig.add_trace(go.Scatter(x=x, y=mean, mode="lines+markers", name=label, legendgroup=name,
                             line=dict(color=colour, dash=dash)))  # fmt: skip


def layer_cosine_bands(runs: Sequence[Path]) -> go.Figure:
    """cos(v_Mold, v_Gold) per layer: per configuration, trained seeds (band) and their untrained controls."""
    fig = go.Figure()
    for index, (name, members) in enumerate(group_runs(runs).items()):
        colour = PALETTE[index % len(PALETTE)]
        for which, dash in (("trained", None), ("control", "dot")):
            curves = [
                r["geometry"]["cos_mold_gold"]["by_layer"]
                for r in map(lambda p: _readouts(p, which), members)
                if r
            ]
            if not curves:
                continue
            rows = np.asarray(curves, dtype=float)
            label = f"{name}: {'trained v' if which == 'trained' else 'untrained u'}"
            _band(
                fig,
                list(range(rows.shape[1])),
                rows,
                colour if which == "trained" else "#7f7f7f",
                label,
                dash,
            )
    fig.add_hline(y=-1.0, line=dict(color="#bbbbbb", dash="dash"))
    fig.update_layout(title="cos(v_Mold, v_Gold) by layer (Eq. 1; the paper: about −0.95 at its minimum)",
                      xaxis_title="layer", yaxis_title="cosine", **_LAYOUT)  # fmt: skip
    return fig


def q_agreement_points(runs: Sequence[Path]) -> go.Figure:
    """Logits-as-Q: Spearman of the policy's direction logits with the true Q, trained and untrained, per seed."""
    fig = go.Figure()
    for index, (name, members) in enumerate(group_runs(runs).items()):
        colour = PALETTE[index % len(PALETTE)]
        for which in ("trained", "control"):
            values = [
                r["q_readout"]["spearman_pooled_centred"] for r in (_readouts(p, which) for p in members) if r
            ]
            x = f"{name}<br>{'trained' if which == 'trained' else 'untrained'}"
            fig.add_trace(go.Box(y=values, x=[x] * len(values), name=x, boxpoints="all", pointpos=0, jitter=0.3,
                                 marker_color=colour if which == "trained" else "#7f7f7f", showlegend=False))  # fmt: skip
    fig.add_hline(y=0.0, line=dict(color="#bbbbbb", dash="dash"))
    fig.update_layout(title="logits as Q: Spearman with the true Q (centred per state), one point per seed",
                      yaxis_title="Spearman ρ", **_LAYOUT)  # fmt: skip
    return fig


def steering_dose_response(runs: Sequence[Path]) -> list[go.Figure]:
    """Per configuration: every eval's metric against α for v and its norm-matched u, seeds pooled (95% CIs)."""
    figures = []
    for name, members in group_runs(runs).items():
        records = []
        for run in members:
            stage = run / "stages" / "steering"
            result_path = stage / "stage.json"
            if not result_path.is_file():
                continue
            result = json.loads(result_path.read_text())["result"]
            for file in result.get("sweeps", {}).values():
                records += load_records(stage / file)
        if not records:
            continue
        cells = summarize_cells(records)
        for concept in ("Gold", "Mold"):
            chosen = [c for c in cells if c.vector.endswith(concept)]
            # v and u may sit at different layers (u at its own ℓ*): one figure per layer
            for layer in sorted({c.layer for c in chosen}):
                title = f"{name}: steering with the {concept} vectors at layer {layer} ({len(members)} run(s) pooled)"
                figures.append(
                    dose_response_figure([c for c in chosen if c.layer == layer], layer=layer, title=title)
                )
    return figures


def emotion_overlay(run: Path) -> go.Figure | None:
    """The emotion scatter (cos with v_Mold, cos with v_Gold) of a run's trained v over its untrained u."""
    import plotly.io as pio

    fig = go.Figure()
    for which, colour in (("trained", "#1f77b4"), ("control", "#7f7f7f")):
        path = run / "stages" / "readouts" / f"readouts_{which}.figures.json"
        if not path.is_file():
            return None
        stored = json.loads(path.read_text()).get("emotion_scatter")
        if stored is None:
            return None
        source = pio.from_json(json.dumps(stored))
        for trace in source.data:
            trace.name = f"{'trained v' if which == 'trained' else 'untrained u'}: {trace.name}"
            if getattr(trace, "mode", "") and "markers" in trace.mode:
                trace.marker.color = colour
            else:
                trace.line.color = colour
            fig.add_trace(trace)
        axes = source.layout
    fig.update_layout(title=f"emotions against the reward vectors, trained and untrained ({run.name})",
                      xaxis_title=axes.xaxis.title.text, yaxis_title=axes.yaxis.title.text, **_LAYOUT)  # fmt: skip
    return fig


def rotation_over_training(runs: Sequence[Path]) -> go.Figure | None:
    """cos(v, u) at the axis monitor's layer over training, one line per monitored run and concept."""
    from training.monitor import MONITOR_FILE, axis_records

    fig = go.Figure()
    found = False
    for index, run in enumerate(runs):
        stage = run / "stages" / "train"
        result = (
            json.loads((stage / "stage.json").read_text()).get("result", {})
            if (stage / "stage.json").is_file()
            else {}
        )
        train_dir = stage / str(result.get("run", "run"))  # a --from-run study's run is absolute
        if not (train_dir / MONITOR_FILE).is_file():
            continue
        head, records = axis_records(train_dir)
        layer = int(head["base"]["layer"])
        readings = [(int(r["step"]) + 1, r["axis"]) for r in records if "axis" in r]
        colour = PALETTE[index % len(PALETTE)]
        for key, dash in (("cos_mold_u", None), ("cos_gold_u", "dot")):
            steps = [0] + [s for s, _ in readings]
            values = [1.0] + [a[key][layer] for _, a in readings]
            fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", line=dict(color=colour, dash=dash),
                                     name=f"{run.name}: {key.replace('_u', '').replace('cos_', '')} cos(v, u)"))  # fmt: skip
        found = True
    if not found:
        return None
    fig.update_layout(title="rotation of v away from the untrained u over training (axis monitor, its layer)",
                      xaxis_title="training step", yaxis_title="cos(v, u)", **_LAYOUT)  # fmt: skip
    return fig


def claims_figures(runs: Sequence[Path]) -> list[go.Figure]:
    """Every figure above that the runs have data for."""
    figures = [layer_cosine_bands(runs), q_agreement_points(runs)]
    figures += steering_dose_response(runs)
    if runs:
        overlay = emotion_overlay(runs[0])
        if overlay is not None:
            figures.append(overlay)
    rotation = rotation_over_training(runs)
    if rotation is not None:
        figures.append(rotation)
    return figures
