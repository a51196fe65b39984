"""Does llama.cpp steer with our exported control vector exactly as we do? Measured, with a wrong-layer control.

``ConceptVector.to_gguf`` writes llama.cpp's control-vector format. This module loads the bundled SmolLM2 GGUF
and that file with llama.cpp (llama-cpp-python, built from source into a cache outside the repository by
``scripts/build_llama_cpp.sh``), reads the next-token logits of chat prompts with and without the vector
(``--control-vector-scaled FILE alpha``: every position, every layer the file has), and compares the logit
shift ``Δ = steered − unsteered`` with ours: ``steering.apply(model, v, layers=[l], alpha, positions="all")``
on the same GGUF dequantized to float32 (``probes.models.load_model``), on the same token ids.

The engines differ by quantization (llama.cpp multiplies Q4_1 weights with 8-bit-quantized activations; we
use the dequantized weights in float32), so the logits are compared with a stated tolerance: the relative
error of the centred shift, ``‖Δ_llama.cpp − Δ_ours‖ / ‖Δ_ours‖`` per prompt (logits centred over the
vocabulary). The control that makes the tolerance meaningful: the same error against ours applied one block
lower and one block higher (the off-by-one mistakes a wrong numbering would make) must be far above it.

Run: ``bash scripts/build_llama_cpp.sh && python -m steering.llama_cpp_check`` (writes
``docs/diagnostics/llama_cpp_control_vector.json``); ``tests/test_llama_cpp.py`` (slow) runs it when the build
is in the cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from probes.artifacts import write_text
from probes.concept_vector import ConceptVector
from probes.layers import check_layer, n_layers
from probes.models import bundled_gguf, load_model
from steering.apply import apply

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECORD = REPO_ROOT / "docs" / "diagnostics" / "llama_cpp_control_vector.json"
PROMPTS: tuple[str, ...] = (
    "How are you feeling right now?",
    "Describe your day in one word.",
    "What do you think about the weather today?",
    "Tell me about the last game you played.",
)
DEFAULT_TOLERANCE = 0.15
DEFAULT_STRENGTH = 0.5


class LlamaCppError(RuntimeError):
    """llama.cpp is not built here, or its run failed (the message carries its stderr)."""


def llama_cpp_dir() -> Path:
    """Where ``scripts/build_llama_cpp.sh`` installs llama-cpp-python (``$WELFARE_AXIS_LLAMA_CPP_DIR`` overrides)."""
    override = os.environ.get("WELFARE_AXIS_LLAMA_CPP_DIR")
    if override:
        return Path(override)
    return Path.home() / ".cache" / "welfare-axis" / f"llama-cpp-{LLAMA_CPP_PYTHON_VERSION}"


def llama_cpp_available() -> bool:
    """Whether a finished build is in :func:`llama_cpp_dir`."""
    return (llama_cpp_dir() / ".complete").is_file()


def llama_cpp_next_token_logits(
    model_gguf: str | os.PathLike[str],
    token_ids: Sequence[Sequence[int]],
    *,
    control_vector: str | os.PathLike[str] | None = None,
    strength: float = 1.0,
    n_threads: int = 2,
) -> Float[Tensor, "prompt vocab"]:
    """llama.cpp's next-token logits after each prompt (in a child process), optionally with a control vector.

    Raises:
        LlamaCppError: no build in the cache (the message names the script), or llama.cpp failed.
    """
    if not llama_cpp_available():
        raise LlamaCppError(
            f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} is not built in {llama_cpp_dir()}: run "
            "bash scripts/build_llama_cpp.sh (about 10 min on 2 cores)"
        )
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory(prefix="welfare-axis-llama-cpp-") as tmp:
        request = Path(tmp) / "request.json"
        out = Path(tmp) / "logits.safetensors"
        request.write_text(
            json.dumps(
                {
                    "model": str(model_gguf),
                    "token_ids": [list(map(int, ids)) for ids in token_ids],
                    "control_vector": str(control_vector) if control_vector else None,
                    "strength": float(strength),
                    "n_threads": n_threads,
                    "n_ctx": max(64, max(len(ids) for ids in token_ids) + 8),
                }
            )
        )
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(llama_cpp_dir()), str(REPO_ROOT), env.get("PYTHONPATH", "")])
        done = subprocess.run(
            [sys.executable, "-m", "steering._llama_cpp_worker", str(request), str(out)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise LlamaCppError(f"llama.cpp run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        logits = load_file(str(out))
    return torch.stack([logits[f"logits.{i}"] for i in range(len(token_ids))])


def _centred(logits: Tensor) -> Tensor:
    return logits - logits.mean(dim=-1, keepdim=True)


def shift_error(theirs: Tensor, ours: Tensor) -> list[float]:
    """``‖Δ_theirs − Δ_ours‖ / ‖Δ_ours‖`` per prompt (rows of centred logit shifts)."""
    return [float(e) for e in ((theirs - ours).norm(dim=-1) / ours.norm(dim=-1))]


@dataclass(frozen=True)
class LayerCheck:
    """One steered layer: llama.cpp's logit shift against ours at that layer and at its neighbours."""

    layer: int
    alpha: float
    vector_norm: float
    steered_gap: list[float]  # ‖z_llama.cpp − z_ours‖ / ‖z_ours‖ per prompt, both steered (centred)
    relative_shift: list[
        float
    ]  # ‖Δ_ours‖ / ‖z_ours‖ per prompt (centred logits): how far the vector moves them
    shift_error: list[float]  # vs ours at the same layer
    wrong_layer_error: dict[str, list[float]]  # "layer-1" / "layer+1": vs ours one block off
    top1_agree: float  # share of prompts whose steered argmax token agrees

    def passed(self, tolerance: float) -> bool:
        wrong = [e for errors in self.wrong_layer_error.values() for e in errors]
        return max(self.shift_error) <= tolerance and (not wrong or min(wrong) > tolerance)


