"""Episode logs: save and load an :class:`~training.rollout.EpisodeBatch` compactly.

A log is two files next to each other: ``NAME.safetensors`` (the tensors, in the smallest exact integer
types) and ``NAME.json`` (seeds, chat messages, maze config, sampling settings, your extra metadata).
Each file is written atomically (temp file + ``os.replace``), the tensors first, and both carry the same
random ``save_id``, so a reader never mixes halves of two different saves without being told.

Example:
    >>> import tempfile, pathlib
    >>> from probes.models import tiny_model
    >>> from maze_env import MazeConfig
    >>> from training.rollout import collect_episodes
    >>> model, tok = tiny_model("llama")
    >>> batch = collect_episodes(model, tok, seeds=[0, 1], config=MazeConfig(n_turns=2))
    >>> path = save_episodes(batch, pathlib.Path(tempfile.mkdtemp()) / "step_000001", extra={"step": 1})
    >>> path.name
    'step_000001.safetensors'
    >>> again = load_episodes(path)
    >>> bool((again.actions == batch.actions).all()), read_episode_info(path)["extra"]
    (True, {'step': 1})
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from maze_env.config import MazeConfig
from probes.artifacts import atomic_write
from training.rollout import EpisodeBatch

__all__ = ["EPISODES_FORMAT", "EpisodeLogError", "load_episodes", "read_episode_info", "save_episodes"]

EPISODES_FORMAT = "welfare-axis-episodes"
_VERSION = 1

# Stored dtype of every tensor (all values fit exactly); loaded back as the EpisodeBatch dtype.
_STORED: dict[str, torch.dtype] = {
    "input_ids": torch.int32,
    "action_positions": torch.int32,
    "actions": torch.uint8,
    "logprobs": torch.float32,
    "direction_logits": torch.float32,
    "rewards": torch.float32,
    "delta_gold": torch.uint8,
    "delta_mold": torch.uint8,
    "neighbours": torch.uint8,
    "wind": torch.int8,
}
_LOADED: dict[str, torch.dtype] = {
    name: (torch.float32 if dtype.is_floating_point else torch.long) for name, dtype in _STORED.items()
}


class EpisodeLogError(ValueError):
    """An episode log is missing, corrupt, of another format, or its two files come from different saves."""


def _paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    base = os.fspath(path)
    for suffix in (".safetensors", ".json"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return Path(base + ".safetensors"), Path(base + ".json")


def save_episodes(
    batch: EpisodeBatch, path: str | os.PathLike[str], *, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``batch`` to ``PATH.safetensors`` + ``PATH.json`` (a ``.safetensors`` suffix on ``path`` is optional).

    Args:
        batch: the episodes.
        path: the log name, e.g. ``runs/x/episodes/step_000010``.
        extra: JSON-serialisable metadata stored alongside (step number, run name, ...).

    Returns:
        The path of the ``.safetensors`` file.
    """
    if not isinstance(batch, EpisodeBatch):
        raise TypeError(f"batch must be an EpisodeBatch; got {type(batch).__name__}")
    tensor_path, json_path = _paths(path)
    save_id = uuid.uuid4().hex
    lengths = batch.attention_mask.sum(1)
    if not bool(
        (batch.attention_mask == (torch.arange(batch.attention_mask.shape[1]) < lengths[:, None])).all()
    ):
        raise ValueError("attention_mask must be right padding (ones then zeros) to be stored as lengths")
    tensors = {
        name: getattr(batch, name).detach().cpu().to(dtype).contiguous() for name, dtype in _STORED.items()
    }
    tensors["lengths"] = lengths.to(torch.int32)
    info = {
        "format": EPISODES_FORMAT,
        "version": _VERSION,
        "save_id": save_id,
        "n_episodes": len(batch),
        "n_turns": batch.n_turns,
        "seeds": list(batch.seeds),
        "temperature": batch.temperature,
        "greedy": batch.greedy,
        "direction_token_ids": list(batch.direction_token_ids),
        "pad_token_id": batch.pad_token_id,
        "model_name": batch.model_name,
        "config": batch.config.to_dict(),
        "summary": batch.summary(),
        "extra": extra or {},
        "messages": batch.messages,
    }
    text = json.dumps(info, ensure_ascii=False, indent=1)
    metadata = {"format": EPISODES_FORMAT, "version": str(_VERSION), "save_id": save_id}
    atomic_write(tensor_path, lambda p: save_file(tensors, str(p), metadata=metadata))
    atomic_write(json_path, lambda p: p.write_text(text, encoding="utf-8"))
    return tensor_path


def read_episode_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON half of a log: seeds, messages, config, summary, ``extra``."""
    _, json_path = _paths(path)
    try:
        info = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EpisodeLogError(f"no episode log at {json_path}") from None
    except json.JSONDecodeError as error:
        raise EpisodeLogError(f"{json_path} is not valid JSON: {error}") from error
    if info.get("format") != EPISODES_FORMAT:
        raise EpisodeLogError(f"{json_path} is not a {EPISODES_FORMAT} file (format={info.get('format')!r})")
    if info.get("version") != _VERSION:
        raise EpisodeLogError(
            f"{json_path} has version {info.get('version')!r}; this reader handles {_VERSION}"
        )
    return info


def load_episodes(path: str | os.PathLike[str]) -> EpisodeBatch:
    """Read a log written by :func:`save_episodes` back into an equal :class:`EpisodeBatch` (on the CPU)."""
    tensor_path, json_path = _paths(path)
    info = read_episode_info(path)
    if not tensor_path.is_file():
        raise EpisodeLogError(f"{json_path} exists but its tensors {tensor_path} are missing")
    from safetensors import safe_open

    try:
        with safe_open(str(tensor_path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        stored = load_file(str(tensor_path))
    except Exception as error:  # safetensors raises its own error types for corrupt files
        raise EpisodeLogError(f"{tensor_path} is not a readable safetensors file: {error}") from error
    if metadata.get("save_id") != info["save_id"]:
        raise EpisodeLogError(
            f"{tensor_path} and {json_path} come from different saves "
            f"(save_id {metadata.get('save_id')!r} vs {info['save_id']!r}); the log was overwritten mid-save"
        )
    missing = sorted((set(_STORED) | {"lengths"}) - set(stored))
    if missing:
        raise EpisodeLogError(f"{tensor_path} lacks tensors {missing}")
    tensors = {name: stored[name].to(dtype) for name, dtype in _LOADED.items()}
    width = tensors["input_ids"].shape[1]
    attention_mask = (torch.arange(width)[None, :] < stored["lengths"].long()[:, None]).long()
    return EpisodeBatch(
        **tensors,
        attention_mask=attention_mask,
        seeds=[int(s) for s in info["seeds"]],
        messages=info["messages"],
        temperature=float(info["temperature"]),
        greedy=bool(info["greedy"]),
        direction_token_ids=[int(i) for i in info["direction_token_ids"]],
        pad_token_id=int(info["pad_token_id"]),
        config=MazeConfig.from_dict(info["config"]),
        model_name=str(info["model_name"]),
    )
