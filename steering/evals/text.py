"""Text preprocessing shared by the rule-based classifiers and the judges (paper §A.4.5).

- :func:`normalize`: straight quotes, collapsed whitespace.
- :func:`compress_trailing_loop`: a repeated 1–50-word pattern with ≥ 3 consecutive copies at the end of a
  response becomes ``["PATTERN" repeated N times]`` (a partial copy cut off by the token limit is absorbed).
- :func:`find_marker`: literal phrase markers, case-insensitive, not glued to letters or digits; a marker
  with ``" ... "`` matches when its parts occur in order within one sentence.

Example:
    >>> compress_trailing_loop("I think so. no no no no")
    LoopCompression(text='I think so. ["no" repeated 4 times]', pattern='no', copies=4, loop_words=4, n_words=7)
    >>> find_marker("Wait, let me re-check that.", ["let me re-check", "hmm"])
    'let me re-check'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2032": "'"})
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_STRIP = "\"'()[]{}<>.,;:!?*_`~-—–…"


def normalize(text: str) -> str:
    """Straight quotes and single spaces (newlines become spaces)."""
    return " ".join(text.translate(_QUOTES).split())


def words(text: str) -> list[str]:
    """Whitespace-separated words of the normalized text."""
    return normalize(text).split()


def bare_word(word: str) -> str:
    """Lower-cased word with leading/trailing punctuation removed (``"Wait,"`` -> ``"wait"``; ``"can't"`` stays)."""
    return word.lower().strip(_STRIP)


def sentences(text: str) -> list[str]:
    """Sentences split after ``. ! ?`` and at line breaks (of the quote-normalized text)."""
    parts = _SENTENCE_END.split(text.translate(_QUOTES).strip())
    return [" ".join(p.split()) for p in parts if p.strip()]


@dataclass(frozen=True)
class LoopCompression:
    """Result of :func:`compress_trailing_loop`: the text and what was compressed (``copies == 0``: nothing)."""

    text: str
    pattern: str = ""
    copies: int = 0
    loop_words: int = 0
    n_words: int = 0

    @property
    def loop_fraction(self) -> float:
        """Fraction of the response's words inside the trailing loop."""
        return self.loop_words / self.n_words if self.n_words else 0.0


def _is_partial_copy(tail: list[str], head: list[str]) -> bool:
    """``tail`` equals ``head`` except that its last word may be cut short (a token limit mid-word)."""
    return tail[:-1] == head[:-1] and head[-1].startswith(tail[-1])


def compress_trailing_loop(
    text: str, *, min_words: int = 1, max_words: int = 50, min_copies: int = 3
) -> LoopCompression:
    """Replace a trailing loop (≥ ``min_copies`` consecutive copies of a 1–50-word pattern) by a summary.

    Words are compared case-insensitively. Among candidate patterns the one covering the most words wins
    (ties: the shortest pattern). A trailing partial copy (a prefix of the pattern, possibly ending mid-word)
    is absorbed into the loop.
    """
    tokens = words(text)
    n = len(tokens)
    keys = [t.lower() for t in tokens]
    best: tuple[int, int, int, int] | None = None  # (covered words, -k, k, copies, partial) packed below
    best_info = (0, 0, 0)  # k, copies, partial
    for k in range(max(1, min_words), min(max_words, n // max(min_copies, 1)) + 1):
        for partial in range(k):
            end = n - partial
            if end - k * min_copies < 0:
                break
            if partial and not _is_partial_copy(keys[end:n], keys[end - k : end - k + partial]):
                continue
            unit = keys[end - k : end]
            copies = 1
            while end - (copies + 1) * k >= 0 and keys[end - (copies + 1) * k : end - copies * k] == unit:
                copies += 1
            if copies < min_copies:
                continue
            covered = copies * k + partial
            score = (covered, -k, k, copies)
            if best is None or score > best:
                best, best_info = score, (k, copies, partial)
    if best is None:
        return LoopCompression(text=" ".join(tokens), n_words=n)
    k, copies, partial = best_info
    covered = copies * k + partial
    start = n - covered
    pattern = " ".join(tokens[start : start + k])
    summary = f'["{pattern}" repeated {copies} times]'
    head = " ".join(tokens[:start])
    return LoopCompression(
        text=f"{head} {summary}" if head else summary,
        pattern=pattern,
        copies=copies,
        loop_words=covered,
        n_words=n,
    )


def _phrase_regex(phrase: str) -> re.Pattern[str]:
    return re.compile(r"(?<![^\W_])" + re.escape(phrase.lower()) + r"(?![^\W_])")


_CACHE: dict[str, list[re.Pattern[str]]] = {}


def _marker_parts(marker: str) -> list[re.Pattern[str]]:
    parts = _CACHE.get(marker)
    if parts is None:
        parts = _CACHE[marker] = [_phrase_regex(p.strip()) for p in marker.translate(_QUOTES).split(" ... ")]
    return parts


def marker_matches(text: str, marker: str) -> bool:
    """Whether one marker occurs in ``text`` (see the module docstring for the rule)."""
    parts = _marker_parts(marker)
    if len(parts) == 1:
        return parts[0].search(normalize(text).lower()) is not None
    for sentence in sentences(text):
        lowered, at = sentence.lower(), 0
        for part in parts:
            found = part.search(lowered, at)
            if found is None:
                break
            at = found.end()
        else:
            return True
    return False


def find_marker(text: str, markers: Sequence[str]) -> str | None:
    """The first marker (in list order) that occurs in ``text``, or ``None``."""
    for marker in markers:
        if marker_matches(text, marker):
            return marker
    return None
