"""``MazeEnv``: the paper's gridworld as a Gymnasium environment with text observations."""

from __future__ import annotations

import string
from typing import Any

import gymnasium as gym
import numpy as np

from maze_env.config import MazeConfig
from maze_env.dynamics import ACTIONS, DIRECTION_NAMES, check_action, move, neighbours
from maze_env.generate import Maze, generate_maze
from maze_env.text import IDENTITY_ORDER, INSTRUCTION, observation_text, wind_sentence
from maze_env.tiles import TILE_SETS, Tile


def _charset(config: MazeConfig) -> frozenset[str]:
    chars = set(string.ascii_letters + string.digits + " .,;:!?'()/-")
    chars.update(INSTRUCTION)
    for d in range(4):
        chars.update(wind_sentence(d))
    for glyph in config.tiles.glyphs:
        chars.update(glyph)
    for preset in TILE_SETS.values():
        for glyph in preset.glyphs:
            chars.update(glyph)
    return frozenset(chars)


class MazeEnv(gym.Env):
    """The welfare-axis text maze (Han, Chalmers, Izmailov 2026).

    Description:
        A 100×100 grid of three affectively neutral office glyphs. Entering Mold (🗂) costs 10, entering
        Gold (📐) pays 20, every turn costs 0.1. The tile the agent leaves melts into Mold. With
        probability 0.1 per turn the wind pushes the agent one extra tile after its move.

    Action Space:
        ``Discrete(4)``: 0=N (y−1), 1=E (x+1), 2=S (y+1), 3=W (x−1). ``maze_env.parse_action`` maps text.

    Observation:
        The user-turn text: optional wind sentence, position, the four neighbour clauses (shuffled each turn
        with ``np_random``) and the instruction. Structured state is in ``info``.

    Rewards:
        ``step_cost + Σ reward(tile entered)`` over the one or two tiles entered this turn.

    Termination:
        Never terminates; ``truncated`` is True after exactly ``n_turns`` (15) turns. Stepping a finished
        episode raises ``RuntimeError``.

    Registered Configurations:
        ``WelfareMaze-v0`` (office glyphs), ``WelfareMaze-Swap-v0`` (Mold↔Gold glyphs),
        ``WelfareMaze-Shuffle-v0`` (3-way glyph permutation), ``WelfareMaze-NoWind-v0``.

    Example:
        >>> env = MazeEnv()
        >>> obs, info = env.reset(seed=0)
        >>> obs, reward, terminated, truncated, info = env.step(0)
        >>> sorted(info["reward_parts"])
        ['gold', 'mold', 'path', 'step']
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self, config: MazeConfig | None = None, render_mode: str | None = None, **overrides: Any
    ) -> None:
        if config is None:
            config = MazeConfig(**overrides)
        elif overrides:
            config = MazeConfig.from_dict({**config.to_dict(), **overrides})
        if not isinstance(config, MazeConfig):
            raise TypeError(f"config must be a MazeConfig; got {type(config).__name__}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None; got {render_mode!r}"
            )
        self.config = config
        self.render_mode = render_mode
        self.action_space = gym.spaces.Discrete(4)
        self.observation_space = gym.spaces.Text(max_length=512, min_length=1, charset=_charset(config))
        self.maze: Maze | None = None
        self.grid: np.ndarray | None = None
        self.position: tuple[int, int] = (0, 0)
        self.turn = 0
        self._wind: int | None = None

    # -- core ------------------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """Generate a fresh maze. ``options={"maze": Maze}`` starts from a given layout instead."""
        super().reset(seed=seed)
        maze = (options or {}).get("maze")
        if maze is None:
            maze = generate_maze(self.np_random, self.config)
        elif not isinstance(maze, Maze):
            raise TypeError(f"options['maze'] must be a maze_env.Maze; got {type(maze).__name__}")
        self.maze = maze
        self.grid = maze.grid.copy()
        self.position = maze.start
        self.turn = 0
        self._wind = None
        return self._observation(), self._info(entered=(), wind=None, reward_parts=None)

    def step(self, action: int) -> tuple[str, float, bool, bool, dict[str, Any]]:
        wind: int | None = None
        if self.config.wind_prob > 0 and self.np_random.random() < self.config.wind_prob:
            wind = int(self.np_random.integers(4))
        return self.replay(action, wind)

    def replay(self, action: int, wind: int | None) -> tuple[str, float, bool, bool, dict[str, Any]]:
        """:meth:`step` with a given wind push (a logged one; None: calm) instead of a drawn one.

        ``info["path"]`` lists the positions the turn visited: after the move, then after the push.
        """
        if self.grid is None:
            raise RuntimeError("call reset() before step()")
        if self.turn >= self.config.n_turns:
            raise RuntimeError(
                f"episode finished after {self.config.n_turns} turns (truncated=True was returned); call reset()"
            )
        action = check_action(action)
        entered: list[Tile] = []
        path = []
        for direction in (action,) if wind is None else (action, check_action(wind)):
            self.position, tile = move(
                self.grid, self.position, direction, melt=self.config.melt
            )  # move, then push
            path.append(self.position)
            if tile is not None:
                entered.append(tile)
        self._wind = wind
        self.turn += 1
        parts = self.reward_parts(entered)
        reward = float(sum(parts.values()))
        truncated = self.turn >= self.config.n_turns
        return (
            self._observation(),
            reward,
            False,
            truncated,
            {**self._info(entered=tuple(entered), wind=wind, reward_parts=parts), "path": path},
        )

    def reward_parts(self, entered: list[Tile]) -> dict[str, float]:
        """Per-step reward split by source; override to change the reward."""
        c = self.config
        n = {t: sum(1 for e in entered if e == t) for t in Tile}
        return {
            "gold": c.reward_gold * n[Tile.GOLD],
            "mold": c.reward_mold * n[Tile.MOLD],
            "path": c.reward_path * n[Tile.PATH],
            "step": c.step_cost,
        }

    # -- views -----------------------------------------------------------------------------------------
    def neighbours(self) -> tuple[Tile, Tile, Tile, Tile]:
        assert self.grid is not None
        return neighbours(self.grid, self.position)

    def _observation(self) -> str:
        order = (
            tuple(int(i) for i in self.np_random.permutation(4))
            if self.config.shuffle_clauses
            else IDENTITY_ORDER
        )
        self._order = order
        return observation_text(
            self.position, self.neighbours(), self.config.tiles, order=order, wind=self._wind
        )

    def _info(
        self, *, entered: tuple[Tile, ...], wind: int | None, reward_parts: dict[str, float] | None
    ) -> dict[str, Any]:
        return {
            "position": self.position,
            "turn": self.turn,
            "neighbours": tuple(int(t) for t in self.neighbours()),
            "clause_order": self._order,
            "entered": tuple(int(t) for t in entered),
            "delta_gold": sum(1 for t in entered if t == Tile.GOLD),
            "delta_mold": sum(1 for t in entered if t == Tile.MOLD),
            "wind": None if wind is None else {"direction": wind, "name": DIRECTION_NAMES[wind]},
            "reward_parts": reward_parts or {"gold": 0.0, "mold": 0.0, "path": 0.0, "step": 0.0},
        }

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return self.render_window()

    def render_window(self, radius: int = 5) -> str:
        """ASCII view around the agent: ``.`` Path, ``#`` Mold, ``G`` Gold, ``@`` agent, blank off-grid."""
        assert self.grid is not None
        x0, y0 = self.position
        rows = []
        for y in range(y0 - radius, y0 + radius + 1):
            row = []
            for x in range(x0 - radius, x0 + radius + 1):
                if (x, y) == self.position:
                    row.append("@")
                elif 0 <= y < self.grid.shape[0] and 0 <= x < self.grid.shape[1]:
                    row.append(".#G"[int(self.grid[y, x])])
                else:
                    row.append(" ")
            rows.append(" ".join(row))
        return (
            "\n".join(rows)
            + f"\nturn {self.turn}/{self.config.n_turns} at {self.position}  ({'/'.join(ACTIONS)})"
        )
