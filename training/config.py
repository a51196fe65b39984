"""Training configuration: ``Args`` (every setting, saved as ``config.json``), the recipes, validation,
the curriculum and the seeds of the training and held-out mazes."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from maze_env import config_for_tiles
from maze_env.config import MazeConfig
from training.algorithms import ALGORITHMS

Algo = Literal["dr_grpo", "grpo", "reinforce", "rloo", "ppo", "tbrm", "sft", "iterative_sft", "dpo"]
ALGOS: tuple[str, ...] = tuple(ALGORITHMS)
"""The ``--algo`` values (``Algo`` spells them out for the command line; a test keeps the two equal)."""
HELDOUT_BASE_SEED = 3_000_000_000
"""Held-out evaluation mazes use seeds ``HELDOUT_BASE_SEED + i``; training seeds are all below 2**31."""
TINY_MODELS = ("tiny-llama", "tiny-gemma3")

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
    system_prompt: str = "template"
    """template: the model's chat template as shipped (SmolLM2's inserts its default system prompt); none: no
    system block (as the paper's Qwen3 template renders a chat without one). ``probes.models.SYSTEM_PROMPTS``."""
    recipe: str | None = None
    """The recipe these defaults came from (``--recipe cpu``); recorded for provenance."""
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
    top_lr: float | None = None
    """Peak learning rate of the trainable weights in the top ``top_lr_layers`` decoder layers (None: ``lr`` for
    every layer); annealed with the same multiplier. With LoRA on every layer, the top layers can take the step
    that teaches the maze quickly (the CPU recipe's 2e-3 on its top 8) while the layers below keep ``lr``, the
    step at which they still learn without the collapse of 2e-3 everywhere (docs/results.md, sessions 8 and 21)."""
    top_lr_layers: int = 8
    """How many decoder layers, counted from the top, train at ``top_lr`` (ignored when it is None); a model with
    fewer layers trains all of them at ``top_lr``."""
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
    """tile set: office, swap, shuffle."""
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
    monitor_every: int = 0
    """Read the reward axis every N steps (0: never): ``probes.axis_monitor`` on a fixed probe set, per layer
    cos(v_Mold, v_Gold) and cos(v, u), cos(v, valence PC1) and tracking d, logged as ``axis`` in
    ``metrics.jsonl`` (the untrained model's reading and the settings in ``axis_monitor.json``)."""
    reward_model: str | None = None
    """A reward-model directory (``python -m training.reward_model``): RL trains on its reward of each move
    instead of the environment's (RLHF's second stage). Logged returns and evaluations stay the environment's;
    the step records hold the learned reward too."""
    dpo_beta: float = 0.1
    """DPO's β (``--algo dpo``): the implicit reward is β·log π/π_ref."""
    preference_horizon: int = 4
    """Search horizon of the true Q that ranks the two moves of a preference pair (``training.preferences``)."""
    preference_rule: str = "best_worst"
    """best_worst (a state's best vs worst move) or random (two distinct moves drawn at random)."""
    intervene_vector: str | None = None
    """A saved ConceptVector directory to intervene on during the update forwards (``training.intervention``):
    is the axis needed for learning? Rollouts and evaluations run without it."""
    intervene_layer: int | None = None
    """The block output it acts on (None: the vector's only layer)."""
    intervene_mode: str = "add"
    """add (h + α·v), ablate (h − (h·v̂)v̂) or penalty (loss + α·mean((h·v̂)²))."""
    intervene_alpha: float = 1.0
    """α of add and penalty."""
    monitor_n_per_class: int = 12
    """Scripted trajectories per class of the monitor's probe set (half for the vectors, half for tracking)."""
    log_episodes: bool = True
    """Write every step's episodes and every evaluation's to ``out/episodes/`` (safetensors + JSON: messages,
    token ids, actions, per-turn rewards, log-probs; ``training.episodes.load_episodes`` reads them back)."""


RUN_ONLY_ARGS: tuple[str, ...] = ("out", "progress", "resume", "stop_at_step", "threads", "device", "log_episodes",
                                  "monitor_every", "monitor_n_per_class")  # fmt: skip
"""Args that do not change what is trained (left out of a study's train-stage key and of its configuration
name; the axis monitor reads the model without gradients or random numbers, tested)."""
INERT_ARGS: tuple[str, ...] = (*RUN_ONLY_ARGS, "eval_every")
"""Args that change nothing that is trained: the run-only ones, and ``eval_every`` (mid-run held-out evaluations
run in eval mode with their own random numbers; tested). ``eval_every`` stays in a study's train-stage key, as it
was before it was known to be inert, so finished studies are not trained again; a configuration's name
(``welfare_axis.claims``) leaves all of them out, so a run evaluated on the way is a seed like any other."""


RECIPES: dict[str, dict[str, Any]] = {
    # 2 CPU cores, SmolLM2-135M-Instruct, LoRA on the top 8 layers. The RL algorithm is TBRM: from the
    # untrained model it learns the maze in 15.6 minutes of training (6 single-turn steps of 192 states,
    # RECIPE_ALGO_OVERRIDES), +25.5 return on 64 held-out mazes (4.1 SE paired, 3.0 unpaired). Dr. GRPO
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


RECIPE_ALGO_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
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
"""Per-algorithm values of a recipe, applied on top of :data:`RECIPES` for that algorithm."""


def recipe_args(name: str, *, per_algorithm: bool = True, **overrides: Any) -> Args:
    """``Args`` with a recipe's values (and, with ``per_algorithm``, its values for the chosen algorithm),
    then ``overrides``.

    Example:
        >>> recipe_args("cpu", algo="sft").lora_layers
        8
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    algo = overrides.get("algo", RECIPES[name].get("algo", Args.algo))
    per_algo = RECIPE_ALGO_OVERRIDES.get(name, {}).get(algo, {}) if per_algorithm else {}
    return Args(**{**RECIPES[name], **per_algo, "recipe": name, **overrides})


RENAMED_SETTINGS = {"preset": "recipe"}
"""Settings renamed since runs were first recorded: ``{old name: new name}``."""


def upgrade_config(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved ``config.json`` with renamed settings under their current names.

    Example:
        >>> upgrade_config({"preset": "cpu", "steps": 6})
        {'recipe': 'cpu', 'steps': 6}
    """
    return {RENAMED_SETTINGS.get(key, key): value for key, value in saved.items()}


def check_positive_int(name: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


def validate(args: Args) -> Args:
    """Raise a clear error for any bad setting; return ``args`` unchanged."""
    if args.algo not in ALGORITHMS:
        raise ValueError(f"unknown algo {args.algo!r}; choose one of {', '.join(ALGOS)}")
    algo = ALGORITHMS[args.algo]
    check_positive_int("steps", args.steps)
    check_positive_int("episodes_per_step", args.episodes_per_step)
    check_positive_int("group_size", args.group_size)
    check_positive_int("micro_batch_size", args.micro_batch_size)
    check_positive_int("minibatches", args.minibatches)
    check_positive_int("checkpoint_every", args.checkpoint_every)
    check_positive_int("keep_checkpoints", args.keep_checkpoints)
    check_positive_int("threads", args.threads)
    check_positive_int("expert_horizon", args.expert_horizon)
    check_positive_int("eval_episodes", args.eval_episodes, 0)
    if args.eval_chunk_size is not None:
        check_positive_int("eval_chunk_size", args.eval_chunk_size)
    check_positive_int("eval_every", args.eval_every, 0)
    check_positive_int("monitor_every", args.monitor_every, 0)
    if args.intervene_vector is not None:
        if args.intervene_mode not in ("add", "ablate", "penalty"):
            raise ValueError(f"intervene_mode must be add, ablate or penalty; got {args.intervene_mode!r}")
        if not math.isfinite(float(args.intervene_alpha)):
            raise ValueError(f"intervene_alpha must be finite; got {args.intervene_alpha!r}")
        if args.reuse_rollout_activations and args.finetune == "lora" and args.lora_layers:
            raise ValueError(
                "intervene_vector changes the update's forwards, which then cannot reuse the rollout's activations "
                "below the adapted layers: add --no-reuse-rollout-activations (or adapt every layer)"
            )
    check_positive_int("monitor_n_per_class", args.monitor_n_per_class, 8)
    if args.reward_model is not None and algo.plays != "policy":
        raise ValueError(
            f"reward_model trains RL on a learned reward; --algo {args.algo} does not play the policy "
            "(use dr_grpo, grpo, reinforce, rloo, ppo or tbrm)"
        )
    if args.update_epochs is not None:
        check_positive_int("update_epochs", args.update_epochs)
    if args.anneal_steps is not None:
        check_positive_int("anneal_steps", args.anneal_steps)
    if args.stop_at_step is not None:
        check_positive_int("stop_at_step", args.stop_at_step)
    if args.episodes_per_step % args.group_size:
        raise ValueError(
            f"group_size={args.group_size} does not divide episodes_per_step={args.episodes_per_step}; "
            f"use a multiple, e.g. episodes_per_step={args.group_size * math.ceil(args.episodes_per_step / args.group_size)}"
        )
    check_positive_int("rollout_shards", args.rollout_shards)
    shard_unit = args.rollout_shards * {"expert": 1, "preferences": 2}.get(algo.plays, args.group_size)
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
    if algo.plays == "preferences":
        if args.episodes_per_step % (2 * args.minibatches) or args.micro_batch_size % 2:
            raise ValueError(
                f"--algo {args.algo} trains on pairs (rows 2i, 2i+1): episodes_per_step ({args.episodes_per_step}) must be "
                f"a multiple of 2 × minibatches ({args.minibatches}) and micro_batch_size ({args.micro_batch_size}) even"
            )
        if not args.dpo_beta > 0:
            raise ValueError(f"dpo_beta must be > 0; got {args.dpo_beta}")
        if args.preference_rule not in ("best_worst", "random"):
            raise ValueError(f"preference_rule must be best_worst or random; got {args.preference_rule!r}")
        check_positive_int("preference_horizon", args.preference_horizon)
    if args.group_size < algo.min_group_size:
        raise ValueError(f"algo={args.algo} needs group_size >= {algo.min_group_size}; got {args.group_size}")
    if args.top_lr is not None and (
        not isinstance(args.top_lr, int | float) or not math.isfinite(args.top_lr) or args.top_lr <= 0
    ):
        raise ValueError(f"top_lr must be None or a finite number > 0; got {args.top_lr!r}")
    check_positive_int("top_lr_layers", args.top_lr_layers)
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
        check_positive_int("lora_r", args.lora_r)
        check_positive_int("lora_alpha", args.lora_alpha)
        if args.lora_layers is not None:
            check_positive_int("lora_layers", args.lora_layers)
    elif args.finetune != "full":
        raise ValueError(f"finetune must be 'lora' or 'full'; got {args.finetune!r}")
    check_positive_int("curriculum_steps", args.curriculum_steps, 0)
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
        check_positive_int("curriculum_turns", args.curriculum_turns)
        if args.curriculum_scale is not None:
            check_positive_int("curriculum_scale", args.curriculum_scale)
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

    return config_for_tiles(args.tiles, n_turns=args.n_turns, wind_prob=args.wind_prob, size=args.maze_size)


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


def scaled_for_step(args: Args, step: int) -> Args:
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


def update_passes(args: Args) -> int:
    """Passes over a batch: SFT makes one; the policy gradients and TBRM (off-policy) make ``update_epochs``
    (default 4 for ppo, 1 otherwise)."""
    return ALGORITHMS[args.algo].update_passes(args)


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
    check_positive_int("n", n)
    return [base + i for i in range(n)]


def sampling_generator(
    seed: int, step: int, device: torch.device, shard: int | None = None
) -> torch.Generator:
    """A fresh generator per step and rollout shard (a pure function, so resume needs no state for it)."""
    key = [int(seed), int(step), 0x5A4D] + ([] if shard is None else [int(shard)])
    state = np.random.SeedSequence(key).generate_state(2, np.uint32)
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return gen
