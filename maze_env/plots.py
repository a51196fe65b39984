"""Maze figures: the grid with a trajectory drawn over the tiles (a logged episode replayed), and training
curves. Each returns go.Figure.

Example:
    >>> from maze_env import MazeEnv
    >>> env = MazeEnv(); _ = env.reset(seed=0)
    >>> fig = maze_figure(env.maze.grid, [env.position], radius=6)
    >>> type(fig).__name__
    'Figure'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go

from maze_env.tiles import Tile, TileSet

TILE_COLOURS = {Tile.PATH: "#e8e2d0", Tile.MOLD: "#6b7b3a", Tile.GOLD: "#e0b000"}


def maze_figure(
    grid: np.ndarray,
    positions: Sequence[tuple[int, int]],
    *,
    radius: int = 8,
    tiles: TileSet | None = None,
    title: str | None = None,
) -> go.Figure:
    """The tiles around a trajectory (Path beige, Mold olive, Gold yellow) with the path drawn on top.

    Args:
        grid: ``grid[y, x]`` of Tile values, usually the maze layout before the episode.
        positions: (x, y) positions visited, start first.
        radius: cells shown around the bounding box of the trajectory.
        tiles: glyphs for the hover text (defaults to the office set).
    """
    if len(positions) == 0:
        raise ValueError("positions is empty: pass at least the start position")
    tiles = tiles or TileSet()
    xs = np.array([p[0] for p in positions])
    ys = np.array([p[1] for p in positions])
    x0, x1 = max(0, xs.min() - radius), min(grid.shape[1], xs.max() + radius + 1)
    y0, y1 = max(0, ys.min() - radius), min(grid.shape[0], ys.max() + radius + 1)
    window = grid[y0:y1, x0:x1].astype(int)
    scale = [[0.0, TILE_COLOURS[Tile.PATH]], [0.33, TILE_COLOURS[Tile.PATH]], [0.34, TILE_COLOURS[Tile.MOLD]],
             [0.66, TILE_COLOURS[Tile.MOLD]], [0.67, TILE_COLOURS[Tile.GOLD]], [1.0, TILE_COLOURS[Tile.GOLD]]]  # fmt: skip
    hover = np.vectorize(lambda t: f"{Tile(t).name.title()} {tiles.glyph(t)}")(window)
    fig = go.Figure(
        go.Heatmap(
            z=window, x=np.arange(x0, x1), y=np.arange(y0, y1), zmin=0, zmax=2, colorscale=scale, showscale=False,
            text=hover, hovertemplate="(%{x}, %{y}) %{text}<extra></extra>",
        )
    )  # fmt: skip
    fig.add_trace(
        go.Scatter(x=xs, y=ys, mode="lines+markers", line=dict(color="#c0392b", width=3), name="trajectory")
    )
    fig.add_trace(
        go.Scatter(
            x=xs[:1],
            y=ys[:1],
            mode="markers",
            marker=dict(size=14, symbol="star", color="#2c3e50"),
            name="start",
        )
    )
    fig.update_yaxes(autorange="reversed", scaleanchor="x", title="y (N is up)")
    fig.update_xaxes(title="x")
    fig.update_layout(title=title or "maze and trajectory", template="plotly_white", height=520)
    return fig


def episode_positions(batch: Any, index: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Replay episode ``index`` of an :class:`~training.rollout.EpisodeBatch` (or a logged one) in the env.

    Returns the maze layout before the episode and every position visited, start first (a wind push adds
    its own position). The moves and the logged wind pushes must reproduce the logged rewards; otherwise the
    batch came from other maze rules and this raises.
    """
    from maze_env.env import MazeEnv

    if not 0 <= index < len(batch):
        raise IndexError(f"episode {index} out of range: the batch has {len(batch)} episodes")
    env = MazeEnv(batch.config)
    env.reset(seed=int(batch.seeds[index]))
    layout, positions = env.grid.copy(), [env.position]
    for turn, action in enumerate(batch.actions[index].tolist()):
        wind = int(batch.wind[index, turn])
        _, reward, _, _, info = env.replay(int(action), wind if wind >= 0 else None)  # the logged wind push
        positions += info["path"]
        logged = float(batch.rewards[index, turn])
        if abs(reward - logged) > 1e-4:
            raise ValueError(
                f"episode {index} does not replay: turn {turn} gives reward {reward} here but {logged} in the log "
                "(another maze config or generator version?)"
            )
    return layout, positions


def episode_figure(batch: Any, index: int = 0, *, title: str | None = None) -> go.Figure:
    """:func:`maze_figure` of one episode of a batch (e.g. ``training.episodes.load_episodes(path)``)."""
    grid, positions = episode_positions(batch, index)
    ret = float(batch.rewards[index].sum())
    gold, mold = int(batch.delta_gold[index].sum()), int(batch.delta_mold[index].sum())
    return maze_figure(
        grid,
        positions,
        tiles=batch.config.tiles,
        title=title
        or f"episode {index} (maze seed {batch.seeds[index]}): return {ret:+.1f}, {gold} Gold, {mold} Mold",
    )


def training_curves(
    rows: Sequence[Mapping[str, Any]],
    metrics: Sequence[str] = ("mean_return", "gold_per_episode", "mold_per_episode"),
) -> go.Figure:
    """Training metrics by step from the trainer's JSONL rows (one line per metric present)."""
    if not rows:
        raise ValueError("no metric rows to plot")
    fig = go.Figure()
    steps = [r.get("step", i) for i, r in enumerate(rows)]
    for name in metrics:
        values = [r.get(name) for r in rows]
        if any(v is not None for v in values):
            fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", name=name))
    if not fig.data:
        raise ValueError(f"none of {list(metrics)} is in the rows; available: {sorted(rows[0])}")
    fig.update_layout(title="training", xaxis_title="step", template="plotly_white")
    return fig
