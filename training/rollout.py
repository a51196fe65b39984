"""LM rollouts in the maze: batched multi-turn chat episodes with the KV cache reused across turns.

(Over 600 lines on purpose: the episode record, the sampler that fills it and the teacher-forced
recomputation the update uses must agree token for token, and they share the layout helpers below.)

One call plays ``len(seeds)`` mazes (a :class:`~maze_env.batch.MazeBatch`, one maze per seed, the paper's
rules including wind) for ``config.n_turns`` turns. Every turn the model reads the whole conversation,
rendered with its own chat template and no system message of ours, and answers with one direction letter
sampled from its logits **masked to the four direction tokens** (temperature-scaled, or greedy).

How a turn is computed:

* Only the new tokens are fed: the previous assistant letter, the end of that assistant turn, the new user
  turn and the assistant header (the difference between successive renderings of the conversation), with
  the KV cache of everything before.
* Rows (mazes) have chunks of different lengths. Each chunk is padded on its LEFT with the pad token;
  the padded slots are masked in a 2D attention mask that grows with the cache, and explicit
  ``position_ids = cumsum(mask) - 1`` give every real token the position it has in its own unpadded
  conversation. So row ``i`` computes the same numbers as an unbatched episode would (up to float
  rounding), and the same as one plain forward over the final sequence (:func:`action_logits`).
* The logits are read at the last position only (``logits_to_keep=1``).

Chat-template facts for SmolLM2-135M-Instruct (ChatML): with no system message the template inserts
``<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n``
(we keep that behaviour: it is what the instruct model was tuned with; 21 tokens). The tokenizer adds
no BOS. The first prompt is 103 tokens (system 21 + the user turn + ``<|im_start|>assistant\\n``). Every
later turn adds 85 tokens, 95 after a wind push (the letter, ``<|im_end|>\\n<|im_start|>user\\n``, the
observation, whose emoji are 3 byte-level tokens each, ``<|im_end|>\\n<|im_start|>assistant\\n``); mean
86 at 10% wind. A 15-turn episode is 1,294-1,334 tokens (mean ~1,309 over 32 episodes). The letters
N/E/S/W are single tokens (ids 62, 53, 67, 71).

Example:
    >>> from probes.models import tiny_model
    >>> from training.rollout import collect_episodes
    >>> model, tok = tiny_model("llama")
    >>> episodes = collect_episodes(model, tok, seeds=[0, 1], config=MazeConfig(n_turns=3))
    >>> episodes.actions.shape, episodes.returns.shape
    (torch.Size([2, 3]), torch.Size([2]))
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import DynamicCache

from maze_env.batch import MazeBatch
from maze_env.config import MazeConfig
from maze_env.dynamics import ACTIONS
from maze_env.text import episode_messages, render_chat
from probes.layers import output_logits
from probes.models import resolve_autocast
from probes.tokens import direction_token_ids
from training.losses import check_temperature, direction_logprobs

__all__ = [
    "EpisodeBatch",
    "action_logits",
    "collect_episodes",
    "distinct_rows",
    "episode_token_ids",
]


# ----------------------------------------------------------------------------------------------------
# The episode record
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EpisodeBatch:
    """``B`` finished maze episodes of ``n_turns`` turns each, with everything training and analysis need.

    Tensors are on the CPU. ``input_ids`` hold the exact tokens the model saw, right-padded; the token at
    ``action_positions[i, t] + 1`` is the sampled letter of turn ``t`` and the logits at
    ``action_positions[i, t]`` produced it. Row ``i``'s real tokens equal the tokenization of
    ``maze_env.render_chat(tokenizer, messages[i], close_final=False)`` (final assistant letter left open).

    Attributes:
        input_ids: (B, T) token ids, right-padded with ``pad_token_id``.
        attention_mask: (B, T) 1 for real tokens.
        action_positions: (B, n_turns) index whose logits produced each action.
        actions: (B, n_turns) ints 0..3 (N, E, S, W).
        logprobs: (B, n_turns) log-probability of the chosen action under the masked,
            temperature-scaled distribution ``softmax(direction_logits / temperature)``.
        direction_logits: (B, n_turns, 4) raw (unscaled) logits of the four direction tokens.
        rewards: (B, n_turns) per-turn reward (step cost + tiles entered).
        delta_gold, delta_mold: (B, n_turns) Gold / Mold tiles entered per turn (0..2 with wind).
        neighbours: (B, n_turns, 4) tile classes (``Tile``) to the N, E, S, W at each decision.
        wind: (B, n_turns) direction the wind pushed after the move of that turn, -1 for none.
        seeds: one maze seed per episode.
        messages: the chat messages of every episode (user/assistant alternating, no system message).
        temperature: the sampling temperature (logprobs are under it, also when ``greedy``).
        greedy: whether actions were argmax instead of samples.
        direction_token_ids: the token ids of N, E, S, W used for masking.
        pad_token_id: the id used for right padding.
        config: the maze rules.
        model_name: provenance (``config.welfare_axis_name`` or ``name_or_path`` of the model).
    """

    input_ids: Int[Tensor, "batch seq"]
    attention_mask: Int[Tensor, "batch seq"]
    action_positions: Int[Tensor, "batch turn"]
    actions: Int[Tensor, "batch turn"]
    logprobs: Float[Tensor, "batch turn"]
    direction_logits: Float[Tensor, "batch turn 4"]
    rewards: Float[Tensor, "batch turn"]
    delta_gold: Int[Tensor, "batch turn"]
    delta_mold: Int[Tensor, "batch turn"]
    neighbours: Int[Tensor, "batch turn 4"]
    wind: Int[Tensor, "batch turn"]
    seeds: list[int]
    messages: list[list[dict[str, str]]]
    temperature: float
    greedy: bool
    direction_token_ids: list[int]
    pad_token_id: int
    config: MazeConfig
    model_name: str = ""

    TENSOR_FIELDS = (
        "input_ids",
        "attention_mask",
        "action_positions",
        "actions",
        "logprobs",
        "direction_logits",
        "rewards",
        "delta_gold",
        "delta_mold",
        "neighbours",
        "wind",
    )

    def __post_init__(self) -> None:
        b, n = self.actions.shape
        expected = {
            "input_ids": (b, self.input_ids.shape[1]),
            "attention_mask": tuple(self.input_ids.shape),
            "action_positions": (b, n),
            "logprobs": (b, n),
            "direction_logits": (b, n, 4),
            "rewards": (b, n),
            "delta_gold": (b, n),
            "delta_mold": (b, n),
            "neighbours": (b, n, 4),
            "wind": (b, n),
        }
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(
                    f"EpisodeBatch.{name} has shape {tuple(getattr(self, name).shape)}; expected {shape}"
                )
        if len(self.seeds) != b or len(self.messages) != b:
            raise ValueError(
                f"need one seed and one message list per episode (B={b}); got {len(self.seeds)}, {len(self.messages)}"
            )

    # -- sizes -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.actions.shape[0])

    @property
    def n_turns(self) -> int:
        return int(self.actions.shape[1])

    @property
    def n_tokens(self) -> int:
        """Real (unpadded) tokens over all episodes."""
        return int(self.attention_mask.sum())

    # -- returns -----------------------------------------------------------------------------------------
    @property
    def returns(self) -> Float[Tensor, " batch"]:
        """Undiscounted episode return ``R_i = Σ_t r_{i,t}``."""
        return self.rewards.sum(dim=1)

    @property
    def returns_to_go(self) -> Float[Tensor, "batch turn"]:
        """``G_{i,t} = Σ_{k≥t} r_{i,k}`` (γ = 1), the paper's REINFORCE target."""
        return self.rewards.flip(1).cumsum(1).flip(1)

    def summary(self) -> dict[str, Any]:
        """Scalar statistics for logging: return, Gold/Mold entries per episode, action frequencies, tokens.

        Example:
            >>> sorted(batch.summary())  # doctest: +SKIP
            ['action_freq', 'episodes', 'gold_per_episode', 'mean_entropy', 'mold_per_episode', ...]
        """
        returns = self.returns.double()
        b = len(self)
        counts = torch.bincount(self.actions.flatten(), minlength=4).double()
        log_p = direction_logprobs(self.direction_logits, temperature=self.temperature)
        entropy = -(log_p.exp() * log_p).sum(-1)
        return {
            "episodes": b,
            "turns": self.n_turns,
            "mean_return": float(returns.mean()),
            "std_return": float(returns.std()) if b > 1 else 0.0,
            "stderr_return": float(returns.std() / math.sqrt(b)) if b > 1 else 0.0,
            "gold_per_episode": float(self.delta_gold.sum(1).double().mean()),
            "mold_per_episode": float(self.delta_mold.sum(1).double().mean()),
            "wind_per_episode": float((self.wind >= 0).sum(1).double().mean()),
            "action_freq": {a: float(c / counts.sum()) for a, c in zip(ACTIONS, counts)},
            "mean_entropy": float(entropy.mean()),
            "mean_logprob": float(self.logprobs.double().mean()),
            "tokens": self.n_tokens,
            "tokens_per_episode": self.n_tokens / b,
        }

    # -- slicing and joining ---------------------------------------------------------------------------
    def select(self, index: Sequence[int] | Tensor | slice) -> EpisodeBatch:
        """The episodes at ``index`` (a slice, list of ints or bool/long tensor), padding trimmed.

        Example:
            >>> first_half = batch.select(slice(0, len(batch) // 2))  # doctest: +SKIP
        """
        rows = (
            torch.arange(len(self))[index]
            if not isinstance(index, Tensor) or index.dtype != torch.bool
            else torch.nonzero(index).flatten()
        )
        rows = torch.as_tensor(rows, dtype=torch.long).reshape(-1)
        width = int(self.attention_mask[rows].sum(1).max()) if len(rows) else 0
        kwargs: dict[str, Any] = {name: getattr(self, name)[rows] for name in self.TENSOR_FIELDS}
        kwargs["input_ids"] = kwargs["input_ids"][:, :width]
        kwargs["attention_mask"] = kwargs["attention_mask"][:, :width]
        picked = rows.tolist()
        kwargs["seeds"] = [self.seeds[i] for i in picked]
        kwargs["messages"] = [self.messages[i] for i in picked]
        return dataclasses.replace(self, **kwargs)

    @classmethod
    def cat(cls, batches: Sequence[EpisodeBatch]) -> EpisodeBatch:
        """Concatenate batches of the same maze rules, turn count, temperature and direction tokens."""
        if not batches:
            raise ValueError("cat() needs at least one EpisodeBatch")
        first = batches[0]
        for other in batches[1:]:
            for attr in ("n_turns", "temperature", "greedy", "direction_token_ids", "pad_token_id", "config"):
                if getattr(other, attr) != getattr(first, attr):
                    raise ValueError(
                        f"cannot concatenate episode batches with different {attr}: "
                        f"{getattr(first, attr)!r} vs {getattr(other, attr)!r}"
                    )
        width = max(b.input_ids.shape[1] for b in batches)
        kwargs: dict[str, Any] = {}
        for name in cls.TENSOR_FIELDS:
            parts = [getattr(b, name) for b in batches]
            if name in ("input_ids", "attention_mask"):
                fill = first.pad_token_id if name == "input_ids" else 0
                parts = [torch.nn.functional.pad(p, (0, width - p.shape[1]), value=fill) for p in parts]
            kwargs[name] = torch.cat(parts)
        kwargs["seeds"] = [s for b in batches for s in b.seeds]
        kwargs["messages"] = [m for b in batches for m in b.messages]
        return dataclasses.replace(first, **kwargs)

    def to(self, device: str | torch.device) -> EpisodeBatch:
        """A copy with every tensor on ``device``."""
        return dataclasses.replace(self, **{n: getattr(self, n).to(device) for n in self.TENSOR_FIELDS})


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TurnTensors:
    """The per-turn tensors of an :class:`EpisodeBatch`, allocated once and filled turn by turn (by the
    rollout and by the expert's episodes alike). ``wind`` starts at −1 (no push)."""

    actions: Int[Tensor, "batch turn"]
    logprobs: Float[Tensor, "batch turn"]
    direction_logits: Float[Tensor, "batch turn 4"]
    rewards: Float[Tensor, "batch turn"]
    delta_gold: Int[Tensor, "batch turn"]
    delta_mold: Int[Tensor, "batch turn"]
    neighbours: Int[Tensor, "batch turn 4"]
    wind: Int[Tensor, "batch turn"]

    @classmethod
    def empty(cls, n: int, turns: int) -> TurnTensors:
        return cls(
            actions=torch.zeros(n, turns, dtype=torch.long),
            logprobs=torch.zeros(n, turns),
            direction_logits=torch.zeros(n, turns, 4),
            rewards=torch.zeros(n, turns),
            delta_gold=torch.zeros(n, turns, dtype=torch.long),
            delta_mold=torch.zeros(n, turns, dtype=torch.long),
            neighbours=torch.zeros(n, turns, 4, dtype=torch.long),
            wind=torch.full((n, turns), -1, dtype=torch.long),
        )

    def fields(self) -> dict[str, Tensor]:
        """As keyword arguments of :class:`EpisodeBatch` (the tensors themselves, not copies)."""
        return dict(vars(self))


