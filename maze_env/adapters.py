"""Adapters that plug the maze into other RL engines: a text-in/text-out env and reward functions.

- :class:`MazeTextEnv`: a Gymnasium env whose action is the model's raw text. ``step(text)`` parses it
  (``maze_env.parse_action``); an unparseable answer costs ``invalid_penalty`` and a turn, and the agent
  stays put. This is what verl agent loops, verl-agent and SkyRL-style loops drive (``chat_step``
  returns SkyRL's ``BaseTextEnvStepOutput`` fields).
- :class:`MazeReward`: a reward function with TRL's signature
  ``reward_funcs(prompts, completions, **kwargs) -> list[float]``. It replays each completion's moves in
  a :class:`MazeTextEnv` seeded from the dataset's ``seed`` column and returns the episode return, so
  it scores a trajectory exactly as the env that produced it did.
- :func:`verl_compute_score`: the same replay behind verl's ``custom_reward_function`` signature.

Example:
    >>> env = MazeTextEnv()
    >>> obs, info = env.reset(seed=3)
    >>> obs, reward, terminated, truncated, info = env.step("E")
    >>> info["invalid_action"], env.turn
    (False, 1)
    >>> obs, reward, terminated, truncated, info = env.step("east please")
    >>> info["invalid_action"], reward
    (True, -1.0)
    >>> reward_fn = MazeReward()
    >>> reward_fn(prompts=["..."], completions=["E S"], seed=[3]) == [MazeReward.replay(3, ["E", "S"])[0]]
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym

from maze_env.config import MazeConfig
from maze_env.env import MazeEnv
from maze_env.text import ActionParseError, parse_action

DEFAULT_INVALID_PENALTY = -1.0
_MOVE_SPLIT = re.compile(r"[\s,;]+")


def _check_penalty(invalid_penalty: float) -> float:
    if isinstance(invalid_penalty, bool) or not isinstance(invalid_penalty, int | float):
        raise TypeError(f"invalid_penalty must be a number, got {invalid_penalty!r}")
    if not math.isfinite(float(invalid_penalty)):
        raise ValueError(f"invalid_penalty must be finite, got {invalid_penalty!r}")
    return float(invalid_penalty)


class MazeTextEnv(gym.Env):
    """The maze with text actions: ``step(model_text) -> (observation_text, reward, terminated, truncated, info)``.

    Wraps :class:`maze_env.MazeEnv` (same maze, wind and rewards for the same seed and valid moves).
    An answer that is not exactly one of N/E/S/W does not move the agent, costs ``invalid_penalty``
    (instead of the step cost) and uses up a turn, so every episode ends after ``config.n_turns``
    answers. The observation after an invalid answer is the previous one, repeated.

    ``info`` adds ``invalid_action`` (bool), ``parse_error`` (str or None), ``n_invalid`` and
    ``action`` (0..3 or None) to ``MazeEnv``'s info. ``messages`` is the chat so far (user
    observations, assistant answers verbatim).

    Example:
        >>> env = MazeTextEnv(invalid_penalty=-2.0)
        >>> _ = env.reset(seed=0)
        >>> env.step("??")[1]
        -2.0
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}

    def __init__(
        self,
        config: MazeConfig | None = None,
        *,
        invalid_penalty: float = DEFAULT_INVALID_PENALTY,
        render_mode: str | None = None,
        max_action_chars: int = 256,
    ) -> None:
        self.maze_env = MazeEnv(config, render_mode=render_mode)
        self.config = self.maze_env.config
        self.render_mode = render_mode
        self.invalid_penalty = _check_penalty(invalid_penalty)
        self.observation_space = self.maze_env.observation_space
        self.action_space = gym.spaces.Text(max_length=max_action_chars, min_length=0)
        self.turn = 0
        self.n_invalid = 0
        self.messages: list[dict[str, str]] = []
        self._observation = ""
        self._info: dict[str, Any] = {}

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        observation, info = self.maze_env.reset(seed=seed, options=options)
        self.turn = 0
        self.n_invalid = 0
        self._observation = observation
        self._info = dict(info)
        self.messages = [{"role": "user", "content": observation}]
        return observation, self._extend(info, action=None, error=None)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if not self.messages:
            raise RuntimeError("call reset() before step()")
        if self.turn >= self.config.n_turns:
            raise RuntimeError(
                f"episode finished after {self.config.n_turns} turns (truncated=True was returned); call reset()"
            )
        if not isinstance(action, str):
            raise TypeError(f"MazeTextEnv actions are the model's text (str); got {type(action).__name__}")
        self.messages.append({"role": "assistant", "content": action})
        self.turn += 1
        try:
            move = parse_action(action)
        except ActionParseError as error:
            self.n_invalid += 1
            truncated = self.turn >= self.config.n_turns
            nothing = {"entered": (), "delta_gold": 0, "delta_mold": 0, "wind": None}
            parts = {"gold": 0.0, "mold": 0.0, "path": 0.0, "step": 0.0, "invalid": self.invalid_penalty}
            info = self._extend(
                {**self._info, **nothing, "reward_parts": parts}, action=None, error=str(error)
            )
            info["turn"] = self.turn
            if not truncated:
                self.messages.append({"role": "user", "content": self._observation})
            return self._observation, self.invalid_penalty, False, truncated, info
        observation, reward, _, _, info = self.maze_env.step(move)
        self._observation = observation
        self._info = dict(info)
        truncated = self.turn >= self.config.n_turns
        if not truncated:
            self.messages.append({"role": "user", "content": observation})
        info = self._extend(info, action=move, error=None)
        info["turn"] = self.turn
        return observation, float(reward), False, truncated, info

    def chat_step(self, action: str) -> dict[str, Any]:
        """One step in SkyRL's ``BaseTextEnvStepOutput`` shape.

        Returns ``{"observations": [next user message] (empty when done), "reward", "done", "metadata"}``.
        """
        observation, reward, terminated, truncated, info = self.step(action)
        done = terminated or truncated
        observations = [] if done else [{"role": "user", "content": observation}]
        return {"observations": observations, "reward": reward, "done": done, "metadata": info}

    def render(self) -> str | None:
        return self.maze_env.render()

    def _extend(self, info: dict[str, Any], *, action: int | None, error: str | None) -> dict[str, Any]:
        out = dict(info)
        out.update(
            action=action, invalid_action=error is not None, parse_error=error, n_invalid=self.n_invalid
        )
        return out


