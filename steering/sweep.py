"""Dose-response sweeps: vectors × layers × α × evals × seeds, one JSONL record per finished cell.

Each cell (vector, layer, α, eval, seed) runs one evaluation over ``n_prompts`` prompts × ``n_samples``
samples. The cells of one (eval, seed) run together: their rows share ``generate`` calls, each row steered by
its own cell (``steering.generate.generate_steered_responses``; decoding a few rows on a CPU is bound by
memory bandwidth, so 27 rows cost little more than 3), with the same random numbers for the same (prompt,
sample) in every cell. Each cell is appended to ``out_path`` when its group finishes (atomically: the file is
rewritten to a temporary file and moved into place). Rerunning the same sweep skips finished cells, and a
cell's numbers do not depend on which cells it ran with (up to float rounding); an error keeps the finished
cells on disk. A file written by a different configuration or a different vector under the same
name is refused rather than mixed.

With the additive operator, α = 0 is the unsteered model whatever the vector and layer (bit for bit, see
``tests/test_apply.py``), so it is computed once per (eval, seed) and stored with ``vector = None``;
:mod:`steering.stats` shares it with every (vector, layer).

Norm-matched controls: ``SweepConfig(norm_match_to="v")`` rescales every other vector at each layer to
the norm of ``v``, so the same α gives the same push (β‖u‖ = α‖v‖); records store ``push = α‖dir‖``.

Example:
    >>> cfg = SweepConfig(layers=(15,), evals=("sentiment",), n_prompts=10, n_samples=2)  # doctest: +SKIP
    >>> records = run_sweep(model, tok, {"v": v, "u": u}, cfg, "runs/sweep.jsonl")  # doctest: +SKIP
    >>> dose_response_slopes(records)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from probes.artifacts import write_text
from probes.layers import check_layer
from steering.apply import _directions_by_layer, check_positions
from steering.datasets import arithmetic_problems, balanced_refusal_prompts, qa_items, self_report_prompts
from steering.evals.backtracking import classify_solutions
from steering.evals.confidence import evaluate_confidence, propose_answers
from steering.evals.judges import Judge
from steering.evals.refusal import classify_responses
from steering.evals.sentiment import SentimentScorer, score_self_reports
from steering.generate import Steering, generate_steered_responses
from steering.operators import OPERATORS, operator_by_name

EVALS: tuple[str, ...] = ("sentiment", "confidence", "refusal", "backtracking")
METRICS = {"sentiment": "score", "confidence": "p_true", "refusal": "refused", "backtracking": "backtracked"}


class SweepFileError(ValueError):
    """The results file belongs to a different sweep (configuration or vectors)."""


@dataclass(frozen=True)
class SweepConfig:
    """Settings of a dose-response sweep (saved, as a fingerprint, with every record)."""

    alphas: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0)
    """Steering coefficients (the paper's grid; the layer sweep drops 0)."""
    layers: tuple[int, ...] | None = None
    """Layers to steer, one at a time; ``None``: every layer each vector has."""
    evals: tuple[str, ...] = ("sentiment",)
    """Any of ``sentiment``, ``confidence``, ``refusal``, ``backtracking``."""
    n_prompts: int = 10
    """Prompts per cell (refusal: split evenly over benign / borderline / harmful)."""
    n_samples: int = 2
    """Sampled responses per prompt (confidence: one forward pass per prompt, seed-independent)."""
    seeds: tuple[int, ...] = (0,)
    """Sampling seeds; each is its own cell."""
    max_new_tokens: int = 48
    temperature: float = 0.7
    positions: str = "assistant"
    """Position rule (see :mod:`steering.apply`)."""
    operator: str = "add"
    """``add``, ``ablate`` or ``ablate_then_add``."""
    prompt_seed: int = 0
    """Which subset of each dataset is used."""
    norm_match_to: str | None = None
    """Name of the vector whose per-layer norm every other vector is rescaled to."""
    batch_size: int = 64
    """Rows per ``generate`` call; a generation eval's cells share their calls (results do not depend on it)."""
    keep_responses: bool = True
    """Store the per-response rows (texts) in the records."""

    def __post_init__(self) -> None:
        for alpha in self.alphas:
            if not math.isfinite(alpha):
                raise ValueError(f"alphas must be finite, got {self.alphas}")
        if not self.alphas:
            raise ValueError("alphas is empty")
        unknown = [e for e in self.evals if e not in EVALS]
        if unknown or not self.evals:
            raise ValueError(f"unknown evals {unknown or list(self.evals)}: choose from {list(EVALS)}")
        if self.operator not in OPERATORS:
            raise ValueError(f"unknown operator {self.operator!r}: choose from {sorted(OPERATORS)}")
        check_positions(self.positions)
        for name in ("n_prompts", "n_samples", "max_new_tokens", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.seeds:
            raise ValueError("seeds is empty")

    def fingerprint(self) -> str:
        """A short hash of every setting that changes results."""
        settings = {
            k: v for k, v in dataclasses.asdict(self).items() if k not in ("batch_size", "keep_responses")
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:16]


def _tensor_hash(tensors: Mapping[int, Tensor]) -> str:
    digest = hashlib.sha256()
    for layer in sorted(tensors):
        digest.update(str(layer).encode())
        digest.update(tensors[layer].detach().to(torch.float32).cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def prepare_vectors(
    model: nn.Module, vectors: Mapping[str, Any], config: SweepConfig
) -> dict[str, dict[int, Tensor]]:
    """``{name: {layer: direction}}`` for the sweep's layers, norm-matched when the config asks for it."""
    if not vectors:
        raise ValueError("no vectors to sweep")
    out: dict[str, dict[int, Tensor]] = {}
    for name, vector in vectors.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"vector names must be non-empty strings, got {name!r}")
        by_layer = _directions_by_layer(vector)
        if isinstance(by_layer, Tensor):
            if config.layers is None:
                raise ValueError(f"vector {name!r} is a single Tensor: set SweepConfig.layers")
            by_layer = {check_layer(model, layer): by_layer for layer in config.layers}
        else:
            by_layer = {check_layer(model, layer): vec for layer, vec in by_layer.items()}
            if config.layers is not None:
                wanted = [check_layer(model, layer) for layer in config.layers]
                missing = [layer for layer in wanted if layer not in by_layer]
                if missing:
                    raise KeyError(
                        f"vector {name!r} has no direction at layers {missing}; it has {sorted(by_layer)}"
                    )
                by_layer = {layer: by_layer[layer] for layer in wanted}
        out[name] = {layer: vec.detach().float().cpu() for layer, vec in by_layer.items()}
    reference = config.norm_match_to
    if reference is not None:
        if reference not in out:
            raise KeyError(f"norm_match_to={reference!r} is not one of the vectors {sorted(out)}")
        for name, by_layer in out.items():
            if name == reference:
                continue
            for layer, vec in by_layer.items():
                if layer not in out[reference]:
                    raise KeyError(
                        f"reference vector {reference!r} has no layer {layer} to norm-match {name!r}"
                    )
                norm = torch.linalg.vector_norm(vec)
                if norm == 0:
                    raise ValueError(f"vector {name!r} is zero at layer {layer}; cannot norm-match it")
                by_layer[layer] = vec * (torch.linalg.vector_norm(out[reference][layer]) / norm)
    return out


@dataclass(frozen=True)
class Cell:
    """One unit of work; ``vector is None`` marks the shared unsteered (α = 0, additive) baseline."""

    eval: str
    seed: int
    alpha: float
    vector: str | None
    layer: int | None

    @property
    def key(self) -> str:
        return json.dumps([self.eval, self.seed, self.alpha, self.vector, self.layer])


def plan_cells(vectors: Mapping[str, Mapping[int, Tensor]], config: SweepConfig) -> list[Cell]:
    """Every cell of the sweep, in run order (seed, eval, α, vector, layer)."""
    cells: list[Cell] = []
    share_baseline = config.operator == "add"
    for seed in config.seeds:
        for eval_name in config.evals:
            if eval_name == "confidence" and seed != config.seeds[0]:
                continue  # one deterministic forward pass: seeds would repeat it
            for alpha in config.alphas:
                if share_baseline and alpha == 0:
                    cells.append(Cell(eval_name, seed, 0.0, None, None))
                    continue
                for name, by_layer in vectors.items():
                    for layer in sorted(by_layer):
                        cells.append(Cell(eval_name, seed, float(alpha), name, layer))
    return cells


# ----------------------------------------------------------------------------------------------------------
# Results file


def load_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All cell records of a sweep file (empty if the file does not exist)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise SweepFileError(
                    f"{path}:{number} is not valid JSON ({error}); the file is corrupt"
                ) from error
    return records


def _append_atomically(path: Path, record: Mapping[str, Any]) -> None:
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    write_text(path, existing + json.dumps(record, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------------------------------------
# Running cells


@dataclass
class _Context:
    model: nn.Module
    tokenizer: Any
    config: SweepConfig
    scorer: SentimentScorer | None
    judge: Judge | None
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)


def _generation_task(ctx: _Context, eval_name: str) -> tuple[list[str], Callable[[list[list[str]]], Any]]:
    """A generation eval's prompts, and the function that scores one cell's ``responses[prompt][sample]``."""
    config = ctx.config
    if eval_name == "sentiment":
        prompts = self_report_prompts(n=min(config.n_prompts, 40), seed=config.prompt_seed)
        return [p.prompt for p in prompts], lambda responses: score_self_reports(
            prompts, responses, ctx.scorer
        )
    if eval_name == "refusal":
        refusal = balanced_refusal_prompts(max(1, config.n_prompts // 3), seed=config.prompt_seed)
        return [p.prompt for p in refusal], lambda responses: classify_responses(
            refusal, responses, judge=ctx.judge
        )
    problems = arithmetic_problems(n=config.n_prompts, seed=config.prompt_seed)
    return [p.question for p in problems], lambda responses: classify_solutions(
        problems, responses, judge=ctx.judge
    )


def _cell_runs(
    ctx: _Context, cells: Sequence[Cell], steerings: Sequence[Steering | None]
) -> list[Callable[[], Any]]:
    """One call per cell of one (eval, seed) that returns its result table. A generation eval's cells share
    their ``generate`` calls, made here (``generate_steered_responses``: each row steered by its own cell,
    common random numbers across cells), and each call scores its cell; confidence runs one forward pass
    per cell when called."""
    config = ctx.config
    eval_name, seed = cells[0].eval, cells[0].seed
    if eval_name == "confidence":
        items = qa_items(n=config.n_prompts, seed=config.prompt_seed)

        def confidence(steering: Steering | None) -> Any:
            if "answers" not in ctx.cache:  # phase 0 (unsteered), once per sweep
                ctx.cache["answers"] = propose_answers(
                    ctx.model, ctx.tokenizer, items, batch_size=config.batch_size
                )
            return evaluate_confidence(ctx.model, ctx.tokenizer, items, answers=ctx.cache["answers"],
                                       steering=steering, batch_size=config.batch_size)  # fmt: skip

        return [functools.partial(confidence, steering) for steering in steerings]
    prompts, score = _generation_task(ctx, eval_name)
    responses = generate_steered_responses(  # an ablation's cells run in batches of their own (batch_groups)
        ctx.model,
        ctx.tokenizer,
        prompts,
        steerings,
        n_samples=config.n_samples,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        seed=seed,
        batch_size=config.batch_size,
    )
    return [functools.partial(score, cell_responses) for cell_responses in responses]


def _id_of(row: Any) -> str:
    for name in ("prompt_id", "item_id", "problem_id"):
        if hasattr(row, name):
            return getattr(row, name)
    return ""


def run_sweep(
    model: nn.Module,
    tokenizer: Any,
    vectors: Mapping[str, Any],
    config: SweepConfig,
    out_path: str | os.PathLike[str],
    *,
    scorer: SentimentScorer | None = None,
    judge: Judge | None = None,
    on_cell: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) a sweep; returns every record in ``out_path`` once all cells are done.

    Args:
        model, tokenizer: the model to steer.
        vectors: ``{name: ConceptVector | {layer: Tensor} | Tensor}``.
        config: the sweep settings.
        out_path: JSONL results file; finished cells found there are skipped.
        scorer: sentiment scorer (default VADER); judge: optional judge for refusal / backtracking.
        on_cell: called with each new record (progress reporting).
    """
    path = Path(out_path)
    prepared = prepare_vectors(model, vectors, config)
    vector_hashes = {name: _tensor_hash(by_layer) for name, by_layer in prepared.items()}
    fingerprint = config.fingerprint()
    done: set[str] = set()
    for record in load_records(path):
        if record.get("config") != fingerprint:
            raise SweepFileError(
                f"{path} holds results of a different sweep configuration ({record.get('config')} != "
                f"{fingerprint}); use a new out_path or delete the file"
            )
        name = record.get("vector")
        if name is not None and name in vector_hashes and record.get("vector_hash") != vector_hashes[name]:
            raise SweepFileError(
                f"{path} holds results for a different vector named {name!r}; use a new out_path or rename it"
            )
        done.add(record["key"])
    ctx = _Context(model, tokenizer, config, scorer, judge)
    operator = operator_by_name(config.operator)
    metric = METRICS
    pending = [cell for cell in plan_cells(prepared, config) if cell.key not in done]
    groups: dict[tuple[str, int], list[Cell]] = {}
    for cell in pending:  # the plan's order, grouped by (eval, seed)
        groups.setdefault((cell.eval, cell.seed), []).append(cell)
    for cells in groups.values():
        steerings = [
            None
            if cell.vector is None
            else Steering(
                {cell.layer: prepared[cell.vector][cell.layer]},
                layers=[cell.layer],
                alpha=cell.alpha,
                positions=config.positions,
                operator=operator,
            )  # fmt: skip
            for cell in cells
        ]
        started = time.perf_counter()
        runs = _cell_runs(ctx, cells, steerings)
        shared = (time.perf_counter() - started) / len(cells)  # the group's generation, shared by its cells
        for cell, run in zip(cells, runs, strict=True):
            started = time.perf_counter()
            table = run()
            elapsed = shared + time.perf_counter() - started
            norm = (
                0.0
                if cell.vector is None
                else float(torch.linalg.vector_norm(prepared[cell.vector][cell.layer]))
            )
            values = [getattr(row, metric[cell.eval]) for row in table]
            values = [None if v is None else float(v) for v in values]
            present = [v for v in values if v is not None]
            record: dict[str, Any] = {
                "key": cell.key,
                "config": fingerprint,
                "eval": cell.eval,
                "metric": metric[cell.eval],
                "seed": cell.seed,
                "alpha": cell.alpha,
                "vector": cell.vector,
                "vector_hash": vector_hashes.get(cell.vector) if cell.vector else None,
                "layer": cell.layer,
                "norm": norm,
                "push": cell.alpha * norm,
                "mean": sum(present) / len(present) if present else None,
                "n": len(values),
                "values": values,
                "incoherent": [bool(getattr(row, "incoherent", False)) for row in table],
                "ids": [_id_of(row) for row in table],
                "elapsed_s": elapsed,
                "cells_batched": len(cells),
            }
            if config.keep_responses:
                record["rows"] = table.to_records()
            _append_atomically(path, record)
            done.add(cell.key)
            if on_cell is not None:
                on_cell(record)
    return load_records(path)


def sweep_settings(config: SweepConfig) -> dict[str, Any]:
    """The config as a JSON-friendly dict (for run logs next to the results)."""
    return dataclasses.asdict(config)


def vector_norms(vectors: Mapping[str, Mapping[int, Tensor]]) -> dict[str, dict[int, float]]:
    """Per-vector, per-layer norms (after preparation)."""
    return {
        name: {layer: float(torch.linalg.vector_norm(vec)) for layer, vec in by_layer.items()}
        for name, by_layer in vectors.items()
    }


__all__: Sequence[str] = (
    "EVALS",
    "Cell",
    "SweepConfig",
    "SweepFileError",
    "load_records",
    "plan_cells",
    "prepare_vectors",
    "run_sweep",
    "sweep_settings",
    "vector_norms",
)
