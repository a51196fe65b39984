"""Expert demonstrations for supervised fine-tuning: the planner plays fresh mazes, rendered as chat.

The paper's SFT models were trained on "programmatically found trajectories, in freshly generated mazes,
that maximise Gold and minimise Mold visits" (App. A.2). Here the :class:`~maze_env.search.Expert`
(receding-horizon exact search, melting included, wind ignored when planning) plays one
:class:`~maze_env.env.MazeEnv` per seed under the full rules (wind included, so the prompts carry wind
sentences exactly as on-policy episodes do). Each episode is tokenized the same way
:func:`training.rollout.collect_episodes` tokenizes its own episodes (chat template rendered turn by
turn, each turn's new text encoded on its own), so the expert's letters sit at the same kind of
positions as sampled letters and :func:`training.rollout.action_logits` applies unchanged. The SFT
targets are the expert's direction letters.

Example:
    >>> from probes.models import tiny_model
    >>> _, tok = tiny_model("llama")
    >>> demos = expert_episodes(tok, seeds=[0, 1], config=MazeConfig(n_turns=3))
    >>> demos.actions.shape, bool(demos.greedy)
    (torch.Size([2, 3]), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from maze_env.config import MazeConfig
from maze_env.dynamics import ACTIONS
from maze_env.env import MazeEnv
from maze_env.search import Expert
from maze_env.text import episode_messages
from probes.tokens import direction_token_ids
from training.rollout import EpisodeBatch, TurnTensors, right_pad

__all__ = ["encode_episode", "expert_episodes"]


def encode_episode(
    tokenizer: Any, messages: list[dict[str, str]], direction_ids: Sequence[int]
) -> tuple[list[int], list[int]]:
    """Token ids of a finished episode and the position whose logits choose each move.

    The conversation is rendered turn by turn with ``add_generation_prompt=True`` and each turn's new
    text is encoded separately, as the rollout does; the final letter is appended as one token (the
    final assistant turn is left open, as in :func:`maze_env.render_chat` with ``close_final=False``).

    Returns:
        ``(ids, positions)``: ``ids[positions[t] + 1]`` is the letter of move ``t``.
    """
    assistant = [m for m in messages if m["role"] == "assistant"]
    if not assistant or messages[-1]["role"] != "assistant":
        raise ValueError("messages must alternate user/assistant and end with the final assistant letter")
    ids: list[int] = []
    positions: list[int] = []
    previous = ""
    for t in range(len(assistant)):
        text = tokenizer.apply_chat_template(
            messages[: 2 * t + 1], tokenize=False, add_generation_prompt=True
        )
        if not text.startswith(previous):
            raise RuntimeError(
                "the chat template does not render the conversation incrementally; cannot align move positions"
            )
        chunk = tokenizer(text[len(previous) :], add_special_tokens=False)["input_ids"]
        if t > 0 and (not chunk or chunk[0] != direction_ids[ACTIONS.index(assistant[t - 1]["content"])]):
            raise RuntimeError(
                f"turn {t}'s new text does not start with the previous letter token; got {chunk[:3]}"
            )
        ids.extend(chunk)
        positions.append(len(ids) - 1)
        previous = text
    ids.append(direction_ids[ACTIONS.index(assistant[-1]["content"])])
    return ids, positions


def expert_episodes(
    tokenizer: Any,
    *,
    seeds: Sequence[int],
    config: MazeConfig | None = None,
    horizon: int = 6,
    expert_seed: int = 0,
) -> EpisodeBatch:
    """Let the expert play one maze per seed; return the episodes as an :class:`EpisodeBatch`.

    Args:
        tokenizer: the student's tokenizer (chat template, pad token set).
        seeds: one maze seed per episode (``MazeEnv.reset(seed=...)``: maze, wind and clause order).
        config: maze rules (default: the paper's).
        horizon: the expert's look-ahead in turns.
        expert_seed: seeds the expert's random tie-breaking.

    Returns:
        An EpisodeBatch with ``greedy=True`` and ``temperature=1``. For expert episodes
        ``direction_logits`` hold the planner's action values ``Q_h(s, a)`` (not model logits) and
        ``logprobs`` the log of the planner's tie-break probability (``−log #ties``).
    """

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty; pass one maze seed per episode")
    config = config or MazeConfig()
    direction_ids = list(direction_token_ids(tokenizer, ACTIONS))
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token (probes.models does)")
    n, turns = len(seeds), config.n_turns
    expert = Expert(horizon=horizon, seed=expert_seed)
    out = TurnTensors.empty(n, turns)  # direction_logits hold the planner's Q_h(s, a)
    all_messages, rows, all_positions = [], [], []
    for i, seed in enumerate(seeds):
        env = MazeEnv(config)
        obs, _ = env.reset(seed=seed)
        observations, chosen = [obs], []
        for t in range(turns):
            out.neighbours[i, t] = torch.tensor([int(x) for x in env.neighbours()])
            q, best = expert.plan(env)
            action, ties = expert.choose(best), len(best)
            obs, reward, _, _, info = env.step(action)
            out.actions[i, t], out.direction_logits[i, t], out.logprobs[i, t] = (
                action,
                torch.from_numpy(q).float(),
                -math.log(ties),
            )
            out.rewards[i, t] = reward
            out.delta_gold[i, t], out.delta_mold[i, t] = info["delta_gold"], info["delta_mold"]
            out.wind[i, t] = -1 if info["wind"] is None else info["wind"]["direction"]
            chosen.append(action)
            if t + 1 < turns:
                observations.append(obs)
        messages = episode_messages(observations, chosen)
        ids, positions = encode_episode(tokenizer, messages, direction_ids)
        all_messages.append(messages)
        rows.append(ids)
        all_positions.append(positions)
    pad_id = int(tokenizer.pad_token_id)
    input_ids, attention_mask = right_pad(rows, pad_id)
    return EpisodeBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        action_positions=torch.tensor(all_positions, dtype=torch.long),
        **out.fields(),
        seeds=seeds,
        messages=all_messages,
        temperature=1.0,
        greedy=True,
        direction_token_ids=direction_ids,
        pad_token_id=pad_id,
        config=config,
        model_name=f"expert-h{horizon}",
    )
