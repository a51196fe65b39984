"""probes.nulls: Eq. 1's permutation null is −0.5 on noise, rejects a planted axis, and matches Eq. 1."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes.extract import ClassActivations, aggregate
from probes.geometry import layer_cosines
from probes.nulls import (
    TripletResampler,
    centred_cosine,
    cosine_with,
    emotion_scatter_stats,
    eq1_cosine,
    eq1_cosine_null,
    group_d,
    lens_auroc,
    p_value,
    path_reference_cosine,
    projection_d,
    q_spearman,
)
from probes.ols import ols_slope
from probes.selection import auroc, cohens_d

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


# -- the triplet resampler and the readouts evaluated on it -------------------------------------------------


def test_the_noise_levels_of_each_geometry_number():
    r = TripletResampler(_noise(n=60, d=512, layers=1, seed=6), n_shuffles=300, n_boot=0, seed=2)
    assert r.statistic(eq1_cosine, 0).null_mean == pytest.approx(-0.5, abs=0.03)
    assert r.statistic(path_reference_cosine, 0).null_mean == pytest.approx(0.5, abs=0.03)
    assert r.statistic(centred_cosine(0, 1), 0).null_mean == pytest.approx(-0.5, abs=0.03)


def test_bootstrap_means_are_the_means_of_resampled_triplets():
    acts = _noise(n=7, d=5, layers=2, seed=7)
    r = TripletResampler(acts, n_shuffles=3, n_boot=4, seed=9)
    observed, null, boot = r.means(1)
    assert torch.allclose(observed, torch.stack([acts[c][1].double().mean(0) for c in CLASSES]))
    counts = r._boot[2] * 7  # the draw's multiplicity of each triplet: the same indices in every class
    index = torch.repeat_interleave(torch.arange(7), counts.round().long())
    for j, c in enumerate(CLASSES):
        assert torch.allclose(boot[2, j], acts[c][1].double()[index].mean(0))
    # a shuffle moves whole triplets' labels: the sum over the three labels is the sum over the classes
    assert torch.allclose(null.sum(1), observed.sum(0).expand(3, -1))
    ci = r.statistic(eq1_cosine, 1).ci()
    assert ci[0] <= ci[1]


def test_p_values_count_the_observation_as_one_of_the_null():
    null = np.array([0.0, 1.0, 2.0, 3.0])
    assert p_value(null, 0.5, "less") == pytest.approx(2 / 5)
    assert p_value(null, 2.5, "greater") == pytest.approx(2 / 5)
    assert p_value(null, 1.5, "two-sided") == pytest.approx(1.0)
    assert p_value(null, 10.0, "two-sided") == pytest.approx(1 / 5)
    with pytest.raises(ValueError, match="alternative"):
        p_value(null, 0.0, "both")


def test_vector_readouts_on_the_observed_labels_are_the_plain_readouts():
    acts = ClassActivations(_noise(n=12, d=8, layers=2, seed=8))
    vectors = aggregate(acts, "mean_diff")
    r = TripletResampler(acts, n_shuffles=20, n_boot=10, seed=3)
    axis = torch.randn(8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v_gold = vectors["Gold"][1].double()
    assert cosine_with(r, "Gold", 1, axis, "greater").observed == pytest.approx(
        float(v_gold @ axis / v_gold.norm() / axis.norm())
    )
    emotions = torch.randn(9, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))

    def cosines(v):
        v = v.double()
        return (emotions @ v / emotions.norm(dim=1) / v.norm()).numpy()

    fit = ols_slope(cosines(vectors["Mold"][1]), cosines(vectors["Gold"][1]))
    slope, corr = emotion_scatter_stats(r, 1, emotions)
    assert slope.observed == pytest.approx(fit.slope) and corr.observed == pytest.approx(fit.r)
    assert slope.null.shape == (20,) and slope.boot.shape == (10,)
    pos, neg = torch.randn(6, 8, generator=torch.Generator().manual_seed(4)), torch.randn(5, 8)
    v_mold = vectors["Mold"][1].double()
    d = projection_d(r, "Mold", 1, pos, neg, "less")
    assert d.observed == pytest.approx(
        cohens_d((pos.double() @ v_mold).numpy(), (neg.double() @ v_mold).numpy())
    )
    assert projection_d(r, "Mold", 1, pos, neg, "less").boot.tolist() == d.boot.tolist()  # seeded
    w_u = torch.randn(8, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    fail, good = [0, 3, 5, 7], [1, 2, 9, 11, 20]
    score = lens_auroc(r, "Mold", 1, lambda v: v.double() @ w_u[:, fail + good], fail, good, "greater")
    lens = v_mold @ w_u
    assert score.observed == pytest.approx(auroc(lens[fail].numpy(), lens[good].numpy()))
    with pytest.raises(ValueError, match="Mold, Gold or Path"):
        cosine_with(r, "Lava", 1, axis, "less")


def test_a_planted_axis_is_found_by_every_vector_readout():
    acts = _noise(n=40, d=64, layers=1, seed=10)
    axis = torch.zeros(64)
    axis[0] = 1.0
    acts["Mold"][0] = acts["Mold"][0] - 6.0 * axis
    acts["Gold"][0] = acts["Gold"][0] + 6.0 * axis
    r = TripletResampler(acts, n_shuffles=100, n_boot=50, seed=0)
    along = cosine_with(r, "Gold", 0, axis, "greater")
    assert along.observed > 0.9 and along.p == pytest.approx(1 / 101)
    low, high = along.ci()
    assert low > 0.8 and high <= 1.0
    gold_final = torch.randn(20, 64) + 3.0 * axis
    mold_final = torch.randn(20, 64) - 3.0 * axis
    d = projection_d(r, "Gold", 0, gold_final, mold_final, "greater")
    assert d.observed > 3 and d.p < 0.02 and d.ci()[0] > 2


def test_group_d_is_cohens_d_with_a_label_null_and_an_item_interval():
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.5, 1.0, 30), rng.normal(0.0, 1.0, 25)
    d = group_d(pos, neg, "greater", n_shuffles=300, n_boot=200, seed=1)
    assert d.observed == pytest.approx(cohens_d(pos, neg))
    assert abs(d.null_mean) < 0.1 and d.p < 0.01
    low, high = d.ci()
    assert low < d.observed < high
    same = group_d(rng.normal(0, 1, 30), rng.normal(0, 1, 30), "two-sided", n_shuffles=300, seed=2)
    assert same.p > 0.01
    with pytest.raises(ValueError, match=">= 2 items"):
        group_d([1.0], [0.0, 1.0], "less")


def test_q_spearman_is_the_pooled_centred_spearman_with_a_within_state_null():
    from probes.q_readout import q_correlation

    rng = np.random.default_rng(3)
    q = rng.normal(size=(50, 4))
    read = q + rng.normal(scale=0.5, size=(50, 4)) + rng.normal(size=(50, 1))  # plus a per-state constant
    est = q_spearman(read, q, n_shuffles=200, n_boot=100, seed=0)
    assert est.observed == pytest.approx(q_correlation(read, q).pooled)
    assert abs(est.null_mean) < 0.05 and est.p == pytest.approx(1 / 201)
    assert est.ci()[0] > 0.5
    noise = q_spearman(rng.normal(size=(50, 4)), q, n_shuffles=200, n_boot=0, seed=1)
    assert noise.p > 0.01 and noise.boot.size == 0
