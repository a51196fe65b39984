"""Train a language model in the maze: Dr. GRPO, GRPO, REINFORCE, RLOO, PPO, TBRM, SFT, Iterative-SFT.

One cleanrl-style loop that reads in the order of the maths: seeding → model (+ LoRA) → for each step:
``# ROLLOUT`` (one batch of fresh seeded mazes; the episodes of a group share a maze) → ``# ADVANTAGES``
→ ``# UPDATE`` → ``# LOG`` (+ checkpoint). The algorithm is a config value.

Losses (``maze_env.losses``; the paper's App. Q): for the policy-gradient family the per-decision loss
is the dual-clip PPO surrogate minus ``β(s)·H_eq`` (equalized entropy) plus ``κ·k3`` (KL to the
reference), aggregated with "seq-mean-token-sum" over a constant ``Z``; ``β(s)`` and the learning
rate share the cosine annealing multiplier. The policy is the softmax over the four direction tokens,
at the sampling temperature (exactly the distribution the action-masked sampler draws from). The
reference policy is the LoRA adapter switched off (``with model.disable_adapter():``), or a frozen
copy for full fine-tuning. With ``curriculum_turns``/``curriculum_steps`` the first steps play shorter
episodes (more of them, the same decisions per step); evaluation always plays ``n_turns``.

========================  =============================================================================
algo                      advantage / loss
========================  =============================================================================
``dr_grpo`` (paper)       ``A_i = R_i − mean_group(R)`` broadcast to every decision; dual-clip surrogate
``grpo``                  ``(R_i − mean) / (std + 1e-4)`` within the group
``reinforce`` (paper)     token-level: returns-to-go minus the per-position group baseline
``rloo``                  ``R_i − mean_{j≠i} R_j`` broadcast to every decision
``ppo``                   token-level advantages as ``reinforce``, whitened over the batch; several
                          epochs of minibatch updates with the (single) clip; critic-free
``tbrm``                  squared trajectory Bellman residual with logits as Q (+ ReVal calibration)
``sft``                   cross-entropy on the expert's letters (``maze_env.expert_data``), or with
                          ``sft_targets="best"`` on every direction its planner rates best, equally
``iterative_sft``         each step: sample on-policy, keep the best ``keep_fraction`` of every group,
                          cross-entropy on their letters (RAFT / "Retaining by Doing" §4.2)
========================  =============================================================================

Run it:

    welfare-axis train --preset cpu --algo sft --out runs/sft_cpu      # learns the maze in ~14 min on 2 cores
    welfare-axis train --preset cpu --algo dr_grpo --out runs/grpo_cpu
    python -m maze_env.train --model smollm2-135m-instruct --algo sft --steps 50 --out runs/sft
    welfare-axis train --out runs/grpo_cpu --preset cpu --algo dr_grpo --resume   # continue exactly

A run directory holds ``config.json`` (every argument), ``metrics.jsonl`` (one line per step),
``checkpoints/step_NNNNNN/`` (trainable weights, optimizer state and RNG states as safetensors + JSON;
never pickle; written atomically), ``final/`` (a LoRA adapter or full model loadable with
:func:`load_trained`) and ``eval.json`` (held-out evaluation before and after training).

Example:
    >>> args = Args(model="tiny-llama", steps=1, episodes_per_step=2, group_size=2, n_turns=2,
    ...             maze_size=12, out=str(tmp) + "/run", progress=False)  # doctest: +SKIP
    >>> result = main(args)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from maze_env import distributed as D
from maze_env import losses as L
from maze_env.config import MazeConfig
from maze_env.dynamics import ACTIONS
from maze_env.episodes import save_episodes
from maze_env.expert_data import expert_episodes
from maze_env.rollout import EpisodeBatch, action_logits, collect_episodes, distinct_rows
from maze_env.top_layers import assemble, capture_below, supports_top_layers, top_action_logits
from welfare_axis.artifacts import atomic_write, write_json

Algo = Literal["dr_grpo", "grpo", "reinforce", "rloo", "ppo", "tbrm", "sft", "iterative_sft"]
ALGOS: tuple[str, ...] = ("dr_grpo", "grpo", "reinforce", "rloo", "ppo", "tbrm", "sft", "iterative_sft")
POLICY_GRADIENT = ("dr_grpo", "grpo", "reinforce", "rloo", "ppo")
HELDOUT_BASE_SEED = 3_000_000_000
"""Held-out evaluation mazes use seeds ``HELDOUT_BASE_SEED + i``; training seeds are all below 2**31."""
TINY_MODELS = ("tiny-llama", "tiny-gemma3")
CHECKPOINT_FORMAT = 1

__all__ = [
    "ALGOS",
    "HELDOUT_BASE_SEED",
    "PRESETS",
    "PRESET_ALGO_OVERRIDES",
    "Args",
    "EvalResult",
    "NonFiniteLossError",
    "Policy",
    "RunResult",
    "compare_evals",
    "evaluate",
    "heldout_seeds",
    "load_checkpoint",
    "RunDirError",
    "load_run_args",
    "load_trained",
    "main",
    "make_optimizer",
    "make_policy",
    "maze_config",
    "save_checkpoint",
    "train_seeds",
    "train_step",
]


# ====================================================================================================
# Config
# ====================================================================================================


@dataclass
class Args:
    """Every setting of a training run; saved as ``config.json`` next to the outputs."""

    # --- run ---
    out: str = "runs/maze"
    """Run directory (config.json, metrics.jsonl, checkpoints/, final/, eval.json)."""
    algo: Algo = "dr_grpo"
    """Algorithm: dr_grpo (paper), grpo, reinforce (paper's token-level), rloo, ppo, tbrm, sft, iterative_sft."""
    model: str = "smollm2-135m-instruct"
    """A probes.models.load_model name or path, or tiny-llama / tiny-gemma3 (random tiny model, for tests)."""
    preset: str | None = None
    """The preset these defaults came from (``--preset cpu``); recorded for provenance."""
    seed: int = 0
    """Seeds torch/numpy/python, the training mazes and the sampling."""
    steps: int = 100
    """Optimizer steps (rollout + update rounds) of the whole run."""
    resume: bool = False
    """Continue the run in ``out`` from its latest checkpoint (the config must match)."""
    stop_at_step: int | None = None
    """End this invocation after this many completed steps (with a checkpoint), as if interrupted."""
    device: str = "auto"
    """auto (CUDA if available), cpu, cuda, cuda:N."""
    threads: int = 2
    """torch CPU threads."""
    autocast: bool | None = None
    """bfloat16 autocast for rollouts and updates (weights stay float32). None: the device's rule, on for
    CUDA and off on CPU (``probes.models.resolve_autocast``; never by timing). The run resolves it before
    writing ``config.json``, which records ``true``/``false``. ``--autocast`` opts a CPU in (about 2x
    faster on AVX512-BF16/AMX CPUs, about 100x slower on AVX2-only ones)."""
    progress: bool = True
    """Show a tqdm progress bar."""

    # --- policy ---
    finetune: Literal["lora", "full"] = "lora"
    """LoRA adapters (reference = adapter off) or full fine-tuning (reference = frozen copy)."""
    lora_r: int = 32
    """LoRA rank (paper: 32)."""
    lora_alpha: int = 64
    """LoRA alpha (paper: 64)."""
    lora_targets: tuple[str, ...] = ("all-linear",)
    """LoRA target module names, or all-linear (paper: all linear layers)."""
    lora_layers: int | None = None
    """Put LoRA only on the top N decoder layers (None: all). Backward then stops at the lowest adapted layer."""
    init_from: str | None = None
    """A run directory whose latest checkpoint's trainable weights start this run: a warm start (e.g. RL
    after an SFT run with the same LoRA settings). The optimizer, schedules and step count start fresh;
    the reference policy stays the base model."""
    reuse_rollout_activations: bool = True
    """With lora_layers set (Llama-family models), feed the update the rollout's activations below the
    adapted layers instead of recomputing the frozen ones (checked every step against the rollout's logits)."""

    # --- optimisation ---
    lr: float = 3e-6
    """Peak learning rate (paper: 3e-6 for Dr. GRPO on Qwen3-4B); annealed with the cosine multiplier."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping (global norm)."""
    anneal_steps: int | None = None
    """S of the cosine schedule (None: steps)."""
    anneal_fraction: float = 1.0
    """f of the cosine schedule β(s) = β₀·½(1+cos(π·min(s/(S−1)·f, 1))); the lr uses it with S+1 (never 0)."""

    # --- rollout ---
    episodes_per_step: int = 64
    """Episodes per step (the batch)."""
    group_size: int = 8
    """Episodes per group (same maze seed); must divide episodes_per_step."""
    temperature: float = 0.7
    """Sampling temperature (paper: 0.7); the trained policy is softmax(direction logits / temperature)."""
    rollout_batch_size: int | None = None
    """Episodes per rollout forward pass (None: all at once)."""
    rollout_shards: int = 1
    """The step's episodes are collected in this many group-aligned blocks, each with its own sampling
    generator. Under torchrun every rank collects ``rollout_shards / WORLD_SIZE`` of them, so the world
    size must divide it; the run (and a resume) is the same on any such world size."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Multi-process training (torchrun / accelerate launch): ddp (replicated weights, all-reduced
    gradients) or fsdp (FSDP2: sharded weights, gradients and optimizer state). Unused in one process."""
    micro_batch_size: int = 4
    """Episodes per training forward/backward (gradient accumulation)."""
    update_epochs: int | None = None
    """Passes over each batch (None: 4 for ppo, 1 otherwise). Used by the policy-gradient algorithms and by
    tbrm (off-policy: its residual has no importance ratio, so a batch's rows can be revisited); SFT makes
    one pass."""
    minibatches: int = 1
    """Optimizer steps per pass (ppo-style minibatching); must divide the batch."""

    # --- loss ---
    clip_eps: float = 0.2
    """PPO clip range ε (paper 0.2)."""
    dual_clip: float | None = 3.0
    """Dual-clip constant c for negative advantages (paper 3.0; None: off). ppo uses the plain clip."""
    entropy_coef: float = 0.01
    """β₀ of the equalized entropy bonus (paper 0.01 for Dr. GRPO, 0.2 for REINFORCE); 0 turns it off."""
    kl_coef: float = 0.0
    """κ of the k3 KL penalty to the reference (the paper does not state it); > 0 costs a reference pass."""
    loss_z: float = 2048.0
    """Z of the seq-mean-token-sum normalisation (paper 2048)."""
    gamma: float = 1.0
    """Discount of the returns-to-go of reinforce and ppo (paper: 1)."""
    tbrm_beta: float = 10.0
    """TBRM's KL-regularisation coefficient β (returns are divided by it)."""
    tbrm_reval: bool = True
    """ReVal calibration for TBRM: use V_θ(s_1) − V_ref(s_1), so zero reward keeps the reference policy."""

    # --- SFT ---
    expert_horizon: int = 6
    """Look-ahead of the expert planner that writes the SFT demonstrations."""
    sft_targets: Literal["expert", "best"] = "expert"
    """SFT targets: the expert's letters, or ``best``: every direction the expert's planner rates best,
    equally (the expectation of its random tie-break, without the noise). Only ``sft`` uses it."""
    keep_fraction: float = 0.25
    """Iterative-SFT: fraction of each group's episodes (highest returns) kept as training data."""

    # --- maze ---
    n_turns: int = 15
    """Turns per episode (paper 15); evaluation always plays this many."""
    curriculum_turns: int | None = None
    """Episode length of the first ``curriculum_steps`` training steps (None: no curriculum). It must divide
    ``n_turns``; those steps play ``n_turns // curriculum_turns`` times as many episodes (and micro-batches
    that many times larger), so every step trains on the same number of decisions."""
    curriculum_steps: int = 0
    """Training steps played at ``curriculum_turns`` turns before the episodes grow to ``n_turns``."""
    curriculum_scale: int | None = None
    """How many times ``episodes_per_step`` episodes a curriculum step plays (None: ``n_turns //
    curriculum_turns``, the same number of decisions as a full step). Groups sharing a first prompt
    feed it once, so a single-turn step costs about ``1/group_size`` per episode: a larger scale buys
    RL more distinct states for the same time."""
    wind_prob: float = 0.1
    """Wind probability per turn (paper 0.1)."""
    tiles: str = "office"
    """Tile glyph preset: office, swap, shuffle."""
    maze_size: int = 100
    """Grid side (paper 100)."""

    # --- logging, checkpoints, evaluation ---
    checkpoint_every: int = 10
    """Save a checkpoint every N steps (and always after the last step)."""
    keep_checkpoints: int = 2
    """Keep this many most recent checkpoints (older ones are deleted)."""
    eval_episodes: int = 0
    """Held-out mazes evaluated before and after training (0: no evaluation)."""
    eval_before: bool = True
    """Also evaluate the untrained model (the same for every run with this model, maze and eval settings)."""
    eval_chunk_size: int | None = None
    """Play the held-out mazes this many at a time (None: all at once); bounds the evaluation's KV cache
    (~60 MB per 15-turn SmolLM2-135M episode). Part of the evaluation's definition: it picks the draws."""
    eval_greedy: bool = False
    """Evaluate with argmax moves instead of sampling at ``temperature``."""
    eval_every: int = 0
    """Also evaluate every N steps during training (0: never)."""
    log_episodes: bool = True
    """Write every step's episodes and every evaluation's to ``out/episodes/`` (safetensors + JSON: messages,
    token ids, actions, per-turn rewards, log-probs; ``maze_env.episodes.load_episodes`` reads them back)."""


PRESETS: dict[str, dict[str, Any]] = {
    # 2 CPU cores, SmolLM2-135M-Instruct, LoRA on the top 8 layers. The RL algorithm is TBRM: from the
    # untrained model it learns the maze in 15.6 minutes of training (6 single-turn steps of 192 states,
    # PRESET_ALGO_OVERRIDES), +25.5 return on 64 held-out mazes (4.1 SE paired, 3.0 unpaired). Dr. GRPO
    # does not learn from scratch at this size (its policy gradient collapses onto one direction before
    # the model reads the tiles); it learns from an SFT warm start (--init-from). SFT: 12 steps of 240
    # decisions, 8 single-turn then 4 of 15 turns, +36.6. All measured in docs/training_results.md.
    "cpu": {
        "algo": "tbrm",
        "model": "smollm2-135m-instruct",
        "lora_r": 16,
        "lora_alpha": 32,
        "lora_layers": 8,
        "lr": 5e-4,
        "anneal_fraction": 0.5,
        "temperature": 1.0,
        "steps": 12,
        "episodes_per_step": 16,
        "group_size": 8,
        "n_turns": 15,
        "curriculum_turns": 1,
        "curriculum_steps": 8,
        "micro_batch_size": 4,
        "minibatches": 4,
        "entropy_coef": 1.0,
        "kl_coef": 0.0,
        "sft_targets": "best",
        "checkpoint_every": 4,
        "eval_episodes": 64,
        "eval_chunk_size": 32,
    },
}


PRESET_ALGO_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {
        # SFT's targets are exact, so it takes a 4x larger step than RL's noisy advantages allow
        "sft": {"lr": 2e-3, "minibatches": 16},
        # TBRM reads the tiles after about 50 updates of 24 single-turn states (docs/diagnostics/
        # bandit_curve.py): 6 steps of 192 states (groups of 8), each revisited 3 times in 8 minibatches,
        # is 144 updates; β 5 lets the policy move e^(r/5) away from the reference
        "tbrm": {
            "steps": 6,
            "curriculum_steps": 6,
            "curriculum_scale": 96,
            "minibatches": 8,
            "update_epochs": 3,
            "lr": 2e-3,
            "tbrm_beta": 5.0,
            "entropy_coef": 0.0,
        },
    },
}
"""Per-algorithm values of a preset, applied on top of :data:`PRESETS` for that algorithm."""