# --------------------------------------------------------------------------------------------------
# Reward functions
# --------------------------------------------------------------------------------------------------


def completion_moves(completion: str | Sequence[dict[str, Any]] | Sequence[str]) -> list[str]:
    """The answer texts of one completion, in order.

    - a chat (list of ``{"role", "content"}`` messages, TRL's conversational format): the
      ``assistant`` messages' contents, one move each (user/tool messages are the env's);
    - a list of strings: one move each;
    - a plain string: moves separated by whitespace, commas or semicolons (``"N E E S"``).

    Example:
        >>> completion_moves("N, E\\nS")
        ['N', 'E', 'S']
        >>> completion_moves([{"role": "assistant", "content": "W"}, {"role": "user", "content": "..."}])
        ['W']
    """
    if isinstance(completion, str):
        return [move for move in _MOVE_SPLIT.split(completion.strip()) if move]
    moves: list[str] = []
    for item in completion:
        if isinstance(item, str):
            moves.append(item)
        elif isinstance(item, dict):
            if item.get("role") == "assistant":
                content = item.get("content", "")
                moves.append(content if isinstance(content, str) else str(content))
        else:
            raise TypeError(
                "a completion must be a string, a list of strings or a list of chat messages; "
                f"got an item of type {type(item).__name__}"
            )
    return moves


@dataclass(frozen=True)
class Replay:
    """What replaying one completion gave: the return and its parts."""

    total: float
    rewards: tuple[float, ...]
    gold: int
    mold: int
    n_invalid: int
    n_ignored: int


