"""The shared prefix in the CPU preset's training step: rollout and top-layer update, on against off.

The CPU preset (``training.config.RECIPES["cpu"]``: TBRM, LoRA on the top 8 of SmolLM2-135M-Instruct's 30
layers) spends its steps on single-turn curriculum states: the rollout feeds each distinct state through the
whole model (recording the activations entering layer 22), and the update runs the top 8 layers on them,
3 passes. Every state begins with the same system prompt and the maze's opening words (38 of ~103 tokens).
``collect_episodes`` feeds that beginning once per group before the distinct prompts, and
``top_layers.top_action_logits`` runs it once per micro-batch through the adapted layers, each with a KV
cache copied to every row.

This script plays step 0 of the preset with ``--groups`` groups (the preset: 192; minibatches scaled so each
holds the preset's 24 distinct states) and times the rollout and the update (``training.train.play_step``,
``training.train_step``: what the training loop runs), alternating the shared prefix on and off
(``training.rollout.SHARED_PREFIX_MIN`` raised past every row's length switches both off) on the same
policy; the first step of each is a warm-up. Before timing, it checks that both paths give the same
rollout (logits and sampled actions) and the same update logits and gradients.

Ends with:
    BENCH step_shared_vs_full <full ÷ shared step seconds, medians> >=1.2

Run (heavy: takes the shared lock): flock /tmp/wa/heavy.lock python -m bench.step_prefix
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: drop bench/ from sys.path so it cannot shadow the packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse
import dataclasses
import statistics
import time

import torch

PRESET_GROUPS = 192
"""Groups of step 0 of the CPU preset's TBRM (16 episodes x curriculum scale 96 / group size 8)."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--groups", type=int, default=48, help="single-turn groups (the preset: 192)")
    parser.add_argument(
        "--reps", type=int, default=3, help="timed steps of each path (after one warm-up each)"
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--lora-layers", type=int, default=None, help="default: the recipe's (8)")
    a = parser.parse_args(argv)

    from training import distributed as D
    from training import make_optimizer, make_policy, recipe_args, train_step
    from training import rollout as R
    from training.config import scaled_for_step
    from training.train import play_step
    from training.update import _policy_logits, top_layer_start

    base = recipe_args("cpu", model=a.model, out="runs/bench_step_prefix", progress=False, log_episodes=False)
    if a.lora_layers is not None:
        base = dataclasses.replace(base, lora_layers=a.lora_layers)
    scale = base.curriculum_scale or 1
    if (a.groups * base.group_size) % scale or a.groups % 24:
        raise SystemExit(
            f"--groups must be a multiple of 24 and of {scale // base.group_size}; got {a.groups}"
        )
    # the preset's minibatches hold 24 distinct states each; keep that with fewer groups
    args = dataclasses.replace(
        base, episodes_per_step=a.groups * base.group_size // scale, minibatches=max(1, a.groups // 24)
    )
    torch.set_num_threads(args.threads)
    policy = make_policy(args)
    optimizer = make_optimizer(policy, args)
    start = top_layer_start(policy, args)
    step_args = scaled_for_step(args, 0)
    log(f"{args.model}: {args.algo}, LoRA on the top {args.lora_layers} layers (update from layer {start}), "
        f"{a.groups} groups x {args.group_size} single-turn states, {args.minibatches} minibatches, "
        f"{args.update_epochs} passes")  # fmt: skip
    ctx = D.DistContext()

    shared_min, off = R.SHARED_PREFIX_MIN, 10**9

    def use(shared: bool) -> None:
        R.SHARED_PREFIX_MIN = shared_min if shared else off

    # the same rollout and the same update both ways
    played = {}
    for shared in (True, False):
        use(shared)
        played[shared] = play_step(policy, args, 0, ctx, start)
    (e1, h1), (e0, h0) = played[True], played[False]
    rollout_diff = float((e1.direction_logits - e0.direction_logits).abs().max())
    hidden_diff = float((h1 - h0).abs().max())
    same_actions = bool(torch.equal(e1.actions, e0.actions))
    rows = list(range(min(len(e1), step_args.micro_batch_size)))
    grads = {}
    for shared in (True, False):
        use(shared)
        policy.model.zero_grad()
        logits = _policy_logits(policy.model, e1.select(rows), h1[rows], start)
        logits.logsumexp(-1).sum().backward()
        grads[shared] = (logits.detach(), [p.grad.clone() for p in policy.trainable_parameters().values()])
    policy.model.zero_grad()
    update_diff = float((grads[True][0] - grads[False][0]).abs().max())
    grad_diff = max(
        float((x - y).abs().max() / (y.abs().max() + 1e-12)) for x, y in zip(grads[True][1], grads[False][1])
    )
    log(f"shared vs full: rollout max |Δ logit| {rollout_diff:.2e}, same actions {same_actions}, max |Δ hidden| "
        f"{hidden_diff:.2e}; update max |Δ logit| {update_diff:.2e}, max relative |Δ grad| {grad_diff:.2e}")  # fmt: skip
    if rollout_diff > 1e-3 or update_diff > 1e-3 or grad_diff > 1e-3 or not same_actions:
        raise SystemExit("the shared prefix does not reproduce the full forward: not timing it")

    times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for rep in range(a.reps + 1):
        for shared in (False, True):
            use(shared)
            t0 = time.perf_counter()
            episodes, hidden = play_step(policy, args, 0, ctx, start)
            t1 = time.perf_counter()
            stats = train_step(policy, optimizer, episodes, step_args, 0, hidden=hidden)
            t2 = time.perf_counter()
            log(f"  rep {rep} {'shared' if shared else 'full  '}: rollout {t1 - t0:.1f} s, update {t2 - t1:.1f} s "
                f"(loss {stats['loss']:.4g})" + (" warm-up" if rep == 0 else ""))  # fmt: skip
            if rep:
                times[shared].append((t1 - t0, t2 - t1))
    use(True)
    med = {s: [statistics.median(t[i] for t in times[s]) for i in (0, 1)] for s in (True, False)}
    full, shared = sum(med[False]), sum(med[True])
    print(f"step 0 of the CPU preset on {a.groups} groups (medians of {a.reps}): rollout {med[False][0]:.1f} -> "
          f"{med[True][0]:.1f} s, update {med[False][1]:.1f} -> {med[True][1]:.1f} s, step {full:.1f} -> {shared:.1f} s; "
          f"at the preset's {PRESET_GROUPS} groups about {full * PRESET_GROUPS / a.groups:.0f} -> "
          f"{shared * PRESET_GROUPS / a.groups:.0f} s per step")  # fmt: skip
    print(f"BENCH step_shared_vs_full {full / shared:.2f} >=1.2")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
