"""Where activations live: decoder blocks, sites inside them, names, the final norm and the unembedding.

Every other module asks this one for a module path, so architecture differences are handled once.

Sites (TransformerLens names, ``blocks.{l}.hook_{site}``):

- ``resid_post``: the output of decoder block ``l``, i.e. the residual stream after the block. For
  ``l < L-1`` this equals HF ``output_hidden_states[l + 1]``. For the last block HF applies the final
  norm before storing ``hidden_states[L]``; ``resid_post`` at ``L-1`` is the raw block output (as in
  TransformerLens, where ``ln_final`` comes after ``blocks.{L-1}.hook_resid_post``), so
  ``final_norm(model)(resid_post[L-1]) == hidden_states[L]``.
- ``attn_out``: what the attention sub-layer adds to the residual stream. Llama-style blocks add the
  ``self_attn`` output directly. Gemma2/Gemma3 blocks normalise it first (``post_attention_layernorm``), so
  there ``attn_out`` is the output of ``post_attention_layernorm``.
- ``mlp_out``: what the MLP adds to the residual stream: the ``mlp`` output (Llama), or the output of
  ``post_feedforward_layernorm`` (Gemma2/Gemma3).

With these definitions ``resid_post[l] == resid_post[l-1] + attn_out[l] + mlp_out[l]`` for both families.

Block lists are found by matching ``named_modules()`` against templates such as ``"model.layers.{num}"``.
For an unusual architecture set ``model.welfare_axis_layer_template = "path.to.blocks.{num}"``.

Example:
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    ...     num_attention_heads=4, num_key_value_heads=2, vocab_size=100))
    >>> n_layers(model), d_model(model), hook_name(-1 % n_layers(model), "resid_post")
    (2, 64, 'blocks.1.hook_resid_post')
"""

from __future__ import annotations

import re
from typing import Literal, get_args

import torch
from jaxtyping import Float
from torch import Tensor, nn

Site = Literal["resid_post", "attn_out", "mlp_out"]
SITES: tuple[str, ...] = get_args(Site)

LAYER_TEMPLATE_ATTR = "welfare_axis_layer_template"
"""Attribute a user may set on a model to name its decoder blocks, e.g. ``"model.layers.{num}"``."""

# Ordered from most to least specific; the first template that matches a contiguous 0..L-1 run wins.
LAYER_TEMPLATES: tuple[str, ...] = (
    "model.language_model.layers.{num}",  # Gemma3ForConditionalGeneration and other VLM wrappers
    "model.layers.{num}",  # Llama, Gemma, Qwen, Mistral, Phi3, SmolLM2 (HF *ForCausalLM)
    "layers.{num}",  # bare *Model (LlamaModel, Gemma3TextModel)
    "transformer.h.{num}",  # GPT-2, GPT-J, Bloom, Falcon
    "gpt_neox.layers.{num}",  # Pythia / GPT-NeoX
    "model.decoder.layers.{num}",  # OPT
    "transformer.blocks.{num}",  # MPT
)

_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
_NORM_PATHS = (
    "model.language_model.norm",
    "model.norm",
    "norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",
    "transformer.norm_f",
)
_HOOK_NAME = re.compile(r"^blocks\.(\d+)\.hook_(resid_post|attn_out|mlp_out)$")


