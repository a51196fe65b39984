"""The algorithms, one entry each: who plays a step's episodes, which of them train, the advantages and
the loss. The loop (``training.train``) and the update (``training.update``) never branch on the name.

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
``sft``                   cross-entropy on the expert's letters (``training.expert_data``), or with
                          ``sft_targets="best"`` on every direction its planner rates best, equally
``iterative_sft``         each step: sample on-policy, keep the best ``keep_fraction`` of every group,
                          cross-entropy on their letters (RAFT / "Retaining by Doing" §4.2)
``dpo``                   the sigmoid DPO loss on pairs of moves from one maze state, the one with the
                          higher true Q preferred (``training.preferences``); reference: the untrained model
========================  =============================================================================

The maths of each loss is in :mod:`training.losses` (the paper's App. Q); this module only says which
pieces an algorithm uses.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from training import distributed as D
from training import losses as L
from training.rollout import EpisodeBatch

if TYPE_CHECKING:  # the config imports this module; only the annotations need Args
    from training.config import Args

Advantages = Callable[[EpisodeBatch, "Args", D.DistContext], Tensor]
"""``(episodes, args, ctx) -> (batch, turn)`` advantages, float64."""
Loss = Callable[[Tensor, EpisodeBatch, dict[str, Any], "Args", float], tuple[Tensor, dict[str, float]]]
"""``(direction logits (b, T, 4) float32, chunk, extras, args, entropy_coef) -> (loss, statistics)``."""


@dataclass(frozen=True)
class Algorithm:
    """What sets one algorithm apart; everything else (rollout, update loop, logging) is shared.

    Attributes:
        name: the ``--algo`` value.
        plays: ``"policy"`` (on-policy rollouts in GRPO groups), ``"expert"`` (the planner's
            demonstrations, one maze per episode) or ``"preferences"`` (pairs of moves from one state ranked by
            true Q, ``training.preferences``; rows ``2i``, ``2i + 1``).
        loss: the micro-batch loss.
        advantages: the policy gradients' advantages (None: the loss needs none).
        keep: rows of a step's episodes that train (None: all of them).
        entropy_bonus: the loss reads the equalized entropy (``extras["entropy_eq"]``; not SFT).
        reference: the loss always reads the reference policy's logits (TBRM).
        kl_penalty: ``kl_coef > 0`` adds the k3 KL to the reference (the policy gradients).
        passes: default passes over each batch (``--update-epochs`` overrides it when ``revisits``).
        revisits: a batch may be revisited (``--update-epochs``); SFT makes exactly one pass.
        min_group_size: the smallest group the advantages are defined for.
    """

    name: str
    loss: Loss
    plays: Literal["policy", "expert", "preferences"] = "policy"
    advantages: Advantages | None = None
    keep: Callable[[EpisodeBatch, Args], Tensor] | None = None
    entropy_bonus: bool = True
    reference: bool = False
    kl_penalty: bool = False
    passes: int = 1
    revisits: bool = True
    min_group_size: int = 1

    def needs_reference(self, args: Args) -> bool:
        """Whether a step computes the reference policy's logits."""
        return self.reference or (self.kl_penalty and args.kl_coef > 0)

    def update_passes(self, args: Args) -> int:
        """Passes over a batch."""
        if self.revisits and args.update_epochs is not None:
            return args.update_epochs
        return self.passes


# ----------------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------------


def _per_episode(advantage: Callable[[Tensor, int], Tensor]) -> Advantages:
    """An episode-level advantage broadcast to every decision of the episode."""

    def advantages(episodes: EpisodeBatch, args: Args, ctx: D.DistContext) -> Tensor:
        return advantage(episodes.returns.double(), args.group_size)[:, None].expand(-1, episodes.n_turns)

    return advantages


def _reinforce_advantages(episodes: EpisodeBatch, args: Args, ctx: D.DistContext) -> Tensor:
    return L.reinforce_advantages(episodes.rewards.double(), args.group_size, gamma=args.gamma)


def _ppo_advantages(episodes: EpisodeBatch, args: Args, ctx: D.DistContext) -> Tensor:
    mask = torch.ones_like(episodes.rewards, dtype=torch.float64)
    return D.whiten_global(_reinforce_advantages(episodes, args, ctx), mask, ctx)  # over the global batch


# ----------------------------------------------------------------------------------------------------
# Losses
# ----------------------------------------------------------------------------------------------------


