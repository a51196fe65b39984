"""A readout report (``probes.readouts.ReadoutReport``) as Markdown tables, for ``docs/``.

:func:`markdown_tables` gives the headline numbers of one model; :func:`uncertainty_table` gives every
number that carries one with its 95% interval and its permutation null (``probes.nulls``).

Example:
    >>> from probes.readouts import ReadoutReport
    >>> print(markdown_tables(ReadoutReport.load("runs/probes_smollm2.json")))  # doctest: +SKIP
"""

from __future__ import annotations

from probes.readouts import Estimate, ReadoutReport


def markdown_tables(report: ReadoutReport, symbol: str = "u") -> str:
    """The headline numbers of a report as Markdown tables (for ``docs/``); ``symbol`` names the vectors
    (``u`` for a maze-naive model, ``v`` for a trained one). A second table gives every number that has
    one with its 95% bootstrap interval and its permutation null (:func:`uncertainty_table`).

    Example:
        >>> print(markdown_tables(report))  # doctest: +SKIP
    """
    g, x, lens = report.geometry, report.extraction, report.logit_lens
    e, t, q = report.emotions, report.tracking, report.q_readout
    cos, path, centred = g.cos_mold_gold, g.path_reference, g.centred.pairs
    lines = [
        "| readout | value |",
        "|---|---|",
        f"| layer* (Mold, Gold), held-out AUROC there | {x.layer_star['Mold']}, {x.layer_star['Gold']}; "
        f"{x.auroc_at_layer_star['Mold']:.3f}, {x.auroc_at_layer_star['Gold']:.3f} |",
        f"| norm at layer* (Mold, Gold) | {x.norm_at_layer_star['Mold']:.2f}, {x.norm_at_layer_star['Gold']:.2f} |",
        f"| cos(u_Mold, u_Gold): avg, min (argmin layer) | {cos.avg:+.3f}, {cos.min:+.3f} (L{cos.argmin}) |",
        f"| Path-reference cosine: avg, min (argmin), last layer | {path.avg:+.3f}, "
        f"{path.min:+.3f} (L{path.argmin}), {path.last_layer:+.3f} |",
        f"| centred class means at L{g.centred.layer}: Mold·Gold, Mold·Path, Gold·Path | "
        f"{centred['Mold·Gold']:+.3f}, {centred['Mold·Path']:+.3f}, {centred['Gold·Path']:+.3f} |",
    ]
    for name in ("Mold", "Gold"):
        for mode in ("raw", "norm"):
            entry = lens.of(name, mode)
            lines.append(
                f"| logit lens L{lens.layer} u_{name} ({mode}): top-5 / bottom-5 | "
                f"{' '.join(repr(tok) for tok in entry.top)} / {' '.join(repr(tok) for tok in entry.bottom)} |"
            )
            lines.append(
                f"| failure-token AUROC / standardized difference, u_{name} ({mode}) | "
                f"{entry.failure_auroc:.3f} / {entry.failure_standardized:+.3f} |"
            )
    overlap_counts = lens.overlap_mold_top_gold_bottom
    lines += [
        f"| overlap u_Mold top-5 vs u_Gold bottom-5 (raw, norm) | {overlap_counts['raw']}/5, {overlap_counts['norm']}/5 |",
        f"| emotion scatter at L{e.scatter.layer} ({e.n_emotions} emotions): OLS slope, r | "
        f"{e.scatter.slope:+.3f}, {e.scatter.r:+.3f} |",
        f"| largest cos(e, u_Gold) | {', '.join(f'{n} {c:+.3f}' for n, c in e.scatter.top_gold[:3])} |",
        f"| largest cos(e, u_Mold) | {', '.join(f'{n} {c:+.3f}' for n, c in e.scatter.top_mold[:3])} |",
    ]
    for layer, axis in e.valence_axis.items():
        lines.append(
            f"| emotion PC1 at L{layer}: r with valence, var. explained; PC2 r with arousal; "
            f"cos(PC1, u_Gold), cos(PC1, u_Mold) | {axis.r_valence:+.3f}, {axis.explained_pc1:.3f}; "
            f"{axis.r_arousal_pc2:+.3f}; {axis.cos_pc1_gold:+.3f}, {axis.cos_pc1_mold:+.3f} |"
        )
    for name, sentiment in report.sentiment.items():
        lines.append(
            f"| {name} sentiment axis: cos with u_Mold, u_Gold at L{e.scatter.layer}; max abs over layers | "
            f"{sentiment.cos_mold_at_emotion_layer:+.3f}, {sentiment.cos_gold_at_emotion_layer:+.3f}; "
            f"{sentiment.max_abs_cos_mold:.3f}, {sentiment.max_abs_cos_gold:.3f} |"
        )
    lines += [
        f"| maze tracking d (Gold-final − Mold-final): u_Gold at L{x.layer_star['Gold']}, u_Mold at "
        f"L{x.layer_star['Mold']}, max abs d of u_Gold | {t.maze_d_gold_vector_at_layer_star:+.3f}, "
        f"{t.maze_d_mold_vector_at_layer_star:+.3f}, {t.maze_d_gold_vector_max_abs:.3f} |",
        f"| feedback tracking d (correct − incorrect; {t.feedback_answers} answers, {t.feedback_n_correct} "
        f"right, {t.feedback_n_incorrect} wrong): u_Gold, u_Mold at layer* | "
        f"{_signed(t.feedback_d_gold_vector_at_layer_star)}, {_signed(t.feedback_d_mold_vector_at_layer_star)} |",
        f"| logit-as-Q Spearman ({q.n_states} states, h={q.horizon}): pooled centred, mean per state, "
        f"lens L{lens.layer} pooled | {q.spearman_pooled_centred:+.3f}, {q.spearman_mean_per_state:+.3f}, "
        f"{q.lens_layer_spearman_pooled_centred:+.3f} |",
        f"| policy over N/E/S/W: entropy (nats), mean shares | {q.policy_entropy_nats:.3f}, "
        f"{' '.join(f'{v:.2f}' for v in q.action_share)} |",
    ]
    probes = report.env_probes
    lines += [
        "",
        f"Environment probes ({probes.n_states} random-walk states, layers {probes.layers}):",
        "",
        "| task | best layer | metric | score | control | selectivity | baseline |",
        "|---|---|---|---|---|---|---|",
    ]

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    for task, row in probes.tasks.items():
        if row is None:
            lines.append(f"| {task} | — | — | undefined | — | — | — |")
            continue
        lines.append(
            f"| {task} | {row.best_layer} | {row.metric} | {fmt(row.score)} | {fmt(row.control)} | "
            f"{fmt(row.selectivity)} | {fmt(row.baseline)} |"
        )
    text = "\n".join(lines) + "\n"
    return text.replace("u_Mold", f"{symbol}_Mold").replace("u_Gold", f"{symbol}_Gold")


