"""Scripted trajectories (paper §A.3), the expert, and true action values against brute force."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from maze_env import (
    ACTIONS,
    Expert,
    MazeConfig,
    MazeEnv,
    Tile,
    action_values,
    final_action_balance,
    scripted_trajectories,
)
from maze_env.dynamics import move


# -- scripted trajectories ---------------------------------------------------------------------------------
@pytest.mark.parametrize("tile", ["Mold", "Gold", "Path"])
def test_scripted_trajectories_satisfy_class_and_balance_rules(tile):
    cfg = MazeConfig()
    trajs = scripted_trajectories(tile, 60, config=cfg)
    reward_last = cfg.step_cost + cfg.reward_of(Tile.parse(tile))
    assert Counter(t.n_steps for t in trajs) == {n: 4 for n in range(1, 16)}
    assert final_action_balance(trajs) == {a: 0.25 for a in ACTIONS}
    glyph = cfg.tiles.glyph(Tile.parse(tile))
    for t in trajs:
        assert t.tile == Tile.parse(tile) and len(t.actions) == t.n_steps
        assert t.rewards[:-1] == (pytest.approx(cfg.step_cost),) * (t.n_steps - 1)  # walk over Path only
        assert t.rewards[-1] == pytest.approx(reward_last)  # last step enters the class tile
        assert len(set(t.positions)) == len(t.positions)  # self-avoiding: nothing visited twice
        roles = [m["role"] for m in t.messages]
        assert roles == ["user", "assistant"] * t.n_steps
        assert t.messages[-1]["content"] == ACTIONS[t.final_action]
        direction = ("north", "east", "south", "west")[t.final_action]
        assert f"to the {direction} there is {glyph}" in t.messages[-2]["content"].lower()
        assert "wind" not in " ".join(m["content"] for m in t.messages)


def test_scripted_trajectories_are_reproducible_and_share_maze_seeds_across_classes():
    a = scripted_trajectories("gold", 8)
    b = scripted_trajectories("gold", 8)
    assert [t.messages for t in a] == [t.messages for t in b]
    assert a[0].seed == 474747 or a[0].seed > 474747
    other = scripted_trajectories("gold", 8, base_seed=1)
    assert [t.messages for t in a] != [t.messages for t in other]


def test_mold_reversal_changes_only_molds_last_step():
    cfg = MazeConfig()
    for tile in ("Gold", "Path"):  # the tile just left is Mold after melting: never Gold or Path
        plain = scripted_trajectories(tile, 30, config=cfg)
        assert scripted_trajectories(tile, 30, config=cfg, mold_reversal=True) == plain
    plain = scripted_trajectories("Mold", 60, config=cfg)
    allowed = scripted_trajectories("Mold", 60, config=cfg, mold_reversal=True)
    reward_last = cfg.step_cost + cfg.reward_of(Tile.MOLD)
    reversals = 0
    for a, b in zip(plain, allowed, strict=True):
        assert (a.n_steps, a.final_action) == (b.n_steps, b.final_action)  # the matched design holds
        assert b.rewards[-1] == pytest.approx(reward_last)  # still enters Mold, through the env
        assert len(set(b.positions[:-1])) == len(b.positions) - 1  # the walk itself stays self-avoiding
        turned_back = b.n_steps >= 2 and b.positions[-1] == b.positions[-3]
        reversals += turned_back
        if not turned_back:  # otherwise the last step enters a never-visited Mold tile, as by default
            assert len(set(b.positions)) == len(b.positions)
    # Default: Mold never turns back; allowed: a good share of the 56 trajectories with n >= 2 do.
    assert not any(t.n_steps >= 2 and t.positions[-1] == t.positions[-3] for t in plain)
    assert 10 <= reversals < 56
    assert sum(a == b for a, b in zip(plain, allowed)) >= 4  # n = 1 cannot turn back: unchanged


def test_scripted_trajectories_bad_input():
    with pytest.raises(ValueError, match="unknown tile"):
        scripted_trajectories("lava", 3)
    with pytest.raises(ValueError, match="positive integer"):
        scripted_trajectories("gold", 0)


# -- expert ----------------------------------------------------------------------------------------------
def test_expert_beats_random_by_a_wide_margin_on_200_mazes():
    env = MazeEnv()
    expert = Expert(seed=0)
    rng = np.random.default_rng(0)
    expert_returns, random_returns = [], []
    gold = {"expert": 0, "random": 0}
    mold = {"expert": 0, "random": 0}
    for seed in range(200):
        for policy, returns in (("expert", expert_returns), ("random", random_returns)):
            env.reset(seed=seed)
            total = 0.0
            for _ in range(15):
                a = expert.act(env) if policy == "expert" else int(rng.integers(4))
                _, r, _, _, info = env.step(a)
                total += r
                gold[policy] += info["delta_gold"]
                mold[policy] += info["delta_mold"]
            returns.append(total)
    e, r = np.array(expert_returns), np.array(random_returns)
    se = np.sqrt(e.var(ddof=1) / len(e) + r.var(ddof=1) / len(r))
    assert e.mean() - r.mean() > 10 * se
    assert e.mean() > 50 and r.mean() < 0
    # In this ~50%-Mold field the expert crosses Mold when a Gold cluster pays for it, but far less often.
    assert gold["expert"] > 3 * gold["random"] and mold["expert"] < 0.5 * mold["random"]


# -- true action values ----------------------------------------------------------------------------------
def _brute_force_q(grid, pos, h, cfg, wind):
    """Independent reference: recursion over copies of the grid with the env's own move rule."""

    def value(grid, pos, h):
        return max(q(grid, pos, h)) if h > 0 else 0.0

    def q(grid, pos, h):
        out = []
        for a in range(4):
            g1 = grid.copy()
            p1, t1 = move(g1, pos, a, melt=cfg.melt)
            r1 = cfg.step_cost + (cfg.reward_of(t1) if t1 is not None else 0.0)
            outcomes = [(1.0, None)]
            if wind == "expectation" and cfg.wind_prob > 0:
                outcomes = [(1 - cfg.wind_prob, None)] + [(cfg.wind_prob / 4, w) for w in range(4)]
            total = 0.0
            for prob, w in outcomes:
                g2, p2, r2 = g1, p1, 0.0
                if w is not None:
                    g2 = g1.copy()
                    p2, t2 = move(g2, p1, w, melt=cfg.melt)
                    r2 = cfg.reward_of(t2) if t2 is not None else 0.0
                total += prob * (r1 + r2 + value(g2, p2, h - 1))
            out.append(total)
        return out

    return np.array(q(grid.copy(), pos, h))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("h", [1, 2, 3, 4])
