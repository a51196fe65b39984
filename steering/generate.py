"""Batched, seeded chat generation with optional steering.

``generate_responses(model, tok, ["How are you feeling right now?"], max_new_tokens=48, n_samples=4,
temperature=0.7, seed=0, steering=Steering(v, layers=[15], alpha=4.0))`` renders each prompt as a user
turn with the chat template (plus the assistant header), left-pads the batch, samples, and returns the
decoded texts as ``texts[prompt][sample]``. :func:`generate_steered_responses` does the same for several
steerings at once (``texts[steering][prompt][sample]``), all in the same batches: a dose-response sweep's
cells share one ``generate`` call, each row steered by its own direction and α.

Seeding: sample ``k`` of prompt ``p`` draws its randomness from its own generator, seeded from
``(seed, p, k)``, by the Gumbel-max trick (``argmax(logits / T + Gumbel noise)`` is a draw from
``softmax(logits / T)``). So the texts do not depend on ``batch_size`` or on which other rows share the
batch (up to float rounding), the same arguments give the same texts, the caller's global RNG is left
untouched, and every steering of one call sees the same random numbers for the same (prompt, sample): a
paired comparison. Greedy decoding (``temperature=0``) generates each prompt once and repeats it
``n_samples`` times.

Example:
    >>> texts = generate_responses(model, tok, ["Are you happy?"], max_new_tokens=8)  # doctest: +SKIP
    >>> len(texts), len(texts[0])  # doctest: +SKIP
    (1, 1)
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, TopPLogitsWarper

from probes.layers import d_model
from steering.apply import Positions, apply, resolve_alpha, resolve_directions
from steering.operators import Operator, is_additive

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


def row_seed(seed: int, prompt: int, sample: int) -> int:
    """The sampling seed of sample ``sample`` of prompt ``prompt`` (a 63-bit hash of the three)."""
    digest = hashlib.sha256(f"{seed}:{prompt}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class RowGumbelSampler(LogitsProcessor):
    """Sampling as a greedy step: ``scores / T`` (top-p filtered) plus Gumbel noise from each row's own
    CPU generator, so a row's draws depend only on its seed (not on the batch or the machine).

    Example:
        >>> sampler = RowGumbelSampler([1, 2], temperature=0.7)
        >>> sampler(None, torch.zeros(2, 5)).shape
        torch.Size([2, 5])
    """

    def __init__(self, seeds: Sequence[int], *, temperature: float, top_p: float = 1.0) -> None:
        self.generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        self.temperature = float(temperature)
        self.top_p = TopPLogitsWarper(top_p) if top_p < 1 else None

    def __call__(self, input_ids: Tensor | None, scores: Tensor) -> Tensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(
                f"the sampler has {len(self.generators)} row seeds but the batch has {scores.shape[0]} rows"
            )
        scores = scores.float() / self.temperature
        if self.top_p is not None:
            scores = self.top_p(input_ids, scores)
        uniform = torch.stack([torch.rand(scores.shape[1], generator=g) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(torch.float32).tiny)))
        return scores + gumbel.to(scores.device)


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
        seed: base seed; sample ``k`` of prompt ``p`` samples with :func:`row_seed` ``(seed, p, k)``.
        n_samples: responses per prompt.
        steering: a :class:`Steering` applied during generation, or ``None``.
        batch_size: rows (prompt × sample) per ``generate`` call; the texts do not depend on it.
        system: optional system message.
    """
    return generate_steered_responses(
        model,
        tokenizer,
        prompts,
        [steering],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        n_samples=n_samples,
        batch_size=batch_size,
        top_p=top_p,
        system=system,
    )[0]


def generate_steered_responses(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    steerings: Sequence[Steering | None],
    *,
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    seed: int = 0,
    n_samples: int = 1,
    batch_size: int = 64,
    top_p: float = 1.0,
    system: str | None = None,
) -> list[list[list[str]]]:
    """:func:`generate_responses` under every steering of ``steerings`` at once: ``texts[steering][prompt][sample]``.

    The rows (steering × prompt × sample) run ``batch_size`` at a time, each row steered by its own
    direction and α (``None``: unsteered), so a sweep's cells read each weight once per decoding step
    instead of once per cell; on a CPU, decoding a few rows is bound by memory bandwidth, and more rows
    cost little more. Sample ``k`` of prompt ``p`` draws the same random numbers under every steering
    (:func:`row_seed`), so the steerings are compared on common random numbers, and each steering's texts
    equal those of :func:`generate_responses` with it alone (up to float rounding).

    Distinct steerings share batches when they are additive (``operator`` None or ``add()``) with one string
    position rule; any other steering (an ablation, a token mask) runs in batches of its own, and so do
    additive steerings under another position rule. The texts are the same either way.

    Raises:
        ValueError: bad arguments.
    """
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    steerings = list(steerings)
    if not steerings:
        raise ValueError("steerings is empty; pass [None] for unsteered generation")
    sample = generation_config(  # also checks the arguments
        tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p
    ).do_sample
    # greedy steps: a sampled step is the argmax of RowGumbelSampler's noisy scores
    config = generation_config(tokenizer, max_new_tokens=max_new_tokens, temperature=0.0)
    texts = render_prompts(tokenizer, prompts, system=system)
    draws = n_samples if sample else 1
    device = _model_device(model)
    out: list[list[list[str]]] = [[[] for _ in texts] for _ in steerings]
    with torch.inference_mode():
        for group in batch_groups(steerings):
            rowwise = _RowwiseSteering(model, tokenizer, [steerings[s] for s in group])
            rows = [(g, p, k) for g in range(len(group)) for p in range(len(texts)) for k in range(draws)]
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                batch = encode_left_padded(tokenizer, [texts[p] for _, p, _ in chunk])
                batch = {key: value.to(device) for key, value in batch.items()}
                processors = LogitsProcessorList()
                if sample:
                    seeds = [row_seed(seed, p, k) for _, p, k in chunk]
                    processors.append(RowGumbelSampler(seeds, temperature=temperature, top_p=top_p))
                with rowwise.context([g for g, _, _ in chunk]):
                    tokens = model.generate(**batch, generation_config=config, logits_processor=processors)
                new = tokens[:, batch["input_ids"].shape[1] :]
                for (g, p, _), text in zip(chunk, tokenizer.batch_decode(new, skip_special_tokens=True)):
                    out[group[g]][p].append(text.strip())
    if draws == 1 and n_samples > 1:
        out = [[responses * n_samples for responses in by_prompt] for by_prompt in out]
    return out


