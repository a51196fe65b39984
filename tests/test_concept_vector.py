"""ConceptVector: validation, arithmetic, cosine, persistence (safetensors+JSON, GGUF) and model checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probes import layers as L
from probes.concept_vector import (
    ConceptVector,
    ConceptVectorError,
    FamilyMismatchError,
    WidthMismatchError,
    dataset_hash,
)
from probes.models import tiny_model


def make(seed: int = 0, layers=(0, 1, 2), d: int = 8, **kw) -> ConceptVector:
    g = torch.Generator().manual_seed(seed)
    dirs = {layer: torch.randn(d, generator=g) for layer in layers}
    defaults = dict(
        model_name="toy/model",
        model_family="llama/L3/d8",
        method="mean_diff",
        dataset_hash="abc",
        n_per_class={"Mold": 3, "Gold": 4},
        concept="Mold",
    )
    defaults.update(kw)
    return ConceptVector(dirs, **defaults)


def test_validation_errors():
    with pytest.raises(ConceptVectorError, match="empty"):
        ConceptVector({})
    with pytest.raises(WidthMismatchError, match="width"):
        ConceptVector({0: torch.zeros(4), 1: torch.zeros(5)})
    with pytest.raises(ConceptVectorError, match="NaN"):
        ConceptVector({0: torch.tensor([1.0, float("nan")])})
    with pytest.raises(ConceptVectorError, match="1-D"):
        ConceptVector({0: torch.zeros(2, 2)})
    with pytest.raises(ConceptVectorError, match="non-negative"):
        ConceptVector({-1: torch.zeros(2)})
    with pytest.raises(ValueError, match="site"):
        ConceptVector({0: torch.zeros(2)}, site="resid_mid")


def test_arithmetic_is_exact_per_layer():
    a, b = make(0), make(1)
    for layer in a.layers:
        assert torch.equal((a + b)[layer], a[layer] + b[layer])
        assert torch.equal((a - b)[layer], a[layer] - b[layer])
        assert torch.equal((2.5 * a)[layer], a[layer] * 2.5)
        assert torch.equal((a * 2.5)[layer], a[layer] * 2.5)
        assert torch.equal((a / 4)[layer], a[layer] * 0.25)
        assert torch.equal((-a)[layer], -a[layer])
    assert (a - a).norms() == {0: 0.0, 1: 0.0, 2: 0.0}
    assert (a * 0) != a and (a * 1).replace(concept="Mold") == a
    assert (2 * a).concept == "2*(Mold)"
    assert (a + b).concept == "(Mold)+(Mold)"
    with pytest.raises(ZeroDivisionError):
        a / 0
    with pytest.raises(TypeError):
        a + 1  # type: ignore[operator]


def test_union_of_layers_when_adding():
    a, b = make(0, layers=(0, 1)), make(1, layers=(1, 2))
    s = a + b
    assert s.layers == [0, 1, 2]
    assert torch.equal(s[0], a[0]) and torch.equal(s[2], b[2])


def test_combining_other_family_or_width_raises():
    a = make(0)
    with pytest.raises(FamilyMismatchError, match="families"):
        a + make(1, model_family="gemma3/L3/d8")
    with pytest.raises(WidthMismatchError):
        a - make(1, d=9)
    with pytest.raises(ConceptVectorError, match="sites"):
        a.cosine(make(1, site="mlp_out"))
    # Two checkpoints of one base model (maze-naive vs trained) may be combined.
    trained = make(1, model_name="toy/model-rl")
    assert (a - trained).model_name == "toy/model-toy/model-rl"


def test_norms_cosine_and_to():
    v = ConceptVector({3: torch.tensor([3.0, 4.0]), 5: torch.tensor([1.0, 0.0])})
    assert v.norms() == {3: 5.0, 5: 1.0}
    w = ConceptVector({3: torch.tensor([-3.0, -4.0]), 5: torch.tensor([0.0, 2.0])})
    cos = v.cosine(w)
    assert cos[3] == pytest.approx(-1.0, abs=1e-12) and cos[5] == pytest.approx(0.0, abs=1e-12)
    half = v.to(dtype=torch.float64)
    assert half.dtype == torch.float64 and v.dtype == torch.float32
    assert v.normalized().norms()[3] == pytest.approx(1.0)
    with pytest.raises(ConceptVectorError, match="no shared layers"):
        v.cosine(ConceptVector({0: torch.ones(2)}))
    assert v.select([5]).layers == [5]


def test_save_load_round_trip_is_lossless(tmp_path):
    v = make(3, metadata={"seed": 474747, "layer_star": 1})
    written = v.save(tmp_path / "v_mold")
    assert written.name == "v_mold.safetensors"
    sidecar = json.loads((tmp_path / "v_mold.json").read_text())
    assert sidecar["n_per_class"] == {"Mold": 3, "Gold": 4}
    assert sidecar["norms"]["0"] == pytest.approx(v.norms()[0])
    loaded = ConceptVector.load(tmp_path / "v_mold.safetensors")
    assert loaded == v
    bf16 = v.to(dtype=torch.bfloat16)
    bf16.save(tmp_path / "bf16")
    assert ConceptVector.load(tmp_path / "bf16") == bf16
    # No temporary files left behind.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bf16.json",
        "bf16.safetensors",
        "v_mold.json",
        "v_mold.safetensors",
    ]


def test_gguf_round_trip_and_repeng_layout(tmp_path):
    gguf = pytest.importorskip("gguf")
    v = make(4, layers=(0, 1, 2))
    with pytest.warns(UserWarning, match="direction.0"):
        path = v.to_gguf(tmp_path / "v.gguf")
    reader = gguf.GGUFReader(str(path))
    arch = reader.get_field("general.architecture")
    assert bytes(arch.parts[arch.data[0]]).decode() == "controlvector"
    names = sorted(t.name for t in reader.tensors)
    assert names == ["direction.1", "direction.2"]
    for t in reader.tensors:
        assert t.data.dtype == np.float32 and t.data.ndim == 1
    back = ConceptVector.from_gguf(path)
    assert back == v.select([1, 2])
    full = ConceptVector.from_gguf(v.to_gguf(tmp_path / "full.gguf", include_layer0=True))
    assert full == v


def test_from_gguf_reads_a_plain_repeng_file(tmp_path):
    gguf = pytest.importorskip("gguf")
    path = str(tmp_path / "repeng.gguf")
    writer = gguf.GGUFWriter(path, "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", 2)
    for layer in (4, 7):
        writer.add_tensor(f"direction.{layer}", np.full(6, float(layer), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    v = ConceptVector.from_gguf(path)
    assert v.layers == [4, 7] and v.model_name == "llama" and torch.equal(v[7], torch.full((6,), 7.0))


def test_check_model_width_family_and_range():
    torch.manual_seed(0)
    model = tiny_model("llama", vocab_size=50)[0]
    family = L.model_family(model)
    ok = ConceptVector({1: torch.ones(64)}, model_family=family)
    ok.check_model(model)
    with pytest.raises(WidthMismatchError, match="d_model 64"):
        ConceptVector({1: torch.ones(32)}, model_family=family).check_model(model)
    with pytest.raises(FamilyMismatchError):
        ConceptVector({1: torch.ones(64)}, model_family="gemma3/L2/d64").check_model(model)
    with pytest.raises(IndexError, match="0..1"):
        ConceptVector({5: torch.ones(64)}, model_family=family).check_model(model)


def test_dataset_hash_depends_on_boundaries():
    assert dataset_hash(["ab", "c"]) != dataset_hash(["a", "bc"])
    assert dataset_hash(["x"]) == dataset_hash(["x"])


def test_steering_with_a_concept_vector_checks_its_family():
    from steering.apply import apply

    torch.manual_seed(0)
    model = tiny_model("llama", vocab_size=50)[0]
    ids = torch.randint(0, 50, (2, 5))
    v = ConceptVector({0: torch.randn(64)}, model_family=L.model_family(model))
    with torch.no_grad():
        base = model(ids, output_hidden_states=True).hidden_states[1]
        with apply(model, v, alpha=2.0, positions="all"):
            steered = model(ids, output_hidden_states=True).hidden_states[1]
        after = model(ids, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(steered, base + 2.0 * v[0], rtol=0, atol=1e-6)
    assert torch.equal(after, base)
    with pytest.raises(FamilyMismatchError):
        with apply(model, v.replace(model_family="gemma3/L2/d64"), alpha=1.0, positions="all"):
            pass
