"""Read positions: which tokens of a (padded) batch an activation is read at.

Padding is handled here and only here. Every rule is expressed in the coordinates of each row's *own*
tokens (ignoring padding), then mapped to the padded batch, so left and right padding give the same
selection:

- ``"last"``: the last non-pad token of each row (the paper's read position with ``close_final=False``).
- ``"all"``: every non-pad token.
- an ``int`` ``i``: token ``i`` of each row (negative counts from the row's end; ``-1 == "last"``).
- a ``slice`` (or ``(start, stop)`` tuple): a span of each row's tokens, Python slice semantics.
- ``"assistant"``: the content tokens of assistant turns (needs an assistant mask, see
  :func:`assistant_token_mask`).
- a boolean tensor ``(batch, pos)``: a custom mask already aligned with the padded batch.

Example:
    >>> import torch
    >>> mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])  # left- and right-padded rows
    >>> last_token_index(mask).tolist()
    [4, 3]
    >>> position_mask(slice(0, 2), mask).int().tolist()
    [[0, 0, 1, 1, 0], [1, 1, 0, 0, 0]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from maze_env.text import render_chat

PositionRule = Literal["last", "all", "assistant"]
Position = PositionRule | int | slice | tuple[int | None, int | None] | Tensor

Message = dict[str, str]


class PositionError(ValueError):
    """A read-position rule that cannot be applied to this batch."""


def describe(position: Position | None) -> str:
    """A short stable string for a position rule (stored in ConceptVector provenance)."""
    if position is None:
        return "all"
    if isinstance(position, str):
        return position
    if isinstance(position, bool):
        raise PositionError(f"invalid position {position!r}")
    if isinstance(position, int):
        return f"index:{position}"
    if isinstance(position, slice):
        return f"span:{position.start}:{position.stop}"
    if isinstance(position, tuple):
        return f"span:{position[0]}:{position[1]}"
    if isinstance(position, Tensor):
        return "mask"
    return "custom"


def _as_mask(attention_mask: Tensor | None, shape: tuple[int, int] | None = None) -> Tensor:
    if attention_mask is None:
        if shape is None:
            raise PositionError("need an attention mask or a shape")
        return torch.ones(shape, dtype=torch.bool)
    if attention_mask.ndim != 2:
        raise PositionError(f"attention_mask must be (batch, pos), got shape {tuple(attention_mask.shape)}")
    return attention_mask.bool()


def last_token_index(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, " batch"]:
    """Index of the last non-pad token of each row, for left or right padding."""
    mask = _as_mask(attention_mask)
    if not bool(mask.any(dim=1).all()):
        empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
        raise PositionError(f"rows {empty} have no tokens (all padding)")
    seq_len = mask.shape[1]
    # argmax returns the first maximum: flip so it finds the last 1.
    return seq_len - 1 - mask.flip(1).int().argmax(dim=1)


def first_token_index(attention_mask: Int[Tensor, "batch pos"]) -> Int[Tensor, " batch"]:
    """Index of the first non-pad token of each row."""
    mask = _as_mask(attention_mask)
    return mask.int().argmax(dim=1)


def _row_coordinates(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token index within its own row (0 at the first real token) and per-row length."""
    rank = mask.long().cumsum(dim=1) - 1  # (batch, pos): index among real tokens
    lengths = mask.long().sum(dim=1)  # (batch,)
    return rank, lengths


