"""Batched, seeded chat generation with optional steering.

``generate_responses(model, tok, ["How are you feeling right now?"], max_new_tokens=48, n_samples=4,
temperature=0.7, seed=0, steering=Steering(v, layers=[15], alpha=4.0))`` renders each prompt as a user
turn with the chat template (plus the assistant header), left-pads the batch, samples, and returns the
decoded texts as ``texts[prompt][sample]``.

Seeding: every batch runs under its own seed derived from ``seed`` and the batch index, inside a forked
RNG (the caller's global RNG state is left untouched), so the same arguments give the same texts.
Greedy decoding (``temperature=0``) generates each prompt once and repeats it ``n_samples`` times.

Example:
    >>> texts = generate_responses(model, tok, ["Are you happy?"], max_new_tokens=8)  # doctest: +SKIP
    >>> len(texts), len(texts[0])  # doctest: +SKIP
    (1, 1)
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import GenerationConfig

from steering.apply import Positions, apply
from steering.operators import Operator

Message = dict[str, str]
Prompt = str | Sequence[Message]


@dataclass(frozen=True)
class Steering:
    """What to steer with: the arguments of :func:`steering.apply.apply` minus the model.

    Example:
        >>> Steering(directions={3: torch.ones(8)}, layers=[3], alpha=2.0).alpha
        2.0
    """

    directions: Any
    layers: int | Sequence[int] | str | None = None
    alpha: float | Mapping[int, float] = 1.0
    positions: Positions = "assistant"
    operator: Operator | None = None

    def context(self, model: nn.Module, tokenizer: Any) -> contextlib.AbstractContextManager:
        """The :func:`apply` context for this steering on ``model``."""
        return apply(
            model,
            self.directions,
            layers=self.layers,
            alpha=self.alpha,
            positions=self.positions,
            operator=self.operator,
            tokenizer=tokenizer,
        )


def render_prompts(tokenizer: Any, prompts: Sequence[Prompt], *, system: str | None = None) -> list[str]:
    """Chat-template texts ending with an open assistant turn (``add_generation_prompt=True``).

    A string prompt is one user turn; a list of ``{"role", "content"}`` messages is used as given.
    ``system`` prepends a system message (else the template's default, if it has one).
    """
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of prompts, not a single string")
    texts = []
    for prompt in prompts:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if system is not None:
            messages = [{"role": "system", "content": system}, *messages]
        texts.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return texts


def encode_left_padded(tokenizer: Any, texts: Sequence[str]) -> dict[str, Tensor]:
    """Left-padded ``input_ids``/``attention_mask`` of already-rendered chat texts (no extra special tokens)."""
    if tokenizer.pad_token is None:
        raise ValueError(
            f"{type(tokenizer).__name__} has no pad token; set tokenizer.pad_token = tokenizer.eos_token"
        )
    encoded = tokenizer(
        list(texts), padding=True, add_special_tokens=False, return_tensors="pt", padding_side="left"
    )
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def _batch_seed(seed: int, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def generation_config(
    tokenizer: Any, *, max_new_tokens: int, temperature: float, top_p: float = 1.0
) -> GenerationConfig:
    """A complete generation config (independent of the checkpoint's defaults)."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be finite and >= 0, got {temperature!r}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    sample = temperature > 0
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sample,
        temperature=temperature if sample else None,
        top_p=top_p if sample else None,
        top_k=0 if sample else None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def generate_responses(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
    n_samples: int = 1,
    steering: Steering | None = None,
    batch_size: int = 16,
    top_p: float = 1.0,
    system: str | None = None,
) -> list[list[str]]:
    """Generate ``n_samples`` responses per prompt; returns ``texts[prompt][sample]`` (special tokens removed).

    Args:
        model, tokenizer: a loaded causal LM and its tokenizer (with a chat template).
        prompts: user messages (str) or full message lists.
        max_new_tokens: new tokens per response.
        temperature: 0 for greedy decoding, else sampling temperature (with ``top_p``).
        seed: base seed; the same arguments give the same texts.
        n_samples: responses per prompt.
        steering: a :class:`Steering` applied during generation, or ``None``.
        batch_size: rows (prompt × sample) per ``generate`` call.
        system: optional system message.
    """
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    config = generation_config(tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    texts = render_prompts(tokenizer, prompts, system=system)
    draws = n_samples if config.do_sample else 1
    rows = [(p, k) for p in range(len(texts)) for k in range(draws)]
    device = _model_device(model)
    out: list[list[str]] = [[] for _ in texts]
    steer = steering.context(model, tokenizer) if steering is not None else contextlib.nullcontext()
    with torch.inference_mode(), steer:
        for index, start in enumerate(range(0, len(rows), batch_size)):
            chunk = rows[start : start + batch_size]
            batch = encode_left_padded(tokenizer, [texts[p] for p, _ in chunk])
            batch = {key: value.to(device) for key, value in batch.items()}
            with _seeded(_batch_seed(seed, index), device):
                tokens = model.generate(**batch, generation_config=config)
            new = tokens[:, batch["input_ids"].shape[1] :]
            for (p, _), text in zip(chunk, tokenizer.batch_decode(new, skip_special_tokens=True)):
                out[p].append(text.strip())
    if draws == 1 and n_samples > 1:
        out = [responses * n_samples for responses in out]
    return out
