"""Preference pairs from the maze: two moves from the same state, the one with the higher true Q preferred.

Decision states come from seeded random walks (``probes.maze_states.MazeStates.random_walks``) and their true
action values from exact search (``probes.q_readout.true_q``, horizon ``h``). Each state gives at most one
pair: the best and the worst move (``rule="best_worst"``), or two distinct moves drawn at random
(``rule="random"``, seeded); a state whose two moves have equal Q is a tie and gives no pair, and the share of
ties is stated. The prompt of a pair is the chat up to that decision (it ends with the user's observation), so a
pair reads exactly as the policy's own decision.

Example:
    >>> pairs = maze_preference_pairs(4, config=MazeConfig(size=12, n_turns=3), seed=0, horizon=2)  # doctest: +SKIP
    >>> len(pairs), round(pairs.tie_share, 2)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from maze_env import MazeConfig
from probes.maze_states import MazeStates
from probes.q_readout import true_q

Rule = Literal["best_worst", "random"]


@dataclass(frozen=True)
class PreferencePairs:
    """One preference per row: the state's chat, the preferred and the other move, and their true Q."""

    prompts: list[list[dict[str, str]]]
    chosen: np.ndarray
    rejected: np.ndarray
    q_chosen: np.ndarray
    q_rejected: np.ndarray
    state_index: np.ndarray
    """The row's state in the :class:`MazeStates` it came from."""
    n_states: int
    """Decision states considered (pairs + ties)."""
    rule: str

    def __len__(self) -> int:
        return int(self.chosen.shape[0])

    @property
    def n_ties(self) -> int:
        return self.n_states - len(self)

    @property
    def tie_share(self) -> float:
        """Share of the states considered whose two moves had equal true Q (no pair)."""
        return self.n_ties / self.n_states if self.n_states else 0.0

    def split(self, held_out: float = 0.25, *, seed: int = 0) -> tuple[PreferencePairs, PreferencePairs]:
        """(train, held-out) pairs, split by episode-free random rows (seeded)."""
        if not 0 < held_out < 1:
            raise ValueError(f"held_out must be in (0, 1); got {held_out}")
        order = np.random.default_rng(seed).permutation(len(self))
        cut = len(self) - max(1, int(round(held_out * len(self))))
        return self._take(np.sort(order[:cut])), self._take(np.sort(order[cut:]))

    def _take(self, rows: np.ndarray) -> PreferencePairs:
        return PreferencePairs([self.prompts[i] for i in rows], self.chosen[rows], self.rejected[rows],
                               self.q_chosen[rows], self.q_rejected[rows], self.state_index[rows], len(rows),
                               self.rule)  # fmt: skip


def _prompt(states: MazeStates, index: int) -> list[dict[str, str]]:
    episode, turn = int(states.episode[index]), int(states.turn[index])
    messages = states.messages[episode][: 2 * turn + 1]
    if not messages or messages[-1]["role"] != "user":
        raise ValueError(f"state {index} does not end on a user turn; the states are inconsistent")
    return [dict(m) for m in messages]


def preference_pairs(
    states: MazeStates, q: np.ndarray, *, rule: Rule = "best_worst", seed: int = 0
) -> PreferencePairs:
    """Pairs from decision states and their ``(n_states, 4)`` true Q (see the module docstring)."""
    if q.shape != (len(states), 4):
        raise ValueError(f"q must have shape ({len(states)}, 4); got {q.shape}")
    if rule not in ("best_worst", "random"):
        raise ValueError(f"rule must be best_worst or random; got {rule!r}")
    rng = np.random.default_rng(seed)
    rows: list[tuple[int, int, int]] = []
    for index in range(len(states)):
        if rule == "best_worst":
            a, b = int(np.argmax(q[index])), int(np.argmin(q[index]))
        else:
            a, b = (int(x) for x in rng.choice(4, size=2, replace=False))
        if q[index, a] == q[index, b]:
            continue
        chosen, rejected = (a, b) if q[index, a] > q[index, b] else (b, a)
        rows.append((index, chosen, rejected))
    index = np.array([r[0] for r in rows], dtype=np.int64)
    chosen = np.array([r[1] for r in rows], dtype=np.int64)
    rejected = np.array([r[2] for r in rows], dtype=np.int64)
    return PreferencePairs(
        prompts=[_prompt(states, int(i)) for i in index],
        chosen=chosen,
        rejected=rejected,
        q_chosen=q[index, chosen] if len(rows) else np.zeros(0),
        q_rejected=q[index, rejected] if len(rows) else np.zeros(0),
        state_index=index,
        n_states=len(states),
        rule=rule,
    )


def maze_preference_pairs(
    n_episodes: int,
    *,
    config: MazeConfig | None = None,
    seed: int = 0,
    n_turns: int | None = None,
    horizon: int = 4,
    rule: Rule = "best_worst",
    **kwargs: Any,
) -> PreferencePairs:
    """Pairs from ``n_episodes`` seeded random walks (maze seeds ``seed, seed + 1, ...``)."""
    states = MazeStates.random_walks(n_episodes, config=config, seed=seed, n_turns=n_turns).decisions()
    return preference_pairs(states, true_q(states, horizon=horizon), rule=rule, seed=seed, **kwargs)
