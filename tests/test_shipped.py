"""Shipped trained models: ship a run's adapter, load it by name, reproduce its check evaluation exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import training as T
from training import shipped as S

TINY = dict(model="tiny-llama", steps=2, episodes_per_step=4, group_size=2, n_turns=3, maze_size=12,
            progress=False, threads=1, lr=1e-2, checkpoint_every=1, eval_episodes=4)  # fmt: skip


@pytest.fixture(scope="module")
def shipped_root(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ship")
    T.main(T.Args(**TINY, out=str(tmp / "run")))
    root = tmp / "shipped"
    S.ship_run(tmp / "run", "tbrm-test", command="python -m training.train ...", commit="abc", root=root,
               progress=False)  # fmt: skip
    return tmp, root


def test_ship_run_writes_bf16_adapter_and_complete_provenance(shipped_root):
    tmp, root = shipped_root
    (found,) = S.shipped_models(root)
    assert found.name == "tiny-llama/tbrm-test"
    prov = found.provenance
    stored = load_file(str(found.path / "adapter.safetensors"))
    trained = load_file(str(T.latest_checkpoint(tmp / "run") / "trainable.safetensors"))
    assert set(stored) == set(trained)
    for name, w in stored.items():
        assert w.dtype == torch.bfloat16
        assert torch.equal(w, trained[name].to(torch.bfloat16))
    assert prov.sha256 == S._sha256(found.path / "adapter.safetensors")
    assert prov.size_bytes == (found.path / "adapter.safetensors").stat().st_size
    assert prov.commit == "abc" and prov.seed == 0 and prov.stored_dtype == "bfloat16"
    assert prov.train_args == T.load_run_args(tmp / "run")
    assert prov.before == json.loads((tmp / "run" / "eval.json").read_text())["before"]
    assert prov.after["n_episodes"] == 4 and prov.check["n_episodes"] == S.CHECK_EPISODES
    assert prov.gain["return_diff"] == pytest.approx(prov.after["mean_return"] - prov.before["mean_return"])
    assert "torch" in prov.versions and "held-out" in prov.line()
    assert not list(root.glob("**/.*scratch*")) and not list(root.glob("**/.*tmp*"))  # nothing half-written


def test_provenance_names_the_run_where_it_was_shipped_from(shipped_root, tmp_path):
    """A study trains in stages/.train.work and renames it: the provenance names the run as shipped."""
    import shutil

    tmp, _ = shipped_root
    shutil.copytree(tmp / "run", tmp_path / "moved")
    prov = S.ship_run(tmp_path / "moved", "moved-test", command="c", commit="abc", root=tmp_path / "s",
                      progress=False).provenance  # fmt: skip
    assert T.load_run_args(tmp_path / "moved").out == str(tmp / "run")  # what its config recorded
    assert prov.args["out"] == str(tmp_path / "moved") and prov.args["init_from"] is None


def test_load_trained_by_name_merges_the_stored_adapter_and_reproduces_the_check(shipped_root):
    tmp, root = shipped_root
    net, tok = S.load_shipped("tiny-llama", "tbrm-test", root=root)
    assert not any(p.requires_grad for p in net.parameters())
    assert not any("lora" in name for name, _ in net.named_parameters())  # merged into a plain model
    base, _ = T.load_base_model(T.load_run_args(tmp / "run"))
    moved = [n for n, p in net.state_dict().items() if not torch.equal(p, base.state_dict()[n])]
    assert moved and all(".layers." in n for n in moved)
    got = S.verify_shipped("tiny-llama", "tbrm-test", root=root)
    assert got.returns == found_check(root)["returns"]


def test_a_warm_started_run_ships_with_the_untrained_models_evaluation(shipped_root, tmp_path):
    tmp, _ = shipped_root
    warm = T.load_run_args(tmp / "run")
    T.main(T.Args(**{**TINY, "steps": 1}, out=str(tmp_path / "rl"), init_from=str(tmp / "run")))
    prov = S.ship_run(tmp_path / "rl", "warm-test", command="c", commit="abc", root=tmp_path / "s",
                      progress=False).provenance  # fmt: skip
    own = json.loads((tmp_path / "rl" / "eval.json").read_text())["before"]  # the warm start's weights
    untrained = json.loads((tmp / "run" / "eval.json").read_text())["before"]
    assert prov.before == untrained and prov.before_from == str(tmp / "run") and own != untrained
    assert S._portable(str(tmp / "run")) == str(tmp / "run")  # outside the working directory: as given
    assert S._portable(str(Path.cwd() / "runs" / "x")) == "runs/x"  # inside it: no machine path is stored
    assert prov.gain["return_diff"] == pytest.approx(prov.after["mean_return"] - untrained["mean_return"])
    assert S.shipped_models(tmp_path / "s")[0].provenance == prov  # before_from is stored and read back
    # a warm start evaluated differently cannot be paired with the run
    T.main(
        T.Args(
            **{**TINY, "steps": 1, "eval_episodes": 3}, out=str(tmp_path / "odd"), init_from=str(tmp / "run")
        )
    )
    with pytest.raises(ValueError, match="evaluated differently"):
        S.ship_run(tmp_path / "odd", "odd", command="c", commit="abc", root=tmp_path / "s", progress=False)
    assert warm.init_from is None


def found_check(root):
    (found,) = S.shipped_models(root)
    return found.provenance.check


def test_shipped_model_errors_name_the_problem(shipped_root, monkeypatch):
    tmp, root = shipped_root
    with pytest.raises(S.ShippedModelError, match="shipped: tiny-llama/tbrm-test"):
        S.load_shipped("tiny-llama", "nope", root=root)
    with pytest.raises(ValueError, match="checkpoint= applies to run directories"):
        T.load_trained("tiny-llama", "tbrm-test", checkpoint="step_000001")
    (found,) = S.shipped_models(root)
    monkeypatch.setattr(S, "_sha256", lambda path: "0" * 64)
    with pytest.raises(S.ShippedModelError, match="does not match the sha256"):
        S.load_shipped("tiny-llama", "tbrm-test", root=root)


@pytest.mark.slow
@pytest.mark.parametrize("shipped", S.shipped_models(), ids=lambda m: m.name)
def test_every_shipped_model_loads_and_reproduces_its_recorded_check_evaluation(shipped):
    prov = shipped.provenance
    assert shipped.path.joinpath("adapter.safetensors").stat().st_size == prov.size_bytes
    got = S.verify_shipped(prov.model, prov.recipe)  # raises unless returns, Gold and Mold are identical
    assert got.mean_return == pytest.approx(prov.check["mean_return"], abs=0)


def test_shipped_adapters_stay_within_the_size_budget():
    assert sum(m.provenance.size_bytes for m in S.shipped_models()) <= 30 * 2**20


def test_an_unfinished_run_does_not_ship(tmp_path):
    T.main(T.Args(**{**TINY, "steps": 2, "stop_at_step": 1}, out=str(tmp_path / "half")))
    with pytest.raises(ValueError, match="1 of 2 steps"):
        S.ship_run(tmp_path / "half", "x", command="c", commit="c", root=tmp_path / "s", progress=False)
    assert not (tmp_path / "s" / "tiny-llama" / "x").exists()
