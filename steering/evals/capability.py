"""Non-target capability, for measuring forgetting: held-out perplexity and short-answer QA accuracy.

Example:
    >>> from probes.models import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> result = perplexity(model, tok, ["The bus leaves at nine."])
    >>> result.n_tokens == len(tok("The bus leaves at nine.", add_special_tokens=False)["input_ids"]) - 1
    True
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import probes
from probes.grading import grade_answer
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


@torch.no_grad()
def perplexity(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 8) -> Perplexity:
    """Token-level perplexity of plain texts (no chat template), pooled over all predicted tokens.

    Each text is scored on its own (no packing), from its second token on; padding never counts.
    """
    if not texts:
        raise ValueError("perplexity needs at least one text")
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    for i in range(0, len(texts), batch_size):
        enc = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts[i : i + batch_size]]
        width = max(len(ids) for ids in enc)
        ids = torch.full((len(enc), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for row, seq in enumerate(enc):  # right padding: positions are 0..len-1 as when alone
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = ids[:, 1:]
        nll = -logp.gather(-1, target[..., None])[..., 0]
        keep = mask[:, 1:].bool()
        total_nll += float(nll[keep].sum())
        total_tokens += int(keep.sum())
    if total_tokens == 0:
        raise ValueError("the texts have no token to predict (each needs at least two tokens)")
    mean = total_nll / total_tokens
    return Perplexity(value=math.exp(mean), mean_nll=mean, n_tokens=total_tokens, n_texts=len(texts))


@dataclass(frozen=True)
class QAAccuracy:
    accuracy: float
    stderr: float
    n: int
    answers: list[str]


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
    return QAAccuracy(
        accuracy=p, stderr=math.sqrt(p * (1 - p) / len(correct)), n=len(correct), answers=answers
    )
