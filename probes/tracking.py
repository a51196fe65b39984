"""Tracking: do projections onto a reward vector separate good from bad outcomes the model sees?

Two readouts from the paper (§5, App. I; research notes §A.4.7):

- **Maze goals** (:func:`maze_tracking`): new (held-out) Gold-final and Mold-final scripted trajectories,
  read at the final direction token (the extraction position). The score of an activation ``a`` is
  the scalar projection ``<a, v> / ||v||``; the effect size is Cohen's ``d`` of Gold-final minus
  Mold-final projections, per layer. (The paper expresses projections in SDs from the mean across
  classes; ``d`` is invariant to that affine rescaling.) The paper reports ``d > 1.6`` trained and
  ``|d| < 0.12`` maze-naive for v_Gold on Qwen3-4B-Base.
- **Correctness feedback** (:func:`feedback_tracking`): after a short-answer question the assistant
  gives an answer, the user gives truthful feedback (``"That's right."`` / ``"That's wrong."``) and the
  assistant turn opens (the generation prompt). Activations are projected at **all tokens of that final
  assistant template** (the tokens the generation prompt adds), averaged per conversation (the mean
  projection equals the projection of the mean); ``d`` is correct minus incorrect.

  By default (``answers="model"``, the paper's design) the answers are **the model's own**
  (:func:`graded_feedback_conversations`): a greedy short answer to each question of a shipped set
  (``probes/data/qa.jsonl`` or ``probes/data/arithmetic.jsonl``, the stand-ins for the paper's MMLU and
  GSM8K), graded by :mod:`probes.grading`; the grade decides the group and the feedback, so the
  groups' sizes are the model's accuracy. ``answers="reference"`` keeps the older construction
  (:func:`feedback_conversations`): every QA item once with its reference answer ("correct") and once
  with another same-topic question's answer ("incorrect", a seeded derangement), balanced but not the
  model's own words.

Cohen's ``d`` is ``probes.selection.cohens_d`` (pooled, (n-1)-weighted standard deviation).

Example:
    >>> import torch
    >>> round(float(project(torch.tensor([[3.0, 4.0]]), torch.tensor([0.0, 2.0]))[0]), 3)
    4.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor, nn

from maze_env.config import MazeConfig
from maze_env.scripted import PAPER_BASE_SEED, Trajectory, scripted_trajectories
from probes.concept_vector import ConceptVector, WidthMismatchError
from probes.grading import DEFAULT_MAX_NEW_TOKENS, answer_questions, dataset_path, grade, load_items
from probes.record import capture
from probes.selection import cohens_d

HELD_OUT_SEED = PAPER_BASE_SEED + 1_000_003
"""Default maze seed of held-out tracking trajectories (far from the extraction seeds 474747, ...)."""

FEEDBACK = {"correct": "That's right.", "incorrect": "That's wrong."}

Chat = list[dict[str, str]]


class TrackingError(ValueError):
    """Bad tracking input (too few samples, mismatched widths, empty data)."""


def project(
    activations: Float[Tensor, "n d_model"], direction: Float[Tensor, " d_model"]
) -> Float[Tensor, " n"]:
    """Scalar projection ``<a, v> / ||v||`` (float64)."""
    v = torch.as_tensor(direction).double().cpu()
    a = torch.as_tensor(activations).double().cpu()
    if a.shape[-1] != v.shape[0]:
        raise WidthMismatchError(f"activations have width {a.shape[-1]}, the direction {v.shape[0]}")
    norm = v.norm()
    if norm == 0:
        raise TrackingError("cannot project onto a zero direction")
    return a @ v / norm


@dataclass(frozen=True)
class Tracking:
    """Per-layer separation of two groups by their projection onto a vector.

    Attributes:
        d: ``{layer: Cohen's d}`` (positive group minus negative group).
        positive, negative: ``{layer: (n,) projections}``.
        labels: names of the (positive, negative) groups.
        concept: the vector's concept label.
    """

    d: dict[int, float]
    positive: dict[int, Tensor]
    negative: dict[int, Tensor]
    labels: tuple[str, str]
    concept: str = ""

    @property
    def n_positive(self) -> int:
        """Samples in the positive group (e.g. correct conversations)."""
        return len(next(iter(self.positive.values()))) if self.positive else 0

    @property
    def n_negative(self) -> int:
        """Samples in the negative group."""
        return len(next(iter(self.negative.values()))) if self.negative else 0

    def best_layer(self) -> int:
        """Layer of the largest ``|d|``."""
        return max(
            self.d, key=lambda layer: (abs(self.d[layer]) if math.isfinite(self.d[layer]) else -1.0, -layer)
        )


def tracking_from_activations(
    vector: ConceptVector,
    positive: dict[int, Tensor],
    negative: dict[int, Tensor],
    *,
    labels: tuple[str, str] = ("positive", "negative"),
) -> Tracking:
    """Cohen's d of projections onto ``vector`` at every layer shared by the vector and the activations."""
    layers = [layer for layer in vector.layers if layer in positive and layer in negative]
    if not layers:
        raise TrackingError(f"no shared layers: vector {vector.layers}, activations {sorted(positive)}")
    for name, group in (("positive", positive), ("negative", negative)):
        if next(iter(group.values())).shape[0] < 2:
            raise TrackingError(f"the {name} group needs >= 2 samples for Cohen's d")
    pos = {layer: project(positive[layer], vector[layer]) for layer in layers}
    neg = {layer: project(negative[layer], vector[layer]) for layer in layers}
    return Tracking(
        d={layer: cohens_d(pos[layer], neg[layer]) for layer in layers},
        positive=pos,
        negative=neg,
        labels=labels,
        concept=vector.concept,
    )


def held_out_trajectories(
    n: int, *, config: MazeConfig | None = None, base_seed: int = HELD_OUT_SEED
) -> dict[str, list[Trajectory]]:
    """``{"Gold": [...], "Mold": [...]}`` fresh scripted trajectories on held-out maze seeds."""
    return {
        tile: scripted_trajectories(tile, n, config=config, base_seed=base_seed) for tile in ("Gold", "Mold")
    }


def maze_tracking(
    model: nn.Module,
    tokenizer: Any,
    vector: ConceptVector | Mapping[str, ConceptVector],
    *,
    gold: Sequence[Trajectory] | None = None,
    mold: Sequence[Trajectory] | None = None,
    n: int = 60,
    config: MazeConfig | None = None,
    batch_size: int = 8,
) -> Tracking | dict[str, Tracking]:
    """Cohen's d (Gold-final minus Mold-final) of projections onto ``vector`` at its layers.

    Trajectories default to ``held_out_trajectories(n)``; they are read at the final direction token,
    like the extraction (``close_final=False``, position ``"last"``). Pass ``{name: vector}`` to score
    several vectors on one pass over the trajectories (returns ``{name: Tracking}``).
    """
    vectors = dict(vector) if isinstance(vector, Mapping) else {"": vector}
    if not vectors:
        raise TrackingError("no vectors to track")
    for v in vectors.values():
        v.check_model(model)
    if gold is None or mold is None:
        fresh = held_out_trajectories(n, config=config)
        gold, mold = gold or fresh["Gold"], mold or fresh["Mold"]
    if len(gold) < 2 or len(mold) < 2:
        raise TrackingError(f"need >= 2 trajectories per class, got {len(gold)} Gold and {len(mold)} Mold")
    layers = sorted({layer for v in vectors.values() for layer in v.layers})
    read = {
        name: capture(
            model,
            tokenizer,
            [t.messages for t in trajs],
            layers=layers,
            position="last",
            batch_size=batch_size,
            close_final=False,
        )
        for name, trajs in (("Gold", gold), ("Mold", mold))
    }
    out = {
        name: tracking_from_activations(v, read["Gold"], read["Mold"], labels=("Gold-final", "Mold-final"))
        for name, v in vectors.items()
    }
    return out if isinstance(vector, Mapping) else out[""]


QA_PATH: Path = dataset_path("qa")
"""The shipped short-answer questions (``id, question, answer, aliases, topic``; 340 rows)."""


def load_qa() -> list[dict[str, Any]]:
    """The shipped QA rows, in file order.

    Example:
        >>> load_qa()[0]["id"]
        'qa-001'
    """
    return load_items("qa")


def _rows(items: Sequence[Any]) -> list[dict[str, Any]]:
    return [r if isinstance(r, dict) else r.__dict__ for r in items]


def _chat(question: str, answer: str, label: str) -> Chat:
    return [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer},
        {"role": "user", "content": FEEDBACK[label]},
    ]