class MazeReward:
    """TRL-style reward function: replay each completion's moves in the maze built from its seed.

    ``reward(prompts, completions, seed=[...], **kwargs) -> list[float]``. ``seed`` is a dataset column
    (TRL passes every column but ``prompt`` as a keyword argument); rename it with ``seed_key``. Each
    completion's moves (:func:`completion_moves`) are stepped in ``MazeTextEnv(config,
    invalid_penalty)`` reset with that seed; the reward is the sum of the step rewards. Moves past the
    episode's ``n_turns`` are ignored (counted in ``n_ignored``); a completion with fewer moves scores
    the turns it played. With TRL's ``log_metric`` it logs the mean Gold/Mold entries and invalid
    answers per completion.

    Example:
        >>> reward = MazeReward()
        >>> scores = reward(prompts=["p", "p"], completions=["N", "W"], seed=[5, 5])
        >>> len(scores)
        2
    """

    def __init__(
        self,
        config: MazeConfig | None = None,
        *,
        invalid_penalty: float = DEFAULT_INVALID_PENALTY,
        seed_key: str = "seed",
    ) -> None:
        self.config = config or MazeConfig()
        self.invalid_penalty = _check_penalty(invalid_penalty)
        self.seed_key = seed_key
        self.__name__ = "maze_return"  # TRL names reward columns after the function

    @staticmethod
    def replay(
        seed: int,
        moves: Sequence[str],
        config: MazeConfig | None = None,
        invalid_penalty: float = DEFAULT_INVALID_PENALTY,
    ) -> tuple[float, Replay]:
        """Step ``moves`` in a fresh ``MazeTextEnv`` reset with ``seed``; ``(return, details)``."""
        if isinstance(seed, bool) or not isinstance(seed, int) and not hasattr(seed, "__index__"):
            raise TypeError(f"seed must be an int, got {seed!r}")
        env = MazeTextEnv(config, invalid_penalty=invalid_penalty)
        env.reset(seed=int(seed))
        rewards: list[float] = []
        gold = mold = 0
        for move in moves[: env.config.n_turns]:
            _, reward, _, _, info = env.step(move)
            rewards.append(reward)
            if not info["invalid_action"]:
                gold += int(info["delta_gold"])
                mold += int(info["delta_mold"])
        details = Replay(
            total=float(sum(rewards)),
            rewards=tuple(rewards),
            gold=gold,
            mold=mold,
            n_invalid=env.n_invalid,
            n_ignored=max(0, len(moves) - env.config.n_turns),
        )
        return details.total, details

    def details(self, completions: Sequence[Any], seeds: Sequence[int]) -> list[Replay]:
        """One :class:`Replay` per completion."""
        if len(completions) != len(seeds):
            raise ValueError(f"got {len(completions)} completions but {len(seeds)} seeds")
        return [
            self.replay(seed, completion_moves(completion), self.config, self.invalid_penalty)[1]
            for completion, seed in zip(completions, seeds, strict=True)
        ]

    def __call__(self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        if self.seed_key not in kwargs:
            raise KeyError(
                f"MazeReward needs the maze seed of every completion: add a {self.seed_key!r} column to "
                f"the dataset (or pass seed_key=...); got keyword arguments {sorted(kwargs)}"
            )
        seeds = list(kwargs[self.seed_key])
        if len(completions) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
        replays = self.details(completions, seeds)
        log_metric: Callable[[str, float], None] | None = kwargs.get("log_metric")
        if callable(log_metric) and replays:
            count = len(replays)
            log_metric("maze/gold", sum(r.gold for r in replays) / count)
            log_metric("maze/mold", sum(r.mold for r in replays) / count)
            log_metric("maze/invalid", sum(r.n_invalid for r in replays) / count)
        return [r.total for r in replays]


def verl_compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    **kwargs: Any,
) -> float:
    """verl ``custom_reward_function`` entry point: the return of ``solution_str``'s moves.

    The maze seed comes from ``extra_info["seed"]`` (or ``ground_truth`` when that is an int).
    ``kwargs`` may carry ``invalid_penalty`` and a ``config`` dict (``MazeConfig.to_dict()`` form),
    e.g. from ``custom_reward_function.reward_kwargs``.
    """
    seed = (extra_info or {}).get("seed", ground_truth)
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        raise ValueError(
            f"no maze seed for data_source={data_source!r}: put it in extra_info['seed'] or ground_truth"
        ) from None
    config = kwargs.get("config")
    if isinstance(config, dict):
        config = MazeConfig.from_dict(config)
    penalty = kwargs.get("invalid_penalty", DEFAULT_INVALID_PENALTY)
    total, _ = MazeReward.replay(seed, completion_moves(solution_str), config, penalty)
    return total
