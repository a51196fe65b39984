"""Logit-as-Q: read action values from the direction-token logits and compare them with the maze's true Q.

For a KL-regularised policy, logits are soft Q-values up to a per-state constant (Rafailov et al. 2024,
"From r to Q*"): ``beta * l(s, a) = Q(s, a) + C(s)``. At each maze decision this module reads

- ``Q^(s, a) = beta * l(s, a)`` for the four direction tokens N, E, S, W (``l``: output logits, or the
  logit lens of layer ``l`` when ``layer`` is given),
- ``V^(s) = beta * logsumexp_a l(s, a)`` over the same four tokens (the action set the rollouts sample
  from: ``training.rollout`` masks sampling to these tokens),
- ``beta * log pi(a|s) = Q^(s, a) - V^(s)`` (the policy restricted to the four tokens, temperature 1),
- the implicit reward against a reference model, ``beta * (log pi(a|s) - log pi_ref(a|s))``
  (:func:`implicit_reward`, :func:`implicit_reward_readout`).

Logits as Q hold only up to the reference policy. The optimum of the KL-regularised objective
``max_pi E[sum_t r_t] - beta * KL(pi || pi_ref)`` (which SFT and DPO solve implicitly, and RL with a KL
penalty explicitly) is ``pi*(a|s) = pi_ref(a|s) * exp((Q*(s, a) - V*(s)) / beta)`` with
``V*(s) = beta * log sum_a pi_ref(a|s) exp(Q*(s, a) / beta)``, so

    beta * log pi*(a|s) = Q*(s, a) - V*(s) + beta * log pi_ref(a|s)
    beta * (log pi*(a|s) - log pi_ref(a|s)) = Q*(s, a) - V*(s)          (the implicit reward)

Reading ``beta * logits`` as Q is right only when ``pi_ref`` is uniform over the actions at every state;
otherwise the reference's preferences are mixed in. The implicit reward against the pre-training
(maze-naive) model removes them and leaves the advantage ``Q* - V*``. (``Q*`` is the soft, KL-regularised
value; the search below gives the unregularised ``Q_h``, so agreement is a comparison of rankings.)

The true ``Q_h(s, a)`` comes from ``maze_env.action_values`` (exact search over ``h`` turns, melting
included, wind off by default), with ``h = min(horizon, turns_left)``: exactly the moves the episode
still allows (:func:`q_horizons`). A state with no move left (the observation after the last move of a
full-length episode) has no action values: :func:`true_q` refuses it; drop it first with
``MazeStates.decisions()``.

Because ``C(s)`` (or ``V*(s)``) is unidentifiable, the correlation is taken after centring both value
sets within each state (``Q - mean_a Q``): :class:`QCorrelation` reports the Spearman correlation over
all centred (state, action) pairs, and the mean of per-state Spearman correlations over the 4 actions
(states where either side is constant are skipped and counted). The same :func:`q_correlation` compares
the implicit reward with Q.

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
    """Bad Q-readout input: non-positive beta, shape mismatch, readouts of different states, states with
    no move left."""


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
        values: ``(n_states, 4)`` ``Q^ = beta * logits`` (float64); for an implicit-reward readout
            (:func:`implicit_reward_readout`) ``beta * (log pi - log pi_ref)``.
        beta: the temperature ``beta``.
        layer: ``None`` for the model's output logits, else the logit-lens layer.
        model_name: provenance.
        reference_model: empty for a plain readout; the reference model's name for an implicit reward.
    """

    action_tokens: tuple[str, ...]
    token_ids: tuple[int, ...]
    values: Float[Tensor, "n_states n_actions"]
    beta: float = 1.0
    layer: int | None = None
    model_name: str = ""
    reference_model: str = ""

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


def _log_policy(values: QReadout | Tensor | np.ndarray, name: str) -> Float[Tensor, "n_states n_actions"]:
    """Row-wise ``log_softmax`` over the actions, float64 (idempotent on log-probabilities)."""
    if isinstance(values, QReadout):
        return values.log_policy
    if isinstance(values, np.ndarray):
        values = torch.from_numpy(values)
    if not isinstance(values, Tensor):
        raise QReadoutError(f"{name} must be a QReadout, a tensor or an array, got {type(values).__name__}")
    values = values.detach().to(device="cpu", dtype=torch.float64)
    if values.ndim != 2 or values.shape[1] < 2:
        raise QReadoutError(f"{name} must be (n_states, n_actions >= 2), got shape {tuple(values.shape)}")
    if not bool(torch.isfinite(values).all()):
        raise QReadoutError(
            f"{name} contains NaN or inf (a zero-probability action has an infinite implicit reward)"
        )
    return torch.log_softmax(values, dim=1)