def feedback_conversations(
    items: Sequence[Any] | None = None, *, n: int | None = None, seed: int = 0
) -> dict[str, list[Chat]]:
    """Reference-answer conversations (``answers="reference"``), ending with the user's truthful feedback.

    Not the model's own answers (see :func:`graded_feedback_conversations`): each item appears once with
    its reference answer ("correct") and once with another item's answer, of the same topic when
    possible ("incorrect").

    Args:
        items: QA rows with ``question``, ``answer`` (and optionally ``topic``); default
            :func:`load_qa` (``probes/data/qa.jsonl``, the set ``steering.data.load_jsonl("qa")`` reads).
        n: use the first ``n`` items after a seeded shuffle (default all).
        seed: shuffle and wrong-answer seed.

    Returns:
        ``{"correct": [...], "incorrect": [...]}``, one conversation per item in each.
    """
    if items is None:
        items = load_qa()
    rows = _rows(items)
    if len(rows) < 2:
        raise TrackingError("need at least 2 QA items")
    rng = np.random.default_rng(seed)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    wrong = _wrong_answers(rows, rng)  # drawn from the whole set, so same-topic answers exist
    if n is not None:
        rows, wrong = rows[:n], wrong[:n]
    out: dict[str, list[Chat]] = {"correct": [], "incorrect": []}
    for row, bad in zip(rows, wrong, strict=True):
        for label, answer in (("correct", row["answer"]), ("incorrect", bad)):
            out[label].append(_chat(row["question"], str(answer), label))
    return out


