"""Maze figures return go.Figure with the data they claim to show."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest

from maze_env import MazeEnv
from maze_env.plots import maze_figure, training_curves


def test_maze_figure_draws_the_trajectory_over_the_tiles():
    env = MazeEnv()
    env.reset(seed=0)
    layout = env.maze.grid
    positions = [env.position]
    for a in (0, 1, 2):
        env.step(a)
        positions.append(env.position)
    fig = maze_figure(layout, positions, radius=3)
    assert isinstance(fig, go.Figure)
    heat, path, start = fig.data
    assert list(path.x) == [p[0] for p in positions] and list(path.y) == [p[1] for p in positions]
    x0, y0 = heat.x[0], heat.y[0]
    assert np.array_equal(np.asarray(heat.z), layout[y0 : y0 + len(heat.y), x0 : x0 + len(heat.x)])
    with pytest.raises(ValueError, match="positions is empty"):
        maze_figure(layout, [])


def test_training_curves():
    rows = [{"step": i, "mean_return": float(i), "mold_per_episode": 1.0} for i in range(3)]
    fig = training_curves(rows)
    assert [t.name for t in fig.data] == ["mean_return", "mold_per_episode"]
    with pytest.raises(ValueError, match="none of"):
        training_curves([{"step": 0}])


def test_episode_figure_replays_a_logged_episode_and_refuses_one_that_does_not_replay(tmp_path):
    from maze_env.config import MazeConfig
    from maze_env.plots import episode_figure, episode_positions
    from probes.models import tiny_model
    from training.episodes import load_episodes, save_episodes
    from training.rollout import collect_episodes

    model, tok = tiny_model("llama")
    config = MazeConfig(n_turns=4, size=16)
    batch = collect_episodes(model, tok, seeds=[11, 12], config=config)
    logged = load_episodes(save_episodes(batch, tmp_path / "ep"))
    grid, positions = episode_positions(logged, 1)
    env = MazeEnv(config)
    env.reset(seed=12)
    assert np.array_equal(grid, env.grid) and positions[0] == env.position
    assert len(positions) == 1 + 4 + int((batch.wind[1] >= 0).sum())  # one per move and per wind push
    steps = np.abs(np.diff(np.array(positions), axis=0)).sum(1)
    assert set(steps.tolist()) <= {0, 1}  # adjacent cells (0: blocked at the edge)
    fig = episode_figure(logged, 1)
    assert list(fig.data[1].x) == [p[0] for p in positions] and "maze seed 12" in fig.layout.title.text
    logged.rewards[0, 2] += 5.0
    with pytest.raises(ValueError, match="does not replay"):
        episode_positions(logged, 0)
    with pytest.raises(IndexError, match="out of range"):
        episode_positions(logged, 2)
