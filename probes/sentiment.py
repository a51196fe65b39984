"""Sentiment axes, to compare the reward vectors against a plain positive/negative direction.

Two constructions (research notes §C.6: the paper finds ``|cos(sentiment, v_c)| <= ~0.2`` at L20-23):

- :func:`prompt_sentiment_axis` (the paper's "Prompt" axis): the chat-formatted prompts
  ``"Describe a book using positive sentiment"`` and ``"... negative sentiment"`` (one pair per subject;
  default the single subject ``"book"``), read at the **last token of the prompt rendered with the
  generation prompt** (the end of the assistant header, where the model is about to answer). Axis =
  mean(positive) - mean(negative) over subjects.
- :func:`labelled_sentiment_axis` (CAD-style mean difference): the shipped labelled set
  ``probes/data/sentiment.jsonl`` (``text``, ``label``, ``pair_id``; minimal pairs that differ in
  sentiment), each text's activations averaged over its tokens from ``token_offset`` on (the same rule
  as the emotion stories), axis = mean(positive texts) - mean(negative texts).

Both return a :class:`~probes.concept_vector.ConceptVector`, so ``axis.cosine(v_mold)`` gives the
per-layer cosines; :func:`axis_cosines` does it for several vectors at once.

Example:
    >>> from probes.models import tiny_model
    >>> model, tok = tiny_model("llama")
    >>> axis = prompt_sentiment_axis(model, tok, layers=[1])
    >>> axis.concept, axis.layers
    ('sentiment_prompt', [1])
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from probes import layers as _layers
from probes.concept_vector import ConceptVector, dataset_hash
from probes.emotions import DEFAULT_TOKEN_OFFSET, story_mean_activations
from probes.record import capture

DATA_DIR = Path(__file__).resolve().parent / "data"
PROMPT_TEMPLATE = "Describe a {subject} using {polarity} sentiment"
POSITIVE_LABELS = frozenset({"positive", "pos", "1", "+1", "true"})
NEGATIVE_LABELS = frozenset({"negative", "neg", "0", "-1", "false"})


class SentimentError(ValueError):
    """Bad sentiment input: unknown label, an empty class."""


def sentiment_prompts(
    subjects: Sequence[str] = ("book",), template: str = PROMPT_TEMPLATE
) -> dict[str, list[str]]:
    """``{"positive": [...], "negative": [...]}`` user prompts, one per subject."""
    if isinstance(subjects, str) or not subjects:
        raise SentimentError("subjects must be a non-empty list of strings")
    return {
        polarity: [template.format(subject=s, polarity=polarity) for s in subjects]
        for polarity in ("positive", "negative")
    }


def _chat_prompt(tokenizer: Any, prompt: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def prompt_sentiment_axis(
    model: nn.Module,
    tokenizer: Any,
    layers: int | Sequence[int] | str = "all",
    *,
    subjects: Sequence[str] = ("book",),
    template: str = PROMPT_TEMPLATE,
) -> ConceptVector:
    """Positive-minus-negative prompt axis, read at the last token of each chat-formatted prompt."""
    prompts = sentiment_prompts(subjects, template)
    texts = {p: [_chat_prompt(tokenizer, x) for x in xs] for p, xs in prompts.items()}
    acts = {
        p: capture(model, tokenizer, ts, layers=layers, position="last", add_special_tokens=False)
        for p, ts in texts.items()
    }
    directions = {
        layer: acts["positive"][layer].mean(0) - acts["negative"][layer].mean(0) for layer in acts["positive"]
    }
    return ConceptVector(
        directions,
        model_name=_layers.model_name(model),
        model_family=_layers.model_family(model),
        model_dtype=_layers.model_dtype(model),
        position="last",
        method="mean_diff",
        dataset_hash=dataset_hash(texts["positive"] + texts["negative"]),
        n_per_class={"positive": len(subjects), "negative": len(subjects)},
        concept="sentiment_prompt",
        metadata={"template": template, "subjects": list(subjects)},
    )


def load_sentiment(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The shipped labelled sentiment set, labels normalised to ``"positive"`` / ``"negative"``."""
    path = Path(path) if path is not None else DATA_DIR / "sentiment.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; the shipped data lives in {DATA_DIR}")
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                row["label"] = normalise_label(row["label"])
                rows.append(row)
    return rows


def normalise_label(label: Any) -> str:
    """Map a label (``"positive"``, ``"pos"``, ``1``, ``True``...) to ``"positive"`` / ``"negative"``."""
    key = str(label).strip().lower()
    if key in POSITIVE_LABELS:
        return "positive"
    if key in NEGATIVE_LABELS:
        return "negative"
    raise SentimentError(f"unknown sentiment label {label!r}; use positive/negative (or 1/0)")


def labelled_sentiment_axis(
    model: nn.Module,
    tokenizer: Any,
    layers: int | Sequence[int] | str = "all",
    *,
    rows: Sequence[Mapping[str, Any]] | None = None,
    token_offset: int = DEFAULT_TOKEN_OFFSET,
    batch_size: int = 8,
) -> ConceptVector:
    """Mean(positive texts) - mean(negative texts) of token-averaged activations (CAD-style)."""
    rows = list(rows) if rows is not None else load_sentiment()
    texts = {"positive": [], "negative": []}
    for row in rows:
        texts[normalise_label(row["label"])].append(str(row["text"]))
    empty = [k for k, v in texts.items() if not v]
    if empty:
        raise SentimentError(f"no {empty[0]} texts in the labelled set")
    means = {}
    for label, ts in texts.items():
        acts, _ = story_mean_activations(
            model, tokenizer, ts, layers, token_offset=token_offset, batch_size=batch_size
        )
        means[label] = {layer: a.mean(0) for layer, a in acts.items()}
    return ConceptVector(
        {layer: means["positive"][layer] - means["negative"][layer] for layer in means["positive"]},
        model_name=_layers.model_name(model),
        model_family=_layers.model_family(model),
        model_dtype=_layers.model_dtype(model),
        position=f"story_mean:{token_offset}",
        method="mean_diff",
        dataset_hash=dataset_hash(texts["positive"] + texts["negative"]),
        n_per_class={k: len(v) for k, v in texts.items()},
        concept="sentiment_labelled",
    )


def axis_cosines(axis: ConceptVector, vectors: Mapping[str, ConceptVector]) -> dict[str, dict[int, float]]:
    """``{name: {layer: cos(axis, vector)}}`` over the layers each pair shares."""
    return {name: axis.cosine(vector) for name, vector in vectors.items()}