def right_pad(
    rows: list[list[int]], pad_id: int
) -> tuple[Int[Tensor, "batch seq"], Int[Tensor, "batch seq"]]:
    """Token rows right-padded to one width: ``(input_ids, attention_mask)``."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


def _direction_ids(tokenizer: Any) -> list[int]:

    return list(direction_token_ids(tokenizer, ACTIONS))


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _model_name(model: torch.nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "welfare_axis_name", None) or getattr(config, "name_or_path", "") or "")


def _default_generator(seeds: Sequence[int]) -> torch.Generator:
    """A sampling generator determined by the seeds, so the same seeds replay the same episodes."""
    state = np.random.SeedSequence([int(s) % (2**63) for s in seeds] + [0x7E11]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def episode_token_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The token ids of a conversation as the rollout feeds them (chat template, no added special tokens).

    Equal to row ``i`` of ``EpisodeBatch.input_ids`` (unpadded) for ``messages = batch.messages[i]``.
    """

    return _encode(tokenizer, [render_chat(tokenizer, messages, close_final=False)])[0]


class _Renderer:
    """Per-row chat rendering that returns only the text added since the previous turn."""

    def __init__(self, tokenizer: Any, n: int) -> None:
        self.tokenizer = tokenizer
        self.previous = [""] * n

    def new_text(self, messages: list[list[dict[str, str]]]) -> list[str]:
        out = []
        for i, conversation in enumerate(messages):
            text = self.tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True
            )
            if not text.startswith(self.previous[i]):
                raise RuntimeError(
                    "the chat template does not render conversations incrementally (turn t+1's text does not "
                    "start with turn t's text), so the KV cache cannot be reused; tail of turn t: "
                    f"{self.previous[i][-60:]!r}"
                )
            out.append(text[len(self.previous[i]) :])
            self.previous[i] = text
        return out


