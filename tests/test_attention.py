"""Copy-free grouped-query attention on the CPU: the same numbers bit for bit, and only where it is meant."""

from __future__ import annotations

import pytest
import torch

from probes import attention
from probes.models import tiny_model
from probes.record import capture
from training.rollout import collect_episodes


@pytest.fixture
def both_rules():
    """Run a function with transformers' own rule, then with copy-free attention; leave it installed."""

    def run(fn):
        attention.uninstall()
        try:
            plain = fn()
        finally:
            attention.install()
        return plain, fn()

    return run


def test_loading_a_model_installs_it():
    tiny_model("llama")
    assert attention.installed()


def test_evaluation_turns_on_a_kv_cache_are_bit_identical(both_rules, monkeypatch):
    model, tok = tiny_model("llama", n_heads=4, n_kv_heads=2)  # grouped: 2 query heads per key/value head
    taken = []
    real = attention.copy_free
    monkeypatch.setattr(attention, "copy_free", lambda *a: taken.append(real(*a)) or taken[-1])
    plain, fast = both_rules(
        lambda: collect_episodes(model, tok, seeds=[3, 4, 5], temperature=0.7, batch_size=2)
    )
    assert any(taken)  # the copy-free kernel ran (every turn after the first reads a masked cache)
    assert torch.equal(plain.direction_logits, fast.direction_logits)
    assert torch.equal(plain.actions, fast.actions)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_padded_captures_are_bit_identical(both_rules, family):
    texts = ["a short one", "a much longer text that pads the short one on the left side", "mid length text"]
    model, tok = tiny_model(family, n_heads=4, n_kv_heads=1)
    plain, fast = both_rules(lambda: capture(model, tok, texts, batch_size=3, position="all", reduce="none"))
    assert all(torch.equal(plain[layer], fast[layer]) for layer in plain)


def test_only_masked_cpu_calls_without_gradients_take_it():
    key = value = torch.zeros(1, 2, 5, 8)
    mask = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    with torch.no_grad():
        assert attention.copy_free(mask, key, value)
        assert not attention.copy_free(
            mask[:, :, -1:], key, value
        )  # one query: transformers packs it already
        assert not attention.copy_free(None, key, value)
        assert not attention.copy_free(mask, key, torch.zeros(1, 2, 5, 4))  # key and value head sizes differ
    assert not attention.copy_free(mask, key, value)  # gradients on: training keeps repeat_kv
    with torch.inference_mode():
        assert attention.copy_free(mask, key, value)
