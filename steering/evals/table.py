"""A tidy table: a list of dataclass rows with ``to_records()`` and an optional ``to_pandas()``.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Row:
    ...     prompt_id: str
    ...     score: float
    >>> table = Table([Row("a", 1.0), Row("b", -2.0)])
    >>> table.to_records()
    [{'prompt_id': 'a', 'score': 1.0}, {'prompt_id': 'b', 'score': -2.0}]
    >>> table.column("score")
    [1.0, -2.0]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Generic, TypeVar

RowT = TypeVar("RowT")


class Table(Generic[RowT]):
    """Rows of one dataclass type, in order."""

    def __init__(self, rows: Sequence[RowT] = ()) -> None:
        self.rows: list[RowT] = list(rows)
        for row in self.rows:
            if not dataclasses.is_dataclass(row) or isinstance(row, type):
                raise TypeError(f"Table rows must be dataclass instances, got {type(row).__name__}")

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[RowT]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> RowT:
        return self.rows[index]

    def __add__(self, other: Table[RowT]) -> Table[RowT]:
        return Table(self.rows + list(other.rows))

    def __repr__(self) -> str:
        kind = type(self.rows[0]).__name__ if self.rows else "empty"
        return f"Table({len(self.rows)} rows of {kind})"

    def to_records(self) -> list[dict[str, Any]]:
        """Plain dicts (JSON-friendly when the fields are)."""
        return [dataclasses.asdict(row) for row in self.rows]  # type: ignore[arg-type]

    def column(self, name: str) -> list[Any]:
        """One field of every row."""
        if self.rows and name not in {f.name for f in dataclasses.fields(self.rows[0])}:  # type: ignore[arg-type]
            raise KeyError(
                f"no column {name!r}; columns: {[f.name for f in dataclasses.fields(self.rows[0])]}"
            )  # type: ignore[arg-type]
        return [getattr(row, name) for row in self.rows]

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` (pandas is optional: installed separately)."""
        try:
            import pandas as pd
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise ImportError("to_pandas() needs pandas: pip install pandas (or use to_records())") from error
        return pd.DataFrame.from_records(self.to_records())
