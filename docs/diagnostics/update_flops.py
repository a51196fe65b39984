"""The default study's training update, counted: its FLOPs, its time, and the fastest it could run on this machine
(docs/benchmarks.md, issue 17's ``learn_minutes``).

Builds one minibatch of the default study's step 0 as ``bench/update_prefix.py`` does (24 single-turn groups of 8:
24 distinct states, TBRM's reference pass and ``update_epochs`` forward + backward passes, the optimizer steps),
counts the matrix FLOPs of one ``training.train_step`` on it with ``torch.utils.flop_counter.FlopCounterMode``
(every mm, addmm, bmm and attention kernel, forward and backward), times it without the counter (median of
``--reps`` after a warm-up), and times float32 matrix products on both threads (``bench.trainer.matmul_peak_gflops``): a large square one (the machine's
practical peak) and the update's largest shape (the MLP's gate/up projection of every state's tokens).

The floor is the counted FLOPs at that peak: no kernel, allocator or scheduling change can make a minibatch
faster on these cores without removing FLOPs. A training step is ``minibatches`` such minibatches (the
default study's 8) plus its rollout (timed in the training runs' ``metrics.jsonl``), so the study's steps can take
no less than ``steps × minibatches × floor`` plus their rollouts.

    flock /tmp/wa/heavy.lock python docs/diagnostics/update_flops.py [--reps 2]
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.trainer import matmul_peak_gflops  # noqa: E402
from bench.update_prefix import recipe_minibatch  # noqa: E402
from training import train_step  # noqa: E402
from welfare_axis.study import StudyConfig  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--reps", type=int, default=2, help="timed train_step calls after one warm-up")
a = parser.parse_args()
# the default study's training: its steps and minibatches
study = StudyConfig().train_args(Path("runs/update_flops"))


policy, optimizer, episodes, args = recipe_minibatch()
print(
    f"threads {torch.get_num_threads()}; {len(episodes)} episodes, update passes {args.update_epochs}",
    flush=True,
)
train_step(policy, optimizer, episodes, args, step=0)  # warm-up
times = []
for rep in range(a.reps):
    t0 = time.perf_counter()
    train_step(policy, optimizer, episodes, args, step=0)
    times.append(time.perf_counter() - t0)
    print(f"  train_step {rep}: {times[-1]:.1f} s", flush=True)
counter = FlopCounterMode(display=False)
with counter:
    train_step(policy, optimizer, episodes, args, step=0)
flops = counter.get_total_flops()
seconds = statistics.median(times)

tokens = int(episodes.attention_mask.sum())
peak = matmul_peak_gflops(torch.float32, reps=20)
mlp = matmul_peak_gflops(torch.float32, reps=50, shape=(1598, 576, 1536))
floor = flops / (peak * 1e9)
print(f"counted: {flops / 1e12:.3f} TFLOP per minibatch train_step; measured {seconds:.1f} s "
      f"({flops / seconds / 1e9:.0f} GFLOP/s achieved)")  # fmt: skip
print(f"float32 sgemm on {torch.get_num_threads()} threads: 2048^3 {peak:.0f} GFLOP/s; "
      f"[1598, 576] @ [576, 1536] {mlp:.0f} GFLOP/s")  # fmt: skip
per_step = floor * study.minibatches
print(f"floor at the 2048^3 rate: {floor:.1f} s per minibatch, {per_step:.0f} s per step's {study.minibatches} minibatches, "
      f"{study.steps * per_step / 60:.1f} min of updates for the study's {study.steps} steps (rollouts excluded)")  # fmt: skip
print(f"({tokens} tokens in the minibatch's rows before deduplication)")