def preset_args(name: str, *, per_algorithm: bool = True, **overrides: Any) -> Args:
    """``Args`` with a preset's values (and, with ``per_algorithm``, its values for the chosen algorithm),
    then ``overrides``.

    Example:
        >>> preset_args("cpu", algo="sft").lora_layers
        8
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    algo = overrides.get("algo", PRESETS[name].get("algo", Args.algo))
    per_algo = PRESET_ALGO_OVERRIDES.get(name, {}).get(algo, {}) if per_algorithm else {}
    return Args(**{**PRESETS[name], **per_algo, "preset": name, **overrides})


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


def validate(args: Args) -> Args:
    """Raise a clear error for any bad setting; return ``args`` unchanged."""
    if args.algo not in ALGOS:
        raise ValueError(f"unknown algo {args.algo!r}; choose one of {', '.join(ALGOS)}")
    _check_positive_int("steps", args.steps)
    _check_positive_int("episodes_per_step", args.episodes_per_step)
    _check_positive_int("group_size", args.group_size)
    _check_positive_int("micro_batch_size", args.micro_batch_size)
    _check_positive_int("minibatches", args.minibatches)
    _check_positive_int("checkpoint_every", args.checkpoint_every)
    _check_positive_int("keep_checkpoints", args.keep_checkpoints)
    _check_positive_int("threads", args.threads)
    _check_positive_int("expert_horizon", args.expert_horizon)
    _check_positive_int("eval_episodes", args.eval_episodes, 0)
    if args.eval_chunk_size is not None:
        _check_positive_int("eval_chunk_size", args.eval_chunk_size)
    _check_positive_int("eval_every", args.eval_every, 0)
    if args.update_epochs is not None:
        _check_positive_int("update_epochs", args.update_epochs)
    if args.anneal_steps is not None:
        _check_positive_int("anneal_steps", args.anneal_steps)
    if args.stop_at_step is not None:
        _check_positive_int("stop_at_step", args.stop_at_step)
    if args.episodes_per_step % args.group_size:
        raise ValueError(
            f"group_size={args.group_size} does not divide episodes_per_step={args.episodes_per_step}; "
            f"use a multiple, e.g. episodes_per_step={args.group_size * math.ceil(args.episodes_per_step / args.group_size)}"
        )
    _check_positive_int("rollout_shards", args.rollout_shards)
    shard_unit = args.rollout_shards * (1 if args.algo == "sft" else args.group_size)
    if args.episodes_per_step % shard_unit:
        raise ValueError(
            f"episodes_per_step={args.episodes_per_step} must be a multiple of rollout_shards × group_size = "
            f"{shard_unit} (each shard holds whole groups)"
        )
    if args.parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel must be 'ddp' or 'fsdp'; got {args.parallel!r}")
    if args.episodes_per_step % args.minibatches:
        raise ValueError(
            f"minibatches={args.minibatches} must divide episodes_per_step={args.episodes_per_step}"
        )
    if args.algo in ("grpo", "rloo") and args.group_size < 2:
        raise ValueError(f"algo={args.algo} needs group_size >= 2; got {args.group_size}")
    for name in ("lr", "temperature", "loss_z", "tbrm_beta"):
        value = getattr(args, name)
        if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0; got {value!r}")
    if not 0.0 <= args.gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1]; got {args.gamma}")
    for name in ("entropy_coef", "kl_coef", "weight_decay", "max_grad_norm", "anneal_fraction", "clip_eps"):
        value = getattr(args, name)
        if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    if args.sft_targets not in ("expert", "best"):
        raise ValueError(f"sft_targets must be 'expert' or 'best'; got {args.sft_targets!r}")
    if not 0.0 < args.keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1]; got {args.keep_fraction}")
    if args.finetune == "lora":
        _check_positive_int("lora_r", args.lora_r)
        _check_positive_int("lora_alpha", args.lora_alpha)
        if args.lora_layers is not None:
            _check_positive_int("lora_layers", args.lora_layers)
    elif args.finetune != "full":
        raise ValueError(f"finetune must be 'lora' or 'full'; got {args.finetune!r}")
    _check_positive_int("curriculum_steps", args.curriculum_steps, 0)
    if args.curriculum_turns is None:
        for name, value in (
            ("curriculum_steps", args.curriculum_steps or None),
            ("curriculum_scale", args.curriculum_scale),
        ):
            if value is not None:
                raise ValueError(
                    f"{name}={value} needs curriculum_turns (the short episodes' length), e.g. --curriculum-turns 1"
                )
    else:
        _check_positive_int("curriculum_turns", args.curriculum_turns)
        if args.curriculum_scale is not None:
            _check_positive_int("curriculum_scale", args.curriculum_scale)
        if args.n_turns % args.curriculum_turns:
            divisors = [d for d in range(1, args.n_turns + 1) if args.n_turns % d == 0]
            raise ValueError(
                f"curriculum_turns={args.curriculum_turns} must divide n_turns={args.n_turns} so every step has "
                f"the same number of decisions; choose one of {divisors}"
            )
    maze_config(args)  # validates the maze overrides
    return args


def maze_config(args: Args) -> MazeConfig:
    """The maze rules of a run."""
    from maze_env import config_for_preset

    return config_for_preset(args.tiles, n_turns=args.n_turns, wind_prob=args.wind_prob, size=args.maze_size)


def step_turns(args: Args, step: int) -> tuple[int, int]:
    """``(turns, scale)`` of training step ``step``: its episode length and how many times
    ``episodes_per_step`` episodes it plays (the curriculum's short steps play more, shorter episodes).

    Example:
        >>> a = Args(n_turns=15, curriculum_turns=1, curriculum_steps=2)
        >>> step_turns(a, 1), step_turns(a, 2)
        ((1, 15), (15, 1))
    """
    if args.curriculum_turns is not None and step < args.curriculum_steps:
        return args.curriculum_turns, args.curriculum_scale or args.n_turns // args.curriculum_turns
    return args.n_turns, 1


def _scaled_for_step(args: Args, step: int) -> Args:
    """``args`` with the batch sizes of step ``step``: a curriculum step plays ``scale`` times as many
    episodes, in ``scale`` times larger micro-batches (see :func:`step_turns`)."""
    _, scale = step_turns(args, step)
    if scale == 1:
        return args
    rollout = None if args.rollout_batch_size is None else args.rollout_batch_size * scale
    return dataclasses.replace(
        args,
        episodes_per_step=args.episodes_per_step * scale,
        micro_batch_size=args.micro_batch_size * scale,
        rollout_batch_size=rollout,
    )


def _update_epochs(args: Args) -> int:
    """Passes over a batch: SFT makes one; the policy gradients and TBRM (off-policy) make ``update_epochs``."""
    if args.algo in ("sft", "iterative_sft"):
        return 1
    if args.update_epochs is not None:
        return args.update_epochs
    return 4 if args.algo == "ppo" else 1


# ====================================================================================================
# Seeds
# ====================================================================================================


def train_seeds(seed: int, step: int, n_groups: int, group_size: int) -> list[int]:
    """Maze seeds of one training step: ``n_groups`` fresh mazes, each repeated ``group_size`` times.

    Drawn from ``SeedSequence([seed, step])`` below 2**31, so disjoint from :func:`heldout_seeds`.

    Example:
        >>> s = train_seeds(0, 3, n_groups=2, group_size=2)
        >>> s[0] == s[1] and s[2] == s[3] and s[0] != s[2]
        True
    """
    state = np.random.SeedSequence([int(seed), int(step), 0x3A2E]).generate_state(n_groups, np.uint32)
    mazes = [int(x) % (2**31) for x in state]
    return [m for m in mazes for _ in range(group_size)]


def heldout_seeds(n: int, base: int = HELDOUT_BASE_SEED) -> list[int]:
    """Seeds of ``n`` held-out evaluation mazes (never used for training)."""
    _check_positive_int("n", n)
    return [base + i for i in range(n)]


def _sampling_generator(
    seed: int, step: int, device: torch.device, shard: int | None = None
) -> torch.Generator:
    """A fresh generator per step and rollout shard (a pure function, so resume needs no state for it)."""
    key = [int(seed), int(step), 0x5A4D] + ([] if shard is None else [int(shard)])
    state = np.random.SeedSequence(key).generate_state(2, np.uint32)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return gen


# ====================================================================================================
# Model
# ====================================================================================================


@dataclass
class Policy:
    """The trained model, its tokenizer, and (for full fine-tuning) a frozen reference copy."""

    model: nn.Module
    tokenizer: Any
    reference: nn.Module | None = None
    is_lora: bool = True
    parallel: D.ParallelModel | None = None
    """Set by :func:`main` under torch.distributed: differentiable calls go through it (DDP/FSDP)."""

    @property
    def ctx(self) -> D.DistContext:
        return self.parallel.ctx if self.parallel is not None else D.DistContext()

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(model, *args)``: through DDP/FSDP when parallel (gradients all-reduced), else directly."""
        if self.parallel is not None:
            return self.parallel(fn, *args, **kwargs)
        return fn(self.model, *args, **kwargs)

    def call_no_grad(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(model, *args)`` without gradients (FSDP: full parameters gathered for the call)."""
        if self.parallel is not None:
            return self.parallel.rollout(fn, *args, **kwargs)
        with torch.no_grad():
            return fn(self.model, *args, **kwargs)

    @contextlib.contextmanager
    def reference_model(self) -> Iterator[nn.Module]:
        """The reference policy: the adapter switched off (LoRA) or the frozen copy (full fine-tuning)."""
        if self.is_lora:
            with self.model.disable_adapter():
                yield self.model
        else:
            if self.reference is None:
                raise RuntimeError("full fine-tuning without a reference copy (kl_coef=0 and not tbrm)")
            yield self.reference

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}


def _needs_reference(args: Args) -> bool:
    return args.kl_coef > 0 or args.algo == "tbrm"


def load_base_model(args: Args) -> tuple[nn.Module, Any]:
    """The untrained model and tokenizer (float32 weights; ``tiny-*`` names give random tiny models)."""
    from probes.models import load_model, resolve_device, tiny_model

    if args.model in TINY_MODELS:
        model, tokenizer = tiny_model(args.model.removeprefix("tiny-"), seed=args.seed)
        return model.to(resolve_device(args.device)), tokenizer
    return load_model(args.model, device=args.device, dtype="float32")


def _lora_layer_indices(model: nn.Module, top: int | None) -> list[int] | None:
    if top is None:
        return None
    n_layers = int(model.config.num_hidden_layers)
    if top > n_layers:
        raise ValueError(f"lora_layers={top} exceeds the model's {n_layers} decoder layers")
    return list(range(n_layers - top, n_layers))


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    """peft reads ``model.is_gradient_checkpointing``, which transformers 5 deprecates with a
    FutureWarning on every call; silence that one message (others still show)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


def make_policy(args: Args, model: nn.Module | None = None, tokenizer: Any = None) -> Policy:
    """Load the model (unless given) and add LoRA adapters or prepare full fine-tuning."""
    if model is None:
        model, tokenizer = load_base_model(args)
    if args.finetune == "full":
        reference = None
        if _needs_reference(args):
            reference = copy.deepcopy(model).eval()
            reference.requires_grad_(False)
        model.requires_grad_(True)
        model.train()
        return Policy(model, tokenizer, reference=reference, is_lora=False)
    from peft import LoraConfig, get_peft_model

    targets = list(args.lora_targets)
    if targets == [
        "all-linear"
    ]:  # every linear layer of the decoder blocks (peft's "all-linear" minus the head)
        targets = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, m in model.named_modules()
                if isinstance(m, nn.Linear) and ".layers." in name
            }
        )
    layers = _lora_layer_indices(model, args.lora_layers)
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=0.0,
        target_modules=targets,
        layers_to_transform=layers,
        layers_pattern="layers" if layers is not None else None,
        bias="none",
    )
    with torch.random.fork_rng(devices=[]), _quiet_peft():
        torch.manual_seed(args.seed)  # LoRA A init: a pure function of the seed
        peft_model = get_peft_model(model, config)
    peft_model.train()
    return Policy(peft_model, tokenizer, is_lora=True)


