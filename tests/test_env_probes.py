"""probes.env_probes: maze-seed splits, control tasks, planted representations are decoded, rollouts replay."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maze_env import MazeConfig
from probes.env_probes import (
    TASKS,
    ProbeError,
    control_targets,
    probe_model,
    probe_tasks,
    run_probes,
    seed_split,
)
from probes.maze_states import MazeStates, read_decisions
from probes.models import tiny_model
from probes.plots import probe_accuracy

CONFIG = MazeConfig(size=30)


@pytest.fixture(scope="module")
def walks():
    return MazeStates.random_walks(40, config=CONFIG, seed=11, n_turns=6)


def _planted(states: MazeStates, noise: float, seed: int = 0) -> torch.Tensor:
    """Activations that linearly encode every target, plus noise dimensions."""
    rng = np.random.default_rng(seed)
    parts = [np.eye(3)[states.neighbours[:, d]] for d in range(4)]
    parts.append(states.relative_position.astype(float))
    sign = np.nan_to_num(np.sign(np.round(states.last_reward - CONFIG.step_cost, 6)), nan=0.0)
    parts.append(np.eye(3)[(sign + 1).astype(int)])
    signal = np.concatenate(parts, axis=1)
    return torch.as_tensor(
        np.c_[signal + noise * rng.normal(size=signal.shape), rng.normal(size=(len(states), 16))]
    ).float()


def test_targets_follow_the_states(walks):
    tasks = {t.name: t for t in probe_tasks(walks)}
    assert list(tasks) == list(TASKS)
    assert np.array_equal(tasks["neighbour_E"].targets, walks.neighbours[:, 1])
    assert np.array_equal(tasks["y"].targets, walks.position[:, 1] - walks.start[:, 1])
    reward = tasks["last_reward"]
    assert not reward.valid[walks.turn == 0].any() and reward.valid[walks.turn > 0].all()
    mold_entered = walks.last_reward < CONFIG.step_cost - 1
    assert (reward.targets[mold_entered & (walks.last_reward < 0)] == -1).all()
    with pytest.raises(ProbeError, match="unknown probe tasks"):
        probe_tasks(walks, ["colour"])


def test_seed_split_is_by_maze_and_seeded(walks):
    train, test = seed_split(walks.state_seed, test_fraction=0.25, seed=3)
    assert not (train & test).any() and (train | test).all()
    assert not set(walks.state_seed[train]) & set(walks.state_seed[test])
    assert len(set(walks.state_seed[test])) == 10
    again = seed_split(walks.state_seed, test_fraction=0.25, seed=3)
    assert np.array_equal(again[1], test)
    with pytest.raises(ProbeError, match="at least 2 mazes"):
        seed_split(np.zeros(5))


def test_control_targets_keep_label_distribution_per_turn(walks):
    targets = walks.neighbours[:, 0]
    control = control_targets(targets, walks.turn, seed=1)
    assert not np.array_equal(control, targets)
    for t in np.unique(walks.turn):
        rows = walks.turn == t
        assert sorted(control[rows]) == sorted(targets[rows])
    assert np.array_equal(control, control_targets(targets, walks.turn, seed=1))


def test_planted_representation_is_decoded_and_selective(walks):
    table = run_probes({0: _planted(walks, 0.05), 1: torch.randn(len(walks), 20)}, walks, seed=0)
    for task in ("neighbour_N", "neighbour_E", "neighbour_S", "neighbour_W", "last_reward"):
        planted = table.get(task, 0)
        assert planted.score == 1.0, task
        assert planted.control_score < 0.9, task
        assert planted.selectivity > 0.1, task
    for task in ("x", "y"):
        assert table.get(task, 0).score > 0.99
        assert table.get(task, 0).control_score < 0.5
        assert table.get(task, 1).score < 0.5  # random activations carry nothing
    assert table.best("x").layer == 0
    rows = table.to_rows()
    assert len(rows) == 2 * len(TASKS) and {"selectivity", "baseline"} <= set(rows[0])


def test_probes_are_seeded(walks):
    acts = {0: _planted(walks, 1.0)}
    first = run_probes(acts, walks, seed=4, tasks=["neighbour_N", "x"])
    second = run_probes(acts, walks, seed=4, tasks=["neighbour_N", "x"])
    assert first.to_rows() == second.to_rows()


def test_probe_errors(walks):
    with pytest.raises(ProbeError, match="rows"):
        run_probes({0: torch.zeros(3, 4)}, walks)
    with pytest.raises(ProbeError, match="NaN"):
        run_probes({0: torch.full((len(walks), 4), float("nan"))}, walks)
    with pytest.raises(ProbeError, match="no activations"):
        run_probes({}, walks)


def test_probe_model_on_a_tiny_model_and_rollout_states():
    from training.rollout import collect_episodes

    model, tok = tiny_model("llama", seed=2)
    config = MazeConfig(size=30, n_turns=3, wind_prob=0.5)
    batch = collect_episodes(
        model, tok, seeds=list(range(6)), config=config, generator=torch.Generator().manual_seed(0)
    )
    states = MazeStates.from_episodes(batch)
    assert len(states) == 6 * 3
    assert np.array_equal(states.neighbours, batch.neighbours.reshape(-1, 4).numpy())
    assert np.allclose(states.last_reward[states.turn > 0], batch.rewards[:, :-1].reshape(-1).numpy())
    table = probe_model(model, tok, states, [1], tasks=["neighbour_N", "x"])
    assert table.layers == [1]
    read = read_decisions(model, tok, states, [1])
    assert table.to_rows() == run_probes(read.activations, states, tasks=["neighbour_N", "x"]).to_rows()
    fig = probe_accuracy({"before": table}, ["x"])
    assert [t.name for t in fig.data] == ["before x", "before x (control)"]