# ----------------------------------------------------------------------------------------------------
# Rollout
# ----------------------------------------------------------------------------------------------------


@torch.no_grad()
def collect_episodes(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    seeds: Sequence[int],
    config: MazeConfig | None = None,
    temperature: float = 0.7,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    device: str | torch.device | None = None,
    autocast: bool | None = None,
    batch_size: int | None = None,
    share_prompts: bool = True,
    on_turn: Callable[[], object] | None = None,
) -> EpisodeBatch:
    """Play one maze per seed with ``model`` for ``config.n_turns`` turns; return every token and reward.

    Args:
        model: an HF causal LM (a peft model works too). Run in eval mode for the call (restored after).
        tokenizer: its tokenizer, with a chat template and a pad token (``probes.models`` sets both).
        seeds: one maze seed per episode; maze ``i`` equals ``MazeEnv().reset(seed=seeds[i])``'s maze.
            Wind and clause order come from the batch RNG (seeded by ``seeds[0]``), so replay a single
            episode with its recorded ``wind``.
        config: maze rules (default: the paper's).
        temperature: sampling temperature (> 0); also defines ``logprobs`` when ``greedy``.
        generator: torch RNG for sampling; default: one seeded from ``seeds`` (same seeds -> same episodes).
            One uniform per episode per turn is drawn, whatever ``batch_size``.
        greedy: take the argmax direction instead of sampling.
        device: where to run (default: the model's device). Inputs are moved there; the model is not.
        autocast: run the forward passes under bfloat16 autocast (~1e-2 logit differences). ``None``: the
            device's rule (:func:`probes.models.resolve_autocast`: on for CUDA, off on CPU, never by
            timing); ``True``/``False``: as asked (bfloat16 on CPU is an opt-in, fast only with
            AVX512-BF16/AMX).
        batch_size: at most this many episodes per forward pass (each group keeps its own KV cache; all
            mazes still step together, so results do not depend on it beyond float rounding).
        share_prompts: feed each distinct first prompt once (rows with the same seed share it: the
            first observation comes from the maze's own generator) and copy its KV cache to those rows,
            and feed the first prompts' common beginning (:func:`common_prefix_length`: the system prompt
            and the maze's opening words, 38 of a single-turn state's 103 tokens on SmolLM2) once before
            them. The same numbers as feeding every row (up to float rounding); single-turn groups of ``G``
            cost ``1/G`` of the forward passes.
        on_turn: called after every played turn (a progress bar's ``update``).

    Returns:
        An :class:`EpisodeBatch` on the CPU.

    Raises:
        ValueError: empty seeds, bad temperature or batch_size.
        probes.tokens.TokenizationError: a direction letter is not one unambiguous token.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty; pass one maze seed per episode")
    check_temperature(temperature)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive int or None; got {batch_size!r}")
    if tokenizer.pad_token_id is None:
        raise ValueError(
            "the tokenizer has no pad token; set tokenizer.pad_token (probes.models.load_model does)"
        )
    config = config or MazeConfig()
    n = len(seeds)
    run_device = torch.device(device) if device is not None else _model_device(model)
    autocast = resolve_autocast(autocast, run_device)
    direction_ids = _direction_ids(tokenizer)
    direction_index = torch.tensor(direction_ids, device=run_device)
    pad_id = int(tokenizer.pad_token_id)
    generator = generator if generator is not None else _default_generator(seeds)
    group = batch_size or n
    groups = [list(range(start, min(start + group, n))) for start in range(0, n, group)]

    mazes = MazeBatch(n, config)
    observations = [[text] for text in mazes.reset(seed=seeds)]
    chosen: list[list[int]] = [[] for _ in range(n)]
    renderer = _Renderer(tokenizer, n)
    token_rows: list[list[int]] = [[] for _ in range(n)]
    caches: list[Any] = [None] * len(groups)
    masks: list[Tensor | None] = [None] * len(groups)

    turns = config.n_turns
    action_positions = torch.zeros(n, turns, dtype=torch.long)
    out = TurnTensors.empty(n, turns)

    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        for t in range(turns):
            out.neighbours[:, t] = torch.from_numpy(mazes.neighbours())
            messages = [episode_messages(observations[i], chosen[i]) for i in range(n)]
            chunks = _encode(tokenizer, renderer.new_text(messages))
            for i in range(n):
                if t > 0 and (not chunks[i] or chunks[i][0] != direction_ids[chosen[i][-1]]):
                    raise RuntimeError(
                        f"the rendered assistant turn does not start with the sampled letter token "
                        f"{direction_ids[chosen[i][-1]]}; got tokens {chunks[i][:3]}"
                    )
                token_rows[i].extend(chunks[i])
                action_positions[i, t] = len(token_rows[i]) - 1
            turn_logits = torch.zeros(n, 4)
            prefix = common_prefix_length(chunks) if t == 0 and share_prompts else 0
            for g, rows in enumerate(groups):
                group_chunks = [chunks[i] for i in rows]
                shared = distinct_rows(group_chunks) if t == 0 and share_prompts else None
                if shared is not None:  # one prefill per distinct first prompt (a GRPO group shares it)
                    group_chunks = [group_chunks[r] for r in shared[0]]
                if prefix:  # the prompts' common beginning once, its KV cache copied to every prompt
                    _, caches[g], masks[g] = _forward_chunk(
                        model, [group_chunks[0][:prefix]], None, None, pad_id, run_device, autocast
                    )
                    copies = torch.zeros(len(group_chunks), dtype=torch.long, device=run_device)
                    caches[g].reorder_cache(copies)
                    masks[g] = masks[g][copies]
                    group_chunks = [chunk[prefix:] for chunk in group_chunks]
                logits, caches[g], masks[g] = _forward_chunk(
                    model, group_chunks, caches[g], masks[g], pad_id, run_device, autocast
                )
                if t + 1 == turns:
                    caches[g] = masks[g] = None  # no next turn reads them
                if shared is not None:
                    inverse = shared[1].to(logits.device)
                    logits = logits[inverse]
                    if caches[g] is not None:  # every row continues from its own copy of the prefix
                        caches[g].reorder_cache(inverse)
                        masks[g] = masks[g][inverse]
                turn_logits[rows] = logits[:, direction_index].float().cpu()
            log_p = direction_logprobs(turn_logits, temperature=temperature)
            if greedy:
                picked = turn_logits.argmax(-1)
            else:
                uniform = torch.rand(n, generator=generator, device=generator.device).cpu()
                cdf = log_p.exp().cumsum(-1)
                picked = (cdf < uniform[:, None] * cdf[:, -1:]).sum(-1).clamp(max=3)
            out.actions[:, t] = picked
            out.logprobs[:, t] = log_p.gather(1, picked[:, None]).squeeze(1)
            out.direction_logits[:, t] = turn_logits
            step_rewards, info = mazes.step(picked.numpy().astype(np.int64))
            out.rewards[:, t] = torch.from_numpy(np.asarray(step_rewards, dtype=np.float32))
            out.delta_gold[:, t] = torch.from_numpy(info["delta_gold"])
            out.delta_mold[:, t] = torch.from_numpy(info["delta_mold"])
            out.wind[:, t] = torch.from_numpy(info["wind"])
            picked_list = picked.tolist()
            for i in range(n):
                chosen[i].append(picked_list[i])
            if t + 1 < turns:
                for i, text in enumerate(mazes.observations()):
                    observations[i].append(text)
            if on_turn is not None:
                on_turn()
    finally:
        for module, training in modes:  # restore every module's own mode (not just the root's)
            module.training = training
        caches.clear()

    for i in range(n):
        token_rows[i].append(direction_ids[chosen[i][-1]])  # the final letter (open assistant turn)
    input_ids, attention_mask = right_pad(token_rows, pad_id)
    return EpisodeBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        action_positions=action_positions,
        **out.fields(),
        seeds=seeds,
        messages=[episode_messages(observations[i], chosen[i]) for i in range(n)],
        temperature=float(temperature),
        greedy=bool(greedy),
        direction_token_ids=direction_ids,
        pad_token_id=pad_id,
        config=config,
        model_name=_model_name(model),
    )


def distinct_rows(rows: Sequence[Sequence[int]]) -> tuple[list[int], Tensor] | None:
    """``(first, inverse)`` when some token rows repeat: the first occurrence of each distinct row, and each
    row's index into ``first`` (so ``rows[first[inverse[r]]] == rows[r]``); None when all are distinct.

    Example:
        >>> distinct_rows([[1, 2], [3], [1, 2]])
        ([0, 1], tensor([0, 1, 0]))
        >>> distinct_rows([[1], [2]]) is None
        True
    """
    index: dict[tuple[int, ...], int] = {}
    first: list[int] = []
    inverse: list[int] = []
    for r, row in enumerate(rows):
        key = tuple(int(x) for x in row)
        if key not in index:
            index[key] = len(first)
            first.append(r)
        inverse.append(index[key])
    if len(first) == len(inverse):
        return None
    return first, torch.tensor(inverse, dtype=torch.long)


def common_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all ``rows`` share, if at least :data:`SHARED_PREFIX_MIN`, else 0; always
    short of the shortest row, so every row keeps a token of its own (its last one gives the logits).

    Example:
        >>> common_prefix_length([[7] * 20 + [1, 2], [7] * 20 + [3]])
        20
        >>> common_prefix_length([[1, 2, 3], [1, 2, 4]])  # too short to be worth a forward of its own
        0
    """
    if len(rows) < 2:
        return 0
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    length = 0
    while length < limit and all(r[length] == first[length] for r in rows):
        length += 1
    return length if length >= SHARED_PREFIX_MIN else 0


