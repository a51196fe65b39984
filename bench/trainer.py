"""Trainer speed on SmolLM2-135M-Instruct: rollouts, one training step, TRL's GRPOTrainer, MFU, memory.

Everything is measured in one run, against baselines measured in the same run (medians of ``--reps``).

Precision: the project's one dtype rule (``probes.models.resolve_autocast``): float32 on CPU, never
chosen by timing, so the figures compare across machines. ``--autocast`` runs everything, ours and the
baselines alike, under bfloat16 autocast instead: about 2x faster on CPUs with AVX512-BF16/AMX, about
100x slower on AVX2-only ones. Run it both ways to compare a machine's two precisions.

(a) Rollouts. ``training.rollout.collect_episodes`` plays ``--episodes`` mazes of ``--turns`` turns
    (KV cache reused across turns, only the new tokens fed, logits read at the last position) against a
    naive loop: every turn, every conversation is re-rendered in full and ``model.generate(max_new_tokens=1)``
    runs over it without cache reuse (batched over the episodes, left padding, same sampling settings).
    The naive loop replays the rollout's own conversations, so both process the same episodes; the
    throughput of both is the rollout's real tokens divided by its wall time. The episodes come in GRPO
    groups, whose shared first prompt the rollout feeds once per group (as in training; ~8% of a
    15-turn episode's tokens) and the naive loop once per episode.
(b) Training step. ``TrainerStep`` (the slot for the trainer) times one optimisation step of ``training.train_step``
    (Dr. GRPO with the CPU recipe's LoRA: r=16, alpha=32, every linear layer of the top 8 decoder layers;
    AdamW, micro-batch ``--micro-batch``) on ``--train-episodes`` rollout episodes. TRL's
    ``GRPOTrainer`` runs in this process on the same model with the same LoRA adapter (built by
    ``training.make_policy``), the same batch (``--train-episodes`` sequences per optimizer step,
    the same micro-batch), loss (``dr_grpo``, beta=0: no reference pass, as in the recipe), precision,
    no gradient checkpointing (TRL's default is on; ours never checkpoints), and sequence lengths: its
    prompt is one of our episodes' conversations up to the final assistant header and it generates
    ``--turns`` tokens (forced with ``min_new_tokens``), so its loss covers as many positions as ours.
    TRL's steps and ours alternate (T0 O0 T1 O1 ...; the first of each is a warm-up), so both meet the
    same background load on a shared machine. TRL's step time excludes its generation and reward
    scoring (``GRPOTrainer._prepare_inputs``, timed with TRL's own profiling hooks), so both sides time
    forward + loss + backward + optimizer step only. Throughput is the real tokens of the step's sequences divided by that time. (On CPU, TRL's
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
Peak RSS: ``ru_maxrss`` of this process after rollouts, the naive baseline and a training step, read
    before TRL is set up (the whole process's peak, TRL included, is printed too). Process CPU time per
    token is printed next to wall-clock throughput: it is much less sensitive to other jobs.

Ends with the BENCH lines of shared/BENCH.md:
    BENCH rollout_vs_naive <ratio> >=3
    BENCH train_vs_trl <ratio> >=1.5
    BENCH train_mfu <fraction> >=0.5
    BENCH train_peak_rss_gb <GB> <=6

Run (heavy, ~5 minutes on 2 quiet cores; take the lock):
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
import statistics
import tempfile
import time
from typing import Any

import torch

from maze_env import MazeConfig
from probes.models import resolve_autocast
from probes.resources import peak_rss_gb
from training.rollout import EpisodeBatch, collect_episodes

MODEL = "smollm2-135m-instruct"
CPU = torch.device("cpu")
LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""Every linear layer of a Llama decoder block: peft's "all-linear" for these models, spelled out."""


def load(name: str):
    """The benchmark model (float32, CPU); ``tiny-llama`` gives a random tiny model for a smoke run."""
    from probes.models import load_model, tiny_model

    if name.startswith("tiny-"):
        return tiny_model(name.removeprefix("tiny-"), seed=0)
    return load_model(name, device="cpu", dtype="float32")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ----------------------------------------------------------------------------------------------------
# Matmul peak
# ----------------------------------------------------------------------------------------------------


def matmul_peak_gflops(
    dtype: torch.dtype, n: int = 2048, reps: int = 5, shape: tuple[int, int, int] | None = None
) -> float:
    """Median GFLOP/s of an ``n × n`` matmul in ``dtype`` (2·n³ FLOPs), or of ``[m, k] @ [k, n]`` for
    ``shape=(m, k, n)`` (2·m·k·n FLOPs)."""
    m, k, n = shape or (n, n, n)
    a = torch.randn(m, k).to(dtype)
    b = torch.randn(k, n).to(dtype)
    a @ b  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / statistics.median(times) / 1e9


