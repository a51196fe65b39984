"""probes.q_readout and probes.maze_states: Q^ is exactly beta x the direction logits; correlation maths."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from maze_env import MazeConfig, action_values, render_chat, scripted_trajectories
from maze_env.env import MazeEnv
from probes.maze_states import MazeStates, MazeStatesError, decision_positions, read_decisions
from probes.models import tiny_model
from probes.plots import q_scatter
from probes.q_readout import (
    QReadout,
    QReadoutError,
    compare_q,
    implicit_reward,
    implicit_reward_readout,
    q_correlation,
    q_horizons,
    q_readout,
    readout_from_logits,
    true_q,
)
from probes.tokens import direction_token_ids

CONFIG = MazeConfig(size=30)


@pytest.fixture(scope="module")
def states():
    trajs = scripted_trajectories("gold", 3, config=CONFIG) + scripted_trajectories("mold", 2, config=CONFIG)
    return MazeStates.from_trajectories(trajs, config=CONFIG)


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def tiny(request):
    return tiny_model(request.param, seed=5)


def _prefix_logits(model, tok, states, index):
    """Output logits at the last token of the episode truncated to state ``index`` (independent forward)."""
    e, t = int(states.episode[index]), int(states.turn[index])
    text = render_chat(tok, list(states.messages[e][: 2 * t + 1]), close_final=False)
    encoded = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model(**encoded, output_hidden_states=True)
    return out.logits[0, -1], out.hidden_states


def test_states_from_trajectories_replay_positions_and_rewards(states):
    assert len(states) == sum(n + 1 for n in (1, 2, 3, 1, 2))
    final = np.flatnonzero(np.r_[states.episode[1:] != states.episode[:-1], True])
    assert states.last_reward[final].tolist() == [19.9] * 3 + [-10.1] * 2
    assert np.isnan(states.last_reward[states.turn == 0]).all()
    # the grid at a later state has the start cell melted into Mold
    later = int(np.flatnonzero(states.turn == 1)[0])
    x0, y0 = states.start[later]
    assert states.grid(later)[y0, x0] == 1


def test_states_reject_a_wrong_config():
    trajs = scripted_trajectories("gold", 1, config=CONFIG)
    with pytest.raises(MazeStatesError, match="config"):
        MazeStates.from_trajectories(trajs)  # default 100x100 mazes: different layout


def test_decision_positions_are_the_token_before_each_letter(tiny, states):
    _, tok = tiny
    text, positions = decision_positions(tok, states.messages[2])
    ids = tok(text, add_special_tokens=False)["input_ids"]
    letters = direction_token_ids(tok)
    assert len(positions) == 4 and positions[-1] == len(ids) - 1
    for p, action in zip(positions[:-1], states.actions[2]):
        assert ids[p + 1] == letters[action]


def test_q_readout_equals_beta_times_direction_logits(tiny, states):
    model, tok = tiny
    ids = direction_token_ids(tok)
    readout = q_readout(model, tok, states, beta=0.25, batch_size=2)
    assert readout.values.shape == (len(states), 4)
    for index in (0, 4, len(states) - 1):
        logits, _ = _prefix_logits(model, tok, states, index)
        expected = 0.25 * logits[ids].double()
        assert torch.allclose(readout.values[index], expected, atol=1e-4, rtol=1e-4)
    assert readout.token_ids == tuple(ids) and readout.action_tokens == ("N", "E", "S", "W")


def test_read_decisions_batched_equals_unbatched_and_matches_hidden_states(tiny, states):
    model, tok = tiny
    batched = read_decisions(model, tok, states, [0, 1], batch_size=5)
    single = read_decisions(model, tok, states, [0, 1], batch_size=1)
    assert torch.allclose(batched.direction_logits, single.direction_logits, atol=1e-4)
    assert torch.allclose(batched.activations[1], single.activations[1], atol=1e-4)
    _, hidden = _prefix_logits(model, tok, states, 5)
    assert torch.allclose(batched.activations[0][5], hidden[1][0, -1], atol=1e-4)


def test_lens_readout_at_last_layer_equals_output_logits(states):
    model, tok = tiny_model("llama", seed=6)
    out = q_readout(model, tok, states)
    lens = q_readout(model, tok, states, layer=-1)
    assert lens.layer == 1
    assert torch.allclose(out.values, lens.values, atol=1e-4)


def test_value_policy_and_implicit_reward_identities():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    beta = 0.5
    policy = readout_from_logits(logits, [1, 2, 3, 4], beta=beta)
    assert torch.allclose(policy.values, beta * logits)
    assert torch.allclose(policy.state_values, beta * torch.logsumexp(logits, 1))
    assert torch.allclose(policy.advantages, beta * torch.log_softmax(logits, 1))
    # a reference that differs only by a per-state constant has the same policy: zero implicit reward
    shifted = readout_from_logits(
        logits + torch.randn(6, 1, generator=g, dtype=torch.float64), [1, 2, 3, 4], beta=beta
    )
    assert torch.allclose(
        implicit_reward(policy, shifted), torch.zeros(6, 4, dtype=torch.float64), atol=1e-12
    )
    other_logits = torch.randn(6, 4, generator=g, dtype=torch.float64)
    reference = readout_from_logits(other_logits, [1, 2, 3, 4], beta=beta)
    by_hand = beta * (torch.log_softmax(logits, 1) - torch.log_softmax(other_logits, 1))
    assert torch.allclose(implicit_reward(policy, reference), by_hand)
    actions = [0, 1, 2, 3, 0, 1]
    assert torch.allclose(
        implicit_reward(policy, reference, actions=actions), by_hand[torch.arange(6), actions]
    )
    # tensors of logits or log-probabilities give the same (rows renormalised over the 4 actions)
    assert torch.allclose(implicit_reward(logits, other_logits, beta), by_hand)
    assert torch.allclose(
        implicit_reward(torch.log_softmax(logits, 1).numpy(), other_logits - 3.0, beta), by_hand
    )


def _readout(logits, beta=1.0, name=""):
    return readout_from_logits(torch.as_tensor(logits), [1, 2, 3, 4], beta=beta, model_name=name)


def test_implicit_reward_against_a_uniform_reference_is_beta_times_centred_log_policy():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 4, generator=g, dtype=torch.float64) * 3
    beta = 0.3
    policy = _readout(logits, beta)
    # uniform reference: equal logits, each state with its own offset
    uniform = _readout(torch.randn(7, 1, generator=g, dtype=torch.float64).expand(7, 4))
    reward = implicit_reward_readout(policy, uniform)
    log_pi = torch.log_softmax(logits, 1)
    expected = beta * (log_pi - log_pi.mean(1, keepdim=True))
    assert torch.allclose(reward.centred(), expected, atol=1e-12)
    assert torch.allclose(reward.values, beta * (log_pi + np.log(4)), atol=1e-12)
    # ... which is the plain logits-as-Q readout up to the per-state constant
    assert torch.allclose(reward.centred(), policy.centred(), atol=1e-12)
    q = np.random.default_rng(1).normal(size=(7, 4))
    assert q_correlation(reward, q) == q_correlation(policy, q)
    assert reward.beta == beta and reward.reference_model == "reference"
    assert implicit_reward_readout(policy, uniform, beta=2.0).beta == 2.0


def test_implicit_reward_of_a_policy_against_itself_is_zero_and_its_correlation_undefined():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 4, generator=g, dtype=torch.float64)
    policy, same = _readout(logits, 0.5, "m"), _readout(logits.clone(), 0.5, "m")
    reward = implicit_reward_readout(policy, same)
    assert bool((reward.values == 0).all())  # exactly, not approximately
    result = q_correlation(reward, np.random.default_rng(2).normal(size=(5, 4)))
    # nothing to rank: NaN (undefined), not an error, and no state used per state
    assert np.isnan(result.pooled) and np.isnan(result.pooled_p) and np.isnan(result.mean_per_state)
    assert result.n_states == 5 and result.n_states_used == 0


def test_planted_kl_optimal_policy_recovers_q_exactly_where_logits_as_q_does_not():
    """pi ~ pi_ref * exp(Q / beta): beta * log(pi / pi_ref) = Q - V(s), Spearman 1 with Q."""
    rng = np.random.default_rng(3)
    beta = 0.2
    q = rng.normal(size=(40, 4))
    # a reference that strongly prefers the actions Q dislikes
    ref_logits = -3.0 * q / beta + rng.normal(size=(40, 4))
    policy_logits = ref_logits + q / beta + rng.normal(size=(40, 1)) * 50  # + an arbitrary C(s)
    reference, policy = _readout(ref_logits, beta, "naive"), _readout(policy_logits, beta, "trained")
    reward = implicit_reward_readout(policy, reference)
    assert torch.allclose(reward.centred(), torch.as_tensor(q - q.mean(1, keepdims=True)), atol=1e-9)
    result = q_correlation(reward, q)
    assert result.pooled == pytest.approx(1.0) and result.mean_per_state == pytest.approx(1.0)
    assert result.n_states_used == 40
    assert reward.model_name == "trained" and reward.reference_model == "naive"
    # the policy's own logits read as Q carry the reference's (inverted) preferences
    assert q_correlation(policy, q).pooled < -0.5


def test_implicit_reward_errors():
    a = _readout(torch.zeros(2, 4))
    with pytest.raises(QReadoutError, match="same states"):
        implicit_reward_readout(a, _readout(torch.zeros(3, 4)))
    with pytest.raises(QReadoutError, match="same states"):
        implicit_reward(torch.zeros(2, 4), torch.zeros(2, 3))
    with pytest.raises(QReadoutError, match="action tokens"):
        implicit_reward(a, readout_from_logits(torch.zeros(2, 4), [1, 2, 3, 5]))
    with pytest.raises(QReadoutError, match="NaN or inf"):
        implicit_reward(torch.tensor([[0.0, -np.inf, 0.0, 0.0]]), torch.zeros(1, 4))
    with pytest.raises(QReadoutError, match="NaN or inf"):
        implicit_reward(torch.zeros(1, 4), np.full((1, 4), np.nan))
    with pytest.raises(QReadoutError, match="n_actions"):
        implicit_reward(torch.zeros(4), torch.zeros(4))
    with pytest.raises(QReadoutError, match="beta"):
        implicit_reward_readout(a, a, beta=-1.0)
    with pytest.raises(QReadoutError, match="QReadout"):
        implicit_reward_readout(torch.zeros(2, 4), a)
    with pytest.raises(QReadoutError, match="one action"):
        implicit_reward(a, a, actions=[0, 4])


def test_q_correlation_on_synthetic_values():
    rng = np.random.default_rng(0)
    q_true = rng.normal(size=(50, 4)) * 10
    beta = 0.1
    logits = q_true / beta + rng.normal(size=(50, 1)) * 100  # l = Q/beta + C(s)
    perfect = q_correlation(beta * logits, q_true)
    assert perfect.pooled == pytest.approx(1.0) and perfect.mean_per_state == pytest.approx(1.0)
    assert perfect.n_states_used == 50
    reversed_ = q_correlation(-logits, q_true)
    assert reversed_.pooled == pytest.approx(-1.0) and reversed_.mean_per_state == pytest.approx(-1.0)
    noise = q_correlation(rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4)))
    assert abs(noise.pooled) < 0.06
    # per-state rho by hand on one state with a tie-free ranking
    q_hat = np.array([[1.0, 3.0, 2.0, 4.0], [0.0, 0.0, 0.0, 0.0], [4.0, 3.0, 2.0, 1.0]])
    q = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0]])
    result = q_correlation(q_hat, q)
    assert result.n_states_used == 2  # the constant state is skipped
    assert result.mean_per_state == pytest.approx((0.8 - 1.0) / 2)


def test_q_correlation_and_readout_errors():
    with pytest.raises(QReadoutError, match="same shape"):
        q_correlation(np.zeros((3, 4)), np.zeros((3, 3)))
    with pytest.raises(QReadoutError, match="NaN"):
        q_correlation(np.full((3, 4), np.nan), np.zeros((3, 4)))
    with pytest.raises(QReadoutError, match="beta"):
        readout_from_logits(torch.zeros(2, 4), [1, 2, 3, 4], beta=0.0)
    with pytest.raises(QReadoutError):
        QReadout(("N", "E", "S", "W"), (1, 2, 3, 4), torch.zeros(2, 3))
    a = readout_from_logits(torch.zeros(2, 4), [1, 2, 3, 4])
    b = readout_from_logits(torch.zeros(3, 4), [1, 2, 3, 4])
    with pytest.raises(QReadoutError, match="differ"):
        implicit_reward(a, b)


SHORT = MazeConfig(size=30, n_turns=3, wind_prob=0.0)


def test_turns_left_counts_the_move_about_to_be_made():
    """turns_left = the env steps still allowed before truncation, this state's move included."""
    states = MazeStates.random_walks(2, config=SHORT, seed=4)
    assert states.turns_left.tolist() == [3, 2, 1, 0] * 2
    env = MazeEnv(SHORT)
    for e in range(2):
        rows = np.flatnonzero(states.episode == e)
        env.reset(seed=states.seeds[e])
        for t, row in enumerate(rows):
            assert states.turns_left[row] == SHORT.n_turns - env.turn
            if t < len(states.actions[e]):
                *_, truncated, _ = env.step(states.actions[e][t])
                assert truncated == (states.turns_left[row] == 1)  # the last move is the one with 1 left
        assert states.has_decision[rows].tolist() == [True, True, True, False]
        with pytest.raises(RuntimeError, match="finished"):  # no move at turns_left == 0
            env.step(0)
    longer = MazeStates.random_walks(1, config=dataclasses.replace(SHORT, n_turns=4), seed=4)
    with pytest.raises(MazeStatesError, match="more than"):  # an episode cannot outrun n_turns
        MazeStates.build(longer.messages, longer.seeds, longer.actions, longer.winds, SHORT)


