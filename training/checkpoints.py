"""Checkpoints (trainable weights, optimizer and RNG states as safetensors + JSON, written atomically),
the final adapter, and loading a run back."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from probes.artifacts import atomic_directory, write_json
from training import distributed as D
from training.config import Args, upgrade_config
from training.policy import Policy, make_policy, merged_model, quiet_peft

CHECKPOINT_FORMAT = 1

# ====================================================================================================
# Checkpoints
# ====================================================================================================


def _python_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": keys.tolist(),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }


def save_checkpoint(
    run_dir: Path, step: int, policy: Policy, optimizer: torch.optim.Optimizer, args: Args
) -> Path:
    """Write ``checkpoints/step_NNNNNN`` atomically (temp dir + rename), then point ``latest.json`` at it.

    Contents: ``trainable.safetensors`` (the trainable weights), ``optimizer.safetensors`` +
    ``optimizer.json`` (AdamW state flattened to tensors + param groups), ``rng.safetensors`` +
    ``rng.json`` (torch, numpy, python RNG states) and ``state.json`` (completed steps, config).
    """
    ctx = policy.ctx
    ckpt_root = run_dir / "checkpoints"
    final = ckpt_root / f"step_{step:06d}"
    # Full tensors on every rank (FSDP gathers its shards: a collective); rank 0 writes them.
    weights = {
        name: D.to_full(p.detach()).to("cpu").contiguous()
        for name, p in policy.trainable_parameters().items()
    }
    tensors, optimizer_meta = D.flatten_optimizer_state(optimizer.state_dict())  # full tensors (FSDP gathers)
    if not ctx.is_main:
        D.barrier(ctx)
        return final

    def fill(tmp: Path) -> None:
        save_file(weights, str(tmp / "trainable.safetensors"))
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(json.dumps(optimizer_meta, indent=1))
        rng_tensors = {"torch_cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, state in enumerate(torch.cuda.get_rng_state_all()):
                rng_tensors[f"torch_cuda_{i}"] = state
        save_file(rng_tensors, str(tmp / "rng.safetensors"))
        (tmp / "rng.json").write_text(
            json.dumps({"python": _python_rng_state(), "numpy": _numpy_rng_state()})
        )
        state = {"format": CHECKPOINT_FORMAT, "step": step, "config": dataclasses.asdict(args)}
        (tmp / "state.json").write_text(json.dumps(state, indent=1, default=str))

    atomic_directory(final, fill)
    write_json(ckpt_root / "latest.json", {"step": step, "path": final.name})
    existing = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in existing[: max(0, len(existing) - args.keep_checkpoints)]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    D.barrier(ctx)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest.json"
    if not pointer.is_file():
        return None
    path = run_dir / "checkpoints" / json.loads(pointer.read_text())["path"]
    return path if path.is_dir() else None


def load_checkpoint(path: Path, policy: Policy, optimizer: torch.optim.Optimizer | None = None) -> int:
    """Restore weights (and optimizer and RNG states when ``optimizer`` is given); return the completed steps."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} has checkpoint format {state.get('format')}; this version reads {CHECKPOINT_FORMAT}"
        )
    weights = load_file(str(path / "trainable.safetensors"))
    params = policy.trainable_parameters()
    missing = sorted(set(params) - set(weights))
    unexpected = sorted(set(weights) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(D.like_param(weights[name], p))  # FSDP: this rank's shard
    if optimizer is not None:
        saved = D.unflatten_optimizer_state(
            load_file(str(path / "optimizer.safetensors")), json.loads((path / "optimizer.json").read_text())
        )
        ordered = [p for group in optimizer.param_groups for p in group["params"]]  # the state's indices
        opt_state: dict[int, dict[str, Any]] = {}
        for index, slots in saved["state"].items():
            param = ordered[int(index)]
            opt_state[int(index)] = {
                name: value
                if not isinstance(value, torch.Tensor) or name == "step" or value.shape != param.shape
                else D.like_param(value, param)  # FSDP: this rank's shard
                for name, value in slots.items()
            }
        optimizer.load_state_dict({"state": opt_state, "param_groups": saved["param_groups"]})
        rng = json.loads((path / "rng.json").read_text())
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        n = rng["numpy"]
        np.random.set_state(
            (n["name"], np.array(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"])
        )
        rng_tensors = load_file(str(path / "rng.safetensors"))
        torch.set_rng_state(rng_tensors["torch_cpu"])
        cuda_states = [rng_tensors[f"torch_cuda_{i}"] for i in range(len(rng_tensors) - 1)]
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    return int(state["step"])


def save_final(run_dir: Path, policy: Policy, args: Args) -> Path:
    """``final/``: the LoRA adapter (peft format) or the full model, plus the tokenizer; written atomically."""
    final = run_dir / "final"
    ctx = policy.ctx
    full_state = None
    if policy.parallel is not None and policy.parallel.strategy == "fsdp":
        full_state, _ = D.full_state_dicts(policy.parallel)  # a collective: every rank
    if not ctx.is_main:
        D.barrier(ctx)
        return final

    def fill(tmp: Path) -> None:
        with quiet_peft():
            policy.model.save_pretrained(str(tmp), safe_serialization=True, state_dict=full_state)
        policy.tokenizer.save_pretrained(str(tmp))
        (tmp / "welfare_axis_run.json").write_text(json.dumps(dataclasses.asdict(args), indent=1))

    atomic_directory(final, fill)
    D.barrier(ctx)
    return final


class RunDirError(FileNotFoundError):
    """The directory is not a usable training run (no config.json, no checkpoints)."""


def load_run_args(run_dir: str | os.PathLike[str]) -> Args:
    """The run's ``Args`` from its ``config.json`` (clear errors when it is not a run directory)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist; pass the --out of a training run")
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise RunDirError(
            f"{run_dir} has no config.json, so it is not a training run directory; pass the --out of a "
            f"run (welfare-axis train --out {run_dir} ...), or its parent if this is a checkpoint folder"
        )
    saved = upgrade_config(json.loads(config_path.read_text()))
    known = {f.name for f in dataclasses.fields(Args)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise ValueError(
            f"{config_path} has settings this version of the trainer does not know: {unknown}; "
            "it was written by another version"
        )
    return Args(**saved)


def load_trained(
    run_dir: str | os.PathLike[str],
    recipe: str | None = None,
    *,
    checkpoint: str | None = None,
    merge: bool = True,
):
    """The trained model and tokenizer of a run (its latest checkpoint, or ``checkpoint``'s directory name),
    or, with ``recipe``, of a model that ships with the toolkit (``training.shipped``).

    With ``merge=True`` LoRA adapters are merged into the weights (a plain HF model, as the probes expect).

    Example:
        >>> model, tok = load_trained("runs/grpo_cpu")  # doctest: +SKIP
        >>> model, tok = load_trained("smollm2-135m-instruct", "tbrm")  # doctest: +SKIP
    """
    if recipe is not None:
        if checkpoint is not None:
            raise ValueError("checkpoint= applies to run directories; a shipped model has one adapter")
        from training.shipped import load_shipped

        return load_shipped(str(run_dir), recipe, merge=merge)
    run_dir = Path(run_dir)
    args = load_run_args(run_dir)
    path = run_dir / "checkpoints" / checkpoint if checkpoint else latest_checkpoint(run_dir)
    if path is None or not path.is_dir():
        raise FileNotFoundError(f"no checkpoint in {run_dir}/checkpoints")
    policy = make_policy(dataclasses.replace(args, kl_coef=0.0, algo="sft"))
    load_checkpoint(path, policy)
    model = merged_model(policy) if merge else policy.model
    model.eval()
    return model, policy.tokenizer
