"""Logit-as-Q: read action values from the direction-token logits and compare them with the maze's true Q.

For a KL-regularised policy, logits are soft Q-values up to a per-state constant (Rafailov et al. 2024,
"From r to Q*"): ``beta * l(s, a) = Q(s, a) + C(s)``. At each maze decision this module reads

- ``Q^(s, a) = beta * l(s, a)`` for the four direction tokens N, E, S, W (``l``: output logits, or the
  logit lens of layer ``l`` when ``layer`` is given),
- ``V^(s) = beta * logsumexp_a l(s, a)`` over the same four tokens (the action set the rollouts sample
  from: ``training.rollout`` masks sampling to these tokens),
- ``beta * log pi(a|s) = Q^(s, a) - V^(s)`` (the policy restricted to the four tokens, temperature 1),
- the implicit reward against a reference model, ``beta * (log pi(a|s) - log pi_ref(a|s))``.

The true ``Q_h(s, a)`` comes from ``maze_env.action_values`` (exact search over ``h`` turns, melting
included, wind off by default), with ``h = min(horizon, turns left)``.

Because ``C(s)`` is unidentifiable, the correlation is taken after centring both value sets within each
state (``Q - mean_a Q``): :class:`QCorrelation` reports the Spearman correlation over all centred
(state, action) pairs, and the mean of per-state Spearman correlations over the 4 actions (states where
either side is constant are skipped and counted).

Example:
    >>> import numpy as np
    >>> q_hat = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 1.0, 5.0]])
    >>> q_true = np.array([[10.0, 20.0, 30.0, 40.0], [-5.0, -5.0, 0.0, 9.0]])
    >>> q_correlation(q_hat, q_true).mean_per_state
    1.0
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from scipy import stats
from torch import Tensor, nn

from maze_env.dynamics import ACTIONS
from maze_env.search import action_values
from probes import layers as _layers
from probes.maze_states import MazeStates, read_decisions


class QReadoutError(ValueError):
    """Bad Q-readout input: non-positive beta, shape mismatch, readouts of different states."""


def _check_beta(beta: float) -> float:
    if isinstance(beta, bool) or not isinstance(beta, int | float) or not math.isfinite(beta) or beta <= 0:
        raise QReadoutError(f"beta must be a positive finite number, got {beta!r}")
    return float(beta)


@dataclass(frozen=True)
class QReadout:
    """Action values read from direction-token logits at ``n_states`` decision states.

    Attributes:
        action_tokens: the action letters, in column order (``("N", "E", "S", "W")``).
        token_ids: their token ids.
        values: ``(n_states, 4)`` ``Q^ = beta * logits`` (float64).
        beta: the temperature ``beta``.
        layer: ``None`` for the model's output logits, else the logit-lens layer.
        model_name: provenance.
    """

    action_tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    values: Float[Tensor, "n_states n_actions"]
    beta: float = 1.0
    layer: int | None = None
    model_name: str = ""

    def __post_init__(self) -> None:
        _check_beta(self.beta)
        values = torch.as_tensor(self.values).detach().to(device="cpu", dtype=torch.float64)
        if values.ndim != 2 or values.shape[1] != len(self.action_tokens):
            raise QReadoutError(
                f"values must be (n_states, {len(self.action_tokens)}), got {tuple(values.shape)}"
            )
        if not bool(torch.isfinite(values).all()):
            raise QReadoutError("values contain NaN or inf")
        object.__setattr__(self, "values", values)

    def __len__(self) -> int:
        return int(self.values.shape[0])

    @property
    def logits(self) -> Float[Tensor, "n_states n_actions"]:
        """The direction-token logits ``Q^ / beta``."""
        return self.values / self.beta

    @property
    def state_values(self) -> Float[Tensor, " n_states"]:
        """``V^ = beta * logsumexp_a logits``."""
        return self.beta * torch.logsumexp(self.logits, dim=1)

    @property
    def log_policy(self) -> Float[Tensor, "n_states n_actions"]:
        """``log pi(a|s)`` restricted to the action tokens: ``(Q^ - V^) / beta``."""
        return torch.log_softmax(self.logits, dim=1)

    @property
    def advantages(self) -> Float[Tensor, "n_states n_actions"]:
        """``Q^ - V^ = beta * log pi``."""
        return self.values - self.state_values[:, None]

    def centred(self) -> Float[Tensor, "n_states n_actions"]:
        """``Q^ - mean_a Q^`` (removes the unidentifiable per-state constant)."""
        return self.values - self.values.mean(dim=1, keepdim=True)


def readout_from_logits(
    direction_logits: Float[Tensor, "n_states n_actions"],
    token_ids: Sequence[int],
    *,
    beta: float = 1.0,
    layer: int | None = None,
    action_tokens: Sequence[str] = ACTIONS,
    model_name: str = "",
) -> QReadout:
    """Wrap precomputed direction logits (e.g. ``EpisodeBatch.direction_logits.flatten(0, 1)``)."""
    beta = _check_beta(beta)
    return QReadout(
        tuple(action_tokens),
        tuple(int(i) for i in token_ids),
        beta * torch.as_tensor(direction_logits).double(),
        beta,
        layer,
        model_name,
    )


def q_readout(
    model: nn.Module,
    tokenizer: Any,
    states: MazeStates,
    *,
    beta: float = 1.0,
    layer: int | None = None,
    batch_size: int = 4,
) -> QReadout:
    """``Q^ = beta * logits`` of N/E/S/W at every decision state of ``states``.

    Args:
        layer: ``None`` reads the output logits (exact); an int reads the logit lens of that layer's
            ``resid_post`` (``final_norm(h_l) @ W_U``; at the last layer this equals the output logits
            of models without logit soft-capping).

    Example:
        >>> from probes.models import tiny_model
        >>> from maze_env import MazeConfig, scripted_trajectories
        >>> model, tok = tiny_model("llama")
        >>> config = MazeConfig(size=30)
        >>> states = MazeStates.from_trajectories(scripted_trajectories("mold", 2, config=config), config=config)
        >>> q_readout(model, tok, states, beta=0.5).values.shape
        torch.Size([5, 4])
    """
    beta = _check_beta(beta)
    if layer is None:
        read = read_decisions(model, tokenizer, states, None, batch_size=batch_size)
        logits = read.direction_logits
    else:
        layer = _layers.check_layer(model, layer)
        read = read_decisions(model, tokenizer, states, [layer], batch_size=batch_size)
        logits = lens_direction_logits(model, read.activations[layer], read.token_ids)
    return readout_from_logits(
        logits, read.token_ids, beta=beta, layer=layer, model_name=_layers.model_name(model)
    )


@torch.inference_mode()
def lens_direction_logits(
    model: nn.Module, hidden: Float[Tensor, "n d_model"], token_ids: Sequence[int]
) -> Float[Tensor, "n n_actions"]:
    """``final_norm(hidden) @ W_U`` at ``token_ids`` (the logit lens of residual activations)."""
    w_u = _layers.unembed(model)[:, list(token_ids)]  # (d_model, n_actions)
    normed = _layers.final_norm(model)(hidden.to(device=w_u.device, dtype=w_u.dtype)[:, None, :])[:, 0]
    return (normed @ w_u).float().cpu()


def implicit_reward(
    policy: QReadout, reference: QReadout, actions: Sequence[int] | Tensor | None = None
) -> Tensor:
    """``beta * (log pi(a|s) - log pi_ref(a|s))`` with the policy's beta.

    Returns ``(n_states, 4)`` for every action, or ``(n_states,)`` at ``actions`` (one per state).
    """
    if policy.values.shape != reference.values.shape or policy.token_ids != reference.token_ids:
        raise QReadoutError(
            f"readouts differ in shape or tokens: {tuple(policy.values.shape)} {policy.token_ids} vs "
            f"{tuple(reference.values.shape)} {reference.token_ids}"
        )
    reward = policy.beta * (policy.log_policy - reference.log_policy)
    if actions is None:
        return reward
    index = torch.as_tensor(actions, dtype=torch.long).flatten()
    if index.shape[0] != reward.shape[0] or bool(((index < 0) | (index >= reward.shape[1])).any()):
        raise QReadoutError(f"need one action in 0..{reward.shape[1] - 1} per state ({reward.shape[0]})")
    return reward[torch.arange(reward.shape[0]), index]


def true_q(states: MazeStates, *, horizon: int = 4, wind: str = "off") -> np.ndarray:
    """``(n_states, 4)`` true ``Q_h(s, a)`` from exact search with ``h = min(horizon, turns left)``.

    ``wind="off"`` searches all ``4^h`` action sequences (keep ``horizon <= 6``); ``"expectation"``
    averages the wind exactly (cost ``20^h``, keep ``horizon <= 3``).
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise QReadoutError(f"horizon must be a positive int, got {horizon!r}")
    out = np.zeros((len(states), 4))
    for index, grid, pos in states.iter_grids():
        h = max(1, min(horizon, int(states.turns_left[index])))
        out[index] = action_values(grid, pos, h, states.config, wind=wind)
    return out


