"""Grade short model answers against the shipped answer sets, and generate those answers.

The one grader of the toolkit (``steering.evals.capability`` and the feedback tracking use it):

- **QA** (``probes/data/qa.jsonl``: ``id, question, answer, aliases, topic``): :func:`grade_answer`.
  The answer and the aliases are lower-cased, accents stripped and whitespace collapsed; an alias must
  occur as a whole phrase (not inside a longer word or number) in the first line of the response, cut
  at its first sentence end (not at the period of an initial or a title: ``J. K. Rowling``, ``Dr. Seuss``).
- **Arithmetic** (``probes/data/arithmetic.jsonl``: ``id, question, answer, steps, template``; integer
  answers): :func:`grade_number`. The first number in the response (``1,200`` and ``3.0`` read as
  numbers) must equal the answer.

:func:`answer_questions` produces the answers: greedy, short, one user turn per question rendered with
the chat template, batched with left padding; only the new tokens are decoded, stripped and cut at the
first newline.

Example:
    >>> grade_answer("The capital of France is Paris. It is large.", ["Paris"])
    True
    >>> grade_answer("Brasilia, I think", ["Brasília", "Brasilia"])
    True
    >>> grade_answer("I believe it is Lyon.\\nParis is bigger.", ["Paris"])
    False
    >>> grade_number("The answer is 1,200 apples, not 12.", 1200), grade_number("42 - 1 = 41", 41)
    (True, False)
    >>> grade("arithmetic", {"question": "2 + 2?", "answer": 4}, "4.")
    True
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig

DATA_DIR = Path(__file__).resolve().parent / "data"
DATASETS = ("qa", "arithmetic")
"""Answer sets with a grader (file ``probes/data/{name}.jsonl``)."""

DEFAULT_MAX_NEW_TOKENS = 24
"""New tokens per answer (a short answer; the first line is kept)."""

_TITLES = ("Dr", "Mr", "Ms", "Mt", "St", "Jr", "Sr", "Mrs", "Prof", "vs")
_SENTENCE_END = re.compile(
    r"(?<=[.!?])"
    + r"(?<!\b[A-Za-z]\.)"  # an initial: J. K. Rowling
    + "".join(rf"(?<!\b{t}\.)" for t in _TITLES)  # a title or abbreviation: Dr. Seuss
    + r"\s",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def dataset_path(name: str) -> Path:
    """``probes/data/{name}.jsonl`` for a gradable answer set.

    Example:
        >>> dataset_path("arithmetic").name
        'arithmetic.jsonl'
    """
    if name not in DATASETS:
        raise KeyError(f"unknown answer set {name!r}; choose one of {DATASETS}")
    return DATA_DIR / f"{name}.jsonl"


def load_items(name: str) -> list[dict[str, Any]]:
    """The rows of a gradable answer set, in file order.

    Example:
        >>> [load_items(name)[0]["id"] for name in DATASETS]
        ['qa-001', 'arith-001']
    """
    with dataset_path(name).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def fold(text: str) -> str:
    """Lower-case and strip accents (NFKD, combining marks removed)."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def first_clause(text: str) -> str:
    """The first non-empty line, cut at the first sentence end (``. ! ?`` followed by a space).

    A period after an initial or a title (``J. K. Rowling``, ``Dr. Seuss``, ``Mt. Everest``) ends no
    sentence.

    Example:
        >>> first_clause("Dr. Seuss wrote it. Not Geisel."), first_clause("\\n  Lyon! Paris.")
        ('Dr. Seuss wrote it.', 'Lyon!')
    """
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    return _SENTENCE_END.split(lines[0].strip(), maxsplit=1)[0]


def grade_answer(response: str, aliases: Sequence[str]) -> bool:
    """Whether any alias occurs as a whole phrase in the first line/sentence of ``response``."""
    head = " ".join(fold(first_clause(response)).split())
    for alias in aliases:
        pattern = r"(?<!\w)" + re.escape(" ".join(fold(alias).split())) + r"(?!\w)"
        if re.search(pattern, head):
            return True
    return False


def first_number(text: str) -> Decimal | None:
    """The first number in ``text`` (thousands commas allowed, optional sign and decimals), else ``None``.

    Example:
        >>> first_number("He has $1,250.50 left"), first_number("none"), first_number("-3 or 4")
        (Decimal('1250.50'), None, Decimal('-3'))
    """
    match = _NUMBER.search(text)
    return None if match is None else Decimal(match.group().replace(",", ""))


def grade_number(response: str, answer: int | float | str) -> bool:
    """Whether the first number in ``response`` equals ``answer`` (``42.0`` equals ``42``)."""
    found = first_number(response)
    if found is None:
        return False
    try:
        return found == Decimal(str(answer).replace(",", ""))
    except InvalidOperation as err:
        raise ValueError(f"the reference answer {answer!r} is not a number") from err


def grade(dataset: str, row: Mapping[str, Any], response: str) -> bool:
    """Grade ``response`` to one row of ``dataset`` (``"qa"``: answer + aliases; ``"arithmetic"``: number)."""
    if dataset == "qa":
        return grade_answer(response, [str(row["answer"]), *row.get("aliases", ())])
    if dataset == "arithmetic":
        return grade_number(response, row["answer"])
    raise KeyError(f"unknown answer set {dataset!r}; choose one of {DATASETS}")


def short_answer(text: str) -> str:
    """A decoded answer stripped and cut at its first newline."""
    return text.strip().split("\n", 1)[0].strip()


@torch.inference_mode()
def answer_questions(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    *,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 8,
) -> list[str]:
    """Greedy short answers: each question is one user turn (chat template + generation prompt).

    Batches are left-padded; only the new tokens are decoded (special tokens skipped), then
    :func:`short_answer` keeps the first line.
    """
    if isinstance(questions, str):
        raise TypeError("questions must be a list of strings, not a single string")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if tokenizer.pad_token is None:
        raise ValueError(f"{type(tokenizer).__name__} has no pad token (probes.models sets one)")
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    device = next(model.parameters()).device
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]
    out: list[str] = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            padding_side="left",
            add_special_tokens=False,
            return_tensors="pt",
        )
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        tokens = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        new = tokens[:, ids.shape[1] :]
        out += [short_answer(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out
