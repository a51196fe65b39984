"""Steer a model with a direction: a context manager of forward hooks on decoder-block outputs.

``with apply(model, v, layers=[12], alpha=4.0, tokenizer=tok): model.generate(...)`` adds ``4 * v[12]`` to
the output of block 12 (``resid_post`` of layer 12) at the steered positions, for plain forward passes and
for every ``generate`` step including KV-cache decoding. On exit exactly the handles it added are removed.

Position rules (which tokens are steered):

- ``"assistant"`` (default, the paper's rule): every token of every assistant turn in the prompt,
  including the chat template's assistant header token(s), plus every generated token. Needs the tokenizer
  to find the turns (:func:`probes.positions.assistant_token_mask`).
- ``"generated"``: only tokens produced by ``generate`` after the prompt (nothing in a plain forward).
- ``"all"``: every non-padding token.
- a boolean mask ``(batch, pos)``: exactly the marked prompt tokens; tokens past the mask's end (generated
  tokens) are steered too.

Padding tokens (``attention_mask == 0``) are never steered, so batched runs equal unbatched ones.
Generated tokens are recognised on cached decoding steps (absolute position past the prompt) and, for
``generate(use_cache=False)``, when a call re-feeds the previous prompt plus new tokens; so cached and
uncached greedy decoding give the same tokens.

The hooks are registered with ``prepend=True``: the steered output is what every later observer sees
(``output_hidden_states``, ``probes.record``) and what flows into the next block. Nested ``apply`` contexts
on the same block run innermost first.

Example:
    >>> import torch
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    ...     num_attention_heads=2, num_key_value_heads=1, vocab_size=50)).eval()
    >>> ids = torch.tensor([[1, 2, 3]])
    >>> v = torch.ones(16)
    >>> with apply(model, v, layers=0, alpha=0.0, positions="all"):
    ...     steered = model(ids).logits
    >>> torch.equal(steered, model(ids).logits)
    True
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from probes.concept_vector import ConceptVector
from probes.layers import blocks, check_layer, d_model, layer_template, unwrap
from steering.conditions import Condition, row_scores
from steering.operators import Operator, add, is_additive

PositionRule = Literal["assistant", "generated", "all"]
POSITION_RULES: tuple[str, ...] = ("assistant", "generated", "all")
Positions = str | Bool[Tensor, "batch pos"]


class SteeringError(RuntimeError):
    """The model was called in a way the active steering hooks cannot handle."""


# ----------------------------------------------------------------------------------------------------------
# Inputs: directions, layers, alpha, positions


def _directions_by_layer(directions: Any) -> dict[int, Tensor] | Tensor:
    """A ConceptVector / dict layer -> Tensor becomes a dict; a bare Tensor stays a Tensor."""
    if isinstance(directions, Tensor):
        return directions
    inner = getattr(directions, "directions", directions)
    if isinstance(inner, Mapping):
        return {int(layer): vec for layer, vec in inner.items()}
    raise TypeError(
        "directions must be a ConceptVector, a dict {layer: Tensor(d_model)} or a Tensor(d_model), "
        f"got {type(directions).__name__}"
    )


def resolve_directions(
    model: nn.Module, directions: Any, layers: int | Sequence[int] | str | None
) -> dict[int, Float[Tensor, " d_model"]]:
    """Validate and pair layers with their direction: ``{layer: direction}`` for the layers to steer.

    Raises:
        TypeError / ValueError / IndexError / KeyError: with the bad value and what is allowed.
        probes.concept_vector.FamilyMismatchError: a ConceptVector from another model family.
    """
    if isinstance(directions, ConceptVector):
        directions.check_family(model)
    by_layer = _directions_by_layer(directions)
    if layers is None:
        if isinstance(by_layer, Tensor):
            raise ValueError("layers is required when directions is a single Tensor (e.g. layers=[6])")
        layers = sorted(by_layer)
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be 'all', an int or a list of ints, got {layers!r}")
        layers = sorted(by_layer) if isinstance(by_layer, dict) else list(range(len(blocks(model))))
    if isinstance(layers, int) or hasattr(layers, "__index__"):
        layers = [layers]  # type: ignore[list-item]
    resolved: dict[int, Tensor] = {}
    width = d_model(model)
    for requested in layers:  # type: ignore[union-attr]
        layer = check_layer(model, requested)
        if isinstance(by_layer, Tensor):
            vec = by_layer
        else:
            key = requested if requested in by_layer else layer
            if key not in by_layer:
                raise KeyError(
                    f"no direction for layer {requested}: the vector has layers {sorted(by_layer)}"
                )
            vec = by_layer[key]
        if not isinstance(vec, Tensor):
            raise TypeError(f"direction for layer {layer} must be a Tensor, got {type(vec).__name__}")
        if vec.shape != (width,) and not (vec.ndim == 2 and vec.shape[1] == width and vec.shape[0] > 0):
            raise ValueError(
                f"direction for layer {layer} has shape {tuple(vec.shape)}; the model needs ({width},), or "
                f"(batch, {width}) for one direction per row"
            )
        if not torch.isfinite(vec).all():
            raise ValueError(f"direction for layer {layer} has non-finite entries")
        resolved[layer] = vec.detach()
    if not resolved:
        raise ValueError("no layers to steer: pass layers=... (an int or a non-empty list)")
    return resolved


def resolve_alpha(alpha: float | Mapping[int, float], layers: Sequence[int]) -> dict[int, float]:
    """``{layer: alpha}``; a single number applies to every layer. Raises on non-finite values."""
    if isinstance(alpha, Mapping):
        missing = [layer for layer in layers if layer not in alpha]
        if missing:
            raise KeyError(f"alpha has no value for layers {missing}; it has {sorted(alpha)}")
        values = {layer: alpha[layer] for layer in layers}
    else:
        values = dict.fromkeys(layers, alpha)
    for layer, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) and not hasattr(value, "__float__"):
            raise TypeError(f"alpha must be a real number, got {type(value).__name__} {value!r}")
        if not math.isfinite(float(value)):
            raise ValueError(f"alpha must be finite, got {value!r} (layer {layer})")
        values[layer] = float(value)
    return values


def check_positions(positions: Any) -> Positions:
    """Validate a position rule or mask (see the module docstring)."""
    if isinstance(positions, str):
        if positions not in POSITION_RULES:
            raise ValueError(
                f"unknown position rule {positions!r}: choose one of {list(POSITION_RULES)} "
                "or pass a boolean mask of shape (batch, pos)"
            )
        return positions
    if isinstance(positions, Tensor):
        if positions.dtype != torch.bool or positions.ndim != 2:
            raise ValueError(
                f"a position mask must be a bool Tensor of shape (batch, pos), got dtype {positions.dtype} "
                f"and shape {tuple(positions.shape)}"
            )
        return positions
    raise TypeError(
        f"positions must be one of {list(POSITION_RULES)} or a bool Tensor (batch, pos), "
        f"got {type(positions).__name__}"
    )


@dataclass(frozen=True)
class AssistantTemplate:
    """Token ids that open an assistant turn (``header``) and close any turn (``end``) in a chat template.

    Example (SmolLM2): header ``<|im_start|> ass istant``, end ``<|im_end|>``; Gemma 3: header
    ``<start_of_turn> model``, end ``<end_of_turn>``.
    """

    header: tuple[int, ...]
    end: int


def assistant_template(tokenizer: Any) -> AssistantTemplate:
    """Find the assistant header and end-of-turn tokens by rendering a probe chat with the template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"{type(tokenizer).__name__} has no chat_template, so positions='assistant' cannot find assistant "
            "turns; use positions='generated' / 'all' or a mask"
        )
    user = [{"role": "user", "content": "Hello there"}]
    content = "Fine thanks"
    plain = tokenizer.apply_chat_template(user, tokenize=False)
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": content}], tokenize=False)
    if not prompt.startswith(plain) or len(prompt) == len(plain):
        raise ValueError("the chat template's generation prompt is not a suffix of the plain rendering")
    at = full.find(content, len(plain))
    if at < 0:
        raise ValueError("could not locate the assistant content in the chat template's rendering")
    header = list(tokenizer(prompt[len(plain) :], add_special_tokens=False)["input_ids"])
    # drop trailing whitespace-only tokens ("\n"): they may merge with the content; the turn region covers them
    while len(header) > 1 and not tokenizer.decode(header[-1:]).strip():
        header.pop()
    end_ids = tokenizer(full[at + len(content) :], add_special_tokens=False)["input_ids"]
    if not header or not end_ids:
        raise ValueError("could not find the chat template's assistant header or end-of-turn token")
    return AssistantTemplate(header=tuple(int(i) for i in header), end=int(end_ids[0]))