@pytest.mark.parametrize("horizon", [1, 2, 5])
def test_true_q_scores_a_state_with_k_moves_left_over_min_horizon_k(horizon):
    states = MazeStates.random_walks(3, config=dataclasses.replace(SHORT, wind_prob=0.5), seed=6)
    with pytest.raises(QReadoutError, match="no move left"):
        true_q(states, horizon=horizon)
    decisions = states.decisions()
    assert decisions.has_decision.all() and len(decisions) == 9
    assert np.array_equal(decisions.turns_left, states.turns_left[states.has_decision])
    assert np.array_equal(decisions.position, states.position[states.has_decision])
    h = q_horizons(decisions, horizon)
    assert np.array_equal(h, np.minimum(horizon, decisions.turns_left))
    assert (h <= decisions.turns_left).all() and (h >= 1).all()
    q = true_q(decisions, horizon=horizon)
    for i in range(len(decisions)):
        k = int(decisions.turns_left[i])
        pos = tuple(int(v) for v in decisions.position[i])
        expected = action_values(decisions.grid(i), pos, min(horizon, k), SHORT)
        assert np.array_equal(q[i], expected)
    assert decisions.decisions() is decisions


def test_decisions_read_the_same_logits_at_the_remaining_states():
    states = MazeStates.random_walks(2, config=SHORT, seed=8)
    model, tok = tiny_model("llama", seed=9)
    full = read_decisions(model, tok, states)
    kept = read_decisions(model, tok, states.decisions())
    assert kept.direction_logits.shape == (6, 4)
    assert torch.allclose(kept.direction_logits, full.direction_logits[states.has_decision], atol=1e-5)


