"""True action values by exact search, and the expert policy built on them.

``action_values`` computes Q_h(s, a) = E[r(s, a) + max_a' Q_{h−1}(s', a')] with Q_0 = 0 over a horizon of
``h`` turns, melting included. With ``wind="off"`` the dynamics are deterministic and all 4^h action
sequences are scored at once with NumPy; with ``wind="expectation"`` the wind is averaged exactly
(expectimax over no-wind and the four pushes).

Example:
    >>> from maze_env.env import MazeEnv
    >>> env = MazeEnv(); _ = env.reset(seed=0)
    >>> q = action_values(env.grid, env.position, 3, env.config)
    >>> q.shape
    (4,)
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np

from maze_env.config import MazeConfig
from maze_env.dynamics import DX, DY
from maze_env.tiles import Tile

_OUT = 3  # off-grid sentinel in search windows


@lru_cache(maxsize=16)
def _sequences(h: int) -> np.ndarray:
    """(4^h, h) all action sequences, lexicographic (first action slowest)."""
    return np.array(list(itertools.product(range(4), repeat=h)), dtype=np.int64).reshape(-1, h)


def _window(grid: np.ndarray, pos: tuple[int, int], radius: int) -> np.ndarray:
    """Square crop of side 2·radius+1 centred on pos; off-grid cells are ``_OUT``."""
    x, y = pos
    size_y, size_x = grid.shape
    out = np.full((2 * radius + 1, 2 * radius + 1), _OUT, dtype=np.int8)
    y0, y1 = max(0, y - radius), min(size_y, y + radius + 1)
    x0, x1 = max(0, x - radius), min(size_x, x + radius + 1)
    out[y0 - (y - radius) : y1 - (y - radius), x0 - (x - radius) : x1 - (x - radius)] = grid[y0:y1, x0:x1]
    return out


def sequence_returns(grid: np.ndarray, pos: tuple[int, int], horizon: int, config: MazeConfig) -> np.ndarray:
    """Return of every action sequence of length ``horizon`` without wind, shape (4^h,)."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1; got {horizon}")
    seqs = _sequences(horizon)
    win = _window(grid, pos, horizon)
    n = len(seqs)
    xs = np.full(n, horizon, dtype=np.int64)
    ys = np.full(n, horizon, dtype=np.int64)
    hist_x = [xs.copy()]
    hist_y = [ys.copy()]
    tile_reward = np.array([*config.tile_rewards, 0.0])
    total = np.zeros(n)
    for t in range(horizon):
        nx = xs + DX[seqs[:, t]]
        ny = ys + DY[seqs[:, t]]
        moved = win[ny, nx] != _OUT
        nx = np.where(moved, nx, xs)
        ny = np.where(moved, ny, ys)
        tile = win[ny, nx].astype(np.int64)
        if config.melt:
            # A cell occupied earlier and since left has melted into Mold.
            visited = np.zeros(n, dtype=bool)
            for hx, hy in zip(hist_x, hist_y):
                visited |= (hx == nx) & (hy == ny)
            tile = np.where(visited, int(Tile.MOLD), tile)
        tile = np.where(moved, tile, -1)
        total += config.step_cost + tile_reward[tile]
        xs, ys = nx, ny
        hist_x.append(xs)
        hist_y.append(ys)
    return total


def _expectimax(
    win: list[list[int]], x: int, y: int, h: int, c: MazeConfig, rewards: tuple[float, ...]
) -> list[float]:
    """Q_h for the 4 actions with wind averaged exactly; mutates ``win`` and undoes every change."""
    q = []
    p = c.wind_prob
    for a in range(4):
        value = 0.0
        r1, x1, y1, undo1 = _step_inplace(win, x, y, a, c, rewards)
        outcomes = [(1.0 - p, None)] + [(p / 4.0, w) for w in range(4)] if p > 0 else [(1.0, None)]
        for prob, w in outcomes:
            if w is None:
                r, xf, yf, undo2 = 0.0, x1, y1, None
            else:
                r, xf, yf, undo2 = _step_inplace(win, x1, y1, w, c, rewards)
            future = max(_expectimax(win, xf, yf, h - 1, c, rewards)) if h > 1 else 0.0
            value += prob * (c.step_cost + r1 + r + future)
            if undo2 is not None:
                win[undo2[1]][undo2[0]] = undo2[2]
        if undo1 is not None:
            win[undo1[1]][undo1[0]] = undo1[2]
        q.append(value)
    return q


def _step_inplace(win, x, y, d, c, rewards):
    nx, ny = x + int(DX[d]), y + int(DY[d])
    if win[ny][nx] == _OUT:
        return 0.0, x, y, None
    undo = None
    if c.melt:
        undo = (x, y, win[y][x])
        win[y][x] = int(Tile.MOLD)
    return rewards[win[ny][nx]], nx, ny, undo


def action_values(
    grid: np.ndarray, pos: tuple[int, int], horizon: int, config: MazeConfig, *, wind: str = "off"
) -> np.ndarray:
    """True Q_h(s, a) for a = N, E, S, W from the current grid (melted cells included).

    Args:
        grid: the live grid ``grid[y, x]`` (not modified).
        pos: (x, y) of the agent.
        horizon: turns to look ahead (the action itself counts as the first).
        config: rewards and rules.
        wind: ``"off"`` (deterministic; exact max over all 4^h sequences) or ``"expectation"``
            (exact expectimax over the wind; cost grows as 20^h, keep h <= 4).
    """
    if wind == "off":
        returns = sequence_returns(grid, pos, horizon, config)
        return returns.reshape(4, -1).max(axis=1)
    if wind == "expectation":
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1; got {horizon}")
        win = _window(grid, pos, 2 * horizon).tolist()
        return np.array(_expectimax(win, 2 * horizon, 2 * horizon, horizon, config, (*config.tile_rewards,)))
    raise ValueError(f"wind must be 'off' or 'expectation'; got {wind!r}")


class Expert:
    """Receding-horizon planner: at each turn take argmax_a Q_h(s, a) (wind off), ties broken at random.

    It maximises Gold, avoids Mold and plans with melting; ``horizon`` is capped by the turns left.

    Example:
        >>> from maze_env.env import MazeEnv
        >>> env = MazeEnv(); _ = env.reset(seed=1)
        >>> expert = Expert(seed=0)
        >>> expert.act(env) in range(4)
        True
    """

    def __init__(self, horizon: int = 6, seed: int | None = None) -> None:
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1; got {horizon}")
        self.horizon = horizon
        self.rng = np.random.default_rng(seed)

    TIE_TOLERANCE = 1e-9
    """Directions whose value is within this of the best are tied (float64 values)."""

    def plan(self, env) -> tuple[np.ndarray, np.ndarray]:
        """``(Q_h(s, ·), the tied best directions)`` at the env's state; the horizon is capped by the turns left."""
        env = env.unwrapped
        h = min(self.horizon, env.config.n_turns - env.turn)
        q = action_values(env.grid, env.position, max(h, 1), env.config)
        return q, np.flatnonzero(q >= q.max() - self.TIE_TOLERANCE)

    def choose(self, best: np.ndarray) -> int:
        """One of the tied best directions, at random (this planner's RNG)."""
        return int(self.rng.choice(best))

    def act(self, env) -> int:
        return self.choose(self.plan(env)[1])
