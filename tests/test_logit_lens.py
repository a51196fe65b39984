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


def test_resolve_words_first_token_rule_uses_first_tokens_with_and_without_space(llama):
    _, tok = llama
    resolved = resolve_words(tok, ["cannot", "impossibility"], whole_words=False)
    expected = []
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
        if len(tok.decode([first]).strip()) >= 2 and first not in expected:
            expected.append(first)
    assert resolved.token_ids == tuple(expected)
    assert "cannot" in resolved.whole
    assert resolved.whole_words is False


def test_resolve_words_keeps_only_single_token_spellings(llama):
    _, tok = llama  # the real SmolLM2 tokenizer
    # "cannot", " cannot", "Cannot" are single tokens; " Cannot" is " Can" + "not"
    assert len(tok.encode(" Cannot", add_special_tokens=False)) == 2
    cannot = resolve_words(tok, ["cannot"])
    assert cannot.tokens == ("cannot", " cannot", "Cannot")
    assert (cannot.whole, cannot.not_in_vocabulary, cannot.first_token_only) == (("cannot",), (), ())
    # every id is the whole encoding of its own decoded text
    assert all(
        tok.encode(t, add_special_tokens=False) == [i] for i, t in zip(cannot.token_ids, cannot.tokens)
    )

    # "nonexistent" has no single-token spelling ("none"+"x"+"istent", " nonex"+"istent", ...)
    default = resolve_words(tok, ["cannot", "nonexistent"])
    assert default.token_ids == cannot.token_ids
    assert default.not_in_vocabulary == ("nonexistent",)
    assert default.first_token_only == ()
    first = resolve_words(tok, ["cannot", "nonexistent"], whole_words=False)
    assert first.tokens == ("cannot", " cannot", "Cannot", "none", " nonex", "None", " None")
    assert first.first_token_only == ("nonexistent",)

    # a word with one whole spelling keeps only that one: " forbidden", never "for" / "For"
    assert resolve_words(tok, ["forbidden"]).tokens == (" forbidden",)
    assert resolve_words(tok, ["forbidden"], whole_words=False).tokens == ("for", " forbidden", "For", " For")


def test_resolve_words_raises_when_no_word_is_whole(llama):
    _, tok = llama
    with pytest.raises(LogitLensError, match=r"single token.*smollm2.*whole_words=False"):
        resolve_words(tok, ["nonexistent", "不存在"])
    assert resolve_words(tok, ["nonexistent", "不存在"], whole_words=False).token_ids


def test_identifier_and_chinese_words_resolve_where_the_vocabulary_has_them(llama, gemma):
    _, smol = llama
    _, gem = gemma  # Gemma 3 holds "DoesNotExist", 不存在, 失败 as single tokens; SmolLM2 none of them
    words = ["does not exist", "不存在", "失败", "能"]
    resolved = resolve_words(gem, words)
    assert resolved.tokens == ("DoesNotExist", "不存在", "失败")
    assert resolved.not_in_vocabulary == ("能",)  # one token, but one character (< min_chars)
    assert resolve_words(smol, ["cannot", *words]).not_in_vocabulary == tuple(words)


def test_shipped_failure_list_has_no_generic_subwords(llama, gemma):
    _, tok = llama
    failure, success = load_word_list("failure_words"), load_word_list("success_words")
    generic = {"for", "is", "was", "St", "In"}  # what the first-token rule made of the old list
    resolved = resolve_words(tok, failure)
    assert not {t.strip() for t in resolved.tokens} & generic
    assert all(
        tok.encode(t, add_special_tokens=False) == [i] for i, t in zip(resolved.token_ids, resolved.tokens)
    )
    assert {" cannot", " impossible", " unable", "failed", "Error", "NotFound"} <= set(resolved.tokens)
    # the old rule on the same list does produce them ("forbidden" -> "for", "Incorrect" -> "In", ...)
    first = resolve_words(tok, failure, whole_words=False)
    assert {"for", "St", "In"} <= {t.strip() for t in first.tokens}
    # counts documented in probes/data/README.md (update both when the lists change)
    assert len(resolve_words(tok, success).token_ids) == 133
    assert len(resolved.token_ids) == 95
    _, gem = gemma
    gem_failure = resolve_words(gem, failure)
    assert {"DoesNotExist", "不存在", "不行", "失败"} <= set(gem_failure.tokens)
    assert (len(gem_failure.token_ids), len(resolve_words(gem, success).token_ids)) == (188, 216)


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


def test_failure_score_lists_exactly_the_tokens_it_scored(llama):
    model, tok = llama
    v = torch.randn(64, generator=torch.Generator().manual_seed(5))
    failure = [*FAILURE, "great", "nonexistent"]  # "great" is in both lists; "nonexistent" is not whole
    score = failure_score(model, tok, v, failure_words=failure, success_words=SUCCESS)
    fail = resolve_words(tok, failure).token_ids
    good = resolve_words(tok, SUCCESS).token_ids
    shared = set(fail) & set(good)
    assert {tok.decode([i]) for i in shared} == {"great", " great", "Great", " Great"}
    fail = tuple(i for i in fail if i not in shared)
    good = tuple(i for i in good if i not in shared)
    assert (score.failure_ids, score.success_ids) == (fail, good)
    assert score.failure_tokens == tuple(tok.decode([i]) for i in fail)
    assert score.success_tokens == tuple(tok.decode([i]) for i in good)
    assert score.failure_tokens[:3] == ("cannot", " cannot", "Cannot")
    assert not {"great", " great", "none", " None"} & set(score.failure_tokens + score.success_tokens)
    assert (score.n_failure_tokens, score.n_success_tokens) == (len(fail), len(good))
    # the first-token rule scores more (and other) tokens
    loose = failure_score(model, tok, v, failure_words=failure, success_words=SUCCESS, whole_words=False)
    assert {"none", "None"} <= set(loose.failure_tokens)


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
