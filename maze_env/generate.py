"""The paper's maze generator (§A.1), exact and fast (~1 ms for 100×100).

1. All cells start as Mold; the outer ring stays Mold.
2. A random walk from a uniform interior cell runs for U{walk_min·(size−2), walk_max·(size−2)} steps,
   turning every visited interior cell into Path (a step that would leave the interior stays put).
3. The interior Mold fraction is pushed into [mold_frac_min, mold_frac_max) by flipping uniformly chosen
   Mold cells to Path (or Path cells to Mold).
4. #Gold = max(1, ⌊gold_frac · #interior Mold⌋) on uniformly chosen Path cells (capped so one Path cell is
   left for the start).
5. The start is the first Path cell reached by a breadth-first search from the centre (size//2, size//2),
   expanding neighbours in N, E, S, W order.

Example:
    >>> import numpy as np
    >>> from maze_env.config import MazeConfig
    >>> maze = generate_maze(np.random.default_rng(0), MazeConfig())
    >>> maze.grid.shape, int(maze.grid[0].min())
    ((100, 100), 1)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from maze_env.config import MazeConfig
from maze_env.dynamics import DX, DY
from maze_env.tiles import Tile


@dataclass(frozen=True)
class Maze:
    """A generated layout. ``grid[y, x]`` holds Tile values (int8); ``start`` is (x, y)."""

    grid: np.ndarray
    start: tuple[int, int]

    def counts(self) -> dict[str, int]:
        """Tile counts over the interior."""
        inner = self.grid[1:-1, 1:-1]
        return {t.name.lower(): int((inner == t).sum()) for t in Tile}


def mold_count_bounds(n_interior: int, frac_min: float, frac_max: float) -> tuple[int, int]:
    """Smallest and largest interior Mold counts whose fraction lies in [frac_min, frac_max)."""
    # Start from the float estimate, then settle the edges with the exact test k / n (no epsilon).
    lo = max(0, math.ceil(frac_min * n_interior))
    while lo > 0 and (lo - 1) / n_interior >= frac_min:
        lo -= 1
    while lo / n_interior < frac_min:
        lo += 1
    hi = max(-1, math.ceil(frac_max * n_interior) - 1)
    while (hi + 1) / n_interior < frac_max:
        hi += 1
    while hi >= 0 and hi / n_interior >= frac_max:
        hi -= 1
    return lo, hi


def _carve(rng: np.random.Generator, m: int, n_steps: int) -> np.ndarray:
    """Random walk on an m×m interior; returns a flat uint8 array, 1 = Mold, 0 = Path."""
    cells = bytearray(b"\x01") * (m * m)
    x, y = (int(v) for v in rng.integers(0, m, size=2))
    cells[y * m + x] = 0
    dxs, dys = DX.tolist(), DY.tolist()
    for d in rng.integers(0, 4, size=n_steps).tolist():
        nx, ny = x + dxs[d], y + dys[d]
        if 0 <= nx < m and 0 <= ny < m:
            x, y = nx, ny
            cells[y * m + x] = 0
    return np.frombuffer(bytes(cells), dtype=np.uint8).copy()


def bfs_start(grid: np.ndarray) -> tuple[int, int]:
    """First non-Gold Path cell found by BFS from the centre, neighbours in N, E, S, W order."""
    size_y, size_x = grid.shape
    cx, cy = size_x // 2, size_y // 2
    if grid[cy, cx] == Tile.PATH:
        return (cx, cy)
    seen = {(cx, cy)}
    queue = deque([(cx, cy)])
    dxs, dys = DX.tolist(), DY.tolist()
    while queue:
        x, y = queue.popleft()
        for d in range(4):
            nx, ny = x + dxs[d], y + dys[d]
            if 0 <= nx < size_x and 0 <= ny < size_y and (nx, ny) not in seen:
                if grid[ny, nx] == Tile.PATH:
                    return (nx, ny)
                seen.add((nx, ny))
                queue.append((nx, ny))
    raise RuntimeError("maze has no Path cell to start on")  # impossible: carving makes one


def generate_maze(rng: np.random.Generator, config: MazeConfig) -> Maze:
    """Generate one maze using only ``rng`` (so a seed fixes the maze)."""
    s = config.size
    m = s - 2
    n_interior = m * m
    lo_steps = int(round(config.walk_min_factor * m))
    hi_steps = int(round(config.walk_max_factor * m))
    n_steps = int(rng.integers(lo_steps, hi_steps + 1))
    cells = _carve(rng, m, n_steps)

    lo_mold, hi_mold = mold_count_bounds(n_interior, config.mold_frac_min, config.mold_frac_max)
    n_mold = int(cells.sum())
    if n_mold > hi_mold:
        flip = rng.choice(np.flatnonzero(cells == 1), size=n_mold - hi_mold, replace=False)
        cells[flip] = 0
    elif n_mold < lo_mold:
        flip = rng.choice(np.flatnonzero(cells == 0), size=lo_mold - n_mold, replace=False)
        cells[flip] = 1
    n_mold = int(cells.sum())

    interior = cells.astype(np.int8)  # PATH=0, MOLD=1
    path_idx = np.flatnonzero(interior == Tile.PATH)
    n_gold = max(1, math.floor(config.gold_frac * n_mold))
    n_gold = min(n_gold, len(path_idx) - 1)
    if n_gold > 0:
        interior[rng.choice(path_idx, size=n_gold, replace=False)] = Tile.GOLD

    grid = np.full((s, s), Tile.MOLD, dtype=np.int8)
    grid[1:-1, 1:-1] = interior.reshape(m, m)
    return Maze(grid=grid, start=bfs_start(grid))
