"""probes.selection: hand-checked AUROC, Cohen's d, histogram overlap and the paper's ℓ* rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes.concept_vector import ConceptVector
from probes.extract import ClassActivations
from probes.selection import (
    SelectionError,
    _paper_rule,
    auroc,
    best_mean_auroc_layer,
    cohens_d,
    histogram_overlap,
    layer_metrics,
    select_layer,
)


def test_auroc_by_hand_with_ties():
    # Pairs: 3>1, 3>2, 2>1, 2=2 -> (3 + 0.5) / 4.
    assert auroc(torch.tensor([3.0, 2.0]), torch.tensor([1.0, 2.0])) == pytest.approx(0.875)
    assert auroc([5.0, 6.0], [1.0]) == 1.0 and auroc([1.0], [5.0, 6.0]) == 0.0
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.5, 1, 300).round(1), rng.normal(0, 1, 200).round(1)
    expected = sklearn_metrics.roc_auc_score([1] * 300 + [0] * 200, np.concatenate([pos, neg]))
    assert auroc(pos, neg) == pytest.approx(expected, abs=1e-12)


def test_cohens_d_by_hand():
    assert cohens_d([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(-3.0)
    # var_pos = 4 (n=3), var_neg = 1 (n=2): pooled = sqrt((2*4 + 1*1)/3) = sqrt(3).
    assert cohens_d([0.0, 2.0, 4.0], [0.0, 1.0 * 2**0.5]) == pytest.approx((2 - 2**0.5 / 2) / 3**0.5)
    assert cohens_d([1.0, 1.0], [1.0, 1.0]) == 0.0
    with pytest.raises(SelectionError, match="NaN"):
        cohens_d([float("nan"), 1.0], [1.0])


def test_histogram_overlap_by_hand():
    assert histogram_overlap([0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], bins=2) == pytest.approx(0.5)
    assert histogram_overlap([0.0, 0.1], [0.9, 1.0]) == 0.0
    assert histogram_overlap([0.3, 0.4, 0.5], [0.5, 0.3, 0.4]) == pytest.approx(1.0)
    assert histogram_overlap([2.0], [2.0]) == 1.0
    with pytest.raises(SelectionError, match="empty"):
        histogram_overlap([], [1.0])


def test_paper_rule_floor_of_mean_of_argmaxes():
    layers = [0, 1, 2, 3, 4, 5]
    auroc_values = np.array([0.5, 0.6, 0.7, 0.8, 0.95, 0.9])  # argmax 4
    d_values = np.array([0.1, -0.2, 0.5, 1.0, 1.5, -2.0])  # argmax |d| 5 (sign ignored)
    overlap = np.array([0.9, 0.8, 0.1, 0.3, 0.2, 0.4])  # argmin 2
    assert _paper_rule(layers, auroc_values, d_values, overlap) == (4 + 5 + 2) // 3 == 3
    # Non-contiguous layers: nearest evaluated layer, lower on ties.
    assert _paper_rule([0, 10, 20], np.array([0, 1, 0]), np.array([0, 0, 1]), np.array([0, 1, 1])) == 10
    assert _paper_rule([0, 4, 8], np.array([1, 0, 0]), np.array([0, 1, 0]), np.array([1, 1, 0])) == 4


def held_out_with_separation_at(layer_sep: int, n_layers: int = 4, n: int = 200, d: int = 8):
    g = torch.Generator().manual_seed(0)
    v = torch.zeros(d)
    v[0] = 1.0
    acts = {"Mold": {}, "Gold": {}, "Path": {}}
    for layer in range(n_layers):
        shift = 4.0 if layer == layer_sep else 0.3 * layer / n_layers
        for name in acts:
            base = torch.randn(n, d, generator=g) + 5.0  # offset so cosines are informative
            if name == "Mold":
                base[:, 0] += shift
            acts[name][layer] = base
    vector = ConceptVector({layer: v.clone() for layer in range(n_layers)}, concept="Mold")
    return vector, ClassActivations(acts)


def test_select_layer_picks_the_separated_layer_and_matches_hand_metrics():
    vector, held_out = held_out_with_separation_at(2)
    sel = select_layer(vector, held_out)
    assert sel.layer == 2 and sel.best_auroc_layer == sel.best_d_layer == sel.best_overlap_layer == 2
    assert sel.auroc[2] > 0.99 and sel.abs_cohens_d[2] > 3 and sel.overlap[2] < sel.overlap[0]
    assert sel.n_positive == 200 and sel.n_negative == 400 and sel.concept == "Mold"
    # Layer 1 by hand: projections on v = e0 are the first coordinates.
    pos = held_out.activations["Mold"][1][:, 0]
    neg = torch.cat([held_out.activations["Gold"][1][:, 0], held_out.activations["Path"][1][:, 0]])
    assert sel.auroc[1] == pytest.approx(auroc(pos, neg))
    assert sel.cohens_d[1] == pytest.approx(cohens_d(pos, neg))
    cos_pos = pos / held_out.activations["Mold"][1].norm(dim=1)
    cos_neg = neg / torch.cat([held_out.activations[k][1] for k in ("Gold", "Path")]).norm(dim=1)
    assert sel.overlap[1] == pytest.approx(histogram_overlap(cos_pos, cos_neg, 50))
    # Single reference: negatives are Path only.
    ref = select_layer(vector, held_out, reference="Path")
    assert ref.n_negative == 200
    assert set(sel.as_dict()) >= {"layer", "auroc", "cohens_d", "overlap"}


def test_best_mean_auroc_layer_and_errors():
    vector, held_out = held_out_with_separation_at(3)
    mold = select_layer(vector, held_out)
    gold = select_layer(vector.replace(concept="Gold"), held_out)
    assert best_mean_auroc_layer(mold, gold) in mold.layers
    assert best_mean_auroc_layer(mold) == 3
    with pytest.raises(SelectionError, match="target class"):
        select_layer(vector.replace(concept="Lava"), held_out)
    with pytest.raises(SelectionError, match="missing"):
        layer_metrics(vector, {0: torch.zeros(2, 8)}, {0: torch.zeros(2, 8)}, layers=[0, 1])
    with pytest.raises(SelectionError, match="zero"):
        layer_metrics({0: torch.zeros(8)}, {0: torch.ones(2, 8)}, {0: torch.ones(2, 8)})


def test_within_applies_the_paper_rule_to_the_candidate_layers_only():
    vector, held_out = held_out_with_separation_at(0, n_layers=6)
    sel = select_layer(vector, held_out)
    assert sel.layer == 0 and sel.candidates is None
    top = sel.within([5, 3, 4])
    # the rule by hand over layers 3..5: each argmax / argmin taken among them
    idx = [3, 4, 5]
    by_hand = _paper_rule(idx, sel.auroc[idx], sel.cohens_d[idx], sel.overlap[idx])
    assert top.layer == by_hand and top.layer in idx and top.candidates == [3, 4, 5]
    assert top.layers == sel.layers and np.array_equal(top.auroc, sel.auroc)  # curves stay complete
    assert top.as_dict()["candidates"] == [3, 4, 5] and sel.as_dict()["candidates"] is None
    assert sel.within(sel.layers).layer == sel.layer
    with pytest.raises(SelectionError, match=r"candidate layers \[7\]"):
        sel.within([5, 7])
    with pytest.raises(SelectionError, match="candidate layers"):
        sel.within([])
    # the emotion layer among candidates: argmax of the mean AUROC over them (first on ties)
    gold = select_layer(vector.replace(concept="Gold"), held_out)
    mean = (sel.auroc + gold.auroc) / 2
    assert best_mean_auroc_layer(sel, gold, candidates=[3, 4, 5]) == 3 + int(np.argmax(mean[3:]))
    assert best_mean_auroc_layer(sel, gold) == int(np.argmax(mean))
    with pytest.raises(SelectionError, match="no candidate layer"):
        best_mean_auroc_layer(sel, candidates=[9])
