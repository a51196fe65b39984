"""Composition: several vectors in one steering hook, with every parent in the provenance."""

from __future__ import annotations

import pytest
import torch

from probes import positions as P
from probes.concept_vector import ConceptVector
from probes.models import tiny_model
from steering.apply import apply
from steering.compose import combine


def vec(concept, layers, seed):
    g = torch.Generator().manual_seed(seed)
    return ConceptVector({layer: torch.randn(64, generator=g) for layer in layers}, concept=concept,
                         dataset_hash=f"h{seed}")  # fmt: skip


def test_combine_is_the_scaled_sum_over_the_union_of_layers_with_both_parents():
    gold, mold = vec("Gold", [1, 2], 0), vec("Mold", [2, 3], 1)
    c = combine([(gold, 2.0), (mold, -0.5)])
    assert c.layers == [1, 2, 3]
    assert torch.equal(c[1], gold[1] * 2.0) and torch.equal(c[3], mold[3] * -0.5)
    assert torch.equal(c[2], gold[2] * 2.0 + mold[2] * -0.5)
    parents = c.metadata["combined_from"]
    assert [p["concept"] for p in parents] == ["2.0*(Gold)", "-0.5*(Mold)"]
    diff = gold - mold  # arithmetic carries both parents too
    assert {p["dataset_hash"] for p in diff.metadata["combined_from"]} == {"h0", "h1"}
    with pytest.raises(ValueError, match="at least one"):
        combine([])
    with pytest.raises(ValueError, match="finite"):
        combine([(gold, float("inf"))])


def test_steering_with_the_combination_adds_every_term_at_its_layer():
    model, tok = tiny_model("llama", n_layers=4)
    model.eval()
    a, b = vec("a", [1], 2), vec("b", [1, 3], 3)
    c = combine([(a, 1.5), (b, -2.0)])
    batch = P.encode_texts(tok, ["I went north.", "A wall is here."], padding_side="right")
    manual = {1: a[1] * 1.5 + b[1] * -2.0, 3: b[3] * -2.0}
    with torch.no_grad():
        with apply(model, c, positions="all"):
            got = model(**batch).logits
        with apply(model, manual, positions="all"):
            want = model(**batch).logits
    assert torch.equal(got, want)