@dataclass(frozen=True)
class LlamaCppComparison:
    """The measured agreement of llama.cpp's control-vector steering with ours (see the module docstring)."""

    model: str
    gguf: str
    vector: str
    prompts: list[str]
    tolerance: float
    unsteered_gap: list[float]  # ‖z_llama.cpp − z_ours‖ / ‖z_ours‖ per prompt, centred, no steering
    unsteered_top1_agree: float
    layers: list[LayerCheck]
    llama_cpp_python: str
    seconds: float

    @property
    def passed(self) -> bool:
        return all(check.passed(self.tolerance) for check in self.layers)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "passed": self.passed}

    def summary(self) -> str:
        lines = [
            f"llama.cpp {self.llama_cpp_python} vs welfare-axis on {self.model} ({self.gguf}), vector {self.vector}, "
            f"{len(self.prompts)} prompts; tolerance on the relative error of the logit shift: {self.tolerance}",
            f"  unsteered: logit gap {max(self.unsteered_gap):.3f} (max over prompts, relative), "
            f"top-1 agreement {self.unsteered_top1_agree:.2f}",
        ]
        for check in self.layers:
            wrong = ", ".join(f"{k} {min(v):.2f}" for k, v in check.wrong_layer_error.items())
            lines.append(
                f"  layer {check.layer} (alpha {check.alpha:g}, |v| {check.vector_norm:.2f}): shift error "
                f"max {max(check.shift_error):.3f} (shift/|z| ≥ {min(check.relative_shift):.2f}); steered gap {max(check.steered_gap):.3f}; wrong layer min {wrong}; top-1 agreement "
                f"{check.top1_agree:.2f} -> {'ok' if check.passed(self.tolerance) else 'FAILED'}"
            )
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)


def _our_logits(model, ids: list[list[int]], vector=None, layer=None, alpha=0.0) -> Tensor:
    rows = []
    with torch.no_grad():
        for row in ids:
            batch = torch.tensor([row])
            if vector is None:
                rows.append(model(batch).logits[0, -1].float())
            else:
                with apply(model, vector, layers=[layer], alpha=alpha, positions="all"):
                    rows.append(model(batch).logits[0, -1].float())
    return torch.stack(rows)


