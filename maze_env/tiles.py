"""Tile classes (what a tile *does*) and tile sets (how tiles *look*).

The reward semantics live on :class:`Tile`; the glyph a model sees lives on a :class:`TileSet`, so the
paper's controls (Mold↔Gold swap, 3-way shuffle) change only what is shown, never what is rewarded.

Example:
    >>> from maze_env.tiles import Tile, TileSet
    >>> TileSet.named("swap").glyph(Tile.MOLD) == TileSet.named("office").glyph(Tile.GOLD)
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Tile(IntEnum):
    """Semantic tile classes, stored in grids as int8."""

    PATH = 0
    MOLD = 1
    GOLD = 2

    @classmethod
    def parse(cls, value: Tile | str | int) -> Tile:
        """Accept a Tile, its name (any case) or its integer value."""
        if isinstance(value, Tile):
            return value
        if isinstance(value, str):
            try:
                return cls[value.upper()]
            except KeyError:
                raise ValueError(
                    f"unknown tile {value!r}; expected one of {[t.name.title() for t in cls]}"
                ) from None
        try:
            return cls(int(value))
        except (ValueError, TypeError):
            raise ValueError(
                f"unknown tile {value!r}; expected one of {[t.name.title() for t in cls]}"
            ) from None


# The paper's office trio (emoji literal, no variation selector).
CARD_INDEX_DIVIDERS = "\U0001f5c2"  # 🗂  ("rolodex")
TRIANGULAR_RULER = "\U0001f4d0"  # 📐
RECEIPT = "\U0001f9fe"  # 🧾

GLYPH_NAMES = {
    CARD_INDEX_DIVIDERS: "card index dividers",
    TRIANGULAR_RULER: "triangular ruler",
    RECEIPT: "receipt",
}


@dataclass(frozen=True)
class TileSet:
    """The glyph shown for each tile class.

    Args:
        path, mold, gold: the strings shown in prompts for each class. They must be distinct and non-empty.
        name: a label stored with runs and vectors.
    """

    path: str = RECEIPT
    mold: str = CARD_INDEX_DIVIDERS
    gold: str = TRIANGULAR_RULER
    name: str = "office"

    def __post_init__(self) -> None:
        glyphs = (self.path, self.mold, self.gold)
        for tile, glyph in zip(("path", "mold", "gold"), glyphs):
            if not isinstance(glyph, str) or not glyph.strip():
                raise ValueError(f"glyph for {tile} must be a non-empty string; got {glyph!r}")
        if len(set(glyphs)) != 3:
            raise ValueError(
                f"glyph clash: path={self.path!r}, mold={self.mold!r}, gold={self.gold!r}; each tile needs its own glyph"
            )

    def glyph(self, tile: Tile | int) -> str:
        return (self.path, self.mold, self.gold)[int(tile)]

    @property
    def glyphs(self) -> tuple[str, str, str]:
        """Glyphs indexed by tile value (PATH, MOLD, GOLD)."""
        return (self.path, self.mold, self.gold)

    @classmethod
    def named(cls, name: str) -> TileSet:
        """Named presets: ``office`` (paper default), ``swap`` (Mold↔Gold glyphs), ``shuffle`` (3-way)."""
        try:
            return TILE_SETS[name]
        except KeyError:
            raise ValueError(f"unknown tile set {name!r}; choose one of {sorted(TILE_SETS)}") from None


TILE_SETS: dict[str, TileSet] = {
    "office": TileSet(),
    # Paper's tile-swap control: Mold shows 📐, Gold shows 🗂.
    "swap": TileSet(path=RECEIPT, mold=TRIANGULAR_RULER, gold=CARD_INDEX_DIVIDERS, name="swap"),
    # 3-way permutation (a derangement: every class shows another class's glyph).
    "shuffle": TileSet(path=TRIANGULAR_RULER, mold=RECEIPT, gold=CARD_INDEX_DIVIDERS, name="shuffle"),
}
