"""A Bradley–Terry reward model of the maze: the LM with LoRA and a scalar head, trained on preference pairs.

The RLHF pipeline's first stage at maze scale. A pair (``training.preferences``) is two moves from the same
state, the one with the higher true Q preferred. The reward model reads the chat up to the decision plus the
move's letter and returns one number: a linear head on the last layer's (final-normed) hidden state at the
letter token, ``r(s, a) = w · h_L(s, a) + b``. Training minimises the Bradley–Terry negative log-likelihood
``mean(−log σ(r(s, a_chosen) − r(s, a_rejected)))`` (``training.losses.bradley_terry_loss``) over LoRA (every
linear layer of the chosen blocks) and the head.

Evaluation (``training.preference_eval``), on decision states of mazes that training never saw: pairwise
accuracy on their pairs (95% Wilson interval) against the untrained LM's own preference (its direction logits)
and chance, and the Spearman agreement of the reward of all four moves with their true Q (centred per state: a
Bradley–Terry reward is only defined up to a per-state constant), with a bootstrap interval and a move-shuffle
null.

``RewardModel.score_episodes`` scores a rollout's moves, so RL can train against the learned reward instead of
the environment's (``training.Args.reward_model``; the trainer logs the true return beside it).

Example:
    >>> result = train_reward_model(RewardModelConfig(out="runs/rm"))  # doctest: +SKIP
    >>> result.held_out.accuracy, result.held_out.q_agreement.pooled  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
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
from probes.concept_vector import ConceptVector
from probes.layers import backbone, d_model, final_norm, model_family, model_name, n_layers, unwrap
from probes.resources import release_freed_memory
from probes.tokens import direction_token_ids
from training.config import Args
from training.losses import bradley_terry_loss
from training.preference_eval import (
    PreferenceAgreement,
    agreement,
    decision_prefix,
    direction_logits,
    held_out_states,
)
from training.preferences import preference_episodes
from training.rollout import EpisodeBatch, chunk_inputs, distinct_rows

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

    def score_after(
        self, prefixes: list[list[int]], owner: Int[Tensor, " n"], letters: Int[Tensor, " n"]
    ) -> Float[Tensor, " n"]:
        """The reward of ``n`` moves: move ``i`` is the letter token ``letters[i]`` after ``prefixes[owner[i]]``.

        Each prefix goes through the model once; every move after it reads the prefix's keys and values from
        the KV cache, so scoring k moves of a state costs one prefix plus k tokens instead of k full rows.
        Differentiable, and equal to :meth:`forward` on the full rows up to float rounding."""
        decoder = backbone(self.lm)
        device = self.head.weight.device
        pad_id = int(self.tokenizer.pad_token_id)
        inputs, mask = chunk_inputs(decoder, prefixes, None, None, pad_id, device)
        cache = decoder(**inputs, use_cache=True).cache
        owner = owner.to(device)
        cache.reorder_cache(owner)  # one cache row per move (index_select: gradients flow back to the prefix)
        inputs, _ = chunk_inputs(decoder, [[int(t)] for t in letters], cache, mask[owner], pad_id, device)
        hidden = decoder(**inputs, use_cache=True).last_hidden_state[:, -1]
        return self.head(hidden.float()).squeeze(-1)

    def score_pairs(self, batch: EpisodeBatch) -> Float[Tensor, " rows"]:
        """The reward of each row of a :func:`preference_episodes` batch (its one move's letter); rows after the
        same chat (a pair's two moves) share one forward of it."""
        at = (batch.action_positions[:, -1] + 1).tolist()
        prefixes = [batch.input_ids[r, :p].tolist() for r, p in enumerate(at)]
        letters = batch.input_ids[torch.arange(len(at)), torch.tensor(at)]
        distinct = distinct_rows(prefixes)
        if distinct is None:
            return self.score_after(prefixes, torch.arange(len(prefixes)), letters)
        first, owner = distinct
        return self.score_after([prefixes[r] for r in first], owner, letters)

    @torch.no_grad()
    def score_moves(self, prompts: list[list[dict[str, str]]], batch_size: int = 16) -> Float[Tensor, "n 4"]:
        """The reward of all four moves after each chat (which ends on the user's observation): one forward of
        each chat, ``batch_size`` chats at a time."""
        letters = torch.tensor(list(direction_token_ids(self.tokenizer, ACTIONS)))
        out = []
        for start in range(0, len(prompts), batch_size):
            prefixes = [decision_prefix(self.tokenizer, chat) for chat in prompts[start : start + batch_size]]
            owner = torch.arange(len(prefixes)).repeat_interleave(4)
            out.append(self.score_after(prefixes, owner, letters.repeat(len(prefixes))).cpu())
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

    def residual_direction(self) -> ConceptVector:
        """The head's direction pulled back into the residual stream of the last block: ``γ ⊙ w``.

        The head reads ``RMSNorm(h) = γ ⊙ h / rms(h)``, so ``r − b = (γ ⊙ w) · h / rms(h)``: along ``γ ⊙ w`` the
        residual raises the reward, at any norm (``γ`` read off the norm itself, ``norm(1) ∝ γ``; Llama's and
        Gemma's ``1 + weight`` alike). A ConceptVector at the last layer (``resid_post``), for cosines with
        v_Gold, v_Mold and the valence axis."""
        lm = unwrap(self.lm)
        norm = final_norm(lm)
        width = self.head.weight.shape[1]
        with torch.no_grad():
            gain = norm(
                torch.ones(1, 1, width, device=self.head.weight.device, dtype=self.head.weight.dtype)
            )[0, 0]
            direction = (gain * self.head.weight[0]).float().cpu()
        return ConceptVector({n_layers(lm) - 1: direction}, model_name=model_name(lm), model_family=model_family(lm),
                             method="rm_head_pullback", concept="reward model")  # fmt: skip

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
    """A reward-model run: its data, its loss, and its held-out agreement with the maze's preferences."""

    n_train_pairs: int
    train_tie_share: float
    held_out: PreferenceAgreement
    epoch_losses: list[float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=float))

    def summary(self) -> str:
        return "\n".join([
            f"train pairs {self.n_train_pairs} (ties {self.train_tie_share:.0%})",
            self.held_out.summary("reward model"),
            f"BT loss by epoch {', '.join(f'{x:.3f}' for x in self.epoch_losses)}; {self.seconds / 60:.1f} min",
        ])  # fmt: skip


def evaluate_reward_model(rm: RewardModel, config: RewardModelConfig) -> PreferenceAgreement:
    """Held-out accuracy and Q agreement of ``rm``, beside the untrained LM's own direction logits."""
    held_out = held_out_states(config.n_eval_states, config.maze(), seed=config.seed, horizon=config.horizon)
    rm.eval()
    scores = rm.score_moves(held_out.prompts).double().numpy()
    with rm.lm.disable_adapter():
        control = direction_logits(rm.lm, rm.tokenizer, held_out.prompts)
    return agreement(scores, control, held_out, rule=config.rule, seed=config.seed, n_boot=config.n_boot,
                     n_permutations=config.n_permutations)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Training


def _train_pairs(config: RewardModelConfig):
    from training.preferences import step_pairs

    return step_pairs(
        config.n_pairs, config=config.maze(), seed=config.seed, horizon=config.horizon, rule=config.rule
    )


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
    result = RewardModelResult(n_train_pairs=len(pairs), train_tie_share=pairs.tie_share,
                               held_out=evaluate_reward_model(rm, config), epoch_losses=epoch_losses,
                               seconds=time.perf_counter() - started)  # fmt: skip
    write_json(Path(config.out) / "result.json", result.to_dict())
    return result


def cli(argv: list[str] | None = None) -> int:
    import tyro

    config = tyro.cli(RewardModelConfig, args=argv, prog="python -m training.reward_model")
    result = train_reward_model(config)
    print(result.summary())
    print(f"wrote {config.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
