"""How well per-move scores agree with the maze's preferences, on mazes training never saw.

Scores are any ``(n_states, 4)`` numbers, one per move (N, E, S, W) after each held-out decision state: a
Bradley–Terry reward model's reward (``training.reward_model``), or the implicit reward
``β·(log π_θ − log π_ref)`` of a trained policy against its base (DPO's, and equally SFT's or RL's). Two
measures, each with its interval and the control it must beat:

- **pairwise accuracy** on the held-out pairs (``training.preferences.preference_pairs``: a state's best vs worst
  move by true Q, ties dropped and counted): the share with the chosen move scored higher, 95% Wilson interval;
  control: the untrained LM's own preference (its direction logits, "logits as Q" before training), and 0.5;
- **agreement with the true Q**: ``probes.q_readout.q_correlation`` (Spearman after centring within each state:
  a Bradley–Terry reward and an implicit reward are only defined up to a per-state constant), a 95% bootstrap
  interval over states, and a permutation null that shuffles the moves within each state (``probes.nulls.q_spearman``,
  the readouts' own resampling of the same statistic).

Held-out states are first decisions (or ``n_turns``-turn random walks) of maze seeds ``seed + EVAL_SEED_OFFSET``.

``python -m training.preference_eval RUN_DIR`` scores a training run's implicit reward this way and writes
``RUN_DIR/preference_eval.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maze_env import ACTIONS, MazeConfig
from probes.artifacts import write_json
from probes.intervals import wilson_interval
from probes.maze_states import MazeStates
from probes.nulls import q_spearman
from probes.q_readout import QCorrelation, q_correlation, true_q
from probes.resources import release_freed_memory
from probes.tokens import direction_token_ids
from training.expert_data import encode_episode
from training.preferences import PreferencePairs, preference_pairs, state_chat
from training.rollout import right_pad

EVAL_SEED_OFFSET = 1_000_000
"""Held-out states come from maze seeds ``seed + EVAL_SEED_OFFSET + i``: mazes training never saw."""


@dataclass(frozen=True)
class HeldOutStates:
    """Decision states of unseen mazes, their chats and true Q."""

    states: MazeStates
    prompts: list[list[dict[str, str]]]
    q: np.ndarray
    horizon: int


def held_out_states(n_states: int, config: MazeConfig, *, seed: int = 0, horizon: int = 4) -> HeldOutStates:
    """``n_states`` or a few more decision states from random walks of maze seeds ``seed + EVAL_SEED_OFFSET, ...``."""
    walks = -(-n_states // config.n_turns)
    states = MazeStates.random_walks(walks, config=config, seed=seed + EVAL_SEED_OFFSET).decisions()
    prompts = [state_chat(states, index) for index in range(len(states))]
    return HeldOutStates(states, prompts, true_q(states, horizon=horizon), horizon)


def decision_prefix(tokenizer: Any, chat: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat that ends on the user's observation, up to and including the position whose logits
    choose the move: tokenized exactly as the rollout and ``preference_episodes`` do."""
    ids, where = encode_episode(tokenizer, [*chat, {"role": "assistant", "content": ACTIONS[0]}],
                                list(direction_token_ids(tokenizer, ACTIONS)))  # fmt: skip
    return ids[: where[-1] + 1]


@torch.no_grad()
def direction_logits(
    model: nn.Module, tokenizer: Any, prompts: list[list[dict[str, str]]], batch_size: int = 16
) -> np.ndarray:
    """``(n, 4)`` next-token logits of N, E, S, W after each chat (the policy's raw move logits)."""
    ids = list(direction_token_ids(tokenizer, ACTIONS))
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        rows = [decision_prefix(tokenizer, chat) for chat in prompts[start : start + batch_size]]
        input_ids, mask = right_pad(rows, int(tokenizer.pad_token_id))
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        last = (mask.sum(1) - 1).to(device)
        out.append(logits[torch.arange(len(rows), device=device), last][:, ids].float().cpu())
        release_freed_memory()
    return torch.cat(out).double().numpy()


def implicit_reward_scores(
    policy_logits: np.ndarray, reference_logits: np.ndarray, beta: float
) -> np.ndarray:
    """``β·(log π_θ(a|s) − log π_ref(a|s))`` over the four moves (log-softmax over the direction logits).

    Example:
        >>> implicit_reward_scores(np.zeros((1, 4)), np.zeros((1, 4)), 0.1).tolist()
        [[0.0, 0.0, 0.0, 0.0]]
    """

    def log_softmax(x: np.ndarray) -> np.ndarray:
        shifted = x - x.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    return beta * (log_softmax(policy_logits) - log_softmax(reference_logits))


