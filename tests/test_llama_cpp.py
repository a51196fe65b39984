"""llama.cpp steers with our exported control vectors as we do (slow; needs scripts/build_llama_cpp.sh)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from probes.concept_vector import ConceptVector
from steering.llama_cpp_check import (
    REPO_ROOT,
    LayerCheck,
    LlamaCppError,
    llama_cpp_available,
    llama_cpp_dir,
    llama_cpp_next_token_logits,
    shift_error,
)

needs_build = pytest.mark.skipif(
    not llama_cpp_available(),
    reason=f"llama.cpp is not built in {llama_cpp_dir()}: run bash scripts/build_llama_cpp.sh (about 4-10 min)",
)


def test_shift_error_is_the_relative_norm_of_the_difference():
    ours = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    theirs = torch.tensor([[3.0, 4.0 + 0.5], [0.0, 0.0]])
    assert shift_error(theirs, ours) == [pytest.approx(0.1), pytest.approx(1.0)]


def test_a_layer_passes_only_if_its_error_is_small_and_its_neighbours_are_not():
    check = LayerCheck(
        layer=3, alpha=1.0, vector_norm=1.0, steered_gap=[0.0], relative_shift=[0.5],
        shift_error=[0.05, 0.1], wrong_layer_error={"layer-1": [0.4], "layer+1": [0.3]}, top1_agree=1.0,
    )  # fmt: skip
    assert check.passed(0.15)
    assert not check.passed(0.08)  # its own error is above the tolerance
    assert not check.passed(0.35)  # a neighbouring layer is within it: the check cannot tell layers apart


def test_missing_build_names_the_script(monkeypatch, tmp_path):
    monkeypatch.setenv("WELFARE_AXIS_LLAMA_CPP_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(LlamaCppError, match="scripts/build_llama_cpp.sh"):
        llama_cpp_next_token_logits("model.gguf", [[1, 2]])


def test_the_record_in_docs_passed():
    record = json.loads((REPO_ROOT / "docs" / "diagnostics" / "llama_cpp_control_vector.json").read_text())
    assert record["passed"] is True
    assert [check["layer"] for check in record["layers"]] == [1, 15, 29]


def _load_in_llama_cpp(path, strength=1.0):
    code = (
        "import sys, json; from steering._llama_cpp_worker import load_control_vector; "
        f"n, d = load_control_vector({str(path)!r}, {strength}); print(json.dumps([n, d.tolist()]))"
    )
    env = {"PYTHONPATH": f"{llama_cpp_dir()}:{REPO_ROOT}"}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


@pytest.mark.slow
@needs_build
def test_llama_cpp_loader_reads_our_layout(tmp_path):
    """llama.cpp's loader: direction.N lands in row N-1, scaled; direction.0 is rejected."""
    v = ConceptVector({1: torch.arange(4.0), 3: -torch.ones(4)}, concept="toy")
    done = _load_in_llama_cpp(v.to_gguf(tmp_path / "v.gguf"), strength=2.0)
    assert done.returncode == 0, done.stderr
    n_embd, data = json.loads(done.stdout)
    assert n_embd == 4
    assert data == [0.0, 2.0, 4.0, 6.0] + [0.0] * 4 + [-2.0] * 4
    with pytest.warns(UserWarning):
        pass_through = ConceptVector({0: torch.ones(4), 2: torch.ones(4)}).to_gguf(tmp_path / "no0.gguf")
    assert _load_in_llama_cpp(pass_through).returncode == 0
    with_zero = ConceptVector({0: torch.ones(4)}).to_gguf(tmp_path / "zero.gguf", include_layer0=True)
    rejected = _load_in_llama_cpp(with_zero)
    assert rejected.returncode != 0 and "invalid (zero) direction tensor layer index" in rejected.stderr


@pytest.mark.slow
@needs_build
def test_llama_cpp_steers_like_us_on_smollm2():
    from steering.llama_cpp_check import compare_with_llama_cpp

    result = compare_with_llama_cpp(
        prompts=("How are you feeling right now?", "Describe your day in one word.")
    )
    assert result.passed, result.summary()
    assert max(result.unsteered_gap) < 0.1  # the same weights: only quantization separates the engines