def _forward_chunk(
    model: torch.nn.Module,
    chunks: list[list[int]],
    cache: Any,
    mask: Tensor | None,
    pad_id: int,
    device: torch.device,
    autocast: bool,
) -> tuple[Tensor, Any, Tensor]:
    """Feed one left-padded chunk per row on top of ``cache``; return last-position logits, cache, mask."""
    inputs, full_mask = chunk_inputs(model, chunks, cache, mask, pad_id, device)
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
        out = model(**inputs, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1], out.cache, full_mask


def chunk_inputs(
    model: torch.nn.Module,
    chunks: Sequence[Sequence[int]],
    cache: Any,
    mask: Tensor | None,
    pad_id: int,
    device: torch.device,
) -> tuple[dict[str, Any], Tensor]:
    """Forward inputs that append one left-padded chunk per row to ``cache`` (None: start one), and the mask of
    everything seen after them. Every row's chunk ends at the same, last position; position ids count only real
    tokens; on sliding-window models (Gemma 3) the window is measured in positions, not cache slots, so padding
    never shortens it. ``model`` is the causal LM or its decoder (both take these keyword arguments)."""
    width = max(len(c) for c in chunks)
    ids = torch.full((len(chunks), width), pad_id, dtype=torch.long)
    chunk_mask = torch.zeros(len(chunks), width, dtype=torch.long)
    for r, chunk in enumerate(chunks):
        ids[r, width - len(chunk) :] = torch.tensor(list(chunk), dtype=torch.long)
        chunk_mask[r, width - len(chunk) :] = 1
    ids, chunk_mask = ids.to(device), chunk_mask.to(device)
    full_mask = chunk_mask if mask is None else torch.cat([mask, chunk_mask], dim=1)
    full_positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
    attention_mask: Tensor | dict[str, Tensor] = full_mask
    window = _sliding_window(model)
    if window is not None:
        # Sliding-window layers: HF counts the window in cache slots, which would include our padding.
        # Keep every slot (a plain DynamicCache never evicts) and build the window from real positions.
        if cache is None:
            cache = DynamicCache()
        attention_mask = _position_window_masks(model, full_mask, full_positions, cache, width, window)
    inputs = {"input_ids": ids, "attention_mask": attention_mask, "position_ids": full_positions[:, -width:],
              "cache": cache}  # fmt: skip
    return inputs, full_mask