# ----------------------------------------------------------------------------------------------------
# (a) rollouts
# ----------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def naive_rollout_seconds(
    model, tokenizer, episodes: EpisodeBatch, *, autocast: bool, device: torch.device = CPU
) -> float:
    """Per turn: re-render every conversation in full and ``generate(max_new_tokens=1)`` without cache reuse.

    Replays ``episodes``' conversations (the sampled token is discarded; the recorded move is taken), so
    the work is that of a per-turn ``generate`` loop over the same episodes. On CUDA the timer waits for
    the device at both ends.
    """
    tokenizer.padding_side = "left"
    n_turns = episodes.n_turns
    sync(device)
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        for t in range(n_turns):
            texts = [
                tokenizer.apply_chat_template(m[: 2 * t + 1], tokenize=False, add_generation_prompt=True)
                for m in episodes.messages
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            model.generate(
                **enc,
                max_new_tokens=1,
                do_sample=True,
                temperature=episodes.temperature,
                top_k=0,
                top_p=1.0,
                pad_token_id=tokenizer.pad_token_id,
            )
    sync(device)
    return time.perf_counter() - start


# ----------------------------------------------------------------------------------------------------
# (b) the training step (slot for training.train) and its FLOPs
# ----------------------------------------------------------------------------------------------------


def trainer_args(train_episodes: int, micro_batch: int, n_layers: int, *, bf16: bool):
    """The CPU recipe's Dr. GRPO settings (the algorithm TRL's GRPOTrainer runs), sized for the benchmark batch."""
    from training import RECIPES, recipe_args

    return recipe_args(
        "cpu",
        algo="dr_grpo",
        lora_layers=min(RECIPES["cpu"]["lora_layers"], n_layers),
        lora_targets=LINEAR_LAYERS,
        episodes_per_step=train_episodes,
        group_size=train_episodes,
        micro_batch_size=micro_batch,
        minibatches=1,  # one optimizer step per batch, as TRL's GRPOTrainer takes here
        progress=False,
        eval_episodes=0,
        autocast=bf16,
    )


class TrainerStep:
    """The benchmark's slot for the project's trainer: one optimisation step of ``training.train``.

    Builds the policy and optimizer the way ``training.main`` does (``make_policy``,
    ``make_optimizer``) and runs ``train_step`` on a fixed batch: forward + loss + backward + optimizer
    step. Calling it returns ``(wall seconds, process CPU seconds)``.
    """

    def __init__(self, model, tokenizer, episodes: EpisodeBatch, *, micro_batch: int, bf16: bool) -> None:
        from training import make_optimizer, make_policy

        self.args = trainer_args(len(episodes), micro_batch, model.config.num_hidden_layers, bf16=bf16)
        self.policy = make_policy(self.args, model, tokenizer)
        self.optimizer = make_optimizer(self.policy, self.args)
        self.episodes = episodes
        self.calls = 0

    def __call__(self) -> tuple[float, float]:
        from training import train_step

        wall, cpu = time.perf_counter(), time.process_time()
        stats = train_step(self.policy, self.optimizer, self.episodes, self.args, step=0)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        log(f"  our train step {self.calls}: {wall:.2f} s wall, {cpu:.2f} s CPU (loss {stats['loss']:.4g})")
        self.calls += 1
        return wall, cpu


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
# TRL GRPOTrainer, interleaved with our steps
# ----------------------------------------------------------------------------------------------------


def run_trl_interleaved(
    ours: Any, tokenizer, *, reps: int, bf16: bool, device: torch.device = CPU
) -> dict[str, Any]:
    """TRL's GRPOTrainer on ``ours``' model and adapter, with one of our steps after each TRL step.

    ``ours`` is a :class:`TrainerStep` (or anything with its ``policy``, ``args``, ``episodes`` and a call
    that runs one step). On CUDA, ``use_cpu`` is off and every timing edge waits for the device.

    Interleaving exposes both to the same background load on a shared machine. TRL's step window runs
    from ``on_step_begin`` to ``on_step_end``; its ``_prepare_inputs`` (generation + rewards) is
    subtracted using TRL's own profiling hooks. Our step runs in a later ``on_step_end`` callback, outside
    TRL's window. TRL's first step and the step of ours after it are warm-ups.
    """
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    from trl.extras import profiling

    from maze_env import render_chat

    episodes, args = ours.episodes, ours.args
    prepared: list[tuple[float, float, float]] = []  # (end time, wall, CPU) of each _prepare_inputs
    context = profiling.ProfilingContext
    original_enter, original_log = context.__enter__, context._log_metrics

    def enter(self):
        sync(device)
        self._cpu_start = time.process_time()
        return original_enter(self)

    def record(self, duration: float) -> None:
        if self.name.endswith("._prepare_inputs"):
            prepared.append((time.perf_counter(), duration, time.process_time() - self._cpu_start))
        original_log(self, duration)

    trl_steps: list[dict[str, float]] = []
    our_steps: list[tuple[float, float]] = []
    logs: list[dict[str, Any]] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            sync(device)
            self.wall, self.cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            sync(device)
            end, cpu = time.perf_counter(), time.process_time()
            inside = [(w, c) for t, w, c in prepared if self.wall <= t <= end]
            step = {
                "wall": end - self.wall,
                "cpu": cpu - self.cpu,
                "prepare_wall": sum(w for w, _ in inside),
                "prepare_cpu": sum(c for _, c in inside),
            }
            trl_steps.append(step)
            log(
                f"  TRL step {len(trl_steps) - 1}: {step['wall']:.2f} s wall ({step['prepare_wall']:.2f} s "
                f"generation excluded), {step['cpu']:.2f} s CPU ({step['prepare_cpu']:.2f} excluded)"
            )

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                seen.append(dict(logs))

    seen = logs

    class Interleave(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            our_steps.append(ours())

    def reward(completions, **kwargs):  # trivial but varying, so advantages are not all zero
        return [float(len(c) % 3) for c in completions]

    num_generations = 2
    n = len(episodes)
    prompt = render_chat(
        tokenizer, episodes.messages[0][:-1], close_final=False
    )  # up to the final assistant header
    with tempfile.TemporaryDirectory() as tmp:
        config = GRPOConfig(
            output_dir=str(Path(tmp) / "trl"),
            max_steps=reps + 1,
            per_device_train_batch_size=args.micro_batch_size,
            gradient_accumulation_steps=n // args.micro_batch_size,
            num_generations=num_generations,
            max_completion_length=episodes.n_turns,
            generation_kwargs={"min_new_tokens": episodes.n_turns},
            temperature=episodes.temperature,
            top_k=0,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_grad_norm=args.max_grad_norm,
            beta=0.0,
            loss_type="dr_grpo",
            scale_rewards="none",
            epsilon=args.clip_eps,
            bf16=bf16,
            gradient_checkpointing=False,  # TRL's GRPO default is True; our trainer does not checkpoint
            use_cpu=device.type == "cpu",
            report_to=[],
            logging_steps=1,
            save_strategy="no",
            disable_tqdm=True,
            disable_dropout=True,
            shuffle_dataset=False,
            dataloader_num_workers=0,
            seed=0,
        )
        data = Dataset.from_dict({"prompt": [prompt] * (n // num_generations) * (reps + 2)})
        trainer = GRPOTrainer(
            model=ours.policy.model,
            reward_funcs=[reward],
            args=config,
            train_dataset=data,
            processing_class=tokenizer,
            callbacks=[StepTimer(), Interleave()],
        )
        context.__enter__, context._log_metrics = enter, record
        try:
            trainer.train()
        finally:
            context.__enter__, context._log_metrics = original_enter, original_log
    completion = [e["completions/mean_length"] for e in logs if "completions/mean_length" in e]
    return {
        "trl_steps": trl_steps,
        "our_steps": our_steps,
        "completion_mean_length": completion,
        "prompt_tokens": len(tokenizer(prompt, add_special_tokens=False)["input_ids"]),
    }


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=2, help="rollout episodes (a)")
    parser.add_argument("--turns", type=int, default=15, help="turns per episode (paper: 15)")
    parser.add_argument("--train-episodes", type=int, default=2, help="episodes per training step (b)")
    parser.add_argument("--micro-batch", type=int, default=2, help="episodes per forward/backward")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions (medians) of ours and TRL")
    parser.add_argument(
        "--naive-reps", type=int, default=1, help="repetitions of the naive loop (the slow one)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=MODEL, help="model to load (tiny-llama: a quick smoke run)")
    parser.add_argument("--skip-trl", action="store_true", help="do not run the TRL baseline")
    parser.add_argument(
        "--autocast",
        action="store_true",
        help="bfloat16 autocast everywhere (default: the dtype rule, float32 on CPU)",
    )
    cli = parser.parse_args()
    if cli.train_episodes % cli.micro_batch or cli.train_episodes > cli.episodes:
        parser.error("--train-episodes must be a multiple of --micro-batch and at most --episodes")
    torch.set_num_threads(cli.threads)
    bench_start = time.perf_counter()
    use_bf16 = resolve_autocast(True if cli.autocast else None, "cpu")
    peak_fp32 = matmul_peak_gflops(torch.float32)
    # Without native bf16 a 2048² bf16 matmul takes ~15 s (~1 GFLOP/s): unless it is used, measure 512².
    bf16_size = 2048 if use_bf16 else 512
    peak_bf16 = matmul_peak_gflops(torch.bfloat16, n=bf16_size, reps=5 if use_bf16 else 1)
    peak = peak_bf16 if use_bf16 else peak_fp32
    log(
        f"matmul peak: fp32 2048² {peak_fp32:.1f} GFLOP/s, bf16 {bf16_size}² {peak_bf16:.1f} GFLOP/s; "
        f"bf16 autocast {'ON (--autocast)' if use_bf16 else 'OFF (the CPU rule: float32 everywhere)'}"
    )

    model, tokenizer = load(cli.model)
    config = MazeConfig(n_turns=cli.turns)
    group = cli.train_episodes
    seeds = [1000 + i // group for i in range(cli.episodes)]  # groups of train-episodes mazes (GRPO groups)

    # (a) rollouts
    collect_episodes(model, tokenizer, seeds=seeds[:2], config=MazeConfig(n_turns=2))  # warm-up
    ours, naive = [], []
    episodes = None
    for rep in range(max(cli.reps, cli.naive_reps)):  # interleaved: both see the same background load
        if rep < cli.reps:
            t = time.perf_counter()
            episodes = collect_episodes(model, tokenizer, seeds=seeds, config=config, autocast=use_bf16)
            ours.append(time.perf_counter() - t)
            log(f"  rollout {rep}: {ours[-1]:.2f} s for {episodes.n_tokens} tokens")
        if rep < cli.naive_reps:
            assert episodes is not None
            naive.append(naive_rollout_seconds(model, tokenizer, episodes, autocast=use_bf16))
            log(f"  naive per-turn generate {rep}: {naive[-1]:.2f} s")
    assert episodes is not None
    tokens = episodes.n_tokens
    ours_tps = tokens / statistics.median(ours)
    naive_tps = tokens / statistics.median(naive)
    log(
        f"(a) rollout: {len(episodes)} episodes x {cli.turns} turns, {tokens} tokens; "
        f"ours {ours_tps:.0f} tok/s, naive {naive_tps:.0f} tok/s; summary {episodes.summary()['action_freq']}"
    )

    # (b) training step (and TRL, interleaved)
    train_batch = episodes.select(list(range(cli.train_episodes)))
    ours_step = TrainerStep(model, tokenizer, train_batch, micro_batch=cli.micro_batch, bf16=use_bf16)
    ours_step()  # warm-up
    rss = peak_rss_gb()  # our trainer's high-water mark, before TRL allocates anything in this process
    counted = training_flops(model, ours_step.policy, train_batch)
    trl_tps = trl_cpu_tps = float("nan")
    if cli.skip_trl:
        timed_ours = [ours_step() for _ in range(cli.reps)]
    else:
        trl = run_trl_interleaved(ours_step, tokenizer, reps=cli.reps, bf16=use_bf16)
        timed_ours = trl["our_steps"][1:]
        timed_trl = trl["trl_steps"][1:]
        completion = statistics.mean(trl["completion_mean_length"][1:] or trl["completion_mean_length"])
        trl_tokens = cli.train_episodes * (trl["prompt_tokens"] + completion)
        trl_wall = statistics.median(s["wall"] - s["prepare_wall"] for s in timed_trl)
        trl_cpu = statistics.median(s["cpu"] - s["prepare_cpu"] for s in timed_trl)
        trl_tps, trl_cpu_tps = trl_tokens / trl_wall, trl_tokens / trl_cpu
        log(
            f"(b) TRL GRPOTrainer: {trl_tokens:.0f} tokens per step (prompt {trl['prompt_tokens']} + completion "
            f"{completion:.1f} per sequence) in {trl_wall:.2f} s wall -> {trl_tps:.0f} tok/s "
            f"({trl_cpu_tps:.1f} tok per CPU-s)"
        )
    our_wall = statistics.median(w for w, _ in timed_ours)
    our_cpu = statistics.median(c for _, c in timed_ours)
    train_tps, train_cpu_tps = counted["tokens"] / our_wall, counted["tokens"] / our_cpu
    achieved = counted["flops"] / our_wall / 1e9
    log(
        f"(b) our train step: {cli.train_episodes} episodes, {counted['tokens']:.0f} tokens in {our_wall:.2f} s "
        f"wall -> {train_tps:.0f} tok/s ({train_cpu_tps:.1f} tok per CPU-s); {counted['flops'] / 1e12:.3f} TFLOP "
        f"-> {achieved:.1f} GFLOP/s (backward through {counted['grad_layers']}/{counted['n_layers']} layers)"
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
        f"train tokens per CPU-second ours {train_cpu_tps:.1f} trl {trl_cpu_tps:.1f} "
        f"(ratio {train_cpu_tps / trl_cpu_tps:.2f}; less sensitive to other jobs on the cores)"
    )
    print(f"peak RSS: ours {rss:.2f} GB; whole process incl. TRL {peak_rss_gb():.2f} GB")
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
