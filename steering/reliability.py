"""How reliable a steering effect is, beyond its pooled slope (issue 19).

A pooled dose-response slope (``steering.stats.dose_response_slopes``) can hide that many inputs move the
other way: Tan et al. 2024 (arXiv 2407.12404) find about half the inputs *anti-steerable* on several
datasets, and Braun et al. 2025 (arXiv 2505.22637) find that the cosine consistency of the activation
differences a vector is built from predicts how steerable it is. This module computes, from a sweep's
records (``steering.sweep.run_sweep``), per (vector, eval, layer):

- the per-prompt OLS slopes of the metric on α (each prompt's own responses over the α grid);
- the **anti-steerable fraction**: the share of prompts whose slope has the sign opposite to the expected
  one (default: the sign of the pooled slope), with a 95% Wilson score interval;
- the **share of variance explained by α**: R² of the pooled OLS fit;
- the **incoherence rate by α** (responses the coherence rule flags);

and, from the activations a vector is built from, the **consistency predictor** (``probes.consistency``, re-exported
here): the mean pairwise cosine of the per-example differences (:func:`difference_consistency`; for Eq. 1's
reward vectors the matched-triplet differences of :func:`triplet_differences`).

Example:
    >>> table = reliability_table(load_records("sweep.jsonl"))  # doctest: +SKIP
    >>> [(r.vector, r.anti_steerable) for r in table]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from probes.consistency import consistency_table, difference_consistency, triplet_differences
from probes.intervals import wilson_interval
from probes.ols import ols_slope
from steering.stats import expand_baselines


@dataclass(frozen=True)
class PromptSlope:
    """The OLS slope of one prompt's responses on α (pooled over its samples and seeds)."""

    vector: str
    eval: str
    layer: int
    prompt_id: str
    slope: float
    n: int


