"""Grouped-query attention on the CPU without copying the keys and values to every query head.

SmolLM2-135M has 9 query heads and 3 key/value heads, Gemma-3-270M 4 and 1. With an attention mask (every padded
batch, every turn on a KV cache), transformers' ``sdpa`` attention copies the keys and values to every query head
(``repeat_kv``) before calling ``torch.nn.functional.scaled_dot_product_attention``, because on CUDA the masked
grouped-query kernel would fall back to the slow math one. On the CPU, torch's fused kernel takes the grouped heads
and the mask as they are (``enable_gqa=True``) and gives the same numbers bit for bit, without the copies: on a
15-turn evaluation of SmolLM2 the copies were 14 % of the CPU time, and they grow with the cache
(``bench/attention.py`` measures the whole gain).

:func:`install` routes CPU attention without gradients through that kernel: evaluations, rollouts, captures
and steered generation. Anything that records gradients keeps ``repeat_kv``, so training computes exactly what
it computed before (the kernel's gradient would sum the grouped heads in another order), and CUDA is untouched.
:func:`probes.models.load_model` and :func:`probes.models.tiny_model` install it; :func:`uninstall` restores
transformers' own rule (``bench/attention.py`` times both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

try:  # transformers >= 4.48; without it there is nothing to route
    from transformers.integrations import sdpa_attention as _sdpa
except ImportError:  # pragma: no cover - the pinned transformers has it
    _sdpa = None

_ORIGINAL: Callable[..., bool] | None = None


def copy_free(attention_mask: torch.Tensor | None, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether a masked CPU attention call without gradients can take the grouped heads as they are: CPU
    tensors, no gradient recorded, a 4-D mask over more than one query (a single query already avoids the copy
    in transformers), equal key and value head sizes."""
    return (
        key.device.type == "cpu"
        and not torch.is_grad_enabled()
        and attention_mask is not None
        and attention_mask.dim() == 4
        and attention_mask.shape[-2] > 1
        and key.shape[-1] == value.shape[-1]
    )


def _use_gqa_in_sdpa(attention_mask: torch.Tensor | None, key: torch.Tensor, value: torch.Tensor, *args: Any,
                     **kwargs: Any) -> bool:  # fmt: skip
    assert _ORIGINAL is not None
    return copy_free(attention_mask, key, value) or _ORIGINAL(attention_mask, key, value, *args, **kwargs)


def install() -> bool:
    """Route masked CPU attention without gradients through the grouped-query kernel (idempotent). Returns
    whether it is installed (False when this transformers has no ``sdpa_attention.use_gqa_in_sdpa`` to extend, or
    torch is older than 2.5, which has no ``enable_gqa``).
    """
    global _ORIGINAL
    if _sdpa is None or not hasattr(_sdpa, "use_gqa_in_sdpa") or not _torch_has_enable_gqa():
        return False
    if _ORIGINAL is None:
        _ORIGINAL = _sdpa.use_gqa_in_sdpa
        _sdpa.use_gqa_in_sdpa = _use_gqa_in_sdpa
    return True


def _torch_has_enable_gqa() -> bool:
    """``scaled_dot_product_attention(..., enable_gqa=True)`` exists from torch 2.5 on."""
    from packaging.version import Version

    return Version(torch.__version__.split("+")[0]) >= Version("2.5")


def uninstall() -> None:
    """Restore transformers' own rule (copy the keys and values whenever there is a mask)."""
    global _ORIGINAL
    if _sdpa is not None and _ORIGINAL is not None:
        _sdpa.use_gqa_in_sdpa = _ORIGINAL
        _ORIGINAL = None


def installed() -> bool:
    """Whether :func:`install` is in effect."""
    return _ORIGINAL is not None
