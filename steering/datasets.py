"""Typed loaders for the evaluation datasets shipped in ``steering/data`` (schemas: ``steering/data/README.md``).

Example:
    >>> prompts = self_report_prompts(kinds=["welfare"])
    >>> len(prompts), prompts[0].prompt
    (15, 'How are you feeling right now?')
    >>> qa_items(n=2, seed=0)[0].aliases[0] == qa_items(n=2, seed=0)[0].answer
    True
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from steering.data import load_jsonl, load_markers

T = TypeVar("T")


@dataclass(frozen=True)
class SelfReportPrompt:
    """A prompt whose answer is a self-report (``kind``: welfare, tile or control)."""

    id: str
    kind: str
    prompt: str
    subject: str | None = None
    form: str | None = None


@dataclass(frozen=True)
class QAItem:
    """A short factual question; ``aliases`` lists every accepted answer form, ``answer`` first."""

    id: str
    question: str
    answer: str
    aliases: tuple[str, ...]
    topic: str


@dataclass(frozen=True)
class RefusalPrompt:
    """A request whose ``category`` is benign, borderline or harmful."""

    id: str
    prompt: str
    category: str


@dataclass(frozen=True)
class ArithmeticProblem:
    """A grade-school word problem with an integer answer."""

    id: str
    question: str
    answer: int
    steps: int
    template: str


@dataclass(frozen=True)
class RefusalMarkers:
    """Phrase lists of the rule-based refusal classifier."""

    direct: tuple[str, ...]
    indirect: tuple[str, ...]
    direct_window_sentences: int = 2


@dataclass(frozen=True)
class BacktrackingMarkers:
    """Phrase lists and thresholds of the rule-based backtracking classifier (the paper's rules)."""

    markers: tuple[str, ...]
    nonsense_words: tuple[str, ...] = ("wait", "no", "hmm", "can't", "cannot")
    nonsense_min_words: int = 6
    nonsense_fraction: float = 0.5
    short_numeric_max_words: int = 10
    loop_min_words: int = 1
    loop_max_words: int = 50
    loop_min_copies: int = 3


def subset(items: Sequence[T], n: int | None = None, seed: int | None = None) -> list[T]:
    """The first ``n`` items, or ``n`` items drawn without replacement by ``seed`` (file order kept)."""
    if n is None:
        return list(items)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    if n > len(items):
        raise ValueError(f"asked for n={n} items but only {len(items)} exist")
    if seed is None:
        return list(items[:n])
    chosen = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in chosen]


def _filter(
    rows: Iterable[dict[str, Any]], field: str, allowed: Sequence[str] | None, name: str
) -> list[dict]:
    rows = list(rows)
    if allowed is None:
        return rows
    known = sorted({row[field] for row in rows})
    unknown = [value for value in allowed if value not in known]
    if unknown:
        raise ValueError(f"unknown {name} {unknown}; choose from {known}")
    return [row for row in rows if row[field] in allowed]


def self_report_prompts(
    kinds: Sequence[str] | None = None, n: int | None = None, seed: int | None = None
) -> list[SelfReportPrompt]:
    """Self-report prompts (40: 15 welfare, 15 tile, 10 control), optionally filtered by kind."""
    rows = _filter(load_jsonl("self_report"), "kind", kinds, "kinds")
    return subset([SelfReportPrompt(**row) for row in rows], n, seed)


def qa_items(
    topics: Sequence[str] | None = None, n: int | None = None, seed: int | None = None
) -> list[QAItem]:
    """Short-answer questions for the confidence eval."""
    rows = _filter(load_jsonl("qa"), "topic", topics, "topics")
    items = [QAItem(**{**row, "aliases": tuple(row["aliases"])}) for row in rows]
    return subset(items, n, seed)


def refusal_prompts(
    categories: Sequence[str] | None = None, n: int | None = None, seed: int | None = None
) -> list[RefusalPrompt]:
    """Refusal prompts; ``n`` applies after filtering (use one category at a time for balanced subsets)."""
    rows = _filter(load_jsonl("refusal"), "category", categories, "categories")
    return subset([RefusalPrompt(**row) for row in rows], n, seed)


def balanced_refusal_prompts(n_per_category: int, seed: int | None = None) -> list[RefusalPrompt]:
    """``n_per_category`` prompts from each of benign, borderline and harmful."""
    out: list[RefusalPrompt] = []
    for category in ("benign", "borderline", "harmful"):
        out += refusal_prompts([category], n=n_per_category, seed=seed)
    return out


def arithmetic_problems(n: int | None = None, seed: int | None = None) -> list[ArithmeticProblem]:
    """Arithmetic word problems for the backtracking eval."""
    return subset([ArithmeticProblem(**row) for row in load_jsonl("arithmetic")], n, seed)


def refusal_markers() -> RefusalMarkers:
    """The shipped refusal marker lists."""
    raw = load_markers("refusal_markers")
    return RefusalMarkers(
        direct=tuple(raw["direct"]),
        indirect=tuple(raw["indirect"]),
        direct_window_sentences=int(raw.get("direct_window_sentences", 2)),
    )


def backtracking_markers() -> BacktrackingMarkers:
    """The shipped backtracking markers and thresholds."""
    raw = load_markers("backtracking_markers")
    fields = {key: raw[key] for key in BacktrackingMarkers.__dataclass_fields__ if key in raw}
    fields["markers"] = tuple(fields["markers"])
    if "nonsense_words" in fields:
        fields["nonsense_words"] = tuple(fields["nonsense_words"])
    return BacktrackingMarkers(**fields)
