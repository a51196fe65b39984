"""Data-parallel training under ``torch.distributed``: process groups, seed shards, DDP/FSDP, rank-0 I/O.

(Just over 600 lines: every collective the trainer makes lives here, so that a one-process run can make
them all no-ops in one place.)

Launch any training script with ``torchrun --nproc_per_node=N`` or ``accelerate launch`` (both set
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``). :func:`init` joins the process group (gloo on CPU,
NCCL on CUDA). A plain ``python`` run gets a one-process context, and every helper here is then a
no-op.

The recipe that makes N processes equal one:

1. **Rollouts by shard.** A step's global seed list is cut into ``n_shards`` contiguous,
   group-aligned blocks (:func:`shard_seeds`; a GRPO group never straddles two blocks), and each
   block is collected by its own ``collect_episodes`` call. Rank ``r`` of ``W`` collects blocks
   ``r·n/W .. (r+1)·n/W − 1`` (:func:`local_shards`). The rollout's RNG is seeded by each block's
   seeds, so the episodes do not depend on ``W``: one process collecting every block gets the same
   episodes as ``W`` processes. Keep ``n_shards`` fixed in the run's config and any ``W`` dividing
   it gives the same run, resumed or not.
2. **Gradients all-reduced.** :func:`parallelize` wraps the model. ``"ddp"`` is
   ``DistributedDataParallel`` (gradients averaged across ranks); ``"fsdp"`` is FSDP2
   ``fully_shard`` per decoder block (parameters, gradients and optimizer state sharded) for models
   that do not fit. Training code calls its function through the wrapper,
   ``pm(action_logits, batch)``, so DDP/FSDP see a forward even when the function calls submodules
   directly.
3. **Loss normalised by the global count.** DDP averages gradients over ranks. A loss that is a mean
   over the *global* batch is a local sum times :func:`loss_scale` (``W / global_count``), or, with
   equal shards, the local mean.
4. **Rank 0 writes.** Metrics come from :func:`mean_metrics` (a weighted global mean). Checkpoints
   come from :func:`full_state_dicts`, which gives world-size-independent full state dicts (a
   collective for FSDP). Write them only ``if ctx.is_main`` and :func:`barrier` after.

Example:
    >>> ctx = init()  # plain python: one process
    >>> ctx.world_size, ctx.is_main
    (1, True)
    >>> shard_seeds(list(range(8)), n_shards=2, group_size=4)
    [[0, 1, 2, 3], [4, 5, 6, 7]]
    >>> local_shards(list(range(8)), ctx, n_shards=2, group_size=4)
    [[0, 1, 2, 3], [4, 5, 6, 7]]
    >>> mean_metrics({"return": 2.0}, ctx, weight=8)
    {'return': 2.0}
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

from probes.artifacts import atomic_directory
from probes.layers import blocks

Strategy = Literal["none", "ddp", "fsdp"]
STRATEGIES: tuple[str, ...] = ("none", "ddp", "fsdp")
_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


class DistributedError(RuntimeError):
    """A bad launch or a bad distributed setting (names the value and the fix)."""


class ShardError(ValueError):
    """A global batch that cannot be cut into equal, group-aligned shards."""


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, device. One process: ``DistContext()``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one that writes metrics, logs and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group with more than one rank is active."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise DistributedError(f"environment variable {name}={raw!r} is not an integer") from None


def launch_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the launcher's environment (``(0, 1, 0)`` without one)."""
    rank, world, local = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(
            f"inconsistent launch: RANK={rank}, WORLD_SIZE={world} (need 0 <= RANK < WORLD_SIZE)"
        )
    return rank, world, local


def _resolve_device(device: str | torch.device, local_rank: int) -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(device)