def assistant_turn_mask(
    input_ids: Int[Tensor, "batch pos"], template: AssistantTemplate
) -> Bool[Tensor, "batch pos"]:
    """Tokens inside assistant turns: from the first header token through the end-of-turn token.

    An open final turn (a generation prompt) runs to the end of the row.

    Example:
        >>> import torch
        >>> t = AssistantTemplate(header=(7, 8), end=9)
        >>> assistant_turn_mask(torch.tensor([[1, 7, 8, 4, 9, 2, 7, 8]]), t).int().tolist()
        [[0, 1, 1, 1, 1, 0, 1, 1]]
    """
    batch, length = input_ids.shape
    width = len(template.header)
    positions = torch.arange(length, device=input_ids.device).expand(batch, length)
    starts = torch.zeros(batch, length, dtype=torch.bool, device=input_ids.device)
    if length >= width:
        header = torch.tensor(template.header, device=input_ids.device)
        starts[:, : length - width + 1] = (input_ids.unfold(1, width, 1) == header).all(-1)
    none = torch.full_like(positions, -1)
    last_start = torch.where(starts, positions, none).cummax(dim=1).values
    ends = torch.where(input_ids == template.end, positions, none).cummax(dim=1).values
    last_end_before = torch.cat([none[:, :1], ends[:, :-1]], dim=1)  # end tokens strictly before each token
    return (last_start >= 0) & (last_start > last_end_before)


