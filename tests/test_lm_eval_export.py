"""lm-eval's ``steered`` model type reads our export and steers exactly as ``steering.apply`` does."""

from __future__ import annotations

import pytest
import torch

from probes.concept_vector import ConceptVector
from probes.models import tiny_model
from steering.apply import apply
from steering.lm_eval_export import LmEvalExportError, hookpoint_template, read_lm_eval, to_lm_eval


def _vector(model, layers, seed=0):
    g = torch.Generator().manual_seed(seed)
    width = model.config.hidden_size
    return ConceptVector(
        {layer: torch.randn(width, generator=g) for layer in layers}, model_name="tiny", concept="Gold"
    )


def test_file_layout_and_weights_only_load(tmp_path):
    model, _ = tiny_model("llama", n_layers=3)
    v = _vector(model, [0, 2])
    path = to_lm_eval(v, tmp_path / "v.pt", alpha={0: 1.5, 2: -2.0}, model=model)
    config = torch.load(path, weights_only=True)
    assert sorted(config) == ["layers.0", "layers.2"]
    entry = config["layers.2"]
    assert sorted(entry) == sorted(
        ["steering_vector", "steering_coefficient", "action", "bias", "head_index"]
    )
    assert entry["action"] == "add" and entry["bias"] is None and entry["head_index"] is None
    assert entry["steering_coefficient"] == -2.0 and config["layers.0"]["steering_coefficient"] == 1.5
    assert entry["steering_vector"].dtype == torch.float32
    assert torch.equal(entry["steering_vector"], v[2])
    assert read_lm_eval(path).keys() == config.keys()
    assert not list(tmp_path.glob("*.tmp*"))


def test_hookpoint_is_the_block_inside_base_model():
    for family in ("llama", "gemma3"):
        model, _ = tiny_model(family, n_layers=2)
        template = hookpoint_template(model)
        names = dict(model.base_model.named_modules())
        assert names[template.format(num=1)] is model.model.layers[1]
    assert hookpoint_template(None) == "layers.{num}"


def test_bad_input_says_what_to_fix(tmp_path):
    model, _ = tiny_model("llama", n_layers=2)
    v = _vector(model, [1])
    with pytest.raises(LmEvalExportError, match=r"\.pt or \.pth"):
        to_lm_eval(v, tmp_path / "v.safetensors")
    with pytest.raises(LmEvalExportError, match=r"no direction at layers \[0\]"):
        to_lm_eval(v, tmp_path / "v.pt", layers=[0])
    with pytest.raises(LmEvalExportError, match="finite"):
        to_lm_eval(v, tmp_path / "v.pt", alpha=float("nan"))
    narrow = ConceptVector({1: torch.ones(8)})
    with pytest.raises(LmEvalExportError, match="width 8"):
        to_lm_eval(narrow, tmp_path / "v.pt", model=model)
    assert not (tmp_path / "v.pt").exists()


def test_lm_eval_steered_model_matches_apply(tmp_path, monkeypatch):
    """The round trip through lm-eval itself: its SteeredModel loads the file and its logits equal ours."""
    pytest.importorskip("lm_eval", reason="lm-eval is a dev dependency (pip install -e '.[dev]')")
    from lm_eval.models.hf_steered import SteeredModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = tiny_model("llama", n_layers=3, seed=3)
    checkpoint = tmp_path / "tiny"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    v = _vector(model, [0, 1, 2], seed=1)
    alpha = {1: 3.0, 2: -1.5}
    steer_path = to_lm_eval(v, tmp_path / "steer.pt", layers=[1, 2], alpha=alpha, model=model)

    lm = SteeredModel(pretrained=str(checkpoint), steer_path=str(steer_path), device="cpu", batch_size=1)
    ids = torch.tensor([tokenizer("The maze has gold and mold.")["input_ids"]])
    theirs = lm._model_call(ids)
    with torch.no_grad():
        plain = model(ids).logits
        with apply(model, v, layers=[1, 2], alpha=alpha, positions="all"):
            ours = model(ids).logits
    assert (ours - plain).abs().max() > 1e-2  # the vector does steer
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    # lm-eval's hooks are gone after its call: the unsteered forward is the plain one.
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, plain, rtol=1e-6, atol=1e-6)
