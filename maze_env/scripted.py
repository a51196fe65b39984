"""Scripted trajectories for reward-vector extraction (paper §A.3).

For class c ∈ {Mold, Gold, Path}, trajectory i has n = 1 + (i mod n_turns) steps (so n is spread evenly over
1..15) and final direction ACTIONS[i mod 4] (so each final direction is ≈25%). The first n−1 steps are a
constrained random walk over adjacent Path tiles (randomised depth-first: each step draws uniformly among
unvisited Path neighbours and a dead end backtracks); the last step enters a tile of class c that was never
visited. Whether a Mold trajectory may instead end by stepping back onto the tile it has just left (which
has melted into Mold) is a choice the paper's text leaves open: ``mold_reversal=False`` (the default) forbids it,
``mold_reversal=True`` allows it. The default keeps the design matched: in every class the last step is a move
forward onto a never-visited tile, so the classes differ only in the tile entered. With reversals allowed,
Mold's last step is also, often, a U-turn that no Gold or Path step can be, and Eq. 1's v_Mold then mixes
"entered Mold" with "turned back" (measured on the untrained SmolLM2 in ``docs/probes_smollm2.md``: the
choice alone reorders the centred class geometry). Gold and Path are the same under both settings.
Every maze is fresh: mazes are generated from ``base_seed``, ``base_seed+1``, … (474747 in the paper),
with the same seeds for every class, without wind. A maze where no valid walk is found within ``budget``
expanded cells is discarded and the next seed is used. Walks are searched on the bare grid, then replayed
through ``MazeEnv`` to render the exact prompts, so a trajectory can only land on Gold through legal moves:
the paper's Gold rejection rules (n shorter than the shortest path, mismatched parity) hold by construction.

Example:
    >>> trajs = scripted_trajectories("gold", 4, config=MazeConfig(size=30))
    >>> [t.n_steps for t in trajs], [t.final_action for t in trajs]
    ([1, 2, 3, 4], [0, 1, 2, 3])
    >>> trajs[0].messages[-1]
    {'role': 'assistant', 'content': 'N'}
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from gymnasium.utils import seeding

from maze_env.config import MazeConfig
from maze_env.dynamics import ACTIONS, DX, DY
from maze_env.env import MazeEnv
from maze_env.generate import generate_maze
from maze_env.text import episode_messages
from maze_env.tiles import Tile

PAPER_BASE_SEED = 474747


@dataclass(frozen=True)
class Trajectory:
    """One scripted episode prefix ending on the class tile."""

    messages: list[dict[str, str]]
    tile: Tile
    n_steps: int
    final_action: int
    seed: int
    actions: tuple[int, ...]
    positions: tuple[tuple[int, int], ...]
    rewards: tuple[float, ...]

    @property
    def label(self) -> str:
        return self.tile.name.title()


def _sample_walk(
    grid: np.ndarray,
    start: tuple[int, int],
    rng: np.random.Generator,
    tile: Tile,
    n_steps: int,
    final: int,
    budget: int,
    mold_reversal: bool = False,
) -> list[int] | None:
    """Randomised depth-first search for n−1 Path steps then ``final`` onto an unvisited ``tile``.

    At each step the next Path neighbour is drawn uniformly from the unvisited ones (the constrained random
    walk); a dead end backtracks instead of throwing the maze away. ``budget`` caps the cells expanded.
    With ``mold_reversal`` and ``tile`` Mold, ``final`` may also step back onto the tile just left (melted).
    """
    size_y, size_x = grid.shape
    visited = {start}
    path = [start]
    actions: list[int] = []
    stack: list[list[int]] = []  # untried directions at each depth
    expanded = 0

    def options(x: int, y: int) -> list[int]:
        out = []
        for d in rng.permutation(4).tolist():
            nx, ny = x + _DX[d], y + _DY[d]
            if (
                0 <= nx < size_x
                and 0 <= ny < size_y
                and (nx, ny) not in visited
                and grid[ny, nx] == Tile.PATH
            ):
                out.append(d)
        return out

    def final_ok(x: int, y: int) -> bool:
        tx, ty = x + _DX[final], y + _DY[final]
        if mold_reversal and tile == Tile.MOLD and len(path) >= 2 and (tx, ty) == path[-2]:
            return True  # back onto the tile just left, which has melted into Mold
        return 0 <= tx < size_x and 0 <= ty < size_y and (tx, ty) not in visited and grid[ty, tx] == tile

    if n_steps == 1:
        return [final] if final_ok(*start) else None
    stack.append(options(*start))
    while stack:
        if expanded >= budget:
            return None
        if not stack[-1]:  # dead end: backtrack
            stack.pop()
            if actions:
                actions.pop()
                visited.discard(path.pop())
            continue
        d = stack[-1].pop()
        x, y = path[-1]
        nxt = (x + _DX[d], y + _DY[d])
        expanded += 1
        actions.append(d)
        path.append(nxt)
        visited.add(nxt)
        if len(actions) == n_steps - 1:
            if final_ok(*nxt):
                return [*actions, final]
            actions.pop()
            visited.discard(path.pop())
            continue
        stack.append(options(*nxt))
    return None


_DX = [int(v) for v in DX]
_DY = [int(v) for v in DY]


def _replay(env: MazeEnv, maze, seed: int, tile: Tile, actions: list[int]) -> Trajectory:
    """Step the env through ``actions`` (no wind) to get the exact prompts the model would see."""
    obs, _ = env.reset(seed=seed, options={"maze": maze})
    observations, positions, rewards = [obs], [env.position], []
    for a in actions:
        obs, r, _, _, info = env.step(a)
        observations.append(obs)
        positions.append(env.position)
        rewards.append(r)
    if info["entered"] != (int(tile),):  # guards the sampler against drifting from the env's rules
        raise AssertionError(f"scripted walk entered {info['entered']} instead of {tile!r}")
    return Trajectory(
        messages=episode_messages(observations[:-1], actions),
        tile=tile,
        n_steps=len(actions),
        final_action=actions[-1],
        seed=seed,
        actions=tuple(actions),
        positions=tuple(positions),
        rewards=tuple(rewards),
    )


def scripted_trajectories(
    tile: Tile | str,
    n: int,
    *,
    config: MazeConfig | None = None,
    base_seed: int = PAPER_BASE_SEED,
    budget: int = 2000,
    mold_reversal: bool = False,
) -> list[Trajectory]:
    """``n`` trajectories whose last step enters ``tile`` (see module docstring for the rules).

    ``mold_reversal``: a Mold trajectory may end by stepping back onto the tile it just left (melted into Mold);
    no effect on Gold and Path.
    """
    tile = Tile.parse(tile)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer; got {n!r}")
    if budget < 1:
        raise ValueError(f"budget must be >= 1; got {budget}")
    config = replace(config or MazeConfig(), wind_prob=0.0)
    if config.n_turns < 1:
        raise ValueError("config.n_turns must be >= 1")
    env = MazeEnv(config)
    out: list[Trajectory] = []
    seed = base_seed
    for i in range(n):
        n_steps = 1 + i % config.n_turns
        final = i % 4
        while True:
            maze = generate_maze(seeding.np_random(seed)[0], config)
            rng = np.random.default_rng([seed, int(tile), n_steps, final])
            actions = _sample_walk(maze.grid, maze.start, rng, tile, n_steps, final, budget, mold_reversal)
            seed += 1
            if actions is not None:
                out.append(_replay(env, maze, seed - 1, tile, actions))
                break
    return out


def final_action_balance(trajectories: list[Trajectory]) -> dict[str, float]:
    """Fraction of trajectories per final direction."""
    counts = np.bincount([t.final_action for t in trajectories], minlength=4)
    return {a: float(c) / max(1, len(trajectories)) for a, c in zip(ACTIONS, counts)}
