"""Preference pairs from the maze, and the Bradley–Terry, DPO and implicit-reward maths by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maze_env import MazeConfig
from probes.maze_states import MazeStates
from probes.q_readout import true_q
from training.losses import bradley_terry_loss, dpo_loss, implicit_reward
from training.preferences import maze_preference_pairs, preference_episodes, preference_pairs, step_pairs

CONFIG = MazeConfig(size=12, n_turns=3)


def test_bradley_terry_by_hand_and_its_gradient():
    rc = torch.tensor([1.0, 0.0, 3.0], requires_grad=True)
    rr = torch.tensor([0.0, 2.0, 3.0])
    loss = bradley_terry_loss(rc, rr)
    want = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(2.0)) + math.log(2.0)) / 3
    assert float(loss.detach()) == pytest.approx(want, abs=1e-6)
    loss.backward()
    sigma = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert rc.grad.tolist() == pytest.approx([-sigma(-1.0) / 3, -sigma(2.0) / 3, -0.5 / 3], abs=1e-6)
    assert float(bradley_terry_loss(torch.tensor([200.0]), torch.tensor([0.0]))) == 0.0  # stable, no overflow


def test_dpo_is_bradley_terry_on_implicit_rewards():
    lc, lr_, rc, rr = (torch.tensor([x]) for x in (-1.0, -2.0, -1.5, -1.5))
    assert float(dpo_loss(lc, lr_, rc, rr, beta=0.5)) == pytest.approx(math.log1p(math.exp(-0.5)), abs=1e-6)
    assert float(implicit_reward(lc, rc, 0.5)) == pytest.approx(0.25)
    same = torch.zeros(4)
    assert float(dpo_loss(same, same, same, same, beta=2.0)) == pytest.approx(math.log(2.0))
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(same, same, same, same, beta=0.0)


def test_pairs_prefer_the_higher_true_q_and_state_their_ties():
    states = MazeStates.random_walks(6, config=CONFIG, seed=0).decisions()
    q = true_q(states, horizon=2)
    pairs = preference_pairs(states, q)
    assert len(pairs) + pairs.n_ties == len(states) and pairs.tie_share == pairs.n_ties / len(states)
    assert np.all(pairs.q_chosen > pairs.q_rejected) and np.all(pairs.chosen != pairs.rejected)
    for row, index in enumerate(pairs.state_index):
        assert pairs.q_chosen[row] == q[index].max() and pairs.q_rejected[row] == q[index].min()
        prompt = pairs.prompts[row]
        assert prompt[-1]["role"] == "user" and len(prompt) == 2 * states.turn[index] + 1
        assert prompt == list(states.messages[states.episode[index]][: len(prompt)])
    again = maze_preference_pairs(6, config=CONFIG, seed=0, horizon=2)
    assert np.array_equal(again.chosen, pairs.chosen) and again.prompts == pairs.prompts
    drawn = maze_preference_pairs(6, config=CONFIG, seed=0, horizon=2, rule="random")
    assert drawn.rule == "random" and np.all(drawn.q_chosen > drawn.q_rejected)
    train, held = pairs.split(0.25, seed=0)
    assert len(train) + len(held) == len(pairs) and not set(train.state_index) & set(held.state_index)
    with pytest.raises(ValueError, match="shape"):
        preference_pairs(states, q[:, :3])


def test_preference_episodes_pair_the_two_moves_of_one_state():
    from probes.models import tiny_model

    _, tok = tiny_model("llama")
    pairs = maze_preference_pairs(3, config=CONFIG, seed=1, horizon=2)
    batch = preference_episodes(tok, pairs, CONFIG)
    assert len(batch) == 2 * len(pairs) and batch.n_turns == 1
    assert batch.actions[0::2, 0].tolist() == pairs.chosen.tolist()
    assert batch.actions[1::2, 0].tolist() == pairs.rejected.tolist()
    for i in range(len(pairs)):
        a, b = batch.messages[2 * i], batch.messages[2 * i + 1]
        assert a[:-1] == b[:-1] == pairs.prompts[i]  # the same state
        pos = int(batch.action_positions[2 * i, 0])
        assert int(batch.input_ids[2 * i, pos + 1]) == batch.direction_token_ids[int(pairs.chosen[i])]
    assert batch.rewards[0::2, 0].tolist() == pytest.approx(pairs.q_chosen.tolist())
    exact = step_pairs(7, config=CONFIG, seed=3, horizon=2)
    assert len(exact) == 7 and exact.n_states >= 7


def test_dpo_runs_in_the_loop_and_its_update_raises_the_preferred_moves_implicit_reward(tmp_path):
    import json

    import training as T
    from training.update import train_step

    args = T.Args(model="tiny-llama", algo="dpo", steps=2, episodes_per_step=16, group_size=2, n_turns=3,
                  maze_size=12, minibatches=2, micro_batch_size=4, lr=5e-3, dpo_beta=0.5, preference_horizon=2,
                  progress=False, threads=1, eval_episodes=0, out=str(tmp_path / "dpo"))  # fmt: skip
    T.main(args)
    rows = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["data"] for r in rows] == ["preferences"] * 2
    assert all(math.isfinite(r["loss"]) and 0 <= r["pair_accuracy"] <= 1 for r in rows)
    # the update on one fixed set of pairs: the implicit reward of the preferred moves rises above the other's
    import dataclasses

    args = dataclasses.replace(args, lr=3e-2)
    policy = T.make_policy(args)
    optimizer = T.make_optimizer(policy, args)
    batch = preference_episodes(policy.tokenizer, step_pairs(8, config=CONFIG, seed=5, horizon=2), CONFIG)
    first = train_step(policy, optimizer, batch, args, 0)
    for _ in range(25):
        last = train_step(policy, optimizer, batch, args, 0)
    assert first["loss"] > 0.6  # near log 2: the first minibatch has π = π_ref
    assert (
        last["loss"] < first["loss"] - 0.1 and last["pair_accuracy"] >= 0.75 and last["reward_margin"] > 0.2
    )
    with pytest.raises(ValueError, match="multiple of 2 × minibatches"):
        T.main(
            T.Args(**{**vars(args), "minibatches": 4, "episodes_per_step": 12, "out": str(tmp_path / "x")})
        )