def prompt_position_mask(
    positions: Positions,
    input_ids: Int[Tensor, "batch pos"] | None,
    attention_mask: Int[Tensor, "batch pos"] | None = None,
    *,
    tokenizer: Any = None,
) -> Bool[Tensor, "batch pos"]:
    """Which prompt tokens a rule steers (before generation), padding excluded.

    Example:
        >>> import torch
        >>> prompt_position_mask("all", torch.tensor([[0, 5, 6]]), torch.tensor([[0, 1, 1]]))
        tensor([[False,  True,  True]])
    """
    positions = check_positions(positions)
    if input_ids is None:
        raise SteeringError(f"positions={positions!r} needs input_ids to locate tokens")
    batch, length = input_ids.shape
    if isinstance(positions, Tensor):
        if positions.shape[0] != batch:
            raise ValueError(
                f"position mask has batch {positions.shape[0]} but the prompt has batch {batch} "
                f"(prompt shape {(batch, length)})"
            )
        mask = positions[:, :length].to(input_ids.device)
        if mask.shape[1] < length:  # tokens past the mask's end are generated tokens: steered
            tail = torch.ones(batch, length - mask.shape[1], dtype=torch.bool, device=input_ids.device)
            mask = torch.cat([mask, tail], dim=1)
    elif positions == "all":
        mask = torch.ones(batch, length, dtype=torch.bool, device=input_ids.device)
    elif positions == "generated":
        mask = torch.zeros(batch, length, dtype=torch.bool, device=input_ids.device)
    else:
        if tokenizer is None:
            raise ValueError(
                "positions='assistant' needs tokenizer=... to find the assistant turns; "
                "or pass positions='generated' / 'all' / a bool mask"
            )
        template = tokenizer if isinstance(tokenizer, AssistantTemplate) else assistant_template(tokenizer)
        mask = assistant_turn_mask(input_ids, template)
        if attention_mask is not None and attention_mask.ndim == 2:
            valid = attention_mask[:, :length].to(device=mask.device).bool()
        else:
            valid = torch.ones_like(mask)
        missing = [row for row in range(batch) if bool(valid[row].any()) and not bool(mask[row].any())]
        if missing:
            raise SteeringError(
                f"positions='assistant' found no assistant turn in rows {missing}: render prompts with the "
                "chat template (add_generation_prompt=True), or use positions='generated' / 'all' / a mask"
            )
    if attention_mask is not None and attention_mask.ndim == 2:
        mask = mask & attention_mask[:, :length].to(device=mask.device).bool()
    return mask