def make_optimizer(policy: Policy, args: Args) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (LoRA adapters or all weights)."""
    params = list(policy.trainable_parameters().values())
    if not params:
        raise RuntimeError("the model has no trainable parameters")
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay, betas=(0.9, 0.999), eps=1e-8)


def use_autocast(args: Args, model: nn.Module) -> bool:
    """Whether this run's forwards use bfloat16 autocast: ``args.autocast`` under the device's rule."""
    from probes.models import resolve_autocast

    return resolve_autocast(args.autocast, next(model.parameters()).device)


def _autocast(args: Args, model: nn.Module):
    device = next(model.parameters()).device
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_autocast(args, model))


# ====================================================================================================
# Update
# ====================================================================================================


_DRIFT_TOLERANCE = 0.5
"""Max |logit difference| between the update's first pass and the rollout (bf16 rounding stays far below)."""


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN/inf; the step was not applied."""


def compute_advantages(episodes: EpisodeBatch, args: Args, ctx: D.DistContext | None = None) -> torch.Tensor:
    """``(batch, turn)`` advantages of the policy-gradient algorithms (ppo whitens over the global batch)."""
    returns = episodes.returns.double()
    n_turns = episodes.n_turns
    if args.algo == "dr_grpo":
        adv = L.dr_grpo_advantages(returns, args.group_size)[:, None].expand(-1, n_turns)
    elif args.algo == "grpo":
        adv = L.group_advantages(returns, args.group_size, scale="std")[:, None].expand(-1, n_turns)
    elif args.algo == "rloo":
        adv = L.rloo_advantages(returns, args.group_size)[:, None].expand(-1, n_turns)
    elif args.algo == "reinforce":
        adv = L.reinforce_advantages(episodes.rewards.double(), args.group_size, gamma=args.gamma)
    elif args.algo == "ppo":
        mask = torch.ones_like(episodes.rewards, dtype=torch.float64)
        adv = D.whiten_global(
            L.reinforce_advantages(episodes.rewards.double(), args.group_size, gamma=args.gamma),
            mask,
            ctx or D.DistContext(),
        )
    else:
        raise ValueError(f"algo {args.algo!r} has no advantages")
    return adv.float().contiguous()


def top_layer_start(policy: Policy, args: Args) -> int | None:
    """The first adapted layer when the update may reuse the rollout's activations below it, else None."""
    if not (args.reuse_rollout_activations and policy.is_lora and args.lora_layers):
        return None
    if args.algo == "sft" or not supports_top_layers(policy.model):
        return None
    start = int(policy.model.config.num_hidden_layers) - args.lora_layers
    return start if start >= 1 else None


