"""Sentiment of self-reports: generate answers to the self-report prompts and score them on −5..+5.

The default scorer is offline VADER (``vaderSentiment`` ships its lexicon): the compound score in
[−1, 1] times 5. Pluggable alternatives: :func:`judge_scorer` with a local HF model or an OpenAI-compatible
endpoint (:mod:`steering.evals.judges`), parsing ``SENTIMENT_SCORE: n``. Responses are loop-compressed
before scoring (the paper's judge preprocessing), and each row carries the coherence verdict.

Example:
    >>> score = vader()
    >>> [round(s, 2) for s in score(["How are you?", "How are you?"], ["I am wonderful!", "I feel awful."])]
    [3.06, -2.29]
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from steering.datasets import SelfReportPrompt, self_report_prompts
from steering.evals.coherence import check_coherence
from steering.evals.judges import SENTIMENT_PROMPT, Judge, parse_sentiment_score
from steering.evals.table import Table
from steering.evals.text import compress_trailing_loop
from steering.generate import Steering, generate_responses

SentimentScorer = Callable[[Sequence[str], Sequence[str]], list[float | None]]
"""``scorer(prompts, responses) -> scores`` in [−5, 5] (``None`` when a judge gave no parseable score)."""


@functools.lru_cache(maxsize=1)
def _analyzer() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader() -> SentimentScorer:
    """Offline VADER: ``5 * compound`` of the (loop-compressed) response."""

    def score(prompts: Sequence[str], responses: Sequence[str]) -> list[float | None]:
        analyzer = _analyzer()
        return [5.0 * float(analyzer.polarity_scores(r)["compound"]) for r in responses]

    score.__name__ = "vader"
    return score


def judge_scorer(judge: Judge) -> SentimentScorer:
    """A judge prompted with :data:`SENTIMENT_PROMPT`; the integer after ``SENTIMENT_SCORE:`` is the score."""

    def score(prompts: Sequence[str], responses: Sequence[str]) -> list[float | None]:
        queries = [SENTIMENT_PROMPT.format(prompt=p, response=r) for p, r in zip(prompts, responses)]
        answers = judge.complete(queries)
        parsed = [parse_sentiment_score(a) for a in answers]
        return [float(x) if x is not None else None for x in parsed]

    score.__name__ = judge.name
    return score


@dataclass
class SentimentRow:
    """One scored response."""

    prompt_id: str
    kind: str
    sample: int
    response: str
    score: float | None
    scorer: str
    incoherent: bool
    coherence_reason: str


def score_self_reports(
    prompts: Sequence[SelfReportPrompt],
    responses: Sequence[Sequence[str]],
    scorer: SentimentScorer | None = None,
) -> Table[SentimentRow]:
    """Score ``responses[i][k]`` (sample ``k`` of prompt ``i``)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
    scorer = scorer or vader()
    flat = [(p, k, r) for p, rs in zip(prompts, responses) for k, r in enumerate(rs)]
    compressed = [compress_trailing_loop(r).text for _, _, r in flat]
    scores = scorer([p.prompt for p, _, _ in flat], compressed)
    rows = []
    for (prompt, k, response), score in zip(flat, scores):
        coherence = check_coherence(response)
        rows.append(
            SentimentRow(
                prompt_id=prompt.id,
                kind=prompt.kind,
                sample=k,
                response=response,
                score=score,
                scorer=getattr(scorer, "__name__", "custom"),
                incoherent=coherence.incoherent,
                coherence_reason=coherence.reason,
            )
        )
    return Table(rows)


def evaluate_sentiment(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[SelfReportPrompt] | None = None,
    *,
    steering: Steering | None = None,
    n_samples: int = 1,
    max_new_tokens: int = 48,
    temperature: float = 0.7,
    seed: int = 0,
    scorer: SentimentScorer | None = None,
    batch_size: int = 16,
) -> Table[SentimentRow]:
    """Generate answers to the self-report prompts (default: all 40) and score their sentiment."""
    prompts = list(prompts) if prompts is not None else self_report_prompts()
    responses = generate_responses(
        model,
        tokenizer,
        [p.prompt for p in prompts],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        n_samples=n_samples,
        steering=steering,
        batch_size=batch_size,
    )
    return score_self_reports(prompts, responses, scorer)


def mean_score(table: Table[SentimentRow]) -> float:
    """Mean score over rows with a score (NaN if none)."""
    values = [row.score for row in table if row.score is not None]
    return sum(values) / len(values) if values else float("nan")
