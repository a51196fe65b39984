"""Maze decision states and what a model computes at them (one forward per episode).

A *decision state* is a moment where the model must choose N/E/S/W: the conversation so far ends with a
user turn and the assistant header. The observation after the last move of a full-length episode
(``turns_left == 0``) is kept as a state (the model reads the final reward there) but is no decision:
:meth:`MazeStates.decisions` drops it. :class:`MazeStates` holds the episodes (chat messages, maze seed,
actions, wind) and, per state, what the world looked like: position, start, neighbour tiles, the reward
of the previous turn, the turn index, and (replayed on demand) the grid with melted tiles. They come
from scripted walks (:meth:`MazeStates.from_trajectories`), LM rollouts
(:meth:`MazeStates.from_episodes`, a ``training.rollout.EpisodeBatch``) or uniform random walks
(:meth:`MazeStates.random_walks`).

:func:`read_decisions` runs the model once per episode and reads, at every decision position, the
residual stream at the requested layers and the logits of the direction tokens. Chat templates render
prefixes consistently and the model is causal, so the activation at the end of the assistant header of
turn ``t`` inside the full episode equals the last-token activation of the episode truncated to turn
``t`` (tested): one forward replaces ``n_turns`` forwards.

Example:
    >>> from maze_env import MazeConfig, scripted_trajectories
    >>> config = MazeConfig(size=30)
    >>> states = MazeStates.from_trajectories(scripted_trajectories("gold", 2, config=config), config=config)
    >>> len(states), states.turn.tolist()  # 1 + 2 steps, each with a final state after the last move
    (5, [0, 1, 0, 1, 2])
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from gymnasium.utils import seeding
from jaxtyping import Float
from torch import Tensor, nn

from maze_env.config import MazeConfig
from maze_env.dynamics import ACTIONS, move, neighbours
from maze_env.env import MazeEnv
from maze_env.generate import generate_maze
from maze_env.scripted import Trajectory
from maze_env.text import episode_messages, render_chat
from probes import layers as _layers
from probes import positions as _positions
from probes.record import record
from probes.resources import release_freed_memory
from probes.tokens import direction_token_ids

Message = dict[str, str]


class MazeStatesError(ValueError):
    """Inconsistent episodes (messages that do not match the replayed maze, bad shapes)."""


def _initial_grid(seed: int, config: MazeConfig) -> tuple[np.ndarray, tuple[int, int]]:
    maze = generate_maze(seeding.np_random(int(seed))[0], config)
    return maze.grid.copy(), maze.start


@dataclass(frozen=True)
class MazeStates:
    """Decision states of maze episodes, in episode-major, turn order.

    Attributes:
        messages: per episode, the chat messages (user/assistant alternating). An episode ending with a
            user turn has one more state (after its last move) than it has actions.
        seeds: maze seed per episode (the layout is ``generate_maze(np_random(seed), config)``).
        actions: per episode, the actions taken (ints 0..3).
        winds: per episode, the wind push after each action (-1 for none).
        config: the maze rules.
        episode, turn: ``(n_states,)`` episode index and turn index (0 = first decision) of each state.
        position, start: ``(n_states, 2)`` agent (x, y) and the episode's start (x, y).
        neighbours: ``(n_states, 4)`` tile classes to the N, E, S, W.
        last_reward: ``(n_states,)`` reward of the previous turn (NaN at turn 0).
        turns_left: ``(n_states,)`` moves still to be made in the episode at the state, the one decided
            here included: ``config.n_turns - turn`` (``MazeEnv`` truncates after ``n_turns`` moves). It is
            0 only at the observation after the last move of a full-length episode, which is not a
            decision (:attr:`has_decision`; :meth:`decisions` drops those states).
    """

    messages: tuple[tuple[Message, ...], ...]
    seeds: tuple[int, ...]
    actions: tuple[tuple[int, ...], ...]
    winds: tuple[tuple[int, ...], ...]
    config: MazeConfig
    episode: np.ndarray = field(repr=False)
    turn: np.ndarray = field(repr=False)
    position: np.ndarray = field(repr=False)
    start: np.ndarray = field(repr=False)
    neighbours: np.ndarray = field(repr=False)
    last_reward: np.ndarray = field(repr=False)
    turns_left: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return int(self.episode.shape[0])

    @property
    def n_episodes(self) -> int:
        return len(self.seeds)

    @property
    def relative_position(self) -> np.ndarray:
        """``(n_states, 2)`` position minus start (x right, y down)."""
        return self.position - self.start

    @property
    def has_decision(self) -> np.ndarray:
        """``(n_states,)`` bool: a move is still to be made here (``turns_left >= 1``).

        False only at the observation after the ``n_turns``-th move: the episode is over, nothing is
        chosen there, so it has no action values (``probes.q_readout.true_q`` refuses it).
        """
        return self.turns_left >= 1

    @property
    def state_seed(self) -> np.ndarray:
        """``(n_states,)`` maze seed of each state (the grouping for train/test splits)."""
        return np.asarray(self.seeds, dtype=np.int64)[self.episode]

    # -- construction ------------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        messages: Sequence[Sequence[Message]],
        seeds: Sequence[int],
        actions: Sequence[Sequence[int]],
        winds: Sequence[Sequence[int]] | None = None,
        config: MazeConfig | None = None,
    ) -> MazeStates:
        """Replay every episode on its maze and record the per-state world.

        Raises:
            MazeStatesError: a message/action count mismatch, or a user turn whose text does not show the
                replayed position (the episode was not played on this seed/config).
        """
        config = config or MazeConfig()
        if not (len(messages) == len(seeds) == len(actions)):
            raise MazeStatesError(
                f"need one message list, seed and action list per episode; got {len(messages)}, "
                f"{len(seeds)}, {len(actions)}"
            )
        if not messages:
            raise MazeStatesError("no episodes")
        winds = winds if winds is not None else [[-1] * len(a) for a in actions]
        rows: dict[str, list[Any]] = {
            k: [] for k in ("episode", "turn", "position", "start", "neighbours", "last_reward", "turns_left")
        }
        for e, (chat, seed, acts, wind) in enumerate(zip(messages, seeds, actions, winds, strict=True)):
            acts = [int(a) for a in acts]
            users = [m for m in chat if m.get("role") == "user"]
            assistants = [m for m in chat if m.get("role") == "assistant"]
            if [m["content"].strip() for m in assistants] != [ACTIONS[a] for a in acts]:
                raise MazeStatesError(f"episode {e}: assistant turns do not match the actions {acts}")
            if len(acts) > config.n_turns:
                raise MazeStatesError(
                    f"episode {e}: {len(acts)} actions, more than the episode's n_turns={config.n_turns}"
                )
            if len(users) not in (len(acts), len(acts) + 1) or len(wind) != len(acts):
                raise MazeStatesError(
                    f"episode {e}: {len(users)} user turns, {len(acts)} actions, {len(wind)} wind entries"
                )
            grid, start = _initial_grid(seed, config)
            pos, reward = start, float("nan")
            for t, user in enumerate(users):
                x, y = pos
                if f"location ({x}, {y})" not in user["content"]:
                    raise MazeStatesError(
                        f"episode {e} turn {t}: the user turn does not show the replayed position {pos}; "
                        "was it played on seed {seed} with this config?"
                    )
                rows["episode"].append(e)
                rows["turn"].append(t)
                rows["position"].append(pos)
                rows["start"].append(start)
                rows["neighbours"].append([int(n) for n in neighbours(grid, pos)])
                rows["last_reward"].append(reward)
                rows["turns_left"].append(config.n_turns - t)
                if t < len(acts):
                    pos, reward = _step(grid, pos, acts[t], int(wind[t]), config)
        return cls(
            messages=tuple(tuple(dict(m) for m in chat) for chat in messages),
            seeds=tuple(int(s) for s in seeds),
            actions=tuple(tuple(int(a) for a in acts) for acts in actions),
            winds=tuple(tuple(int(w) for w in wd) for wd in winds),
            config=config,
            episode=np.asarray(rows["episode"], dtype=np.int64),
            turn=np.asarray(rows["turn"], dtype=np.int64),
            position=np.asarray(rows["position"], dtype=np.int64).reshape(-1, 2),
            start=np.asarray(rows["start"], dtype=np.int64).reshape(-1, 2),
            neighbours=np.asarray(rows["neighbours"], dtype=np.int64).reshape(-1, 4),
            last_reward=np.asarray(rows["last_reward"], dtype=np.float64),
            turns_left=np.asarray(rows["turns_left"], dtype=np.int64),
        )

    @classmethod
    def from_trajectories(
        cls,
        trajectories: Sequence[Trajectory],
        *,
        config: MazeConfig | None = None,
        include_final: bool = True,
    ) -> MazeStates:
        """States of scripted trajectories (``maze_env.scripted_trajectories``, same ``config``).

        With ``include_final`` the observation after the last move (on the class tile) is replayed and
        appended as one more state, so the last reward is the class reward (Mold/Gold/Path).
        """
        if not trajectories:
            raise MazeStatesError("no trajectories")
        config = replace(config or MazeConfig(), wind_prob=0.0)  # scripted walks are windless
        env = MazeEnv(config)
        messages = []
        for traj in trajectories:
            chat = [dict(m) for m in traj.messages]
            if include_final:
                observations = _replay_observations(env, traj.seed, traj.actions, config)
                replayed = episode_messages(observations, traj.actions)
                if replayed[: len(chat)] != chat:
                    raise MazeStatesError(
                        f"trajectory on seed {traj.seed} does not replay to the same prompts; pass the config "
                        "it was generated with"
                    )
                chat = replayed
            messages.append(chat)
        return cls.build(
            messages,
            [t.seed for t in trajectories],
            [t.actions for t in trajectories],
            None,
            config,
        )

    @classmethod
    def from_episodes(cls, batch: Any) -> MazeStates:
        """States of LM rollouts (a ``training.rollout.EpisodeBatch``): one per decision, wind included."""
        states = cls.build(
            batch.messages,
            batch.seeds,
            batch.actions.tolist(),
            batch.wind.tolist(),
            batch.config,
        )
        recorded = batch.neighbours.reshape(-1, 4).numpy()
        if recorded.shape == states.neighbours.shape and not np.array_equal(recorded, states.neighbours):
            raise MazeStatesError("replayed neighbours differ from the ones recorded in the episode batch")
        return states

    @classmethod
    def random_walks(
        cls, n_episodes: int, *, config: MazeConfig | None = None, seed: int = 0, n_turns: int | None = None
    ) -> MazeStates:
        """Uniformly random walks (wind as in ``config``), maze seeds ``seed, seed+1, ...``.

        Every episode ends with the observation after its last move, so ``n_turns + 1`` states each.
        """
        if isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes < 1:
            raise MazeStatesError(f"n_episodes must be a positive int, got {n_episodes!r}")
        config = config or MazeConfig()
        turns = config.n_turns if n_turns is None else int(n_turns)
        if not 1 <= turns <= config.n_turns:
            raise MazeStatesError(f"n_turns must be in 1..{config.n_turns}, got {n_turns}")
        rng = np.random.default_rng(seed)
        env = MazeEnv(config)
        messages, seeds, actions, winds = [], [], [], []
        for e in range(n_episodes):
            maze_seed = seed + e
            obs, _ = env.reset(seed=maze_seed)
            observations, acts, wind = [obs], [], []
            for _ in range(turns):
                a = int(rng.integers(4))
                obs, _, _, _, info = env.step(a)
                observations.append(obs)
                acts.append(a)
                wind.append(-1 if info["wind"] is None else int(info["wind"]["direction"]))
            messages.append(episode_messages(observations, acts))
            seeds.append(maze_seed)
            actions.append(acts)
            winds.append(wind)
        return cls.build(messages, seeds, actions, winds, config)

    # -- per-state views ---------------------------------------------------------------------------------
    def iter_grids(self) -> Iterator[tuple[int, np.ndarray, tuple[int, int]]]:
        """Yield ``(state_index, grid, position)`` for every state, replaying each episode once.

        The yielded grid is live (mutated by later steps): copy it to keep it.
        """
        index = 0
        for e, seed in enumerate(self.seeds):
            grid, pos = _initial_grid(seed, self.config)
            n_states = int((self.episode == e).sum())
            for t in range(n_states):
                yield index, grid, pos
                index += 1
                if t < len(self.actions[e]):
                    pos, _ = _step(grid, pos, self.actions[e][t], self.winds[e][t], self.config)

    def grid(self, index: int) -> np.ndarray:
        """A copy of the grid (with melted tiles) at state ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"state {index} out of range 0..{len(self) - 1}")
        e, t = int(self.episode[index]), int(self.turn[index])
        grid, pos = _initial_grid(self.seeds[e], self.config)
        for k in range(t):
            pos, _ = _step(grid, pos, self.actions[e][k], self.winds[e][k], self.config)
        return grid

    def decisions(self) -> MazeStates:
        """These states without the ones where no move is left (:attr:`has_decision` false).

        Such a state is the observation after the last move of a full-length episode; it is dropped by
        removing that final user turn, so the result still reads with :func:`read_decisions` (one row
        per remaining state, in the same order). Returns ``self`` when every state is a decision.

        Example:
            >>> from maze_env import MazeConfig
            >>> states = MazeStates.random_walks(2, config=MazeConfig(size=30, n_turns=3))
            >>> len(states), len(states.decisions()), states.decisions().turns_left.tolist()
            (8, 6, [3, 2, 1, 3, 2, 1])
        """
        if bool(self.has_decision.all()):
            return self
        finished = set(self.episode[~self.has_decision].tolist())
        messages = [
            chat[:-1] if e in finished and chat and chat[-1].get("role") == "user" else chat
            for e, chat in enumerate(self.messages)
        ]
        return MazeStates.build(messages, self.seeds, self.actions, self.winds, self.config)

    def select_episodes(self, episodes: Sequence[int]) -> MazeStates:
        """The states of some episodes (renumbered 0..k-1 in the given order)."""
        picked = [int(e) for e in episodes]
        return MazeStates.build(
            [self.messages[e] for e in picked],
            [self.seeds[e] for e in picked],
            [self.actions[e] for e in picked],
            [self.winds[e] for e in picked],
            self.config,
        )


