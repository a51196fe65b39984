"""probes.logit_lens: W_U·v by hand, the final-norm variant, word lists and the failure score."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from probes.concept_vector import ConceptVector, WidthMismatchError
from probes.logit_lens import (
    LogitLensError,
    failure_score,
    lens_logits,
    load_word_list,
    logit_lens,
    overlap,
    resolve_words,
)
from probes.models import tiny_model
from probes.plots import logit_lens_bars

FAILURE = ["cannot", "impossible", "failed", "unable", "error"]
SUCCESS = ["success", "great", "perfect", "excellent", "win"]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", seed=3)


@pytest.fixture(scope="module")
def gemma():
    model, tok = tiny_model("gemma3", seed=3)
    with torch.no_grad():  # non-trivial final-norm gain (it is initialised to the identity)
        model.model.norm.weight.copy_(
            torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(0))
        )
    return model, tok


def test_raw_lens_equals_hand_unembedding(llama):
    model, _ = llama
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    by_hand = model.lm_head.weight.detach() @ v  # (vocab,)
    assert torch.allclose(lens_logits(model, v), by_hand, atol=1e-5, rtol=1e-5)
    # linear: doubling v doubles every value
    assert torch.allclose(lens_logits(model, 2 * v), 2 * by_hand, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_norm_lens_equals_final_norm_then_unembedding(family, llama, gemma):
    model, _ = llama if family == "llama" else gemma
    v = torch.randn(64, generator=torch.Generator().manual_seed(1))
    norm = model.model.norm
    rms = (
        v.pow(2).mean().add(norm.variance_epsilon if hasattr(norm, "variance_epsilon") else norm.eps).rsqrt()
    )
    gain = norm.weight.detach() if family == "llama" else 1.0 + norm.weight.detach()
    by_hand = model.lm_head.weight.detach() @ (v * rms * gain)
    got = lens_logits(model, v, through_norm=True)
    assert torch.allclose(got, by_hand, atol=1e-4, rtol=1e-4)
    # scale invariance of RMSNorm: 3v gives the same lens
    assert torch.allclose(lens_logits(model, 3 * v, through_norm=True), got, atol=1e-4, rtol=1e-4)


def test_logit_lens_top_bottom_are_topk_of_hand_logits(llama):
    model, tok = llama
    v = torch.randn(64, generator=torch.Generator().manual_seed(2))
    vector = ConceptVector({0: torch.zeros(64) + 1.0, 1: v}, concept="Mold")
    lens = logit_lens(model, tok, vector, layer=1, k=5)
    logits = model.lm_head.weight.detach() @ v
    top, bottom = torch.topk(logits, 5), torch.topk(-logits, 5)
    assert [t.token_id for t in lens.top] == top.indices.tolist()
    assert [t.token_id for t in lens.bottom] == bottom.indices.tolist()
    assert lens.top_tokens == [tok.decode([i]) for i in top.indices.tolist()]
    assert [t.value for t in lens.top] == pytest.approx(top.values.tolist(), abs=1e-4)
    assert lens.bottom[0].value == pytest.approx(float(logits.min()), abs=1e-4)
    assert (lens.layer, lens.concept, lens.mode) == (1, "Mold", "raw")
    # v_Mold-promoted vs (-v)-suppressed: identical lists
    mirrored = logit_lens(model, tok, -v, k=5)
    assert overlap(lens.top, mirrored.bottom) == 5
    fig = logit_lens_bars(lens)
    assert len(fig.data[0].x) == 10


def test_logit_lens_errors(llama):
    model, tok = llama
    with pytest.raises(WidthMismatchError):
        lens_logits(model, torch.ones(65))
    with pytest.raises(LogitLensError, match="pick a layer"):
        logit_lens(model, tok, ConceptVector({0: torch.ones(64), 1: torch.ones(64)}))
    with pytest.raises(LogitLensError, match="k must"):
        logit_lens(model, tok, torch.ones(64), k=0)
    with pytest.raises(LogitLensError, match="empty"):
        resolve_words(tok, [])


def test_resolve_words_uses_first_tokens_with_and_without_space(llama):
    _, tok = llama
    resolved = resolve_words(tok, ["cannot", "impossibility"])
    expected = set()
    for spelling in (
        "cannot",
        " cannot",
        "Cannot",
        " Cannot",
        "impossibility",
        " impossibility",
        "Impossibility",
        " Impossibility",
    ):
        first = tok.encode(spelling, add_special_tokens=False)[0]
        if len(tok.decode([first]).strip()) >= 2:
            expected.add(first)
    assert set(resolved.token_ids) == expected
    assert len(resolved.token_ids) == len(set(resolved.token_ids))
    assert "cannot" in resolved.whole


def test_failure_score_is_exact_mean_difference_and_auroc(llama):
    model, tok = llama
    v = torch.randn(64, generator=torch.Generator().manual_seed(4))
    score = failure_score(model, tok, v, failure_words=FAILURE, success_words=SUCCESS)
    fail = resolve_words(tok, FAILURE).token_ids
    good = resolve_words(tok, SUCCESS).token_ids
    shared = set(fail) & set(good)
    fail = [i for i in fail if i not in shared]
    good = [i for i in good if i not in shared]
    logits = (model.lm_head.weight.detach() @ v).double()
    diff = float(logits[fail].mean() - logits[good].mean())
    assert score.difference == pytest.approx(diff, abs=1e-4)
    assert score.standardized == pytest.approx(diff / float(logits.std()), abs=1e-4)
    labels = [1] * len(fail) + [0] * len(good)
    assert score.auroc == pytest.approx(roc_auc_score(labels, logits[fail + good].numpy()))
    assert (score.n_failure_tokens, score.n_success_tokens) == (len(fail), len(good))


def test_failure_score_recovers_a_planted_failure_direction(llama):
    model, tok = llama
    fail = [i for i in resolve_words(tok, FAILURE).token_ids]
    good = [i for i in resolve_words(tok, SUCCESS).token_ids if i not in fail]
    w = model.lm_head.weight.detach().double()  # (vocab, d)
    rows = torch.cat([w[fail], w[good]])
    target = torch.cat([torch.ones(len(fail)), -torch.ones(len(good))]).double()
    v = (
        torch.linalg.lstsq(rows, target[:, None]).solution[:, 0].float()
    )  # W_U·v = +1 on failure, -1 on success
    score = failure_score(model, tok, v, failure_words=FAILURE, success_words=SUCCESS)
    assert score.auroc == 1.0
    assert score.difference == pytest.approx(2.0, abs=1e-3)
    assert failure_score(model, tok, -v, failure_words=FAILURE, success_words=SUCCESS).auroc == 0.0


def test_shipped_word_lists_resolve(llama):
    _, tok = llama
    failure, success = load_word_list("failure_words"), load_word_list("success_words")
    assert len(failure) >= 10 and len(success) >= 10
    assert len(resolve_words(tok, failure).token_ids) >= 10
    with pytest.raises(FileNotFoundError, match="available"):
        load_word_list("no_such_list")
