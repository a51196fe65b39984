"""Positive control for the steering harness: a sentiment vector must move VADER sentiment of self-reports.

Recipe (the paper's "Prompt" sentiment vector, §A.4.6, on a small model):

1. ``v = h(pos) − h(neg)`` at the last token of the chat-formatted prompts "Describe a book using positive
   sentiment" / "... negative sentiment" (generation prompt included, so the last token is the end of the
   assistant header), at every layer; we steer one middle layer.
2. A random control ``r`` (seeded Gaussian, named ``"random"`` in the records) rescaled to ``‖v‖`` at that
   layer (β‖r‖ = α‖v‖ with β = α). (``u`` means the untrained model's vectors everywhere else.)
3. By default v is the raw difference, as in the paper, and α ∈ {−4, −2, 0, 2, 4} multiplies it. On
   SmolLM2-135M-Instruct at layer 15 (of 30) ‖v‖ ≈ 5.7 ≈ 0.033 × the median residual norm (≈ 174; the
   mean, ≈ 800, is dominated by a few massive-activation tokens), so α = 4 pushes by ≈ 13 % of a typical
   ‖h‖: strong enough to move sentiment, weak enough to stay coherent. ``--scale s`` instead rescales v to
   ``s · median‖h‖`` (what α means is then comparable across models).
4. Sweep α over the self-report prompts (n prompts × k samples, paper's "assistant" rule), score with VADER.

Pass criteria: v's mean sentiment rises monotonically with α and its slope's bootstrap CI excludes zero;
r's slope CI contains zero (flat).

Run: ``flock /tmp/wa/heavy.lock python -m steering.positive_control`` (``--help`` lists the settings).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from probes.artifacts import write_text
from probes.concept_vector import ConceptVector, dataset_hash
from probes.layers import check_layer, model_dtype, model_family, n_layers
from probes.models import load_model
from probes.record import capture
from steering.datasets import self_report_prompts
from steering.generate import render_prompts
from steering.reliability import Reliability, reliability_table
from steering.stats import CellSummary, SlopeRow, dose_response_slopes, is_monotonic, summarize_cells
from steering.sweep import SweepConfig, run_sweep

POSITIVE = "Describe a book using positive sentiment"
NEGATIVE = "Describe a book using negative sentiment"


@dataclass
class PositiveControlConfig:
    """Settings of the positive control (every field is a ``--flag``)."""

    model: str = "smollm2-135m-instruct"
    """Bundled model name or local checkpoint."""
    device: str = "auto"
    layer: int | None = None
    """Layer to steer (default: the middle block, ``n_layers // 2``)."""
    alphas: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0)
    scale: float | None = None
    """Rescale v so that ‖v‖ = scale · median‖h‖ at the layer (None: keep the raw difference, as the paper)."""
    n_prompts: int = 40
    """Self-report prompts (of 40)."""
    n_samples: int = 2
    max_new_tokens: int = 40
    temperature: float = 0.7
    seed: int = 0
    control_seed: int = 1
    n_boot: int = 1000
    batch_size: int = 40
    out_dir: Path = Path("runs/positive_control")
    """Where the sweep JSONL, the vectors and the summary go (rerun resumes)."""
    threads: int = 2


@dataclass
class PositiveControlResult:
    """Everything the README table needs."""

    layer: int
    raw_norm: float
    vector_norm: float
    median_h_norm: float
    cells: list[CellSummary]
    slopes: list[SlopeRow]
    monotonic: bool
    v_excludes_zero: bool
    random_flat: bool
    elapsed_s: float
    reliability: list[Reliability] = dataclasses.field(default_factory=list)
    """Per vector: per-prompt slopes, anti-steerable share, R² of α, incoherence by α (``steering.reliability``);
    the random control is judged against v's direction (+1: α > 0 should read more positive)."""

    @property
    def passed(self) -> bool:
        return self.monotonic and self.v_excludes_zero and self.random_flat

    def markdown(self) -> str:
        """The per-α table and the slopes, as Markdown."""
        alphas = sorted({c.alpha for c in self.cells})
        lines = [
            f"layer {self.layer}; ‖v‖ = {self.vector_norm:.3f} (raw ‖μ+ − μ−‖ = {self.raw_norm:.3f}); "
            f"median ‖h‖ = {self.median_h_norm:.3f}; ‖v‖/‖h‖ = {self.vector_norm / self.median_h_norm:.3f}",
            "",
            "| α | α‖v‖ | sentiment, v (95% CI) | sentiment, random control (95% CI) | incoherent v / random |",
            "|---|---|---|---|---|",
        ]
        by = {(c.vector, c.alpha): c for c in self.cells}
        for alpha in alphas:
            v, r = by[("v", alpha)], by[("random", alpha)]
            lines.append(
                f"| {alpha:+g} | {alpha * self.vector_norm:+.2f} | {v.mean:+.2f} [{v.ci_low:+.2f}, {v.ci_high:+.2f}] | "
                f"{r.mean:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}] | "
                f"{v.incoherent_rate:.0%} / {r.incoherent_rate:.0%} |"
            )
        lines += ["", "| vector | slope per unit α (± SE) | bootstrap 95% CI | n |", "|---|---|---|---|"]
        for s in sorted(self.slopes, key=lambda s: s.vector, reverse=True):
            lines.append(
                f"| {s.vector} | {s.slope:+.3f} ± {s.se:.3f} | [{s.ci_low:+.3f}, {s.ci_high:+.3f}] | {s.n} |"
            )
        if self.reliability:
            lines += [
                "",
                "| vector | prompts | anti-steerable share (95% CI) | R² of α | per-prompt slope sd | incoherent by α |",
                "|---|---|---|---|---|---|",
            ]
            for rel in sorted(self.reliability, key=lambda r: r.vector, reverse=True):
                incoherent = ", ".join(
                    f"{a:+g}: {x:.2f}" for a, x in sorted(rel.incoherence_by_alpha.items())
                )
                lines.append(
                    f"| {rel.vector} | {rel.n_prompts} | {rel.anti_steerable:.2f} [{rel.anti_ci_low:.2f}, "
                    f"{rel.anti_ci_high:.2f}] | {rel.variance_explained:.3f} | {rel.prompt_slope_sd:.3f} | {incoherent} |"
                )
        lines += [
            "",
            f"monotonic (v): {self.monotonic}; v slope CI excludes 0: {self.v_excludes_zero}; "
            f"random flat (CI contains 0): {self.random_flat}; elapsed {self.elapsed_s / 60:.1f} min",
        ]
        return "\n".join(lines)


