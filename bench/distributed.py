"""Data-parallel step throughput: 2 processes (torchrun, gloo) against 1 process, same global batch.

One training step is: each rank collects its maze-seed shards (``training.distributed.local_shards``,
KV-cached rollouts masked to the four direction tokens), then one Dr. GRPO update on them through DDP
(``pm(action_logits, batch)``, gradients all-reduced). The global batch, model, shards and
micro-batches are identical in both runs; only the number of processes changes.

Measured in the same run:

- 1 process with all the cores as torch threads (the baseline);
- 1 process with 1 thread (what a single core does);
- 2 processes with ``cores // 2`` threads each.

Each run times ``--steps`` steps after one warm-up step; the configurations are measured in
``--rounds`` interleaved rounds and medians are reported. The baseline is the faster of the two
1-process configurations. Ends with
    BENCH dist_2p_vs_1p <2-process steps/s ÷ best 1-process steps/s> report

On a machine with only 2 cores, both configurations use the same 2 cores: the ratio measures the
overhead (or gain) of splitting the work into processes instead of threads. The gain proper comes
with more cores or GPUs.

Run: python -m bench.distributed [--steps 2] [--rounds 2] [--episodes 16] [--model tiny] [--bf16]
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: drop bench/ from sys.path so it cannot shadow the maze_env package
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time

import torch

REPO = Path(__file__).resolve().parents[1]


def build(model_name: str):
    from peft import LoraConfig, get_peft_model

    from probes.models import load_model, tiny_model

    if model_name == "tiny":
        model, tok = tiny_model("llama", seed=0, n_layers=4, d_model=256, n_heads=8)
    else:
        model, tok = load_model(model_name, device="cpu", dtype="float32")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0)
        )
    model.train()
    return model, tok


def timed_steps(args: argparse.Namespace, threads: int) -> dict[str, float]:
    """Run ``1 + args.steps`` training steps in this process group; median seconds of the timed ones."""
    from maze_env import MazeConfig
    from training import distributed as D
    from training import losses as L
    from training.rollout import EpisodeBatch, action_logits, collect_episodes

    torch.set_num_threads(threads)
    ctx = D.init(backend="gloo", device="cpu")
    model, tok = build(args.model)
    pm = D.parallelize(model, ctx, "ddp")
    optimizer = torch.optim.AdamW(pm.trainable_parameters(), lr=1e-4)
    config = MazeConfig(n_turns=args.turns)
    seconds, rollout_seconds = [], []
    for step in range(args.steps + 1):
        seeds = [500 + 97 * step + g for g in range(args.episodes // args.group) for _ in range(args.group)]
        D.barrier(ctx)
        start = time.perf_counter()
        shards = D.local_shards(seeds, ctx, n_shards=args.shards, group_size=args.group)
        episodes = EpisodeBatch.cat(
            [
                pm.rollout(collect_episodes, tok, seeds=s, config=config, temperature=0.7, autocast=args.bf16)
                for s in shards
            ]
        )
        rolled = time.perf_counter()
        advantages = L.dr_grpo_advantages(episodes.returns.double(), args.group).float()
        optimizer.zero_grad(set_to_none=True)
        for begin in range(0, len(episodes), args.micro_batch):
            chunk = episodes.select(slice(begin, begin + args.micro_batch))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
                logits = pm(action_logits, chunk)
            logp = L.direction_logprobs(logits.float(), chunk.actions, 0.7)
            adv = advantages[begin : begin + args.micro_batch, None].expand(-1, config.n_turns)
            per_token, _ = L.clipped_surrogate(logp, chunk.logprobs, adv)
            loss = L.seq_mean_token_sum(per_token, torch.ones_like(per_token), 2048.0)
            (loss * len(chunk) / len(episodes)).backward()
        optimizer.step()
        D.barrier(ctx)
        if step > 0:
            seconds.append(time.perf_counter() - start)
            rollout_seconds.append(rolled - start)
    tokens = D.global_count(episodes.n_tokens, ctx)
    D.shutdown(ctx)
    return {
        "step_s": statistics.median(seconds),
        "rollout_s": statistics.median(rollout_seconds),
        "tokens_per_step": tokens,
        "world_size": ctx.world_size,
        "threads": threads,
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_processes(args: argparse.Namespace, threads: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "OMP_NUM_THREADS": str(threads),
            "TOKENIZERS_PARALLELISM": "false",
        }
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
            f"--master_port={_free_port()}", "-m", "bench.distributed", "--worker", str(out),
            "--threads", str(threads), *_forwarded(args),
        ]  # fmt: skip
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"torchrun failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        return json.loads(out.read_text())


def _forwarded(args: argparse.Namespace) -> list[str]:
    return [
        "--steps", str(args.steps), "--episodes", str(args.episodes), "--group", str(args.group),
        "--shards", str(args.shards), "--turns", str(args.turns), "--micro-batch", str(args.micro_batch),
        "--model", args.model, *(["--bf16"] if args.bf16 else []),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per run (after one warm-up step)")
    parser.add_argument(
        "--rounds", type=int, default=2, help="interleaved repetitions of every configuration"
    )
    parser.add_argument("--episodes", type=int, default=16, help="global episodes per step")
    parser.add_argument("--group", type=int, default=4, help="episodes per GRPO group")
    parser.add_argument("--shards", type=int, default=2, help="rollout shards (fixed across world sizes)")
    parser.add_argument("--turns", type=int, default=15, help="turns per episode")
    parser.add_argument("--micro-batch", type=int, default=4, help="episodes per forward/backward")
    parser.add_argument(
        "--model", default="tiny", help="tiny (random 4-layer d=256 Llama) or a load_model name"
    )
    parser.add_argument(
        "--bf16", action="store_true", help="bfloat16 autocast (slow on CPUs without AVX512-BF16/AMX)"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (worker only)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = timed_steps(args, args.threads or 1)
        if int(os.environ.get("RANK", "0")) == 0:
            Path(args.worker).write_text(json.dumps(result))
        return

    cores = os.cpu_count() or 1
    half = max(1, cores // 2)
    print(f"{cores} cores; global batch {args.episodes} episodes × {args.turns} turns; model {args.model}")
    configs = {
        f"1 process × {cores} threads": lambda: timed_steps(args, cores),
        "1 process × 1 thread": lambda: timed_steps(args, 1),
        f"2 processes × {half} threads": lambda: two_processes(args, half),
    }
    # Interleaved rounds, so a change in the machine's load hits every configuration alike.
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, measure in configs.items():
            runs[name].append(measure())
    step_s = {name: statistics.median(r["step_s"] for r in results) for name, results in runs.items()}
    for name, results in runs.items():
        rollout = statistics.median(r["rollout_s"] for r in results)
        tokens = results[0]["tokens_per_step"]
        print(
            f"{name:28s} step {step_s[name]:.2f} s (rollout {rollout:.2f} s), "
            f"{tokens / step_s[name]:.0f} rollout tokens/s; rounds: "
            + ", ".join(f"{r['step_s']:.2f}" for r in results)
        )
    two = step_s[f"2 processes × {half} threads"]
    one_names = [name for name in configs if name.startswith("1 process")]
    best_one = min(one_names, key=step_s.__getitem__)
    for name in one_names:
        print(f"2 processes vs {name}: {step_s[name] / two:.2f}x")
    # The baseline is the faster one-process configuration (the fair comparison on a loaded machine).
    print(f"BENCH dist_2p_vs_1p {step_s[best_one] / two:.3f} report")


if __name__ == "__main__":
    main()
