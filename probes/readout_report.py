"""Every readout of one model in one call: the numbers ``docs/probes_smollm2.md`` reports.

:func:`readout_report` extracts the reward vectors of ``model`` from scripted trajectories (on a
maze-naive model these are the control vectors ``u``), selects ``l*`` on held-out trajectories, and
runs geometry, logit lens, emotion alignment, sentiment axes, tracking, logit-as-Q and the environment
probes, each number with its interval and null where it has one. Everything is seeded; the result is a
typed ``probes.readouts.ReadoutReport`` (``probes.readout_markdown`` renders it for ``docs/``).

Why this file is long (about 770 lines): :func:`readout_report` is one function that runs every readout
in order, one commented section each, so a reader follows the whole pipeline top to bottom; the maths
lives in the modules it calls.

Run it from the command line (slow on a CPU: wrap it in ``flock /tmp/wa/heavy.lock``)::

    python -m probes.readout_report --model smollm2-135m-instruct --n-per-class 150 --out runs/readouts.json

Example:
    >>> from probes.models import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> report = readout_report(model, tok, ReportSettings.smoke())  # doctest: +SKIP
    >>> report.geometry.estimates.cos_mold_gold_min.p  # doctest: +SKIP
    0.43
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import torch
from torch import nn

from maze_env import config_for_tiles
from maze_env.scripted import scripted_trajectories
from probes import layers as _layers
from probes.artifacts import write_text
from probes.concept_vector import ConceptVector
from probes.consistency import consistency_table
from probes.emotions import (
    DEFAULT_TOKEN_OFFSET,
    EmotionVectors,
    emotion_scatter,
    emotion_vectors,
    load_emotion_stories,
    load_neutral_texts,
    subset_stories,
    valence_axis,
)
from probes.env_probes import run_probes
from probes.extract import aggregate, reward_activations
from probes.geometry import analysis_layer, centred_class_cosines, layer_cosines, path_reference_cosines
from probes.logit_lens import failure_score, logit_lens, overlap
from probes.maze_states import MazeStates, read_decisions
from probes.nulls import (
    TripletResampler,
    centred_cosine,
    cosine_with,
    emotion_scatter_stats,
    eq1_cosine,
    group_d,
    lens_auroc,
    path_reference_cosine,
    projection_d,
    q_spearman,
)
from probes.plots import (
    centred_geometry_heatmap,
    emotion_scatter_plot,
    logit_lens_bars,
    probe_accuracy,
    q_scatter,
)
from probes.q_readout import (
    implicit_reward_readout,
    lens_direction_logits,
    q_correlation,
    readout_from_logits,
    true_q,
)
from probes.readouts import (
    CentredCosines,
    CosineCurve,
    Emotions,
    EmotionScatterSummary,
    EnvProbes,
    Estimate,
    Extraction,
    Geometry,
    GeometryEstimates,
    LensList,
    LogitLensReadout,
    PathReference,
    ProbeSummary,
    QReadoutSummary,
    ReadoutReport,
    SentimentAlignment,
    Tracking,
    ValenceAxisSummary,
)
from probes.record import capture
from probes.resources import peak_rss_gb
from probes.selection import best_mean_auroc_layer, select_layer
from probes.sentiment import labelled_sentiment_axis, load_sentiment, prompt_sentiment_axis
from probes.tracking import (
    HELD_OUT_SEED,
    feedback_conversations,
    feedback_tracking,
    graded_feedback_conversations,
    tracking_from_activations,
)


@dataclass(frozen=True)
class ReportSettings:
    """Sizes and seeds of :func:`readout_report`."""

    model: str = "smollm2-135m-instruct"
    """Model for the command line (``probes.models.load_model`` name or path)."""
    n_per_class: int = 150
    """Scripted trajectories per class (Mold, Gold, Path) for the vectors (the paper: 5,000)."""
    held_out: float = 0.2
    """Fraction of each class held out for the layer selection."""
    seed: int = 474747
    """Base maze seed of the extraction trajectories (the paper's)."""
    split_seed: int = 0
    """Seed of the train/held-out split and of the probes."""
    maze_size: int = 100
    """Maze side length (the paper: 100)."""
    n_turns: int = 15
    """Turns per episode (the paper: 15); scripted trajectories have 1..n_turns steps."""
    tiles: str = "office"
    """tile set of the maze (office, swap, shuffle): read a model with the glyphs it was trained on."""
    system_prompt: str = "template"
    """For the command line: ``template`` or ``none`` (``probes.models.load_model``); a model passed to
    :func:`readout_report` is read with the tokenizer it comes with."""
    batch_size: int = 8
    """Texts per forward."""
    lens_k: int = 5
    """Tokens per logit-lens list."""
    token_offset: int = DEFAULT_TOKEN_OFFSET
    """Story-mean offset for emotion and labelled-sentiment texts."""
    n_emotions: int | None = None
    """Use this many emotions, evenly spaced through the shipped file (None: all)."""
    stories_per_emotion: int | None = None
    """Use the first this many stories of each emotion (None: all)."""
    n_neutral: int | None = None
    """Use the first this many neutral texts for the denoising PCs (None: all)."""
    n_sentiment_pairs: int | None = None
    """Use the first this many labelled sentiment pairs (None: all)."""
    tracking_n: int = 60
    """Held-out Gold-final and Mold-final trajectories for maze tracking."""
    feedback_n: int = 100
    """Questions for correctness-feedback tracking."""
    feedback_answers: str = "model"
    """``model``: the model answers, its answers are graded, and the feedback is truthful (the paper's
    design); ``reference``: the reference answer vs another question's answer (needs no correct answers)."""
    feedback_dataset: str = "qa"
    """``qa`` or ``arithmetic`` (both shipped in ``probes/data``)."""
    q_episodes: int = 20
    """Held-out scripted Gold and Mold walks (each) whose states the logit-as-Q readout scores."""
    q_horizon: int = 4
    """Search horizon of the true Q."""
    beta: float = 1.0
    """beta of Q^ = beta * logits."""
    probe_episodes: int = 40
    """Random-walk episodes for the environment probes."""
    probe_turns: int = 8
    """Turns per random-walk episode."""
    probe_layer_stride: int = 3
    """Probe every this many layers (and the last)."""
    null_shuffles: int = 200
    """Label shuffles within matched triplets for every readout's permutation null (0: no nulls)."""
    n_boot: int = 200
    """Bootstrap resamples of the matched triplets (and tracking items) for the 95% intervals (0: none)."""
    matched_split: bool = True
    """Hold out the same indices in every class, letters balanced (False: each class split at random)."""
    mold_reversal: bool = False
    """Mold trajectories may end by stepping back onto the tile just left (``maze_env.scripted``)."""
    layer_star_candidates: tuple[int, ...] | None = None
    """Choose ℓ* (and the emotion layer, argmax of the mean AUROC) among these layers only (None: every layer;
    the paper's rule). A study of a LoRA run that adapted only the top layers sets them (``StudyConfig
    .layer_star_layers="adapted"``), so ℓ* lies where v can differ from u. Per-layer curves stay complete."""
    progress: bool = False
    """Print each stage's time as it finishes and show a bar over the extraction (the command line turns
    this on)."""
    out: Path | None = None
    """Write the report JSON here (atomically)."""
    activation_cache: Path | None = None
    """Reuse the extraction's activations from this folder when the model's weights, the rendered trajectories
    and the capture settings all match (``probes.activation_cache``): the untrained model's are the same for
    every training seed of a configuration. None: always capture. The numbers are the same either way."""

    @classmethod
    def smoke(cls) -> ReportSettings:
        """A small version (the slow test): a few short trajectories and texts per readout."""
        return cls(
            n_per_class=8,
            maze_size=30,
            n_turns=2,
            n_emotions=4,
            stories_per_emotion=2,
            n_neutral=6,
            n_sentiment_pairs=3,
            tracking_n=3,
            feedback_n=4,
            feedback_answers="reference",  # tiny random models answer nothing right
            q_episodes=2,
            probe_episodes=6,
            probe_turns=2,
            probe_layer_stride=10,
        )


def _round(x: float) -> float:
    return float(round(x, 6)) if math.isfinite(x) else float(x)


def _curve(values: dict[int, float]) -> list[float]:
    return [_round(values[k]) for k in sorted(values)]


def _finite_tree(tree: Any, path: str = "report") -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            _finite_tree(value, f"{path}.{key}")
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            _finite_tree(value, f"{path}[{i}]")
    elif isinstance(tree, float) and not math.isfinite(tree):
        raise ValueError(f"non-finite number at {path}: {tree}")


def _subset_pairs(rows: list[dict[str, Any]], n_pairs: int | None) -> list[dict[str, Any]]:
    if n_pairs is None:
        return rows
    keep = list(dict.fromkeys(row.get("pair_id", i) for i, row in enumerate(rows)))[:n_pairs]
    return [row for i, row in enumerate(rows) if row.get("pair_id", i) in set(keep)]


def readout_report(
    model: nn.Module,
    tokenizer: Any,
    settings: ReportSettings | None = None,
    *,
    vectors_dir: str | os.PathLike[str] | None = None,
    emotions: EmotionVectors | None = None,
    emotion_layer: int | None = None,
    tracking_vectors: Mapping[str, ConceptVector] | None = None,
    reference_model: nn.Module | None = None,
) -> ReadoutReport:
    """Extract the reward vectors of ``model`` and run every readout on them (see the module docstring).

    With ``vectors_dir``, the extracted vectors are also saved there as ``Mold``, ``Gold`` and ``Path``
    (``ConceptVector.save``: safetensors + JSON), so steering can use exactly the vectors read out here.

    The paper compares a trained model with its maze-naive base on common ground; these arguments give it:

    - ``emotions``: the emotion basis (``probes.emotions.emotion_vectors``) to compare the vectors with;
      the paper builds it once, on the maze-naive model (:func:`report_emotion_vectors`). Default: built
      on ``model``.
    - ``emotion_layer``: the layer of the emotion scatter and the sentiment cosines; the paper uses the
      trained model's argmax of ½(AUROC_Mold + AUROC_Gold) for the control too. Default: ``model``'s own.
    - ``tracking_vectors``: ``{"Gold": v_Gold, "Mold": v_Mold}`` of another model (the trained one), on
      which this model's maze activations are also projected (the paper's naive-model ``|d| < 0.12`` is
      on v), at those vectors' ℓ* (``layer_star`` in their metadata, else this model's ℓ*); read with their
      permutation null, so they need ``null_shuffles`` > 0.
    - ``reference_model``: the maze-naive model for the implicit reward β(log π − log π_ref) at the
      logit-as-Q states (same tokenizer).

    Raises:
        ValueError: a readout produced a non-finite number (the report lists where).
    """
    s = settings or ReportSettings()
    torch.manual_seed(s.split_seed)
    config = config_for_tiles(s.tiles, size=s.maze_size, n_turns=s.n_turns)
    n_layers = _layers.n_layers(model)
    if tracking_vectors and not s.null_shuffles:
        raise ValueError("tracking_vectors are read with a permutation null: set null_shuffles > 0")
    bad = [layer for layer in s.layer_star_candidates or () if not 0 <= layer < n_layers]
    if bad or s.layer_star_candidates == ():
        raise ValueError(
            f"layer_star_candidates {list(s.layer_star_candidates)} must be non-empty and within the model's "
            f"layers 0..{n_layers - 1} (bad: {bad}); None chooses among every layer"
        )
    timings: dict[str, float] = {}
    peak_rss: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 2)
        clock = now
        peak_rss[name] = round(peak_rss_gb(), 3)
        if s.progress:
            print(
                f"readout_report: {name} done in {timings[name]:.0f} s (peak RSS {peak_rss[name]:.1f} GB)",
                flush=True,
            )

    sections: dict[str, Any] = {}

    # EXTRACTION: Eq. 1 vectors on the train split, l* on the held-out split
    acts = reward_activations(
        model,
        tokenizer,
        n_per_class=s.n_per_class,
        config=config,
        seed=s.seed,
        mold_reversal=s.mold_reversal,
        batch_size=s.batch_size,
        progress=s.progress,
        cache_dir=s.activation_cache,
    )
    train, held = acts.split(s.held_out, seed=s.split_seed, matched=s.matched_split)
    resampler = (
        TripletResampler(train, n_shuffles=s.null_shuffles, n_boot=s.n_boot, seed=s.split_seed)
        if s.null_shuffles
        else None
    )

    def estimate(resampled_fn: Any) -> Estimate | None:
        return Estimate.of(resampled_fn(resampler)) if resampler is not None else None

    vectors = aggregate(train, "mean_diff")
    v_mold, v_gold = vectors["Mold"], vectors["Gold"]
    if vectors_dir is not None:
        for concept, vector in vectors.items():
            vector.save(Path(vectors_dir) / concept)
    sel_mold, sel_gold = select_layer(v_mold, held), select_layer(v_gold, held)
    if s.layer_star_candidates is not None:  # e.g. the layers a LoRA run adapted
        sel_mold, sel_gold = (
            sel_mold.within(s.layer_star_candidates),
            sel_gold.within(s.layer_star_candidates),
        )
    layer_mold, layer_gold = sel_mold.layer, sel_gold.layer
    own_emotion_layer = best_mean_auroc_layer(sel_mold, sel_gold, candidates=s.layer_star_candidates)
    sections["extraction"] = Extraction(
        n_per_class=train.n_per_class,
        n_held_out=held.n_per_class,
        layer_star={"Mold": layer_mold, "Gold": layer_gold},
        auroc_at_layer_star={
            "Mold": _round(float(sel_mold.auroc[sel_mold.layers.index(layer_mold)])),
            "Gold": _round(float(sel_gold.auroc[sel_gold.layers.index(layer_gold)])),
        },
        norm_at_layer_star={
            "Mold": _round(v_mold.norms()[layer_mold]),
            "Gold": _round(v_gold.norms()[layer_gold]),
        },
        best_mean_auroc_layer=own_emotion_layer,
        consistency_at_layer_star={
            c: _round(x)
            for c, x in consistency_table(train, {"Mold": layer_mold, "Gold": layer_gold}).items()
        },
    )
    lap("extraction")

    # GEOMETRY
    cosines = layer_cosines(v_mold, v_gold)
    path_ref = path_reference_cosines(train)
    centred = centred_class_cosines(train, n_layers=n_layers)
    figures: dict[str, go.Figure] = {"centred_geometry": centred_geometry_heatmap(centred)}
    sections["geometry"] = Geometry(
        cos_mold_gold=CosineCurve(
            avg=_round(cosines.avg),
            min=_round(cosines.min),
            argmin=cosines.argmin,
            by_layer=_curve(cosines.cosines),
        ),
        path_reference=PathReference(
            avg=_round(path_ref.avg),
            min=_round(path_ref.min),
            argmin=path_ref.argmin,
            last_layer=_round(path_ref.cosines[n_layers - 1]),
            by_layer=_curve(path_ref.cosines),
        ),
        centred=CentredCosines(layer=centred.layer, pairs={k: _round(v) for k, v in centred.pairs().items()}),
        estimates=geometry_estimates(model, train, resampler, centred.layer, s) if resampler else None,
    )
    lap("geometry")

    # LOGIT LENS at floor(5L/6)
    lens_layer = analysis_layer(n_layers, 5, 6)
    lens: dict[str, LensList] = {}
    lists = {}
    for name, vector in (("Mold", v_mold), ("Gold", v_gold)):
        for through_norm in (False, True):
            mode = "norm" if through_norm else "raw"
            result = logit_lens(model, tokenizer, vector, lens_layer, k=s.lens_k, through_norm=through_norm)
            lists[(name, mode)] = result
            score = failure_score(model, tokenizer, vector, lens_layer, through_norm=through_norm)
            ids = (score.failure_ids, score.success_ids)
            lens[f"{name}_{mode}"] = LensList(
                top=list(result.top_tokens),
                bottom=list(result.bottom_tokens),
                failure_auroc=_round(score.auroc),
                failure_standardized=_round(score.standardized),
                failure_auroc_estimate=estimate(
                    lambda r, ids=ids, name=name, through_norm=through_norm: lens_auroc(
                        r,
                        name,
                        lens_layer,
                        _batched_lens(model, [*ids[0], *ids[1]], through_norm),
                        ids[0],
                        ids[1],
                        "greater" if name == "Mold" else "less",
                    )
                ),
            )
    sections["logit_lens"] = LogitLensReadout(
        layer=lens_layer,
        lists=lens,
        overlap_mold_top_gold_bottom={
            mode: overlap(lists[("Mold", mode)].top, lists[("Gold", mode)].bottom) for mode in ("raw", "norm")
        },
        failure_tokens=list(score.failure_tokens),
        success_tokens=list(score.success_tokens),
    )
    figures["logit_lens_mold"] = logit_lens_bars(lists[("Mold", "raw")])
    figures["logit_lens_gold"] = logit_lens_bars(lists[("Gold", "raw")])
    lap("logit_lens")

    # EMOTIONS at argmax 1/2 (AUROC_Mold + AUROC_Gold), valence axis there and at floor(2L/3)
    ev = emotions if emotions is not None else report_emotion_vectors(model, tokenizer, s)
    emotion_layer = own_emotion_layer if emotion_layer is None else int(emotion_layer)
    scatter = emotion_scatter(ev, v_mold, v_gold, emotion_layer)
    figures["emotion_scatter"] = emotion_scatter_plot(scatter)
    geometry_layer = analysis_layer(n_layers)
    axes = {layer: valence_axis(ev, layer) for layer in sorted({emotion_layer, geometry_layer})}
    scatter_stats = (
        emotion_scatter_stats(resampler, emotion_layer, ev.vectors[emotion_layer]) if resampler else None
    )
    sections["emotions"] = Emotions(
        n_emotions=len(ev.emotions),
        n_short_texts=ev.n_short,
        basis_model=ev.model_name,
        neutral_pcs_removed={str(k): v for k, v in sorted(ev.n_components_removed.items()) if k in axes},
        scatter=EmotionScatterSummary(
            layer=emotion_layer,
            slope=_round(scatter.slope),
            r=_round(scatter.r),
            top_gold=[(e, _round(c)) for e, c in scatter.top("y", 5)],
            top_mold=[(e, _round(c)) for e, c in scatter.top("x", 5)],
            max_abs_cos=_round(float(max(np.abs(scatter.x).max(), np.abs(scatter.y).max()))),
            slope_estimate=Estimate.of(scatter_stats[0]) if scatter_stats else None,
            r_estimate=Estimate.of(scatter_stats[1]) if scatter_stats else None,
        ),
        valence_axis={
            str(layer): ValenceAxisSummary(
                r_valence=_round(axis.r_valence),
                r_arousal_pc2=_round(axis.r_arousal),
                explained_pc1=_round(axis.explained[0]),
                explained_pc2=_round(axis.explained[1]),
                cos_pc1_gold=_round(float(axis.pc1 @ v_gold[layer].double() / v_gold[layer].double().norm())),
                cos_pc1_mold=_round(float(axis.pc1 @ v_mold[layer].double() / v_mold[layer].double().norm())),
                cos_pc1_gold_estimate=estimate(
                    lambda r, layer=layer, axis=axis: cosine_with(r, "Gold", layer, axis.pc1, "greater")
                ),
                cos_pc1_mold_estimate=estimate(
                    lambda r, layer=layer, axis=axis: cosine_with(r, "Mold", layer, axis.pc1, "less")
                ),
            )
            for layer, axis in axes.items()
        },
    )
    lap("emotions")

    # SENTIMENT axes
    sentiment = {}
    for name, axis in (
        ("prompt", prompt_sentiment_axis(model, tokenizer, "all")),
        (
            "labelled",
            labelled_sentiment_axis(
                model,
                tokenizer,
                "all",
                rows=_subset_pairs(load_sentiment(), s.n_sentiment_pairs),
                token_offset=s.token_offset,
                batch_size=s.batch_size,
            ),
        ),
    ):
        with_mold, with_gold = axis.cosine(v_mold), axis.cosine(v_gold)
        sentiment[name] = SentimentAlignment(
            cos_mold_at_emotion_layer=_round(with_mold[emotion_layer]),
            cos_gold_at_emotion_layer=_round(with_gold[emotion_layer]),
            max_abs_cos_mold=_round(max(abs(c) for c in with_mold.values())),
            max_abs_cos_gold=_round(max(abs(c) for c in with_gold.values())),
            cos_mold_estimate=estimate(
                lambda r, axis=axis: cosine_with(r, "Mold", emotion_layer, axis[emotion_layer], "less")
            ),
            cos_gold_estimate=estimate(
                lambda r, axis=axis: cosine_with(r, "Gold", emotion_layer, axis[emotion_layer], "greater")
            ),
        )
    sections["sentiment"] = sentiment
    lap("sentiment")

    # TRACKING
    final = {
        tile: capture(
            model,
            tokenizer,
            [
                t.messages
                for t in scripted_trajectories(tile, s.tracking_n, config=config, base_seed=HELD_OUT_SEED)
            ],
            layers="all",
            position="last",
            batch_size=s.batch_size,
            close_final=False,
        )
        for tile in ("Gold", "Mold")
    }
    labels = ("Gold-final", "Mold-final")
    maze_gold = tracking_from_activations(v_gold, final["Gold"], final["Mold"], labels=labels)
    maze_mold = tracking_from_activations(v_mold, final["Gold"], final["Mold"], labels=labels)
    on_reference: dict[str, Estimate] = {}
    for concept, vector in (tracking_vectors or {}).items():
        if len(vector.layers) != 1:
            raise ValueError(
                f"tracking_vectors[{concept!r}] has layers {vector.layers}; pass each vector selected to the one "
                "layer to read, e.g. v.select([layer_star])"
            )
        (layer,) = vector.layers
        on_ref = tracking_from_activations(vector, final["Gold"], final["Mold"], labels=labels)
        on_reference[concept] = Estimate.of(
            group_d(
                on_ref.positive[layer].numpy(),
                on_ref.negative[layer].numpy(),
                "greater" if concept == "Gold" else "less",
                n_shuffles=s.null_shuffles,
                n_boot=s.n_boot,
                seed=s.split_seed,
            )
        )
    feedback_vectors = {"Gold": v_gold.select([layer_gold]), "Mold": v_mold.select([layer_mold])}
    if s.feedback_answers == "model":  # the model's own answers, graded; too few right or wrong: no d
        chats: Any = graded_feedback_conversations(
            model, tokenizer, dataset=s.feedback_dataset, n=s.feedback_n, seed=s.split_seed,
            batch_size=s.batch_size,
        )  # fmt: skip
        n_right, n_wrong = chats.n_correct, chats.n_incorrect
    else:
        chats = feedback_conversations(n=s.feedback_n, seed=s.split_seed)
        n_right, n_wrong = len(chats["correct"]), len(chats["incorrect"])
    feedback = (
        feedback_tracking(
            model,
            tokenizer,
            feedback_vectors,
            conversations=chats,
            batch_size=s.batch_size,
            answers=s.feedback_answers,
        )  # fmt: skip
        if min(n_right, n_wrong) >= 2
        else None
    )

    def feedback_d(concept: str, layer: int) -> float | None:
        return None if feedback is None else _round(feedback[concept].d[layer])

    def feedback_estimate(concept: str, layer: int) -> Estimate | None:
        if feedback is None or not s.null_shuffles:  # null_shuffles 0: no nulls, as for every other readout
            return None
        scores = (feedback[concept].positive[layer].numpy(), feedback[concept].negative[layer].numpy())
        alternative = "greater" if concept == "Gold" else "less"
        return Estimate.of(
            group_d(*scores, alternative, n_shuffles=s.null_shuffles, n_boot=s.n_boot, seed=s.split_seed)
        )

    sections["tracking"] = Tracking(
        maze_d_gold_vector_at_layer_star=_round(maze_gold.d[layer_gold]),
        maze_d_mold_vector_at_layer_star=_round(maze_mold.d[layer_mold]),
        maze_d_gold_vector_max_abs=_round(max(abs(d) for d in maze_gold.d.values())),
        maze_d_gold_vector_by_layer=_curve(maze_gold.d),
        feedback_d_gold_vector_at_layer_star=feedback_d("Gold", layer_gold),
        feedback_d_mold_vector_at_layer_star=feedback_d("Mold", layer_mold),
        maze_d_gold_estimate=estimate(
            lambda r: projection_d(
                r,
                "Gold",
                layer_gold,
                final["Gold"][layer_gold],
                final["Mold"][layer_gold],
                "greater",
                seed=s.split_seed,
            )
        ),
        maze_d_on_reference_vectors=on_reference or None,
        feedback_answers=s.feedback_answers,
        feedback_n_correct=n_right,
        feedback_n_incorrect=n_wrong,
        feedback_d_gold_estimate=feedback_estimate("Gold", layer_gold),
        feedback_d_mold_estimate=feedback_estimate("Mold", layer_mold),
    )
    lap("tracking")

    # LOGIT-AS-Q on held-out scripted walks
    walks = scripted_trajectories(
        "Gold", s.q_episodes, config=config, base_seed=HELD_OUT_SEED + 7919
    ) + scripted_trajectories("Mold", s.q_episodes, config=config, base_seed=HELD_OUT_SEED + 7919)
    states = MazeStates.from_trajectories(walks, config=config).decisions()  # states with a move left
    q = true_q(states, horizon=s.q_horizon)
    read = read_decisions(model, tokenizer, states, [lens_layer], batch_size=max(1, s.batch_size // 2))
    readout = readout_from_logits(read.direction_logits, read.token_ids, beta=s.beta)
    correlation = q_correlation(readout, q)
    implicit = None
    if reference_model is not None:
        ref = read_decisions(reference_model, tokenizer, states, None, batch_size=max(1, s.batch_size // 2))
        reference = readout_from_logits(ref.direction_logits, ref.token_ids, beta=s.beta)
        implicit = implicit_reward_readout(readout, reference)
    lens_logits = lens_direction_logits(model, read.activations[lens_layer], read.token_ids)
    lens_correlation = q_correlation(readout_from_logits(lens_logits, read.token_ids, beta=s.beta), q)
    policy = readout.log_policy.exp()
    sections["q_readout"] = QReadoutSummary(
        n_states=correlation.n_states,
        n_states_used=correlation.n_states_used,
        spearman_pooled_centred=_round(correlation.pooled),
        spearman_mean_per_state=_round(correlation.mean_per_state),
        lens_layer_spearman_pooled_centred=_round(lens_correlation.pooled),
        policy_entropy_nats=_round(float(-(policy * readout.log_policy).sum(1).mean())),
        action_share=[_round(float(x)) for x in policy.mean(0)],
        horizon=s.q_horizon,
        beta=s.beta,
        spearman_pooled_estimate=Estimate.of(
            q_spearman(readout.values, q, n_shuffles=s.null_shuffles, n_boot=s.n_boot, seed=s.split_seed)
        )
        if s.null_shuffles
        else None,
        implicit_reward_spearman_estimate=Estimate.of(
            q_spearman(implicit.values, q, n_shuffles=s.null_shuffles, n_boot=s.n_boot, seed=s.split_seed)
        )
        if implicit is not None and s.null_shuffles and float(np.ptp(implicit.values.numpy())) > 0
        else None,
    )
    figures["q_scatter"] = q_scatter(readout, q)
    lap("q_readout")

    # ENVIRONMENT PROBES on random walks
    probe_layers = sorted({*range(0, n_layers, s.probe_layer_stride), n_layers - 1})
    walks_states = MazeStates.random_walks(
        s.probe_episodes, config=config, seed=s.split_seed + 12345, n_turns=s.probe_turns
    )
    decisions = read_decisions(
        model, tokenizer, walks_states, probe_layers, batch_size=max(1, s.batch_size // 2)
    )
    table = run_probes(decisions.activations, walks_states, seed=s.split_seed)
    tasks: dict[str, ProbeSummary | None] = {}
    for task in table.tasks:
        finite = [r for r in table.results if r.task == task and math.isfinite(r.score)]
        if not finite:  # tiny runs: a class missing from every training split leaves the score undefined
            tasks[task] = None
            continue
        best = table.best(task)
        tasks[task] = ProbeSummary(
            best_layer=best.layer,
            metric=best.metric,
            score=_round(best.score),
            control=_round(best.control_score) if math.isfinite(best.control_score) else None,
            selectivity=_round(best.selectivity) if math.isfinite(best.selectivity) else None,
            baseline=_round(best.baseline),
        )
    sections["env_probes"] = EnvProbes(layers=probe_layers, n_states=len(walks_states), tasks=tasks)
    figures["probe_accuracy"] = probe_accuracy(table)
    lap("env_probes")

    report = ReadoutReport(
        model=_layers.model_name(model),
        n_layers=n_layers,
        d_model=_layers.d_model(model),
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(s).items()},
        timings_s=timings,
        peak_rss_gb=peak_rss,
        **sections,
    )
    _finite_tree({k: v for k, v in report.to_dict().items() if k not in ("timings_s", "peak_rss_gb")})
    if s.out is not None:
        out = Path(s.out)
        figures_path = out.with_name(out.stem + ".figures.json")
        save_report(figures_path, {name: json.loads(pio.to_json(fig)) for name, fig in figures.items()})
        report = dataclasses.replace(report, figures=figures_path.name)
        save_report(out, report.to_dict())
    return report


def report_emotion_vectors(model: nn.Module, tokenizer: Any, settings: ReportSettings) -> EmotionVectors:
    """The emotion basis :func:`readout_report` uses, with ``settings``' subset of stories and neutral texts.

    Build it once on the maze-naive model and pass it as ``emotions=`` to the readouts of the trained
    model and its control, as the paper does."""
    s = settings
    return emotion_vectors(
        model,
        tokenizer,
        "all",
        stories=subset_stories(load_emotion_stories(), s.n_emotions, s.stories_per_emotion),
        neutral_texts=load_neutral_texts()[: s.n_neutral],
        token_offset=s.token_offset,
        batch_size=s.batch_size,
    )


def _batched_lens(model: nn.Module, token_ids: list[int], through_norm: bool) -> Any:
    """``lens(directions (k, d)) -> (k, len(token_ids))``: the logit lens of a batch of directions at some
    tokens, raw (``v @ W_U``) or through the final norm (as ``probes.logit_lens.lens_logits``)."""
    w_u = _layers.unembed(model)[:, token_ids]
    norm = _layers.final_norm(model) if through_norm else None

    def lens(directions: torch.Tensor) -> torch.Tensor:
        v = directions.to(device=w_u.device, dtype=w_u.dtype)
        with torch.no_grad():
            if norm is not None:
                v = norm(v[:, None, :])[:, 0]
            return (v @ w_u).double().cpu()

    return lens


def geometry_estimates(
    model: nn.Module, train: Any, resampler: TripletResampler, centred_layer: int, s: ReportSettings
) -> GeometryEstimates:
    """Eq. 1, Path-reference and centred cosines with intervals and nulls; the last layer before and after
    the final norm (each activation normed first, as the unembedding reads it)."""
    last = _layers.n_layers(model) - 1
    norm = _layers.final_norm(model)
    w_u = _layers.unembed(model)
    device, dtype = w_u.device, w_u.dtype
    with torch.no_grad():
        normed = {
            c: {last: norm(acts[last].to(device=device, dtype=dtype)[:, None, :])[:, 0].float().cpu()}
            for c, acts in train.activations.items()
        }
    post = TripletResampler(normed, n_shuffles=s.null_shuffles, n_boot=s.n_boot, seed=s.split_seed)
    pairs = {"Mold·Gold": (0, 1, "less"), "Mold·Path": (0, 2, "two-sided"), "Gold·Path": (1, 2, "two-sided")}
    return GeometryEstimates(
        n_shuffles=resampler.n_shuffles,
        n_boot=resampler.n_boot,
        cos_mold_gold_avg=Estimate.of(resampler.across_layers(eq1_cosine, "mean", "less")),
        cos_mold_gold_min=Estimate.of(resampler.across_layers(eq1_cosine, "min", "less")),
        path_reference_avg=Estimate.of(resampler.across_layers(path_reference_cosine, "mean", "less")),
        path_reference_last=Estimate.of(resampler.statistic(path_reference_cosine, last, "less")),
        centred={
            name: Estimate.of(resampler.statistic(centred_cosine(a, b), centred_layer, alt))  # type: ignore[arg-type]
            for name, (a, b, alt) in pairs.items()
        },
        last_layer_pre_norm=Estimate.of(resampler.statistic(eq1_cosine, last, "less")),
        last_layer_post_norm=Estimate.of(post.statistic(eq1_cosine, last, "less")),
    )


def load_figures(report_path: str | os.PathLike[str]) -> dict[str, go.Figure]:
    """The figures :func:`readout_report` wrote beside its JSON (empty when it wrote none).

    Example:
        >>> figs = load_figures("runs/default/stages/readouts/readouts_trained.json")  # doctest: +SKIP
        >>> sorted(figs)  # doctest: +SKIP
        ['centred_geometry', 'emotion_scatter', 'logit_lens_gold', 'logit_lens_mold', 'probe_accuracy', 'q_scatter']
    """
    path = Path(report_path)
    name = json.loads(path.read_text()).get("figures")
    if not name:
        return {}
    return {key: go.Figure(value) for key, value in json.loads((path.parent / name).read_text()).items()}


def save_report(path: str | os.PathLike[str], report: dict[str, Any]) -> Path:
    """Write ``report`` as JSON atomically (``probes.artifacts.write_text``), key order kept."""
    return write_text(Path(path), json.dumps(report, indent=1, ensure_ascii=False))


def main(settings: ReportSettings) -> ReadoutReport:
    """Load ``settings.model`` on the CPU (2 threads) and run :func:`readout_report`."""
    from probes.models import load_model

    torch.set_num_threads(2)
    model, tokenizer = load_model(settings.model, device="cpu", system_prompt=settings.system_prompt)
    report = readout_report(model, tokenizer, dataclasses.replace(settings, progress=True))
    shown = {k: v for k, v in report.to_dict().items() if k != "settings"}
    print(json.dumps(shown, indent=1, ensure_ascii=False))
    return report


if __name__ == "__main__":
    import tyro

    main(tyro.cli(ReportSettings))