def test_true_q_matches_action_values_on_replayed_grids(states):
    q = true_q(states, horizon=3)
    env = MazeEnv(dataclasses.replace(CONFIG, wind_prob=0.0))
    # replay episode 2 with the env and compare at every state
    e = 2
    rows = np.flatnonzero(states.episode == e)
    env.reset(seed=states.seeds[e])
    for t, row in enumerate(rows):
        h = min(3, CONFIG.n_turns - t)
        assert np.allclose(q[row], action_values(env.grid, env.position, h, CONFIG))
        if t < len(states.actions[e]):
            env.step(states.actions[e][t])


def test_compare_q_runs_before_and_after(states):
    before, tok = tiny_model("llama", seed=7)
    after, _ = tiny_model("llama", seed=8)
    cmp = compare_q(before, after, tok, states, beta=1.0, horizon=2)
    assert cmp.q_true.shape == (len(states), 4)
    assert np.isfinite(cmp.correlation_before.pooled) and np.isfinite(cmp.correlation_after.pooled)
    assert torch.allclose(cmp.implicit_reward, implicit_reward(cmp.after, cmp.before))
    same = compare_q(before, before, tok, states, horizon=2)
    assert torch.allclose(same.implicit_reward, torch.zeros_like(same.implicit_reward), atol=1e-6)
    fig = q_scatter(cmp.after, cmp.q_true)
    assert len(fig.data) == 4