def init(
    *, backend: str | None = None, device: str | torch.device = "auto", timeout_s: float = 1800.0
) -> DistContext:
    """Join the launcher's process group (or describe the single process).

    Args:
        backend: ``"gloo"`` (CPU) or ``"nccl"`` (CUDA); default: NCCL when the device is CUDA.
        device: ``"auto"`` (``cuda:LOCAL_RANK`` when available, else CPU), ``"cpu"``, ``"cuda"``.
        timeout_s: collective timeout.

    Raises:
        DistributedError: inconsistent environment, or NCCL asked for on a CPU device.
    """
    rank, world, local = launch_env()
    run_device = _resolve_device(device, local)
    if dist.is_available() and dist.is_initialized():
        return DistContext(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=local,
            device=run_device,
            backend=str(dist.get_backend()),
            owns_group=False,
        )
    if world == 1:
        return DistContext(device=run_device)
    chosen = backend or ("nccl" if run_device.type == "cuda" else "gloo")
    if chosen == "nccl" and run_device.type != "cuda":
        raise DistributedError("backend='nccl' needs CUDA devices; use backend='gloo' on CPU")
    if run_device.type == "cuda":
        torch.cuda.set_device(run_device)
    dist.init_process_group(
        backend=chosen, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s)
    )
    return DistContext(
        rank=rank, world_size=world, local_rank=local, device=run_device, backend=chosen, owns_group=True
    )


def shutdown(ctx: DistContext) -> None:
    """Leave the process group if :func:`init` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(
    *, backend: str | None = None, device: str | torch.device = "auto", timeout_s: float = 1800.0
) -> Iterator[DistContext]:
    """``with session() as ctx:`` :func:`init` then :func:`shutdown`, even after an error."""
    ctx = init(backend=backend, device=device, timeout_s=timeout_s)
    try:
        yield ctx
    finally:
        shutdown(ctx)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in one process)."""
    if ctx.distributed:
        dist.barrier()


# --------------------------------------------------------------------------------------------------
# Seeds: which episodes each rank collects
# --------------------------------------------------------------------------------------------------