@dataclass(frozen=True)
class PreferenceAgreement:
    """Scores against the held-out preferences and true Q, beside the untrained LM's own (see the module)."""

    n_states: int
    n_pairs: int
    tie_share: float
    accuracy: float
    accuracy_ci: tuple[float, float]
    control_accuracy: float
    control_accuracy_ci: tuple[float, float]
    q_agreement: QCorrelation
    q_agreement_ci: tuple[float, float]
    q_agreement_null_p: float
    control_q_agreement: QCorrelation

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=float))

    def summary(self, what: str = "scores") -> str:
        lo, hi = self.accuracy_ci
        clo, chi = self.control_accuracy_ci
        qlo, qhi = self.q_agreement_ci
        return "\n".join([
            f"{self.n_pairs} held-out pairs from {self.n_states} states of unseen mazes (ties {self.tie_share:.0%})",
            f"pairwise accuracy of the {what} {self.accuracy:.3f} [{lo:.3f}, {hi:.3f}] vs the untrained LM's own "
            f"preference {self.control_accuracy:.3f} [{clo:.3f}, {chi:.3f}] and chance 0.5",
            f"{what} vs true Q (Spearman, centred per state) {self.q_agreement.pooled:+.3f} [{qlo:+.3f}, {qhi:+.3f}], "
            f"permutation p {self.q_agreement_null_p:.3f}; untrained LM's logits {self.control_q_agreement.pooled:+.3f}",
        ])  # fmt: skip


def agreement(
    scores: np.ndarray,
    control_scores: np.ndarray,
    held_out: HeldOutStates,
    *,
    rule: str = "best_worst",
    seed: int = 0,
    n_boot: int = 1000,
    n_permutations: int = 200,
) -> PreferenceAgreement:
    """Pairwise accuracy and Q agreement of ``scores`` (``(n_states, 4)``), and of ``control_scores``."""
    q = held_out.q
    if scores.shape != q.shape or control_scores.shape != q.shape:
        raise ValueError(f"scores {scores.shape} and control {control_scores.shape} must be {q.shape}")
    pairs: PreferencePairs = preference_pairs(held_out.states, q, rule=rule, seed=seed + EVAL_SEED_OFFSET)  # type: ignore[arg-type]
    rows = pairs.state_index
    correct = int((scores[rows, pairs.chosen] > scores[rows, pairs.rejected]).sum())
    resampled = q_spearman(scores, q, n_shuffles=n_permutations, n_boot=n_boot, seed=seed)
    control = int((control_scores[rows, pairs.chosen] > control_scores[rows, pairs.rejected]).sum())
    return PreferenceAgreement(
        n_states=len(q), n_pairs=len(pairs), tie_share=pairs.tie_share,
        accuracy=correct / max(1, len(pairs)), accuracy_ci=wilson_interval(correct, len(pairs)),
        control_accuracy=control / max(1, len(pairs)), control_accuracy_ci=wilson_interval(control, len(pairs)),
        q_agreement=q_correlation(scores, q), q_agreement_ci=resampled.ci(), q_agreement_null_p=resampled.p,
        control_q_agreement=q_correlation(control_scores, q),
    )  # fmt: skip


def run_implicit_reward(run_dir: str | Path, *, n_states: int = 128, beta: float | None = None,
                        n_boot: int = 1000, n_permutations: int = 200) -> PreferenceAgreement:  # fmt: skip
    """The implicit reward of a training run's policy against its base model on held-out first decisions.

    β: the run's ``dpo_beta`` for DPO runs, else 1 (a positive β only scales; accuracy and Spearman ignore it).
    """
    from training.checkpoints import load_run_args, load_trained
    from training.config import maze_config
    from training.policy import load_base_model

    run_dir = Path(run_dir)
    args = load_run_args(run_dir)
    beta = beta if beta is not None else (args.dpo_beta if args.algo == "dpo" else 1.0)
    config = dataclasses.replace(maze_config(args), n_turns=1)
    held_out = held_out_states(n_states, config, seed=args.seed, horizon=args.preference_horizon)
    trained, tokenizer = load_trained(run_dir)
    policy_logits = direction_logits(trained, tokenizer, held_out.prompts)
    del trained
    base, base_tokenizer = load_base_model(args)
    base.eval()
    reference_logits = direction_logits(base, base_tokenizer, held_out.prompts)
    scores = implicit_reward_scores(policy_logits, reference_logits, beta)
    result = agreement(scores, reference_logits, held_out, rule=args.preference_rule, seed=args.seed,
                       n_boot=n_boot, n_permutations=n_permutations)  # fmt: skip
    write_json(
        run_dir / "preference_eval.json", {"beta": beta, "what": "implicit reward", **result.to_dict()}
    )
    return result


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.preference_eval", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("run_dir")
    parser.add_argument("--n-states", type=int, default=128)
    parser.add_argument("--beta", type=float, default=None)
    args = parser.parse_args(argv)
    result = run_implicit_reward(args.run_dir, n_states=args.n_states, beta=args.beta)
    print(result.summary("implicit reward"))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
