"""Steering operators: hand-computed values and identities."""

from __future__ import annotations

import math

import pytest
import torch

from steering.operators import (
    ablate,
    ablate_then_add,
    add,
    norm_matched,
    norm_matched_alpha,
    operator_by_name,
)


def test_add_is_exact_and_alpha_zero_is_identity() -> None:
    h = torch.randn(2, 5, 8)
    v = torch.randn(8)
    assert torch.equal(add()(h, v, 2.5), h + 2.5 * v)
    assert torch.equal(add()(h, v, 0.0), h)


def test_ablate_removes_component_along_direction() -> None:
    h = torch.randn(3, 4, 16, dtype=torch.float64)
    v = torch.randn(16, dtype=torch.float64) * 7.0
    out = ablate()(h, v, 123.0)  # alpha is ignored
    unit = v / v.norm()
    assert (out @ unit).abs().max() < 1e-12
    # the orthogonal part is unchanged
    h_perp = h - (h @ unit).unsqueeze(-1) * unit
    assert torch.allclose(out, h_perp, atol=1e-12)


def test_ablate_hand_computed() -> None:
    h = torch.tensor([[3.0, 4.0]])
    assert torch.equal(ablate()(h, torch.tensor([2.0, 0.0]), 0.0), torch.tensor([[0.0, 4.0]]))
    assert torch.equal(ablate_then_add()(h, torch.tensor([2.0, 0.0]), 1.5), torch.tensor([[3.0, 4.0]]))


def test_ablate_then_add_sets_projection_to_alpha_norm() -> None:
    h = torch.randn(2, 3, 8, dtype=torch.float64)
    v = torch.randn(8, dtype=torch.float64)
    out = ablate_then_add()(h, v, -2.0)
    unit = v / v.norm()
    assert torch.allclose(out @ unit, torch.full((2, 3), -2.0 * float(v.norm()), dtype=torch.float64))


def test_ablate_zero_direction_raises() -> None:
    with pytest.raises(ValueError, match="norm"):
        ablate()(torch.ones(1, 2), torch.zeros(2), 0.0)


def test_norm_matched_alpha_hand_computed() -> None:
    v = torch.tensor([3.0, 4.0])  # |v| = 5
    u = torch.tensor([0.0, 2.0])  # |u| = 2
    beta = norm_matched_alpha(v, u, 4.0)
    assert beta == pytest.approx(10.0)
    assert float((beta * u).norm()) == pytest.approx(4.0 * float(v.norm()))
    # dicts need a layer
    assert norm_matched_alpha({3: v}, {3: u}, -2.0, layer=3) == pytest.approx(-5.0)
    with pytest.raises(ValueError, match="layer"):
        norm_matched_alpha({3: v}, {3: u}, 1.0)
    with pytest.raises(KeyError, match="layer 4"):
        norm_matched_alpha({3: v}, {3: u}, 1.0, layer=4)
    with pytest.raises(ValueError, match="finite"):
        norm_matched_alpha(v, u, math.nan)
    with pytest.raises(ValueError, match="> 0"):
        norm_matched_alpha(v, torch.zeros(2), 1.0)


def test_norm_matched_rescales() -> None:
    u = torch.tensor([0.0, 2.0])
    v = torch.tensor([3.0, 4.0])
    assert torch.allclose(norm_matched(u, v), torch.tensor([0.0, 5.0]))


def test_operator_by_name() -> None:
    assert operator_by_name("ablate").__name__ == "ablate"
    with pytest.raises(ValueError, match="unknown steering operator 'clamp'"):
        operator_by_name("clamp")
