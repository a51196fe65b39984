"""glibc's allocator told to keep freed memory (``mallopt``: mmap threshold 1 GiB, trim threshold 2 GiB), against its
defaults, on the default study's training update.

Each update pass of the default study (TBRM, LoRA on every layer of SmolLM2-135M-Instruct) allocates and frees
the same multi-megabyte activation blocks in every layer; with glibc's defaults many come from fresh ``mmap``
regions or a re-grown heap, and the kernel faults in and zeroes every page again. The setting is process-wide
and cannot be undone (glibc's dynamic mmap threshold is not restored), so the two sides run in separate fresh
processes, alternated (default, keep, default, keep, ...). Each process builds one minibatch of the study's
step 0 (``bench.update_prefix.recipe_minibatch``: 24 single-turn groups of 8, TBRM's reference pass and 3
update passes) and times ``training.train_step`` on it: a warm-up, then ``--reps`` timed steps. Every process
plays the same minibatch from the same weights, so the losses must agree to the bit between the two sides
(the allocator changes where memory comes from, not a number); the bench checks that.

A lead, not adopted: a fresh process's first steps gain (1.12x on Zen 4 cores, 2026-12-07), but a whole study with
the setting took 39.5 min against 40.2 and peaked at 6.8 GB against 6.2 (docs/benchmarks.md), so the toolkit leaves
glibc alone.

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
import ctypes
import ctypes.util
import json
import os
import resource
import statistics
import subprocess
import time

SIDES = ("default", "keep")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Blocks below 1 GiB from the heap, not a fresh ``mmap`` each (glibc: 128 KiB, raised dynamically up to 32
    MiB), and free heap handed back to the OS only past 2 GiB; True when applied (Linux with glibc).
    Process-wide, and glibc's dynamic threshold is not restored afterwards."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(
            libc.mallopt(_M_TRIM_THRESHOLD, (1 << 31) - 1)
        )
    except (OSError, AttributeError):  # not glibc
        return False


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def child(side: str, reps: int, groups: int, model: str | None) -> dict:
    """One process's timings (its allocator set first, before any tensor exists)."""
    from probes.resources import peak_rss_gb

    if side == "keep" and not keep_freed_memory():
        raise SystemExit("glibc's mallopt is not available here: nothing to compare")
    from bench.update_prefix import recipe_minibatch
    from training import train_step

    policy, optimizer, episodes, args = recipe_minibatch(groups, model)
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
    parser.add_argument("--model", default=None, help="default: the study's model")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.processes < 1 or a.reps < 1 or a.groups < 1:
        parser.error("--processes, --reps and --groups must be at least 1")
    if a.child:
        print(json.dumps(child(a.child, a.reps, a.groups, a.model)))
        return 0

    # glibc's defaults on both sides, whatever this shell sets
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    results: dict[str, list[dict]] = {side: [] for side in SIDES}
    for index in range(a.processes):
        for side in SIDES if index % 2 == 0 else SIDES[::-1]:
            log(f"process {index + 1}/{a.processes}, {side}")
            command = [sys.executable, "-m", "bench.allocator", "--child", side, "--reps", str(a.reps),
                       "--groups", str(a.groups), *(["--model", a.model] if a.model else [])]  # fmt: skip
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