def test_q_values_match_brute_force_without_wind(seed, h):
    env = MazeEnv()
    env.reset(seed=seed)
    for t in range(3):  # also after some melting
        q = action_values(env.grid, env.position, h, env.config)
        np.testing.assert_allclose(q, _brute_force_q(env.grid, env.position, h, env.config, "off"), atol=1e-9)
        env.step(t)


@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("h", [1, 2])
def test_q_values_match_brute_force_with_wind_expectation(seed, h):
    env = MazeEnv()
    env.reset(seed=seed)
    env.step(1)
    q = action_values(env.grid, env.position, h, env.config, wind="expectation")
    np.testing.assert_allclose(
        q, _brute_force_q(env.grid, env.position, h, env.config, "expectation"), atol=1e-9
    )


def test_q_values_near_the_border_and_on_a_hand_grid():
    grid = np.array([[2, 0, 1], [0, 0, 2], [1, 1, 1]], dtype=np.int8)
    cfg = MazeConfig(size=5)
    for pos, h in itertools.product([(0, 0), (1, 1), (2, 1)], [1, 2, 3]):
        np.testing.assert_allclose(
            action_values(grid, pos, h, cfg), _brute_force_q(grid, pos, h, cfg, "off"), atol=1e-9
        )
    # From (1,1): N enters Path, E enters Gold; one step Q is exactly step cost + tile reward.
    np.testing.assert_allclose(action_values(grid, (1, 1), 1, cfg), [-0.1, 19.9, -10.1, -0.1])


def test_action_values_bad_input():
    env = MazeEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="wind must be 'off' or 'expectation'"):
        action_values(env.grid, env.position, 2, env.config, wind="sometimes")
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        action_values(env.grid, env.position, 0, env.config)
