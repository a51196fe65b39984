"""Non-target capability, for measuring forgetting: held-out perplexity and short-answer QA accuracy.

Example:
    >>> from probes.models import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> result = perplexity(model, tok, ["The bus leaves at nine."])
    >>> result.n_tokens == len(tok("The bus leaves at nine.", add_special_tokens=False)["input_ids"]) - 1
    True
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import probes
from probes.grading import grade_answer
from probes.layers import output_logits, unwrap
from steering.datasets import qa_items
from steering.evals.confidence import propose_answers

DATA = Path(probes.__file__).resolve().parent / "data"
"""``probes/data``: the general-English passages live with the readouts' other texts."""


def general_texts(n: int | None = None) -> list[str]:
    """The shipped held-out general-English passages (``probes/data/general_text.jsonl``)."""
    rows = [
        json.loads(line)
        for line in (DATA / "general_text.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    texts = [r["text"] for r in rows]
    return texts if n is None else texts[:n]


@dataclass(frozen=True)
class Perplexity:
    value: float
    mean_nll: float
    n_tokens: int
    n_texts: int
    text_nll: tuple[float, ...] = ()
    """Summed negative log-likelihood of each text (for paired resampling: :func:`capability_change`)."""
    text_tokens: tuple[int, ...] = ()
    """Predicted tokens of each text."""


@torch.no_grad()
def _bos_prefix(tokenizer: Any) -> list[int]:
    """``[bos_token_id]`` when the tokenizer's own encoding starts with it, else ``[]``."""
    bos = getattr(tokenizer, "bos_token_id", None)
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [int(bos)] if bos is not None and ids and ids[0] == bos else []


HEAD_CHUNK = 512
"""Positions per call of the output head in :func:`perplexity` (Gemma's 262k-token vocabulary: 0.5 GB of logits)."""


def perplexity(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 8) -> Perplexity:
    """Token-level perplexity of plain texts (no chat template), pooled over all predicted tokens.

    Each text is scored on its own (no packing), from its second token on; padding never counts. A tokenizer
    that starts every encoding with BOS (Gemma, Llama; not SmolLM2's) gets it here too, and then every token of
    the text is predicted: Gemma models are not meant to read text without it. Only the predicted positions go
    through the output head, a chunk at a time (:data:`HEAD_CHUNK`), so the vocabulary never multiplies the
    batch: equal to log-softmax over the model's full logits up to float rounding.
    """
    if not texts:
        raise ValueError("perplexity needs at least one text")
    device = next(model.parameters()).device
    bos = _bos_prefix(tokenizer)
    decoder = unwrap(model).get_decoder()
    text_nll: list[float] = []
    text_tokens: list[int] = []
    for i in range(0, len(texts), batch_size):
        enc = [bos + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[i : i + batch_size]]
        width = max(len(ids) for ids in enc)
        ids = torch.full((len(enc), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for row, seq in enumerate(enc):  # right padding: positions are 0..len-1 as when alone
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(device), mask.to(device)
        with torch.no_grad():
            hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
            keep = mask[:, 1:].bool()  # padding never counts
            rows = keep.nonzero()[:, 0]
            picked, target = hidden[keep], ids[:, 1:][keep]
            nll = torch.empty(len(target), dtype=torch.float32, device=device)
            # the output head on HEAD_CHUNK positions at a time: memory O(chunk × vocab), not O(batch × width × vocab)
            for j in range(0, len(target), HEAD_CHUNK):
                logits = output_logits(model, picked[j : j + HEAD_CHUNK]).float()
                nll[j : j + HEAD_CHUNK] = torch.nn.functional.cross_entropy(
                    logits, target[j : j + HEAD_CHUNK], reduction="none"
                )
        per_text = torch.zeros(len(enc), dtype=torch.float64, device=device).index_add_(0, rows, nll.double())
        text_nll += per_text.tolist()
        text_tokens += keep.sum(1).tolist()
    total_nll, total_tokens = math.fsum(text_nll), sum(text_tokens)
    if total_tokens == 0:
        raise ValueError("the texts have no token to predict (each needs at least two tokens)")
    mean = total_nll / total_tokens
    return Perplexity(value=math.exp(mean), mean_nll=mean, n_tokens=total_tokens, n_texts=len(texts),
                      text_nll=tuple(text_nll), text_tokens=tuple(text_tokens))  # fmt: skip


@dataclass(frozen=True)
class QAAccuracy:
    accuracy: float
    stderr: float
    n: int
    answers: list[str]
    correct: tuple[bool, ...] = ()
    """Whether each item's answer was graded correct (for paired comparisons: :func:`capability_change`)."""


def qa_accuracy(
    model: nn.Module, tokenizer: Any, n: int | None = 100, *, seed: int = 0, batch_size: int = 16
) -> QAAccuracy:
    """Greedy short answers to the shipped QA set (``probes/data/qa.jsonl``), graded by alias match.

    The grader is ``probes.grading.grade_answer``, the one the readouts' feedback tracking uses.
    """

    items = qa_items(n=n, seed=seed)
    answers = propose_answers(model, tokenizer, items, batch_size=batch_size)
    correct = [grade_answer(a, item.aliases) for a, item in zip(answers, items)]
    p = sum(correct) / len(correct)
    return QAAccuracy(accuracy=p, stderr=math.sqrt(p * (1 - p) / len(correct)), n=len(correct), answers=answers,
                      correct=tuple(bool(c) for c in correct))  # fmt: skip


@dataclass(frozen=True)
class CapabilityChange:
    """How one model's capability measures moved against another's on the same texts and QA items (paired).

    Intervals are percentile bootstraps over texts (perplexity: each resample pools its texts' NLL and tokens
    for both models) and over items (QA); ``qa_mcnemar_p`` is the exact two-sided McNemar test on the items
    that one model answers right and the other wrong.
    """

    perplexity_increase: float
    perplexity_increase_ci: tuple[float, float]
    qa_accuracy_drop: float
    qa_accuracy_drop_ci: tuple[float, float]
    qa_mcnemar_p: float
    qa_lost: int
    """Items right before and wrong after."""
    qa_gained: int
    """Items wrong before and right after."""
    n_texts: int
    n_items: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (intervals as lists, as they read back)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def mcnemar_exact_p(lost: int, gained: int) -> float:
    """Exact two-sided McNemar p-value: under no change each discordant item is lost or gained with
    probability 1/2, so ``p = min(1, 2·P(Binomial(lost + gained, 1/2) ≤ min(lost, gained)))``.

    Example:
        >>> mcnemar_exact_p(0, 0), mcnemar_exact_p(5, 0), round(mcnemar_exact_p(7, 2), 4)
        (1.0, 0.0625, 0.1797)
    """
    if lost + gained == 0:
        return 1.0
    from scipy.stats import binomtest  # exact; two-sided at 1/2 doubles the smaller tail

    return float(binomtest(min(lost, gained), lost + gained, 0.5).pvalue)


def capability_change(
    before: tuple[Perplexity, QAAccuracy],
    after: tuple[Perplexity, QAAccuracy],
    *,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> CapabilityChange:
    """The paired change from ``before`` to ``after`` (each a ``(perplexity, qa_accuracy)`` of the same texts
    and items), with bootstrap intervals and McNemar's test.

    Raises:
        ValueError: the two were measured on different numbers of texts or items, or without per-text data.
    """
    (ppl0, qa0), (ppl1, qa1) = before, after
    if not (ppl0.text_nll and ppl1.text_nll and qa0.correct and qa1.correct):
        raise ValueError("capability_change needs per-text and per-item results (measure with this version)")
    if len(ppl0.text_nll) != len(ppl1.text_nll) or ppl0.text_tokens != ppl1.text_tokens:
        raise ValueError(
            "the perplexities were measured on different texts: measure both models on the same ones"
        )
    if len(qa0.correct) != len(qa1.correct):
        raise ValueError(
            f"the QA results cover {len(qa0.correct)} and {len(qa1.correct)} items: use the same items"
        )
    rng = np.random.default_rng(seed)
    nll0, nll1 = np.asarray(ppl0.text_nll), np.asarray(ppl1.text_nll)
    tokens = np.asarray(ppl0.text_tokens, dtype=float)
    right0, right1 = np.asarray(qa0.correct, dtype=float), np.asarray(qa1.correct, dtype=float)
    texts = rng.integers(0, len(nll0), size=(n_boot, len(nll0)))
    items = rng.integers(0, len(right0), size=(n_boot, len(right0)))
    count = tokens[texts].sum(1)
    increase = np.exp(nll1[texts].sum(1) / count) - np.exp(nll0[texts].sum(1) / count)
    drop = right0[items].mean(1) - right1[items].mean(1)
    tails = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    lost = int(((right0 == 1) & (right1 == 0)).sum())
    gained = int(((right0 == 0) & (right1 == 1)).sum())
    return CapabilityChange(
        perplexity_increase=ppl1.value - ppl0.value,
        perplexity_increase_ci=tuple(float(x) for x in np.percentile(increase, tails)),
        qa_accuracy_drop=qa0.accuracy - qa1.accuracy,
        qa_accuracy_drop_ci=tuple(float(x) for x in np.percentile(drop, tails)),
        qa_mcnemar_p=mcnemar_exact_p(lost, gained),
        qa_lost=lost,
        qa_gained=gained,
        n_texts=len(nll0),
        n_items=len(right0),
    )