def _policy_logits(
    model: nn.Module, chunk: EpisodeBatch, hidden: torch.Tensor | None, start: int | None
) -> torch.Tensor:
    """Direction logits of every decision of ``chunk``; rows whose decisions read the same tokens (a
    single-turn group: only the sampled letter after the last decision differs) are run once."""
    shared = distinct_rows(
        [
            [*chunk.input_ids[i, :end].tolist(), *chunk.attention_mask[i, :end].tolist()]
            for i, end in enumerate((chunk.action_positions[:, -1] + 1).tolist())
        ]
    )
    if shared is not None:
        first, inverse = shared
        logits = _policy_logits(model, chunk.select(first), None if hidden is None else hidden[first], start)
        return logits[inverse.to(logits.device)]
    if hidden is None or start is None:
        return action_logits(model, chunk)
    return top_action_logits(model, hidden, chunk, start)


def _reference_logits(
    policy: Policy, episodes: EpisodeBatch, args: Args, hidden: torch.Tensor | None, start: int | None
) -> torch.Tensor:
    """Reference-policy direction logits for every decision (no grad)."""
    parts = []
    with torch.no_grad(), policy.reference_model() as ref:
        for first in range(0, len(episodes), args.micro_batch_size):
            rows = list(range(first, min(first + args.micro_batch_size, len(episodes))))
            chunk = episodes.select(rows)
            with _autocast(args, ref):
                part = None if hidden is None else hidden[rows]
                if ref is policy.model:  # the adapter switched off: the same (possibly sharded) weights
                    logits = policy.call_no_grad(_policy_logits, chunk, part, start)
                else:
                    logits = _policy_logits(ref, chunk, part, start)
            parts.append(logits.float().cpu())
    return torch.cat(parts)