def _signed(x: float | None) -> str:
    return "— (too few right or wrong answers)" if x is None else f"{x:+.3f}"


def uncertainty_rows(report: ReadoutReport) -> list[tuple[str, Estimate]]:
    """``(label, estimate)`` for every number of ``report`` that carries an interval and a null."""
    rows: list[tuple[str, Estimate | None]] = []
    g, lens, e, t = report.geometry, report.logit_lens, report.emotions, report.tracking
    if g.estimates is not None:
        ge = g.estimates
        rows += [
            ("cos(Mold, Gold), average over layers", ge.cos_mold_gold_avg),
            ("cos(Mold, Gold), minimum over layers", ge.cos_mold_gold_min),
            (f"cos(Mold, Gold) at the last layer L{report.n_layers - 1}, residual", ge.last_layer_pre_norm),
            (
                f"cos(Mold, Gold) at the last layer L{report.n_layers - 1}, after the final norm",
                ge.last_layer_post_norm,
            ),
            ("Path-reference cosine, average over layers", ge.path_reference_avg),
            ("Path-reference cosine, last layer", ge.path_reference_last),
            *(
                (f"centred class means at L{g.centred.layer}: {pair}", est)
                for pair, est in ge.centred.items()
            ),
        ]
    for name in ("Mold", "Gold"):
        for mode in ("raw", "norm"):
            rows.append(
                (
                    f"failure-token AUROC of {name} ({mode}) at L{lens.layer}",
                    lens.of(name, mode).failure_auroc_estimate,
                )
            )
    rows += [
        (f"emotion scatter slope at L{e.scatter.layer}", e.scatter.slope_estimate),
        (f"emotion scatter r at L{e.scatter.layer}", e.scatter.r_estimate),
    ]
    for layer, axis in e.valence_axis.items():
        rows += [(f"cos(emotion PC1, Gold) at L{layer}", axis.cos_pc1_gold_estimate),
                 (f"cos(emotion PC1, Mold) at L{layer}", axis.cos_pc1_mold_estimate)]  # fmt: skip
    for name, sentiment in report.sentiment.items():
        rows += [(f"cos({name} sentiment axis, Mold) at L{e.scatter.layer}", sentiment.cos_mold_estimate),
                 (f"cos({name} sentiment axis, Gold) at L{e.scatter.layer}", sentiment.cos_gold_estimate)]  # fmt: skip
    rows += [
        (f"maze tracking d on Gold at ℓ* L{report.extraction.layer_star['Gold']}", t.maze_d_gold_estimate),
        (f"maze tracking d on Mold at ℓ* L{report.extraction.layer_star['Mold']}", t.maze_d_mold_estimate),
    ]
    rows += [
        (f"feedback tracking d on Gold ({t.feedback_answers} answers, {t.feedback_n_correct} right / "
         f"{t.feedback_n_incorrect} wrong)", t.feedback_d_gold_estimate),
        ("feedback tracking d on Mold", t.feedback_d_mold_estimate),
    ]  # fmt: skip
    for concept, est in (t.maze_d_on_reference_vectors or {}).items():
        rows.append((f"maze tracking d on the reference model's {concept} vector", est))
    q = report.q_readout
    rows += [
        (
            f"logit-as-Q Spearman, pooled centred ({q.n_states} states, h={q.horizon})",
            q.spearman_pooled_estimate,
        ),
        ("implicit reward β(log π − log π_ref) Spearman with Q", q.implicit_reward_spearman_estimate),
    ]
    return [(label, est) for label, est in rows if est is not None]