def _sliding_window(model: torch.nn.Module) -> int | None:
    """The sliding window of a model with sliding-window attention layers (Gemma 3), else None."""
    config = getattr(model, "config", None)
    config = getattr(config, "get_text_config", lambda: config)()
    layer_types = getattr(config, "layer_types", None) or ()
    window = getattr(config, "sliding_window", None)
    return int(window) if window and "sliding_attention" in layer_types else None


def _position_window_masks(
    model: torch.nn.Module, full_mask: Tensor, positions: Tensor, cache: Any, width: int, window: int
) -> dict[str, Tensor]:
    """Attention masks keyed by layer type, with the sliding window measured in token positions."""
    from transformers.masking_utils import create_causal_mask

    config = model.config.get_text_config()
    dummy = torch.empty(full_mask.shape[0], width, 1, dtype=model.dtype, device=full_mask.device)

    def within_window(batch_idx: Tensor, head_idx: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return positions[batch_idx, q_idx] - positions[batch_idx, kv_idx] < window

    common = {"config": config, "inputs_embeds": dummy, "attention_mask": full_mask, "cache": cache}
    return {
        "full_attention": create_causal_mask(**common, allow_is_causal_skip=False),
        "sliding_attention": create_causal_mask(
            **common, and_mask_function=within_window, allow_is_causal_skip=False
        ),
    }


# ----------------------------------------------------------------------------------------------------
# Teacher-forced recomputation (training)
# ----------------------------------------------------------------------------------------------------


SHARED_PREFIX_MIN = 16
"""Fewest tokens all rows must share before :func:`action_logits` runs their common prefix once."""


def shared_prefix_length(batch: EpisodeBatch) -> int:
    """Length of the token prefix every row of ``batch`` shares, ending before its first decision position
    (so every decision's hidden state comes after it); 0 for a single row.

    Example:
        >>> shared_prefix_length(batch)  # two single-turn rows after the same system prompt  # doctest: +SKIP
        38
    """
    if len(batch) < 2:
        return 0
    ids, mask = batch.input_ids, batch.attention_mask.bool()
    same = ((ids == ids[:1]) & mask & mask[:1]).all(0)  # (T,): every row has the same real token here
    limit = int(batch.action_positions[:, 0].min())
    return int(same[:limit].long().cumprod(0).sum())


def fsdp_sharded(model: torch.nn.Module) -> bool:
    """Whether ``model`` has FSDP2-sharded submodules (``training.distributed`` with ``parallel="fsdp"``)."""
    if not torch.distributed.is_available():
        return False
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in model.modules())