# ----------------------------------------------------------------------------------------------------------
# The hooks


@dataclass
class SteeringHandle:
    """What an active :func:`apply` context is doing; yielded by the context manager.

    Attributes:
        layers: the steered layers (normalised, ascending).
        alpha: coefficient per layer.
        positions: the position rule or mask.
        prompt_mask: the steered prompt tokens of the latest prompt (prefill) pass, ``(batch, pos)``.
        n_calls: forward calls seen (prompt passes and decoding steps).
    """

    layers: list[int]
    alpha: dict[int, float]
    positions: Positions
    prompt_mask: Tensor | None = None
    n_calls: int = 0
    condition_scores: Tensor | None = None
    """With a condition: each row's score on the latest prompt pass (``steering.conditions.row_scores``)."""
    gate: Tensor | None = None
    """With a condition: the rows being steered (``(batch,)`` bool), decided on the latest prompt pass."""
    _prompt_ids: Tensor | None = field(default=None, repr=False)
    _step_mask: Tensor | None = field(default=None, repr=False)
    _step_all: bool = field(default=False, repr=False)
    _step_shape: tuple[int, int] | None = field(default=None, repr=False)
    _new_prompt: bool = field(default=False, repr=False)
    _attention_mask: Tensor | None = field(default=None, repr=False)


def _first(args: tuple, kwargs: dict, name: str, index: int) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else None


CACHE_KWARGS = ("cache", "past_key_values")
"""Where a decoder's forward finds its KV cache: ``cache`` from transformers 5.24 on (``generate`` passes it
so), ``past_key_values`` before (and from callers still using the deprecated name)."""


def _past_length(kwargs: dict, attention_mask: Tensor | None, new_len: int) -> int:
    """Tokens already in the KV cache when this forward runs (0 for a new prompt).

    A 2-D attention mask covers the cached and the new tokens. Without one (``generate`` passes none when no
    row needs padding), the cache itself says how long it is; the pre-hook runs before the call appends.
    """
    if attention_mask is not None and attention_mask.ndim == 2:
        return int(attention_mask.shape[1]) - new_len
    for name in CACHE_KWARGS:
        cache = kwargs.get(name)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    return 0


def _step_mask(
    handle: SteeringHandle,
    tokenizer: Any,
    input_ids: Tensor | None,
    inputs_embeds: Tensor | None,
    attention_mask: Tensor | None,
    past: int,
) -> tuple[Tensor, bool, tuple[int, int]]:
    """The mask of this call's new tokens: (mask, steer_everything, (batch, new_len)).

    A call without a cache starts a new prompt, unless it re-feeds the previous prompt plus more tokens
    (``generate(use_cache=False)``): then the extra tokens are generated tokens. A call with a cache is a
    decoding step; its tokens past the prompt are generated tokens.
    """
    ref = input_ids if input_ids is not None else inputs_embeds
    if ref is None:
        raise SteeringError("the model was called without input_ids or inputs_embeds")
    batch, new_len = int(ref.shape[0]), int(ref.shape[1])
    device = ref.device
    known = handle.prompt_mask
    prompt_ids = handle._prompt_ids
    if past == 0:
        continuation = (
            known is not None
            and prompt_ids is not None
            and input_ids is not None
            and prompt_ids.shape[0] == batch
            and new_len > prompt_ids.shape[1]
            and torch.equal(input_ids[:, : prompt_ids.shape[1]], prompt_ids.to(device))
        )
        if not continuation:
            ids = input_ids
            if ids is None:
                if isinstance(handle.positions, str) and handle.positions == "assistant":
                    raise SteeringError(
                        "positions='assistant' needs input_ids; the model was called with inputs_embeds"
                    )
                ids = torch.zeros(batch, new_len, dtype=torch.long, device=device)
            mask = prompt_position_mask(handle.positions, ids, attention_mask, tokenizer=tokenizer)
            handle._new_prompt = True
            handle.prompt_mask = mask
            handle._prompt_ids = input_ids.detach().clone() if input_ids is not None else None
            return mask, bool(mask.all()), (batch, new_len)
    elif known is None or known.shape[0] != batch:
        if isinstance(handle.positions, Tensor):
            known = handle.positions
        elif handle.positions in ("all", "generated"):
            known = torch.full((batch, past), handle.positions == "all", dtype=torch.bool, device=device)
        else:
            raise SteeringError(
                "a cached decoding step arrived but this steering context never saw the prompt pass; "
                "run the whole forward/generate call inside the `with apply(...)` block"
            )
    assert known is not None
    if known.shape[0] != batch:
        raise ValueError(
            f"position mask has batch {known.shape[0]} but the model was called with batch {batch}"
        )
    # Absolute positions past..past+new_len-1; those beyond the prompt are generated tokens (steered).
    absolute = torch.arange(past, past + new_len, device=device)
    inside = absolute < known.shape[1]
    mask = torch.ones(batch, new_len, dtype=torch.bool, device=device)
    if bool(inside.any()):
        mask[:, inside] = known.to(device)[:, absolute[inside]]
    if attention_mask is not None and attention_mask.ndim == 2:
        mask &= attention_mask[:, past : past + new_len].to(device).bool()
    return mask, bool(mask.all()), (batch, new_len)