@dataclass(frozen=True)
class GradedFeedback:
    """The model's own answers to a shipped question set, graded, as feedback conversations.

    Attributes:
        dataset: ``"qa"`` or ``"arithmetic"``.
        items: the question rows, in the order asked (a seeded shuffle, first ``n``).
        answers: the model's greedy short answers, one per item.
        correct: the grade of each answer.
        conversations: ``{"correct": [...], "incorrect": [...]}``: ``[user question, assistant answer,
            user truthful feedback]``, in item order within each group.
    """

    dataset: str
    items: tuple[dict[str, Any], ...]
    answers: tuple[str, ...]
    correct: tuple[bool, ...]
    conversations: dict[str, list[Chat]]

    @property
    def n(self) -> int:
        return len(self.items)

    @property
    def n_correct(self) -> int:
        return sum(self.correct)

    @property
    def n_incorrect(self) -> int:
        return self.n - self.n_correct

    @property
    def accuracy(self) -> float:
        return self.n_correct / self.n if self.n else float("nan")

    def counts(self) -> dict[str, Any]:
        """``{"dataset", "n", "n_correct", "n_incorrect"}`` for a report."""
        return {
            "dataset": self.dataset,
            "n": self.n,
            "n_correct": self.n_correct,
            "n_incorrect": self.n_incorrect,
        }


