"""Trainer speed on SmolLM2-135M-Instruct: rollouts, one training step, TRL's GRPOTrainer, MFU, memory.

Everything is measured in one run, against baselines measured in the same run (medians of ``--reps``).

Precision: bf16 autocast is used only where bf16 matmuls are faster than float32
(``maze_env.rollout.bf16_autocast_is_fast``). On AVX2-only CPUs (no native bf16, e.g. the AMD EPYC
machines this project runs on) bf16 matmuls are 4-50x slower, so everything below, ours and the
baselines alike, runs in float32 there; on bf16-capable CPUs/GPUs everything runs under bf16 autocast.

(a) Rollouts. ``maze_env.rollout.collect_episodes`` plays ``--episodes`` mazes of ``--turns`` turns
    (KV cache reused across turns, only the new tokens fed, logits read at the last position) against a
    naive loop: every turn, every conversation is re-rendered in full and ``model.generate(max_new_tokens=1)``
    runs over it without cache reuse (batched over the episodes, left padding, same sampling settings).
    The naive loop replays the rollout's own conversations, so both process the same episodes; the
    throughput of both is the rollout's real tokens divided by its wall time.
(b) Training step. ``time_trainer_step`` times one optimisation step of ``maze_env.train.train_step``
    (Dr. GRPO with the CPU preset's LoRA: r=16, alpha=32, every linear layer of the top 8 decoder layers;
    AdamW, micro-batch ``--micro-batch``) on ``--train-episodes`` rollout episodes. TRL's
    ``GRPOTrainer`` runs in a subprocess on the same model with the same LoRA adapter (built by
    ``maze_env.train.make_policy``), the same batch (``--train-episodes`` sequences per optimizer step,
    the same micro-batch), loss (``dr_grpo``, beta=0: no reference pass, as in the preset), precision,
    no gradient checkpointing (TRL's default is on; ours never checkpoints), and sequence lengths: its
    prompt is one of our episodes' conversations up to the final assistant header and it generates
    ``--turns`` tokens (forced with ``min_new_tokens``), so its loss covers as many positions as ours.
    TRL's step time excludes its generation and reward scoring (``GRPOTrainer._prepare_inputs``, timed
    with TRL's own profiling hooks), so both sides time forward + loss + backward + optimizer step
    only. Throughput is the real tokens of the step's sequences divided by that time. (On CPU, TRL's
    fused LM head scores every position of every sequence over the full vocabulary; ours applies the
    head only at the decision positions.)
MFU: the training step's model FLOPs per second divided by the matmul peak of the precision it runs in
    (2048² matmuls, measured before and after the steps in this run; the larger is used). FLOPs are
    counted layer by layer, not as a blanket 6·N·tokens, because LoRA training of the top k layers does
    not run a full backward:
      forward   2·N_layer·tokens per decoder layer (all L layers) + causal attention 2·T²·d per layer
                + the output head at the decision positions only (2·d·V per decision);
      backward  input gradients only (frozen base) through the k adapted layers: 2·N_layer·tokens +
                4·T²·d per layer (+ the head's 2·d·V per decision); LoRA forward, input and weight
                gradients 6·r·(d_in+d_out) per adapted linear per token. The backward stops at the
                lowest adapted layer (nothing below needs gradients).
    With k = L this is the usual 4·N·tokens of LoRA (forward + input gradients); a full fine-tune would
    add 2·N·tokens of weight gradients (6·N·tokens). Useful FLOPs only: causal attention counts half
    the T² products, whatever the kernel computes.
Peak RSS: ``ru_maxrss`` of this process (rollouts + naive baseline + training steps); TRL's worker
    process is reported separately.

Ends with the BENCH lines of shared/BENCH.md:
    BENCH rollout_vs_naive <ratio> >=3
    BENCH train_vs_trl <ratio> >=1.5
    BENCH train_mfu <fraction> >=0.5
    BENCH train_peak_rss_gb <GB> <=6

Run (heavy, ~4-5 minutes on 2 cores; take the lock):
    flock /tmp/wa/heavy.lock .venv/bin/python -m bench.trainer
Quick smoke run of the code paths: python -m bench.trainer --model tiny-llama --turns 3 --reps 1
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
import resource
import statistics
import subprocess
import tempfile
import time
from typing import Any

import torch

from maze_env import MazeConfig
from maze_env.rollout import EpisodeBatch, bf16_autocast_is_fast, collect_episodes

MODEL = "smollm2-135m-instruct"
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Every linear layer of a Llama decoder block: peft's "all-linear" for these models, spelled out."""


