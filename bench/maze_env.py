"""Maze env speed against Farama Minigrid's MiniGrid-Empty-8x8-v0, measured in the same run.

Prints steps/s for minigrid, the single MazeEnv (text observation every step), the batched MazeBatch
(state stepping, and with text rendering), and the time to generate one 100×100 maze. Medians of
several repetitions. Ends with the headline lines named in shared/BENCH.md:
    BENCH env_vs_minigrid <batched steps/s ÷ minigrid steps/s> >=10
    BENCH maze_gen_ms <ms per 100x100 maze> <=5

Run: python -m bench.maze_env [--reps 5] [--batch 1024]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: drop bench/ from sys.path so it cannot shadow the maze_env package
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse
import statistics
import time

import gymnasium as gym
import minigrid  # noqa: F401  (registers MiniGrid-* ids)
import numpy as np

from maze_env import MazeBatch, MazeConfig, MazeEnv, generate_maze


def minigrid_steps_per_s(n_steps: int) -> float:
    env = gym.make("MiniGrid-Empty-8x8-v0")
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 3, n_steps).tolist()
    t = time.perf_counter()
    for a in actions:
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            env.reset()
    return n_steps / (time.perf_counter() - t)


def maze_steps_per_s(n_steps: int) -> float:
    env = MazeEnv()
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, 4, n_steps).tolist()
    elapsed = 0.0
    done = 0
    while done < n_steps:
        env.reset(seed=done)  # generation is timed separately
        t = time.perf_counter()
        for a in actions[done : done + 15]:
            env.step(a)
        elapsed += time.perf_counter() - t
        done += 15
    return done / elapsed


def batch_steps_per_s(n: int, with_text: bool) -> float:
    batch = MazeBatch(n)
    batch.reset(seed=0)
    rng = np.random.default_rng(0)
    actions = [rng.integers(0, 4, n) for _ in range(15)]
    t = time.perf_counter()
    for a in actions:
        batch.step(a)
        if with_text:
            batch.observations()
    return n * 15 / (time.perf_counter() - t)


def generation_ms(n: int) -> float:
    cfg = MazeConfig()
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(n):
        generate_maze(rng, cfg)
    return (time.perf_counter() - t) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=15_000)
    args = parser.parse_args()

    rows = {"minigrid": [], "maze_single": [], "maze_batch": [], "maze_batch_text": [], "gen_ms": []}
    for _ in range(args.reps):  # interleaved so machine noise hits every measurement alike
        rows["minigrid"].append(minigrid_steps_per_s(args.steps))
        rows["maze_single"].append(maze_steps_per_s(args.steps))
        rows["maze_batch"].append(batch_steps_per_s(args.batch, with_text=False))
        rows["maze_batch_text"].append(batch_steps_per_s(args.batch, with_text=True))
        rows["gen_ms"].append(generation_ms(100))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"{'measurement':<34}{'median':>14}{'vs minigrid':>14}")
    for key, label in (
        ("minigrid", "MiniGrid-Empty-8x8-v0 steps/s"),
        ("maze_single", "MazeEnv (text obs) steps/s"),
        ("maze_batch", f"MazeBatch n={args.batch} steps/s"),
        ("maze_batch_text", f"MazeBatch n={args.batch} + text steps/s"),
    ):
        print(f"{label:<34}{med[key]:>14,.0f}{med[key] / med['minigrid']:>13.2f}x")
    print(f"{'generate 100x100 maze (ms)':<34}{med['gen_ms']:>14.3f}")
    print(f"BENCH env_vs_minigrid {med['maze_batch'] / med['minigrid']:.1f} >=10")
    print(f"BENCH maze_gen_ms {med['gen_ms']:.2f} <=5")


if __name__ == "__main__":
    main()
