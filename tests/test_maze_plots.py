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
