"""Conditional steering (CAST-style, Lee et al. 2024, arXiv 2409.05907): steer only the rows whose prompt
matches a condition.

A :class:`Condition` reads the hidden state at one block output (``layer``) on the prompt pass: the score of a
row is the cosine between the mean of its prompt tokens' hidden states (padding excluded) and the condition
vector. Rows whose score passes ``threshold`` (``>=`` when ``above``, else ``<=``) are steered for the whole
call (prompt and every generated token); the others are left exactly as they would be without steering.
``steering.apply.apply(..., condition=...)`` takes it; the condition layer must lie below every steered layer,
so the decision is made before any steering in the same forward pass.

The threshold is chosen on held-out data: :func:`condition_scores` scores texts with the same rule, and
:func:`fit_threshold` picks the cut that best separates texts to steer from texts to leave alone (balanced
accuracy).

Example:
    >>> fit = fit_threshold([0.4, 0.5, 0.6], [0.0, 0.1, 0.45])
    >>> fit.threshold, round(fit.balanced_accuracy, 4)  # ties go to the lowest cut
    (0.25, 0.8333)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from probes import positions as _positions
from probes.record import record


@dataclass(frozen=True)
class Condition:
    """Steer a row only when ``cos(mean prompt hidden state at layer, vector)`` passes ``threshold``."""

    vector: Float[Tensor, " d_model"]
    layer: int
    threshold: float
    above: bool = True
    """Steer rows scoring at least ``threshold`` (False: at most)."""

    def __post_init__(self) -> None:
        if not isinstance(self.vector, Tensor) or self.vector.ndim != 1:
            raise ValueError("a Condition's vector must be a 1-D Tensor (d_model,)")
        if not math.isfinite(float(self.threshold)):
            raise ValueError(f"a Condition's threshold must be finite; got {self.threshold!r}")
        if float(self.vector.double().norm()) == 0:
            raise ValueError("a Condition's vector must not be zero")

    def passes(self, scores: Tensor) -> Bool[Tensor, " batch"]:
        return scores >= self.threshold if self.above else scores <= self.threshold


def row_scores(
    condition: Condition, hidden: Float[Tensor, "batch pos d_model"], attention_mask: Tensor | None
) -> Float[Tensor, " batch"]:
    """Cosine of each row's mean real-token hidden state with the condition vector (float64)."""
    h = hidden.detach().double()
    if attention_mask is None:
        mean = h.mean(dim=1)
    else:
        m = attention_mask[:, : h.shape[1]].to(device=h.device, dtype=h.dtype).unsqueeze(-1)
        mean = (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
    v = condition.vector.to(device=h.device, dtype=h.dtype)
    return (mean @ v) / (mean.norm(dim=1) * v.norm()).clamp_min(1e-30)


@torch.no_grad()
def condition_scores(
    model: nn.Module, tokenizer: Any, texts: Sequence[str], condition: Condition, *, batch_size: int = 8
) -> Float[Tensor, " n"]:
    """The score :func:`row_scores` gives each text (its prompt pass, right-padded batches), in order."""
    out = []
    for start in range(0, len(texts), batch_size):
        encoded = _positions.encode_texts(
            tokenizer, list(texts[start : start + batch_size]), padding_side="right"
        )
        device = next(model.parameters()).device
        encoded = {k: v.to(device) for k, v in encoded.items()}
        with record(model, [condition.layer], positions=None) as got:
            model(**encoded, use_cache=False)
        out.append(row_scores(condition, got[condition.layer], encoded["attention_mask"]).cpu())
    return torch.cat(out)


@dataclass(frozen=True)
class ThresholdFit:
    """The chosen cut and how well it separates the held-out texts."""

    threshold: float
    balanced_accuracy: float
    above: bool


def fit_threshold(steer: Sequence[float], keep: Sequence[float], *, above: bool = True) -> ThresholdFit:
    """The cut between held-out scores of texts to steer and texts to keep that maximises balanced accuracy.

    Candidates are the midpoints between consecutive distinct scores (and one step past either end); ties go
    to the lowest candidate.

    Raises:
        ValueError: an empty group.
    """
    s = [float(x) for x in steer]
    k = [float(x) for x in keep]
    if not s or not k:
        raise ValueError("fit_threshold needs scores of texts to steer and of texts to keep")
    values = sorted(set(s + k))
    candidates = [values[0] - 1.0] + [(a + b) / 2 for a, b in zip(values, values[1:])] + [values[-1] + 1.0]
    best = None
    for cut in candidates:
        hit = sum((x >= cut) if above else (x <= cut) for x in s) / len(s)
        spared = sum((x < cut) if above else (x > cut) for x in k) / len(k)
        score = (hit + spared) / 2
        if best is None or score > best[1]:
            best = (cut, score)
    assert best is not None
    return ThresholdFit(threshold=best[0], balanced_accuracy=best[1], above=above)
