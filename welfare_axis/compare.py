"""Several finished studies side by side: a text table and an HTML report with one figure per measure.

Example:
    >>> rows = comparison_rows([])
    >>> rows
    []
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from probes.artifacts import write_text
from welfare_axis.claims import LAST_LAYER_LEAD, claims_markdown, claims_table, preregistered_rows
from welfare_axis.summary import StudySummary

MEASURES: dict[str, str] = {
    "cos_min": "cos_min",
    "cos_avg": "cos_avg",
    "centred_mold_gold": "centred_mold_gold",
    "emotion_slope": "slope",
    "tracking_d": "maze_d_gold_vector",
    "q_spearman": "spearman_pooled_centred",
}
"""Column label: the study measure it reads (``welfare_axis.summary.StudySummary.measures``)."""


def load_summary(run: Path) -> StudySummary:
    """``<run>/summary.json`` as a :class:`~welfare_axis.summary.StudySummary`."""
    return StudySummary.load(run)


def comparison_rows(summaries: Sequence[tuple[str, StudySummary]]) -> list[dict[str, Any]]:
    """One row per run: its settings, training gain, trained/control measures and forgetting."""
    rows = []
    for name, s in summaries:
        cfg = s.config
        row: dict[str, Any] = {"run": name, "model": cfg.get("model"), "algo": cfg.get("algo"), "tiles": cfg.get("tiles"),
                               "finetune": cfg.get("finetune"), "fast": s.fast}  # fmt: skip
        gain = s.training.return_gain
        row["return_gain"] = gain.diff if gain else None
        row["return_gain_z"] = gain.z if gain else None
        for label, measure in MEASURES.items():
            m = s.measures.get(measure)
            row[f"{label}_trained"] = m.trained if m else None
            row[f"{label}_control"] = m.control if m else None
        drop = (s.forgetting or {}).get("drop", {})
        for key in ("qa_accuracy_drop", "perplexity_increase"):  # paired 95% bootstrap interval when recorded
            ci = drop.get(f"{key}_ci") or (None, None)
            row[key], row[f"{key}_ci_low"], row[f"{key}_ci_high"] = drop.get(key), ci[0], ci[1]
        row["qa_mcnemar_p"] = drop.get("qa_mcnemar_p")
        rows.append(row)
    return rows


def _format(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no runs)"
    cols = list(rows[0])
    cells = [[f"{r[c]:+.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def compare_runs(
    runs: Sequence[Path], *, out: Path | None = None, png_dir: Path | None = None
) -> tuple[str, Path | None]:
    """Tabulate ``runs``; with ``out``, also write an HTML report: the claims table, the claims' figures
    (``welfare_axis.claims_figures``) and grouped bars per measure; with ``png_dir``, the figures as PNGs too."""
    from welfare_axis.claims_figures import claims_figures
    from welfare_axis.report import Section, Table, export_figures, render_report

    summaries = [(run.name, load_summary(run)) for run in runs]
    rows = comparison_rows(summaries)
    by_run = {str(run): summary for run, (_, summary) in zip(runs, summaries, strict=True)}
    claims = claims_table(by_run)
    text = (
        _format(rows)
        + "\n\nClaims (welfare_axis.claims; seeds of one configuration pooled"
        + (
            f"; configuration: {claims[0].configuration}"
            if len({c.configuration for c in claims}) == 1
            else ""
        )
        + "):\n"
        + claims_markdown(claims)
    )
    prereg = preregistered_rows(by_run)
    if prereg:
        text += (
            f"\n\nPreregistered test ({LAST_LAYER_LEAD.registered}; its test set: the runs above of "
            f"{LAST_LAYER_LEAD.configuration} read at {LAST_LAYER_LEAD.n_per_class} per class):\n"
            + "\n".join(
                f"- {row.text}: office {row.difference.text()}, tile-swap {row.swap_difference.text()} "
                f"(trained − untrained): **{verdict}** ({reason})"
                for row, verdict, reason in prereg
            )
        )
    if out is None:
        return text, None
    figures = []
    for label in MEASURES:
        fig = go.Figure()
        for which in ("trained", "control"):
            fig.add_trace(
                go.Bar(name=which, x=[r["run"] for r in rows], y=[r[f"{label}_{which}"] for r in rows])
            )
        fig.update_layout(title=label, barmode="group", template="plotly_white")
        figures.append(fig)
    sections = [
        Section(
            "The paper's claims",
            text="Per claim and configuration: trained v and untrained u across seeds (mean and 95% t-interval), "
            "the tile-swap control, the label-shuffle null, and a verdict with its reason (welfare_axis.claims).",
            tables=[Table("claims", [r.row() for r in claims])],
            figures=claims_figures(list(runs)),
        ),
        Section("Runs", tables=[Table("headline measures", rows)], figures=figures),
    ]
    write_text(out, render_report("welfare-axis: runs compared", sections))
    if png_dir is not None:
        paths, skipped = export_figures(sections[:1], png_dir)
        text += f"\n\n{skipped}" if skipped else f"\n\nPNG figures: {len(paths)} in {png_dir}"
    return text, out
