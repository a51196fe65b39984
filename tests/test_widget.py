"""The steering widget: the comparison it shows, and its controls."""

from __future__ import annotations

import pytest
import torch

from probes.concept_vector import ConceptVector
from probes.models import tiny_model
from steering.widget import compare_steered, steering_widget


@pytest.fixture(scope="module")
def model_tok():
    model, tok = tiny_model("llama", n_layers=4)
    return model.eval(), tok


def vector(seed, layers):
    g = torch.Generator().manual_seed(seed)
    return ConceptVector({layer: torch.randn(64, generator=g) * 20 for layer in layers}, concept=f"c{seed}")


def test_compare_steered_is_the_plain_answer_at_alpha_zero(model_tok):
    model, tok = model_tok
    v = vector(0, [1, 2])
    zero = compare_steered(model, tok, v, name="v", layer=1, alpha=0.0, max_new_tokens=6)
    assert zero.steered == zero.unsteered and zero.steered_score == zero.unsteered_score
    pushed = compare_steered(model, tok, v, name="v", layer=1, alpha=8.0, max_new_tokens=6)
    assert pushed.unsteered == zero.unsteered and pushed.steered != pushed.unsteered
    assert "v at layer 1, α = +8" in pushed.html() and "&lt;" not in pushed.prompt


def test_the_widget_follows_its_controls(model_tok):
    model, tok = model_tok
    box = steering_widget(model, tok, {"a": vector(1, [0, 1, 2]), "b": vector(2, [3])}, max_new_tokens=4)
    choose, layer, alpha = box.children[0].children
    assert list(layer.options) == [0, 1, 2] and layer.value == 1
    choose.value = "b"
    assert list(layer.options) == [3] and layer.value == 3
    alpha.value = 0.0
    result = box.run()
    assert (result.vector, result.layer, result.alpha) == ("b", 3, 0.0) and result.steered == result.unsteered
    with pytest.raises(ValueError, match="at least one vector"):
        steering_widget(model, tok, {})
