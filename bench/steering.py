"""Steering speed against plain generation, measured in the same run, and sweep throughput.

1. ``steer_vs_generate``: the same batch of chat prompts, the same number of new tokens (greedy,
   ``min_new_tokens = max_new_tokens`` so steered and plain runs decode exactly as many steps), timed
   alternately plain / steered (hooks, paper's ``"assistant"`` rule, one layer); medians of ``--reps``.
   Also reported: the nnsight backend against the same plain baseline.
2. ``sweep_cells_per_min``: a small sentiment sweep through :func:`steering.sweep.run_sweep`
   (vector × α cells, ``--sweep-prompts`` prompts × 1 sample × ``--sweep-tokens`` tokens each, VADER
   scoring, JSONL writes included), counted as (prompt, α) cells per minute.
3. ``sweep_batched_vs_cells``: one evaluation of the default study's sweep (the unsteered baseline and two
   vectors at α ∈ {−4, −2, 2, 4}: 9 cells × 3 self-report prompts × 24 sampled tokens), generated cell by
   cell (one ``generate`` call of 3 rows per cell, as sweeps ran before) and all cells in one batch
   (``generate_steered_responses``, as ``run_sweep`` runs them now), alternated; medians of ``--reps``. The
   two give the same texts (checked) up to float rounding.

Ends with the headline lines named in shared/BENCH.md:
    BENCH steer_vs_generate <steered ÷ plain generate time> <=1.05
    BENCH sweep_cells_per_min <(prompt, α) cells per minute> report
    BENCH sweep_batched_vs_cells <cell-by-cell ÷ batched time> >=2

Run (heavy: takes the shared lock): flock /tmp/wa/heavy.lock python -m bench.steering [--model smollm2-135m-instruct]
    [--only-batched]  # part 3 alone
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: drop bench/ from sys.path so it cannot shadow the steering package
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse
import statistics
import tempfile
import time

import torch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="bundled name or local checkpoint")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch", type=int, default=8, help="prompts per generate call")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per generate call")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions of each variant")
    parser.add_argument("--alpha", type=float, default=4.0)
    parser.add_argument("--sweep-prompts", type=int, default=8)
    parser.add_argument("--sweep-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only-batched", action="store_true", help="run part 3 (batched sweep cells) alone")
    args = parser.parse_args(argv)
    if args.reps < 1:
        raise SystemExit(f"--reps must be at least 1; got {args.reps}")
    torch.set_num_threads(args.threads)

    from probes.layers import d_model, n_layers
    from probes.models import load_model
    from steering.apply import apply
    from steering.datasets import self_report_prompts
    from steering.generate import encode_left_padded, render_prompts
    from steering.nnsight_apply import generate_nnsight, wrap_nnsight
    from steering.sweep import SweepConfig, run_sweep

    model, tok = load_model(args.model, device=args.device)
    device = next(model.parameters()).device
    layer = n_layers(model) // 2
    vector = torch.randn(d_model(model), generator=torch.Generator().manual_seed(0))
    if args.only_batched:
        batched_vs_cells(model, tok, layer, args.reps)
        return
    prompts = [p.prompt for p in self_report_prompts()][: args.batch]
    batch = {k: v.to(device) for k, v in encode_left_padded(tok, render_prompts(tok, prompts)).items()}
    kwargs = dict(
        max_new_tokens=args.tokens,
        min_new_tokens=args.tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
    )

    def plain() -> torch.Tensor:
        return model.generate(**batch, **kwargs)

    def steered() -> torch.Tensor:
        with apply(model, {layer: vector}, layers=[layer], alpha=args.alpha, tokenizer=tok):
            return model.generate(**batch, **kwargs)

    lm = wrap_nnsight(model, tok)

    def steered_nnsight() -> torch.Tensor:
        return generate_nnsight(
            lm, {layer: vector}, batch["input_ids"], batch["attention_mask"], layers=[layer], alpha=args.alpha,
            tokenizer=tok, **kwargs,
        )  # fmt: skip

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        assert out.shape[1] == batch["input_ids"].shape[1] + args.tokens
        return time.perf_counter() - start

    for fn in (plain, steered, steered_nnsight):  # warm-up
        timed(fn)
    times: dict[str, list[float]] = {"plain": [], "steered": [], "nnsight": []}
    for _ in range(args.reps):
        times["plain"].append(timed(plain))
        times["steered"].append(timed(steered))
        times["nnsight"].append(timed(steered_nnsight))
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["steered"] / medians["plain"]
    print(
        f"model={args.model} device={device} layer={layer} batch={args.batch} new_tokens={args.tokens} "
        f"reps={args.reps} threads={args.threads}"
    )
    for name, values in times.items():
        print(f"  {name:8s} median {medians[name]:.3f}s  all {[round(v, 3) for v in values]}")
    print(f"  nnsight / plain = {medians['nnsight'] / medians['plain']:.3f}")

    # Sweep throughput: (prompt, alpha) cells per minute.
    config = SweepConfig(
        alphas=(-2.0, 0.0, 2.0),
        layers=(layer,),
        evals=("sentiment",),
        n_prompts=args.sweep_prompts,
        n_samples=1,
        max_new_tokens=args.sweep_tokens,
        temperature=0.7,
        batch_size=args.sweep_prompts,
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        records = run_sweep(model, tok, {"v": {layer: vector}}, config, Path(tmp) / "sweep.jsonl")
        elapsed = time.perf_counter() - start
    cells = sum(record["n"] for record in records)  # one value per (prompt, alpha) with n_samples = 1
    per_min = cells / (elapsed / 60)
    print(
        f"sweep: {len(records)} records, {cells} (prompt, alpha) cells, {args.sweep_tokens} tokens each, "
        f"{elapsed:.1f}s"
    )
    batched_ratio = batched_vs_cells(model, tok, layer, args.reps, headline=False)
    print(f"BENCH steer_vs_generate {ratio:.3f} <=1.05")
    print(f"BENCH sweep_cells_per_min {per_min:.1f} report")
    print(f"BENCH sweep_batched_vs_cells {batched_ratio:.2f} >=2")


def batched_vs_cells(model, tok, layer: int, reps: int, *, headline: bool = True) -> float:
    """Part 3: one evaluation of the default study's sweep, cell by cell against all cells in one batch."""
    from probes.layers import d_model
    from steering.datasets import self_report_prompts
    from steering.generate import Steering, generate_steered_responses

    g = torch.Generator().manual_seed(1)
    vectors = [
        torch.randn(d_model(model), generator=g) * 4 for _ in range(2)
    ]  # about the norm of a study's v
    steerings = [None] + [
        Steering({layer: vec}, layers=[layer], alpha=a) for vec in vectors for a in (-4, -2, 2, 4)
    ]
    prompts = [p.prompt for p in self_report_prompts(n=3, seed=0)]
    kwargs = dict(max_new_tokens=24, temperature=0.7, seed=0, n_samples=1)

    def cells() -> list:
        return [generate_steered_responses(model, tok, prompts, [s], **kwargs)[0] for s in steerings]

    def batched() -> list:
        return generate_steered_responses(model, tok, prompts, steerings, **kwargs)

    same = cells() == batched()  # also the warm-up
    times: dict[str, list[float]] = {"cells": [], "batched": []}
    for _ in range(reps):
        for name, fn in (("cells", cells), ("batched", batched)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["cells"] / medians["batched"]
    print(f"batched sweep cells: {len(steerings)} cells x {len(prompts)} prompts x 24 tokens, layer {layer}, "
          f"same texts: {same}")  # fmt: skip
    for name, values in times.items():
        print(f"  {name:8s} median {medians[name]:.2f}s  all {[round(v, 2) for v in values]}")
    if headline:
        print(f"BENCH sweep_batched_vs_cells {ratio:.2f} >=2")
    return ratio


if __name__ == "__main__":
    main()