class LayerResolutionError(ValueError):
    """The decoder blocks (or a site inside them) could not be found for this architecture."""


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying HF model of a peft ``PeftModel`` (or the model itself).

    Hooks placed on the base model's modules fire inside the wrapper's forward, so resolving names on
    the unwrapped model is safe for capture and steering.
    """
    seen = 0
    while hasattr(model, "get_base_model") and seen < 4:
        base = model.get_base_model()
        if base is model:
            break
        model, seen = base, seen + 1
    return model


def _template_blocks(model: nn.Module, template: str) -> list[nn.Module] | None:
    prefix, _, suffix = template.partition("{num}")
    pattern = re.compile("^" + re.escape(prefix) + r"(\d+)" + re.escape(suffix) + "$")
    found: dict[int, nn.Module] = {}
    for name, module in model.named_modules():
        match = pattern.match(name)
        if match:
            found[int(match.group(1))] = module
    if not found or sorted(found) != list(range(len(found))):
        return None
    return [found[i] for i in range(len(found))]


def layer_template(model: nn.Module) -> str:
    """The ``named_modules`` template (with ``{num}``) of the model's decoder blocks.

    Raises:
        LayerResolutionError: no known template matches; the message names the override attribute.
    """
    model = unwrap(model)
    override = getattr(model, LAYER_TEMPLATE_ATTR, None)
    if override is not None:
        if not isinstance(override, str) or "{num}" not in override:
            raise LayerResolutionError(
                f"model.{LAYER_TEMPLATE_ATTR}={override!r} must be a string containing '{{num}}', "
                "e.g. 'model.layers.{num}'"
            )
        if _template_blocks(model, override) is None:
            raise LayerResolutionError(
                f"model.{LAYER_TEMPLATE_ATTR}={override!r} matches no modules numbered 0..L-1 in "
                f"{type(model).__name__}"
            )
        return override
    for template in LAYER_TEMPLATES:
        if _template_blocks(model, template) is not None:
            return template
    raise LayerResolutionError(
        f"could not find the decoder blocks of {type(model).__name__}: none of {list(LAYER_TEMPLATES)} "
        f"matches its named_modules(). Set model.{LAYER_TEMPLATE_ATTR} = '<path>.{{num}}' (for example "
        "'model.layers.{num}') to name them."
    )


def blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks, in order (block ``l`` outputs ``resid_post`` of layer ``l``)."""
    model = unwrap(model)
    found = _template_blocks(model, layer_template(model))
    assert found is not None  # layer_template checked it
    return found


def backbone(model: nn.Module) -> nn.Module:
    """The module that owns the block list and receives ``attention_mask`` (``model.model`` for Llama).

    It is called through ``__call__`` by every ``*ForCausalLM`` forward (also under peft), so a forward
    pre-hook on it sees the inputs.
    """
    model = unwrap(model)
    template = layer_template(model)
    prefix = template.partition("{num}")[0].rstrip(".")  # e.g. "model.layers"
    parent = prefix.rpartition(".")[0]  # e.g. "model"
    return model.get_submodule(parent) if parent else model


def n_layers(model: nn.Module) -> int:
    """Number of decoder blocks ``L``."""
    return len(blocks(model))


def _text_config(model: nn.Module):
    config = getattr(unwrap(model), "config", None)
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        return config.get_text_config()
    return config


def d_model(model: nn.Module) -> int:
    """Width of the residual stream."""
    config = _text_config(model)
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(config, key, None) if config is not None else None
        if isinstance(value, int):
            return value
    embeddings = unwrap(model).get_input_embeddings()  # type: ignore[operator]
    return int(embeddings.weight.shape[1])


def check_layer(model: nn.Module, layer: int) -> int:
    """Validate ``layer`` against the model and normalise negative indices (``-1`` is the last block).

    Raises:
        TypeError: ``layer`` is not an int.
        IndexError: ``layer`` is outside ``[-L, L-1]``; the message names the valid range.
    """
    if isinstance(layer, bool) or not isinstance(layer, int):
        # numpy / torch integer scalars are fine
        if hasattr(layer, "__index__"):
            layer = int(layer.__index__())
        else:
            raise TypeError(f"layer must be an int, got {type(layer).__name__} {layer!r}")
    total = n_layers(model)
    if not -total <= layer < total:
        raise IndexError(
            f"layer {layer} is out of range for {type(unwrap(model)).__name__} with {total} blocks: "
            f"valid layers are 0..{total - 1} (or -{total}..-1 counting from the end)"
        )
    return layer % total


def check_layers(model: nn.Module, layers: int | list[int] | tuple[int, ...] | range | str) -> list[int]:
    """Normalise a layer spec (``"all"``, an int, or a sequence of ints) to a sorted list of unique layers."""
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be 'all', an int or a list of ints, got {layers!r}")
        return list(range(n_layers(model)))
    if isinstance(layers, int):
        return [check_layer(model, layers)]
    out = sorted({check_layer(model, layer) for layer in layers})
    if not out:
        raise ValueError("layers is empty: pass 'all', an int or a non-empty list of ints")
    return out


def check_site(site: str) -> Site:
    """Validate a site name."""
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}: choose one of {list(SITES)}")
    return site  # type: ignore[return-value]


def _child(block: nn.Module, names: tuple[str, ...], what: str) -> nn.Module:
    for name in names:
        child = getattr(block, name, None)
        if isinstance(child, nn.Module):
            return child
    raise LayerResolutionError(
        f"{type(block).__name__} has none of the {what} sub-modules {list(names)}; capture at "
        "site='resid_post' instead, or add the name to probes.layers"
    )


