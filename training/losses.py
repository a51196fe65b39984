"""Advantages and losses for training a language model's four-way direction policy in the maze.

Every function is pure (tensors in, tensors out) and follows the paper's App. Q formulas or the
cited reference implementation. Conventions:

- An episode batch is laid out group after group: episodes ``g*G .. g*G+G-1`` form group ``g`` (same
  maze seed), ``G`` = ``group_size``.
- Per-turn tensors have shape ``(batch, turn)``; ``mask`` is 1 at real decision positions (direction
  emissions) and 0 at padding.
- The policy is over the four direction tokens N/E/S/W: ``direction_logits`` has shape
  ``(batch, turn, 4)`` and log-probabilities are ``log_softmax(direction_logits / temperature)``.

Example:
    >>> import torch
    >>> dr_grpo_advantages(torch.tensor([1.0, 3.0, 10.0, 20.0]), group_size=2)
    tensor([-1.,  1., -5.,  5.])
    >>> cosine_multiplier(2, 5)
    0.5
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

__all__ = [
    "best_set_targets",
    "clipped_surrogate",
    "cosine_multiplier",
    "direction_logprobs",
    "dr_grpo_advantages",
    "equalized_entropy",
    "group_advantages",
    "k3_kl",
    "policy_entropy",
    "reinforce_advantages",
    "returns_to_go",
    "rloo_advantages",
    "seq_mean_token_sum",
    "sft_best_set_loss",
    "sft_loss",
    "state_values",
    "tbrm_residuals",
    "token_mean",
    "whiten",
]


def _grouped(values: Tensor, group_size: int) -> Tensor:
    """View ``(batch, ...)`` as ``(n_groups, group_size, ...)``, with a clear error when G does not divide."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int; got {group_size!r}")
    n = values.shape[0]
    if n % group_size:
        raise ValueError(
            f"group_size={group_size} does not divide the batch of {n} episodes; "
            f"use a batch that is a multiple of the group size"
        )
    return values.reshape(n // group_size, group_size, *values.shape[1:])


def _ones_like_turns(values: Tensor, mask: Tensor | None) -> Tensor:
    return torch.ones_like(values) if mask is None else mask.to(values.dtype)


# ----------------------------------------------------------------------------------------------------
# Advantages
# ----------------------------------------------------------------------------------------------------


def group_advantages(
    returns: Float[Tensor, " batch"], group_size: int, *, scale: str = "none", eps: float = 1e-4
) -> Float[Tensor, " batch"]:
    """GRPO advantages: ``R_i − mean_group(R)``, optionally divided by the group's std.

    Args:
        returns: one trajectory return per episode, groups consecutive.
        group_size: episodes per group (``G``).
        scale: ``"none"`` (Dr. GRPO, no std: avoids the difficulty bias) or ``"std"`` (GRPO as in
            DeepSeekMath / TRL ``scale_rewards="group"``: divide by the unbiased group std + ``eps``).
        eps: added to the std.

    Example:
        >>> group_advantages(torch.tensor([1.0, 3.0]), 2, scale="std")  # std = sqrt(2)
        tensor([-0.7071,  0.7071])
    """
    if scale not in ("none", "std"):
        raise ValueError(f"scale must be 'none' (Dr. GRPO) or 'std' (GRPO); got {scale!r}")
    grouped = _grouped(returns, group_size)  # (n_groups, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "std":
        if group_size < 2:
            raise ValueError("scale='std' needs group_size >= 2 (the std of one episode is undefined)")
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.reshape(returns.shape)


def dr_grpo_advantages(returns: Float[Tensor, " batch"], group_size: int) -> Float[Tensor, " batch"]:
    """Dr. GRPO (the paper's primary algorithm): ``A_i = R_i − mean_group(R)``, no std scaling."""
    return group_advantages(returns, group_size, scale="none")


def rloo_advantages(returns: Float[Tensor, " batch"], group_size: int) -> Float[Tensor, " batch"]:
    """REINFORCE leave-one-out: ``A_i = R_i − mean_{j≠i} R_j`` within each group (needs G >= 2).

    Example:
        >>> rloo_advantages(torch.tensor([1.0, 2.0, 6.0]), 3)  # 1-(2+6)/2, 2-(1+6)/2, 6-(1+2)/2
        tensor([-3.0000, -1.5000,  4.5000])
    """
    if group_size < 2:
        raise ValueError(f"RLOO needs group_size >= 2 (a leave-one-out baseline); got {group_size}")
    grouped = _grouped(returns, group_size)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(returns.shape)


def returns_to_go(
    rewards: Float[Tensor, "batch turn"], mask: Float[Tensor, "batch turn"] | None = None, gamma: float = 1.0
) -> Float[Tensor, "batch turn"]:
    """``G_t = Σ_{k≥t} γ^{k−t} r_k`` over real turns (masked rewards count as 0).

    Example:
        >>> returns_to_go(torch.tensor([[1.0, 2.0, 3.0]]))
        tensor([[6., 5., 3.]])
    """
    m = _ones_like_turns(rewards, mask)
    r = rewards * m
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):
        running = r[:, t] + gamma * running
        out[:, t] = running
    return out * m