def implicit_reward(
    log_policy: QReadout | Tensor | np.ndarray,
    log_policy_ref: QReadout | Tensor | np.ndarray,
    beta: float | None = None,
    *,
    actions: Sequence[int] | Tensor | None = None,
) -> Float[Tensor, "n_states n_actions"]:
    """The implicit reward ``beta * (log pi(a|s) - log pi_ref(a|s))`` at every state and action.

    For the optimum of the KL-regularised objective (SFT, DPO, KL-penalised RL against ``pi_ref``) it
    equals the advantage ``Q*(s, a) - V*(s)`` (module docstring). Within a state it ranks the actions
    as ``Q*`` does, so :func:`q_correlation` (which centres each state, removing ``V*(s)``) compares it
    with the true Q directly.

    Args:
        log_policy, log_policy_ref: the policy and the reference on the same states, each a
            :class:`QReadout` (its ``log_policy``) or an ``(n_states, n_actions)`` tensor/array of logits or
            log-probabilities of the action tokens. Rows are renormalised with ``log_softmax`` over the
            actions, so raw logits, full-vocabulary log-probabilities at the letters and the restricted
            log-policy all give the same result: the policy restricted to the action tokens, as
            :func:`readout_from_logits` and the rollouts use it.
        beta: the KL coefficient; ``None`` takes ``log_policy.beta`` for a readout, else 1.
        actions: optionally one action index per state; then only those entries are returned.

    Returns:
        ``(n_states, n_actions)`` float64, or ``(n_states,)`` at ``actions``. Exactly 0 where the two
        log-policies are equal.

    Raises:
        QReadoutError: non-positive beta, shapes or action tokens that differ (not the same states),
            NaN/inf inputs, bad ``actions``.
    """
    if isinstance(log_policy, QReadout) and isinstance(log_policy_ref, QReadout):
        if (log_policy.token_ids, log_policy.action_tokens) != (
            log_policy_ref.token_ids,
            log_policy_ref.action_tokens,
        ):
            raise QReadoutError(
                f"readouts differ in action tokens: {log_policy.action_tokens} {log_policy.token_ids} vs "
                f"{log_policy_ref.action_tokens} {log_policy_ref.token_ids}"
            )
    if beta is None:
        beta = log_policy.beta if isinstance(log_policy, QReadout) else 1.0
    beta = _check_beta(beta)
    policy, reference = _log_policy(log_policy, "log_policy"), _log_policy(log_policy_ref, "log_policy_ref")
    if policy.shape != reference.shape:
        raise QReadoutError(
            f"policy {tuple(policy.shape)} and reference {tuple(reference.shape)} differ in shape: "
            "they must be read on the same states and actions"
        )
    reward = beta * (policy - reference)
    if actions is None:
        return reward
    index = torch.as_tensor(actions, dtype=torch.long).flatten()
    if index.shape[0] != reward.shape[0] or bool(((index < 0) | (index >= reward.shape[1])).any()):
        raise QReadoutError(f"need one action in 0..{reward.shape[1] - 1} per state ({reward.shape[0]})")
    return reward[torch.arange(reward.shape[0]), index]


