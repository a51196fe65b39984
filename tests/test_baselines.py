"""Scripted baseline policies on held-out mazes: exact behaviour where it is forced, reproducible numbers."""

from __future__ import annotations

import pytest

from maze_env.config import MazeConfig
from training import heldout_seeds
from training.baselines import POLICIES, baseline_table, evaluate_policy, format_table, main

NO_WIND = MazeConfig(wind_prob=0.0)


def test_alternating_ns_enters_the_melted_tile_on_every_reversal():
    result = evaluate_policy("alternate_ns", heldout_seeds(8), NO_WIND)
    # the first move may enter anything; each later move returns to the tile just left, which melted
    assert result.mold_per_episode >= NO_WIND.n_turns - 1
    assert result.gold_per_episode <= 1


def test_same_arguments_same_numbers_and_the_expert_beats_chance():
    seeds = heldout_seeds(16)
    assert evaluate_policy("uniform", seeds, seed=3) == evaluate_policy("uniform", seeds, seed=3)
    expert, uniform = evaluate_policy("expert_h1", seeds), evaluate_policy("uniform", seeds)
    assert expert.mean_return > uniform.mean_return + 3 * (expert.stderr_return + uniform.stderr_return)
    assert expert.mold_per_episode < uniform.mold_per_episode


def test_bad_input_names_the_fix():
    with pytest.raises(ValueError, match="choose one of"):
        evaluate_policy("greedy", heldout_seeds(2))
    with pytest.raises(ValueError, match="heldout_seeds"):
        evaluate_policy("uniform", [])


def test_table_and_command_line(capsys):
    rows = baseline_table(2, MazeConfig(n_turns=3))
    assert [r.policy for r in rows] == list(POLICIES) and all(r.n == 2 for r in rows)
    assert format_table(rows).count("\n") == len(POLICIES) + 1
    assert main(["--n", "2"]) == 0
    assert "`expert_h6`" in capsys.readouterr().out
