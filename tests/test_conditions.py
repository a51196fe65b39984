"""Conditional steering: rows below the threshold are bit-identical to unsteered, rows above are steered,
the gate holds through generation, and the threshold is fitted on held-out scores."""

from __future__ import annotations

import pytest
import torch

from probes import positions as P
from probes.models import tiny_model
from steering.apply import apply
from steering.conditions import Condition, condition_scores, fit_threshold, row_scores


@pytest.fixture(scope="module")
def model_tok():
    model, tok = tiny_model("llama", n_layers=4)
    return model.eval(), tok


TEXTS = ["I went north and found gold.", "A wall.", "The maze is long and the walls are high today.", "Hello"]


def test_rows_below_the_threshold_are_bit_identical_to_unsteered(model_tok):
    model, tok = model_tok
    g = torch.Generator().manual_seed(0)
    cond_vec = torch.randn(64, generator=g)
    scores = condition_scores(model, tok, TEXTS, Condition(cond_vec, 1, 0.0))
    threshold = float(scores.median())  # two rows pass, two do not
    condition = Condition(cond_vec, 1, threshold)
    batch = {k: v for k, v in P.encode_texts(tok, TEXTS, padding_side="right").items()}
    steer = torch.randn(64, generator=g) * 5
    with torch.no_grad():
        plain = model(**batch).logits
        with apply(model, {3: steer}, alpha=2.0, positions="all", condition=condition) as handle:
            steered = model(**batch).logits
    gate = scores >= threshold
    assert torch.equal(handle.gate.cpu(), gate) and 0 < int(gate.sum()) < len(TEXTS)
    assert torch.allclose(handle.condition_scores, scores.to(handle.condition_scores.dtype))
    for row in range(len(TEXTS)):
        same = torch.equal(steered[row], plain[row])
        assert same != bool(gate[row]), row  # off rows exactly unsteered; on rows changed
    below = Condition(cond_vec, 1, threshold, above=False)
    with torch.no_grad(), apply(model, {3: steer}, alpha=2.0, positions="all", condition=below) as handle:
        model(**batch)
    assert torch.equal(handle.gate.cpu(), scores <= threshold)


def test_the_gate_holds_through_generation(model_tok):
    model, tok = model_tok
    cond_vec = torch.randn(64, generator=torch.Generator().manual_seed(1))
    texts = TEXTS[:2]
    scores = condition_scores(model, tok, texts, Condition(cond_vec, 0, 0.0))
    never = Condition(cond_vec, 0, float(scores.max()) + 1.0)  # no row passes
    enc = P.encode_texts(tok, texts, padding_side="left")
    kwargs = dict(max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        plain = model.generate(**enc, **kwargs)
        with apply(model, {2: torch.ones(64) * 50}, positions="all", condition=never) as handle:
            gated = model.generate(**enc, **kwargs)
        with apply(model, {2: torch.ones(64) * 50}, positions="all"):
            steered = model.generate(**enc, **kwargs)
    assert not bool(handle.gate.any()) and handle.n_calls == 5
    assert torch.equal(gated, plain) and not torch.equal(steered, plain)


def test_condition_errors_name_the_fix(model_tok):
    model, tok = model_tok
    with pytest.raises(ValueError, match="not below the steered layers"):
        with apply(model, {1: torch.ones(64)}, positions="all", condition=Condition(torch.ones(64), 1, 0.0)):
            pass
    with pytest.raises(ValueError, match="needs \\(64,\\)"):
        with apply(model, {3: torch.ones(64)}, positions="all", condition=Condition(torch.ones(8), 1, 0.0)):
            pass
    with pytest.raises(ValueError, match="must not be zero"):
        Condition(torch.zeros(64), 1, 0.0)
    with pytest.raises(ValueError, match="finite"):
        Condition(torch.ones(64), 1, float("nan"))


def test_row_scores_by_hand():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [9.0, 9.0]], [[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    scores = row_scores(Condition(torch.tensor([1.0, 1.0]), 0, 0.0), hidden, mask)
    # row 0: mean of the two real tokens (2, 0) -> cos 1/sqrt(2); row 1: (0, 2) -> 1/sqrt(2)
    assert scores.tolist() == pytest.approx([2**-0.5, 2**-0.5])


def test_fit_threshold_maximises_balanced_accuracy():
    fit = fit_threshold([0.5, 0.6, 0.7], [0.1, 0.2, 0.3])
    assert fit.threshold == pytest.approx(0.4) and fit.balanced_accuracy == 1.0
    low = fit_threshold([0.1, 0.2], [0.5, 0.6], above=False)
    assert low.threshold == pytest.approx(0.35) and low.balanced_accuracy == 1.0 and not low.above
    with pytest.raises(ValueError, match="needs scores"):
        fit_threshold([], [0.1])
