"""A Bradley–Terry reward model of the maze: the LM with LoRA and a scalar head, trained on preference pairs.

The RLHF pipeline's first stage at maze scale. A pair (``training.preferences``) is two moves from the same
state, the one with the higher true Q preferred. The reward model reads the chat up to the decision plus the
move's letter and returns one number: a linear head on the last layer's (final-normed) hidden state at the
letter token, ``r(s, a) = w · h_L(s, a) + b``. Training minimises the Bradley–Terry negative log-likelihood
``mean(−log σ(r(s, a_chosen) − r(s, a_rejected)))`` (``training.losses.bradley_terry_loss``) over LoRA (every
linear layer of the chosen blocks) and the head.

Evaluation, on states from mazes that training never saw (maze seeds offset by ``EVAL_SEED_OFFSET``):

- **pairwise accuracy** on their pairs (share with ``r_chosen > r_rejected``, 95% Wilson interval), against
  the control a reward model must beat: the untrained LM's own preference (the logit of the chosen letter
  minus the rejected one's, "logits as Q" before any training) and chance (0.5);
- **agreement with the true Q**: ``probes.q_readout.q_correlation`` of the reward of all four moves with
  their true Q (Spearman after centring within each state, since a Bradley–Terry reward is only defined up
  to a per-state constant), with a 95% bootstrap interval over states and a move-shuffle permutation null.

``RewardModel.score_episodes`` scores a rollout's moves, so RL can train against the learned reward instead of
the environment's (``training.Args.reward_model``; the trainer logs the true return beside it).

Example:
    >>> result = train_reward_model(RewardModelConfig(out="runs/rm"))  # doctest: +SKIP
    >>> result.accuracy, result.q_agreement.pooled  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from maze_env import ACTIONS, MazeConfig, config_for_tiles
from probes.artifacts import atomic_write, write_json
from probes.intervals import wilson_interval
from probes.layers import backbone, d_model
from probes.maze_states import MazeStates
from probes.q_readout import QCorrelation, q_correlation, true_q
from probes.resources import release_freed_memory
from probes.tokens import direction_token_ids
from training.config import Args
from training.expert_data import encode_episode
from training.losses import bradley_terry_loss
from training.preferences import PreferencePairs, preference_episodes, preference_pairs
from training.rollout import EpisodeBatch, right_pad

EVAL_SEED_OFFSET = 1_000_000
"""Held-out states come from maze seeds ``seed + EVAL_SEED_OFFSET + i``: mazes training never saw."""
WEIGHTS_FILE = "reward_model.safetensors"
CONFIG_FILE = "reward_model.json"


@dataclass(frozen=True)
class RewardModelConfig:
    """Settings of a reward-model run (every field is a ``--flag`` of ``python -m training.reward_model``)."""

    out: str = "runs/reward_model"
    model: str = "smollm2-135m-instruct"
    """A probes.models.load_model name or path, or tiny-llama / tiny-gemma3."""
    n_pairs: int = 512
    """Training pairs (from as many seeded random walks as needed)."""
    n_eval_states: int = 128
    """Held-out decision states (their pairs give the accuracy; all four moves the Q agreement)."""
    n_turns: int = 1
    """Turns of the random walks the states come from (1: first decisions, as the CPU recipe's RL trains on)."""
    maze_size: int = 100
    tiles: str = "office"
    horizon: int = 4
    """Search horizon of the true Q that ranks a pair."""
    rule: Literal["best_worst", "random"] = "best_worst"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_layers: int | None = None
    """LoRA on the top N blocks (None: every block)."""
    lr: float = 5e-4
    epochs: int = 2
    batch_pairs: int = 16
    seed: int = 0
    n_boot: int = 1000
    n_permutations: int = 200
    device: str = "auto"
    threads: int = 2
    progress: bool = True

    def maze(self) -> MazeConfig:
        return config_for_tiles(self.tiles, n_turns=self.n_turns, size=self.maze_size)

    def lora_args(self) -> Args:
        return Args(model=self.model, seed=self.seed, device=self.device, lora_r=self.lora_r,
                    lora_alpha=self.lora_alpha, lora_layers=self.lora_layers)  # fmt: skip


class RewardModel(nn.Module):
    """``r(s, a) = head(h_L at the move's letter)`` on a (LoRA-adapted) causal LM."""

    def __init__(self, lm: nn.Module, tokenizer: Any) -> None:
        super().__init__()
        self.lm = lm
        self.tokenizer = tokenizer
        self.head = nn.Linear(d_model(lm), 1)
        nn.init.zeros_(self.head.weight)  # every move starts at reward 0: the untrained RM has no preference
        nn.init.zeros_(self.head.bias)
        self.head.to(next(lm.parameters()).device)

    def forward(
        self,
        input_ids: Int[Tensor, "batch seq"],
        attention_mask: Int[Tensor, "batch seq"],
        positions: Int[Tensor, "batch n"],
    ) -> Float[Tensor, "batch n"]:
        """The reward at each of ``positions`` (the index of a move's letter token, one or more per row)."""
        hidden = backbone(self.lm)(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        picked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
        return self.head(picked.float()).squeeze(-1)

    def score_pairs(self, batch: EpisodeBatch) -> Float[Tensor, " rows"]:
        """The reward of each row of a :func:`preference_episodes` batch (its one move's letter)."""
        device = self.head.weight.device
        return self(batch.input_ids.to(device), batch.attention_mask.to(device),
                    (batch.action_positions[:, -1:] + 1).to(device))[:, 0]  # fmt: skip

    @torch.no_grad()
    def score_moves(self, prompts: list[list[dict[str, str]]], batch_size: int = 32) -> Float[Tensor, "n 4"]:
        """The reward of all four moves after each chat (which ends on the user's observation)."""
        ids = list(direction_token_ids(self.tokenizer, ACTIONS))
        rows, positions = [], []
        for chat in prompts:
            prefix = decision_prefix(self.tokenizer, chat)
            for token in ids:
                rows.append([*prefix, token])
                positions.append(len(prefix))
        out = []
        device = self.head.weight.device
        for start in range(0, len(rows), batch_size):
            input_ids, mask = right_pad(rows[start : start + batch_size], int(self.tokenizer.pad_token_id))
            where = torch.tensor(positions[start : start + batch_size]).unsqueeze(-1)
            out.append(self(input_ids.to(device), mask.to(device), where.to(device))[:, 0].cpu())
            release_freed_memory()
        return torch.cat(out).view(len(prompts), 4)

    @torch.no_grad()
    def score_episodes(self, episodes: EpisodeBatch, batch_size: int = 16) -> Float[Tensor, "batch turn"]:
        """The learned reward of every move of a rollout (one forward per distinct episode row)."""
        device = self.head.weight.device
        letters = episodes.action_positions + 1
        keys = [
            tuple(row[mask.bool()].tolist())
            for row, mask in zip(episodes.input_ids, episodes.attention_mask, strict=True)
        ]
        first: dict[tuple, int] = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        unique = sorted(first.values())
        scores = torch.zeros(len(unique), letters.shape[1])
        for start in range(0, len(unique), batch_size):
            rows = unique[start : start + batch_size]
            scores[start : start + len(rows)] = self(episodes.input_ids[rows].to(device),
                                                     episodes.attention_mask[rows].to(device),
                                                     letters[rows].to(device)).float().cpu()  # fmt: skip
            release_freed_memory()
        index = {row: k for k, row in enumerate(unique)}
        return scores[[index[first[key]] for key in keys]]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def save(self, out: str | Path, config: RewardModelConfig) -> None:
        """LoRA weights and head in one safetensors file, the config beside it (both atomic)."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        out = Path(out)
        tensors = {
            f"lora.{k}": v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.lm).items()
        }
        tensors["head.weight"] = self.head.weight.detach().cpu().contiguous()
        tensors["head.bias"] = self.head.bias.detach().cpu().contiguous()
        atomic_write(out / WEIGHTS_FILE, lambda p: save_file(tensors, str(p)))
        write_json(out / CONFIG_FILE, dataclasses.asdict(config))


def with_learned_rewards(episodes: EpisodeBatch, rm: RewardModel) -> EpisodeBatch:
    """The episodes with ``rewards`` replaced by the reward model's reward of each move."""
    rewards = rm.score_episodes(episodes).to(episodes.rewards.dtype)
    return dataclasses.replace(episodes, rewards=rewards)


def build_reward_model(config: RewardModelConfig) -> RewardModel:
    """The untrained reward model: the base LM with fresh LoRA (seeded) and a zero head."""
    from training.policy import make_policy

    policy = make_policy(config.lora_args())
    return RewardModel(policy.model, policy.tokenizer)


def load_reward_model(path: str | Path, device: str | None = None) -> RewardModel:
    """A reward model saved by :meth:`RewardModel.save` (``path``: its directory), in eval mode, frozen.

    Raises:
        FileNotFoundError: ``path`` holds no reward model (the message names the command that trains one).
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / WEIGHTS_FILE).is_file() or not (path / CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{path} holds no reward model ({WEIGHTS_FILE} + {CONFIG_FILE}); train one with "
            f"python -m training.reward_model --out {path}"
        )
    fields = json.loads((path / CONFIG_FILE).read_text())
    config = RewardModelConfig(
        **{k: v for k, v in fields.items() if k in {f.name for f in dataclasses.fields(RewardModelConfig)}}
    )
    if device is not None:
        config = dataclasses.replace(config, device=device)
    rm = build_reward_model(config)
    tensors = load_file(str(path / WEIGHTS_FILE))
    lora = {k.removeprefix("lora."): v for k, v in tensors.items() if k.startswith("lora.")}
    set_peft_model_state_dict(rm.lm, lora)
    with torch.no_grad():
        rm.head.weight.copy_(tensors["head.weight"])
        rm.head.bias.copy_(tensors["head.bias"])
    rm.eval().requires_grad_(False)
    return rm


# ----------------------------------------------------------------------------------------------------------
# Evaluation


@dataclass(frozen=True)
class RewardModelResult:
    """A reward-model run: its data, its held-out accuracy and Q agreement, each with its control."""

    n_train_pairs: int
    train_tie_share: float
    n_eval_pairs: int
    eval_tie_share: float
    accuracy: float
    accuracy_ci: tuple[float, float]
    control_accuracy: float
    """The untrained LM's own preference (chosen letter's logit above the rejected one's) on the same pairs."""
    control_accuracy_ci: tuple[float, float]
    q_agreement: QCorrelation
    q_agreement_ci: tuple[float, float]
    q_agreement_null_p: float
    """Share of move-shuffled permutations (within each state) whose pooled rho is ≥ the observed one."""
    control_q_agreement: QCorrelation
    """The untrained LM's direction logits (logits as Q) on the same states."""
    epoch_losses: list[float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=float))

    def summary(self) -> str:
        lo, hi = self.accuracy_ci
        clo, chi = self.control_accuracy_ci
        qlo, qhi = self.q_agreement_ci
        return "\n".join([
            f"train pairs {self.n_train_pairs} (ties {self.train_tie_share:.0%}); held-out pairs {self.n_eval_pairs} "
            f"(ties {self.eval_tie_share:.0%}) from unseen mazes",
            f"pairwise accuracy {self.accuracy:.3f} [{lo:.3f}, {hi:.3f}] vs the untrained LM's own preference "
            f"{self.control_accuracy:.3f} [{clo:.3f}, {chi:.3f}] and chance 0.5",
            f"reward vs true Q (Spearman, centred per state) {self.q_agreement.pooled:+.3f} [{qlo:+.3f}, {qhi:+.3f}], "
            f"permutation p {self.q_agreement_null_p:.3f}; untrained LM's logits {self.control_q_agreement.pooled:+.3f}",
            f"BT loss by epoch {', '.join(f'{x:.3f}' for x in self.epoch_losses)}; {self.seconds / 60:.1f} min",
        ])  # fmt: skip


def bootstrap_q_agreement(
    scores: np.ndarray, q: np.ndarray, *, n_boot: int, seed: int
) -> tuple[float, float]:
    """95% percentile interval of the pooled centred Spearman, resampling states with replacement."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        rows = rng.integers(0, len(q), len(q))
        rho = q_correlation(scores[rows], q[rows]).pooled
        if math.isfinite(rho):
            values.append(rho)
    if not values:
        return (math.nan, math.nan)
    return (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5)))


def permutation_p(scores: np.ndarray, q: np.ndarray, *, n_permutations: int, seed: int) -> float:
    """``(1 + #{rho_perm ≥ rho}) / (1 + n)``: moves shuffled within each state (breaks the move–Q link only)."""
    observed = q_correlation(scores, q).pooled
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_permutations):
        shuffled = np.take_along_axis(
            scores, rng.permuted(np.tile(np.arange(4), (len(q), 1)), axis=1), axis=1
        )
        hits += q_correlation(shuffled, q).pooled >= observed
    return (1 + hits) / (1 + n_permutations)


def _pairs_from(states: MazeStates, q: np.ndarray, config: RewardModelConfig, seed: int) -> PreferencePairs:
    return preference_pairs(states, q, rule=config.rule, seed=seed)


def _train_pairs(config: RewardModelConfig) -> PreferencePairs:
    from training.preferences import step_pairs

    return step_pairs(
        config.n_pairs, config=config.maze(), seed=config.seed, horizon=config.horizon, rule=config.rule
    )


def _eval_states(config: RewardModelConfig) -> tuple[MazeStates, np.ndarray]:
    walks = -(-config.n_eval_states // config.n_turns)
    states = MazeStates.random_walks(
        walks, config=config.maze(), seed=config.seed + EVAL_SEED_OFFSET
    ).decisions()
    return states, true_q(states, horizon=config.horizon)


def _state_prompts(states: MazeStates) -> list[list[dict[str, str]]]:
    from training.preferences import _prompt

    return [_prompt(states, i) for i in range(len(states))]


def decision_prefix(tokenizer: Any, chat: list[dict[str, str]]) -> list[int]:
    """Token ids of a chat that ends on the user's observation, up to and including the position whose
    logits choose the move: tokenized exactly as the rollout and ``preference_episodes`` do."""
    ids, where = encode_episode(tokenizer, [*chat, {"role": "assistant", "content": ACTIONS[0]}],
                                list(direction_token_ids(tokenizer, ACTIONS)))  # fmt: skip
    return ids[: where[-1] + 1]


def untrained_direction_logits(
    model: nn.Module, tokenizer: Any, prompts: list[list[dict[str, str]]]
) -> np.ndarray:
    """The untrained LM's next-token logits of N, E, S, W after each chat (the control's scores)."""
    ids = list(direction_token_ids(tokenizer, ACTIONS))
    out = []
    with torch.no_grad():
        for start in range(0, len(prompts), 16):
            rows = [decision_prefix(tokenizer, chat) for chat in prompts[start : start + 16]]
            input_ids, mask = right_pad(rows, int(tokenizer.pad_token_id))
            device = next(model.parameters()).device
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            last = mask.sum(1) - 1
            out.append(logits[torch.arange(len(rows)), last.to(device)][:, ids].float().cpu())
            release_freed_memory()
    return torch.cat(out).numpy()


def evaluate_reward_model(
    rm: RewardModel, config: RewardModelConfig, control_scores: np.ndarray | None = None
) -> dict[str, Any]:
    """Held-out accuracy and Q agreement of ``rm`` (and of the untrained LM's logits when not given)."""
    states, q = _eval_states(config)
    prompts = _state_prompts(states)
    rm.eval()
    scores = rm.score_moves(prompts).double().numpy()
    if control_scores is None:
        with rm.lm.disable_adapter():
            control_scores = untrained_direction_logits(rm.lm, rm.tokenizer, prompts)
    pairs = _pairs_from(states, q, config, seed=config.seed + EVAL_SEED_OFFSET)
    rows = pairs.state_index
    correct = int((scores[rows, pairs.chosen] > scores[rows, pairs.rejected]).sum())
    control_correct = int((control_scores[rows, pairs.chosen] > control_scores[rows, pairs.rejected]).sum())
    return {
        "pairs": pairs,
        "accuracy": correct / max(1, len(pairs)),
        "accuracy_ci": wilson_interval(correct, len(pairs)),
        "control_accuracy": control_correct / max(1, len(pairs)),
        "control_accuracy_ci": wilson_interval(control_correct, len(pairs)),
        "q_agreement": q_correlation(scores, q),
        "q_agreement_ci": bootstrap_q_agreement(scores, q, n_boot=config.n_boot, seed=config.seed),
        "q_agreement_null_p": permutation_p(
            scores, q, n_permutations=config.n_permutations, seed=config.seed
        ),
        "control_q_agreement": q_correlation(control_scores, q),
    }


# ----------------------------------------------------------------------------------------------------------
# Training


def train_reward_model(config: RewardModelConfig, rm: RewardModel | None = None) -> RewardModelResult:
    """Train on ``config.n_pairs`` pairs for ``config.epochs`` epochs, save, evaluate on unseen mazes."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    rm = rm if rm is not None else build_reward_model(config)
    pairs = _train_pairs(config)
    batch = preference_episodes(rm.tokenizer, pairs, config.maze())
    optimizer = torch.optim.AdamW(rm.trainable_parameters(), lr=config.lr, weight_decay=0.0)
    rng = np.random.default_rng(config.seed)
    epoch_losses = []
    n_batches = -(-len(pairs) // config.batch_pairs)
    bar = tqdm(total=config.epochs * n_batches, desc="reward model", disable=not config.progress)
    rm.train()
    for _ in range(config.epochs):
        order = rng.permutation(len(pairs))
        losses = []
        for start in range(0, len(pairs), config.batch_pairs):
            idx = order[start : start + config.batch_pairs]
            rows = torch.from_numpy(np.stack([2 * idx, 2 * idx + 1], axis=1).reshape(-1))
            rewards = rm.score_pairs(batch.select(rows)).view(-1, 2)
            loss = bradley_terry_loss(rewards[:, 0], rewards[:, 1])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            release_freed_memory()
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses):.3f}")
        epoch_losses.append(float(np.mean(losses)))
    bar.close()
    rm.eval()
    rm.save(config.out, config)
    scores = evaluate_reward_model(rm, config)
    eval_pairs: PreferencePairs = scores.pop("pairs")
    result = RewardModelResult(
        n_train_pairs=len(pairs), train_tie_share=pairs.tie_share, n_eval_pairs=len(eval_pairs),
        eval_tie_share=eval_pairs.tie_share, epoch_losses=epoch_losses,
        seconds=time.perf_counter() - started, **scores,
    )  # fmt: skip
    write_json(Path(config.out) / "result.json", result.to_dict())
    return result


def cli(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m training.reward_model", description=__doc__.split("\n\n")[0]
    )
    for f in dataclasses.fields(RewardModelConfig):
        default = f.default
        kind = {int: int, float: float, str: str, bool: None}.get(type(default), str)
        if isinstance(default, bool):
            parser.add_argument(
                f"--{f.name.replace('_', '-')}", action=argparse.BooleanOptionalAction, default=default
            )
        elif default is None:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=int, default=None)
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=default)
    config = RewardModelConfig(**vars(parser.parse_args(argv)))
    result = train_reward_model(config)
    print(result.summary())
    print(f"wrote {config.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
