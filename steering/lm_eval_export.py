"""Export a ConceptVector for lm-evaluation-harness's ``steered`` model type, and read such files back.

lm-eval (``lm_eval/models/hf_steered.py``, ``--model steered --model_args pretrained=...,steer_path=F.pt``)
reads a ``.pt`` dict ``{hookpoint: {"steering_vector", "steering_coefficient", "action", "bias",
"head_index"}}`` and, for ``action="add"``, adds ``steering_coefficient * steering_vector`` to the output of the
module named ``hookpoint`` inside ``model.base_model`` at **every position** (prompt and generated tokens).
``to_lm_eval`` writes one entry per layer:

- hookpoint: the decoder block ``l`` relative to ``base_model`` (``layers.{l}`` for Llama, SmolLM2, Gemma 3,
  Qwen, Mistral; derived from the model when one is given), i.e. our ``resid_post`` at layer ``l``;
- ``steering_vector``: the direction as stored (float32, norm kept), ``steering_coefficient``: ``alpha``
  (one number or ``{layer: alpha}``), ``action``: ``"add"``, ``bias`` and ``head_index``: ``None``.

So lm-eval's steered forward equals ``steering.apply(model, v, layers=..., alpha=..., positions="all")``
(tested on a tiny model through lm-eval itself). lm-eval also has ``action="clamp"`` (set the projection on
the unit direction to the coefficient); ours has no exact counterpart, so only ``"add"`` is written.

A ``.pt`` file is a pickle: we write it only because lm-eval reads nothing else, with plain tensors, floats,
strings and ``None`` only, so ``torch.load(path, weights_only=True)`` reads it (``read_lm_eval`` does exactly
that, never a full unpickle). Our own vectors stay in safetensors + JSON (``ConceptVector.save``).

Example:
    >>> import tempfile, torch
    >>> from probes.concept_vector import ConceptVector
    >>> v = ConceptVector({3: torch.ones(4)}, concept="Gold")
    >>> path = to_lm_eval(v, tempfile.mkdtemp() + "/gold.pt", alpha=2.0)
    >>> config = read_lm_eval(path)
    >>> sorted(config), config["layers.3"]["steering_coefficient"], config["layers.3"]["action"]
    (['layers.3'], 2.0, 'add')
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probes.artifacts import write_bytes
from probes.concept_vector import ConceptVector
from probes.layers import check_layer, d_model, layer_template, unwrap

DEFAULT_HOOKPOINT = "layers.{num}"
ENTRY_KEYS = ("steering_vector", "steering_coefficient", "action", "bias", "head_index")


class LmEvalExportError(ValueError):
    """The vector, layers or coefficient cannot be written as an lm-eval steer file."""


def hookpoint_template(model: nn.Module | None = None) -> str:
    """The decoder blocks' module names relative to ``model.base_model`` (what lm-eval hooks), with ``{num}``.

    Without a model: ``"layers.{num}"`` (Llama, SmolLM2, Gemma 3, Qwen, Mistral ``*ForCausalLM``).
    """
    if model is None:
        return DEFAULT_HOOKPOINT
    hf = unwrap(model)
    template = layer_template(hf)
    prefix = getattr(hf, "base_model_prefix", "")
    if prefix and hasattr(hf, prefix) and template.startswith(prefix + "."):
        return template[len(prefix) + 1 :]
    return template


def to_lm_eval(
    vector: ConceptVector,
    path: str | os.PathLike[str],
    *,
    alpha: float | Mapping[int, float] = 1.0,
    layers: int | Sequence[int] | None = None,
    model: nn.Module | None = None,
) -> Path:
    """Write ``vector`` at ``layers`` (default: all of its layers) as lm-eval's steer ``.pt`` file, atomically.

    Args:
        vector: the directions (their norms are kept: lm-eval adds ``alpha * vector`` as is).
        path: output ``.pt`` (lm-eval dispatches on the ``.pt``/``.pth`` suffix).
        alpha: the steering coefficient, one number or ``{layer: alpha}``.
        layers: the layers to write; negative counts from the end when ``model`` is given.
        model: the model the file is for: checks the layers and the width, and names the hookpoints.

    Raises:
        LmEvalExportError: a wrong suffix, a missing layer, a non-finite coefficient, a width mismatch.
    """
    path = Path(path)
    if path.suffix not in (".pt", ".pth"):
        raise LmEvalExportError(f"{path}: lm-eval reads steer files ending in .pt or .pth; rename it")
    if not isinstance(vector, ConceptVector):
        raise LmEvalExportError(f"to_lm_eval takes a ConceptVector, got {type(vector).__name__}")
    if layers is None:
        chosen = list(vector.layers)
    else:
        chosen = [layers] if isinstance(layers, int) else list(layers)
    if model is not None:
        chosen = [check_layer(model, layer) for layer in chosen]
        vector.check_family(model)
        width = d_model(model)
        if vector.d_model != width:
            raise LmEvalExportError(f"the vector has width {vector.d_model}; the model needs {width}")
    if not chosen:
        raise LmEvalExportError("no layers to write: pass layers=... or a vector with at least one layer")
    missing = [layer for layer in chosen if layer not in vector.directions]
    if missing:
        raise LmEvalExportError(f"the vector has no direction at layers {missing}; it has {vector.layers}")
    template = hookpoint_template(model)
    config: dict[str, dict[str, Any]] = {}
    for layer in chosen:
        coefficient = alpha[layer] if isinstance(alpha, Mapping) else alpha
        if isinstance(coefficient, bool) or not math.isfinite(float(coefficient)):
            raise LmEvalExportError(f"alpha at layer {layer} must be a finite number, got {coefficient!r}")
        config[template.format(num=layer)] = {
            "steering_vector": vector.directions[layer].detach().to(torch.float32).cpu().contiguous(),
            "steering_coefficient": float(coefficient),
            "action": "add",
            "bias": None,
            "head_index": None,
        }
    buffer = io.BytesIO()
    torch.save(config, buffer)
    return write_bytes(path, buffer.getvalue())


def read_lm_eval(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Read an lm-eval steer ``.pt`` with ``torch.load(weights_only=True)`` and check its entries.

    Raises:
        LmEvalExportError: not a dict of hookpoint entries with the keys lm-eval reads.
    """
    config = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(config, dict):
        raise LmEvalExportError(f"{path}: expected a dict {{hookpoint: entry}}, got {type(config).__name__}")
    for hookpoint, entry in config.items():
        if not isinstance(entry, dict) or "steering_vector" not in entry or "action" not in entry:
            raise LmEvalExportError(
                f"{path}: entry {hookpoint!r} needs at least 'steering_vector' and 'action' (has "
                f"{sorted(entry) if isinstance(entry, dict) else type(entry).__name__})"
            )
    return config
