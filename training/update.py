"""One optimisation step: advantages, the per-algorithm micro-batch losses and the update."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from training import distributed as D
from training import losses as L
from training.algorithms import ALGORITHMS, best_of_group
from training.config import Args, update_passes
from training.intervention import from_args, intervening
from training.policy import Policy, autocast_context, needs_reference, use_autocast
from training.rollout import EpisodeBatch, action_logits, distinct_rows
from training.top_layers import supports_top_layers, top_action_logits

# ====================================================================================================
# Update
# ====================================================================================================


_DRIFT_TOLERANCE = 0.5
"""Max |logit difference| between the update's first pass and the rollout (bf16 rounding stays far below)."""


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN/inf; the step was not applied."""


def compute_advantages(episodes: EpisodeBatch, args: Args, ctx: D.DistContext | None = None) -> torch.Tensor:
    """``(batch, turn)`` advantages of the policy-gradient algorithms (ppo whitens over the global batch)."""
    advantages = ALGORITHMS[args.algo].advantages
    if advantages is None:
        raise ValueError(f"algo {args.algo!r} has no advantages")
    return advantages(episodes, args, ctx or D.DistContext()).float().contiguous()


def top_layer_start(policy: Policy, args: Args) -> int | None:
    """The first adapted layer when the update may reuse the rollout's activations below it, else None."""
    if not (args.reuse_rollout_activations and policy.is_lora and args.lora_layers):
        return None
    if ALGORITHMS[args.algo].plays != "policy" or not supports_top_layers(policy.model):
        return None
    start = int(policy.model.config.num_hidden_layers) - args.lora_layers
    return start if start >= 1 else None


def _policy_logits(
    model: nn.Module,
    chunk: EpisodeBatch,
    hidden: torch.Tensor | None,
    start: int | None,
    share_prefix: bool = True,
) -> torch.Tensor:
    """Direction logits of every decision of ``chunk``; rows whose decisions read the same tokens (a
    single-turn group: only the sampled letter after the last decision differs) are run once, and the
    distinct rows' common prefix once (``rollout.action_logits``, ``top_layers.top_action_logits``) unless
    ``share_prefix`` is False."""
    shared = distinct_rows(
        [
            [*chunk.input_ids[i, :end].tolist(), *chunk.attention_mask[i, :end].tolist()]
            for i, end in enumerate((chunk.action_positions[:, -1] + 1).tolist())
        ]
    )
    if shared is not None:
        first, inverse = shared
        part = None if hidden is None else hidden[first]
        logits = _policy_logits(model, chunk.select(first), part, start, share_prefix)
        return logits[inverse.to(logits.device)]
    if hidden is None or start is None:
        return action_logits(model, chunk, share_prefix=share_prefix)
    return top_action_logits(model, hidden, chunk, start, share_prefix=share_prefix)


def _reference_logits(
    policy: Policy, episodes: EpisodeBatch, args: Args, hidden: torch.Tensor | None, start: int | None
) -> torch.Tensor:
    """Reference-policy direction logits for every decision (no grad)."""
    parts = []
    with torch.no_grad(), policy.reference_model() as ref:
        for first in range(0, len(episodes), args.micro_batch_size):
            rows = list(range(first, min(first + args.micro_batch_size, len(episodes))))
            chunk = episodes.select(rows)
            with autocast_context(args, ref):
                part = None if hidden is None else hidden[rows]
                if ref is policy.model:  # the adapter switched off: the same (possibly sharded) weights
                    logits = policy.call_no_grad(_policy_logits, chunk, part, start)
                else:
                    logits = _policy_logits(ref, chunk, part, start)
            parts.append(logits.float().cpu())
    return torch.cat(parts)


def select_top_episodes(episodes: EpisodeBatch, group_size: int, keep_fraction: float) -> EpisodeBatch:
    """The ``ceil(keep_fraction·G)`` highest-return episodes of every group (Iterative-SFT's filter)."""
    return episodes.select(best_of_group(episodes, group_size, keep_fraction))


def _micro_loss(
    policy: Policy,
    chunk: EpisodeBatch,
    extras: dict[str, torch.Tensor],
    args: Args,
    entropy_coef: float,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """Loss of one micro-batch (mean over its episodes), its direction logits and its statistics."""
    intervention = from_args(args)  # training.intervention: only these forwards (with gradients) see it
    share_prefix = intervention is None  # a shared prefix splits the forward: the hook must see whole rows
    with (
        intervening(policy.model, intervention, chunk.attention_mask) as penalty,
        autocast_context(args, policy.model),
    ):
        # (b, T, 4); through DDP/FSDP when distributed, so backward all-reduces the gradients
        logits = policy.call(_policy_logits, chunk, extras.get("hidden"), extras.get("start"), share_prefix)
    logits = logits.float()
    algo = ALGORITHMS[args.algo]
    if algo.entropy_bonus:
        neighbours = chunk.neighbours.to(logits.device)
        extras = {
            **extras,
            "entropy_eq": L.equalized_entropy(logits, neighbours, temperature=args.temperature),
        }
    loss, stats = algo.loss(logits, chunk, extras, args, entropy_coef)
    if intervention is not None and intervention.mode == "penalty":
        extra = penalty.value()
        loss = loss + extra
        stats["intervention_penalty"] = float(torch.as_tensor(extra).detach())
    stats["entropy"] = float(L.policy_entropy(logits.detach(), args.temperature).mean())
    if algo.entropy_bonus:
        stats["entropy_eq"] = float(extras["entropy_eq"].detach().mean())
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
    ``hidden`` (from :mod:`training.top_layers`) holds the rollout's activations entering the first
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
    lr_multiplier = L.cosine_multiplier(step, total + 1, args.anneal_fraction)
    lr = args.lr * lr_multiplier
    entropy_coef = args.entropy_coef * multiplier
    for group in optimizer.param_groups:
        group["lr"] = group.get("peak_lr", args.lr) * lr_multiplier  # make_optimizer's groups (top_lr)

    start_layer = top_layer_start(policy, args) if hidden is not None else None
    if start_layer is None:
        hidden = None

    # ADVANTAGES
    extras_all: dict[str, torch.Tensor] = {}
    if ALGORITHMS[args.algo].advantages is not None:
        extras_all["advantages"] = compute_advantages(episodes, args, ctx)
    if needs_reference(args):
        extras_all["ref_logits"] = _reference_logits(policy, episodes, args, hidden, start_layer)
    if hidden is not None:
        extras_all["hidden"] = hidden
    on_policy = not episodes.greedy  # sampled by this policy (expert demos are greedy)
    drift = 0.0

    # UPDATE
    policy.model.train()
    params = list(policy.trainable_parameters().values())
    n = len(episodes)
    epochs = update_passes(args)
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
        **({"top_lr": args.top_lr * lr_multiplier} if args.top_lr is not None else {}),
        entropy_coef=entropy_coef,
        update_tokens=int(D.global_count(episodes.n_tokens * epochs, ctx)),
        autocast=use_autocast(args, policy.model),
        top_layers_only=hidden is not None,
    )
    if on_policy:
        out["logit_drift"] = max(D.gather_objects(drift, ctx) or [drift]) if ctx.distributed else drift
    return out
