"""Confidence: normalised P(True) after the paper's two-turn "Is your proposed answer correct?" exchange.

Phase 0 (unsteered): a greedy answer to each question. Phase 1: render
``user Q -> assistant A -> user CONFIDENCE_QUESTION -> assistant header`` and run one forward pass, with
steering on during that pass (by default at every assistant-turn token, the paper's rule). Read the
logits of the first token of ``"True"`` and ``"False"`` at the last position:
``P(True) = P(True) / (P(True) + P(False)) = sigmoid(logit_True - logit_False)``. Correctness of the
phase-0 answer is graded against the QA answers and aliases by the toolkit's one grader,
``probes.grading.grade_answer`` (lower-cased, accents stripped, whole phrase in the first line or sentence).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from probes.grading import grade_answer
from steering.datasets import QAItem, qa_items
from steering.evals.table import Table
from steering.generate import Steering, encode_left_padded, generate_responses

CONFIDENCE_QUESTION = "Is your proposed answer correct? Answer only 'True' or 'False'."


def true_false_token_ids(tokenizer: Any) -> tuple[int, int]:
    """First token ids of ``"True"`` and ``"False"`` (as the assistant turn's first word); must differ."""
    true = tokenizer("True", add_special_tokens=False)["input_ids"]
    false = tokenizer("False", add_special_tokens=False)["input_ids"]
    if not true or not false or true[0] == false[0]:
        raise ValueError(f"'True' and 'False' do not start with distinct tokens ({true} vs {false})")
    return int(true[0]), int(false[0])


def propose_answers(
    model: Any, tokenizer: Any, items: Sequence[QAItem], *, max_new_tokens: int = 24, batch_size: int = 16
) -> list[str]:
    """Phase 0: unsteered greedy answers."""
    texts = generate_responses(
        model,
        tokenizer,
        [item.question for item in items],
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        batch_size=batch_size,
    )
    return [responses[0] for responses in texts]


def confidence_chats(items: Sequence[QAItem], answers: Sequence[str]) -> list[list[dict[str, str]]]:
    """The phase-1 conversations (the chat template adds the final assistant header)."""
    return [
        [
            {"role": "user", "content": item.question},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": CONFIDENCE_QUESTION},
        ]
        for item, answer in zip(items, answers)
    ]


@dataclass
class ConfidenceRow:
    """One question: its phase-0 answer, whether it is correct, and the phase-1 P(True)."""

    item_id: str
    topic: str
    proposed_answer: str
    correct: bool
    p_true: float
    logit_true: float
    logit_false: float


def evaluate_confidence(
    model: Any,
    tokenizer: Any,
    items: Sequence[QAItem] | None = None,
    *,
    answers: Sequence[str] | None = None,
    steering: Steering | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 24,
) -> Table[ConfidenceRow]:
    """P(True) per question (default: 40 questions), with ``steering`` on during the phase-1 forward pass.

    Pass ``answers`` (from :func:`propose_answers`) to reuse phase 0 across steering settings.
    """
    items = list(items) if items is not None else qa_items(n=40, seed=0)
    if answers is None:
        answers = propose_answers(
            model, tokenizer, items, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
    if len(answers) != len(items):
        raise ValueError(f"{len(items)} items but {len(answers)} answers")
    true_id, false_id = true_false_token_ids(tokenizer)
    chats = confidence_chats(items, answers)
    device = next(model.parameters()).device
    rows: list[ConfidenceRow] = []
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            texts = [
                tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
                for chat in chats[start : start + batch_size]
            ]
            batch = {k: v.to(device) for k, v in encode_left_padded(tokenizer, texts).items()}
            batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # as generate does
            # left padding: the last column is every row's last token; only its logits are needed
            if steering is not None:
                with steering.context(model, tokenizer):
                    logits = model(**batch, logits_to_keep=1).logits[:, -1]
            else:
                logits = model(**batch, logits_to_keep=1).logits[:, -1]
            pair = logits[:, [true_id, false_id]].double().cpu()
            for offset, (lt, lf) in enumerate(pair.tolist()):
                item = items[start + offset]
                answer = answers[start + offset]
                rows.append(
                    ConfidenceRow(
                        item_id=item.id,
                        topic=item.topic,
                        proposed_answer=answer,
                        correct=grade_answer(answer, item.aliases),
                        p_true=1.0 / (1.0 + math.exp(lf - lt)),
                        logit_true=lt,
                        logit_false=lf,
                    )
                )
    return Table(rows)


def mean_p_true(table: Table[ConfidenceRow], correct: bool | None = None) -> float:
    """Mean normalised P(True), optionally over correct (``True``) or wrong (``False``) answers only."""
    values = [row.p_true for row in table if correct is None or row.correct == correct]
    return sum(values) / len(values) if values else float("nan")
