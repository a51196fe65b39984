"""Update only the top decoder layers cheaply, by reusing the rollout's activations below them.

When LoRA adapts only the top ``k`` decoder layers, every layer below is frozen, so the residual stream
entering layer ``start = L − k`` during the rollout is exactly what a teacher-forced update pass would
recompute (up to float rounding: the rollout attends chunk by chunk over its KV cache). Recording it
while :func:`training.rollout.collect_episodes` plays lets the update run only layers ``start..L−1``
(with gradients), the final norm and the output head at the decision positions: on SmolLM2 (30 layers)
with LoRA on the top 8 the update's forward costs ~8/30 of a full one. As in the full pass, the rows' common
prefix (system prompt and the maze's opening words) runs once (``top_action_logits(share_prefix=True)``).

The training loop checks every step that the logits of this path equal the rollout's own
``direction_logits`` (both computed with the pre-update weights), so a change in how the rollout
feeds chunks cannot go unnoticed.

Supported: decoders whose forward loops over ``self.layers`` without using the loop index (Llama family,
SmolLM2). Gemma 3 picks each layer's attention mask by index, so it is refused here (the caller falls
back to the full pass).

Example:
    >>> with capture_below(model, start) as captured:  # doctest: +SKIP
    ...     episodes = collect_episodes(model, tok, seeds=seeds)
    >>> hidden = assemble(captured, episodes)  # doctest: +SKIP
    >>> logits = top_action_logits(model, hidden, episodes, start)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from jaxtyping import Float
from torch import Tensor, nn

import training.rollout as _rollout
from probes.layers import output_logits
from training.rollout import (
    EpisodeBatch,
    distinct_rows,
    fsdp_sharded,
    shared_prefix_length,
)

__all__ = ["assemble", "capture_below", "supports_top_layers", "top_action_logits"]

_SUPPORTED_MODEL_TYPES = ("llama",)


def _decoder(model: nn.Module) -> nn.Module:
    return model.get_decoder()


def supports_top_layers(model: nn.Module) -> bool:
    """Whether the decoder's layer loop is index-free (safe to run a slice of its layers)."""
    return getattr(getattr(model, "config", None), "model_type", None) in _SUPPORTED_MODEL_TYPES


@contextlib.contextmanager
def capture_below(model: nn.Module, start: int) -> Iterator[list[Tensor]]:
    """Record the output of decoder layer ``start − 1`` (the input of layer ``start``) on every call.

    Yields the list the chunks are appended to (one ``(rows, width, d_model)`` tensor per forward call).
    """
    layers = _decoder(model).layers
    if not 1 <= start < len(layers):
        raise ValueError(f"start must be in 1..{len(layers) - 1}; got {start}")
    captured: list[Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple, output: Tensor | tuple) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        captured.append(hidden.detach().float().clone())

    handle = layers[start - 1].register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def assemble(
    captured: list[Tensor], episodes: EpisodeBatch, rollout_batch_size: int | None = None
) -> Float[Tensor, "batch pos d_model"]:
    """Stitch the rollout's per-turn chunks into one right-padded ``(B, P, d)`` tensor per episode.

    ``P = max(action_positions[:, -1]) + 1`` (the final letter is never fed during the rollout and is
    not needed: the last decision reads position ``action_positions[:, -1]``). The rollout feeds turn
    ``t`` of row ``i`` as a left-padded chunk of ``action_positions[i, t] − action_positions[i, t−1]``
    new tokens, groups of ``rollout_batch_size`` rows one after another; at turn 0 a group's chunk may
    hold only its distinct first prompts, after a one-row chunk of their common beginning
    (``collect_episodes(share_prompts=True)``).
    """
    n, turns = episodes.actions.shape
    group = rollout_batch_size or n
    groups = [list(range(s, min(s + group, n))) for s in range(0, n, group)]
    calls = turns * len(groups)
    prefixed = len(captured) == calls + len(groups)  # every group's turn 0 began with the common prefix
    if len(captured) != calls and not prefixed:
        raise RuntimeError(
            f"captured {len(captured)} forward calls; expected {turns} turns x {len(groups)} row groups"
            f" (+ {len(groups)} prefixes)"
        )
    positions = episodes.action_positions
    ends = positions + 1  # exclusive end of each turn's chunk
    starts = torch.cat([torch.zeros(n, 1, dtype=torch.long), ends[:, :-1]], dim=1)
    width = int(ends[:, -1].max())
    d = captured[0].shape[-1]
    hidden = torch.zeros(n, width, d)
    calls_made = iter(captured)
    for t in range(turns):
        for g, rows in enumerate(groups):
            if t == 0 and prefixed:
                head = next(calls_made)
                if head.shape[0] != 1:
                    raise RuntimeError(f"group {g}: a prefix call of {head.shape[0]} rows, expected 1")
                hidden[rows, : head.shape[1]] = head[0]
                starts[rows, 0] = head.shape[1]
            chunk = next(calls_made)
            if t == 0 and chunk.shape[0] < len(rows):  # the rollout fed each distinct first prompt once
                shared = distinct_rows([episodes.input_ids[i, : int(ends[i, 0])].tolist() for i in rows])
                if shared is not None and len(shared[0]) == chunk.shape[0]:
                    chunk = chunk[shared[1]]
            if chunk.shape[0] != len(rows):
                raise RuntimeError(
                    f"turn {t} group {g}: captured {chunk.shape[0]} rows, expected {len(rows)}"
                )
            for r, i in enumerate(rows):
                length = int(ends[i, t] - starts[i, t])
                if length > chunk.shape[1]:
                    raise RuntimeError(
                        f"turn {t} row {i}: chunk of {chunk.shape[1]} slots < {length} new tokens"
                    )
                hidden[i, int(starts[i, t]) : int(ends[i, t])] = chunk[r, chunk.shape[1] - length :]
    return hidden


