"""The Bradley–Terry reward model: exact forward maths, save/load, scoring, learning, and RL against it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from training.config import Args, validate
from training.preference_eval import implicit_reward_scores
from training.preferences import maze_preference_pairs, preference_episodes
from training.reward_model import (
    RewardModelConfig,
    build_reward_model,
    load_reward_model,
    train_reward_model,
    with_learned_rewards,
)
from training.rollout import EpisodeBatch

TINY = dict(model="tiny-llama", maze_size=12, n_pairs=24, n_eval_states=12, batch_pairs=8, epochs=3,
            n_boot=20, n_permutations=10, progress=False, threads=1, lr=5e-3)  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    config = RewardModelConfig(out=str(out), **TINY)
    return config, train_reward_model(config)


def _pairs_batch(tokenizer, n=4, n_turns=1):
    from maze_env import MazeConfig

    pairs = maze_preference_pairs(n, config=MazeConfig(size=12, n_turns=n_turns), seed=3, horizon=2)
    return preference_episodes(tokenizer, pairs, MazeConfig(size=12, n_turns=n_turns))


def test_reward_is_the_head_on_the_final_hidden_state_at_the_letter():
    rm = build_reward_model(RewardModelConfig(**TINY))
    with torch.no_grad():
        rm.head.weight.copy_(torch.linspace(-1, 1, rm.head.weight.numel()).view_as(rm.head.weight))
        rm.head.bias.fill_(0.25)
    batch = _pairs_batch(rm.tokenizer)
    rewards = rm.score_pairs(batch)
    with torch.no_grad():
        hidden = rm.lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       output_hidden_states=True).hidden_states[-1]  # fmt: skip
    letters = batch.action_positions[:, -1] + 1
    assert torch.equal(batch.input_ids[torch.arange(len(letters)), letters],
                       torch.tensor([batch.direction_token_ids[a] for a in batch.actions[:, -1]]))  # fmt: skip
    expected = hidden[torch.arange(len(letters)), letters] @ rm.head.weight[0] + 0.25
    torch.testing.assert_close(rewards, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_shared_prefix_scores_equal_full_rows_in_value_and_gradient(family):
    """score_after forwards each chat once and reads its moves from the KV cache; a full forward per row is the
    reference (Gemma with an 8-token sliding window, so the window must count positions, not padded slots)."""
    from probes.models import tiny_model
    from training.preference_eval import decision_prefix
    from training.reward_model import RewardModel
    from training.rollout import right_pad

    overrides = {"sliding_window": 8} if family == "gemma3" else None
    model, tokenizer = tiny_model(family, seed=2, config_overrides=overrides)
    rm = RewardModel(model, tokenizer)
    with torch.no_grad():
        rm.head.weight.normal_(generator=torch.Generator().manual_seed(0))
    batch = _pairs_batch(tokenizer, n=2, n_turns=3)  # states of turns 1-3: prefixes of different lengths
    prefixes = [decision_prefix(tokenizer, batch.messages[r][:-1]) for r in range(0, len(batch.seeds), 2)]
    assert len({len(p) for p in prefixes}) > 1  # padding differs between rows
    letters = torch.tensor([batch.direction_token_ids[a] for a in batch.actions[:, -1]])
    owner = torch.arange(len(prefixes)).repeat_interleave(2)
    rows = [[*prefixes[o], int(t)] for o, t in zip(owner.tolist(), letters.tolist(), strict=True)]
    ids, mask = right_pad(rows, int(tokenizer.pad_token_id))
    full = rm(ids, mask, torch.tensor([[len(r) - 1] for r in rows]))[:, 0]
    shared = rm.score_after(prefixes, owner, letters)
    torch.testing.assert_close(shared, full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(rm.score_pairs(batch), full, rtol=1e-4, atol=1e-5)
    weight = next(p for p in rm.lm.parameters() if p.ndim == 2)
    (g_full,) = torch.autograd.grad(full.view(-1, 2).diff().sum(), weight)
    (g_shared,) = torch.autograd.grad(shared.view(-1, 2).diff().sum(), weight)
    torch.testing.assert_close(g_shared, g_full, rtol=1e-3, atol=1e-4 * float(g_full.abs().max()))
    with torch.no_grad():
        moves = rm.score_moves([batch.messages[r][:-1] for r in range(0, len(batch.seeds), 2)], batch_size=2)
        four = torch.tensor(batch.direction_token_ids)
        rows = [[*p, int(t)] for p in prefixes for t in four]
        ids, mask = right_pad(rows, int(tokenizer.pad_token_id))
        expected = rm(ids, mask, torch.tensor([[len(r) - 1] for r in rows]))[:, 0].view(-1, 4)
    torch.testing.assert_close(moves, expected, rtol=1e-4, atol=1e-5)


def test_untrained_head_has_no_preference():
    rm = build_reward_model(RewardModelConfig(**TINY))
    assert torch.count_nonzero(rm.score_pairs(_pairs_batch(rm.tokenizer))) == 0


def test_training_lowers_the_bt_loss_and_the_saved_model_scores_the_same(trained):
    config, result = trained
    assert result.epoch_losses[-1] < result.epoch_losses[0]
    assert result.n_train_pairs == config.n_pairs and 0 <= result.train_tie_share < 1
    held = result.held_out
    assert 0 <= held.accuracy <= 1 and held.accuracy_ci[0] <= held.accuracy <= held.accuracy_ci[1]
    assert held.n_pairs + round(held.tie_share * held.n_states) == held.n_states
    saved = json.loads(open(f"{config.out}/result.json").read())
    assert saved["held_out"]["accuracy"] == held.accuracy
    a, b = load_reward_model(config.out), load_reward_model(config.out)
    batch = _pairs_batch(a.tokenizer)
    torch.testing.assert_close(a.score_pairs(batch), b.score_pairs(batch), rtol=0, atol=0)
    assert torch.count_nonzero(a.score_pairs(batch)) > 0


def test_score_episodes_reads_every_row_once_and_matches_the_pair_scores(trained):
    config, _ = trained
    rm = load_reward_model(config.out)
    batch = _pairs_batch(rm.tokenizer)
    doubled = EpisodeBatch.cat([batch, batch])
    scores = rm.score_episodes(doubled)
    assert scores.shape == (2 * len(batch.seeds), 1)
    direct = rm.score_pairs(batch).detach()
    torch.testing.assert_close(scores[:, 0], torch.cat([direct, direct]), rtol=1e-5, atol=1e-6)
    relabelled = with_learned_rewards(doubled, rm)
    assert torch.equal(relabelled.rewards, scores) and torch.equal(relabelled.actions, doubled.actions)


def test_agreement_on_exact_cases():
    """Scores equal to the true Q: every pair right, Spearman 1 in every resample, the permutation p its floor
    1/(n+1); their negation: every pair wrong, p 1; a constant control: no pair right (a tie is not a win)."""
    from maze_env import MazeConfig
    from training.preference_eval import agreement, held_out_states

    held = held_out_states(24, MazeConfig(size=12, n_turns=1), seed=0, horizon=2)
    flat = np.zeros_like(held.q)
    exact = agreement(held.q, flat, held, seed=0, n_boot=20, n_permutations=50)
    assert exact.accuracy == 1.0 and exact.control_accuracy == 0.0 and exact.n_pairs > 0
    assert exact.q_agreement.pooled == pytest.approx(1.0)
    assert exact.q_agreement_ci == pytest.approx((1.0, 1.0))
    assert exact.q_agreement_null_p == pytest.approx(1 / 51)
    opposite = agreement(-held.q, flat, held, seed=0, n_boot=20, n_permutations=50)
    assert opposite.accuracy == 0.0 and opposite.q_agreement_null_p == 1.0


def test_implicit_reward_is_beta_times_the_log_ratio_of_the_move_policies():
    policy = np.log(np.array([[0.4, 0.3, 0.2, 0.1]]))
    reference = np.zeros((1, 4))  # uniform
    expected = 0.5 * (np.log([0.4, 0.3, 0.2, 0.1]) - np.log(0.25))
    np.testing.assert_allclose(
        implicit_reward_scores(policy + 7.0, reference - 3.0, 0.5), [expected], rtol=1e-12
    )


def test_rl_against_the_learned_reward(trained, tmp_path):
    from training.train import main as train_main

    config, _ = trained
    args = Args(model="tiny-llama", steps=1, episodes_per_step=4, group_size=2, n_turns=1, maze_size=12,
                progress=False, threads=1, lr=1e-2, checkpoint_every=1, out=str(tmp_path / "rlhf"),
                reward_model=config.out, log_episodes=False)  # fmt: skip
    train_main(args)
    record = json.loads((tmp_path / "rlhf" / "metrics.jsonl").read_text().splitlines()[0])
    assert "learned_reward_mean_return" in record and "mean_return" in record
    assert record["learned_reward_mean_return"] != record["mean_return"]


def test_reward_model_only_for_rl():
    with pytest.raises(ValueError, match="does not play the policy"):
        validate(Args(algo="sft", reward_model="runs/rm"))


def test_missing_reward_model_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m training.reward_model"):
        load_reward_model(tmp_path)


def test_implicit_reward_of_a_dpo_run_on_held_out_pairs(tmp_path):
    from training.preference_eval import run_implicit_reward
    from training.train import main as train_main

    args = Args(algo="dpo", model="tiny-llama", steps=2, episodes_per_step=8, group_size=2, n_turns=1, maze_size=12,
                progress=False, threads=1, lr=1e-2, checkpoint_every=1, out=str(tmp_path / "dpo"),
                preference_horizon=2, log_episodes=False)  # fmt: skip
    train_main(args)
    result = run_implicit_reward(tmp_path / "dpo", n_states=12, n_boot=10, n_permutations=5)
    saved = json.loads((tmp_path / "dpo" / "preference_eval.json").read_text())
    assert saved["beta"] == args.dpo_beta and saved["accuracy"] == result.accuracy
    assert result.n_states >= 12 and 0 <= result.accuracy <= 1
    assert result.q_agreement.n_states == result.n_states


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gemma3"])
def test_head_direction_in_the_residual_stream_predicts_the_reward(family):
    """r(h) − b = (γ ⊙ w) · h / rms(h): the pulled-back direction times the normalised residual."""
    rm = build_reward_model(RewardModelConfig(**{**TINY, "model": family}))
    with torch.no_grad():
        rm.head.weight.normal_(generator=torch.Generator().manual_seed(0))
        rm.head.bias.fill_(0.5)
    direction = rm.residual_direction()
    last = rm.lm.config.num_hidden_layers - 1
    assert direction.layers == [last] and direction.method == "rm_head_pullback"
    h = torch.randn(5, rm.head.weight.shape[1], generator=torch.Generator().manual_seed(1))
    norm = rm.lm.get_base_model().model.norm
    eps = norm.variance_epsilon if hasattr(norm, "variance_epsilon") else norm.eps
    with torch.no_grad():
        reward = rm.head(norm(h[:, None, :])[:, 0])[:, 0] - 0.5
    rms = torch.sqrt(h.pow(2).mean(-1) + eps)
    predicted = h @ direction[last] / rms * (1 + eps) ** 0.5  # norm(1) = γ / sqrt(1 + eps)
    torch.testing.assert_close(reward, predicted, rtol=1e-4, atol=1e-5)


def test_cli_trains_and_prints_the_held_out_summary(tmp_path, capsys):
    from training.reward_model import cli

    argv = ["--out", str(tmp_path / "rm"), "--model", "tiny-llama", "--maze-size", "12", "--n-pairs", "8",
            "--n-eval-states", "8", "--epochs", "1", "--n-boot", "5", "--n-permutations", "5", "--no-progress",
            "--threads", "1", "--lora-layers", "1"]  # fmt: skip
    assert cli(argv) == 0
    printed = capsys.readouterr().out
    assert "pairwise accuracy of the reward model" in printed and "vs true Q" in printed
    assert load_reward_model(tmp_path / "rm").lm.peft_config["default"].layers_to_transform == [1]
