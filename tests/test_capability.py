"""Perplexity equals a hand computation; batching and padding do not change it."""

from __future__ import annotations

import math

import pytest
import torch

from steering.evals.capability import general_texts, perplexity, qa_accuracy


def test_perplexity_matches_hand_computation_and_is_batch_invariant(tiny_llama):
    model, tok = tiny_llama
    texts = ["The bus leaves at nine.", "Water boils at one hundred degrees Celsius at sea level."]
    nll, count = 0.0, 0
    for t in texts:
        ids = torch.tensor([tok(t, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        logp = torch.log_softmax(logits[0, :-1].float(), -1)
        nll -= float(logp.gather(-1, ids[0, 1:, None]).sum())
        count += ids.shape[1] - 1
    batched = perplexity(model, tok, texts, batch_size=2)
    single = perplexity(model, tok, texts, batch_size=1)
    assert batched.n_tokens == single.n_tokens == count
    assert batched.value == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert single.value == pytest.approx(batched.value, rel=1e-5)
    with pytest.raises(ValueError, match="at least one text"):
        perplexity(model, tok, [])


def test_general_texts_and_qa_accuracy_run(tiny_llama):
    assert len(general_texts()) >= 60
    model, tok = tiny_llama
    result = qa_accuracy(model, tok, n=4)
    assert result.n == 4 and 0.0 <= result.accuracy <= 1.0 and len(result.answers) == 4
