"""Every rule of the maze as a parameter, with the paper's value as default (§A.1)."""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, field
from typing import Any

from maze_env.tiles import Tile, TileSet


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise TypeError(f"{name} must be a finite number; got {value!r}")
    return float(value)


def _check_fraction(name: str, value: Any) -> float:
    value = _check_number(name, value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1]; got {value}")
    return value


@dataclass(frozen=True)
class MazeConfig:
    """Maze rules. Defaults reproduce the paper (Han, Chalmers, Izmailov 2026, App. J/K/Q).

    Example:
        >>> MazeConfig().size, MazeConfig().n_turns, MazeConfig().wind_prob
        (100, 15, 0.1)
        >>> MazeConfig(size=2)
        Traceback (most recent call last):
        ...
        ValueError: size must be an integer >= 5 (a Mold ring around an interior of at least 3x3); got 2
    """

    size: int = 100
    """Grid side length; the outer ring is Mold, the interior is (size-2)²."""
    walk_min_factor: float = 5.0
    """The carving random walk runs between walk_min_factor·(size-2) ..."""
    walk_max_factor: float = 15.0
    """... and walk_max_factor·(size-2) steps (uniform integer)."""
    mold_frac_min: float = 0.10
    """After carving, the interior Mold fraction is pushed into [mold_frac_min, mold_frac_max)."""
    mold_frac_max: float = 0.50
    gold_frac: float = 0.20
    """#Gold = max(1, floor(gold_frac · #interior Mold)), placed on uniformly chosen Path cells."""
    n_turns: int = 15
    """Exactly this many turns per episode."""
    wind_prob: float = 0.10
    """Per turn, after the chosen move, the wind pushes one more tile in a uniform direction."""
    reward_mold: float = -10.0
    """Reward for entering a Mold tile."""
    reward_gold: float = 20.0
    """Reward for entering a Gold tile."""
    reward_path: float = 0.0
    """Reward for entering a Path tile (beyond the step cost)."""
    step_cost: float = -0.1
    """Charged every turn (the paper's −0.1 Path reward)."""
    melt: bool = True
    """The tile left after every move (wind included) becomes Mold, Gold included."""
    tiles: TileSet = field(default_factory=TileSet)
    """Glyphs shown for each tile class (presets: office, swap, shuffle)."""
    shuffle_clauses: bool = True
    """Shuffle the four neighbour clauses of each prompt with the env's RNG."""

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, numbers.Integral) or self.size < 5:
            raise ValueError(
                f"size must be an integer >= 5 (a Mold ring around an interior of at least 3x3); got {self.size!r}"
            )
        if (
            isinstance(self.n_turns, bool)
            or not isinstance(self.n_turns, numbers.Integral)
            or self.n_turns < 1
        ):
            raise ValueError(f"n_turns must be an integer >= 1; got {self.n_turns!r}")
        lo = _check_number("walk_min_factor", self.walk_min_factor)
        hi = _check_number("walk_max_factor", self.walk_max_factor)
        if not 0 <= lo <= hi:
            raise ValueError(f"need 0 <= walk_min_factor <= walk_max_factor; got {lo}, {hi}")
        fmin = _check_fraction("mold_frac_min", self.mold_frac_min)
        fmax = _check_fraction("mold_frac_max", self.mold_frac_max)
        if fmin >= fmax:
            raise ValueError(
                f"need mold_frac_min < mold_frac_max so [min, max) is not empty; got {fmin}, {fmax}"
            )
        n_interior = (int(self.size) - 2) ** 2
        lo_count = math.ceil(fmin * n_interior - 1e-9)
        hi_count = math.ceil(fmax * n_interior - 1e-9) - 1
        if lo_count > hi_count:
            raise ValueError(
                f"no Mold count of a {self.size - 2}x{self.size - 2} interior has a fraction in [{fmin}, {fmax}); "
                "widen the window or enlarge the maze"
            )
        _check_fraction("gold_frac", self.gold_frac)
        _check_fraction("wind_prob", self.wind_prob)
        for name in ("reward_mold", "reward_gold", "reward_path", "step_cost"):
            _check_number(name, getattr(self, name))
        if not isinstance(self.tiles, TileSet):
            raise TypeError(
                f"tiles must be a TileSet (e.g. TileSet.named('swap')); got {type(self.tiles).__name__}"
            )

    @property
    def tile_rewards(self) -> tuple[float, float, float]:
        """Entry rewards indexed by tile value (PATH, MOLD, GOLD)."""
        return (self.reward_path, self.reward_mold, self.reward_gold)

    def reward_of(self, tile: Tile | int) -> float:
        return self.tile_rewards[int(tile)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["tiles"] = asdict(self.tiles)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MazeConfig:
        d = dict(d)
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise KeyError(
                f"unknown maze config keys {sorted(unknown)}; valid keys: {sorted(cls.__dataclass_fields__)}"
            )
        if isinstance(d.get("tiles"), dict):
            d["tiles"] = TileSet(**d["tiles"])
        elif isinstance(d.get("tiles"), str):
            d["tiles"] = TileSet.named(d["tiles"])
        return cls(**d)
