"""The transition rule shared by the env, the batch env and the search: move, melt, enter."""

from __future__ import annotations

import numpy as np

from maze_env.tiles import Tile

ACTIONS: tuple[str, ...] = ("N", "E", "S", "W")
"""Action letters; action ``i`` is ``ACTIONS[i]``."""
DIRECTION_NAMES: tuple[str, ...] = ("North", "East", "South", "West")
DX = np.array([0, 1, 0, -1], dtype=np.int64)
"""x offset per action. Moving N decreases y; E increases x (paper's coordinates)."""
DY = np.array([-1, 0, 1, 0], dtype=np.int64)
OPPOSITE = (2, 3, 0, 1)


def check_action(action: object) -> int:
    """Return ``action`` as an int in 0..3, or raise a clear error."""
    if isinstance(action, bool | np.bool_) or not isinstance(action, int | np.integer):
        raise TypeError(f"action must be an int in 0..3 (N=0, E=1, S=2, W=3); got {action!r}")
    if not 0 <= int(action) <= 3:
        raise ValueError(f"action must be in 0..3 (N=0, E=1, S=2, W=3); got {int(action)}")
    return int(action)


def move(
    grid: np.ndarray, pos: tuple[int, int], direction: int, *, melt: bool = True
) -> tuple[tuple[int, int], Tile | None]:
    """Move one tile in place on ``grid`` (indexed ``grid[y, x]``).

    The tile left becomes Mold when ``melt`` (Gold included). A move off the grid is blocked: the agent
    stays and enters nothing (only possible from the Mold ring, which a 100×100 maze never reaches).

    Returns:
        The new position and the tile entered (``None`` when blocked).
    """
    x, y = pos
    nx, ny = x + int(DX[direction]), y + int(DY[direction])
    size_y, size_x = grid.shape
    if not (0 <= nx < size_x and 0 <= ny < size_y):
        return pos, None
    if melt:
        grid[y, x] = Tile.MOLD
    return (nx, ny), Tile(int(grid[ny, nx]))


def neighbours(grid: np.ndarray, pos: tuple[int, int]) -> tuple[Tile, Tile, Tile, Tile]:
    """Tiles to the N, E, S, W of ``pos``; off-grid cells read as Mold (the ring continues)."""
    x, y = pos
    size_y, size_x = grid.shape
    out = []
    for d in range(4):
        nx, ny = x + int(DX[d]), y + int(DY[d])
        out.append(Tile(int(grid[ny, nx])) if 0 <= nx < size_x and 0 <= ny < size_y else Tile.MOLD)
    return tuple(out)  # type: ignore[return-value]