def _step(
    grid: np.ndarray, pos: tuple[int, int], action: int, wind: int, config: MazeConfig
) -> tuple[tuple[int, int], float]:
    """One turn in place: the move, then the wind push (if any); returns the new position and reward."""
    reward = config.step_cost
    pos, tile = move(grid, pos, action, melt=config.melt)
    if tile is not None:
        reward += config.reward_of(tile)
    if wind >= 0:
        pos, tile = move(grid, pos, wind, melt=config.melt)
        if tile is not None:
            reward += config.reward_of(tile)
    return (int(pos[0]), int(pos[1])), float(reward)


def _replay_observations(env: MazeEnv, seed: int, actions: Sequence[int], config: MazeConfig) -> list[str]:
    maze = generate_maze(seeding.np_random(int(seed))[0], config)
    obs, _ = env.reset(seed=int(seed), options={"maze": maze})
    observations = [obs]
    for a in actions:
        obs, *_ = env.step(int(a))
        observations.append(obs)
    return observations


# --------------------------------------------------------------------------------------------------------
# Reading the model at decision positions
# --------------------------------------------------------------------------------------------------------


def decision_positions(tokenizer: Any, messages: Sequence[Message]) -> tuple[str, list[int]]:
    """The rendered episode and the token index of every decision in it.

    Decision ``t`` is read at the last token of the assistant header before assistant message ``t``
    (the token whose logits produce the move); an episode ending with a user turn is rendered with the
    assistant header appended and its last token is one more decision.

    Raises:
        MazeStatesError: the template does not render the episode prefix-consistently.
    """
    text = render_chat(tokenizer, list(messages), close_final=False)
    ends_with_user = messages[-1].get("role") == "user"
    body, spans = _positions.assistant_char_spans(tokenizer, messages, close_final=ends_with_user)
    if not text.startswith(body):
        raise MazeStatesError(
            "the chat template does not render the episode as a prefix of its full rendering"
        )
    encoded = tokenizer(
        text,
        add_special_tokens=_positions.needs_special_tokens(tokenizer, [text]),
        return_offsets_mapping=True,
    )
    offsets = torch.tensor(encoded["offset_mapping"])
    found = []
    for span in spans:
        hit = _positions.tokens_in_spans(offsets, [span]).nonzero().flatten()
        if hit.numel() == 0 or int(hit[0]) == 0:
            raise MazeStatesError(f"could not locate the assistant content at characters {span}")
        found.append(int(hit[0]) - 1)
    if ends_with_user:
        found.append(len(encoded["input_ids"]) - 1)
    return text, found


