"""probes.activation_cache: a hit returns exactly the capture; anything that could change it misses."""

from __future__ import annotations

import json

import pytest
import torch

import maze_env
import probes.extract as extract
from probes.activation_cache import (
    cacheable,
    default_activation_cache_dir,
    tokenizer_fingerprint,
    weights_fingerprint,
)
from probes.extract import reward_activations
from probes.models import tiny_model

SMALL_MAZE = maze_env.MazeConfig(size=30, n_turns=3)


@pytest.fixture
def counted(monkeypatch):
    """Counts the captures that really ran."""
    calls = []
    real = extract.capture

    def counting(*args, **kwargs):
        calls.append(len(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(extract, "capture", counting)
    return calls


def _acts(model, tok, cache, **kw):
    return reward_activations(
        model, tok, n_per_class=4, config=SMALL_MAZE, batch_size=4, cache_dir=cache, **kw
    )


def _same(a, b) -> None:
    assert a.classes == b.classes and a.layers == b.layers
    for cls in a.classes:
        for layer in a.layers:
            assert torch.equal(a.activations[cls][layer], b.activations[cls][layer])
    assert (a.dataset_hash, a.model_name, a.site, a.position) == (
        b.dataset_hash,
        b.model_name,
        b.site,
        b.position,
    )


def test_hit_returns_the_capture_exactly_without_running_the_model(tmp_path, counted):
    model, tok = tiny_model("llama", seed=0)
    plain = _acts(model, tok, None)
    first = _acts(model, tok, tmp_path)
    second = _acts(model, tok, tmp_path)
    assert counted == [12, 12]  # no cache, then a miss; the hit ran nothing
    _same(plain, first)
    _same(plain, second)
    entries = sorted(p.suffix for p in tmp_path.iterdir())
    assert entries == [".json", ".safetensors"]
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["classes"] == ["Mold", "Gold", "Path"] and record["layers"] == [0, 1]
    assert record["weights"] == weights_fingerprint(model)


def test_changed_weights_texts_or_settings_miss(tmp_path, counted):
    model, tok = tiny_model("llama", seed=0)
    _acts(model, tok, tmp_path)
    _acts(model, tok, tmp_path, layers=[1])  # other layers
    reward_activations(
        model, tok, n_per_class=5, config=SMALL_MAZE, batch_size=4, cache_dir=tmp_path
    )  # texts
    _acts(model, tok, tmp_path, seed=1)  # other mazes
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3  # one weight
    changed = _acts(model, tok, tmp_path)
    assert len(counted) == 5
    assert len(list(tmp_path.glob("*.safetensors"))) == 5
    _same(changed, _acts(model, tok, None))


def test_a_damaged_entry_is_recomputed(tmp_path, counted):
    model, tok = tiny_model("llama", seed=0)
    good = _acts(model, tok, tmp_path)
    entry = next(tmp_path.glob("*.safetensors"))
    entry.write_bytes(b"not safetensors")
    _same(good, _acts(model, tok, tmp_path))
    assert len(counted) == 2
    _same(good, _acts(model, tok, tmp_path))  # the rewritten entry is read again
    assert len(counted) == 2


def test_fingerprints_tell_models_and_tokenizers_apart():
    a, tok = tiny_model("llama", seed=0)
    b, _ = tiny_model("llama", seed=1)
    assert weights_fingerprint(a) == weights_fingerprint(tiny_model("llama", seed=0)[0])
    assert weights_fingerprint(a) != weights_fingerprint(b)
    _, gemma_tok = tiny_model("gemma3", seed=0)
    assert tokenizer_fingerprint(tok, "Go N") != tokenizer_fingerprint(gemma_tok, "Go N")
    left = tokenizer_fingerprint(tok, "Go N")
    tok.padding_side = "right" if tok.padding_side == "left" else "left"
    assert tokenizer_fingerprint(tok, "Go N") != left


def test_only_plain_local_captures_are_cached(monkeypatch, tmp_path):
    model, _ = tiny_model("llama", seed=0)
    assert cacheable(model, "hooks", "last") and cacheable(model, "hooks", -1)
    assert not cacheable(model, "nnsight", "last")
    assert not cacheable(model, "hooks", torch.tensor([1]))
    assert not cacheable(model.train(), "hooks", "last")  # dropout may make each capture differ
    model.eval()
    with torch.device("meta"):
        meta = torch.nn.Linear(2, 2)
    assert not cacheable(meta, "hooks", "last")
    with pytest.raises(ValueError, match="meta device"):
        weights_fingerprint(meta)
    monkeypatch.setenv("WELFARE_AXIS_ACTIVATION_CACHE", str(tmp_path / "acts"))
    assert default_activation_cache_dir() == tmp_path / "acts"
    monkeypatch.delenv("WELFARE_AXIS_ACTIVATION_CACHE")
    monkeypatch.setenv("WELFARE_AXIS_CACHE", str(tmp_path / "root"))
    assert default_activation_cache_dir() == tmp_path / "root" / "activations"


def test_an_unwritable_cache_warns_and_keeps_the_capture(tmp_path, counted):
    model, tok = tiny_model("llama", seed=0)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.warns(UserWarning, match="activation cache not written"):
        got = _acts(model, tok, blocked / "cache")
    _same(got, _acts(model, tok, None))
    assert len(counted) == 2 and blocked.read_text() == "not a folder"