def position_mask(
    position: Position | None,
    attention_mask: Int[Tensor, "batch pos"] | None,
    *,
    shape: tuple[int, int] | None = None,
    assistant_mask: Bool[Tensor, "batch pos"] | None = None,
) -> Bool[Tensor, "batch pos"]:
    """Boolean ``(batch, pos)`` mask of the positions a rule selects (never selects padding)."""
    mask = _as_mask(attention_mask, shape)
    if position is None or (isinstance(position, str) and position == "all"):
        return mask.clone()
    if isinstance(position, str):
        if position == "last":
            out = torch.zeros_like(mask)
            out[torch.arange(mask.shape[0], device=mask.device), last_token_index(mask)] = True
            return out
        if position == "assistant":
            if assistant_mask is None:
                raise PositionError(
                    "position='assistant' needs chat messages (pass lists of {'role','content'} dicts) or "
                    "an assistant_mask from probes.positions.assistant_token_mask"
                )
            if assistant_mask.shape != mask.shape:
                raise PositionError(
                    f"assistant_mask shape {tuple(assistant_mask.shape)} != batch shape {tuple(mask.shape)}"
                )
            return assistant_mask.to(mask.device).bool() & mask
        raise PositionError(
            f"unknown position rule {position!r}: use 'last', 'all', 'assistant', an int, a span or a mask"
        )
    if isinstance(position, Tensor):
        if position.dtype != torch.bool or position.shape != mask.shape:
            raise PositionError(
                f"a custom position mask must be a bool tensor of shape {tuple(mask.shape)}, got "
                f"{position.dtype} {tuple(position.shape)}"
            )
        return position.to(mask.device) & mask
    rank, lengths = _row_coordinates(mask)
    lengths = lengths[:, None]
    if isinstance(position, bool):
        raise PositionError(f"invalid position {position!r}")
    if isinstance(position, int):
        index = position + lengths if position < 0 else torch.full_like(lengths, position)
        if bool(((index < 0) | (index >= lengths)).any()):
            raise PositionError(
                f"position {position} is outside some rows (row lengths {lengths.flatten().tolist()})"
            )
        return mask & (rank == index)
    if isinstance(position, tuple):
        if len(position) != 2:
            raise PositionError(f"a span must be (start, stop), got {position!r}")
        position = slice(*position)
    if isinstance(position, slice):
        if position.step not in (None, 1):
            raise PositionError("spans with a step are not supported")
        start = position.start if position.start is not None else 0
        stop = position.stop
        start_t = (lengths + start).clamp(min=0) if start < 0 else torch.full_like(lengths, start)
        if stop is None:
            stop_t = lengths
        elif stop < 0:
            stop_t = (lengths + stop).clamp(min=0)
        else:
            stop_t = torch.minimum(torch.full_like(lengths, stop), lengths)
        out = mask & (rank >= start_t) & (rank < stop_t)
        if not bool(out.any(dim=1).all()):
            empty = (~out.any(dim=1)).nonzero().flatten().tolist()
            raise PositionError(f"span {position} selects no tokens in rows {empty}")
        return out
    raise PositionError(f"unsupported position {position!r} ({type(position).__name__})")


def gather_positions(
    hidden: Tensor, position: Position | None, attention_mask: Tensor | None, **kwargs: Any
) -> Tensor:
    """Select positions from ``hidden (batch, pos, d)``.

    ``"last"`` and ints give ``(batch, d)``; every other rule gives ``(n_selected, d)`` rows in batch
    order (row-major). Used by hooks, so only the selected rows are copied.
    """
    batch, seq = hidden.shape[:2]
    if isinstance(position, str) and position == "last":
        if attention_mask is None:
            return hidden[:, -1]
        index = last_token_index(attention_mask.to(hidden.device))
        return hidden[torch.arange(batch, device=hidden.device), index]
    mask = position_mask(
        position,
        None if attention_mask is None else attention_mask.to(hidden.device),
        shape=(batch, seq),
        **kwargs,
    )
    return hidden[mask]  # (n_selected, d); an int rule selects exactly one token per row


# --------------------------------------------------------------------------------------------------
# Chats
# --------------------------------------------------------------------------------------------------


def render_messages(tokenizer: Any, messages: Sequence[Message], *, close_final: bool) -> str:
    """Chat-template text of a captured chat, never with a generation prompt (the text ends where the chat
    does): :func:`maze_env.text.render_chat` with ``generation_prompt=False``."""
    return render_chat(tokenizer, messages, close_final=close_final, generation_prompt=False)


