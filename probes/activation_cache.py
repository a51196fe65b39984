"""A disk cache of class activations, keyed by the model's weights and by everything the capture read.

Reading out several training seeds of one configuration extracts the *untrained* model's activations on
the same scripted trajectories every time: the trajectories' maze seed is fixed (the paper's), only the
train/held-out split follows the study's seed. On SmolLM2-135M at 150 trajectories per class that
extraction is about 9 minutes of 2 CPU cores, repeated identically by every seed and by its tile-swap
seeds' untrained model too (per tile set). :func:`cached_class_activations` stores it once.

The key is a sha256 over

- the model's **weights**: every parameter and buffer, by name, dtype, shape and bytes
  (:func:`weights_fingerprint`; a LoRA adapter's weights included, so a trained model has its own entry);
- the **rendered texts** of every class, in order (``probes.extract.classes_hash``), and the tokenizer
  (:func:`tokenizer_fingerprint`);
- the **capture settings**: layers, site, position, ``close_final``, batch size (padding within a batch
  moves the last float bits);
- the **numerics**: torch version, device type, CPU capability and thread count (a kernel or a reduction
  order that differs may move the last bits).

A hit therefore returns exactly what the capture would return on this machine; anything else recomputes.
Entries are ``<key>.safetensors`` (one tensor ``<class>.<layer>`` each) and ``<key>.json`` (what the key
was made of), written atomically; deleting the folder at any time is safe. Only plain local models in eval
mode with the hooks backend and a named or indexed position are cached (nnsight / remote models, models in
train mode, custom position rules and ``meta`` weights are always captured).

The default folder is ``$WELFARE_AXIS_ACTIVATION_CACHE``, else ``$WELFARE_AXIS_CACHE/activations``, else
``~/.cache/welfare-axis/activations``. Its size is small beside the models: 31 MB for SmolLM2 at 150 per
class (450 trajectories × 30 layers × 576 floats).

Example:
    >>> from probes.models import tiny_model
    >>> model, _ = tiny_model("llama")
    >>> len(weights_fingerprint(model))
    64
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from probes.artifacts import atomic_write, write_json

ACTIVATION_CACHE_ENV_VAR = "WELFARE_AXIS_ACTIVATION_CACHE"
FORMAT_VERSION = 1


def default_activation_cache_dir() -> Path:
    """``$WELFARE_AXIS_ACTIVATION_CACHE``, else ``$WELFARE_AXIS_CACHE/activations``, else
    ``~/.cache/welfare-axis/activations``."""
    own = os.environ.get(ACTIVATION_CACHE_ENV_VAR)
    if own:
        return Path(own).expanduser()
    from probes.models import toolkit_cache_dir

    return toolkit_cache_dir() / "activations"


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every parameter and buffer of ``model`` (name, dtype, shape, bytes), in name order.

    About 1 s per 500 MB of weights on one CPU core. Raises ``ValueError`` for weights on the ``meta``
    device (nothing to hash).
    """
    digest = hashlib.sha256()
    named = sorted([*model.named_parameters(), *model.named_buffers()], key=lambda item: item[0])
    for name, tensor in named:
        if tensor.device.type == "meta":
            raise ValueError(f"{name} is on the meta device: its weights cannot be fingerprinted")
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(memoryview(data.reshape(-1).view(torch.uint8).numpy()))
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any, sample: str) -> str:
    """sha256 over the tokenizer's class, vocabulary, special tokens, padding side and its ids for ``sample``
    (which catches normalisation and pre-tokenisation rules the vocabulary does not show)."""
    record = {
        "class": type(tokenizer).__name__,
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "padding_side": getattr(tokenizer, "padding_side", None),
        "sample": list(tokenizer(sample, add_special_tokens=False)["input_ids"]),
    }
    return hashlib.sha256(json.dumps(record, separators=(",", ":")).encode()).hexdigest()


def numerics() -> dict[str, Any]:
    """What may move the last bits of a forward pass on this machine (part of every key)."""
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def cacheable(model: nn.Module, backend: str, position: Any) -> bool:
    """Whether a capture with these arguments is cached: a plain local model in eval mode (in train mode dropout
    may make each capture differ), the hooks backend, a named or indexed position."""
    if backend != "hooks" or not (isinstance(position, str) or type(position) is int) or model.training:
        return False
    if hasattr(model, "_module") or type(model).__module__.startswith("nnsight"):
        return False
    return not any(p.device.type == "meta" for p in model.parameters())


def cache_key(model: nn.Module, parts: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(sha256 hex, the JSON-able record it was made of)`` for a capture of ``model`` described by ``parts``."""
    device = next(model.parameters()).device.type
    record = {
        "format": FORMAT_VERSION,
        "weights": weights_fingerprint(model),
        "device": device,
        **numerics(),
        **dict(parts),
    }
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest(), record


def cached_class_activations(
    cache_dir: str | os.PathLike[str],
    model: nn.Module,
    parts: Mapping[str, Any],
    compute: Callable[[], dict[str, dict[int, Tensor]]],
    *,
    progress: bool = False,
) -> dict[str, dict[int, Tensor]]:
    """``{class: {layer: (n, d_model)}}`` from the cache under ``cache_dir`` if ``model`` and ``parts`` match
    an entry, else ``compute()`` stored there first.

    ``parts`` must name everything besides the weights and numerics that the activations depend on, as
    JSON-able values, among them ``classes`` (names, in the order returned) and ``layers`` (the layer
    indices); ``probes.extract.extract_class_activations`` adds the rendered texts' hash, the tokenizer, the
    site, position, ``close_final`` and batch size. An entry whose tensors do not match its record is
    recomputed.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    key, record = cache_key(model, parts)
    folder = Path(cache_dir).expanduser()
    tensors_path, record_path = folder / f"{key}.safetensors", folder / f"{key}.json"
    if tensors_path.is_file() and record_path.is_file():
        try:
            same = json.loads(record_path.read_text()) == json.loads(json.dumps(record))
            flat = load_file(str(tensors_path)) if same else None
        except (OSError, ValueError, RuntimeError, SafetensorError):  # unreadable: recompute, overwrite below
            flat = None
        expected = {f"{cls}.{layer}" for cls in record["classes"] for layer in record.get("layers", [])}
        if flat is not None and set(flat) == expected:
            if progress:
                print(f"activations: read from the cache ({tensors_path})", flush=True)
            out: dict[str, dict[int, Tensor]] = {}
            for name, tensor in flat.items():
                cls, layer = name.rsplit(".", 1)
                out.setdefault(cls, {})[int(layer)] = tensor
            order = list(record["classes"])  # the caller's class order, layers ascending
            return {cls: dict(sorted(out[cls].items())) for cls in order}
    result = compute()
    flat = {
        f"{cls}.{layer}": rows.clone() for cls, by_layer in result.items() for layer, rows in by_layer.items()
    }
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(tensors_path, lambda tmp: save_file(flat, str(tmp)))
        write_json(record_path, record)
    except OSError as err:  # a cache that cannot be written must not cost the capture just made
        warnings.warn(
            f"activation cache not written ({err}); the activations are used as captured. Point "
            f"${ACTIVATION_CACHE_ENV_VAR} at a writable folder, or turn the cache off (activation_cache=False)",
            stacklevel=2,
        )
    return result