def implicit_reward_readout(policy: QReadout, reference: QReadout, beta: float | None = None) -> QReadout:
    """A :class:`QReadout` whose values are the implicit reward ``beta * (log pi - log pi_ref)``.

    ``q_correlation(implicit_reward_readout(trained, naive, beta), true_q(states))`` is the Spearman
    agreement of the implicit reward with Q: per-state centring removes ``V*(s)`` from
    ``beta * log(pi*/pi_ref) = Q*(s, a) - V*(s)``, so the comparison is with ``Q(s, .)`` itself. Where
    ``pi == pi_ref`` the values are exactly 0 and ``q_correlation`` reports NaN (undefined: no state is
    used), not an error.

    Args:
        policy, reference: readouts of the two models on the same states (e.g. RL-trained and
            maze-naive), with the same action tokens.
        beta: the KL coefficient; ``None`` takes ``policy.beta``.

    Example:
        >>> naive = readout_from_logits(torch.tensor([[2.0, 0.0, 0.0, 0.0]]), [1, 2, 3, 4])
        >>> trained = readout_from_logits(torch.tensor([[2.0, 1.0, 0.0, 0.0]]), [1, 2, 3, 4])
        >>> trained.values.argmax().item(), implicit_reward_readout(trained, naive).values.argmax().item()
        (0, 1)
        >>> implicit_reward_readout(trained, naive, 0.5).centred()  # 0.5 * the centred logit change
        tensor([[-0.1250,  0.3750, -0.1250, -0.1250]], dtype=torch.float64)
    """
    if not isinstance(policy, QReadout) or not isinstance(reference, QReadout):
        raise QReadoutError("policy and reference must be QReadouts (see readout_from_logits)")
    beta = _check_beta(policy.beta if beta is None else beta)
    return QReadout(
        policy.action_tokens,
        policy.token_ids,
        implicit_reward(policy, reference, beta),
        beta,
        policy.layer,
        policy.model_name,
        reference.model_name or "reference",
    )


def q_horizons(states: MazeStates, horizon: int = 4) -> np.ndarray:
    """``(n_states,)`` search horizon of every state: ``min(horizon, turns_left)``.

    ``turns_left`` counts the move decided at the state, so a state with ``k`` moves left is scored
    over exactly ``min(horizon, k)`` turns and never looks past the end of the episode.

    Raises:
        QReadoutError: a bad ``horizon``, or a state with no move left (``turns_left == 0``: the
            observation after the last move, where nothing is decided). Drop those with
            ``states.decisions()`` before reading the model, so readout rows and Q rows stay aligned.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise QReadoutError(f"horizon must be a positive int, got {horizon!r}")
    left = np.asarray(states.turns_left, dtype=np.int64)
    done = np.flatnonzero(left < 1)
    if done.size:
        raise QReadoutError(
            f"{done.size} state(s) have no move left (e.g. state {int(done[0])}: episode "
            f"{int(states.episode[done[0]])}, turn {int(states.turn[done[0]])} of {states.config.n_turns}); "
            "they are not decisions and have no action values: use states.decisions()"
        )
    return np.minimum(horizon, left)


def true_q(states: MazeStates, *, horizon: int = 4, wind: str = "off") -> np.ndarray:
    """``(n_states, 4)`` true ``Q_h(s, a)`` from exact search with ``h = min(horizon, turns_left)``.

    ``turns_left`` includes the move decided at the state, so ``h`` is exactly the lookahead the
    episode allows (:func:`q_horizons`). ``wind="off"`` searches all ``4^h`` action sequences (keep
    ``horizon <= 6``); ``"expectation"`` averages the wind exactly (cost ``20^h``, keep ``horizon <= 3``).

    Raises:
        QReadoutError: a bad horizon, or a state with no move left (use ``states.decisions()``).
    """
    horizons = q_horizons(states, horizon)
    out = np.zeros((len(states), 4))
    for index, grid, pos in states.iter_grids():
        out[index] = action_values(grid, pos, int(horizons[index]), states.config, wind=wind)
    return out


@dataclass(frozen=True)
class QCorrelation:
    """Spearman agreement of read-out and true action values.

    Attributes:
        pooled: Spearman rho over all per-state-centred (state, action) pairs (NaN when one side is
            constant within every state).
        pooled_p: its two-sided p-value (NaN with it).
        mean_per_state: mean over states of the Spearman rho between the 4 read-out and 4 true values
            (NaN when ``n_states_used == 0``).
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

    Centring removes any per-state term (``C(s)`` of the logits, ``V*(s)`` of the implicit reward). A
    correlation with no variation to rank is undefined and reported as NaN, not raised: ``pooled`` and
    ``pooled_p`` are NaN when either side is constant within every state (e.g. an implicit reward of a
    model against itself, exactly 0), and ``mean_per_state`` is NaN when no state has both sides
    non-constant (``n_states_used == 0``).

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

    ``implicit_reward`` is ``beta * (log pi_after - log pi_before)``: the trained model's implicit reward
    with the model before training as the reference. ``states`` must all be decisions (pass
    ``states.decisions()``; :func:`true_q` raises otherwise).

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