def load(name: str):
    """The benchmark model (float32, CPU); ``tiny-llama`` gives a random tiny model for a smoke run."""
    from probes.models import load_model, tiny_model

    if name.startswith("tiny-"):
        return tiny_model(name.removeprefix("tiny-"), seed=0)
    return load_model(name, device="cpu", dtype="float32")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # ru_maxrss is KiB on Linux


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------------------------------
# Matmul peak
# ----------------------------------------------------------------------------------------------------


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Median GFLOP/s of an ``n × n`` matmul in ``dtype`` (2·n³ FLOPs)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


# ----------------------------------------------------------------------------------------------------
# (a) rollouts
# ----------------------------------------------------------------------------------------------------


def naive_rollout_seconds(model, tokenizer, episodes: EpisodeBatch, *, autocast: bool) -> float:
    """Per turn: re-render every conversation in full and ``generate(max_new_tokens=1)`` without cache reuse.

    Replays ``episodes``' conversations (the sampled token is discarded; the recorded move is taken), so
    the work is that of a per-turn ``generate`` loop over the same episodes.
    """
    tokenizer.padding_side = "left"
    n_turns = episodes.n_turns
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for t in range(n_turns):
            texts = [
                tokenizer.apply_chat_template(m[: 2 * t + 1], tokenize=False, add_generation_prompt=True)
                for m in episodes.messages
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            model.generate(
                **enc,
                max_new_tokens=1,
                do_sample=True,
                temperature=episodes.temperature,
                top_k=0,
                top_p=1.0,
                pad_token_id=tokenizer.pad_token_id,
            )
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------
# (b) the training step (slot for maze_env.train) and its FLOPs
# ----------------------------------------------------------------------------------------------------


def trainer_args(train_episodes: int, micro_batch: int, n_layers: int, *, bf16: bool):
    """The CPU preset's training settings, sized for the benchmark batch."""
    from maze_env.train import PRESETS, preset_args

    return preset_args(
        "cpu",
        lora_layers=min(PRESETS["cpu"]["lora_layers"], n_layers),
        lora_targets=LINEAR_LAYERS,
        episodes_per_step=train_episodes,
        group_size=train_episodes,
        micro_batch_size=micro_batch,
        progress=False,
        eval_episodes=0,
        autocast=bf16,
    )


def time_trainer_step(
    model, tokenizer, episodes: EpisodeBatch, *, micro_batch: int, reps: int, bf16: bool
) -> dict[str, Any]:
    """Time one optimisation step of the project's trainer (``maze_env.train.train_step``).

    This is the benchmark's slot for the trainer: it builds the policy and optimizer the way
    ``maze_env.train.main`` does (``make_policy``, ``make_optimizer``) and times ``train_step`` on a
    fixed batch: forward + loss + backward + optimizer step. One warm-up step is not timed.
    """
    from maze_env.train import make_optimizer, make_policy, train_step

    args = trainer_args(len(episodes), micro_batch, model.config.num_hidden_layers, bf16=bf16)
    policy = make_policy(args, model, tokenizer)
    optimizer = make_optimizer(policy, args)
    times = []
    for rep in range(reps + 1):
        t = time.perf_counter()
        stats = train_step(policy, optimizer, episodes, args, step=0)
        elapsed = time.perf_counter() - t
        log(
            f"  our train step {rep}: {elapsed:.2f} s (loss {stats['loss']:.4g}){' [warm-up]' if rep == 0 else ''}"
        )
        if rep:
            times.append(elapsed)
    return {"seconds": statistics.median(times), "policy": policy, "args": args}


def training_flops(model, policy, episodes: EpisodeBatch) -> dict[str, float]:
    """Model FLOPs of one training step (see the module docstring for the formula)."""
    config = model.config
    d = int(config.hidden_size)
    n_layers = int(config.num_hidden_layers)
    vocab = int(config.vocab_size)
    base_linear = 0
    for name, module in policy.model.named_modules():
        if ".layers.0." in name and isinstance(module, torch.nn.Linear) and "lora_" not in name:
            base_linear += module.weight.numel()
    adapted_layers = set()
    lora_params_per_layer: dict[int, int] = {}
    for name, param in policy.model.named_parameters():
        if param.requires_grad and "lora_" in name and ".layers." in name:
            index = int(name.split(".layers.")[1].split(".")[0])
            adapted_layers.add(index)
            lora_params_per_layer[index] = lora_params_per_layer.get(index, 0) + param.numel()
    lowest = min(adapted_layers) if adapted_layers else n_layers
    grad_layers = n_layers - lowest  # backward runs from the top down to the lowest adapted layer
    lengths = episodes.attention_mask.sum(1).double()
    tokens = float(lengths.sum())
    attn_sq = float((lengths**2).sum())
    decisions = episodes.actions.numel()
    lora_total = sum(lora_params_per_layer.values())
    forward = 2 * base_linear * tokens * n_layers + 2 * attn_sq * d * n_layers + 2 * d * vocab * decisions
    backward = (
        2 * base_linear * tokens * grad_layers + 4 * attn_sq * d * grad_layers + 2 * d * vocab * decisions
    )
    lora = (
        6 * lora_total * tokens
    )  # LoRA forward (2) + input grad (2) + weight grad (2) per parameter per token
    return {
        "flops": forward + backward + lora,
        "tokens": tokens,
        "linear_params_per_layer": base_linear,
        "n_layers": n_layers,
        "grad_layers": grad_layers,
    }


# ----------------------------------------------------------------------------------------------------
# TRL GRPOTrainer (subprocess worker)
# ----------------------------------------------------------------------------------------------------


def trl_worker(spec_path: str) -> None:
    """Run TRL's GRPOTrainer per the JSON spec and print one JSON line of timings."""
    import contextlib
    import io

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    from maze_env.train import make_policy

    durations: list[tuple[float, str, float]] = []
    original = profiling.ProfilingContext._log_metrics

    def record(self, duration: float) -> None:
        durations.append((time.perf_counter(), self.name, duration))
        original(self, duration)

    profiling.ProfilingContext._log_metrics = record

    steps: list[tuple[float, float]] = []
    logs: list[dict[str, Any]] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            steps.append((self.start, time.perf_counter()))

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                logs_seen.append(dict(logs))

    logs_seen = logs
    model, tokenizer = load(spec["model"])
    args = trainer_args(
        spec["train_episodes"],
        spec["micro_batch"],
        n_layers=model.config.num_hidden_layers,
        bf16=spec["bf16"],
    )
    policy = make_policy(args, model, tokenizer)

    def reward(completions, **kwargs):  # trivial but varying, so advantages are not all zero
        return [float(len(c) % 3) for c in completions]

    n = spec["train_episodes"]
    prompts = spec["prompts"]
    data = Dataset.from_dict({"prompt": prompts * (spec["reps"] + 2)})
    config = GRPOConfig(
        output_dir=spec["out"],
        max_steps=spec["reps"] + 1,
        per_device_train_batch_size=spec["micro_batch"],
        gradient_accumulation_steps=n // spec["micro_batch"],
        num_generations=spec["num_generations"],
        max_completion_length=spec["completion_tokens"],
        generation_kwargs={"min_new_tokens": spec["completion_tokens"]},
        temperature=spec["temperature"],
        top_k=0,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=args.max_grad_norm,
        beta=0.0,
        loss_type="dr_grpo",
        scale_rewards="none",
        epsilon=args.clip_eps,
        bf16=spec["bf16"],
        gradient_checkpointing=False,  # TRL's GRPO default is True; our trainer does not checkpoint
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_dropout=True,
        shuffle_dataset=False,
        dataloader_num_workers=0,
        seed=0,
    )
    tokenizer.padding_side = "left"
    trainer = GRPOTrainer(
        model=policy.model,
        reward_funcs=[reward],
        args=config,
        train_dataset=data,
        processing_class=tokenizer,
        callbacks=[StepTimer()],
    )
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    results = []
    for start, end in steps:
        excluded = sum(
            d for t, name, d in durations if name.endswith("._prepare_inputs") and start <= t <= end
        )
        results.append({"step_seconds": end - start, "prepare_inputs_seconds": excluded})
    completion_lengths = [e["completions/mean_length"] for e in logs if "completions/mean_length" in e]
    print(
        "TRL_RESULT "
        + json.dumps(
            {
                "steps": results,
                "completion_mean_length": completion_lengths,
                "peak_rss_gb": peak_rss_gb(),
            }
        ),
        flush=True,
    )


def run_trl(
    episodes: EpisodeBatch, tokenizer, *, model: str, micro_batch: int, reps: int, threads: int, bf16: bool
) -> dict[str, Any]:
    """Run :func:`trl_worker` in a fresh process; return its timings and token counts."""
    from maze_env import render_chat

    prompts = [render_chat(tokenizer, m[:-1]) for m in episodes.messages]
    prompt_tokens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    num_generations = 2
    unique = prompts[: max(1, len(prompts) // num_generations)]
    with tempfile.TemporaryDirectory() as tmp:
        spec = {
            "model": model,
            "bf16": bf16,
            "prompts": unique,
            "train_episodes": len(episodes),
            "micro_batch": micro_batch,
            "num_generations": num_generations,
            "completion_tokens": episodes.n_turns,
            "temperature": episodes.temperature,
            "reps": reps,
            "threads": threads,
            "out": str(Path(tmp) / "trl"),
        }
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        proc = subprocess.run(
            [sys.executable, "-m", "bench.trainer", "--trl-worker", str(spec_path)],
            capture_output=True,
            text=True,
            cwd=str(Path(__file__).resolve().parent.parent),
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("TRL_RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"TRL worker failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    result = json.loads(lines[-1].removeprefix("TRL_RESULT "))
    unique_tokens = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in unique]
    result["prompt_tokens_per_sequence"] = statistics.mean(unique_tokens)
    result["our_prompt_tokens_per_sequence"] = statistics.mean(prompt_tokens)
    return result


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=2, help="rollout episodes (a)")
    parser.add_argument("--turns", type=int, default=15, help="turns per episode (paper: 15)")
    parser.add_argument("--train-episodes", type=int, default=2, help="episodes per training step (b)")
    parser.add_argument("--micro-batch", type=int, default=2, help="episodes per forward/backward")
    parser.add_argument("--reps", type=int, default=2, help="timed repetitions (medians) of ours and TRL")
    parser.add_argument(
        "--naive-reps", type=int, default=1, help="repetitions of the naive loop (the slow one)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=MODEL, help="model to load (tiny-llama: a quick smoke run)")
    parser.add_argument("--skip-trl", action="store_true", help="do not run the TRL baseline")
    parser.add_argument("--trl-worker", metavar="SPEC", help=argparse.SUPPRESS)
    cli = parser.parse_args()
    if cli.trl_worker:
        trl_worker(cli.trl_worker)
        return
    if cli.train_episodes % cli.micro_batch or cli.train_episodes > cli.episodes:
        parser.error("--train-episodes must be a multiple of --micro-batch and at most --episodes")
    torch.set_num_threads(cli.threads)
    bench_start = time.perf_counter()
    use_bf16 = bf16_autocast_is_fast("cpu")
    peak_fp32 = matmul_peak_gflops(torch.float32)
    # Without native bf16 a 2048² bf16 matmul takes ~15 s (~1 GFLOP/s): measure it at 512² instead.
    bf16_size = 2048 if use_bf16 else 512
    peak_bf16 = matmul_peak_gflops(torch.bfloat16, n=bf16_size, reps=5 if use_bf16 else 1)
    peak = peak_bf16 if use_bf16 else peak_fp32
    log(
        f"matmul peak: fp32 2048² {peak_fp32:.1f} GFLOP/s, bf16 {bf16_size}² {peak_bf16:.1f} GFLOP/s; "
        f"bf16 autocast {'ON' if use_bf16 else 'OFF (no native bf16 on this CPU: float32 everywhere)'}"
    )

    model, tokenizer = load(cli.model)
    config = MazeConfig(n_turns=cli.turns)
    group = cli.train_episodes
    seeds = [1000 + i // group for i in range(cli.episodes)]  # groups of train-episodes mazes (GRPO groups)

    # (a) rollouts
    collect_episodes(model, tokenizer, seeds=seeds[:2], config=MazeConfig(n_turns=2))  # warm-up
    ours, naive = [], []
    episodes = None
    for rep in range(cli.reps):
        t = time.perf_counter()
        episodes = collect_episodes(model, tokenizer, seeds=seeds, config=config, autocast=use_bf16)
        ours.append(time.perf_counter() - t)
        log(f"  rollout {rep}: {ours[-1]:.2f} s for {episodes.n_tokens} tokens")
    assert episodes is not None
    for rep in range(cli.naive_reps):
        naive.append(naive_rollout_seconds(model, tokenizer, episodes, autocast=use_bf16))
        log(f"  naive per-turn generate {rep}: {naive[-1]:.2f} s")
    tokens = episodes.n_tokens
    ours_tps = tokens / statistics.median(ours)
    naive_tps = tokens / statistics.median(naive)
    log(
        f"(a) rollout: {len(episodes)} episodes x {cli.turns} turns, {tokens} tokens; "
        f"ours {ours_tps:.0f} tok/s, naive {naive_tps:.0f} tok/s; summary {episodes.summary()['action_freq']}"
    )

    # (b) training step
    train_batch = episodes.select(list(range(cli.train_episodes)))
    step = time_trainer_step(
        model, tokenizer, train_batch, micro_batch=cli.micro_batch, reps=cli.reps, bf16=use_bf16
    )
    counted = training_flops(model, step["policy"], train_batch)
    train_tps = counted["tokens"] / step["seconds"]
    achieved = counted["flops"] / step["seconds"] / 1e9
    log(
        f"(b) train step: {cli.train_episodes} episodes, {counted['tokens']:.0f} tokens, {step['seconds']:.2f} s, "
        f"{train_tps:.0f} tok/s; {counted['flops'] / 1e12:.3f} TFLOP -> {achieved:.1f} GFLOP/s "
        f"(backward through {counted['grad_layers']}/{counted['n_layers']} layers)"
    )
    rss = peak_rss_gb()
    del step
    trl_tps = float("nan")
    if not cli.skip_trl:
        trl = run_trl(
            train_batch,
            tokenizer,
            model=cli.model,
            micro_batch=cli.micro_batch,
            reps=cli.reps,
            threads=cli.threads,
            bf16=use_bf16,
        )
        timed = trl["steps"][1:] or trl["steps"]
        compute = statistics.median(s["step_seconds"] - s["prepare_inputs_seconds"] for s in timed)
        completion = statistics.mean(trl["completion_mean_length"][1:] or trl["completion_mean_length"])
        trl_tokens = cli.train_episodes * (trl["prompt_tokens_per_sequence"] + completion)
        trl_tps = trl_tokens / compute
        log(
            f"(b) TRL GRPOTrainer: steps {[round(s['step_seconds'], 2) for s in trl['steps']]} s, generation "
            f"{[round(s['prepare_inputs_seconds'], 2) for s in trl['steps']]} s excluded; {trl_tokens:.0f} tokens "
            f"(prompt {trl['prompt_tokens_per_sequence']:.0f} + completion {completion:.1f} per sequence) in "
            f"{compute:.2f} s -> {trl_tps:.0f} tok/s; TRL worker peak RSS {trl['peak_rss_gb']:.2f} GB"
        )
    peak_after = matmul_peak_gflops(torch.float32)
    if use_bf16:
        peak_after = max(peak_after, matmul_peak_gflops(torch.bfloat16))
    if peak_after > peak:
        log(f"matmul peak re-measured after the steps: {peak_after:.1f} GFLOP/s (higher; used for MFU)")
        peak = peak_after
    log(f"bench wall time {time.perf_counter() - bench_start:.0f} s")
    print(f"rollout tokens/s ours {ours_tps:.1f} naive {naive_tps:.1f}")
    print(f"train tokens/s ours {train_tps:.1f} trl {trl_tps:.1f}")
    print(
        f"train GFLOP/s {achieved:.1f}; matmul peak fp32 {peak_fp32:.1f}, bf16 {peak_bf16:.1f}; MFU uses "
        f"{peak:.1f} ({'bf16' if use_bf16 else 'fp32'}: the step runs in that dtype; max of before/after)"
    )
    print(f"BENCH rollout_vs_naive {ours_tps / naive_tps:.2f} >=3")
    print(f"BENCH train_vs_trl {train_tps / trl_tps:.2f} >=1.5")
    print(f"BENCH train_mfu {achieved / peak:.3f} >=0.5")
    print(f"BENCH train_peak_rss_gb {rss:.2f} <=6")


if __name__ == "__main__":
    main()
