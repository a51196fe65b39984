"""The update's shared prefix: a curriculum TBRM minibatch with the rows' common prefix run once, against
one full forward per row.

The default study's training (``welfare_axis.study.StudyConfig``: TBRM, LoRA on every layer of
SmolLM2-135M-Instruct) spends its first steps on single-turn states: every state is the system prompt, the
maze's opening words, a location and four neighbours, and most of its ~104 tokens before the location are
the same in every state. ``training.rollout.action_logits`` runs that common prefix once per micro-batch
(KV cache copied to every row, gradients flowing back to it) and only each row's rest on top.

This script plays one minibatch of the step-0 curriculum (``--groups`` single-turn groups of the recipe's
group size, the study's own seeds and sampling) and times ``training.train_step`` on it (the reference pass,
``update_epochs`` forward + backward passes, the optimizer steps), alternating the shared prefix on and off
(``SHARED_PREFIX_MIN`` raised past every row's length switches it off), on the same policy and episodes;
the first call of each is a warm-up. Before timing it checks that both paths give the same direction logits
and gradients on the minibatch.

Ends with:
    BENCH update_shared_vs_full <full ÷ shared train_step seconds, medians> >=1.2

Run (heavy: takes the shared lock): flock /tmp/wa/heavy.lock python -m bench.update_prefix
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
from typing import Any

import torch


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def recipe_minibatch(groups: int = 24, model: str | None = None) -> tuple[Any, Any, Any, Any]:
    """``(policy, optimizer, episodes, args)``: one minibatch of the default study's step 0 (``groups``
    single-turn groups of the recipe's group size, the study's own seeds and sampling), with the training
    args of a step that runs it whole (one minibatch, one micro-batch), as the curriculum's scaled step does."""
    from training import make_optimizer, make_policy
    from training import rollout as R
    from training.config import maze_config, sampling_generator, step_turns, train_seeds
    from training.policy import use_autocast
    from welfare_axis.study import StudyConfig

    cfg = StudyConfig() if model is None else StudyConfig(model=model)
    args = cfg.train_args(Path("runs/bench_update"))
    turns, _ = step_turns(args, 0)
    n = groups * args.group_size
    args = dataclasses.replace(args, episodes_per_step=n, minibatches=1, micro_batch_size=n, progress=False)
    torch.set_num_threads(args.threads)
    policy = make_policy(args)
    optimizer = make_optimizer(policy, args)
    log(f"{args.model}: {args.algo}, LoRA layers {args.lora_layers or 'all'}, {groups} groups × {args.group_size}"
        f" single-turn states, {args.update_epochs or 1} update passes")  # fmt: skip
    config = dataclasses.replace(maze_config(args), n_turns=turns)
    seeds = train_seeds(args.seed, 0, groups, args.group_size)
    with torch.no_grad():
        episodes = R.collect_episodes(policy.model, policy.tokenizer, seeds=seeds, config=config,
                                      temperature=args.temperature, generator=sampling_generator(args.seed, 0, torch.device("cpu")),
                                      autocast=use_autocast(args, policy.model))  # fmt: skip
    return policy, optimizer, episodes, args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--groups", type=int, default=24, help="single-turn groups (the recipe's minibatch: 24)"
    )
    parser.add_argument(
        "--reps", type=int, default=3, help="timed steps of each path (after one warm-up each)"
    )
    parser.add_argument("--model", default=None, help="default: the study's model")
    a = parser.parse_args(argv)

    from training import rollout as R
    from training import train_step
    from training.update import _policy_logits

    policy, optimizer, episodes, args = recipe_minibatch(a.groups, a.model)
    n = len(episodes)
    distinct = R.distinct_rows(
        [row.tolist() for row in episodes.input_ids[:, : int(episodes.action_positions.max()) + 1]]
    )
    first = distinct[0] if distinct is not None else list(range(n))
    rows = episodes.select(first)
    prefix = R.shared_prefix_length(rows)
    length = float((rows.action_positions[:, -1] + 1).float().mean())
    log(
        f"{len(first)} distinct states of {length:.1f} tokens; common prefix {prefix} tokens: "
        f"{len(first) * length:.0f} tokens per pass in full, {prefix + len(first) * (length - prefix):.0f} shared"
    )

    full_min = 10**9
    shared_min = R.SHARED_PREFIX_MIN

    def use(shared: bool) -> None:
        R.SHARED_PREFIX_MIN = shared_min if shared else full_min

    # the same logits and gradients both ways, on this minibatch
    grads = {}
    for shared in (True, False):
        use(shared)
        policy.model.zero_grad()
        logits = _policy_logits(policy.model, episodes, None, None)
        logits.logsumexp(-1).sum().backward()
        grads[shared] = (logits.detach(), [p.grad.clone() for p in policy.trainable_parameters().values()])
    policy.model.zero_grad()
    diff = float((grads[True][0] - grads[False][0]).abs().max())
    gdiff = max(
        float((x - y).abs().max() / (y.abs().max() + 1e-12)) for x, y in zip(grads[True][1], grads[False][1])
    )
    log(f"shared vs full: max |Δ logit| {diff:.2e}, max relative |Δ grad| {gdiff:.2e}")
    if diff > 1e-3 or gdiff > 1e-3:
        raise SystemExit("the shared prefix does not reproduce the full forward: not timing it")

    times: dict[bool, list[float]] = {True: [], False: []}
    for rep in range(a.reps + 1):
        for shared in (False, True):
            use(shared)
            t0 = time.perf_counter()
            stats = train_step(policy, optimizer, episodes, args, step=0)
            seconds = time.perf_counter() - t0
            log(f"  rep {rep} {'shared' if shared else 'full  '}: {seconds:.1f} s (loss {stats['loss']:.4g})"
                + (" warm-up" if rep == 0 else ""))  # fmt: skip
            if rep:
                times[shared].append(seconds)
    use(True)
    full, shared = statistics.median(times[False]), statistics.median(times[True])
    print(f"train_step on {n} single-turn states ({len(first)} distinct): full {full:.1f} s, shared prefix "
          f"{shared:.1f} s (medians of {a.reps})")  # fmt: skip
    print(f"BENCH update_shared_vs_full {full / shared:.2f} >=1.2")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