def _shares_batches(steering: Steering) -> bool:
    """Whether ``steering`` can share a batch with other steerings: additive, under a string position rule."""
    additive = steering.operator is None or is_additive(steering.operator)
    return additive and isinstance(steering.positions, str)


def batch_groups(steerings: Sequence[Steering | None]) -> list[list[int]]:
    """Indices of ``steerings`` in groups whose rows can share ``generate`` batches, in first-seen order.

    Additive steerings under one string position rule form one group, and ``None`` (unsteered) joins the first
    such group; each other steering forms its own, beside any repeats of the same object (an ablation, a token
    mask, cannot vary by row)."""
    groups: list[list[int]] = []
    by_key: dict[object, list[int]] = {}
    unsteered: list[int] = []
    for i, steering in enumerate(steerings):
        if steering is None:
            unsteered.append(i)
            continue
        key = ("rule", steering.positions) if _shares_batches(steering) else ("alone", id(steering))
        if key not in by_key:
            by_key[key] = []
            groups.append(by_key[key])
        by_key[key].append(i)
    if unsteered:
        shared = next((g for g in groups if _shares_batches(steerings[g[0]])), None)  # type: ignore[arg-type]
        if shared is None:
            groups.insert(0, unsteered)
        else:
            shared[:0] = unsteered
            shared.sort()
    return groups


class _RowwiseSteering:
    """The steering context of a batch whose rows may each have their own steering (see
    :func:`generate_steered_responses`): one group of :func:`batch_groups`, so either one steering (perhaps
    repeated) or additive steerings under one string position rule, beside unsteered rows."""

    def __init__(self, model: nn.Module, tokenizer: Any, steerings: Sequence[Steering | None]) -> None:
        self.model, self.tokenizer, self.steerings = model, tokenizer, list(steerings)
        self.resolved: dict[int, dict[int, Tensor]] = {}
        if all(s is self.steerings[0] for s in self.steerings):
            return  # every batch has one steering (or none): each runs as it would on its own
        distinct = {id(s): s for s in self.steerings if s is not None}
        for key, steering in distinct.items():
            by_layer = resolve_directions(model, steering.directions, steering.layers)
            alphas = resolve_alpha(steering.alpha, list(by_layer))
            self.resolved[key] = {layer: alphas[layer] * vec.float() for layer, vec in by_layer.items()}
        self.positions = next(iter(distinct.values())).positions  # one string rule in the group

    def context(self, row_steerings: Sequence[int]) -> contextlib.AbstractContextManager:
        """The context for rows whose steerings are ``self.steerings[i]`` for ``i`` in ``row_steerings``."""
        chosen = [self.steerings[i] for i in row_steerings]
        if all(s is chosen[0] for s in chosen):  # one steering (or none) for the whole batch
            return (
                chosen[0].context(self.model, self.tokenizer)
                if chosen[0] is not None
                else contextlib.nullcontext()
            )
        layers = sorted({layer for s in chosen if s is not None for layer in self.resolved[id(s)]})
        width = d_model(self.model)
        directions = {}
        for layer in layers:
            matrix = torch.zeros(len(chosen), width)
            for r, s in enumerate(chosen):
                if s is not None and layer in self.resolved[id(s)]:
                    matrix[r] = self.resolved[id(s)][layer]
            directions[layer] = matrix
        return apply(self.model, directions, layers=layers, alpha=1.0, positions=self.positions,
                     tokenizer=self.tokenizer)  # fmt: skip


__all__ = ("RowGumbelSampler", "Steering", "batch_groups", "encode_left_padded", "generate_responses", "generate_steered_responses",
           "generation_config", "render_prompts", "row_seed")  # fmt: skip