def reinforce_advantages(
    rewards: Float[Tensor, "batch turn"],
    group_size: int,
    mask: Float[Tensor, "batch turn"] | None = None,
    gamma: float = 1.0,
) -> Float[Tensor, "batch turn"]:
    """The paper's token-level REINFORCE advantage (App. Q.1).

    ``G_{i,t}`` = returns-to-go with γ = 1 (``gamma`` < 1 discounts later turns); per-position group baseline
    ``b_t = Σ_i m_{i,t} G_{i,t} / max(Σ_i m_{i,t}, 1)`` over the episodes ``i`` of a group;
    ``A_{i,t} = (G_{i,t} − b_t)·m_{i,t}``.

    Example:
        >>> reinforce_advantages(torch.tensor([[1.0, 2.0], [3.0, 0.0]]), 2)  # G = [[3,2],[3,0]], b = [3,1]
        tensor([[ 0.,  1.],
                [ 0., -1.]])
    """
    m = _ones_like_turns(rewards, mask)
    g = returns_to_go(rewards, m, gamma)
    g_grouped = _grouped(g, group_size)  # (n_groups, G, T)
    m_grouped = _grouped(m, group_size)
    baseline = (m_grouped * g_grouped).sum(dim=1, keepdim=True) / m_grouped.sum(dim=1, keepdim=True).clamp(
        min=1.0
    )
    return ((g_grouped - baseline) * m_grouped).reshape(rewards.shape)


def whiten(
    values: Float[Tensor, "batch turn"], mask: Float[Tensor, "batch turn"], eps: float = 1e-8
) -> Tensor:
    """Zero-mean, unit-variance over the masked entries (PPO's advantage whitening); masked entries -> 0."""
    m = mask.to(values.dtype)
    n = m.sum().clamp(min=1.0)
    mean = (values * m).sum() / n
    var = (((values - mean) * m) ** 2).sum() / n
    return (values - mean) * torch.rsqrt(var + eps) * m


# ----------------------------------------------------------------------------------------------------
# Policy log-probabilities, ratios, surrogates, KL, entropy
# ----------------------------------------------------------------------------------------------------


