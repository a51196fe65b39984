"""Aggregators: exact mean differences by hand, planted directions recovered by every method."""

from __future__ import annotations

import pytest
import torch

from probes.aggregators import (
    AggregationError,
    logistic,
    mean_diff,
    pca_diff,
    resolve,
    single_reference,
)


def hand_classes() -> dict[str, torch.Tensor]:
    return {
        "Mold": torch.tensor([[2.0, 0.0, 1.0], [4.0, 2.0, 1.0]]),
        "Gold": torch.tensor([[0.0, 1.0, 0.0]]),
        "Path": torch.tensor([[0.0, -1.0, 2.0], [0.0, 3.0, 1.0], [3.0, 0.0, 0.0]]),
    }


def test_mean_diff_equals_hand_computation():
    acts = hand_classes()
    # μ_Mold = (3, 1, 1); pooled Gold ∪ Path = 4 rows, mean (3/4, 3/4, 3/4).
    assert torch.allclose(mean_diff()(acts, "Mold"), torch.tensor([2.25, 0.25, 0.25]))
    # μ_Gold = (0, 1, 0); pooled Mold ∪ Path = 5 rows, sum (9, 4, 5).
    assert torch.allclose(mean_diff()(acts, "Gold"), torch.tensor([-9 / 5, 1 - 4 / 5, -1.0]))
    # Single reference: μ_Mold − μ_Path = (3, 1, 1) − (1, 2/3, 1).
    assert torch.allclose(single_reference("Path")(acts, "Mold"), torch.tensor([2.0, 1 / 3, 0.0]))
    assert mean_diff().name == "mean_diff" and single_reference().name == "single_reference:Path"


def test_without_path_gold_is_minus_mold():
    """The paper's footnote: with only two classes, v_Gold = −v_Mold exactly."""
    acts = {k: v for k, v in hand_classes().items() if k != "Path"}
    assert torch.allclose(mean_diff()(acts, "Gold"), -mean_diff()(acts, "Mold"))


def planted(seed: int = 0, n: int = 2000, d: int = 16) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g)
    v = v / v.norm()
    offset = torch.randn(d, generator=g) * 3  # a shared mean the methods must ignore
    noise = lambda: torch.randn(n, d, generator=g) + offset  # noqa: E731
    # Positives shifted along v with a varying amount (so PCA has variance to find), negatives not.
    # Overlapping classes (a probe setting): logistic regression is well posed, PCA sees the shift.
    amount = 2.0 + torch.rand(n, 1, generator=g)
    return {"Mold": noise() + amount * v, "Gold": noise() - 0.5 * v, "Path": noise()}, v


@pytest.mark.parametrize(
    "aggregator",
    [mean_diff(), single_reference("Path"), pca_diff(), pca_diff(ref="Path"), logistic(), logistic(C=0.1)],
    ids=["mean_diff", "single_reference", "pca_diff", "pca_diff_ref", "logistic", "logistic_C"],
)
def test_planted_direction_is_recovered(aggregator):
    acts, v = planted()
    direction = aggregator(acts, "Mold")
    cos = torch.nn.functional.cosine_similarity(direction.double(), v.double(), dim=0)
    assert cos > 0.99, f"{aggregator.name}: cos={cos:.4f}"
    # Positives project higher than negatives (sign convention), norm on the mean-difference scale.
    assert direction @ acts["Mold"].mean(0) > direction @ acts["Path"].mean(0)
    assert 2.0 < float(direction.norm()) < 3.0  # shift 2.5 (vs Path) to 2.75 (vs pooled)


def test_seeded_methods_are_reproducible():
    acts, _ = planted(seed=3, n=200)
    assert torch.equal(pca_diff(seed=5)(acts, "Gold"), pca_diff(seed=5)(acts, "Gold"))
    assert torch.equal(logistic(seed=1)(acts, "Gold"), logistic(seed=1)(acts, "Gold"))


def test_errors_name_the_problem():
    acts = hand_classes()
    with pytest.raises(AggregationError, match="empty"):
        mean_diff()({**acts, "Gold": torch.zeros(0, 3)}, "Mold")
    with pytest.raises(AggregationError, match="NaN"):
        mean_diff()({**acts, "Path": torch.full((2, 3), float("nan"))}, "Mold")
    with pytest.raises(AggregationError, match="unknown target"):
        mean_diff()(acts, "Lava")
    with pytest.raises(AggregationError, match="reference class 'Lava'"):
        single_reference("Lava")(acts, "Mold")
    with pytest.raises(AggregationError, match="target itself"):
        single_reference("Mold")(acts, "Mold")
    with pytest.raises(AggregationError, match="two classes"):
        mean_diff()({"Mold": acts["Mold"]}, "Mold")
    with pytest.raises(AggregationError, match="width"):
        mean_diff()({**acts, "Gold": torch.zeros(1, 4)}, "Mold")
    with pytest.raises(AggregationError, match="unknown method"):
        resolve("lda")
    assert resolve("pca_diff").name == "pca_diff"
