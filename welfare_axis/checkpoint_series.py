"""Rotation of the reward vectors during training: v_Mold and v_Gold at every checkpoint of a run.

The paper's App. G control ("vectors extracted during training"): the reward vectors are extracted at
the checkpoints along a training run and compared with fixed maze-naive axes; their alignment with
valence grows gradually, so the axis is recruited rather than created. :func:`checkpoint_series` does
this for a training run directory:

1. The untrained model (step 0: ``training.load_base_model`` with the run's ``config.json``) and
   every kept checkpoint ``checkpoints/step_NNNNNN`` (LoRA merged into the weights, exactly as
   ``training.load_trained``) are loaded in step order.
2. At each, ``v_Mold`` and ``v_Gold`` are extracted with ``probes.extract.reward_activations`` +
   ``aggregate`` (paper Eq. 1, one-vs-rest difference of means at the final direction letter). The
   scripted trajectories are the same seeded chats at every checkpoint, so every difference between
   checkpoints comes from the weights alone.
3. Per checkpoint, at the analysis layer (default ``floor(2L/3)``, the geometry layer of
   ``probes.readout_report``): ``cos(v_Mold, v_Gold)`` (and its minimum over all layers, the paper's headline),
   ``cos(v_c(t), v_c(base))`` (rotation away from the untrained control vectors ``u``), the norms, and
   ``cos(v_c(t), valence)``.

**Fixed reference frame.** The valence axis is emotion PC1 (``probes.emotions.emotion_vectors`` +
``valence_axis``, signed so positive-valence emotions project higher) computed ONCE, on the base model,
and held fixed for every checkpoint, as the paper compares against fixed maze-naive axes. The curves
therefore measure the reward vectors rotating onto a pre-existing direction; recomputing the axis per
checkpoint would let the axis itself move and confound the two. Expect ``cos(v_Gold, valence) > 0`` and
``cos(v_Mold, valence) < 0`` to grow in size with training.

Keep a series when training: ``keep_checkpoints`` (default 2) deletes older checkpoints, so train with
e.g. ``--checkpoint-every 2 --keep-checkpoints 1000``.

Command line (a real model is slow on a CPU: wrap it in ``flock /tmp/wa/heavy.lock``)::

    python -m welfare_axis.checkpoint_series runs/grpo_cpu --out runs/grpo_cpu/series.json --n-per-class 60

Example:
    >>> series = checkpoint_series("runs/grpo_cpu", n_per_class=60, n_emotions=12)  # doctest: +SKIP
    >>> series.steps, series.cos_gold_valence  # doctest: +SKIP
    ([0, 2, 4], [0.03, 0.11, 0.19])
    >>> series.save("series.json"); CheckpointSeries.load("series.json") == series  # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import torch
from torch import Tensor, nn

from probes import layers as _layers
from probes.artifacts import read_json, write_json, write_text
from probes.emotions import (
    DEFAULT_TOKEN_OFFSET,
    emotion_vectors,
    load_emotion_stories,
    load_neutral_texts,
    subset_stories,
)
from probes.emotions import valence_axis as _valence_axis
from probes.extract import PAPER_SEED, aggregate, reward_activations
from probes.geometry import analysis_layer, cosine
from training import RunDirError, load_base_model, load_checkpoint, load_run_args, make_policy, maze_config
from training.policy import merged_model

SERIES_FORMAT = 1
"""Bumped when the JSON layout of :class:`CheckpointSeries` changes."""
CHECKPOINT_DIR = re.compile(r"^step_(\d+)$")

CURVES: tuple[str, ...] = (
    "cos_mold_gold",
    "cos_mold_gold_min",
    "cos_mold_base",
    "cos_gold_base",
    "cos_mold_valence",
    "cos_gold_valence",
    "norm_mold",
    "norm_gold",
)
"""The per-checkpoint numbers of a series (one list each, aligned with ``steps``)."""

__all__ = [
    "CURVES",
    "CheckpointSeries",
    "RunDirError",
    "checkpoint_series",
    "checkpoint_series_figure",
    "cli",
    "find_checkpoints",
    "load_checkpoint_model",
    "load_run_args",
]


# ====================================================================================================
# The result
# ====================================================================================================


@dataclass(frozen=True)
class CheckpointSeries:
    """Cosine curves of the reward vectors over a training run (index 0 is the untrained base model).

    Attributes:
        model_name: the run's model (``config.json`` ``model``).
        run_dir: the run directory read.
        layer: the analysis layer of every curve except ``cos_mold_gold_min``; n_layers: of the model.
        steps: training steps (0 = base, then each checkpoint's completed steps), strictly increasing.
        checkpoints: ``"base"``, then the checkpoint directory names.
        cos_mold_gold: ``cos(v_Mold(t), v_Gold(t))`` at ``layer``; cos_mold_gold_min: min over all layers.
        cos_mold_base, cos_gold_base: ``cos(v_c(t), v_c(base))`` at ``layer`` (1 at the base).
        cos_mold_valence, cos_gold_valence: ``cos(v_c(t), PC1)`` with the base model's emotion PC1.
        norm_mold, norm_gold: ``‖v_c(t)‖`` at ``layer``.
        mean_return: the run's logged mean rollout return of the last step before the checkpoint
            (``metrics.jsonl``; ``None`` for the base and for steps without a record).
        valence: the fixed axis's provenance (layer, r with the valence ratings, variance explained,
            number of emotions and stories).
        settings: everything else the numbers depend on (n_per_class, seed, maze config, emotion subset).
    """

    model_name: str
    run_dir: str
    layer: int
    n_layers: int
    steps: list[int]
    checkpoints: list[str]
    cos_mold_gold: list[float]
    cos_mold_gold_min: list[float]
    cos_mold_base: list[float]
    cos_gold_base: list[float]
    cos_mold_valence: list[float]
    cos_gold_valence: list[float]
    norm_mold: list[float]
    norm_gold: list[float]
    mean_return: list[float | None]
    valence: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    format: int = SERIES_FORMAT

    def __post_init__(self) -> None:
        n = len(self.steps)
        for name in (*CURVES, "checkpoints", "mean_return"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} steps")
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise ValueError(f"steps must be strictly increasing; got {self.steps}")

    def __len__(self) -> int:
        return len(self.steps)

    def valence_separation(self) -> list[float]:
        """``cos(v_Gold, PC1) − cos(v_Mold, PC1)`` per checkpoint: > 0 when the pair spans valence the right way."""
        return [g - m for g, m in zip(self.cos_gold_valence, self.cos_mold_valence, strict=True)]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per checkpoint (for tables)."""
        keys = ("steps", "checkpoints", *CURVES, "mean_return")
        names = ("step", "checkpoint", *CURVES, "mean_return")
        return [
            {name: getattr(self, key)[i] for key, name in zip(keys, names, strict=True)}
            for i in range(len(self))
        ]

    def headline(self) -> dict[str, Any]:
        """Base and final value of every curve, plus the Spearman rank correlation of the valence
        separation with the step (the paper: alignment grows roughly monotonically)."""
        out: dict[str, Any] = {
            "layer": self.layer,
            "n_checkpoints": len(self) - 1,
            "steps": list(self.steps),
            "r_valence_pc1": self.valence.get("r_valence"),
        }
        for name in (*CURVES, "valence_separation"):
            values = self.valence_separation() if name == "valence_separation" else getattr(self, name)
            out[name] = {"base": values[0], "final": values[-1]}
        out["spearman_valence_separation_vs_step"] = _spearman(self.steps, self.valence_separation())
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckpointSeries:
        if data.get("format") != SERIES_FORMAT:
            raise ValueError(
                f"checkpoint series format {data.get('format')!r}; this version reads {SERIES_FORMAT}"
            )
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise KeyError(f"unknown checkpoint-series fields {unknown}; expected {sorted(names)}")
        return cls(**dict(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> CheckpointSeries:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the series as JSON atomically (``probes.artifacts.write_json``)."""
        path = Path(path)
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CheckpointSeries:
        return cls.from_dict(read_json(path))


def _spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    if len(x) < 3:
        return None
    from scipy.stats import spearmanr

    rho = spearmanr(np.asarray(x, dtype=float), np.asarray(y, dtype=float)).statistic
    return float(rho) if math.isfinite(rho) else None


# ====================================================================================================
# The run directory
# ====================================================================================================


def find_checkpoints(run_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``[(step, path)]`` of every ``checkpoints/step_NNNNNN`` directory, in step order.

    Raises:
        RunDirError: no checkpoints (names the fix: keep more checkpoints when training).
    """
    root = Path(run_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for path in root.iterdir():
            match = CHECKPOINT_DIR.match(path.name)
            if match and path.is_dir() and (path / "trainable.safetensors").is_file():
                found.append((int(match.group(1)), path))
    if not found:
        raise RunDirError(
            f"{root} holds no step_NNNNNN checkpoints: train the run first (or --resume it). To keep a "
            "series, train with e.g. --checkpoint-every 2 --keep-checkpoints 1000 (keep_checkpoints=2, the "
            "default, deletes older ones)"
        )
    return sorted(found)


def load_checkpoint_model(
    args: Any, base: nn.Module, tokenizer: Any, path: str | os.PathLike[str]
) -> nn.Module:
    """A checkpoint's model built on a copy of the already loaded ``base`` (LoRA merged), in eval mode.

    Equals ``training.load_trained(run_dir, checkpoint=path.name, merge=True)`` without loading
    the base model from disk again.
    """

    args = dataclasses.replace(args, kl_coef=0.0, algo="sft")  # no reference copy needed
    policy = make_policy(args, model=copy.deepcopy(base), tokenizer=tokenizer)
    load_checkpoint(Path(path), policy)
    model = merged_model(policy)
    model.requires_grad_(False)
    return model.eval()


def _mean_returns(run_dir: Path) -> dict[int, float]:
    """``{completed steps: mean_return}`` from ``metrics.jsonl`` (step record s is logged after s+1 steps)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            if "mean_return" in record and "step" in record:
                out[int(record["step"]) + 1] = float(record["mean_return"])
    return out


# ====================================================================================================
# The analysis
# ====================================================================================================


def _reward_pair(
    model: nn.Module, tokenizer: Any, *, n_per_class: int, config: Any, seed: int, batch_size: int
) -> tuple[dict[int, Tensor], dict[int, Tensor]]:
    acts = reward_activations(
        model, tokenizer, n_per_class=n_per_class, config=config, seed=seed, batch_size=batch_size
    )
    vectors = aggregate(acts, "mean_diff", classes=["Mold", "Gold"])
    return dict(vectors["Mold"].directions), dict(vectors["Gold"].directions)


def checkpoint_series(
    run_dir: str | os.PathLike[str],
    *,
    n_per_class: int = 150,
    layer: int | None = None,
    config: Any = None,
    seed: int = PAPER_SEED,
    batch_size: int = 8,
    n_emotions: int | None = None,
    stories_per_emotion: int | None = None,
    n_neutral: int | None = None,
    token_offset: int = DEFAULT_TOKEN_OFFSET,
    device: str | None = None,
    progress: bool = False,
) -> CheckpointSeries:
    """v_Mold and v_Gold at the base model and every checkpoint of ``run_dir``, and their cosines.

    Args:
        run_dir: a training run directory (``config.json`` + ``checkpoints/step_NNNNNN``).
        n_per_class: scripted trajectories per class (Mold, Gold, Path); the same chats at every checkpoint.
        layer: analysis layer (None: ``probes.geometry.analysis_layer(L)`` = floor(2L/3)).
        config: the ``MazeConfig`` of the trajectories (None: the maze the run trained in, its tiles
            included, so a tile-swap run is read with its own glyphs).
        seed: base maze seed of the trajectories (the paper's 474747).
        batch_size: texts per forward.
        n_emotions, stories_per_emotion, n_neutral: emotion subset for the fixed valence axis (evenly
            spaced emotions, the first stories of each, the first neutral texts; None: all), as
            ``probes.readout_report.ReportSettings``.
        token_offset: story-mean offset of the emotion stories.
        device: overrides the run's ``device`` (auto, cpu, cuda, ...).
        progress: show a progress bar over the checkpoints.

    Raises:
        RunDirError: ``run_dir`` is not a run or has no checkpoints (the message names the fix).
    """
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    args = load_run_args(run_dir)
    checkpoints = find_checkpoints(run_dir)
    if device is not None:
        args = dataclasses.replace(args, device=device)
    maze = config if config is not None else maze_config(args)
    base, tokenizer = load_base_model(args)
    base.requires_grad_(False)
    base.eval()
    n_layers = _layers.n_layers(base)
    layer = analysis_layer(n_layers) if layer is None else _layers.check_layer(base, layer)

    # The fixed reference frame: emotion PC1 of the base model at ``layer``.
    stories = subset_stories(load_emotion_stories(), n_emotions, stories_per_emotion)
    neutral = load_neutral_texts()[:n_neutral]
    ev = emotion_vectors(
        base,
        tokenizer,
        [layer],
        stories=stories,
        neutral_texts=neutral,
        token_offset=token_offset,
        batch_size=batch_size,
    )
    axis = _valence_axis(ev, layer)
    pc1 = axis.pc1

    extract = dict(n_per_class=n_per_class, config=maze, seed=seed, batch_size=batch_size)
    returns = _mean_returns(run_dir)
    entries: list[tuple[int, str, nn.Module | Path]] = [(0, "base", base)]
    entries += [(step, path.name, path) for step, path in checkpoints]
    curves: dict[str, list[float]] = {name: [] for name in CURVES}
    base_mold = base_gold = None
    for _, _, source in tqdm(entries, desc="checkpoints", disable=not progress):
        model = (
            source if isinstance(source, nn.Module) else load_checkpoint_model(args, base, tokenizer, source)
        )
        with torch.no_grad():
            mold, gold = _reward_pair(model, tokenizer, **extract)
        if model is not base:
            del model
        if base_mold is None:
            base_mold, base_gold = mold, gold
        curves["cos_mold_gold"].append(cosine(mold[layer], gold[layer]))
        curves["cos_mold_gold_min"].append(min(cosine(mold[lay], gold[lay]) for lay in sorted(mold)))
        curves["cos_mold_base"].append(cosine(mold[layer], base_mold[layer]))
        curves["cos_gold_base"].append(cosine(gold[layer], base_gold[layer]))
        curves["cos_mold_valence"].append(cosine(mold[layer], pc1))
        curves["cos_gold_valence"].append(cosine(gold[layer], pc1))
        curves["norm_mold"].append(float(mold[layer].double().norm()))
        curves["norm_gold"].append(float(gold[layer].double().norm()))

    maze_dict = maze.to_dict() if hasattr(maze, "to_dict") else str(maze)
    return CheckpointSeries(
        model_name=args.model,
        run_dir=str(run_dir),
        layer=layer,
        n_layers=n_layers,
        steps=[step for step, _, _ in entries],
        checkpoints=[name for _, name, _ in entries],
        mean_return=[None if step == 0 else returns.get(step) for step, _, _ in entries],
        valence={
            "layer": layer,
            "computed_on": "base",
            "r_valence": _finite_or_none(axis.r_valence),
            "explained_pc1": float(axis.explained[0]),
            "n_emotions": len(ev.emotions),
            "n_stories": len(stories),
            "n_neutral": len(neutral),
        },
        settings=json.loads(
            json.dumps(
                {
                    "n_per_class": n_per_class,
                    "seed": seed,
                    "batch_size": batch_size,
                    "maze_config": maze_dict,
                    "n_emotions": n_emotions,
                    "stories_per_emotion": stories_per_emotion,
                    "n_neutral": n_neutral,
                    "token_offset": token_offset,
                    "method": "mean_diff",
                    "site": "resid_post",
                    "position": "last",
                },
                default=str,
            )
        ),
        **curves,
    )


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


# ====================================================================================================
# The figure
# ====================================================================================================

_LABELS = {
    "cos_mold_gold": "cos(v_Mold, v_Gold)",
    "cos_mold_gold_min": "min over layers cos(v_Mold, v_Gold)",
    "cos_mold_base": "cos(v_Mold, u_Mold) (rotation from base)",
    "cos_gold_base": "cos(v_Gold, u_Gold) (rotation from base)",
    "cos_mold_valence": "cos(v_Mold, valence PC1)",
    "cos_gold_valence": "cos(v_Gold, valence PC1)",
}


def checkpoint_series_figure(series: CheckpointSeries, *, title: str | None = None) -> go.Figure:
    """Cosine vs training step, one line per quantity (the min over layers dashed), with a zero line.

    Example:
        >>> fig = checkpoint_series_figure(series)  # doctest: +SKIP
        >>> [t.name for t in fig.data][:2]  # doctest: +SKIP
        ['cos(v_Mold, v_Gold)', 'min over layers cos(v_Mold, v_Gold)']
    """
    fig = go.Figure()
    for key, label in _LABELS.items():
        fig.add_trace(
            go.Scatter(
                x=list(series.steps),
                y=list(getattr(series, key)),
                mode="lines+markers",
                name=label,
                line={"dash": "dash"} if key == "cos_mold_gold_min" else None,
                customdata=list(series.checkpoints),
                hovertemplate="%{customdata}: %{y:.3f}<extra></extra>",
            )
        )
    fig.add_hline(y=0.0, line_dash="dot", line_color="grey")
    fig.update_layout(
        title=title or f"reward vectors during training: {series.model_name}, layer {series.layer}",
        xaxis_title="training step (0 = untrained)",
        yaxis_title="cosine",
        yaxis_range=[-1.05, 1.05],
        template="plotly_white",
        width=820,
        height=480,
    )
    return fig


# ====================================================================================================
# Command line
# ====================================================================================================


@dataclass
class Cli:
    """Reward vectors at every checkpoint of a training run; writes the series as JSON."""

    run_dir: str
    """The run directory (config.json + checkpoints/step_NNNNNN)."""
    out: str | None = None
    """Write the series here (default: RUN_DIR/checkpoint_series.json)."""
    html: str | None = None
    """Also write the figure as a standalone HTML file here."""
    n_per_class: int = 150
    """Scripted trajectories per class (Mold, Gold, Path) at each checkpoint."""
    layer: int | None = None
    """Analysis layer (None: floor(2L/3))."""
    seed: int = PAPER_SEED
    """Base maze seed of the trajectories."""
    batch_size: int = 8
    """Texts per forward."""
    n_emotions: int | None = None
    """Emotions for the fixed valence axis, evenly spaced through the shipped file (None: all 48)."""
    stories_per_emotion: int | None = None
    """Stories per emotion (None: all)."""
    n_neutral: int | None = None
    """Neutral texts for the denoising PCs (None: all)."""
    device: str | None = None
    """Override the run's device (auto, cpu, cuda)."""
    threads: int = 2
    """torch CPU threads."""


def main(cli: Cli) -> CheckpointSeries:
    torch.set_num_threads(cli.threads)
    series = checkpoint_series(
        cli.run_dir,
        n_per_class=cli.n_per_class,
        layer=cli.layer,
        seed=cli.seed,
        batch_size=cli.batch_size,
        n_emotions=cli.n_emotions,
        stories_per_emotion=cli.stories_per_emotion,
        n_neutral=cli.n_neutral,
        device=cli.device,
        progress=True,
    )
    out = Path(cli.out) if cli.out else Path(cli.run_dir) / "checkpoint_series.json"
    series.save(out)
    if cli.html:
        write_text(cli.html, checkpoint_series_figure(series).to_html(include_plotlyjs=True))
    for row in series.rows():
        print(
            f"step {row['step']:>5}  cos(M,G) {row['cos_mold_gold']:+.3f}  cos(M,u_M) {row['cos_mold_base']:+.3f}  "
            f"cos(G,u_G) {row['cos_gold_base']:+.3f}  cos(M,PC1) {row['cos_mold_valence']:+.3f}  "
            f"cos(G,PC1) {row['cos_gold_valence']:+.3f}"
        )
    print(f"written: {out}")
    return series


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m welfare_axis.checkpoint_series RUN_DIR [--out series.json] ...``; returns the exit status."""
    import sys

    import tyro

    parsed = tyro.cli(
        Cli,
        args=None if argv is None else list(argv),
        config=(tyro.conf.PositionalRequiredArgs,),
        prog="python -m welfare_axis.checkpoint_series",
    )
    try:
        main(parsed)
    except (RunDirError, ValueError, KeyError, IndexError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