def _sft_loss(
    logits: Tensor,
    chunk: EpisodeBatch,
    extras: dict[str, Any],
    args: Args,
    entropy_coef: float,
    *,
    expert: bool,
) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy on the played letters, or (``sft_targets="best"`` on the expert's batches, which hold
    the planner's Q-values as ``direction_logits``) on every direction the planner rates best."""
    actions = chunk.actions.to(logits.device)
    if expert and args.sft_targets == "best":
        loss = L.sft_best_set_loss(logits, chunk.direction_logits)
    else:
        loss = L.sft_loss(logits, actions)
    return loss, {"accuracy": float((logits.argmax(-1) == actions).float().mean())}


def _tbrm_loss(
    logits: Tensor, chunk: EpisodeBatch, extras: dict[str, Any], args: Args, entropy_coef: float
) -> tuple[Tensor, dict[str, float]]:
    """The squared trajectory Bellman residual with logits as Q (temperature 1), minus the entropy bonus."""
    actions = chunk.actions.to(logits.device)
    mask = torch.ones(logits.shape[:2], device=logits.device)
    entropy_eq = extras["entropy_eq"]
    logp = L.direction_logprobs(logits, actions)
    ref = extras["ref_logits"].to(logits.device)
    logp_ref = L.direction_logprobs(ref, actions)
    residual = L.tbrm_residuals(
        logp,
        logp_ref,
        chunk.returns.to(logits.device),
        L.state_values(logits)[:, 0],
        beta=args.tbrm_beta,
        v_ref_first=L.state_values(ref)[:, 0] if args.tbrm_reval else None,
    )
    loss = (residual**2).mean() - entropy_coef * L.seq_mean_token_sum(entropy_eq, mask, args.loss_z)
    stats = {
        "residual": float(residual.detach().abs().mean()),
        "kl": float(L.k3_kl(logp.detach(), logp_ref).mean()),
    }
    return loss, stats


def _surrogate_loss(
    logits: Tensor,
    chunk: EpisodeBatch,
    extras: dict[str, Any],
    args: Args,
    entropy_coef: float,
    *,
    dual_clip: bool,
) -> tuple[Tensor, dict[str, float]]:
    """The clipped (dual-clip unless ``dual_clip=False``) surrogate minus the equalized entropy bonus,
    plus ``kl_coef`` times the k3 KL to the reference, aggregated seq-mean-token-sum over ``loss_z``."""
    actions = chunk.actions.to(logits.device)
    behaviour = chunk.logprobs.to(logits.device)
    mask = torch.ones(logits.shape[:2], device=logits.device)
    logp = L.direction_logprobs(logits, actions, args.temperature)
    per_token, clipped = L.clipped_surrogate(
        logp,
        behaviour,
        extras["advantages"].to(logits.device),
        clip_eps=args.clip_eps,
        dual_clip=args.dual_clip if dual_clip else None,
    )
    stats = {
        "pg_loss": float(L.seq_mean_token_sum(per_token.detach(), mask, args.loss_z)),
        "clip_frac": float(clipped.mean()),
    }
    per_token = per_token - entropy_coef * extras["entropy_eq"]
    if args.kl_coef > 0:
        logp_ref = L.direction_logprobs(extras["ref_logits"].to(logits.device), actions, args.temperature)
        kl = L.k3_kl(logp, logp_ref)
        per_token = per_token + args.kl_coef * kl
        stats["kl"] = float(kl.detach().mean())
    stats["ratio"] = float(torch.exp(logp.detach() - behaviour).mean())
    return L.seq_mean_token_sum(per_token, mask, args.loss_z), stats


def _dpo_loss(
    logits: Tensor, chunk: EpisodeBatch, extras: dict[str, Any], args: Args, entropy_coef: float
) -> tuple[Tensor, dict[str, float]]:
    """DPO's sigmoid loss on preference rows (``2i`` preferred, ``2i + 1`` not; ``training.preferences``)."""
    actions = chunk.actions.to(logits.device)
    logp = L.direction_logprobs(logits, actions)[:, 0]
    ref = L.direction_logprobs(extras["ref_logits"].to(logits.device), actions)[:, 0]
    loss = L.dpo_loss(logp[0::2], logp[1::2], ref[0::2], ref[1::2], beta=args.dpo_beta)
    margin = (L.implicit_reward(logp[0::2], ref[0::2], args.dpo_beta)
              - L.implicit_reward(logp[1::2], ref[1::2], args.dpo_beta)).detach()  # fmt: skip
    return loss, {"pair_accuracy": float((margin > 0).float().mean()), "reward_margin": float(margin.mean())}


def best_of_group(episodes: EpisodeBatch, group_size: int, keep_fraction: float) -> Tensor:
    """Iterative-SFT's filter: rows of the ``ceil(keep_fraction·G)`` highest-return episodes of every group."""
    returns = L._grouped(episodes.returns, group_size)  # (n_groups, G)
    k = max(1, math.ceil(keep_fraction * group_size - 1e-9))
    order = torch.argsort(-returns, dim=1, stable=True)[:, :k]
    return (order + torch.arange(returns.shape[0])[:, None] * group_size).flatten().sort().values


def _best_of_group(episodes: EpisodeBatch, args: Args) -> Tensor:
    return best_of_group(episodes, args.group_size, args.keep_fraction)


_dual_clip = functools.partial(_surrogate_loss, dual_clip=True)

ALGORITHMS: dict[str, Algorithm] = {
    algo.name: algo
    for algo in (
        Algorithm("dr_grpo", _dual_clip, advantages=_per_episode(L.dr_grpo_advantages), kl_penalty=True),
        Algorithm(
            "grpo",
            _dual_clip,
            advantages=_per_episode(functools.partial(L.group_advantages, scale="std")),
            kl_penalty=True,
            min_group_size=2,
        ),
        Algorithm("reinforce", _dual_clip, advantages=_reinforce_advantages, kl_penalty=True),
        Algorithm(
            "rloo", _dual_clip, advantages=_per_episode(L.rloo_advantages), kl_penalty=True, min_group_size=2
        ),
        Algorithm(
            "ppo",
            functools.partial(_surrogate_loss, dual_clip=False),
            advantages=_ppo_advantages,
            kl_penalty=True,
            passes=4,
        ),
        Algorithm("tbrm", _tbrm_loss, reference=True),
        Algorithm(
            "sft",
            functools.partial(_sft_loss, expert=True),
            plays="expert",
            entropy_bonus=False,
            revisits=False,
        ),
        Algorithm(
            "iterative_sft",
            functools.partial(_sft_loss, expert=False),
            keep=_best_of_group,
            entropy_bonus=False,
            revisits=False,
        ),
        Algorithm("dpo", _dpo_loss, plays="preferences", reference=True, entropy_bonus=False),
    )
}
"""Every algorithm by its ``--algo`` name."""