def graded_conversations(
    dataset: str, items: Sequence[Any], answers: Sequence[str], correct: Sequence[bool] | None = None
) -> GradedFeedback:
    """Group given answers by their grade (default :func:`probes.grading.grade`) into feedback chats."""
    rows = _rows(items)
    if len(answers) != len(rows):
        raise TrackingError(f"{len(rows)} items but {len(answers)} answers")
    grades = [grade(dataset, r, a) for r, a in zip(rows, answers)] if correct is None else list(correct)
    if len(grades) != len(rows):
        raise TrackingError(f"{len(rows)} items but {len(grades)} grades")
    conversations: dict[str, list[Chat]] = {"correct": [], "incorrect": []}
    for row, answer, ok in zip(rows, answers, grades):
        label = "correct" if ok else "incorrect"
        conversations[label].append(_chat(row["question"], answer, label))
    return GradedFeedback(
        dataset=dataset,
        items=tuple(rows),
        answers=tuple(answers),
        correct=tuple(bool(g) for g in grades),
        conversations=conversations,
    )


def graded_feedback_conversations(
    model: nn.Module,
    tokenizer: Any,
    *,
    dataset: str = "qa",
    items: Sequence[Any] | None = None,
    n: int | None = 100,
    seed: int = 0,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = 8,
) -> GradedFeedback:
    """The model's own greedy answers, graded, as ``[question, own answer, truthful feedback]`` chats.

    Args:
        model, tokenizer: the model that answers (and is read afterwards).
        dataset: ``"qa"`` (``probes/data/qa.jsonl``, alias match) or ``"arithmetic"``
            (``probes/data/arithmetic.jsonl``, first number in the answer).
        items: rows to ask instead of the shipped set (graded as ``dataset``).
        n: ask the first ``n`` items after a seeded shuffle (default 100; ``None``: all). The shuffle is
            the one :func:`feedback_conversations` uses, so both constructions ask the same questions.
        seed: shuffle seed.
        max_new_tokens, batch_size: generation (greedy; the answer is the first line).

    Example:
        >>> graded = graded_feedback_conversations(model, tok, n=100)  # doctest: +SKIP
        >>> graded.n_correct, graded.n_incorrect  # doctest: +SKIP
    """
    rows = _rows(load_items(dataset) if items is None else items)
    if not rows:
        raise TrackingError("no questions to ask")
    rows = [rows[i] for i in np.random.default_rng(seed).permutation(len(rows))]
    if n is not None:
        rows = rows[:n]
    answers = answer_questions(
        model,
        tokenizer,
        [r["question"] for r in rows],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    return graded_conversations(dataset, rows, answers)


def _wrong_answers(rows: list[dict[str, Any]], rng: np.random.Generator) -> list[str]:
    """For each row, the answer of another row (same topic when possible) that differs from its own."""
    answers = [str(r["answer"]) for r in rows]
    out = []
    for i, row in enumerate(rows):
        topic = row.get("topic")
        same = [
            j for j, r in enumerate(rows) if j != i and r.get("topic") == topic and answers[j] != answers[i]
        ]
        pool = same or [j for j in range(len(rows)) if answers[j] != answers[i]]
        if not pool:
            raise TrackingError("every QA item has the same answer; cannot build wrong answers")
        out.append(answers[int(rng.choice(pool))])
    return out


def template_length(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    """Tokens the generation prompt (the final assistant template) adds after ``messages``."""
    closed = tokenizer.apply_chat_template(messages, tokenize=False)
    opened = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not opened.startswith(closed) or opened == closed:
        raise TrackingError("the chat template adds no assistant header with add_generation_prompt=True")
    special = {"add_special_tokens": False}
    full, prefix = tokenizer(opened, **special)["input_ids"], tokenizer(closed, **special)["input_ids"]
    if full[: len(prefix)] != prefix:
        raise TrackingError("the assistant header merges with the previous tokens; cannot isolate it")
    return len(full) - len(prefix)


def feedback_tracking(
    model: nn.Module,
    tokenizer: Any,
    vector: ConceptVector | Mapping[str, ConceptVector],
    *,
    conversations: dict[str, list[Chat]] | GradedFeedback | None = None,
    answers: Literal["model", "reference"] = "model",
    dataset: str = "qa",
    n: int | None = 100,
    seed: int = 0,
    batch_size: int = 8,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
) -> Tracking | dict[str, Tracking]:
    """Cohen's d (correct minus incorrect) of the mean projection over the final assistant template.

    Args:
        answers: ``"model"`` (default, the paper's design): the model's own greedy answers to ``n``
            questions of ``dataset``, graded (:func:`graded_feedback_conversations`); raises
            :class:`TrackingError` when either group has fewer than 2 answers. ``"reference"``: the
            reference answer vs another question's answer for ``n`` QA items
            (:func:`feedback_conversations`; ``dataset`` must be ``"qa"``).
        conversations: ready conversations (a dict, or a :class:`GradedFeedback` to reuse generated
            answers); ``answers``, ``dataset``, ``n``, ``seed`` and ``max_new_tokens`` are then unused.
        dataset: ``"qa"`` or ``"arithmetic"`` (``answers="model"``).
        n, seed: questions to ask and their shuffle seed.
        batch_size: texts per forward (and per ``generate`` call).
        max_new_tokens: new tokens per generated answer.

    Like :func:`maze_tracking`, ``{name: vector}`` scores several vectors on one pass. The group sizes are
    ``Tracking.n_positive`` (correct) and ``Tracking.n_negative`` (incorrect).

    Example:
        >>> res = feedback_tracking(model, tok, v_gold.select([20]), n=100)  # doctest: +SKIP
        >>> res.d[20], res.n_positive, res.n_negative  # doctest: +SKIP
    """
    vectors = dict(vector) if isinstance(vector, Mapping) else {"": vector}
    if not vectors:
        raise TrackingError("no vectors to track")
    for v in vectors.values():
        v.check_model(model)
    if answers not in ("model", "reference"):
        raise TrackingError(f"answers must be 'model' or 'reference', got {answers!r}")
    layers = sorted({layer for v in vectors.values() for layer in v.layers})
    if conversations is None:
        if answers == "reference":
            if dataset != "qa":
                raise TrackingError(f"answers='reference' builds QA conversations only, not {dataset!r}")
            conversations = feedback_conversations(n=n, seed=seed)
        else:
            conversations = graded_feedback_conversations(
                model,
                tokenizer,
                dataset=dataset,
                n=n,
                seed=seed,
                max_new_tokens=max_new_tokens,
                batch_size=batch_size,
            )
    if isinstance(conversations, GradedFeedback):
        graded = conversations
        if min(graded.n_correct, graded.n_incorrect) < 2:
            raise TrackingError(
                f"feedback tracking on the model's own answers needs >= 2 correct and >= 2 incorrect "
                f"answers for Cohen's d; the model answered {graded.n_correct} of {graded.n} "
                f"{graded.dataset!r} questions correctly and {graded.n_incorrect} incorrectly. Ask more "
                f"questions (a larger n), use the other dataset, or pass answers='reference' (reference "
                f"answers vs other questions' answers, not the model's own)"
            )
        conversations = graded.conversations
    activations = {}
    for label in ("correct", "incorrect"):
        chats = conversations[label]
        if len(chats) < 2:
            raise TrackingError(f"need >= 2 {label} conversations, got {len(chats)}")
        lengths = {template_length(tokenizer, chat) for chat in chats}
        if len(lengths) != 1:
            raise TrackingError(f"the assistant template has varying token lengths {sorted(lengths)}")
        k = lengths.pop()
        texts = [
            tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats
        ]
        activations[label] = capture(
            model,
            tokenizer,
            texts,
            layers=layers,
            position=slice(-k, None),
            reduce="mean",
            batch_size=batch_size,
            add_special_tokens=False,
        )
    out = {
        name: tracking_from_activations(
            v, activations["correct"], activations["incorrect"], labels=("correct", "incorrect")
        )
        for name, v in vectors.items()
    }
    return out if isinstance(vector, Mapping) else out[""]
