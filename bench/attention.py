"""Copy-free grouped-query attention on the CPU (``probes.attention``) against transformers' own rule.

Same model, same inputs, same process; the two rules alternate in every repetition and medians are reported
(the machines are shared and noisy). Both the wall time and this process's CPU time are printed: on a busy
machine the CPU time is the steadier of the two.

- ``evaluate``: ``training.rollout.collect_episodes`` on N held-out 15-turn mazes (each turn a masked forward of
  the new tokens on the KV cache: a study's held-out evaluation, 64 mazes twice).
- ``capture``: ``probes.record.capture`` at every layer on those episodes' chats (a readout's forward).

Every repetition also checks that both rules give the same numbers bit for bit (direction logits, sampled
moves, captured activations); the script fails otherwise.

Headline lines:
    BENCH gqa_evaluate_speedup <own rule ÷ copy-free, CPU time> report
    BENCH gqa_capture_speedup <own rule ÷ copy-free, CPU time> report

Run: flock /tmp/wa/heavy.lock python -m bench.attention [--model smollm2-135m-instruct] [--mazes 16] [--reps 3]
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
from collections.abc import Callable
from typing import Any

import torch

from bench._timing import timed
from probes import attention
from probes.models import load_model
from probes.record import capture
from training.config import heldout_seeds
from training.rollout import collect_episodes


def under(rule: str, fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        if rule == "own":
            attention.uninstall()
        else:
            attention.install()
        return fn()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--mazes", type=int, default=16)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="chats per capture forward")
    cli = parser.parse_args()

    model, tok = load_model(cli.model)
    heads, kv = model.config.num_attention_heads, model.config.num_key_value_heads
    print(f"{cli.model}: {heads} query heads, {kv} key/value heads; {torch.get_num_threads()} threads; "
          f"{cli.mazes} mazes, {cli.reps} repetitions")  # fmt: skip
    seeds = heldout_seeds(cli.mazes)
    times: dict[tuple[str, str], list[tuple[float, float]]] = {}
    chats = None
    for rep in range(cli.reps):
        got: dict[tuple[str, str], Any] = {}
        order = ("own", "copy-free") if rep % 2 == 0 else ("copy-free", "own")
        for rule in order:
            episodes, wall, cpu = timed(
                under(rule, lambda: collect_episodes(model, tok, seeds=seeds, temperature=0.7))
            )
            got[rule, "evaluate"] = episodes
            times.setdefault((rule, "evaluate"), []).append((wall, cpu))
            chats = episodes.messages
        for rule in order:
            acts, wall, cpu = timed(
                under(rule, lambda c=chats: capture(model, tok, c, layers="all", batch_size=cli.batch_size))
            )
            got[rule, "capture"] = acts
            times.setdefault((rule, "capture"), []).append((wall, cpu))
        own, free = got["own", "evaluate"], got["copy-free", "evaluate"]
        if not (
            torch.equal(own.direction_logits, free.direction_logits)
            and torch.equal(own.actions, free.actions)
        ):
            raise SystemExit("the copy-free evaluation differs from transformers' own: not the same numbers")
        a, b = got["own", "capture"], got["copy-free", "capture"]
        if not all(torch.equal(a[layer], b[layer]) for layer in a):
            raise SystemExit("the copy-free capture differs from transformers' own: not the same numbers")
        print(f"rep {rep}: " + ", ".join(f"{r} {w}: {times[r, w][-1][0]:.1f} s wall / {times[r, w][-1][1]:.1f} s CPU"
                                          for w in ("evaluate", "capture") for r in ("own", "copy-free")),
              flush=True)  # fmt: skip
    attention.install()
    print("bit-identical in every repetition (direction logits, moves, activations at every layer)")
    for work in ("evaluate", "capture"):
        med = {
            r: [statistics.median(t[i] for t in times[r, work]) for i in (0, 1)] for r in ("own", "copy-free")
        }
        print(f"{work}: own {med['own'][0]:.1f} s wall / {med['own'][1]:.1f} s CPU; copy-free "
              f"{med['copy-free'][0]:.1f} s wall / {med['copy-free'][1]:.1f} s CPU (medians)")  # fmt: skip
        print(f"BENCH gqa_{work}_speedup {med['own'][1] / med['copy-free'][1]:.2f} report "
              f"(wall {med['own'][0] / med['copy-free'][0]:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