def assistant_char_spans(
    tokenizer: Any, messages: Sequence[Message], *, close_final: bool = True
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered chat and the character span of each assistant message's content in it.

    Spans are found by rendering prefixes: everything the template emits before an assistant turn
    is the rendering of the previous messages with a generation prompt, so the turn's content is the
    first occurrence of that content after that prefix.
    """
    text = render_messages(tokenizer, messages, close_final=close_final)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prefix = render_chat(tokenizer, messages[:i], close_final=True, generation_prompt=True) if i else ""
        if not text.startswith(prefix):
            raise PositionError(
                "the chat template does not render prefixes consistently (turn "
                f"{i}); cannot locate assistant tokens by prefix rendering"
            )
        content = message.get("content", "")
        start = text.find(content, len(prefix)) if content else -1
        if start < 0:
            raise PositionError(
                f"assistant content of turn {i} ({content[:30]!r}) not found in the rendered chat"
            )
        spans.append((start, start + len(content)))
    return text, spans


def tokens_in_spans(offsets: Tensor, spans: Sequence[tuple[int, int]]) -> Tensor:
    """Bool ``(pos,)``: tokens whose character offsets overlap any span (special tokens have (0, 0))."""
    start, end = offsets[:, 0], offsets[:, 1]
    hit = torch.zeros(offsets.shape[0], dtype=torch.bool)
    for lo, hi in spans:
        hit |= (end > lo) & (start < hi) & (end > start)
    return hit


def encode_chats(
    tokenizer: Any,
    messages_batch: Sequence[Sequence[Message]],
    *,
    close_final: bool = True,
    padding_side: str | None = None,
) -> tuple[dict[str, Tensor], Bool[Tensor, "batch pos"], list[str]]:
    """Render and tokenize chats; return the padded encoding, the assistant-token mask and the texts.

    The texts already contain the template's special tokens, so they are tokenized with
    ``add_special_tokens=False``.
    """
    texts, spans = [], []
    for messages in messages_batch:
        text, span = assistant_char_spans(tokenizer, messages, close_final=close_final)
        texts.append(text)
        spans.append(span)
    encoded = encode_texts(
        tokenizer, texts, add_special_tokens=False, padding_side=padding_side, offsets=True
    )
    offsets = encoded.pop("offset_mapping")
    assistant = torch.zeros_like(encoded["attention_mask"], dtype=torch.bool)
    for row, span in enumerate(spans):
        assistant[row] = tokens_in_spans(offsets[row], span) & encoded["attention_mask"][row].bool()
    return encoded, assistant, texts


def assistant_token_mask(
    tokenizer: Any, messages_batch: Sequence[Sequence[Message]], *, close_final: bool = True
) -> Bool[Tensor, "batch pos"]:
    """Bool mask of assistant-content tokens, aligned with ``encode_chats(tokenizer, messages_batch)``.

    That is the padded ``tokenizer(texts, padding=True, add_special_tokens=False)`` encoding of the
    rendered chats, with the tokenizer's own ``padding_side``.

    Example:
        >>> msgs = [[{"role": "user", "content": "Where?"}, {"role": "assistant", "content": "N"}]]
        >>> assistant_token_mask(tokenizer, msgs)  # doctest: +SKIP
        tensor([[False, ..., True, False, False]])
    """
    return encode_chats(tokenizer, messages_batch, close_final=close_final)[1]


def needs_special_tokens(tokenizer: Any, texts: Sequence[str]) -> bool:
    """``False`` when the texts already start with the tokenizer's BOS (chat-template output)."""
    bos = getattr(tokenizer, "bos_token", None)
    if bos and all(text.startswith(bos) for text in texts):
        return False
    return True


def encode_texts(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    add_special_tokens: bool | None = None,
    padding_side: str | None = None,
    offsets: bool = False,
) -> dict[str, Tensor]:
    """Pad-tokenize ``texts`` into ``input_ids`` / ``attention_mask`` tensors.

    ``add_special_tokens=None`` adds them unless every text already starts with the BOS token, so a
    chat-template rendering never gets a second BOS.
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string")
    if not texts:
        raise PositionError("no texts to encode")
    if tokenizer.pad_token is None:
        raise PositionError(
            f"{type(tokenizer).__name__} has no pad token; set tokenizer.pad_token = tokenizer.eos_token"
        )
    if add_special_tokens is None:
        add_special_tokens = needs_special_tokens(tokenizer, texts)
    kwargs: dict[str, Any] = {}
    if padding_side is not None:
        kwargs["padding_side"] = padding_side
    encoded = tokenizer(
        list(texts),
        padding=True,
        add_special_tokens=add_special_tokens,
        return_tensors="pt",
        return_offsets_mapping=offsets,
        **kwargs,
    )
    out = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    if offsets:
        out["offset_mapping"] = encoded["offset_mapping"]
    return out