@contextmanager
def apply(
    model: nn.Module,
    directions: Any,
    *,
    layers: int | Sequence[int] | str | None = None,
    alpha: float | Mapping[int, float] = 1.0,
    positions: Positions = "assistant",
    operator: Operator | None = None,
    tokenizer: Any = None,
    condition: Condition | None = None,
) -> Iterator[SteeringHandle]:
    """Steer ``model`` inside the ``with`` block; every hook is removed on exit, even after an error.

    Args:
        model: a HF causal LM (or peft wrapper).
        directions: ConceptVector, ``{layer: Tensor(d_model)}`` or one ``Tensor(d_model)`` used at every layer;
            a ``Tensor(batch, d_model)`` at a layer gives each row of the batch its own direction (additive
            operator only; ``steering.generate.generate_steered_responses`` uses it for a sweep's cells).
        layers: layer(s) to steer (negative counts from the end; ``"all"``); default: the vector's layers.
        alpha: coefficient (one number, or ``{layer: alpha}``); must be finite.
        positions: ``"assistant"``, ``"generated"``, ``"all"`` or a bool mask ``(batch, pos)``.
        operator: from :mod:`steering.operators`; default ``add()``.
        tokenizer: needed for ``positions="assistant"`` (or an :class:`AssistantTemplate`).
        condition: steer only the rows whose prompt passes it (``steering.conditions.Condition``, read at a
            layer below every steered layer); the other rows are computed exactly as without steering.

    Yields:
        A :class:`SteeringHandle` describing the intervention (and the last prompt mask used).

    Example:
        >>> with apply(model, v, layers=[6], alpha=4.0, tokenizer=tok) as handle:  # doctest: +SKIP
        ...     out = model.generate(**batch, max_new_tokens=32)
    """
    positions = check_positions(positions)
    layout: AssistantTemplate | None = None
    if isinstance(positions, str) and positions == "assistant":
        if tokenizer is None:
            raise ValueError(
                "positions='assistant' needs tokenizer=... to find the assistant turns; "
                "or pass positions='generated' / 'all' / a bool mask"
            )
        layout = tokenizer if isinstance(tokenizer, AssistantTemplate) else assistant_template(tokenizer)
    op = operator if operator is not None else add()
    if not callable(op):
        raise TypeError(f"operator must be callable (e.g. steering.operators.add()), got {type(op).__name__}")
    by_layer = resolve_directions(model, directions, layers)
    alphas = resolve_alpha(alpha, list(by_layer))
    rowwise = [layer for layer, vec in by_layer.items() if vec.ndim == 2]
    if rowwise and (not is_additive(op) or condition is not None):
        raise ValueError(
            f"one direction per row (layers {rowwise}) works with the additive operator and no condition; "
            "steer the rows one at a time for ablation or conditional steering"
        )
    handle = SteeringHandle(layers=sorted(by_layer), alpha=alphas, positions=positions)
    condition_layer = -1
    if condition is not None:
        condition_layer = check_layer(model, condition.layer)
        if condition_layer >= handle.layers[0]:
            raise ValueError(
                f"the condition is read at layer {condition_layer}, which is not below the steered layers "
                f"{handle.layers}: read it at a lower layer, so it is decided before any steering"
            )
        if condition.vector.shape != (d_model(model),):
            raise ValueError(f"the condition vector has shape {tuple(condition.vector.shape)}; the model needs "
                             f"({d_model(model)},)")  # fmt: skip

    base = unwrap(model)
    template = layer_template(base)
    parent_name = template.partition("{num}")[0].rstrip(".").rpartition(".")[0]
    stack_module = base.get_submodule(parent_name) if parent_name else base
    block_modules = blocks(base)
    cast_cache: dict[tuple[int, torch.device, torch.dtype], Tensor] = {}

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = _first(args, kwargs, "input_ids", 0)
        inputs_embeds = kwargs.get("inputs_embeds")
        attention_mask = _first(args, kwargs, "attention_mask", 1)
        if isinstance(attention_mask, dict):  # some models pass a mapping of prepared masks
            attention_mask = None
        if attention_mask is not None and not isinstance(attention_mask, Tensor):
            attention_mask = None
        ref = input_ids if input_ids is not None else inputs_embeds
        new_len = int(ref.shape[1]) if ref is not None else 0
        past = _past_length(kwargs, attention_mask, new_len)
        handle._new_prompt = False
        mask, steer_all, shape = _step_mask(handle, layout, input_ids, inputs_embeds, attention_mask, past)
        handle._step_mask, handle._step_all, handle._step_shape = mask, steer_all, shape
        handle._attention_mask = attention_mask
        handle.n_calls += 1

    def condition_hook(module: nn.Module, args: tuple, output: Any) -> None:
        assert condition is not None
        if not handle._new_prompt:
            if handle.gate is None:
                raise SteeringError(
                    "a conditional steering context saw a decoding step before its prompt pass"
                )
            return
        hidden = output[0] if isinstance(output, tuple) else output
        scores = row_scores(condition, hidden, handle._attention_mask)
        handle.condition_scores = scores.cpu()
        handle.gate = condition.passes(scores)

    def make_block_hook(layer: int):
        vec = by_layer[layer]
        coef = alphas[layer]

        def block_hook(module: nn.Module, args: tuple, output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            if handle._step_shape is None:
                raise SteeringError(
                    f"block {layer} ran without the model's forward (steering needs the token layout); "
                    "call the whole model inside the `with apply(...)` block"
                )
            if tuple(hidden.shape[:2]) != handle._step_shape:
                raise SteeringError(
                    f"block {layer} output has shape {tuple(hidden.shape)} but the model input was "
                    f"{handle._step_shape}"
                )
            key = (layer, hidden.device, hidden.dtype)
            direction = cast_cache.get(key)
            if direction is None:
                direction = cast_cache[key] = vec.to(device=hidden.device, dtype=hidden.dtype)
            if direction.ndim == 2:  # one direction per row
                if direction.shape[0] != hidden.shape[0]:
                    raise SteeringError(
                        f"layer {layer} has one direction per row for {direction.shape[0]} rows, but the model "
                        f"was called with a batch of {hidden.shape[0]}"
                    )
                direction = direction.unsqueeze(1)
            mask, steer_all = handle._step_mask, handle._step_all
            if handle.gate is not None and mask is not None:  # conditional: only the rows that passed
                mask = mask & handle.gate.to(mask.device).unsqueeze(1)
                steer_all = bool(mask.all())
            if steer_all:
                new = op(hidden, direction, coef)
            elif mask is None or not bool(mask.any()):
                return None
            else:
                new = torch.where(mask.to(hidden.device).unsqueeze(-1), op(hidden, direction, coef), hidden)
            if isinstance(output, tuple):
                return (new, *output[1:])
            return new

        return block_hook

    handles: list[torch.utils.hooks.RemovableHandle] = []
    try:
        handles.append(stack_module.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True))
        for layer in handle.layers:
            handles.append(block_modules[layer].register_forward_hook(make_block_hook(layer), prepend=True))
        if condition is not None:
            handles.append(block_modules[condition_layer].register_forward_hook(condition_hook, prepend=True))
        yield handle
    finally:
        for hook_handle in handles:
            hook_handle.remove()