@dataclass(frozen=True)
class QCorrelation:
    """Spearman agreement of read-out and true action values.

    Attributes:
        pooled: Spearman rho over all per-state-centred (state, action) pairs.
        pooled_p: its two-sided p-value.
        mean_per_state: mean over states of the Spearman rho between the 4 read-out and 4 true values.
        n_states: states given.
        n_states_used: states with non-constant values on both sides (those in ``mean_per_state``).
    """

    pooled: float
    pooled_p: float
    mean_per_state: float
    n_states: int
    n_states_used: int


def _as_array(values: Any, name: str) -> np.ndarray:
    if isinstance(values, QReadout):
        values = values.values
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise QReadoutError(f"{name} must be (n_states, n_actions), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise QReadoutError(f"{name} contains NaN or inf")
    return array


def q_correlation(q_hat: QReadout | Tensor | np.ndarray, q_true: Tensor | np.ndarray) -> QCorrelation:
    """Spearman correlation of ``q_hat`` with ``q_true`` after centring within each state.

    Raises:
        QReadoutError: shapes differ, fewer than 2 states, or NaN values.
    """
    a, b = _as_array(q_hat, "q_hat"), _as_array(q_true, "q_true")
    if a.shape != b.shape:
        raise QReadoutError(f"q_hat {a.shape} and q_true {b.shape} must have the same shape")
    if a.shape[0] < 2:
        raise QReadoutError("need at least 2 states")
    ca, cb = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        pooled = stats.spearmanr(ca.ravel(), cb.ravel())
        per_state = []
        for row_a, row_b in zip(a, b, strict=True):
            if np.ptp(row_a) == 0 or np.ptp(row_b) == 0:
                continue
            per_state.append(float(stats.spearmanr(row_a, row_b).statistic))
    return QCorrelation(
        pooled=float(pooled.statistic),
        pooled_p=float(pooled.pvalue),
        mean_per_state=float(np.mean(per_state)) if per_state else float("nan"),
        n_states=int(a.shape[0]),
        n_states_used=len(per_state),
    )


@dataclass(frozen=True)
class QComparison:
    """Logit-as-Q before and after training, on the same states.

    Attributes:
        before, after: the two readouts.
        q_true: ``(n_states, 4)`` true values.
        correlation_before, correlation_after: their agreement with ``q_true``.
        implicit_reward: ``(n_states, 4)`` ``beta * (log pi_after - log pi_before)``.
        horizon: the search horizon of ``q_true``.
    """

    before: QReadout
    after: QReadout
    q_true: np.ndarray
    correlation_before: QCorrelation
    correlation_after: QCorrelation
    implicit_reward: Tensor
    horizon: int

    def implicit_reward_correlation(self) -> QCorrelation:
        """Agreement of the implicit reward (as a per-state action score) with the true Q."""
        return q_correlation(self.implicit_reward, self.q_true)


def compare_q(
    model_before: nn.Module,
    model_after: nn.Module,
    tokenizer: Any,
    states: MazeStates,
    *,
    beta: float = 1.0,
    horizon: int = 4,
    layer: int | None = None,
    batch_size: int = 4,
) -> QComparison:
    """Logit-as-Q of two models (e.g. maze-naive and RL-trained) against the true Q on the same states.

    Example:
        >>> cmp = compare_q(naive, trained, tok, states, beta=0.1)  # doctest: +SKIP
        >>> cmp.correlation_before.pooled, cmp.correlation_after.pooled  # doctest: +SKIP
    """
    q = true_q(states, horizon=horizon)
    before = q_readout(model_before, tokenizer, states, beta=beta, layer=layer, batch_size=batch_size)
    after = q_readout(model_after, tokenizer, states, beta=beta, layer=layer, batch_size=batch_size)
    return QComparison(
        before=before,
        after=after,
        q_true=q,
        correlation_before=q_correlation(before, q),
        correlation_after=q_correlation(after, q),
        implicit_reward=implicit_reward(after, before),
        horizon=horizon,
    )
