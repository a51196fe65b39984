"""Steering reliability: per-prompt slopes, anti-steerable share, R² of α, incoherence, consistency."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probes.extract import ClassActivations, aggregate
from steering.reliability import (
    consistency_table,
    difference_consistency,
    prompt_slopes,
    reliability_table,
    triplet_differences,
    wilson_interval,
)


def record(vector, alpha, values, ids, incoherent=None, eval_name="sentiment", layer=3):
    return {"vector": vector, "eval": eval_name, "layer": layer, "alpha": alpha, "values": values, "ids": ids,
            "incoherent": incoherent or [False] * len(values)}  # fmt: skip


def sweep():
    # prompts a, b rise with α (slopes 1 and 2); prompt c falls (slope -1); a shared α = 0 baseline
    records = [record(None, 0.0, [0.0, 0.0, 0.0], ["a", "b", "c"], [False, False, True], layer=None)]
    for alpha in (-2.0, 2.0):
        records.append(
            record("v", alpha, [alpha, 2 * alpha, -alpha], ["a", "b", "c"], [alpha > 0, False, False])
        )
    return records


def test_prompt_slopes_are_each_prompts_own_ols_slope_with_the_shared_baseline():
    slopes = {r.prompt_id: r.slope for r in prompt_slopes(sweep())}
    assert slopes == pytest.approx({"a": 1.0, "b": 2.0, "c": -1.0})
    assert {r.n for r in prompt_slopes(sweep())} == {3}  # -2, 0 (baseline), +2


def test_reliability_by_hand():
    (row,) = reliability_table(sweep())
    xs = [-2, -2, -2, 0, 0, 0, 2, 2, 2]
    ys = [-2, -4, 2, 0, 0, 0, 2, 4, -2]
    slope = np.polyfit(xs, ys, 1)[0]
    assert row.pooled_slope == pytest.approx(slope) and row.expected_sign == 1
    assert (
        row.n_prompts == 3
        and row.anti_steerable == pytest.approx(1 / 3)
        and row.steerable == pytest.approx(2 / 3)
    )
    assert (row.anti_ci_low, row.anti_ci_high) == pytest.approx(wilson_interval(1, 3))
    assert row.variance_explained == pytest.approx(np.corrcoef(xs, ys)[0, 1] ** 2)
    assert row.prompt_slope_sd == pytest.approx(np.std([1.0, 2.0, -1.0], ddof=1))
    assert row.incoherence_by_alpha == pytest.approx({-2.0: 0.0, 0.0: 1 / 3, 2.0: 1 / 3})
    # a control expected to go the other way: two of three prompts are anti-steerable
    (flipped,) = reliability_table(sweep(), expected_signs={("v", "sentiment"): -1})
    assert flipped.anti_steerable == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="must be \\+1 or -1"):
        reliability_table(sweep(), expected_signs={("v", "sentiment"): 0})
    assert "anti-steerable" in row.row()


def test_a_control_takes_its_vectors_sign():
    """u's own slope is negative (its values are v's negated); with sign_from it is judged against v's sign."""
    controls = [
        record("u", r["alpha"], [-x for x in r["values"]], r["ids"]) for r in sweep() if r["vector"] == "v"
    ]
    records = sweep() + controls
    own = {row.vector: row for row in reliability_table(records)}
    assert own["u"].expected_sign == -1 and own["u"].anti_steerable == pytest.approx(1 / 3)
    followed = {row.vector: row for row in reliability_table(records, sign_from={"u": "v"})}
    assert followed["u"].expected_sign == 1 and followed["u"].anti_steerable == pytest.approx(2 / 3)
    assert followed["v"] == own["v"]
    assert followed["u"].pooled_slope == pytest.approx(-own["v"].pooled_slope)


def test_wilson_interval_matches_the_closed_form():
    low, high = wilson_interval(0, 20)
    z = 1.959963984540054
    assert low == pytest.approx(0.0, abs=1e-15) and high == pytest.approx(z * z / 20 / (1 + z * z / 20))
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_difference_consistency_is_the_mean_pairwise_cosine():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 5, generator=g, dtype=torch.float64)
    unit = x / x.norm(dim=1, keepdim=True)
    cos = unit @ unit.T
    want = float((cos.sum() - cos.diagonal().sum()) / (7 * 6))
    assert difference_consistency(x) == pytest.approx(want, abs=1e-12)
    assert difference_consistency(torch.ones(4, 3)) == pytest.approx(1.0)
    assert difference_consistency(torch.cat([torch.zeros(1, 3), torch.eye(3)[:2]])) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="two non-zero"):
        difference_consistency(torch.zeros(3, 2))


def test_triplet_differences_average_to_the_eq1_vector():
    g = torch.Generator().manual_seed(1)
    acts = ClassActivations({c: {0: torch.randn(6, 4, generator=g), 2: torch.randn(6, 4, generator=g)}
                             for c in ("Mold", "Gold", "Path")})  # fmt: skip
    vectors = aggregate(acts, "mean_diff")
    for concept in ("Mold", "Gold"):
        diffs = triplet_differences(acts, concept, 2)
        assert torch.allclose(diffs.mean(0).float(), vectors[concept][2], atol=1e-6)
    table = consistency_table(acts, {"Mold": 0, "Gold": 2})
    assert table["Gold"] == pytest.approx(difference_consistency(triplet_differences(acts, "Gold", 2)))
    with pytest.raises(KeyError, match="no class"):
        triplet_differences(acts, "Nope", 0)
