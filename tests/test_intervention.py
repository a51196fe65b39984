"""Intervening on a direction while training: exact hook maths, only in the update's forwards, gone after."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import training as T
from probes.concept_vector import ConceptVector
from probes.layers import blocks
from probes.models import tiny_model
from probes.record import record
from training.intervention import Intervention, intervening

TINY = dict(model="tiny-llama", steps=2, episodes_per_step=4, group_size=2, n_turns=3, maze_size=12, progress=False,
            threads=1, lr=1e-2, checkpoint_every=1, eval_episodes=2)  # fmt: skip


def test_the_hook_maths_and_its_removal():
    model, tok = tiny_model("llama", n_layers=3)
    model.eval()
    batch = tok(["I went north."], return_tensors="pt")
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), record(model, [1]) as plain:
        model(**batch)
    h = plain[1]
    before = len(blocks(model)[1]._forward_hooks)
    with torch.no_grad():
        with intervening(model, Intervention(v, 1, "add", 2.0)), record(model, [1]) as got:
            model(**batch)
        assert torch.allclose(got[1], h + 2.0 * v, atol=1e-6)
        with intervening(model, Intervention(v, 1, "ablate")), record(model, [1]) as got:
            model(**batch)
        assert torch.allclose(got[1] @ (v / v.norm()), torch.zeros(got[1].shape[:-1]), atol=1e-5)
        with intervening(model, Intervention(v, 1, "penalty", 0.5), batch["attention_mask"]) as penalty:
            model(**batch)
        want = 0.5 * ((h @ (v / v.norm())) ** 2).mean()
        assert float(penalty.value()) == pytest.approx(float(want), rel=1e-5)
    with pytest.raises(RuntimeError), intervening(model, Intervention(v, 1, "add")):
        raise RuntimeError("boom")
    assert len(blocks(model)[1]._forward_hooks) == before  # removed, also after an error
    with pytest.raises(ValueError, match="intervene_mode"):
        Intervention(v, 1, "scale")  # type: ignore[arg-type]


def test_only_the_update_sees_it(tmp_path):
    vec = ConceptVector({1: torch.randn(64, generator=torch.Generator().manual_seed(1)) * 3}, concept="Gold")
    vec.save(tmp_path / "v")
    common = dict(TINY, reuse_rollout_activations=False)
    T.main(T.Args(**common, out=str(tmp_path / "plain")))
    T.main(
        T.Args(
            **common, intervene_vector=str(tmp_path / "v"), intervene_mode="ablate", out=str(tmp_path / "iv")
        )
    )
    rows = [[json.loads(line) for line in (tmp_path / n / "metrics.jsonl").read_text().splitlines()]
            for n in ("plain", "iv")]  # fmt: skip
    evals = [json.loads((tmp_path / n / "eval.json").read_text()) for n in ("plain", "iv")]
    assert evals[0]["before"] == evals[1]["before"]  # evaluations run without it
    assert rows[0][0]["mean_return"] == rows[1][0]["mean_return"]  # the first rollout too
    assert rows[0][0]["loss"] != rows[1][0]["loss"]  # the update's forwards see it
    w = [
        load_file(str(tmp_path / n / "checkpoints" / "step_000002" / "trainable.safetensors"))
        for n in ("plain", "iv")
    ]
    assert any(not torch.equal(w[0][k], w[1][k]) for k in w[0])
    T.main(T.Args(**common, intervene_vector=str(tmp_path / "v"), intervene_mode="penalty", intervene_alpha=0.1,
                  out=str(tmp_path / "pen")))  # fmt: skip
    penalties = [json.loads(line)["intervention_penalty"] for line in (tmp_path / "pen" / "metrics.jsonl").read_text().splitlines()]  # fmt: skip
    assert all(p > 0 for p in penalties)


def test_intervention_settings_errors_name_the_fix(tmp_path):
    ConceptVector({0: torch.ones(64), 1: torch.ones(64)}, concept="x").save(tmp_path / "two")
    with pytest.raises(ValueError, match="no-reuse-rollout-activations"):
        T.main(T.Args(**TINY, lora_layers=1, intervene_vector=str(tmp_path / "two"), out=str(tmp_path / "a")))
    with pytest.raises(ValueError, match="set intervene_layer"):
        T.main(T.Args(**TINY, reuse_rollout_activations=False, intervene_vector=str(tmp_path / "two"),
                      out=str(tmp_path / "b")))  # fmt: skip
    with pytest.raises(ValueError, match="intervene_mode must be"):
        T.main(
            T.Args(
                **TINY, intervene_vector=str(tmp_path / "two"), intervene_mode="x", out=str(tmp_path / "c")
            )
        )