def top_episode_rows(episodes: EpisodeBatch, group_size: int, keep_fraction: float) -> torch.Tensor:
    """Iterative-SFT's filter: rows of the ``ceil(keep_fraction·G)`` highest-return episodes of every group."""
    returns = L._grouped(episodes.returns, group_size)  # (n_groups, G)
    k = max(1, math.ceil(keep_fraction * group_size - 1e-9))
    order = torch.argsort(-returns, dim=1, stable=True)[:, :k]
    return (order + torch.arange(returns.shape[0])[:, None] * group_size).flatten().sort().values


def select_top_episodes(episodes: EpisodeBatch, group_size: int, keep_fraction: float) -> EpisodeBatch:
    """The episodes of :func:`top_episode_rows`."""
    return episodes.select(top_episode_rows(episodes, group_size, keep_fraction))


def _micro_loss(
    policy: Policy,
    chunk: EpisodeBatch,
    extras: dict[str, torch.Tensor],
    args: Args,
    entropy_coef: float,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Loss of one micro-batch (mean over its episodes), its direction logits and its statistics."""
    with _autocast(args, policy.model):
        # (b, T, 4); through DDP/FSDP when distributed, so backward all-reduces the gradients
        logits = policy.call(_policy_logits, chunk, extras.get("hidden"), extras.get("start"))
    logits = logits.float()
    mask = torch.ones(logits.shape[:2])
    actions = chunk.actions.to(logits.device)
    stats: dict[str, float] = {}
    if args.algo in ("sft", "iterative_sft"):
        if args.algo == "sft" and args.sft_targets == "best":  # expert batches hold the planner's Q-values
            loss = L.sft_best_set_loss(logits, chunk.direction_logits)
        else:
            loss = L.sft_loss(logits, actions)
        stats["accuracy"] = float((logits.argmax(-1) == actions).float().mean())
        stats["entropy"] = float(L.policy_entropy(logits.detach(), args.temperature).mean())
        return loss, logits.detach(), stats
    mask = mask.to(logits.device)
    entropy_eq = L.equalized_entropy(logits, chunk.neighbours.to(logits.device), temperature=args.temperature)
    if args.algo == "tbrm":
        logp = L.direction_logprobs(logits, actions)  # temperature 1: logits are Q
        ref = extras["ref_logits"].to(logits.device)
        logp_ref = L.direction_logprobs(ref, actions)
        v_ref = L.state_values(ref)[:, 0] if args.tbrm_reval else None
        residual = L.tbrm_residuals(
            logp,
            logp_ref,
            chunk.returns.to(logits.device),
            L.state_values(logits)[:, 0],
            beta=args.tbrm_beta,
            v_ref_first=v_ref,
        )
        loss = (residual**2).mean() - entropy_coef * L.seq_mean_token_sum(entropy_eq, mask, args.loss_z)
        stats["residual"] = float(residual.detach().abs().mean())
        stats["kl"] = float(L.k3_kl(logp.detach(), logp_ref).mean())
    else:
        logp = L.direction_logprobs(logits, actions, args.temperature)
        per_token, clipped = L.clipped_surrogate(
            logp,
            chunk.logprobs.to(logits.device),
            extras["advantages"].to(logits.device),
            clip_eps=args.clip_eps,
            dual_clip=None if args.algo == "ppo" else args.dual_clip,
        )
        stats["pg_loss"] = float(L.seq_mean_token_sum(per_token.detach(), mask, args.loss_z))
        stats["clip_frac"] = float(clipped.mean())
        per_token = per_token - entropy_coef * entropy_eq
        if args.kl_coef > 0:
            logp_ref = L.direction_logprobs(extras["ref_logits"].to(logits.device), actions, args.temperature)
            kl = L.k3_kl(logp, logp_ref)
            per_token = per_token + args.kl_coef * kl
            stats["kl"] = float(kl.detach().mean())
        loss = L.seq_mean_token_sum(per_token, mask, args.loss_z)
        stats["ratio"] = float(torch.exp(logp.detach() - chunk.logprobs.to(logits.device)).mean())
    stats["entropy"] = float(L.policy_entropy(logits.detach(), args.temperature).mean())
    stats["entropy_eq"] = float(entropy_eq.detach().mean())
    return loss, logits.detach(), stats


def train_step(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    episodes: EpisodeBatch,
    args: Args,
    step: int,
    *,
    hidden: torch.Tensor | None = None,
) -> dict[str, float]:
    """One update on ``episodes`` (advantages, epochs, minibatches, micro-batches); returns its statistics.

    The entropy coefficient is annealed with ``L.cosine_multiplier(step, S, f)`` (the paper's schedule) and
    the learning rate with ``L.cosine_multiplier(step, S + 1, f)``, which stays above 0 at the last step.
    ``hidden`` (from :mod:`maze_env.top_layers`) holds the rollout's activations entering the first
    adapted layer; with it only the adapted layers are run. For on-policy episodes the first pass's
    logits are compared with the rollout's (``logit_drift``, the max absolute difference).

    Raises:
        NonFiniteLossError: the loss or the gradient norm is NaN/inf (nothing is applied).
        RuntimeError: the reused activations do not reproduce the rollout's logits.
    """
    ctx = policy.ctx
    total = args.anneal_steps or args.steps
    multiplier = L.cosine_multiplier(step, total, args.anneal_fraction)
    # The lr follows the same cosine over one more point, so the final step still learns (the paper's
    # multiplier is exactly 0 at s = S − 1, which made the last step a no-op).
    lr = args.lr * L.cosine_multiplier(step, total + 1, args.anneal_fraction)
    entropy_coef = args.entropy_coef * multiplier
    for group in optimizer.param_groups:
        group["lr"] = lr

    start_layer = top_layer_start(policy, args) if hidden is not None else None
    if start_layer is None:
        hidden = None

    # ADVANTAGES
    extras_all: dict[str, torch.Tensor] = {}
    if args.algo in POLICY_GRADIENT:
        extras_all["advantages"] = compute_advantages(episodes, args, ctx)
    if _needs_reference(args) and args.algo not in ("sft", "iterative_sft"):
        extras_all["ref_logits"] = _reference_logits(policy, episodes, args, hidden, start_layer)
    if hidden is not None:
        extras_all["hidden"] = hidden
    on_policy = not episodes.greedy  # sampled by this policy (expert demos are greedy)
    drift = 0.0

    # UPDATE
    policy.model.train()
    params = list(policy.trainable_parameters().values())
    n = len(episodes)
    epochs = _update_epochs(args)
    minibatches = min(args.minibatches, n)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    losses, grad_norms = [], []
    for epoch in range(epochs):
        for mb in range(minibatches):
            rows = list(range(mb * n // minibatches, (mb + 1) * n // minibatches))
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for start in range(0, len(rows), args.micro_batch_size):
                idx = rows[start : start + args.micro_batch_size]
                chunk = episodes.select(idx)
                extras: dict[str, Any] = {k: v[idx] for k, v in extras_all.items()}
                extras["start"] = start_layer
                loss, logits, stats = _micro_loss(policy, chunk, extras, args, entropy_coef)
                if epoch == 0 and mb == 0 and on_policy:  # weights still equal the rollout's
                    drift = max(drift, float((logits.cpu() - chunk.direction_logits).abs().max()))
                if D.global_count(float(not bool(torch.isfinite(loss.detach()))), ctx) > 0:  # on any rank
                    raise NonFiniteLossError(f"loss is {float(loss.detach())} at step {step}")
                (loss * (len(idx) / len(rows))).backward()
                total += float(loss.detach()) * len(idx) / len(rows)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
                    counts[k] = counts.get(k, 0) + len(idx)
            if epoch == 0 and mb == 0 and hidden is not None and drift > _DRIFT_TOLERANCE:
                raise RuntimeError(
                    f"the update pass fed the rollout's cached activations gives logits {drift:.3g} away from the "
                    "rollout's own; the rollout's chunking changed? Run with --no-reuse-rollout-activations"
                )
            grad_norm = torch.nn.utils.clip_grad_norm_(
                params, args.max_grad_norm if args.max_grad_norm > 0 else float("inf")
            )
            grad_norm = D.to_full(grad_norm)  # FSDP: a DTensor
            if not torch.isfinite(grad_norm):
                raise NonFiniteLossError(f"gradient norm is {float(grad_norm)} at step {step}")
            optimizer.step()
            losses.append(total)
            grad_norms.append(float(grad_norm))
    optimizer.zero_grad(set_to_none=True)
    out = {k: sums[k] / counts[k] for k in sums}
    out["loss"] = float(np.mean(losses))
    out = D.mean_metrics(out, ctx, weight=n)  # global means over ranks (unchanged in one process)
    out.update(
        grad_norm=float(np.mean(grad_norms)),  # of the all-reduced gradient: the same on every rank
        lr=lr,
        entropy_coef=entropy_coef,
        update_tokens=int(D.global_count(episodes.n_tokens * epochs, ctx)),
        autocast=use_autocast(args, policy.model),
        top_layers_only=hidden is not None,
    )
    if on_policy:
        out["logit_drift"] = max(D.gather_objects(drift, ctx) or [drift]) if ctx.distributed else drift
    return out


# ====================================================================================================
# Evaluation
# ====================================================================================================


@dataclass(frozen=True)
class EvalResult:
    """Held-out performance: mean return ± standard error and Gold/Mold entries per episode."""

    n_episodes: int
    mean_return: float
    stderr_return: float
    gold_per_episode: float
    mold_per_episode: float
    stderr_gold: float
    stderr_mold: float
    action_freq: dict[str, float]
    greedy: bool
    temperature: float
    returns: list[float] = field(repr=False)
    gold: list[int] = field(repr=False)
    mold: list[int] = field(repr=False)
    seeds: list[int] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        return (
            f"return {self.mean_return:+.2f} ± {self.stderr_return:.2f} (SE), gold {self.gold_per_episode:.2f} "
            f"± {self.stderr_gold:.2f}, mold {self.mold_per_episode:.2f} ± {self.stderr_mold:.2f} "
            f"per episode over {self.n_episodes} held-out mazes"
        )


def _stderr(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    seeds: Sequence[int],
    *,
    config: MazeConfig | None = None,
    temperature: float = 0.7,
    greedy: bool = False,
    sample_seed: int = 0,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    autocast: bool | None = None,
    log_path: str | os.PathLike[str] | None = None,
) -> EvalResult:
    """Play one held-out maze per seed and summarise.

    By default the policy is evaluated as it is trained and run: sampling at ``temperature`` from the
    action-masked distribution, with a sampling generator seeded by ``sample_seed`` (so two models
    evaluated with the same seeds see the same mazes and the same random numbers: a paired comparison).
    ``greedy=True`` takes the argmax direction instead (the untrained SmolLM2 then always answers N).
    Standard errors are ``std(ddof=1)/sqrt(n)`` over episodes. ``log_path`` also saves the episodes there
    (``maze_env.episodes.save_episodes``). ``chunk_size`` plays the mazes that many at a time, one chunk
    after another, so the KV cache holds only one chunk (15-turn episodes of SmolLM2-135M: ~60 MB each).
    Each chunk draws its wind and later clause orders from its own first seed, so results depend on it.

    Example:
        >>> result = evaluate(model, tok, heldout_seeds(64))  # doctest: +SKIP
        >>> result.line()  # doctest: +SKIP
        'return -75.31 ± 4.12 (SE), gold 1.20 ± 0.15, mold 9.02 ± 0.40 per episode over 64 held-out mazes'
    """
    seeds = [int(s) for s in seeds]
    if chunk_size is not None:
        _check_positive_int("chunk_size", chunk_size)
    generator = torch.Generator().manual_seed(int(sample_seed))
    step = chunk_size or len(seeds)
    episodes = EpisodeBatch.cat(
        [
            collect_episodes(
                model,
                tokenizer,
                seeds=seeds[first : first + step],
                config=config,
                temperature=temperature,
                generator=generator,
                greedy=greedy,
                autocast=autocast,
                batch_size=batch_size,
            )
            for first in range(0, len(seeds), step)
        ]
    )
    if log_path is not None:
        save_episodes(episodes, log_path, extra={"eval": True, "sample_seed": int(sample_seed)})
    returns = episodes.returns.double().numpy()
    gold = episodes.delta_gold.sum(1).numpy()
    mold = episodes.delta_mold.sum(1).numpy()
    counts = np.bincount(episodes.actions.flatten().numpy(), minlength=4)
    return EvalResult(
        n_episodes=len(seeds),
        mean_return=float(returns.mean()),
        stderr_return=_stderr(returns),
        gold_per_episode=float(gold.mean()),
        mold_per_episode=float(mold.mean()),
        stderr_gold=_stderr(gold.astype(float)),
        stderr_mold=_stderr(mold.astype(float)),
        action_freq={a: float(c / counts.sum()) for a, c in zip(ACTIONS, counts)},
        greedy=bool(greedy),
        temperature=float(temperature),
        returns=[float(r) for r in returns],
        gold=[int(g) for g in gold],
        mold=[int(m) for m in mold],
        seeds=seeds,
    )


def eval_settings(args: Args) -> dict[str, Any]:
    """The keyword arguments of :func:`evaluate` for a run's held-out evaluation (all but the model's).

    Example:
        >>> eval_settings(preset_args("cpu"))["chunk_size"]
        32
    """
    return {
        "seeds": heldout_seeds(args.eval_episodes) if args.eval_episodes else [],
        "config": maze_config(args),
        "temperature": args.temperature,
        "greedy": args.eval_greedy,
        "sample_seed": args.seed,
        "batch_size": args.rollout_batch_size,
        "chunk_size": args.eval_chunk_size,
    }


def compare_evals(before: EvalResult, after: EvalResult) -> dict[str, float]:
    """Improvement of ``after`` over ``before`` in standard errors (unpaired and paired by maze).

    Example:
        >>> compare_evals(before, after)["z_unpaired"] >= 3  # doctest: +SKIP
        True
    """
    diff = after.mean_return - before.mean_return
    se = math.sqrt(before.stderr_return**2 + after.stderr_return**2)
    out = {
        "return_diff": diff,
        "stderr_diff_unpaired": se,
        "z_unpaired": diff / se if se > 0 else float("inf"),
        "gold_diff": after.gold_per_episode - before.gold_per_episode,
        "mold_diff": after.mold_per_episode - before.mold_per_episode,
    }
    if before.seeds == after.seeds:
        paired = _stderr(np.array(after.returns) - np.array(before.returns))
        out["stderr_diff_paired"] = paired
        out["z_paired"] = diff / paired if paired > 0 else float("inf")
    return out


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
    opt_state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entry in opt_state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = D.to_full(value.detach()).to("cpu").contiguous()
            else:
                scalars[f"state.{index}.{key}"] = value
    if not ctx.is_main:
        D.barrier(ctx)
        return final
    ckpt_root.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_root / f".step_{step:06d}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_file(weights, str(tmp / "trainable.safetensors"))
        groups = [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()}
            for group in opt_state["param_groups"]
        ]
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "optimizer.json").write_text(
            json.dumps({"param_groups": groups, "scalars": scalars}, indent=1)
        )
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
        for path in tmp.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
        tensors = load_file(str(path / "optimizer.safetensors"))
        meta = json.loads((path / "optimizer.json").read_text())
        opt_state: dict[int, dict[str, Any]] = {}
        ordered = list(params.values())  # make_optimizer's order: the state's indices
        for key, value in tensors.items():
            _, index, name = key.split(".", 2)
            param = ordered[int(index)]
            opt_state.setdefault(int(index), {})[name] = (
                value if name == "step" or value.shape != param.shape else D.like_param(value, param)
            )
        for key, value in meta["scalars"].items():
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
        groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
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


def _save_final(run_dir: Path, policy: Policy, args: Args) -> Path:
    """``final/``: the LoRA adapter (peft format) or the full model, plus the tokenizer; written atomically."""
    final = run_dir / "final"
    ctx = policy.ctx
    full_state = None
    if policy.parallel is not None and policy.parallel.strategy == "fsdp":
        full_state, _ = D.full_state_dicts(policy.parallel)  # a collective: every rank
    if not ctx.is_main:
        D.barrier(ctx)
        return final
    tmp = run_dir / f".final.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _quiet_peft():
            policy.model.save_pretrained(str(tmp), safe_serialization=True, state_dict=full_state)
        policy.tokenizer.save_pretrained(str(tmp))
        (tmp / "welfare_axis_run.json").write_text(json.dumps(dataclasses.asdict(args), indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    D.barrier(ctx)
    return final


class RunDirError(FileNotFoundError):
    """The directory is not a usable ``maze_env.train`` run (no config.json, no checkpoints)."""


def load_run_args(run_dir: str | os.PathLike[str]) -> Args:
    """The run's ``Args`` from its ``config.json`` (clear errors when it is not a run directory)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist; pass the --out of a maze_env.train run")
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise RunDirError(
            f"{run_dir} has no config.json, so it is not a maze_env.train run directory; pass the --out of a "
            f"run (welfare-axis train --out {run_dir} ...), or its parent if this is a checkpoint folder"
        )
    saved = json.loads(config_path.read_text())
    known = {f.name for f in dataclasses.fields(Args)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise ValueError(
            f"{config_path} has settings this version of maze_env.train does not know: {unknown}; "
            "it was written by another version"
        )
    return Args(**saved)


def load_trained(run_dir: str | os.PathLike[str], *, checkpoint: str | None = None, merge: bool = True):
    """The trained model and tokenizer of a run (its latest checkpoint, or ``checkpoint``'s directory name).

    With ``merge=True`` LoRA adapters are merged into the weights (a plain HF model, as the probes expect).

    Example:
        >>> model, tok = load_trained("runs/grpo_cpu")  # doctest: +SKIP
    """
    run_dir = Path(run_dir)
    args = load_run_args(run_dir)
    path = run_dir / "checkpoints" / checkpoint if checkpoint else latest_checkpoint(run_dir)
    if path is None or not path.is_dir():
        raise FileNotFoundError(f"no checkpoint in {run_dir}/checkpoints")
    policy = make_policy(dataclasses.replace(args, kl_coef=0.0, algo="sft"))
    load_checkpoint(path, policy)
    model = policy.model
    if policy.is_lora and merge:
        model = model.merge_and_unload()
    model.eval()
    return model, policy.tokenizer


# ====================================================================================================
# Run directory
# ====================================================================================================

SUMMARY_KEYS = ("mean_return", "stderr_return", "gold_per_episode", "mold_per_episode", "action_freq")
_RESUME_FREE = ("resume", "stop_at_step", "threads", "progress", "device", "parallel", "log_episodes")


def _check_same_config(saved: dict[str, Any], args: Args, run_dir: Path) -> None:
    current = json.loads(json.dumps(dataclasses.asdict(args), default=str))
    free = set(_RESUME_FREE)
    if saved.get("autocast") is None:
        free.add("autocast")  # runs made before the dtype was recorded ran float32 on our CPUs
    if saved.get("anneal_steps") is not None and current.get("anneal_steps") is not None:
        free.add("steps")  # the schedule does not depend on steps then
    diffs = [
        f"{k}: {saved.get(k)!r} (saved) vs {current.get(k)!r} (now)"
        for k in sorted(set(saved) | set(current))
        if k not in free and saved.get(k) != current.get(k)
    ]
    if diffs:
        raise ValueError(
            f"cannot resume {run_dir}: it was created with another config ({'; '.join(diffs)}). "
            "Resume with the same settings, or start a new run with another --out"
        )


def _read_metrics(path: Path, before_step: int) -> list[str]:
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if json.loads(line).get("step", -1) < before_step]


@dataclass
class RunResult:
    """What :func:`main` returns: the run directory, the last step and the evaluations."""

    run_dir: Path
    steps_done: int
    metrics: list[dict[str, Any]]
    before: EvalResult | None = None
    after: EvalResult | None = None


# ====================================================================================================
# Main loop
# ====================================================================================================


def main(args: Args) -> RunResult:
    """Train as configured by ``args``; see the module docstring.

    Under ``torchrun`` / ``accelerate launch`` every rank runs this: each collects its rollout shards,
    gradients are all-reduced (``args.parallel``), rank 0 writes metrics, checkpoints and evaluations.
    """
    validate(args)
    with D.session(device=args.device) as ctx:
        return _main(args, ctx)


def _main(args: Args, ctx: D.DistContext) -> RunResult:
    from tqdm.auto import tqdm

    from probes.models import resolve_autocast

    # the dtype rule, resolved once for this device and recorded (config.json says true or false)
    args = dataclasses.replace(args, autocast=resolve_autocast(args.autocast, ctx.device))
    run_dir = Path(args.out)
    config_path = run_dir / "config.json"
    if args.resume:
        if not config_path.is_file():
            raise FileNotFoundError(
                f"nothing to resume: {config_path} does not exist; drop --resume to start a run"
            )
        _check_same_config(json.loads(config_path.read_text()), args, run_dir)
    elif config_path.is_file():
        raise FileExistsError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    D.barrier(ctx)  # every rank has checked the run directory before rank 0 writes into it

    # SEEDING
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    config = maze_config(args)

    # MODEL
    policy = make_policy(dataclasses.replace(args, device=str(ctx.device)) if ctx.distributed else args)
    if ctx.distributed:
        policy.parallel = D.parallelize(policy.model, ctx, args.parallel)  # before the optimizer (FSDP)
    optimizer = make_optimizer(policy, args)
    if args.init_from is not None:  # a warm start; a resumed run's own checkpoint replaces it below
        warm = latest_checkpoint(Path(args.init_from))
        if warm is None:
            raise RunDirError(
                f"--init-from {args.init_from}: no checkpoint there; point it at a finished run's directory "
                "(one with checkpoints/, e.g. from welfare-axis train --preset cpu --algo sft)"
            )
        try:
            load_checkpoint(warm, policy)
        except ValueError as err:
            raise ValueError(f"--init-from {args.init_from}: {err}; use that run's LoRA settings") from None
    start = 0
    if args.resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is not None:
            start = load_checkpoint(checkpoint, policy, optimizer)
    elif ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(config_path, dataclasses.asdict(args))
    metrics_path = run_dir / "metrics.jsonl"
    kept = _read_metrics(metrics_path, start)
    if ctx.is_main:
        atomic_write(metrics_path, lambda p: p.write_text("".join(line + "\n" for line in kept)))
    history = [json.loads(line) for line in kept]
    eval_path = run_dir / "eval.json"
    evals: dict[str, Any] = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
    eval_seeds = heldout_seeds(args.eval_episodes) if args.eval_episodes else []

    def run_eval(name: str) -> EvalResult:  # every rank evaluates (FSDP needs them all); rank 0 records
        log = run_dir / "episodes" / f"eval_{name}" if args.log_episodes and ctx.is_main else None
        return policy.call_no_grad(
            evaluate,
            policy.tokenizer,
            **eval_settings(args),
            autocast=use_autocast(args, policy.model),
            log_path=log,
        )

    before = EvalResult(**evals["before"]) if "before" in evals else None
    if eval_seeds and before is None and args.eval_before:
        t0 = time.perf_counter()
        with _eval_mode(policy):
            before = run_eval("before")
        evals["before"] = before.to_dict()
        evals["before_seconds"] = time.perf_counter() - t0
        if ctx.is_main:
            write_json(eval_path, evals)
            print(f"before training: {before.line()}", file=sys.stderr)

    end = args.steps if args.stop_at_step is None else min(args.steps, args.stop_at_step)
    start_layer = top_layer_start(policy, args)
    bar = tqdm(
        range(start, end),
        initial=start,
        total=args.steps,
        disable=not (args.progress and ctx.is_main),
        desc=args.algo,
    )
    last_checkpoint = latest_checkpoint(run_dir)
    for step in bar:
        t_step = time.perf_counter()
        turns, _ = step_turns(args, step)
        step_config = dataclasses.replace(config, n_turns=turns)
        step_args = _scaled_for_step(args, step)
        n_groups = step_args.episodes_per_step // args.group_size

        # ROLLOUT (SFT: the expert plays instead; every episode gets its own maze)
        t0 = time.perf_counter()
        # One call per rollout shard; this rank collects D.rank_shard_ids (all of them in one process).
        sharded = args.rollout_shards > 1
        parts, hiddens = [], []
        if args.algo == "sft":
            blocks = D.shard_seeds(
                train_seeds(args.seed, step, step_args.episodes_per_step, 1), args.rollout_shards
            )
            for shard in D.rank_shard_ids(args.rollout_shards, ctx):
                expert_seed = args.seed + step
                if sharded:
                    expert_seed = int(np.random.SeedSequence([args.seed, step, shard]).generate_state(1)[0])
                parts.append(
                    expert_episodes(
                        policy.tokenizer,
                        seeds=blocks[shard],
                        config=step_config,
                        horizon=args.expert_horizon,
                        expert_seed=expert_seed,
                    )
                )
        else:
            seeds = train_seeds(args.seed, step, n_groups, args.group_size)
            blocks = D.shard_seeds(seeds, args.rollout_shards, args.group_size)
            for shard in D.rank_shard_ids(args.rollout_shards, ctx):
                capture = (
                    capture_below(policy.model, start_layer) if start_layer else contextlib.nullcontext([])
                )
                with capture as captured:
                    parts.append(
                        policy.call_no_grad(
                            collect_episodes,
                            policy.tokenizer,
                            seeds=blocks[shard],
                            config=step_config,
                            temperature=args.temperature,
                            generator=_sampling_generator(
                                args.seed, step, torch.device("cpu"), shard if sharded else None
                            ),
                            autocast=use_autocast(args, policy.model),
                            batch_size=step_args.rollout_batch_size,
                        )
                    )
                if start_layer:
                    hiddens.append(assemble(captured, parts[-1], step_args.rollout_batch_size))
        episodes = parts[0] if len(parts) == 1 else EpisodeBatch.cat(parts)
        hidden = None
        if hiddens:  # right-padded (B, P, d) per shard: pad to the widest, then stack the rows
            width = max(h.shape[1] for h in hiddens)
            hidden = torch.cat([torch.nn.functional.pad(h, (0, 0, 0, width - h.shape[1])) for h in hiddens])
        rollout_seconds = time.perf_counter() - t0
        everyone = D.gather_objects(episodes, ctx)  # rank 0 summarises the global batch
        summary = None
        if everyone is not None:
            global_batch = everyone[0] if len(everyone) == 1 else EpisodeBatch.cat(everyone)
            summary = global_batch.summary()
            if args.log_episodes:
                save_episodes(
                    global_batch,
                    run_dir / "episodes" / f"step_{step:06d}",
                    extra={"step": step, "algo": args.algo},
                )

        # ADVANTAGES + UPDATE (advantages are computed inside train_step, per algorithm)
        t0 = time.perf_counter()
        train_batch = episodes
        if args.algo == "iterative_sft":
            rows = top_episode_rows(episodes, args.group_size, args.keep_fraction)
            train_batch = episodes.select(rows)
            hidden = None if hidden is None else hidden[rows]
        try:
            stats = train_step(policy, optimizer, train_batch, step_args, step, hidden=hidden)
        except NonFiniteLossError as err:
            where = (
                f"{last_checkpoint} (step {_checkpoint_step(last_checkpoint)})"
                if last_checkpoint
                else "none yet"
            )
            raise NonFiniteLossError(
                f"{err}; training stopped without applying this update. The last good checkpoint is {where}. "
                f"Lower --lr (now {args.lr}) or --entropy-coef, then rerun (with --resume to continue from it)"
            ) from None
        update_seconds = time.perf_counter() - t0

        # LOG
        step_seconds = time.perf_counter() - t_step
        record: dict[str, Any] = {"step": step, "episodes": step_args.episodes_per_step, "turns": turns}
        if summary is not None:  # rank 0: statistics of the global batch
            record.update({key: summary[key] for key in SUMMARY_KEYS})
        rollout_tokens = D.global_count(episodes.n_tokens, ctx)
        record.update(
            **stats,
            rollout_tokens=int(rollout_tokens),
            rollout_seconds=rollout_seconds,
            update_seconds=update_seconds,
            step_seconds=step_seconds,
            tokens_per_s=(rollout_tokens + stats["update_tokens"]) / step_seconds,
        )
        if args.algo == "sft":
            record["data"] = "expert"  # the returns above are the expert's, not the policy's
        if args.algo == "iterative_sft":
            kept = D.mean_metrics({"r": float(train_batch.returns.mean())}, ctx, weight=len(train_batch))
            record["kept_mean_return"] = kept["r"]
        done = step + 1
        if args.eval_every and done % args.eval_every == 0 and eval_seeds and done < args.steps:
            with _eval_mode(policy):
                mid = run_eval(f"step_{done:06d}")
            record["eval_mean_return"], record["eval_stderr_return"] = mid.mean_return, mid.stderr_return
            record["eval_gold_per_episode"], record["eval_mold_per_episode"] = (
                mid.gold_per_episode,
                mid.mold_per_episode,
            )
        if ctx.is_main:
            with open(metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            history.append(record)
            bar.set_postfix(
                ret=f"{summary['mean_return']:+.1f}",
                ent=f"{stats.get('entropy', 0):.2f}",
                loss=f"{stats['loss']:.3g}",
            )
        if done % args.checkpoint_every == 0 or done == end:
            last_checkpoint = save_checkpoint(run_dir, done, policy, optimizer, args)
    bar.close()

    steps_done = max(start, end)
    after = EvalResult(**evals["after"]) if "after" in evals and start >= args.steps else None
    if steps_done >= args.steps and after is None:
        _save_final(run_dir, policy, args)
        evals["train_seconds"] = float(sum(r["step_seconds"] for r in history))
        if eval_seeds:
            t0 = time.perf_counter()
            with _eval_mode(policy):
                after = run_eval("after")
            evals["after"] = after.to_dict()
            evals["after_seconds"] = time.perf_counter() - t0
            evals["comparison"] = compare_evals(before, after) if before is not None else None
            if ctx.is_main:
                print(f"after training:  {after.line()}", file=sys.stderr)
        if ctx.is_main:
            write_json(eval_path, evals)
    return RunResult(run_dir=run_dir, steps_done=steps_done, metrics=history, before=before, after=after)


def _checkpoint_step(path: Path | None) -> int | None:
    return None if path is None else int(path.name.removeprefix("step_"))


@contextlib.contextmanager
def _eval_mode(policy: Policy) -> Iterator[None]:
    was = policy.model.training
    policy.model.eval()
    try:
        yield
    finally:
        policy.model.train(was)


# ====================================================================================================
# Command line
# ====================================================================================================


def _pop_preset(argv: list[str]) -> tuple[str | None, list[str]]:
    rest, name, i = [], None, 0
    while i < len(argv):
        token = argv[i]
        if token == "--preset":
            if i + 1 >= len(argv):
                raise ValueError(f"--preset needs a value: one of {sorted(PRESETS)}")
            name, i = argv[i + 1], i + 2
            continue
        if token.startswith("--preset="):
            name = token.split("=", 1)[1]
        else:
            rest.append(token)
        i += 1
    return name, rest


def parse_args(argv: Sequence[str] | None = None, prog: str = "python -m maze_env.train") -> Args:
    """Parse command-line flags (tyro; ``--help`` lists every field). ``--preset NAME`` sets the defaults."""
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    name, rest = _pop_preset(argv)
    description = __doc__.splitlines()[0]
    if not name:
        return tyro.cli(Args, args=rest, default=Args(), prog=prog, description=description)
    # the preset's per-algorithm values depend on --algo: parse once to learn it, then with its defaults
    algo = tyro.cli(Args, args=rest, default=preset_args(name), prog=prog, description=description).algo
    return tyro.cli(Args, args=rest, default=preset_args(name, algo=algo), prog=prog, description=description)


def cli(argv: Sequence[str] | None = None, prog: str = "python -m maze_env.train") -> int:
    """Entry point: parse, train, print the evaluation. Returns the exit status."""
    args = parse_args(argv, prog=prog)
    result = main(args)
    print(f"run: {result.run_dir} ({result.steps_done}/{args.steps} steps)")
    if result.before is not None and result.after is not None:
        comparison = compare_evals(result.before, result.after)
        print(f"before: {result.before.line()}")
        print(f"after:  {result.after.line()}")
        print(
            f"change: {comparison['return_diff']:+.2f} return = {comparison['z_unpaired']:.1f} SE (unpaired), "
            f"gold {comparison['gold_diff']:+.2f}, mold {comparison['mold_diff']:+.2f} per episode"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(cli())
    except (ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
