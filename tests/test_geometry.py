"""probes.geometry: per-layer cosines, the Path-reference cosine and centred class means (exact maths)."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import pytest
import torch

from maze_env import Tile
from probes.concept_vector import ConceptVector, WidthMismatchError
from probes.geometry import (
    GeometryError,
    LayerCosines,
    analysis_layer,
    centred_class_cosines,
    class_means,
    layer_cosines,
    path_reference_cosines,
)
from probes.plots import centred_geometry_heatmap, layer_cosine_curves


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a.double() @ b.double() / (a.double().norm() * b.double().norm()))


def test_layer_cosines_match_hand_computation_and_summaries():
    g = torch.Generator().manual_seed(0)
    mold = {layer: torch.randn(16, generator=g) for layer in range(5)}
    gold = {layer: torch.randn(16, generator=g) for layer in range(5)}
    result = layer_cosines(mold, gold)
    expected = {layer: _cos(mold[layer], gold[layer]) for layer in range(5)}
    assert result.cosines == pytest.approx(expected, abs=1e-12)
    assert result.avg == pytest.approx(sum(expected.values()) / 5, abs=1e-12)
    assert result.min == pytest.approx(min(expected.values()), abs=1e-12)
    assert result.argmin == min(expected, key=expected.get)
    assert result.summary()["argmin"] == result.argmin


def test_eq1_without_path_gives_exactly_antiparallel_vectors():
    # Paper footnote: with only Mold and Gold, v_Gold = -v_Mold, so the cosine is -1 at every layer.
    g = torch.Generator().manual_seed(1)
    acts = {c: {layer: torch.randn(10, 8, generator=g) for layer in range(3)} for c in ("Mold", "Gold")}
    v_mold = {layer: acts["Mold"][layer].mean(0) - acts["Gold"][layer].mean(0) for layer in range(3)}
    v_gold = {layer: acts["Gold"][layer].mean(0) - acts["Mold"][layer].mean(0) for layer in range(3)}
    result = layer_cosines(v_mold, v_gold)
    assert all(c == pytest.approx(-1.0, abs=1e-12) for c in result.cosines.values())


def test_layer_cosines_accept_concept_vectors_and_check_family():
    a = ConceptVector({0: torch.tensor([1.0, 0.0]), 2: torch.tensor([0.0, 1.0])}, model_family="llama/L3/d2")
    b = ConceptVector({0: torch.tensor([1.0, 1.0]), 2: torch.tensor([0.0, -1.0])}, model_family="llama/L3/d2")
    result = layer_cosines(a, b)
    assert result.layers == [0, 2]
    assert result.cosines[0] == pytest.approx(1 / math.sqrt(2))
    assert (result.min, result.argmin) == (-1.0, 2)
    other = ConceptVector({0: torch.tensor([1.0, 0.0])}, model_family="gemma3/L3/d2")
    with pytest.raises(GeometryError, match="famil"):
        layer_cosines(a, other)


def test_layer_cosine_errors_are_clear():
    with pytest.raises(GeometryError, match="share no layers"):
        layer_cosines({0: torch.ones(2)}, {1: torch.ones(2)})
    with pytest.raises(GeometryError, match="zero vector"):
        layer_cosines({0: torch.zeros(2)}, {0: torch.ones(2)})
    with pytest.raises(WidthMismatchError):
        layer_cosines({0: torch.ones(2)}, {0: torch.ones(3)})
    with pytest.raises(GeometryError):
        LayerCosines({0: float("nan")})


def test_first_crossing_finds_sign_change():
    curve = LayerCosines({0: 0.3, 1: 0.1, 2: -0.2, 3: -0.6})
    assert curve.first_crossing() == 2
    assert LayerCosines({0: 0.3, 1: 0.2}).first_crossing() is None


def test_path_reference_cosine_hand_value():
    acts = {
        "mold": {0: torch.tensor([[3.0, 1.0], [1.0, 1.0]])},  # mean (2, 1)
        "GOLD": {0: torch.tensor([1.0, 3.0])},
        Tile.PATH: {0: torch.tensor([1.0, 1.0])},
    }
    result = path_reference_cosines(acts)
    # (1, 0) vs (0, 2): orthogonal
    assert result.cosines == {0: 0.0}
    acts["GOLD"] = {0: torch.tensor([3.0, 2.0])}  # (2, 1) vs (1, 0)
    assert path_reference_cosines(acts).cosines[0] == pytest.approx(2 / math.sqrt(5))


def test_equidistant_classes_give_minus_half():
    # Vertices of an equilateral triangle, shifted off the origin: centred cosines are exactly -0.5.
    shift = torch.tensor([5.0, -2.0, 7.0], dtype=torch.float64)
    vertices = [
        torch.tensor([math.cos(a), math.sin(a), 0.0], dtype=torch.float64)
        for a in (0.0, 2 * math.pi / 3, 4 * math.pi / 3)
    ]
    acts = {c: {layer: v + shift for layer in range(6)} for c, v in zip(("Mold", "Gold", "Path"), vertices)}
    geometry = centred_class_cosines(acts)
    assert geometry.layer == analysis_layer(6) == 4
    for pair, value in geometry.pairs().items():
        assert value == pytest.approx(-0.5, abs=1e-12), pair
    assert torch.allclose(torch.diagonal(geometry.cosines), torch.ones(3, dtype=torch.float64))


def test_centred_cosines_match_hand_computation():
    g = torch.Generator().manual_seed(2)
    acts = {c: {3: torch.randn(7, 12, generator=g) + i} for i, c in enumerate(("Mold", "Gold", "Path"))}
    geometry = centred_class_cosines(acts, layer=3)
    mu = {c: acts[c][3].double().mean(0) for c in acts}
    centre = (mu["Mold"] + mu["Gold"] + mu["Path"]) / 3
    expected = _cos(mu["Mold"] - centre, mu["Gold"] - centre)
    assert geometry.pair("Mold", "Gold") == pytest.approx(expected, abs=1e-12)
    assert geometry.pair("gold", "mold") == pytest.approx(expected, abs=1e-12)
    assert geometry.norms[2] == pytest.approx(float((mu["Path"] - centre).norm()))


def test_centred_cosines_errors():
    acts = {"Mold": {0: torch.ones(3)}, "Gold": {0: torch.ones(3)}}
    with pytest.raises(GeometryError, match="missing classes"):
        centred_class_cosines(acts, layer=0)
    acts["Path"] = {0: torch.ones(3)}
    with pytest.raises(GeometryError, match="zero"):
        centred_class_cosines(acts, layer=0)
    acts["Path"] = {0: torch.zeros(3)}
    with pytest.raises(GeometryError, match="layer 5"):
        centred_class_cosines(acts, layer=5)
    with pytest.raises(GeometryError, match="no samples"):
        class_means({"Mold": {0: torch.zeros(0, 3)}})
    with pytest.raises(GeometryError, match="NaN"):
        class_means({"Mold": {0: torch.tensor([float("nan"), 0.0])}})


def test_analysis_layers_match_the_paper():
    assert analysis_layer(36) == 24 and analysis_layer(36, 5, 6) == 30
    assert analysis_layer(30) == 20 and analysis_layer(30, 5, 6) == 25
    with pytest.raises(GeometryError):
        analysis_layer(0)


def test_geometry_accepts_extract_class_activations():
    from probes.extract import ClassActivations

    g = torch.Generator().manual_seed(3)
    raw = {
        c: {0: torch.randn(4, 5, generator=g), 1: torch.randn(4, 5, generator=g)}
        for c in ("Mold", "Gold", "Path")
    }
    wrapped = ClassActivations(raw)
    assert centred_class_cosines(wrapped, layer=1).pairs() == centred_class_cosines(raw, layer=1).pairs()
    assert path_reference_cosines(wrapped).cosines == path_reference_cosines(raw).cosines


def test_plots_return_figures():
    trained = LayerCosines({0: 0.1, 1: -0.5, 2: -0.9})
    fig = layer_cosine_curves({"trained": trained, "control": {0: 0.2, 1: 0.1, 2: -0.1}})
    assert isinstance(fig, go.Figure) and [t.name for t in fig.data] == ["trained", "control"]
    assert list(fig.data[0].y) == [0.1, -0.5, -0.9]
    acts = {c: {0: torch.eye(3)[i]} for i, c in enumerate(("Mold", "Gold", "Path"))}
    heat = centred_geometry_heatmap(centred_class_cosines(acts, layer=0))
    assert heat.data[0].z.shape == (3, 3)
