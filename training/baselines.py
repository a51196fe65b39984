"""Returns of simple scripted policies on the trainer's held-out mazes: the yardstick for a trained model.

A model's held-out return (``training.evaluate``) means little on its own. These policies say what
each behaviour is worth on the same 64 seeded mazes: alternating N/S (every reversal enters the melted
tile), never reversing, avoiding visible Mold, and the receding-horizon expert.

Example:
    >>> from training import heldout_seeds
    >>> result = evaluate_policy("alternate_ns", heldout_seeds(2))
    >>> result.n, result.mold_per_episode >= 14
    (2, True)

Command line (prints a markdown table)::

    python -m training.baselines --n 64
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from maze_env.config import MazeConfig
from maze_env.dynamics import OPPOSITE
from maze_env.env import MazeEnv
from maze_env.search import Expert
from maze_env.tiles import Tile

Act = Callable[[MazeEnv, int | None, int], int]
"""``act(env, previous_action, turn) -> action``."""


def _always_north(rng: np.random.Generator) -> Act:
    return lambda env, last, turn: 0


def _alternate_ns(rng: np.random.Generator) -> Act:
    return lambda env, last, turn: 0 if turn % 2 == 0 else 2


def _uniform(rng: np.random.Generator) -> Act:
    return lambda env, last, turn: int(rng.integers(4))


def _no_reverse(rng: np.random.Generator) -> Act:
    def act(env: MazeEnv, last: int | None, turn: int) -> int:
        allowed = [d for d in range(4) if last is None or d != OPPOSITE[last]]
        return int(rng.choice(allowed))

    return act


def _avoid_mold(rng: np.random.Generator) -> Act:
    def act(env: MazeEnv, last: int | None, turn: int) -> int:
        safe = [d for d, tile in enumerate(env.neighbours()) if tile != Tile.MOLD]
        return int(rng.choice(safe)) if safe else int(rng.integers(4))

    return act


def _expert(horizon: int) -> Callable[[np.random.Generator], Act]:
    def make(rng: np.random.Generator) -> Act:
        expert = Expert(horizon=horizon, seed=int(rng.integers(2**32)))
        return lambda env, last, turn: expert.act(env)

    return make


POLICIES: dict[str, tuple[Callable[[np.random.Generator], Act], str]] = {
    "alternate_ns": (_alternate_ns, "N, S, N, S, ... (the untrained SmolLM2's habit, in the extreme)"),
    "uniform": (_uniform, "uniformly random direction"),
    "no_reverse": (_no_reverse, "random, never straight back"),
    "always_north": (_always_north, "always N"),
    "avoid_mold": (_avoid_mold, "random among the neighbours that are not Mold (reads the tiles)"),
    "expert_h1": (_expert(1), "greedy expert: Gold, then Path, then Mold"),
    "expert_h6": (_expert(6), "expert planning 6 turns ahead (the SFT default)"),
}
"""Name → (factory taking a seeded Generator, description)."""


@dataclass(frozen=True)
class BaselineResult:
    """Per-episode means over the mazes (``stderr_return``: standard error of the mean return)."""

    policy: str
    n: int
    mean_return: float
    stderr_return: float
    gold_per_episode: float
    mold_per_episode: float


def evaluate_policy(
    policy: str, seeds: Sequence[int], config: MazeConfig | None = None, *, seed: int = 0
) -> BaselineResult:
    """Play ``policy`` once on each maze seed (wind included) and average return, Gold and Mold entries.

    ``seed`` seeds the policy's own randomness; the same arguments give the same numbers.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown baseline policy {policy!r}; choose one of {sorted(POLICIES)}")
    if not seeds:
        raise ValueError("seeds is empty; pass the maze seeds, e.g. training.heldout_seeds(64)")
    config = config or MazeConfig()
    act = POLICIES[policy][0](np.random.default_rng(seed))
    returns, gold, mold = [], [], []
    for maze_seed in seeds:
        env = MazeEnv(config)
        env.reset(seed=int(maze_seed))
        last, total, g, m = None, 0.0, 0, 0
        for turn in range(config.n_turns):
            last = act(env, last, turn)
            _, reward, _, _, info = env.step(last)
            total, g, m = total + reward, g + info["delta_gold"], m + info["delta_mold"]
        returns.append(total)
        gold.append(g)
        mold.append(m)
    r = np.asarray(returns)
    se = float(r.std(ddof=1) / math.sqrt(len(r))) if len(r) > 1 else math.nan
    return BaselineResult(policy, len(r), float(r.mean()), se, float(np.mean(gold)), float(np.mean(mold)))


def baseline_table(n: int = 64, config: MazeConfig | None = None, *, seed: int = 0) -> list[BaselineResult]:
    """Every policy of :data:`POLICIES` on the first ``n`` held-out mazes of the trainer."""
    from training.config import heldout_seeds

    seeds = heldout_seeds(n)
    return [evaluate_policy(name, seeds, config, seed=seed) for name in POLICIES]


def format_table(rows: Sequence[BaselineResult]) -> str:
    """A markdown table of :func:`baseline_table`'s rows."""
    lines = ["| policy | what it does | return / episode (± SE) | Gold | Mold |", "|---|---|---|---|---|"]
    for row in rows:
        lines.append(
            f"| `{row.policy}` | {POLICIES[row.policy][1]} | {row.mean_return:+.1f} ± {row.stderr_return:.1f} "
            f"| {row.gold_per_episode:.2f} | {row.mold_per_episode:.2f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.baselines", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--n", type=int, default=64, help="held-out mazes (default 64, as the trainer's eval)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the policies' own randomness")
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error("--n must be at least 2 (the standard error needs two mazes)")
    print(format_table(baseline_table(args.n, seed=args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