def direction_logprobs(
    direction_logits: Float[Tensor, "*batch 4"],
    actions: Int[Tensor, "*batch"] | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """``log softmax(logits / T)`` over the four directions: the masked, temperature-scaled policy the
    rollout samples from. With ``actions``, the log-probability of each taken action (``(*batch,)``);
    without, all four (``(*batch, 4)``). The rollout's ``logprobs`` are exactly this at the chosen action.

    Example:
        >>> direction_logprobs(torch.zeros(1, 1, 4), torch.tensor([[2]]))  # uniform: log 1/4
        tensor([[-1.3863]])
        >>> direction_logprobs(torch.zeros(4), temperature=0.7).exp()
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
    """
    check_temperature(temperature)
    logp = F.log_softmax(direction_logits.float() / temperature, dim=-1)
    if actions is None:
        return logp
    return logp.gather(-1, actions.long().clamp(min=0).unsqueeze(-1)).squeeze(-1)


def check_temperature(temperature: float) -> None:
    """Raise unless ``temperature`` is a finite number > 0."""
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(
            f"temperature must be a finite number > 0 (use greedy=True for argmax); got {temperature!r}"
        )


def clipped_surrogate(
    logp: Float[Tensor, "batch turn"],
    logp_old: Float[Tensor, "batch turn"],
    advantages: Float[Tensor, "batch turn"],
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = 3.0,
    log_ratio_clamp: float = 20.0,
) -> tuple[Float[Tensor, "batch turn"], Float[Tensor, "batch turn"]]:
    """Per-token PPO-clip loss with the paper's dual clip (verl's ``compute_policy_loss``).

    ``ρ = exp(clamp(logp − logp_old, ±log_ratio_clamp))``;
    ``l = max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε_high))``; with ``dual_clip = c`` and ``A < 0`` the loss is
    further capped: ``l = min(l, −c·A)`` (Ye et al. 2020), so a huge ratio on a bad action cannot
    produce an unbounded gradient. The paper uses ε = 0.2, c = 3.0, clamp 20.

    Returns:
        ``(loss, clipped)``: per-token loss (minimise it) and a 0/1 tensor marking tokens where a clip
        was active (for the clip-fraction metric).

    Example:
        >>> loss, _ = clipped_surrogate(torch.log(torch.tensor([[5.0]])), torch.zeros(1, 1), -torch.ones(1, 1))
        >>> loss  # -A·ρ = 5, -A·clip(ρ) = 1.2, max = 5, dual clip caps at c·|A| = 3
        tensor([[3.]])
    """
    high = clip_eps if clip_eps_high is None else clip_eps_high
    if clip_eps < 0 or high < 0:
        raise ValueError(f"clip ranges must be >= 0; got clip_eps={clip_eps}, clip_eps_high={clip_eps_high}")
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1 (the paper uses 3.0) or None; got {dual_clip}")
    log_ratio = (logp - logp_old).clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_eps, 1.0 + high)
    loss = torch.maximum(unclipped, clipped)
    was_clipped = (clipped > unclipped).to(logp.dtype)
    if dual_clip is not None:
        cap = -advantages * dual_clip
        capped = torch.minimum(loss, cap)
        negative = advantages < 0
        was_clipped = torch.where(negative & (cap < loss), torch.ones_like(was_clipped), was_clipped)
        loss = torch.where(negative, capped, loss)
    return loss, was_clipped


def k3_kl(
    logp: Float[Tensor, "batch turn"], logp_ref: Float[Tensor, "batch turn"]
) -> Float[Tensor, "batch turn"]:
    """Schulman's k3 estimator of KL(π‖π_ref) at the sampled action: ``π_ref/π − log(π_ref/π) − 1`` (>= 0).

    Example:
        >>> k3_kl(torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25])))  # 0.5 + ln 2 − 1
        tensor([0.1931])
    """
    delta = (logp_ref - logp).clamp(-20.0, 20.0)
    return torch.exp(delta) - delta - 1.0


