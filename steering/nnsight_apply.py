"""The same intervention as :func:`steering.apply.apply`, written with nnsight (0.8) instead of plain hooks.

Use it when the model runs under nnsight (for example remotely on NDIF). For the same inputs it gives the
same numbers as the hook version: the same operator, layers, alpha and position mask
(:func:`steering.apply.prompt_position_mask`), prompt tokens masked on the prompt pass and every generated
token steered on decoding steps.

- :func:`apply_nnsight`: steer inside your own ``lm.trace(...)``.
- :func:`forward_nnsight`: one steered forward pass, returns logits.
- :func:`generate_nnsight`: steered ``generate`` (open ``tracer.iter[:]`` loop), returns token ids.

Example:
    >>> from nnsight.modeling.transformers import TransformersModel  # doctest: +SKIP
    >>> lm = TransformersModel(model, tokenizer=tok)  # doctest: +SKIP
    >>> logits = forward_nnsight(lm, v, ids, attn, layers=[6], alpha=4.0, positions="all")  # doctest: +SKIP
    >>> tokens = generate_nnsight(lm, v, ids, attn, layers=[6], alpha=4.0, tokenizer=tok,
    ...                           max_new_tokens=16, do_sample=False)  # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from probes.layers import layer_template, unwrap
from probes.remote import RemoteModel
from steering.apply import Positions, check_positions, prompt_position_mask, resolve_alpha, resolve_directions
from steering.operators import Operator, add


def wrap_nnsight(model: nn.Module, tokenizer: Any) -> Any:
    """Wrap a loaded HF model for nnsight (no copy; nnsight switches the tokenizer to left padding)."""
    from nnsight.modeling.transformers import TransformersModel

    return TransformersModel(model, tokenizer=tokenizer)


def _maybe_remote(lm: Any, remote: bool | str) -> Any:
    """``lm`` itself, or a ``probes.remote.RemoteModel`` running it remotely when ``remote`` is set."""
    if not remote:
        return lm

    return RemoteModel(lm, remote=remote)


def _hf_model(lm: Any) -> nn.Module:
    inner = getattr(lm, "_module", None)
    if not isinstance(inner, nn.Module):
        raise TypeError(f"expected an nnsight TransformersModel (see wrap_nnsight), got {type(lm).__name__}")
    return unwrap(inner)


def _block_envoys(lm: Any, model: nn.Module, layers: Sequence[int]) -> dict[int, Any]:
    """The nnsight envoys of the steered decoder blocks, found by the same names probes.layers uses."""
    template = layer_template(model)
    envoys: dict[int, Any] = {}
    for layer in layers:
        envoy = lm
        for part in template.format(num=layer).split("."):
            envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
        envoys[layer] = envoy
    return envoys


def steer_step_nnsight(
    envoys: Mapping[int, Any],
    directions: Mapping[int, Tensor],
    alphas: Mapping[int, float],
    operator: Operator,
    prompt_mask: Bool[Tensor, "batch prompt"] | None,
    step: int = 0,
) -> None:
    """Inside an nnsight trace: steer forward pass number ``step`` of a generation (0 = the prompt pass).

    ``prompt_mask=None`` means every prompt token is steered. Step 0 uses the prompt mask; a later step
    that re-feeds the whole sequence (no KV cache) uses the prompt mask followed by ones; a cached decoding
    step steers all its (generated) tokens.
    """
    for layer in sorted(envoys):  # sort to follow execution order
        envoy = envoys[layer]
        hidden = envoy.output
        direction = directions[layer].to(device=hidden.device, dtype=hidden.dtype)
        new = operator(hidden, direction, alphas[layer])
        mask = None
        if prompt_mask is not None:
            prompt_len = prompt_mask.shape[1]
            if step == 0:
                mask = prompt_mask
            elif hidden.shape[1] == prompt_len + step:
                tail = torch.ones(hidden.shape[0], step, dtype=torch.bool, device=prompt_mask.device)
                mask = torch.cat([prompt_mask, tail], dim=1)
        if mask is not None:
            new = torch.where(mask.to(hidden.device).unsqueeze(-1), new, hidden)
        envoy.output = new


def _prepare(
    lm: Any,
    directions: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    layers: Any,
    alpha: Any,
    positions: Any,
    operator: Operator | None,
    tokenizer: Any,
):
    model = _hf_model(lm)
    positions = check_positions(positions)
    by_layer = resolve_directions(model, directions, layers)
    alphas = resolve_alpha(alpha, list(by_layer))
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    mask = prompt_position_mask(positions, input_ids, attention_mask, tokenizer=tokenizer or lm.tokenizer)
    envoys = _block_envoys(lm, model, sorted(by_layer))
    return by_layer, alphas, operator or add(), mask, envoys, attention_mask


def apply_nnsight(
    lm: Any,
    directions: Any,
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    *,
    layers: int | Sequence[int] | str | None = None,
    alpha: float | Mapping[int, float] = 1.0,
    positions: Positions = "assistant",
    operator: Operator | None = None,
    tokenizer: Any = None,
) -> None:
    """Call inside your own ``lm.trace(...)`` (same inputs) to steer that forward pass.

    Example:
        >>> with lm.trace({"input_ids": ids, "attention_mask": attn}):  # doctest: +SKIP
        ...     apply_nnsight(lm, v, ids, attn, layers=[6], alpha=4.0, tokenizer=tok)
        ...     logits = lm.output.logits.save()
    """
    by_layer, alphas, op, mask, envoys, _ = _prepare(
        lm, directions, input_ids, attention_mask, layers, alpha, positions, operator, tokenizer
    )
    steer_step_nnsight(envoys, by_layer, alphas, op, None if bool(mask.all()) else mask, 0)


def forward_nnsight(
    lm: Any,
    directions: Any,
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    *,
    layers: int | Sequence[int] | str | None = None,
    alpha: float | Mapping[int, float] = 1.0,
    positions: Positions = "assistant",
    operator: Operator | None = None,
    tokenizer: Any = None,
    remote: bool | str = False,
) -> Float[Tensor, "batch pos vocab"]:
    """Logits of one steered forward pass run through nnsight (left padding gets mask-derived position ids).

    ``remote=True`` runs it on NDIF (``"local"``: nnsight's offline simulation); ``lm`` may also be a
    ``probes.remote.RemoteModel``. Directions, masks and envoys are prepared here, so only
    ``steer_step_nnsight`` runs inside the trace (on the server when remote).
    """
    lm = _maybe_remote(lm, remote)
    by_layer, alphas, op, mask, envoys, attention_mask = _prepare(
        lm, directions, input_ids, attention_mask, layers, alpha, positions, operator, tokenizer
    )
    prompt_mask = None if bool(mask.all()) else mask
    with lm.trace({"input_ids": input_ids, "attention_mask": attention_mask}):
        steer_step_nnsight(envoys, by_layer, alphas, op, prompt_mask, 0)
        logits = lm.output.logits.save()
    return logits


def generate_nnsight(
    lm: Any,
    directions: Any,
    input_ids: Int[Tensor, "batch pos"],
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    *,
    layers: int | Sequence[int] | str | None = None,
    alpha: float | Mapping[int, float] = 1.0,
    positions: Positions = "assistant",
    operator: Operator | None = None,
    tokenizer: Any = None,
    remote: bool | str = False,
    **generate_kwargs: Any,
) -> Int[Tensor, "batch total"]:
    """Steered ``generate`` through nnsight: prompt tokens by the position rule, every new token steered.

    Returns the prompt plus generated token ids, as HF ``generate`` does. ``remote`` as in
    :func:`forward_nnsight`.
    """
    lm = _maybe_remote(lm, remote)
    by_layer, alphas, op, mask, envoys, attention_mask = _prepare(
        lm, directions, input_ids, attention_mask, layers, alpha, positions, operator, tokenizer
    )
    prompt_mask = None if bool(mask.all()) else mask
    with warnings.catch_warnings():
        # an open ``tracer.iter[:]`` ends by outrunning the generation; nnsight warns about that by design
        warnings.filterwarnings("ignore", message=".*was never reached.*")
        with lm.generate(**generate_kwargs) as tracer:
            with tracer.invoke({"input_ids": input_ids, "attention_mask": attention_mask}):
                for step in tracer.iter[:]:
                    steer_step_nnsight(envoys, by_layer, alphas, op, prompt_mask, int(step))
            with tracer.invoke():
                result = tracer.result.save()
    return result