def shard_seeds(seeds: Sequence[int], n_shards: int, group_size: int = 1) -> list[list[int]]:
    """Cut ``seeds`` into ``n_shards`` equal contiguous blocks whose size is a multiple of ``group_size``.

    Raises:
        ShardError: the sizes do not divide.
    """
    seeds = [int(s) for s in seeds]
    for name, value in (("n_shards", n_shards), ("group_size", group_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ShardError(f"{name} must be a positive int, got {value!r}")
    if len(seeds) % n_shards:
        raise ShardError(
            f"{len(seeds)} episodes per step cannot be split into {n_shards} equal shards; "
            f"use a batch that is a multiple of {n_shards}"
        )
    size = len(seeds) // n_shards
    if size % group_size:
        raise ShardError(
            f"a shard of {size} episodes would split a group of {group_size}: the batch must be a multiple "
            f"of n_shards × group_size = {n_shards * group_size}"
        )
    return [seeds[i * size : (i + 1) * size] for i in range(n_shards)]


def rank_shard_ids(n_shards: int, ctx: DistContext) -> range:
    """The shard indices rank ``ctx.rank`` collects: a contiguous block of ``n_shards / world_size``."""
    if n_shards % ctx.world_size:
        raise ShardError(
            f"n_shards={n_shards} is not a multiple of the world size {ctx.world_size}: launch a number of "
            f"processes that divides {n_shards}, or change n_shards (that changes the run's episodes)"
        )
    per_rank = n_shards // ctx.world_size
    return range(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)


def local_shards(
    seeds: Sequence[int], ctx: DistContext, *, n_shards: int | None = None, group_size: int = 1
) -> list[list[int]]:
    """The seed blocks this rank collects, one ``collect_episodes`` call each (default ``n_shards``: world size)."""
    blocks = shard_seeds(seeds, n_shards or ctx.world_size, group_size)
    return [blocks[i] for i in rank_shard_ids(len(blocks), ctx)]


# --------------------------------------------------------------------------------------------------
# Reductions and rank-0 collection
# --------------------------------------------------------------------------------------------------


def _comm_device(ctx: DistContext) -> torch.device:
    return ctx.device if ctx.backend == "nccl" else torch.device("cpu")


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Element-wise sum over ranks (a copy; the input is untouched)."""
    if not ctx.distributed:
        return values.clone()
    out = values.detach().to(_comm_device(ctx), copy=True)
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(values.device)


def global_count(local: float, ctx: DistContext) -> float:
    """``Σ_ranks local`` (episodes, tokens...)."""
    return float(all_reduce_sum(torch.tensor([float(local)], dtype=torch.float64), ctx)[0])


def loss_scale(local_count: float, ctx: DistContext) -> float:
    """Factor turning a *local sum* into the share of a *global mean* under DDP's gradient averaging.

    ``loss = local_sum * loss_scale(n_local, ctx)`` gives, after DDP averages over ``W`` ranks,
    the gradient of ``global_sum / global_count``. In one process it is ``1 / n_local``.
    """
    total = global_count(local_count, ctx)
    if total <= 0:
        raise ValueError(f"the global count is {total}; nothing to average over")
    return ctx.world_size / total


def mean_metrics(local: Mapping[str, float], ctx: DistContext, *, weight: float = 1.0) -> dict[str, float]:
    """The global ``weight``-weighted mean of each metric (``weight`` = e.g. local episodes).

    Every rank must pass the same keys (checked). NaN stays NaN.
    """
    if not ctx.distributed:
        return {k: float(v) for k, v in local.items()}
    keys = sorted(local)
    if ctx.distributed:
        everyone = [None] * ctx.world_size
        dist.all_gather_object(everyone, keys)
        if any(other != keys for other in everyone):
            raise DistributedError(f"ranks report different metrics: {everyone}")
    packed = torch.tensor([float(local[k]) * weight for k in keys] + [float(weight)], dtype=torch.float64)
    summed = all_reduce_sum(packed, ctx)
    total = float(summed[-1])
    if total == 0:
        return {k: math.nan for k in keys}
    means = {k: float(summed[i]) / total for i, k in enumerate(keys)}
    return {k: means[k] for k in local}  # the caller's key order


def whiten_global(
    values: torch.Tensor, mask: torch.Tensor, ctx: DistContext, eps: float = 1e-8
) -> torch.Tensor:
    """``training.losses.whiten`` with the mean and variance of the *global* batch (PPO advantages).

    In one process it is ``losses.whiten(values, mask, eps)``.
    """
    if not ctx.distributed:
        from training.losses import whiten

        return whiten(values, mask, eps)
    m = mask.to(values.dtype)
    local = torch.stack([(values * m).sum(), m.sum()]).to(torch.float64)
    total, count = all_reduce_sum(local, ctx).tolist()
    count = max(count, 1.0)
    mean = total / count
    squares = all_reduce_sum(((((values - mean) * m) ** 2).sum()).to(torch.float64).reshape(1), ctx)
    var = float(squares[0]) / count
    return (values - mean) * torch.rsqrt(torch.tensor(var + eps, dtype=values.dtype)) * m


def gather_objects(obj: Any, ctx: DistContext) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0 (``None`` elsewhere); ``[obj]`` in one process."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (e.g. a resume decision or a run directory)."""
    if not ctx.distributed:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# --------------------------------------------------------------------------------------------------
# The model: DDP / FSDP behind one calling convention
# --------------------------------------------------------------------------------------------------


class _Runner(nn.Module):
    """``forward(fn, *args) = fn(model, *args)``: any training function becomes the wrapped module's forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(self.model, *args, **kwargs)


def _decoder_blocks(model: nn.Module) -> list[nn.Module]:

    return blocks(model)


@dataclass
class ParallelModel:
    """A model prepared for data-parallel training.

    ``pm(fn, *args)`` runs ``fn(model, *args)`` as the wrapped forward (differentiable; gradients
    all-reduced or reduce-scattered in ``backward``). ``pm.rollout(fn, *args)`` runs it without
    gradients, with FSDP parameters gathered once for the whole call. ``pm.module`` is the
    underlying model (under FSDP its parameters are sharded ``DTensor``s outside a call).
    """

    module: nn.Module
    runner: nn.Module
    ctx: DistContext
    strategy: str

    def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.runner(fn, *args, **kwargs)

    def rollout(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(model, *args)`` under ``torch.no_grad()`` (FSDP: parameters gathered for the whole call)."""
        with torch.no_grad(), self.gathered():
            return self.runner(fn, *args, **kwargs)

    @contextlib.contextmanager
    def gathered(self) -> Iterator[None]:
        """FSDP: keep full parameters between forwards inside the block (a no-op otherwise)."""
        if self.strategy != "fsdp":
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        sharded = [m for m in self.runner.modules() if isinstance(m, FSDPModule)]
        for m in sharded:
            m.set_reshard_after_forward(False, recurse=False)
        try:
            yield
        finally:
            for m in sharded:
                m.set_reshard_after_forward(m is not self.runner, recurse=False)
                m.reshard()

    def parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the optimizer should own (sharded ones under FSDP)."""
        return self.runner.parameters()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.runner.parameters() if p.requires_grad]


def parallelize(
    model: nn.Module, ctx: DistContext, strategy: Strategy = "ddp", *, mixed_precision: Any = None
) -> ParallelModel:
    """Wrap ``model`` for data-parallel training; build the optimizer on ``pm.parameters()`` afterwards.

    Args:
        model: an HF causal LM (peft-wrapped is fine), already on ``ctx.device``.
        strategy: ``"ddp"`` (replicated parameters, averaged gradients), ``"fsdp"`` (FSDP2
            ``fully_shard`` per decoder block plus the root: parameters, gradients and optimizer state
            sharded; use it when a model does not fit), or ``"none"``. One process is always ``"none"``.
        mixed_precision: an FSDP2 ``MixedPrecisionPolicy`` (e.g. bf16 parameters, fp32 reductions).

    Raises:
        ValueError: unknown strategy.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}: choose one of {list(STRATEGIES)}")
    runner = _Runner(model)
    if not ctx.distributed or strategy == "none":
        return ParallelModel(model, runner, ctx, "none")
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        # Buffers (rotary tables) are the same on every rank: no per-forward sync. torch >= 2.13 names the
        # switch forward_sync_buffers (broadcast_buffers is deprecated there).
        sync_kwarg = (
            "forward_sync_buffers"
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
            else "broadcast_buffers"
        )
        wrapped = DistributedDataParallel(runner, device_ids=device_ids, **{sync_kwarg: False})
        return ParallelModel(model, wrapped, ctx, "ddp")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    kwargs: dict[str, Any] = {"mesh": mesh}
    if mixed_precision is not None:
        kwargs["mp_policy"] = mixed_precision
    for block in _decoder_blocks(model):
        fully_shard(block, **kwargs)
    fully_shard(runner, reshard_after_forward=False, **kwargs)
    return ParallelModel(model, runner, ctx, "fsdp")


def full_state_dicts(
    pm: ParallelModel, optimizer: torch.optim.Optimizer | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """World-size-independent full ``(model_state, optimizer_state)`` on the CPU.

    A collective: call it on every rank, write the result only on rank 0. The formats are
    ``torch.distributed.checkpoint.state_dict``'s (parameter names as keys, for the optimizer too),
    whatever the strategy, so a checkpoint from ``W`` processes (DDP or FSDP) loads into any other
    ``W`` with :func:`load_full_state_dicts`.
    """
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    model_state = get_model_state_dict(pm.module, options=options)
    optim_state = None
    if optimizer is not None:
        optim_state = get_optimizer_state_dict(pm.module, optimizer, options=options)
    return model_state, optim_state


def load_full_state_dicts(
    pm: ParallelModel,
    model_state: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer | None = None,
    optim_state: Mapping[str, Any] | None = None,
) -> None:
    """Load :func:`full_state_dicts` output on every rank (it shards it again under FSDP)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(pm.module, dict(model_state), options=options)
    if optimizer is not None and optim_state is not None:
        set_optimizer_state_dict(pm.module, optimizer, dict(optim_state), options=options)


# --------------------------------------------------------------------------------------------------
# Sharded tensors and world-size-independent checkpoints
# --------------------------------------------------------------------------------------------------


def to_full(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded ``DTensor`` (FSDP2) as the full tensor (a collective: every rank calls it); else itself."""
    full = getattr(tensor, "full_tensor", None)
    return full() if callable(full) else tensor


def like_param(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``full`` laid out like ``param``: this rank's shard for a ``DTensor`` parameter, else moved to its device."""
    mesh = getattr(param, "device_mesh", None)
    if mesh is None:
        return full.to(device=param.device, dtype=param.dtype if full.is_floating_point() else full.dtype)
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(dtype=param.dtype), mesh, param.placements)


def flatten_optimizer_state(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer ``state_dict`` as safetensors-ready tensors plus JSON: the one on-disk optimizer format
    (trainer checkpoints and :func:`save_full_state` alike).

    Tensors are keyed ``state.<param>.<slot>`` (``<param>`` an index or a name, which may contain dots;
    ``<slot>`` never does); the JSON holds the non-tensor slots the same way and the param groups.

    Example:
        >>> t, meta = flatten_optimizer_state({"state": {0: {"step": 3, "exp_avg": torch.ones(2)}},
        ...                                   "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99)}]})
        >>> sorted(t), meta["scalars"], meta["param_groups"][0]["betas"]
        (['state.0.exp_avg'], {'state.0.step': 3}, [0.9, 0.99])
        >>> unflatten_optimizer_state(t, meta)["state"]["0"]["step"]
        3
    """
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for name, entry in state.get("state", {}).items():
        for key, value in entry.items():
            slot = f"state.{name}.{key}"
            if isinstance(value, torch.Tensor):
                tensors[slot] = to_full(value.detach()).to("cpu").contiguous()
            else:
                scalars[slot] = value
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items()}
        for group in state.get("param_groups", [])
    ]
    return tensors, {"scalars": scalars, "param_groups": groups}


def unflatten_optimizer_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_optimizer_state`: ``{"state": {param: {slot: value}}, "param_groups"}``
    (``param`` as the string it was written with)."""
    state: dict[str, dict[str, Any]] = {}
    for slot, value in list(tensors.items()) + list(meta["scalars"].items()):
        name, key = slot.removeprefix("state.").rsplit(".", 1)
        state.setdefault(name, {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _unshared(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU copies for safetensors; tensors sharing storage (tied embeddings) get their own copy."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state.items():
        cpu = value.detach().to("cpu").contiguous()
        pointer = cpu.untyped_storage().data_ptr()
        if pointer in seen:
            cpu = cpu.clone()
        seen.add(pointer)
        out[key] = cpu
    return out


def save_full_state(
    directory: str | os.PathLike[str],
    model_state: Mapping[str, torch.Tensor],
    optim_state: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write :func:`full_state_dicts` output as safetensors + JSON, atomically (temp dir, then rename).

    Files: ``model.safetensors``, ``optimizer.safetensors`` + ``optimizer.json``, ``extra.json``.
    Call it on rank 0 only.
    """
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        save_file(_unshared(model_state), str(tmp / "model.safetensors"))
        if optim_state is not None:
            tensors, meta = flatten_optimizer_state(optim_state)
            save_file(tensors, str(tmp / "optimizer.safetensors"))
            (tmp / "optimizer.json").write_text(json.dumps(meta, indent=1))
        (tmp / "extra.json").write_text(json.dumps(dict(extra or {}), indent=1, default=str))

    atomic_directory(directory, fill)


def load_full_state(
    directory: str | os.PathLike[str],
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None, dict[str, Any]]:
    """Read :func:`save_full_state`'s files: ``(model_state, optim_state or None, extra)`` on the CPU."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    directory = Path(directory)
    if not (directory / "model.safetensors").is_file():
        raise FileNotFoundError(f"{directory} holds no model.safetensors (not a save_full_state directory)")
    model_state = load_file(str(directory / "model.safetensors"))
    optim_state = None
    if (directory / "optimizer.safetensors").is_file():
        meta = json.loads((directory / "optimizer.json").read_text())
        optim_state = unflatten_optimizer_state(load_file(str(directory / "optimizer.safetensors")), meta)
    extra_path = directory / "extra.json"
    extra = json.loads(extra_path.read_text()) if extra_path.is_file() else {}
    return model_state, optim_state, extra