def compare_with_llama_cpp(
    *,
    model_name: str = "smollm2-135m-instruct",
    layers: Sequence[int] | None = None,
    strength: float = DEFAULT_STRENGTH,
    prompts: Sequence[str] = PROMPTS,
    tolerance: float = DEFAULT_TOLERANCE,
    vector: ConceptVector | None = None,
) -> LlamaCppComparison:
    """Steer the bundled model with ``vector`` (default: the sentiment positive-control vector) in both engines.

    Each layer in ``layers`` (default: 1, the middle block and the last block) is exported alone with
    ``to_gguf`` and compared; see the module docstring for the measure and the control. At each layer the
    coefficient is ``alpha = strength * median‖h‖ / ‖v‖`` (``‖α·v‖`` a fixed share of the residual norm there,
    so that every layer's shift stands above the engines' quantization gap).
    """
    from steering.generate import render_prompts
    from steering.positive_control import median_residual_norm, sentiment_vector

    started = time.perf_counter()
    model, tokenizer = load_model(model_name, device="cpu", dtype="float32")
    total = n_layers(model)
    chosen = [
        check_layer(model, layer) for layer in (layers if layers is not None else (1, total // 2, total - 1))
    ]
    if 0 in chosen:
        raise ValueError("llama.cpp cannot steer block 0 (it rejects direction.0): pick layers >= 1")
    if vector is None:
        vector = sentiment_vector(model, tokenizer, name=model_name)
    texts = render_prompts(tokenizer, list(prompts))
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    with tempfile.TemporaryDirectory(prefix="welfare-axis-llama-cpp-") as tmp:
        gguf = bundled_gguf(model_name, tmp)
        plain_ours = _centred(_our_logits(model, ids))
        plain_cpp_raw = llama_cpp_next_token_logits(gguf, ids)
        plain_cpp = _centred(plain_cpp_raw)
        checks = []
        for layer in chosen:
            alpha = (
                strength
                * median_residual_norm(model, tokenizer, layer, list(prompts))
                / float(vector[layer].norm())
            )
            single = vector.select(layer)
            path = single.to_gguf(Path(tmp) / f"direction_{layer}.gguf")
            alpha = round(alpha, 4)
            cpp = _centred(llama_cpp_next_token_logits(gguf, ids, control_vector=path, strength=alpha))
            ours = _centred(_our_logits(model, ids, vector, layer, alpha))
            wrong = {}
            for name, other in (("layer-1", layer - 1), ("layer+1", layer + 1)):
                if 0 <= other < total:
                    shifted = vector.replace(directions={other: vector[layer]})
                    off = _centred(_our_logits(model, ids, shifted, other, alpha))
                    wrong[name] = shift_error(cpp - plain_cpp, off - plain_ours)
            checks.append(
                LayerCheck(
                    layer=layer,
                    alpha=round(alpha, 4),
                    vector_norm=float(vector[layer].norm()),
                    steered_gap=[float(e) for e in (cpp - ours).norm(dim=-1) / ours.norm(dim=-1)],
                    relative_shift=[
                        float(n) for n in (ours - plain_ours).norm(dim=-1) / plain_ours.norm(dim=-1)
                    ],
                    shift_error=shift_error(cpp - plain_cpp, ours - plain_ours),
                    wrong_layer_error=wrong,
                    top1_agree=float((cpp.argmax(-1) == ours.argmax(-1)).float().mean()),
                )
            )
        gguf_name = Path(gguf).name
    import importlib.metadata

    return LlamaCppComparison(
        model=model_name,
        gguf=gguf_name,
        vector=f"{vector.concept or 'vector'} ({vector.method or 'unknown method'})",
        prompts=list(prompts),
        tolerance=tolerance,
        unsteered_gap=[float(e) for e in (plain_cpp - plain_ours).norm(dim=-1) / plain_ours.norm(dim=-1)],
        unsteered_top1_agree=float((plain_cpp.argmax(-1) == plain_ours.argmax(-1)).float().mean()),
        layers=checks,
        llama_cpp_python=_installed_version(importlib.metadata),
        seconds=round(time.perf_counter() - started, 1),
    )


def _installed_version(metadata) -> str:
    for dist in metadata.distributions(path=[str(llama_cpp_dir())]):
        if dist.metadata["Name"] in ("llama_cpp_python", "llama-cpp-python"):
            return dist.version
    return LLAMA_CPP_PYTHON_VERSION


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument(
        "--strength", type=float, default=DEFAULT_STRENGTH, help="‖alpha·v‖ / median ‖h‖ per layer"
    )
    parser.add_argument("--layers", type=int, nargs="*", default=None)
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    parser.add_argument("--out", type=Path, default=DEFAULT_RECORD)
    args = parser.parse_args(argv)
    result = compare_with_llama_cpp(
        model_name=args.model, layers=args.layers, strength=args.strength, tolerance=args.tolerance
    )
    print(result.summary())
    write_text(args.out, json.dumps(result.to_json(), indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