def site_module(model: nn.Module, layer: int, site: str = "resid_post") -> nn.Module:
    """The module whose forward output (first element when it returns a tuple) is ``site`` at ``layer``.

    Example:
        >>> site_module(model, 0, "mlp_out")  # doctest: +SKIP
        LlamaMLP(...)
    """
    site = check_site(site)
    block = blocks(model)[check_layer(model, layer)]
    if site == "resid_post":
        return block
    if site == "attn_out":
        post_norm = getattr(block, "post_attention_layernorm", None)
        # Gemma2/3 name their post-attention output norm "post_attention_layernorm" and also have a
        # "pre_feedforward_layernorm"; in Llama "post_attention_layernorm" is the *input* norm of the MLP.
        if isinstance(post_norm, nn.Module) and hasattr(block, "pre_feedforward_layernorm"):
            return post_norm
        return _child(block, _ATTN_NAMES, "attention")
    post_ff = getattr(block, "post_feedforward_layernorm", None)
    if isinstance(post_ff, nn.Module):
        return post_ff
    return _child(block, _MLP_NAMES, "MLP")


def hook_name(layer: int, site: str = "resid_post") -> str:
    """TransformerLens name of a site: ``hook_name(3, "resid_post") == "blocks.3.hook_resid_post"``."""
    site = check_site(site)
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(
            f"hook_name needs a non-negative int layer (normalise with check_layer), got {layer!r}"
        )
    return f"blocks.{layer}.hook_{site}"


def parse_hook_name(name: str) -> tuple[int, Site]:
    """Inverse of :func:`hook_name`: ``"blocks.3.hook_mlp_out" -> (3, "mlp_out")``."""
    match = _HOOK_NAME.match(name)
    if not match:
        raise ValueError(f"{name!r} is not a hook name of the form 'blocks.{{l}}.hook_{{{'|'.join(SITES)}}}'")
    return int(match.group(1)), match.group(2)  # type: ignore[return-value]


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied after the last block and before the unembedding (``ln_final`` in TransformerLens)."""
    model = unwrap(model)
    modules = dict(model.named_modules())
    for path in _NORM_PATHS:
        if path in modules:
            return modules[path]
    raise LayerResolutionError(
        f"could not find the final norm of {type(model).__name__}; looked for {list(_NORM_PATHS)}"
    )


def unembed(model: nn.Module) -> Float[Tensor, "d_model d_vocab"]:
    """``W_U`` in TransformerLens orientation: ``logits = final_norm(resid) @ W_U``.

    This is a transposed view of the output embedding weight (no copy); ``tied`` embeddings are shared.
    """
    model = unwrap(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or not hasattr(head, "weight"):
        raise LayerResolutionError(
            f"{type(model).__name__} has no output embedding (lm_head) to unembed with"
        )
    return head.weight.T


def output_logits(model: nn.Module, hidden: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_vocab"]:
    """The model's logits from final-norm hidden states (a decoder's ``last_hidden_state``): its output head,
    then Gemma's final logit soft-capping where the config has one, as the model's own forward applies them.
    Callers pass only the positions they need, so the vocabulary never multiplies the whole batch."""
    model = unwrap(model)
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def model_name(model: nn.Module) -> str:
    """The model's name for provenance: ``config.welfare_axis_name`` (set by ``probes.models``), else the
    checkpoint it was loaded from (``name_or_path``), else its class name."""
    model = unwrap(model)
    config = getattr(model, "config", None)
    name = (
        getattr(config, "welfare_axis_name", None)
        or getattr(model, "name_or_path", None)
        or getattr(config, "_name_or_path", None)
    )
    return str(name) if name else type(model).__name__


def model_dtype(model: nn.Module) -> str:
    """The dtype of the model's floating-point weights, e.g. ``"float32"`` (``""`` for a model without any).

    Recorded in every vector's provenance: activations of one checkpoint differ by ~1e-2 between float32
    and bfloat16 weights, so numbers are only comparable at the same dtype.
    """
    for param in unwrap(model).parameters():
        if param.is_floating_point():
            return str(param.dtype).removeprefix("torch.")
    return ""


def model_family(model: nn.Module) -> str:
    """Architecture fingerprint ``"{model_type}/L{n_layers}/d{d_model}"``.

    Checkpoints of one base model (maze-naive and RL-trained, LoRA-merged or not) share it; vectors
    are only meaningful inside one family.
    """
    config = _text_config(model)
    model_type = getattr(config, "model_type", None) or type(unwrap(model)).__name__
    return f"{model_type}/L{n_layers(model)}/d{d_model(model)}"
