"""glibc's allocator told to keep freed memory (``probes.resources.keep_freed_memory``), against its defaults, on
the default study's training update.

Each update pass of the default study (TBRM, LoRA on every layer of SmolLM2-135M-Instruct) allocates and frees
the same multi-megabyte activation blocks in every layer; with glibc's defaults many come from fresh ``mmap``
regions or a re-grown heap, and the kernel faults in and zeroes every page again. The setting is process-wide
and cannot be undone (glibc's dynamic mmap threshold is not restored), so the two sides run in separate fresh
processes, alternated (default, keep, default, keep, ...). Each process builds one minibatch of the study's
step 0 (``bench.update_prefix.recipe_minibatch``: 24 single-turn groups of 8, TBRM's reference pass and 3
update passes) and times ``training.train_step`` on it: a warm-up, then ``--reps`` timed steps. Every process
plays the same minibatch from the same weights, so the losses must agree to the bit between the two sides
(the allocator changes where memory comes from, not a number); the bench checks that.

Ends with:
    BENCH update_keep_memory_vs_default <default ÷ keep train_step seconds, medians over all timed steps> >=1.05

Run (heavy: takes the shared lock): flock /tmp/wa/heavy.lock python -m bench.allocator
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: drop bench/ from sys.path so it cannot shadow the packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse
import json
import os
import resource
import statistics
import subprocess
import time

SIDES = ("default", "keep")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def child(side: str, reps: int, groups: int) -> dict:
    """One process's timings (its allocator set first, before any tensor exists)."""
    from probes.resources import keep_freed_memory, peak_rss_gb

    applied = keep_freed_memory() if side == "keep" else False
    if side == "keep" and not applied:
        raise SystemExit("keep_freed_memory() did not apply (not glibc, or WELFARE_AXIS_MALLOC=default)")
    from bench.update_prefix import recipe_minibatch
    from training import train_step

    policy, optimizer, episodes, args = recipe_minibatch(groups)
    seconds, faults, losses = [], [], []
    for rep in range(reps + 1):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        stats = train_step(policy, optimizer, episodes, args, step=0)
        elapsed = time.perf_counter() - t0
        fault = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        log(
            f"  {side:7s} step {rep}: {elapsed:.1f} s, {fault} minor page faults"
            + (" (warm-up)" if rep == 0 else "")
        )
        losses.append(float(stats["loss"]))
        if rep:
            seconds.append(elapsed)
            faults.append(fault)
    return {
        "side": side,
        "seconds": seconds,
        "faults": faults,
        "losses": losses,
        "peak_rss_gb": peak_rss_gb(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, default=3, help="fresh processes per side (alternated)")
    parser.add_argument("--reps", type=int, default=2, help="timed steps per process, after a warm-up")
    parser.add_argument(
        "--groups", type=int, default=24, help="single-turn groups (the recipe's minibatch: 24)"
    )
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.reps, a.groups)))
        return 0

    env = {k: v for k, v in os.environ.items() if k != "WELFARE_AXIS_MALLOC" and not k.startswith("MALLOC_")}
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    for index in range(a.processes):
        for side in SIDES if index % 2 == 0 else SIDES[::-1]:
            log(f"process {index + 1}/{a.processes}, {side}")
            command = [sys.executable, "-m", "bench.allocator", "--child", side, "--reps", str(a.reps),
                       "--groups", str(a.groups)]  # fmt: skip
            done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True,
                                  cwd=Path(__file__).resolve().parent.parent)  # fmt: skip
            results[side].append(json.loads(done.stdout.strip().splitlines()[-1]))
    losses = {side: [r["losses"] for r in results[side]] for side in SIDES}
    if any(run != losses["default"][0] for side in SIDES for run in losses[side]):
        raise SystemExit(f"the losses differ between processes or sides: {losses}")
    median = {side: statistics.median(s for r in results[side] for s in r["seconds"]) for side in SIDES}
    faults = {side: statistics.median(f for r in results[side] for f in r["faults"]) for side in SIDES}
    peak = {side: max(r["peak_rss_gb"] for r in results[side]) for side in SIDES}
    for side in SIDES:
        times = ", ".join(f"{s:.1f}" for r in results[side] for s in r["seconds"])
        print(f"{side:7s}: train_step {median[side]:.1f} s median ({times}); {faults[side]:.0f} minor faults per "
              f"step (median); peak RSS {peak[side]:.2f} GB")  # fmt: skip
    print(f"losses equal on both sides: {losses['default'][0]}")
    print(f"BENCH update_keep_memory_vs_default {median['default'] / median['keep']:.2f} >=1.05")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
