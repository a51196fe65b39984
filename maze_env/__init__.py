"""The paper's text maze as a Gymnasium environment.

Example:
    >>> import gymnasium as gym
    >>> import maze_env
    >>> env = gym.make("WelfareMaze-v0")
    >>> obs, info = env.reset(seed=0)
    >>> obs.startswith("You are in a maze.")
    True
"""

from __future__ import annotations

import gymnasium as gym

from maze_env.batch import MazeBatch
from maze_env.config import MazeConfig
from maze_env.dynamics import ACTIONS, DIRECTION_NAMES, check_action
from maze_env.env import MazeEnv
from maze_env.generate import Maze, generate_maze
from maze_env.scripted import PAPER_BASE_SEED, Trajectory, final_action_balance, scripted_trajectories
from maze_env.search import Expert, action_values, sequence_returns
from maze_env.text import (
    ActionParseError,
    episode_messages,
    observation_text,
    parse_action,
    render_chat,
    wind_sentence,
)
from maze_env.tiles import GLYPH_NAMES, TILE_SETS, Tile, TileSet

__all__ = [
    "ACTIONS",
    "DIRECTION_NAMES",
    "GLYPH_NAMES",
    "PAPER_BASE_SEED",
    "TILE_SETS",
    "REGISTERED_IDS",
    "ActionParseError",
    "Expert",
    "Maze",
    "MazeBatch",
    "MazeConfig",
    "MazeEnv",
    "Tile",
    "TileSet",
    "Trajectory",
    "action_values",
    "check_action",
    "config_for_tiles",
    "episode_messages",
    "final_action_balance",
    "generate_maze",
    "observation_text",
    "parse_action",
    "render_chat",
    "scripted_trajectories",
    "sequence_returns",
    "wind_sentence",
]

REGISTERED_IDS: dict[str, dict] = {
    "WelfareMaze-v0": {"tiles": "office"},
    "WelfareMaze-Swap-v0": {"tiles": "swap"},
    "WelfareMaze-Shuffle-v0": {"tiles": "shuffle"},
    "WelfareMaze-NoWind-v0": {"tiles": "office", "wind_prob": 0.0},
}


def config_for_tiles(name: str = "office", **overrides) -> MazeConfig:
    """A MazeConfig with the named tile preset (office, swap, shuffle) and any rule overrides."""
    return MazeConfig.from_dict({**MazeConfig().to_dict(), "tiles": TileSet.named(name), **overrides})


def _make(tiles: str = "office", render_mode: str | None = None, **overrides) -> MazeEnv:
    return MazeEnv(config_for_tiles(tiles, **overrides), render_mode=render_mode)


for _env_id, _kwargs in REGISTERED_IDS.items():
    if _env_id not in gym.registry:
        gym.register(id=_env_id, entry_point="maze_env:_make", kwargs=_kwargs)