def uncertainty_table(report: ReadoutReport, symbol: str = "u") -> str:
    """Markdown: each number, its 95% interval, the null's mean ± sd and the permutation p."""
    rows = uncertainty_rows(report)
    if not rows:
        return ""
    ge = report.geometry.estimates
    head = [
        f"| readout ({symbol}) | value | 95% CI | null mean ± sd | p (direction) |",
        "|---|---|---|---|---|",
    ]
    body = [
        f"| {label} | {est.value:+.3f} | "
        + (f"[{est.ci_low:+.3f}, {est.ci_high:+.3f}]" if est.ci_low is not None else "—")
        + f" | {est.null_mean:+.3f} ± {est.null_sd:.3f} | {est.p:.3f} ({est.alternative}) |"
        for label, est in rows
    ]
    note = (
        f"\nNulls ({ge.n_shuffles} draws each): the vector readouts (geometry, logit lens, emotions, "
        "sentiment, maze tracking on this model's vectors) shuffle the class labels within matched triplets; "
        "tracking on another model's vectors permutes the Gold-final/Mold-final labels; logit-as-Q permutes "
        f"the four read-out values within each state. Intervals: {ge.n_boot} bootstrap resamples of the "
        "triplets (tracking: and of the held-out items; logit-as-Q: of the states).\n"
        if ge is not None
        else ""
    )
    return "\n".join(head + body) + "\n" + note