@dataclass(frozen=True)
class Reliability:
    """Reliability of one (vector, eval, layer) steering effect."""

    vector: str
    eval: str
    layer: int
    n_prompts: int
    """Prompts with a defined slope (responses at two or more α)."""
    pooled_slope: float
    expected_sign: int
    """+1 or −1: the direction the effect should have (default: the pooled slope's sign)."""
    anti_steerable: float
    """Share of prompts whose slope has the sign opposite to ``expected_sign``."""
    anti_ci_low: float
    anti_ci_high: float
    steerable: float
    """Share of prompts whose slope has ``expected_sign``'s sign (the rest are exactly flat)."""
    variance_explained: float
    """R² of the pooled fit of the metric on α (NaN when the metric is constant)."""
    prompt_slope_sd: float
    """Standard deviation of the per-prompt slopes (ddof 1)."""
    incoherence_by_alpha: dict[float, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """A flat table row (rounded) for reports."""
        return {
            "vector": self.vector,
            "eval": self.eval,
            "layer": self.layer,
            "prompts": self.n_prompts,
            "pooled slope": round(self.pooled_slope, 4),
            "anti-steerable": f"{self.anti_steerable:.2f} [{self.anti_ci_low:.2f}, {self.anti_ci_high:.2f}]",
            "R² (α)": round(self.variance_explained, 4),
            "slope sd": round(self.prompt_slope_sd, 4),
            "incoherent by α": ", ".join(
                f"{a:+g}: {r:.2f}" for a, r in sorted(self.incoherence_by_alpha.items())
            ),
        }


def _responses(
    records: Iterable[Mapping[str, Any]],
) -> dict[tuple, list[tuple[float, str, float | None, bool]]]:
    """(vector, eval, layer) -> [(α, prompt id, value, incoherent)] over every response."""
    grouped: dict[tuple, list[tuple[float, str, float | None, bool]]] = defaultdict(list)
    for record in expand_baselines(records):
        ids = record.get("ids") or [""] * len(record["values"])
        if len(ids) != len(record["values"]):
            raise ValueError(
                f"a record of {record.get('vector')} has {len(record['values'])} values and {len(ids)} ids; "
                "the sweep file is corrupt"
            )
        key = (record["vector"], record["eval"], int(record["layer"]))
        for value, prompt, incoherent in zip(record["values"], ids, record["incoherent"], strict=True):
            grouped[key].append((float(record["alpha"]), str(prompt), value, bool(incoherent)))
    return grouped


def prompt_slopes(records: Iterable[Mapping[str, Any]]) -> list[PromptSlope]:
    """Per (vector, eval, layer, prompt): the OLS slope of that prompt's responses on α.

    Prompts with responses at fewer than two α values have no slope and are left out.
    """
    out = []
    for (vector, eval_name, layer), rows in sorted(_responses(records).items(), key=lambda kv: str(kv[0])):
        by_prompt: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for alpha, prompt, value, _ in rows:
            if value is not None:
                by_prompt[prompt].append((alpha, float(value)))
        for prompt, points in sorted(by_prompt.items()):
            if len({a for a, _ in points}) < 2:
                continue
            xs, ys = zip(*points, strict=True)
            out.append(PromptSlope(vector, eval_name, layer, prompt, ols_slope(xs, ys).slope, len(points)))
    return out


def reliability_table(
    records: Iterable[Mapping[str, Any]],
    *,
    expected_signs: Mapping[tuple[str, str], int] | None = None,
    sign_from: Mapping[str, str] | None = None,
    level: float = 0.95,
) -> list[Reliability]:
    """The reliability of every (vector, eval, layer) of a sweep.

    Args:
        records: the sweep's records (``steering.sweep.load_records``).
        expected_signs: ``{(vector, eval): +1 or -1}``, the direction each effect should have; default: the sign
            of the pooled slope.
        sign_from: ``{control: vector}``: the control expects, per eval, the sign its vector has here (its given
            expected sign, else its pooled slope's), e.g. ``{"u_Gold": "v_Gold"}`` for a norm-matched control.
        level: the anti-steerable interval's level.
    """
    records = list(records)
    responses = _responses(records)
    slopes: dict[tuple, list[float]] = defaultdict(list)
    for row in prompt_slopes(records):
        slopes[(row.vector, row.eval, row.layer)].append(row.slope)
    fits = {}
    for key, rows in sorted(responses.items(), key=lambda kv: str(kv[0])):
        points = [(a, float(v)) for a, _, v, _ in rows if v is not None]
        if len({a for a, _ in points}) >= 2:
            fits[key] = ols_slope(*zip(*points, strict=True))
    signs = {(v, e): 1 if fit.slope >= 0 else -1 for (v, e, _), fit in fits.items()}
    signs.update(expected_signs or {})
    for control, vector in (sign_from or {}).items():
        signs.update({(control, e): sign for (v, e), sign in list(signs.items()) if v == vector})
    out = []
    for key, fit in fits.items():
        vector, eval_name, layer = key
        sign = signs[(vector, eval_name)]
        if sign not in (1, -1):
            raise ValueError(f"expected sign of {(vector, eval_name)} must be +1 or -1; got {sign!r}")
        per_prompt = np.asarray(slopes.get(key, []), dtype=np.float64)
        n = int(per_prompt.size)
        anti = int((np.sign(per_prompt) == -sign).sum())
        low, high = wilson_interval(anti, n, level)
        incoherent: dict[float, list[bool]] = defaultdict(list)
        for alpha, _, _, flag in responses[key]:
            incoherent[alpha].append(flag)
        out.append(
            Reliability(
                vector=vector,
                eval=eval_name,
                layer=layer,
                n_prompts=n,
                pooled_slope=fit.slope,
                expected_sign=sign,
                anti_steerable=anti / n if n else math.nan,
                anti_ci_low=low,
                anti_ci_high=high,
                steerable=float((np.sign(per_prompt) == sign).sum() / n) if n else math.nan,
                variance_explained=fit.r**2 if not math.isnan(fit.r) else math.nan,
                prompt_slope_sd=float(per_prompt.std(ddof=1)) if n > 1 else math.nan,
                incoherence_by_alpha={a: sum(f) / len(f) for a, f in sorted(incoherent.items())},
            )
        )
    return out


__all__: Sequence[str] = (
    "PromptSlope",
    "Reliability",
    "consistency_table",
    "difference_consistency",
    "prompt_slopes",
    "reliability_table",
    "triplet_differences",
    "wilson_interval",
)
