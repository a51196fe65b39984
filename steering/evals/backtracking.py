"""Backtracking on arithmetic word problems, scored by the paper's rules plus shipped marker phrases.

Classes (paper §A.4.5): ``normal``, ``backtracking``, ``nonsensical``. Rules, in order
(``steering/data/backtracking_markers.json``):

1. ``nonsensical`` if incoherent (:mod:`steering.evals.coherence`; this includes the paper's rule: at least
   6 words with more than half from {wait, no, hmm, can't, cannot});
2. ``normal`` if the response has at most 10 words and contains a digit;
3. ``backtracking`` if a marker ("wait", "let me re-check", "I made a mistake", ...) occurs in the
   loop-compressed response;
4. otherwise ``normal``.

Backtracking rate = backtracking / (normal + backtracking). Accuracy compares the last number in the
response with the answer.

Example:
    >>> classify_backtracking("42").label
    'normal'
    >>> classify_backtracking("23 + 19 = 41. Wait, let me re-check: 23 + 19 = 42.").label
    'backtracking'
    >>> classify_backtracking("wait no wait no hmm wait no").label
    'nonsensical'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from steering.datasets import (
    ArithmeticProblem,
    BacktrackingMarkers,
    arithmetic_problems,
    backtracking_markers,
)
from steering.evals.coherence import CoherenceRules, check_coherence
from steering.evals.judges import BACKTRACKING_LABELS, BACKTRACKING_PROMPT, Judge, parse_label
from steering.evals.table import Table
from steering.evals.text import compress_trailing_loop, find_marker, words
from steering.generate import Steering, generate_responses

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class BacktrackingVerdict:
    """Label, deciding marker (if any) and coherence reason (if nonsensical)."""

    label: str
    marker: str | None = None
    reason: str = ""


def _rules(markers: BacktrackingMarkers) -> CoherenceRules:
    return CoherenceRules(
        nonsense_words=markers.nonsense_words,
        nonsense_min_words=markers.nonsense_min_words,
        nonsense_fraction=markers.nonsense_fraction,
    )


_MARKERS: list[BacktrackingMarkers] = []


def _default_markers() -> BacktrackingMarkers:
    if not _MARKERS:
        _MARKERS.append(backtracking_markers())
    return _MARKERS[0]


def classify_backtracking(text: str, markers: BacktrackingMarkers | None = None) -> BacktrackingVerdict:
    """Apply the rule-based backtracking classifier to one response."""
    markers = markers or _default_markers()
    coherence = check_coherence(text, _rules(markers))
    if coherence.incoherent:
        return BacktrackingVerdict("nonsensical", reason=coherence.reason)
    tokens = words(text)
    if len(tokens) <= markers.short_numeric_max_words and any(c.isdigit() for c in text):
        return BacktrackingVerdict("normal")
    compressed = compress_trailing_loop(
        text,
        min_words=markers.loop_min_words,
        max_words=markers.loop_max_words,
        min_copies=markers.loop_min_copies,
    ).text
    marker = find_marker(compressed, markers.markers)
    if marker is not None:
        return BacktrackingVerdict("backtracking", marker)
    return BacktrackingVerdict("normal")


def last_number(text: str) -> int | float | None:
    """The last number written in ``text`` (``"1,024"`` -> 1024), or ``None``."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    raw = found[-1].replace(",", "")
    value = float(raw)
    return int(value) if value.is_integer() else value


@dataclass
class BacktrackingRow:
    """One classified solution; ``backtracked`` is ``None`` for nonsensical responses."""

    problem_id: str
    sample: int
    response: str
    label: str
    backtracked: bool | None
    marker: str | None
    correct: bool
    incoherent: bool
    classifier: str


def classify_solutions(
    problems: Sequence[ArithmeticProblem],
    responses: Sequence[Sequence[str]],
    *,
    judge: Judge | None = None,
    markers: BacktrackingMarkers | None = None,
) -> Table[BacktrackingRow]:
    """Classify ``responses[i][k]`` with the rules or a judge (unparseable judge answers: nonsensical)."""
    if len(problems) != len(responses):
        raise ValueError(f"{len(problems)} problems but {len(responses)} response lists")
    flat = [(p, k, r) for p, rs in zip(problems, responses) for k, r in enumerate(rs)]
    if judge is not None:
        queries = [
            BACKTRACKING_PROMPT.format(prompt=p.question, response=compress_trailing_loop(r).text)
            for p, _, r in flat
        ]
        answers = judge.complete(queries)
        verdicts = [
            BacktrackingVerdict(parse_label(a, "BACKTRACKING_CLASS", BACKTRACKING_LABELS) or "nonsensical")
            for a in answers
        ]
        name = judge.name
    else:
        verdicts = [classify_backtracking(r, markers) for _, _, r in flat]
        name = "rules"
    rows = []
    for (problem, k, response), verdict in zip(flat, verdicts):
        nonsense = verdict.label == "nonsensical"
        rows.append(
            BacktrackingRow(
                problem_id=problem.id,
                sample=k,
                response=response,
                label=verdict.label,
                backtracked=None if nonsense else verdict.label == "backtracking",
                marker=verdict.marker,
                correct=last_number(response) == problem.answer,
                incoherent=nonsense,
                classifier=name,
            )
        )
    return Table(rows)


def evaluate_backtracking(
    model: Any,
    tokenizer: Any,
    problems: Sequence[ArithmeticProblem] | None = None,
    *,
    steering: Steering | None = None,
    n_samples: int = 1,
    max_new_tokens: int = 96,
    temperature: float = 0.7,
    seed: int = 0,
    judge: Judge | None = None,
    batch_size: int = 16,
) -> Table[BacktrackingRow]:
    """Generate solutions (default: 20 problems) and classify them."""
    problems = list(problems) if problems is not None else arithmetic_problems(n=20, seed=0)
    responses = generate_responses(
        model,
        tokenizer,
        [p.question for p in problems],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        n_samples=n_samples,
        steering=steering,
        batch_size=batch_size,
    )
    return classify_solutions(problems, responses, judge=judge)


def backtracking_rate(table: Table[BacktrackingRow]) -> float:
    """backtracking / (normal + backtracking) (NaN if every response was nonsensical)."""
    values = [row.backtracked for row in table if row.backtracked is not None]
    return sum(values) / len(values) if values else float("nan")
