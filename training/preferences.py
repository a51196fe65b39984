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

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from maze_env import ACTIONS, MazeConfig
from probes.maze_states import MazeStates
from probes.q_readout import true_q
from probes.tokens import direction_token_ids
from training.expert_data import encode_episode
from training.rollout import EpisodeBatch, TurnTensors, right_pad

Rule = Literal["best_worst", "random"]


@dataclass(frozen=True)
class PreferencePairs:
    """One preference per row: the state's chat, the preferred and the other move, and their true Q."""

    prompts: list[list[dict[str, str]]]
    chosen: np.ndarray
    rejected: np.ndarray
    q_chosen: np.ndarray
    q_rejected: np.ndarray
    q: np.ndarray
    """``(n, 4)`` true Q of every move at the row's state."""
    seeds: np.ndarray
    """The maze seed of the row's state."""
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
                               self.q_chosen[rows], self.q_rejected[rows], self.q[rows], self.seeds[rows],
                               self.state_index[rows], len(rows), self.rule)  # fmt: skip

    def head(self, n: int) -> PreferencePairs:
        """The first ``n`` pairs; the states considered are those up to the last one's (ties among them kept)."""
        rows = np.arange(min(n, len(self)))
        taken = self._take(rows)
        considered = int(self.state_index[rows[-1]]) + 1 if len(rows) else 0
        return dataclasses.replace(taken, n_states=considered)


def state_chat(states: MazeStates, index: int) -> list[dict[str, str]]:
    """The chat up to decision ``index`` (it ends on the user's observation), as the policy reads it."""
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
        prompts=[state_chat(states, int(i)) for i in index],
        chosen=chosen,
        rejected=rejected,
        q_chosen=q[index, chosen] if len(rows) else np.zeros(0),
        q_rejected=q[index, rejected] if len(rows) else np.zeros(0),
        q=q[index] if len(rows) else np.zeros((0, 4)),
        seeds=np.array([states.seeds[int(states.episode[i])] for i in index], dtype=np.int64),
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


def preference_episodes(
    tokenizer: Any, pairs: PreferencePairs, config: MazeConfig | None = None
) -> EpisodeBatch:
    """The pairs as a one-decision :class:`~training.rollout.EpisodeBatch` for the trainer: row ``2i`` plays pair
    ``i``'s preferred move, row ``2i + 1`` its other move, both after the same chat (the earlier moves are in the
    text). ``direction_logits`` hold the state's true Q of the four moves and ``rewards`` the played move's, as
    the expert's episodes hold the planner's."""
    if len(pairs) == 0:
        raise ValueError("no preference pairs (every state was a tie); use more states or another rule")
    direction_ids = list(direction_token_ids(tokenizer, ACTIONS))
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (probes.models does)")
    n = 2 * len(pairs)
    out = TurnTensors.empty(n, 1)
    rows, positions, messages, seeds = [], [], [], []
    for i in range(len(pairs)):
        for j, action in enumerate((int(pairs.chosen[i]), int(pairs.rejected[i]))):
            chat = [*pairs.prompts[i], {"role": "assistant", "content": ACTIONS[action]}]
            ids, where = encode_episode(tokenizer, chat, direction_ids)
            row = 2 * i + j
            out.actions[row, 0] = action
            out.direction_logits[row, 0] = torch.from_numpy(pairs.q[i]).float()
            out.rewards[row, 0] = float(pairs.q[i, action])
            rows.append(ids)
            positions.append([where[-1]])
            messages.append(chat)
            seeds.append(int(pairs.seeds[i]))
    pad_id = int(tokenizer.pad_token_id)
    input_ids, attention_mask = right_pad(rows, pad_id)
    return EpisodeBatch(input_ids=input_ids, attention_mask=attention_mask,
                        action_positions=torch.tensor(positions, dtype=torch.long), **out.fields(), seeds=seeds,
                        messages=messages, temperature=1.0, greedy=True, direction_token_ids=direction_ids,
                        pad_token_id=pad_id, config=config or MazeConfig(), model_name=f"preferences-{pairs.rule}")  # fmt: skip


def step_pairs(
    n_pairs: int, *, config: MazeConfig, seed: int, horizon: int, rule: Rule = "best_worst"
) -> PreferencePairs:
    """Exactly ``n_pairs`` pairs from as many seeded random walks (maze seeds ``seed, seed + 1, ...``) as needed."""
    episodes = max(1, -(-n_pairs // max(1, config.n_turns)))
    while True:
        pairs = maze_preference_pairs(episodes, config=config, seed=seed, horizon=horizon, rule=rule)
        if len(pairs) >= n_pairs:
            return pairs.head(n_pairs)
        if pairs.n_states and len(pairs) == 0 and episodes > 64 * n_pairs:
            raise ValueError("every state is a tie; raise the horizon")
        episodes *= 2