@contextlib.contextmanager
def _only_layers_from(decoder: nn.Module, start: int) -> Iterator[None]:
    """Run only layers ``start..L−1``, numbered from 0 inside (their attention's ``layer_idx``), so a KV cache
    made for the slice holds them at the indices the decoder's mask reads (its first layer's length)."""
    original = decoder.layers
    sliced = list(original)[start:]
    indices = [layer.self_attn.layer_idx for layer in sliced]
    decoder.layers = nn.ModuleList(sliced)
    for i, layer in enumerate(sliced):
        layer.self_attn.layer_idx = i
    try:
        yield
    finally:
        decoder.layers = original
        for layer, index in zip(sliced, indices, strict=True):
            layer.self_attn.layer_idx = index


def top_action_logits(
    model: nn.Module,
    hidden: Float[Tensor, "batch pos d_model"],
    episodes: EpisodeBatch,
    start: int,
    *,
    share_prefix: bool = True,
) -> Float[Tensor, "batch turn 4"]:
    """Direction logits at every decision from layer ``start`` upwards, fed the cached ``hidden``.

    Equals :func:`training.rollout.action_logits` (up to float rounding) when ``hidden`` is the input of
    layer ``start`` for ``episodes``; differentiable in the layers from ``start`` on. With ``share_prefix``
    (the default), as there, the rows' common token prefix (``rollout.shared_prefix_length``; its hidden
    states are the same in every row) runs once, on the first row's activations, into a KV cache copied to
    every row (gradients flow back to it), and each row's rest runs on top.
    """
    if not supports_top_layers(model):
        raise ValueError(
            f"model type {getattr(model.config, 'model_type', None)!r} is not supported for top-layer updates; "
            f"supported: {_SUPPORTED_MODEL_TYPES}"
        )
    device = next(model.parameters()).device
    positions = episodes.action_positions.to(device)
    ends = positions[:, -1] + 1
    width = int(ends.max())
    hidden = hidden[:, :width].to(device)
    prefix = shared_prefix_length(episodes) if share_prefix and not fsdp_sharded(model) else 0
    decoder = _decoder(model)
    with _only_layers_from(decoder, start):
        if prefix >= _rollout.SHARED_PREFIX_MIN:  # read at call time (bench/step_prefix.py switches it)
            n = hidden.shape[0]
            ahead = torch.arange(prefix, device=device)[None, :]
            cache = decoder(inputs_embeds=hidden[:1, :prefix], position_ids=ahead, use_cache=True).cache
            cache.reorder_cache(torch.zeros(n, dtype=torch.long, device=device))  # one copy per row
            rest = width - prefix  # each row's rest, left-padded so that all end at the same last slot
            slot = torch.arange(rest, device=device)[None, :]
            lengths = (ends - prefix)[:, None]
            real = slot >= rest - lengths  # (n, rest)
            source = (slot - (rest - lengths) + prefix).clamp(min=0, max=width - 1)
            embeds = hidden.gather(1, source[:, :, None].expand(-1, -1, hidden.shape[-1]))
            embeds = embeds * real[:, :, None]
            mask = torch.cat([torch.ones(n, prefix, dtype=torch.long, device=device), real.long()], dim=1)
            position_ids = ((mask.cumsum(-1) - 1).clamp(min=0))[:, prefix:]
            out = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids, cache=cache,
                          use_cache=True)  # fmt: skip
            positions = (
                positions - prefix + (rest - lengths)
            )  # decision d of a row sits at rest − len + d − prefix
        else:
            mask = (torch.arange(width, device=device)[None, :] < ends[:, None]).long()
            position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
            out = decoder(
                inputs_embeds=hidden, attention_mask=mask, position_ids=position_ids, use_cache=False
            )
    states = out.last_hidden_state
    picked = states.gather(1, positions[:, :, None].expand(-1, -1, states.shape[-1]))
    logits = output_logits(model, picked)
    return logits[..., torch.tensor(episodes.direction_token_ids, device=device)].float()
