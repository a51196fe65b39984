"""Perplexity equals a hand computation; batching and padding do not change it; the paired change of the
capability measures has exact point values, McNemar p-values and bootstrap intervals that cover them."""

from __future__ import annotations

import math

import pytest
import torch

from steering.evals.capability import (
    Perplexity,
    QAAccuracy,
    capability_change,
    general_texts,
    mcnemar_exact_p,
    perplexity,
    qa_accuracy,
)


def test_perplexity_matches_hand_computation_and_is_batch_invariant(tiny_llama):
    model, tok = tiny_llama
    texts = ["The bus leaves at nine.", "Water boils at one hundred degrees Celsius at sea level."]
    nll, count, per_text = 0.0, 0, []
    for t in texts:
        ids = torch.tensor([tok(t, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        logp = torch.log_softmax(logits[0, :-1].float(), -1)
        per_text.append(-float(logp.gather(-1, ids[0, 1:, None]).sum()))
        nll += per_text[-1]
        count += ids.shape[1] - 1
    batched = perplexity(model, tok, texts, batch_size=2)
    single = perplexity(model, tok, texts, batch_size=1)
    assert batched.n_tokens == single.n_tokens == count
    assert batched.value == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert single.value == pytest.approx(batched.value, rel=1e-5)
    assert batched.text_nll == pytest.approx(per_text, rel=1e-5)  # padding does not leak into a text's sum
    assert list(batched.text_tokens) == [
        len(tok(t, add_special_tokens=False)["input_ids"]) - 1 for t in texts
    ]
    with pytest.raises(ValueError, match="at least one text"):
        perplexity(model, tok, [])


def test_perplexity_reads_after_bos_when_the_tokenizer_starts_with_it(tiny_llama, tiny_gemma):
    model, tok = tiny_gemma
    assert tok("a")["input_ids"][0] == tok.bos_token_id  # Gemma's tokenizer starts every encoding with BOS
    text = "The bus leaves at nine."
    ids = torch.tensor([[tok.bos_token_id, *tok(text, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    nll = -float(logp.gather(-1, ids[0, 1:, None]).sum())
    result = perplexity(model, tok, [text])
    assert result.n_tokens == ids.shape[1] - 1 == len(tok(text, add_special_tokens=False)["input_ids"])
    assert result.value == pytest.approx(math.exp(nll / result.n_tokens), rel=1e-5)
    model, tok = tiny_llama  # SmolLM2's tokenizer adds no BOS: scored from the text's second token
    assert (
        perplexity(model, tok, [text]).n_tokens == len(tok(text, add_special_tokens=False)["input_ids"]) - 1
    )


def test_perplexity_through_the_head_a_chunk_at_a_time_equals_the_full_logits(tiny_gemma, monkeypatch):
    """The head reads only predicted positions, HEAD_CHUNK at a time (memory without the vocabulary times the
    batch); with Gemma's final logit soft-capping on, as the model's own forward applies it."""
    from steering.evals import capability

    model, tok = tiny_gemma
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(100.0)  # logits of tens, where the cap bites
    model.config.final_logit_softcapping = 2.0
    texts = ["The bus leaves at nine.", "Water boils at one hundred degrees Celsius at sea level.", "Hi."]
    per_text = []
    for t in texts:
        ids = torch.tensor([[tok.bos_token_id, *tok(t, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
        per_text.append(-float(logp.gather(-1, ids[0, 1:, None]).sum()))
    monkeypatch.setattr(capability, "HEAD_CHUNK", 3)  # chunks that split texts and cross between them
    result = perplexity(model, tok, texts, batch_size=3)
    assert result.text_nll == pytest.approx(per_text, rel=1e-5)
    model.config.final_logit_softcapping = None
    assert perplexity(model, tok, texts, batch_size=3).text_nll != pytest.approx(per_text, rel=0.1)


def test_general_texts_and_qa_accuracy_run(tiny_llama):
    assert len(general_texts()) >= 60
    model, tok = tiny_llama
    result = qa_accuracy(model, tok, n=4)
    assert result.n == 4 and 0.0 <= result.accuracy <= 1.0 and len(result.answers) == 4
    assert len(result.correct) == 4 and sum(result.correct) / 4 == result.accuracy


def _ppl(text_nll, text_tokens):
    mean = sum(text_nll) / sum(text_tokens)
    return Perplexity(
        math.exp(mean), mean, sum(text_tokens), len(text_nll), tuple(text_nll), tuple(text_tokens)
    )


def _qa(correct):
    p = sum(correct) / len(correct)
    return QAAccuracy(
        p, math.sqrt(p * (1 - p) / len(correct)), len(correct), [""] * len(correct), tuple(correct)
    )


def test_mcnemar_exact_p_by_hand():
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(3, 3) == 1.0  # 2 * P(X <= 3 | n=6) = 2 * 42/64 > 1
    assert mcnemar_exact_p(5, 0) == pytest.approx(2 / 32)
    assert mcnemar_exact_p(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert mcnemar_exact_p(9, 1) == mcnemar_exact_p(1, 9)


def test_capability_change_exact_values_and_intervals():
    tokens = (10, 20, 30, 40)
    before = (_ppl([20.0, 40.0, 60.0, 80.0], tokens), _qa([True, True, True, False, True, False, True, True]))
    after = (
        _ppl([25.0, 44.0, 69.0, 84.0], tokens),
        _qa([False, True, False, False, True, True, False, True]),
    )
    change = capability_change(before, after, n_boot=4000, seed=1)
    assert change.perplexity_increase == pytest.approx(math.exp(222 / 100) - math.exp(2.0))
    assert change.qa_accuracy_drop == pytest.approx(6 / 8 - 4 / 8)
    assert (change.qa_lost, change.qa_gained) == (3, 1)
    assert change.qa_mcnemar_p == pytest.approx(2 * (1 + 4) / 16)
    lo, hi = change.perplexity_increase_ci
    assert 0 < lo <= change.perplexity_increase <= hi  # every text got worse: every resample increases
    lo, hi = change.qa_accuracy_drop_ci
    assert lo <= change.qa_accuracy_drop <= hi and lo < 0 < hi  # 3 lost, 1 gained of 8: not clear of 0
    assert (change.n_texts, change.n_items) == (4, 8)
    same = capability_change(before, before)
    assert same.perplexity_increase_ci == (0.0, 0.0) and same.qa_accuracy_drop_ci == (0.0, 0.0)
    assert same.qa_mcnemar_p == 1.0


def test_capability_change_refuses_unpaired_measures():
    tokens = (10, 20)
    ppl, qa = _ppl([20.0, 40.0], tokens), _qa([True, False])
    with pytest.raises(ValueError, match="different texts"):
        capability_change((ppl, qa), (_ppl([20.0, 40.0], (10, 21)), qa))
    with pytest.raises(ValueError, match="same items"):
        capability_change((ppl, qa), (ppl, _qa([True, False, True])))
    with pytest.raises(ValueError, match="per-text and per-item"):
        capability_change((Perplexity(1.0, 0.0, 1, 1), qa), (ppl, qa))