def action_logits(
    model: torch.nn.Module, batch: EpisodeBatch, *, share_prefix: bool = True
) -> Float[Tensor, "batch turn 4"]:
    """Direction-token logits at every decision, by one teacher-forced forward over ``batch.input_ids``.

    Differentiable (call it with grad enabled, under autocast if you like); equals the rollout's
    ``batch.direction_logits`` up to float rounding. Only the ``B × n_turns`` decision positions go
    through the output head, so memory stays ``O(B·T·d_model)`` instead of ``O(B·T·vocab)``.

    With ``share_prefix`` (the default), rows that share at least :data:`SHARED_PREFIX_MIN` leading tokens
    (the system prompt and the maze's opening words, 38 of a single-turn state's 103 tokens on SmolLM2)
    run that prefix once: its keys and values go into a KV cache copied to every row (``index_select``, so
    gradients flow back to the one prefix forward), and each row's remainder, up to its last decision, is
    fed on top. Equal to the full forward up to float rounding, in value and gradient
    (tests/test_rollout.py); pass ``share_prefix=False`` where a hook must see whole rows at once. Not under
    FSDP2, which frees a block's gathered weights after each call, before the backward of the first call.

    Example:
        >>> logits = action_logits(model, batch)  # doctest: +SKIP
        >>> log_p = direction_logprobs(logits, temperature=batch.temperature)  # doctest: +SKIP
    """
    device = _model_device(model)
    decoder = model.get_decoder()
    prefix = shared_prefix_length(batch) if share_prefix and not fsdp_sharded(model) else 0
    if prefix >= SHARED_PREFIX_MIN:
        ends = (batch.action_positions[:, -1] + 1).tolist()
        pad_id = int(batch.pad_token_id)
        inputs, mask = chunk_inputs(
            decoder, [batch.input_ids[0, :prefix].tolist()], None, None, pad_id, device
        )
        cache = decoder(**inputs, use_cache=True).cache
        cache.reorder_cache(torch.zeros(len(batch), dtype=torch.long, device=device))  # one copy per row
        rests = [batch.input_ids[r, prefix:end].tolist() for r, end in enumerate(ends)]
        inputs, _ = chunk_inputs(decoder, rests, cache, mask.expand(len(batch), -1), pad_id, device)
        hidden = decoder(**inputs, use_cache=True).last_hidden_state
        # a row's rest is left-padded to the common width W and ends at W: position d sits at W - end + d
        width = hidden.shape[1]
        positions = batch.action_positions + (width - torch.tensor(ends))[:, None]
    else:
        input_ids = batch.input_ids.to(device)
        attention_mask = batch.attention_mask.to(device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = decoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        positions = batch.action_positions
    positions = positions.to(device)
    picked = hidden.gather(1, positions[:, :, None].expand(-1, -1, hidden.shape[-1]))
    logits = output_logits(model, picked)
    return logits[..., torch.tensor(batch.direction_token_ids, device=device)].float()
