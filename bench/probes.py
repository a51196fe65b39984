"""Activation capture against a plain HF forward, and reward-vector extraction end to end.

Same model, same batch, same process; the methods are interleaved in every repetition and medians are
reported (the machines are shared and noisy):

- ``forward``: ``model(**batch)``, the plain HF forward (full logits, no cache).
- ``hooks``: the same forward inside ``probes.record.record(model, "all", positions="last")``
  (residual stream at every block output, last real token gathered inside the hook).
- ``hooks_all_pos``: the same with every position kept (``positions=None``, one clone per layer).
- ``nnsight``: the same reads through nnsight 0.8 (``TransformersModel``; one trace per batch, all
  layers saved, last token gathered in the trace).
- ``capture``: ``probes.record.capture`` on the same texts (tokenization included; it stops after the
  deepest requested block, so no unembedding).

Then ``probes.extract.reward_vectors`` on 3 × N scripted maze trajectories (trajectory generation,
rendering, tokenization, forwards and aggregation: wall-clock seconds).

Headline lines (shared/BENCH.md):
    BENCH capture_vs_forward <hooks ÷ forward> <=1.10
    BENCH capture_vs_forward_nnsight <nnsight ÷ forward> report
    BENCH extract_3x300_s <seconds> report

Run: flock /tmp/wa/heavy.lock python -m bench.probes [--model smollm2-135m-instruct] [--reps 7]
     [--batch-size 8] [--n-per-class 300]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: drop bench/ from sys.path so it cannot shadow the packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse
import statistics
import time

import torch

import maze_env
from bench._timing import timed
from probes import layers as L
from probes import positions as P
from probes.extract import reward_trajectories, reward_vectors
from probes.models import load_model
from probes.record import capture, record
from probes.remote import nnsight_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n-per-class", type=int, default=300)
    parser.add_argument("--turns", type=int, default=3, help="max steps of the timed batch's trajectories")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    t = time.perf_counter()
    model, tok = load_model(args.model, device=args.device)
    print(f"loaded {args.model} in {time.perf_counter() - t:.1f}s on {next(model.parameters()).device}")
    n_layers = L.n_layers(model)

    # One batch of real extraction inputs: scripted trajectories of 1..3 steps, rendered open.
    chats = reward_trajectories(args.batch_size, config=maze_env.MazeConfig(n_turns=args.turns))["Mold"]
    texts = [maze_env.render_chat(tok, chat, close_final=False) for chat in chats]
    encoded = P.encode_texts(tok, texts, padding_side="right")
    device = next(model.parameters()).device
    encoded = {k: v.to(device) for k, v in encoded.items()}
    n_tokens = int(encoded["attention_mask"].sum())
    print(f"batch: {len(texts)} texts, {tuple(encoded['input_ids'].shape)} padded, {n_tokens} real tokens")

    wrapped, _, _ = nnsight_target(model, tok)
    rows = torch.arange(len(texts), device=device)
    last = P.last_token_index(encoded["attention_mask"])
    block_paths = [L.layer_template(model).format(num=layer) for layer in range(n_layers)]

    def plain() -> None:
        model(**encoded, use_cache=False)

    def hooks() -> None:
        with record(model, "all", positions="last", attention_mask=encoded["attention_mask"]):
            model(**encoded, use_cache=False)

    def hooks_all_pos() -> None:
        with record(model, "all"):
            model(**encoded, use_cache=False)

    def nnsight_trace() -> None:
        import nnsight

        envoys = []
        for path in block_paths:
            envoy = wrapped
            for part in path.split("."):
                envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
            envoys.append(envoy)
        with wrapped.trace(dict(encoded)):
            out = nnsight.save({})
            for layer, envoy in enumerate(envoys):
                out[layer] = envoy.output[rows, last]

    def capture_call() -> None:
        capture(model, tok, texts, layers="all", position="last", batch_size=len(texts), sort_by_length=False)

    methods = {
        "forward": plain,
        "hooks": hooks,
        "hooks_all_pos": hooks_all_pos,
        "nnsight": nnsight_trace,
        "capture": capture_call,
    }
    # Correctness check before timing: every method reads the same numbers.
    with torch.inference_mode():
        with record(model, "all", positions="last", attention_mask=encoded["attention_mask"]) as got:
            plain()
        ref = capture(
            model, tok, texts, layers="all", batch_size=len(texts), sort_by_length=False, backend="nnsight"
        )
        worst = max(float((got[layer].cpu() - ref[layer]).abs().max()) for layer in range(n_layers))
        print(f"hooks vs nnsight max |diff| over layers: {worst:.2e}")
        for fn in methods.values():  # warm-up
            fn()
        walls: dict[str, list[float]] = {name: [] for name in methods}
        cpus: dict[str, list[float]] = {name: [] for name in methods}
        for _ in range(args.reps):
            for name, fn in methods.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                _, wall, cpu = timed(fn)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                walls[name].append(wall)
                cpus[name].append(cpu)
    # On a shared CPU machine wall time mostly measures the neighbours: the headline uses this
    # process's CPU time (medians); on CUDA, wall time.
    use_cpu_time = device.type == "cpu"
    wall_med = {name: statistics.median(values) for name, values in walls.items()}
    cpu_med = {name: statistics.median(values) for name, values in cpus.items()}
    medians = cpu_med if use_cpu_time else wall_med
    print(f"timing basis for ratios: {'process CPU time' if use_cpu_time else 'wall time'}; {args.reps} reps")
    for name in methods:
        print(
            f"{name:>14}: wall median {wall_med[name]:.3f}s (min {min(walls[name]):.3f}) "
            f"cpu median {cpu_med[name]:.3f}s  ratio {medians[name] / medians['forward']:.3f} "
            f"(wall-min ratio {min(walls[name]) / min(walls['forward']):.3f})"
        )

    t = time.perf_counter()
    vectors = reward_vectors(model, tok, n_per_class=args.n_per_class, batch_size=16)
    extract_s = time.perf_counter() - t
    norms = vectors["Mold"].norms()
    print(
        f"reward_vectors 3x{args.n_per_class}: {extract_s:.1f}s; ‖v_Mold‖ at layers 0/{n_layers // 2}/{n_layers - 1}: "
        f"{norms[0]:.3f}/{norms[n_layers // 2]:.3f}/{norms[n_layers - 1]:.3f}"
    )
    cos = vectors["Mold"].cosine(vectors["Gold"])
    print(
        f"cos(v_Mold, v_Gold) min over layers {min(cos.values()):+.3f}, mean {sum(cos.values()) / len(cos):+.3f}"
    )

    print(f"BENCH capture_vs_forward {medians['hooks'] / medians['forward']:.3f} <=1.10")
    print(f"BENCH capture_vs_forward_nnsight {medians['nnsight'] / medians['forward']:.3f} report")
    print(f"BENCH capture_fn_vs_forward {medians['capture'] / medians['forward']:.3f} report")
    print(f"BENCH extract_{3}x{args.n_per_class}_s {extract_s:.1f} report")


if __name__ == "__main__":
    main()