def sentiment_vector(model: Any, tokenizer: Any, *, name: str = "") -> ConceptVector:
    """``h(positive) − h(negative)`` at the last token of the chat-formatted prompt pair, every layer."""
    texts = render_prompts(tokenizer, [POSITIVE, NEGATIVE])
    acts = capture(model, tokenizer, texts, layers="all", position="last")
    return ConceptVector(
        {layer: (a[0] - a[1]).float() for layer, a in acts.items()},
        model_name=name or str(getattr(model.config, "welfare_axis_name", "") or type(model).__name__),
        model_family=model_family(model),
        model_dtype=model_dtype(model),
        position="last",
        method="prompt_pair_diff",
        dataset_hash=dataset_hash(texts),
        n_per_class={"positive": 1, "negative": 1},
        concept="sentiment",
    )


def median_residual_norm(model: Any, tokenizer: Any, layer: int, prompts: list[str]) -> float:
    """Median ‖h‖ at ``layer`` over every non-pad token of the chat-formatted ``prompts``."""
    acts = capture(
        model, tokenizer, render_prompts(tokenizer, prompts), layers=[layer], position="all", reduce="none"
    )
    return float(acts[layer].norm(dim=-1).median())


def random_control(like: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded Gaussian direction with the norm of ``like``."""
    r = torch.randn(like.shape[0], generator=torch.Generator().manual_seed(seed))
    return r * (like.norm() / r.norm())


def run_positive_control(
    model: Any, tokenizer: Any, config: PositiveControlConfig, *, scorer: Any = None
) -> PositiveControlResult:
    """Extract the vector, sweep α for v and its random control, and fit the slopes."""
    started = time.perf_counter()
    layer = check_layer(model, config.layer if config.layer is not None else n_layers(model) // 2)
    prompts = self_report_prompts(n=config.n_prompts, seed=0 if config.n_prompts < 40 else None)
    full = sentiment_vector(model, tokenizer)
    raw = full.directions[layer]
    h_norm = median_residual_norm(model, tokenizer, layer, [p.prompt for p in prompts])
    v = raw if config.scale is None else raw * (config.scale * h_norm / raw.norm())
    r = random_control(v, config.control_seed)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full.replace(metadata={"steer_layer": layer}).save(out / "sentiment_vector")
    sweep = SweepConfig(
        alphas=tuple(config.alphas),
        layers=(layer,),
        evals=("sentiment",),
        n_prompts=config.n_prompts,
        n_samples=config.n_samples,
        seeds=(config.seed,),
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        prompt_seed=0,
        norm_match_to="v",
        batch_size=config.batch_size,
    )
    records = run_sweep(
        model, tokenizer, {"v": {layer: v}, "random": {layer: r}}, sweep, out / "sweep.jsonl", scorer=scorer
    )
    cells = summarize_cells(records)
    slopes = dose_response_slopes(records, n_boot=config.n_boot, seed=config.seed)
    by_vector = {s.vector: s for s in slopes}
    v_means = [c.mean for c in sorted((c for c in cells if c.vector == "v"), key=lambda c: c.alpha)]
    random_slope = by_vector["random"]
    result = PositiveControlResult(
        layer=layer,
        raw_norm=float(raw.norm()),
        vector_norm=float(v.norm()),
        median_h_norm=h_norm,
        cells=cells,
        slopes=slopes,
        monotonic=is_monotonic(v_means, increasing=True),
        v_excludes_zero=by_vector["v"].excludes_zero and by_vector["v"].slope > 0,
        random_flat=random_slope.ci_low <= 0 <= random_slope.ci_high,
        elapsed_s=time.perf_counter() - started,
        reliability=reliability_table(
            records, expected_signs={("v", "sentiment"): 1, ("random", "sentiment"): 1}
        ),
    )
    summary = {
        "config": {
            k: str(val) if isinstance(val, Path) else val for k, val in dataclasses.asdict(config).items()
        },
        "layer": layer,
        "raw_norm": result.raw_norm,
        "vector_norm": result.vector_norm,
        "median_h_norm": h_norm,
        "cells": [dataclasses.asdict(c) for c in cells],
        "slopes": [dataclasses.asdict(s) for s in slopes],
        "reliability": [dataclasses.asdict(r) for r in result.reliability],
        "passed": result.passed,
        "markdown": result.markdown(),
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return result


def main(config: PositiveControlConfig) -> PositiveControlResult:
    """Load the model, run the control, print the Markdown table."""
    torch.set_num_threads(config.threads)

    model, tokenizer = load_model(config.model, device=config.device)
    result = run_positive_control(model, tokenizer, config)
    print(result.markdown())
    print("PASS" if result.passed else "FAIL")
    return result


if __name__ == "__main__":
    import tyro

    main(tyro.cli(PositiveControlConfig))
