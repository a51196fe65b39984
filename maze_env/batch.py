"""``MazeBatch``: many mazes stepped at once with NumPy, for LM rollouts.

Each maze ``i`` is generated from ``seeds[i]`` exactly as ``MazeEnv.reset(seed=seeds[i])`` generates it
(same grid, same start, and the same first observation: its clause order is drawn from the maze's own
generator, so episodes of one seed, a GRPO group, share their first prompt as in the paper). Later
randomness (wind, later clause orders) comes from one batch generator seeded by the first seed, drawn
vectorised: statistically the same rules as ``MazeEnv``, not the same draws.

Example:
    >>> import numpy as np
    >>> batch = MazeBatch(4)
    >>> texts = batch.reset(seed=0)
    >>> rewards, info = batch.step(np.array([0, 1, 2, 3]))
    >>> rewards.shape
    (4,)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.utils import seeding

from maze_env.config import MazeConfig
from maze_env.dynamics import DX, DY
from maze_env.generate import generate_maze
from maze_env.text import IDENTITY_ORDER, observation_text
from maze_env.tiles import Tile


class MazeBatch:
    """A batch of ``n`` mazes stepped in lockstep for ``config.n_turns`` turns."""

    def __init__(self, n: int, config: MazeConfig | None = None) -> None:
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"n must be a positive integer number of mazes; got {n!r}")
        self.n = int(n)
        self.config = config or MazeConfig()
        self.grids: np.ndarray | None = None  # (n, size, size) int8
        self.x = np.zeros(self.n, dtype=np.int64)
        self.y = np.zeros(self.n, dtype=np.int64)
        self.turn = 0
        self.wind = np.full(self.n, -1, dtype=np.int64)  # -1: no wind on the last turn
        self.orders = np.tile(np.arange(4), (self.n, 1))
        self.rng: np.random.Generator = np.random.default_rng()
        self.seeds: list[int] = []

    def reset(self, seed: int | Sequence[int] | None = None) -> list[str]:
        """Generate fresh mazes; ``seed`` is one int (mazes get seed, seed+1, ...) or one seed per maze."""
        if seed is None:
            seeds = [int(s) for s in np.random.SeedSequence().generate_state(self.n)]
        elif isinstance(seed, int | np.integer):
            seeds = [int(seed) + i for i in range(self.n)]
        else:
            seeds = [int(s) for s in seed]
            if len(seeds) != self.n:
                raise ValueError(f"need one seed per maze: got {len(seeds)} seeds for n={self.n}")
        size = self.config.size
        self.grids = np.empty((self.n, size, size), dtype=np.int8)
        first_orders = np.tile(np.arange(4), (self.n, 1))
        for i, s in enumerate(seeds):
            rng, _ = seeding.np_random(s)
            maze = generate_maze(rng, self.config)
            self.grids[i] = maze.grid
            self.x[i], self.y[i] = maze.start
            if self.config.shuffle_clauses:  # MazeEnv.reset's next draw: its first observation's order
                first_orders[i] = rng.permutation(4)
        self.seeds = seeds
        self.rng, _ = seeding.np_random(seeds[0] + 0x5EED)
        self.turn = 0
        self.wind[:] = -1
        self._draw_orders()  # drawn and replaced, so wind and later orders keep their draws
        self.orders = first_orders
        return self.observations()

    @property
    def done(self) -> bool:
        return self.turn >= self.config.n_turns

    def _draw_orders(self) -> None:
        if self.config.shuffle_clauses:
            self.orders = np.argsort(self.rng.random((self.n, 4)), axis=1)
        else:
            self.orders = np.tile(np.arange(4), (self.n, 1))

    def _move(self, direction: np.ndarray, active: np.ndarray) -> np.ndarray:
        """Move the ``active`` mazes one tile; returns the tile entered (-1 where blocked/inactive)."""
        size = self.config.size
        nx = self.x + DX[direction]
        ny = self.y + DY[direction]
        ok = active & (nx >= 0) & (nx < size) & (ny >= 0) & (ny < size)
        idx = np.flatnonzero(ok)
        if self.config.melt:
            self.grids[idx, self.y[idx], self.x[idx]] = Tile.MOLD
        self.x[idx], self.y[idx] = nx[idx], ny[idx]
        entered = np.full(self.n, -1, dtype=np.int64)
        entered[idx] = self.grids[idx, self.y[idx], self.x[idx]]
        return entered

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Apply one action per maze. Returns rewards (n,) and an info dict of arrays."""
        if self.grids is None:
            raise RuntimeError("call reset() before step()")
        if self.done:
            raise RuntimeError(f"episodes finished after {self.config.n_turns} turns; call reset()")
        actions = np.asarray(actions)
        if actions.shape != (self.n,) or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(
                f"actions must be an integer array of shape ({self.n},); got {actions.dtype} {actions.shape}"
            )
        if actions.min() < 0 or actions.max() > 3:
            raise ValueError(
                f"actions must be in 0..3 (N, E, S, W); got values in [{actions.min()}, {actions.max()}]"
            )
        c = self.config
        everyone = np.ones(self.n, dtype=bool)
        first = self._move(actions, everyone)
        blown = self.rng.random(self.n) < c.wind_prob if c.wind_prob > 0 else np.zeros(self.n, dtype=bool)
        wind_dir = self.rng.integers(0, 4, size=self.n)
        second = self._move(wind_dir, blown)
        self.wind = np.where(blown, wind_dir, -1)
        tile_reward = np.array([*c.tile_rewards, 0.0])  # index -1 (nothing entered) -> 0
        d_gold = (first == Tile.GOLD).astype(np.int64) + (second == Tile.GOLD)
        d_mold = (first == Tile.MOLD).astype(np.int64) + (second == Tile.MOLD)
        rewards = c.step_cost + tile_reward[first] + tile_reward[second]
        self.turn += 1
        self._draw_orders()
        info = {
            "delta_gold": d_gold,
            "delta_mold": d_mold,
            "wind": self.wind.copy(),
            "entered": np.stack([first, second], 1),
        }
        return rewards, info

    def neighbours(self) -> np.ndarray:
        """(n, 4) tile classes to the N, E, S, W of each agent (off-grid reads as Mold)."""
        assert self.grids is not None
        size = self.config.size
        nx = self.x[:, None] + DX[None, :]
        ny = self.y[:, None] + DY[None, :]
        inside = (nx >= 0) & (nx < size) & (ny >= 0) & (ny < size)
        rows = np.arange(self.n)[:, None].repeat(4, 1)
        out = np.full((self.n, 4), int(Tile.MOLD), dtype=np.int64)
        out[inside] = self.grids[rows[inside], ny[inside], nx[inside]]
        return out

    @property
    def positions(self) -> np.ndarray:
        """(n, 2) array of (x, y)."""
        return np.stack([self.x, self.y], axis=1)

    def observations(self) -> list[str]:
        """The user-turn text of every maze at the current turn."""
        nb = self.neighbours().tolist()
        orders = self.orders.tolist() if self.config.shuffle_clauses else [IDENTITY_ORDER] * self.n
        wind = self.wind.tolist()
        tiles = self.config.tiles
        return [
            observation_text(
                (int(self.x[i]), int(self.y[i])),
                nb[i],
                tiles,
                order=orders[i],
                wind=None if wind[i] < 0 else wind[i],
            )
            for i in range(self.n)
        ]
