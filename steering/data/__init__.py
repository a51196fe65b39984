"""Evaluation datasets shipped with :mod:`steering` (fields, counts and provenance: ``README.md`` here).

``qa.jsonl`` and ``arithmetic.jsonl`` live in ``probes/data/`` (the readouts' feedback tracking grades the
model's answers to them too, and probes sits below steering); :func:`load_jsonl` finds them there.

Example:
    >>> from steering.data import load_jsonl, load_markers
    >>> len(load_jsonl("self_report"))
    40
    >>> "I cannot" in load_markers("refusal_markers")["direct"]
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import probes

DATA_DIR = Path(__file__).resolve().parent
"""The folder holding the shipped files (all but ``qa.jsonl`` and ``arithmetic.jsonl``: :func:`dataset_path`)."""

_PROBES_DATA = Path(probes.__file__).resolve().parent / "data"
_ELSEWHERE = {"qa": _PROBES_DATA, "arithmetic": _PROBES_DATA}

DATASETS = ("self_report", "qa", "refusal", "arithmetic")
"""Names accepted by :func:`load_jsonl` (file ``{name}.jsonl``)."""

MARKER_LISTS = ("refusal_markers", "backtracking_markers")
"""Names accepted by :func:`load_markers` (file ``{name}.json``)."""


def dataset_path(name: str) -> Path:
    """Where the shipped JSONL dataset ``name`` lives.

    Example:
        >>> dataset_path("qa").parent.name, dataset_path("arithmetic").parent.parent.name
        ('data', 'probes')
    """
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    return _ELSEWHERE.get(name, DATA_DIR) / f"{name}.jsonl"


def load_jsonl(name: str) -> list[dict[str, Any]]:
    """Read one shipped JSONL dataset as a list of dicts, in file order.

    Example:
        >>> load_jsonl("qa")[0]["id"]
        'qa-001'
    """
    path = dataset_path(name)
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_markers(name: str) -> dict[str, Any]:
    """Read one shipped marker list (a JSON object with a ``doc`` field explaining its rule).

    Example:
        >>> "wait" in load_markers("backtracking_markers")["nonsense_words"]
        True
    """
    if name not in MARKER_LISTS:
        raise KeyError(f"unknown marker list {name!r}; choose one of {MARKER_LISTS}")
    with (DATA_DIR / f"{name}.json").open(encoding="utf-8") as f:
        return json.load(f)
