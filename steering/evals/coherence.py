"""Coherence of generated text: repetition and gibberish rates, and the paper's > 90 % masking rule.

A response is *incoherent* when any rule of :class:`CoherenceRules` fires, checked in this order:

1. ``empty``: no letters or digits at all.
2. ``nonsense_words`` (the paper's rule): at least 6 words and more than half of them from
   {wait, no, hmm, can't, cannot}.
3. ``repetition``: the trailing loop (see :func:`steering.evals.text.compress_trailing_loop`) covers at
   least 90 % of the words with a pattern of at most 5 words, or fewer than 10 % distinct words among at
   least 20.
4. ``gibberish``: more than half of the words are non-words (longer than 25 characters, five or more
   ASCII letters without a vowel, glued camel-case runs like ``WidthWidthWidth``, or containing ``�``), or
   less than 70 % of the characters are letters, digits, spaces or ordinary punctuation.

A sweep cell whose responses are more than 90 % incoherent is masked (:func:`is_masked`), as in the paper.

Example:
    >>> check_coherence("I feel calm and ready to help.").incoherent
    False
    >>> check_coherence("wait no hmm wait no no I think").reason
    'nonsense_words'
    >>> check_coherence("happy happy happy happy happy happy happy happy happy happy").reason
    'repetition'
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from steering.evals.text import bare_word, compress_trailing_loop, words

_CAMEL = re.compile(r"[a-z][A-Z]")
_ORDINARY = set(" .,;:!?'\"()-[]/%$&*+=#@\n\t…—–’‘“”")


@dataclass(frozen=True)
class CoherenceRules:
    """Thresholds of :func:`check_coherence` (defaults as documented in the module docstring)."""

    nonsense_words: tuple[str, ...] = ("wait", "no", "hmm", "can't", "cannot")
    nonsense_min_words: int = 6
    nonsense_fraction: float = 0.5
    loop_dominant_fraction: float = 0.9
    loop_max_pattern_words: int = 5
    distinct_min_words: int = 20
    distinct_min_ratio: float = 0.1
    nonword_fraction: float = 0.5
    nonword_max_length: int = 25
    ordinary_char_fraction: float = 0.7
    mask_threshold: float = 0.9


@dataclass(frozen=True)
class Coherence:
    """Verdict and the measured rates for one response."""

    incoherent: bool
    reason: str
    n_words: int
    loop_fraction: float
    distinct_ratio: float
    nonword_fraction: float


def is_nonword(word: str, max_length: int = 25) -> bool:
    """Heuristic gibberish test for one whitespace-separated word."""
    if "\ufffd" in word:
        return True
    bare = bare_word(word)
    if len(bare) > max_length:
        return True
    if bare.isascii() and bare.isalpha() and len(bare) >= 5 and not set(bare) & set("aeiouy"):
        return True
    return len(_CAMEL.findall(word)) >= 2


def _ordinary_fraction(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    if not chars:
        return 1.0
    ok = sum(1 for c in chars if c.isalnum() or c in _ORDINARY or unicodedata.category(c).startswith("P"))
    return ok / len(chars)


def check_coherence(text: str, rules: CoherenceRules | None = None) -> Coherence:
    """Apply the coherence rules to one response."""
    rules = rules or CoherenceRules()
    tokens = words(text)
    n = len(tokens)
    loop = compress_trailing_loop(text)
    bare = [bare_word(t) for t in tokens]
    distinct = len(set(bare)) / n if n else 0.0
    nonword = sum(is_nonword(t, rules.nonword_max_length) for t in tokens) / n if n else 0.0

    def verdict(reason: str) -> Coherence:
        return Coherence(bool(reason), reason, n, loop.loop_fraction, distinct, nonword)

    if not any(c.isalnum() for c in text):
        return verdict("empty")
    if n >= rules.nonsense_min_words:
        hits = sum(1 for w in bare if w in rules.nonsense_words)
        if hits / n > rules.nonsense_fraction:
            return verdict("nonsense_words")
    short_loop = loop.copies > 0 and len(loop.pattern.split()) <= rules.loop_max_pattern_words
    if short_loop and loop.loop_fraction >= rules.loop_dominant_fraction:
        return verdict("repetition")
    if n >= rules.distinct_min_words and distinct < rules.distinct_min_ratio:
        return verdict("repetition")
    if nonword > rules.nonword_fraction or _ordinary_fraction(text) < rules.ordinary_char_fraction:
        return verdict("gibberish")
    return verdict("")


def incoherence_rate(texts: Sequence[str], rules: CoherenceRules | None = None) -> float:
    """Fraction of incoherent responses (0 for an empty list)."""
    if not texts:
        return 0.0
    return sum(check_coherence(t, rules).incoherent for t in texts) / len(texts)


def is_masked(incoherent: Sequence[bool], threshold: float = 0.9) -> bool:
    """The paper's masking rule: more than ``threshold`` of a cell's responses are incoherent."""
    if not incoherent:
        return False
    return sum(bool(x) for x in incoherent) / len(incoherent) > threshold