@dataclass(frozen=True)
class DecisionReadout:
    """What a model computes at every decision state.

    Attributes:
        activations: ``{layer: (n_states, d_model)}`` float32 (empty when no layers were asked for).
        direction_logits: ``(n_states, 4)`` output logits of the tokens N, E, S, W (float32).
        token_ids: the direction token ids.
        site: where the activations were read.
    """

    activations: dict[int, Float[Tensor, "n_states d_model"]]
    direction_logits: Float[Tensor, "n_states 4"]
    token_ids: tuple[int, ...]
    site: str = "resid_post"


def _device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


@torch.inference_mode()
def read_decisions(
    model: nn.Module,
    tokenizer: Any,
    states: MazeStates,
    layers: int | Sequence[int] | str | None = None,
    *,
    site: str = "resid_post",
    batch_size: int = 4,
    letters: Sequence[str] = ACTIONS,
) -> DecisionReadout:
    """Residual activations and direction-token logits at every decision state, one forward per episode.

    Args:
        model: HF causal LM.
        tokenizer: its tokenizer (the direction letters must be single tokens: ``probes.tokens``).
        states: the decision states.
        layers: layers to record (``None`` for logits only; ``"all"``; ints).
        site: ``"resid_post"``, ``"attn_out"`` or ``"mlp_out"``.
        batch_size: episodes per forward (right-padded; batched equals unbatched up to float rounding).
        letters: the action letters, in action order.

    Returns:
        A :class:`DecisionReadout` whose rows follow ``states`` (episode-major, turn order).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MazeStatesError(f"batch_size must be a positive int, got {batch_size!r}")
    token_ids = direction_token_ids(tokenizer, letters)
    chosen = [] if layers is None else _layers.check_layers(model, layers)
    device = _device(model)
    ids_t = torch.tensor(token_ids, device=device)
    decoder = _layers.unwrap(model).get_decoder()
    acts: dict[int, list[Tensor]] = {layer: [] for layer in chosen}
    logits_out: list[Tensor] = []
    for start in range(0, states.n_episodes, batch_size):
        chats = states.messages[start : start + batch_size]
        texts, found = zip(*(decision_positions(tokenizer, chat) for chat in chats), strict=True)
        expected = [int((states.episode == e).sum()) for e in range(start, start + len(chats))]
        if [len(f) for f in found] != expected:
            raise MazeStatesError(
                f"decision positions {[len(f) for f in found]} != states per episode {expected}"
            )
        encoded = _positions.encode_texts(tokenizer, list(texts), padding_side="right")
        encoded = {k: v.to(device) for k, v in encoded.items()}
        mask = torch.zeros_like(encoded["attention_mask"], dtype=torch.bool)
        for row, positions in enumerate(found):
            mask[row, positions] = True
        with record(
            model, chosen or [0], site, positions=mask, attention_mask=encoded["attention_mask"]
        ) as got:
            hidden = decoder(**encoded, use_cache=False).last_hidden_state  # (batch, pos, d_model), normed
        picked = hidden[mask]  # (n_decisions, d_model), row-major = episode then turn
        logits = _layers.output_logits(model, picked)
        logits_out.append(logits[:, ids_t].float().cpu())
        for layer in chosen:
            acts[layer].append(got[layer].float().cpu())
        del hidden, picked, logits, encoded
        release_freed_memory()
    direction_logits = torch.cat(logits_out)
    activations = {layer: torch.cat(parts) for layer, parts in acts.items()}
    for layer, tensor in activations.items():
        if not bool(torch.isfinite(tensor).all()):
            raise MazeStatesError(f"non-finite activations at layer {layer}")
    if not bool(torch.isfinite(direction_logits).all()) or math.isnan(float(direction_logits.sum())):
        raise MazeStatesError("non-finite direction logits")
    return DecisionReadout(activations, direction_logits, tuple(token_ids), site)