def policy_entropy(
    direction_logits: Float[Tensor, "batch turn 4"], temperature: float = 1.0
) -> Float[Tensor, "batch turn"]:
    """Entropy of the four-way policy ``softmax(logits / T)`` (nats)."""
    logp = F.log_softmax(direction_logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def equalized_entropy(
    direction_logits: Float[Tensor, "batch turn 4"],
    neighbours: Int[Tensor, "batch turn 4"],
    *,
    temperature: float = 1.0,
    n_classes: int = 3,
) -> Float[Tensor, "batch turn"]:
    """The paper's equalized entropy ``H_eq = Σ_c H_c`` (App. Q).

    For each tile class ``c`` with ``k_c >= 2`` neighbours of that class, ``H_c`` is the entropy of the
    softmax over the direction logits of exactly those neighbours; classes with fewer than two
    neighbours contribute 0. Maximising it spreads probability only among equally-tiled moves, so it
    breaks the untrained model's "always N" habit without pushing towards a uniform policy that would
    fight the reward.

    Args:
        direction_logits: logits of N, E, S, W at each decision.
        neighbours: tile class (``maze_env.Tile``: PATH=0, MOLD=1, GOLD=2) to the N, E, S, W.
        temperature: logits are divided by it first (use the sampling temperature).
        n_classes: number of tile classes.

    Example:
        >>> logits = torch.tensor([[[0.0, math.log(3.0), 0.0, 5.0]]])
        >>> equalized_entropy(logits, torch.tensor([[[0, 0, 1, 2]]]))  # Path pair [1/4, 3/4]; singletons 0
        tensor([[0.5623]])
    """
    z = direction_logits.float() / temperature
    total = torch.zeros(z.shape[:-1], dtype=z.dtype, device=z.device)
    for c in range(n_classes):
        selected = neighbours == c  # (batch, turn, 4)
        count = selected.sum(-1)
        masked = z.masked_fill(~selected, float("-inf"))
        logp = masked - torch.logsumexp(masked, dim=-1, keepdim=True)
        logp = torch.where(selected, logp, torch.zeros_like(logp))  # no -inf * 0
        h = -(logp.exp() * logp * selected).sum(-1)
        total = total + torch.where(count >= 2, h, torch.zeros_like(h))
    return total


# ----------------------------------------------------------------------------------------------------
# Aggregation and schedules
# ----------------------------------------------------------------------------------------------------


def seq_mean_token_sum(
    values: Float[Tensor, "batch turn"], mask: Float[Tensor, "batch turn"], z: float
) -> Float[Tensor, ""]:
    """Dr. GRPO's "seq-mean-token-sum" normalisation: ``mean_i( Σ_t m_{i,t}·v_{i,t} / Z )``, constant ``Z``.

    Example:
        >>> seq_mean_token_sum(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 1.0], [1.0, 0.0]]), 2.0)
        tensor(1.5000)
    """
    if z <= 0:
        raise ValueError(f"the normalisation constant Z must be > 0; got {z}")
    return ((values * mask.to(values.dtype)).sum(-1) / z).mean()


def token_mean(values: Float[Tensor, "batch turn"], mask: Float[Tensor, "batch turn"]) -> Float[Tensor, ""]:
    """Mean over the masked entries (0 when the mask is empty)."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def cosine_multiplier(step: int, total_steps: int, fraction: float = 1.0) -> float:
    """The paper's annealing factor ``½(1 + cos(π·min(s/(S−1)·f, 1)))`` for step ``s`` of ``S``.

    It scales both the entropy coefficient ``β(s) = β₀·multiplier`` and the learning rate. With
    ``S = 1`` it is 1 (a single step is never annealed).

    Example:
        >>> [cosine_multiplier(s, 5) for s in range(5)]
        [1.0, 0.8535533905932737, 0.5, 0.14644660940672627, 0.0]
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1; got {total_steps}")
    if fraction < 0:
        raise ValueError(f"fraction must be >= 0; got {fraction}")
    if total_steps == 1:
        return 1.0
    progress = min(step / (total_steps - 1) * fraction, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------------
# TBRM and SFT
# ----------------------------------------------------------------------------------------------------


def state_values(direction_logits: Float[Tensor, "batch turn 4"]) -> Float[Tensor, "batch turn"]:
    """Soft state values with logits as Q (TBRM): ``V(s) = logsumexp_a logit(s, a)`` over N/E/S/W."""
    return torch.logsumexp(direction_logits.float(), dim=-1)


def tbrm_residuals(
    logp: Float[Tensor, "batch turn"],
    logp_ref: Float[Tensor, "batch turn"],
    returns: Float[Tensor, " batch"],
    v_first: Float[Tensor, " batch"],
    *,
    beta: float,
    mask: Float[Tensor, "batch turn"] | None = None,
    v_ref_first: Float[Tensor, " batch"] | None = None,
) -> Float[Tensor, " batch"]:
    """Trajectory Bellman residual (Yuan et al. 2025): ``V_θ(s_1) + Σ_t log π_θ − Σ_t log π_ref − R/β``.

    The policy is ``softmax`` of the four direction logits (temperature 1: the logits are the Q-values),
    ``V_θ(s_1)`` their logsumexp at the first decision, and the sums run over decisions only (the
    environment's tokens are not actions). With ``v_ref_first`` (ReVal's calibration) the residual uses
    ``V_θ(s_1) − V_ref(s_1)``, so that with zero reward the optimum is the reference policy. The loss is
    the mean of the squared residuals. Exact for deterministic transitions; the wind makes it approximate.

    Example:
        >>> tbrm_residuals(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.5]]), torch.tensor([10.0]),
        ...                torch.tensor([2.0]), beta=5.0)  # 2 + (-3) - (-3) - 10/5
        tensor([0.])
    """
    if beta <= 0:
        raise ValueError(f"TBRM's KL coefficient beta must be > 0; got {beta}")
    m = _ones_like_turns(logp, mask)
    residual = v_first + ((logp - logp_ref) * m).sum(-1) - returns / beta
    if v_ref_first is not None:
        residual = residual - v_ref_first
    return residual


def sft_loss(
    direction_logits: Float[Tensor, "batch turn 4"],
    actions: Int[Tensor, "batch turn"],
    mask: Float[Tensor, "batch turn"] | None = None,
) -> Float[Tensor, ""]:
    """Cross-entropy of the target directions under the four-way softmax, averaged over decisions.

    The softmax is restricted to N/E/S/W, the same distribution the action-masked sampler draws from,
    so the loss trains exactly the policy that is run.

    Example:
        >>> sft_loss(torch.zeros(1, 2, 4), torch.tensor([[0, 3]]))  # uniform: ln 4
        tensor(1.3863)
    """
    nll = -direction_logprobs(direction_logits, actions)
    m = _ones_like_turns(nll, mask)
    return token_mean(nll, m)


def best_set_targets(
    action_values: Float[Tensor, "batch turn 4"], tol: float = 1e-6
) -> Float[Tensor, "batch turn 4"]:
    """Uniform distribution over the directions whose value is within ``tol`` of the best.

    The planner (:class:`maze_env.search.Expert`) ties values within 1e-9 in float64; expert batches hold
    them as float32, so the default ``tol`` sits at float32 resolution for the maze's rewards.

    Example:
        >>> best_set_targets(torch.tensor([[[1.0, 3.0, 3.0, -10.0]]]))
        tensor([[[0.0000, 0.5000, 0.5000, 0.0000]]])
    """
    best = (action_values >= action_values.max(dim=-1, keepdim=True).values - tol).to(torch.float32)
    return best / best.sum(dim=-1, keepdim=True)


def sft_best_set_loss(
    direction_logits: Float[Tensor, "batch turn 4"],
    action_values: Float[Tensor, "batch turn 4"],
    mask: Float[Tensor, "batch turn"] | None = None,
) -> Float[Tensor, ""]:
    """Cross-entropy against :func:`best_set_targets` of the expert's action values, averaged over decisions.

    It is the expected :func:`sft_loss` over the expert's uniform tie-break, without its sampling noise.

    Example:
        >>> sft_best_set_loss(torch.zeros(1, 1, 4), torch.tensor([[[0.0, 0.0, -10.0, -10.0]]]))  # ln 4
        tensor(1.3863)
    """
    targets = best_set_targets(action_values.float()).to(direction_logits.device)
    nll = -(targets * F.log_softmax(direction_logits.float(), dim=-1)).sum(dim=-1)
    m = _ones_like_turns(nll, mask)
    return token_mean(nll, m)


# ====================================================================================================
# Preferences: Bradley–Terry reward models and DPO (issue 21)
# ====================================================================================================


def bradley_terry_loss(
    reward_chosen: Float[Tensor, " batch"], reward_rejected: Float[Tensor, " batch"]
) -> Float[Tensor, ""]:
    """The Bradley–Terry negative log-likelihood of the preferences: ``mean(−log σ(r_c − r_r))``
    (``softplus(−(r_c − r_r))``, stable for large margins).

    Example:
        >>> round(float(bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.0]))), 6)  # log(1 + e^-1)
        0.313262
    """
    return F.softplus(-(reward_chosen - reward_rejected)).mean()


def implicit_reward(
    logprob: Float[Tensor, "*batch"], ref_logprob: Float[Tensor, "*batch"], beta: float
) -> Float[Tensor, "*batch"]:
    """``β · (log π(a|s) − log π_ref(a|s))``: the reward a policy trained against ``π_ref`` implies (Rafailov et
    al. 2024, "From r to Q*": it equals r(s, a) + V*(s') − V*(s) at the optimum)."""
    return beta * (logprob - ref_logprob)


def dpo_loss(
    logprob_chosen: Float[Tensor, " batch"],
    logprob_rejected: Float[Tensor, " batch"],
    ref_chosen: Float[Tensor, " batch"],
    ref_rejected: Float[Tensor, " batch"],
    beta: float,
) -> Float[Tensor, ""]:
    """The DPO sigmoid loss (Rafailov et al. 2023, Eq. 7): Bradley–Terry on the implicit rewards,
    ``mean(−log σ(β[(log π_c − log π_ref,c) − (log π_r − log π_ref,r)]))``.

    Example:
        >>> z = torch.zeros(1)
        >>> round(float(dpo_loss(z, z, z, z, beta=0.1)), 6)  # a policy equal to its reference: log 2
        0.693147
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0; got {beta}")
    return bradley_terry_loss(
        implicit_reward(logprob_chosen, ref_chosen, beta),
        implicit_reward(logprob_rejected, ref_rejected, beta),
    )
