"""probes.nulls: Eq. 1's permutation null is −0.5 on noise, rejects a planted axis, and matches Eq. 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes.extract import ClassActivations, aggregate
from probes.geometry import layer_cosines
from probes.nulls import eq1_cosine_null

CLASSES = ("Mold", "Gold", "Path")


def _noise(n: int = 60, d: int = 512, layers: int = 3, seed: int = 0) -> dict[str, dict[int, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return {c: {layer: torch.randn(n, d, generator=g) for layer in range(layers)} for c in CLASSES}


def test_the_null_on_pure_noise_is_minus_one_half_and_noise_is_not_rejected():
    null = eq1_cosine_null(_noise(), n_shuffles=300, seed=1)
    assert null.null_avg.mean() == pytest.approx(-0.5, abs=0.03)  # not 0: v_Mold and v_Gold share μ_Path
    assert abs(null.observed_avg - null.null_avg.mean()) < 3 * null.null_avg.std()
    assert null.p_avg > 0.01 and null.p_min > 0.01
    assert null.null_min.mean() < null.null_avg.mean()  # the minimum over layers sits lower still
    summary = null.summary()
    assert summary["n_shuffles"] == 300 and summary["avg"]["null_mean"] == pytest.approx(null.null_avg.mean())


def test_a_planted_reward_axis_gets_p_below_one_percent():
    acts = _noise(seed=2)
    axis = torch.randn(512, generator=torch.Generator().manual_seed(3))
    axis = axis / axis.norm()
    for layer in acts["Mold"]:
        acts["Mold"][layer] = acts["Mold"][layer] + 10.0 * axis
        acts["Gold"][layer] = acts["Gold"][layer] - 10.0 * axis
    null = eq1_cosine_null(acts, n_shuffles=200, seed=0)
    assert null.observed_min < -0.9
    assert null.p_avg < 0.01 and null.p_min < 0.01
    assert null.p_min == pytest.approx(1 / 201)  # no shuffle reaches it


def test_observed_cosines_are_eq1_exactly_and_shuffles_keep_the_triplets():
    acts = ClassActivations(_noise(n=20, d=16, layers=2, seed=4))
    vectors = aggregate(acts, "mean_diff")
    expected = layer_cosines(vectors["Mold"], vectors["Gold"]).cosines
    null = eq1_cosine_null(acts, n_shuffles=50, seed=5)
    for layer, value in null.observed.items():
        assert value == pytest.approx(expected[layer], abs=1e-6)
    again = eq1_cosine_null(acts, n_shuffles=50, seed=5)
    assert np.array_equal(null.null_avg, again.null_avg)  # seeded
    # a shuffle that maps every triplet to itself gives back the observation: the labels, not the data, move
    identity = eq1_cosine_null({c: {0: acts.activations[c][0][:1]} for c in CLASSES}, n_shuffles=200, seed=0)
    assert np.isclose(identity.null_avg, identity.observed_avg, atol=1e-9).any()  # one of the 3! orders
    with pytest.raises(ValueError, match="one size per class"):
        eq1_cosine_null(
            {"Mold": {0: torch.zeros(3, 2)}, "Gold": {0: torch.zeros(2, 2)}, "Path": {0: torch.zeros(3, 2)}}
        )
    with pytest.raises(ValueError, match="missing"):
        eq1_cosine_null({"Mold": {0: torch.zeros(3, 2)}})
