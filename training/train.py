"""Train a language model in the maze: Dr. GRPO, GRPO, REINFORCE, RLOO, PPO, TBRM, SFT, Iterative-SFT.

One cleanrl-style loop that reads in the order of the maths: seeding → model (+ LoRA) → for each step:
``# ROLLOUT`` (one batch of fresh seeded mazes; the episodes of a group share a maze) → ``# ADVANTAGES``
→ ``# UPDATE`` → ``# LOG`` (+ checkpoint).

Losses (``training.losses``; the paper's App. Q): for the policy-gradient family the per-decision loss
is the dual-clip PPO surrogate minus ``β(s)·H_eq`` (equalized entropy) plus ``κ·k3`` (KL to the
reference), aggregated with "seq-mean-token-sum" over a constant ``Z``; ``β(s)`` and the learning
rate share the cosine annealing multiplier. The policy is the softmax over the four direction tokens,
at the sampling temperature (exactly the distribution the action-masked sampler draws from). The
reference policy is the LoRA adapter switched off (``with model.disable_adapter():``), or a frozen
copy for full fine-tuning. With ``curriculum_turns``/``curriculum_steps`` the first steps play shorter
episodes (more of them, the same decisions per step); evaluation always plays ``n_turns``.

Each algorithm is one entry of ``training.algorithms.ALGORITHMS`` (who plays, which episodes train,
its advantages and loss); the loop below never branches on its name.

Run it:

    welfare-axis train --recipe cpu --algo sft --out runs/sft_cpu      # learns the maze in ~14 min on 2 cores
    welfare-axis train --recipe cpu --algo dr_grpo --out runs/grpo_cpu
    python -m training.train --model smollm2-135m-instruct --algo sft --steps 50 --out runs/sft
    welfare-axis train --out runs/grpo_cpu --recipe cpu --algo dr_grpo --resume   # continue exactly

A run directory holds ``config.json`` (every argument), ``metrics.jsonl`` (one line per step),
``checkpoints/step_NNNNNN/`` (trainable weights, optimizer state and RNG states as safetensors + JSON;
never pickle; written atomically), ``final/`` (a LoRA adapter or full model loadable with
:func:`load_trained`) and ``eval.json`` (held-out evaluation before and after training).

Example:
    >>> args = Args(model="tiny-llama", steps=1, episodes_per_step=2, group_size=2, n_turns=2,
    ...             maze_size=12, out=str(tmp) + "/run", progress=False)  # doctest: +SKIP
    >>> result = main(args)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probes.artifacts import atomic_write, write_json
from probes.models import resolve_autocast
from training import distributed as D
from training.algorithms import ALGORITHMS
from training.checkpoints import RunDirError, latest_checkpoint, load_checkpoint, save_checkpoint, save_final
from training.config import (
    RECIPES,
    Args,
    heldout_seeds,
    maze_config,
    recipe_args,
    sampling_generator,
    scaled_for_step,
    step_turns,
    train_seeds,
    upgrade_config,
    validate,
)
from training.episodes import save_episodes
from training.evaluation import EvalResult, compare_evals, eval_settings, evaluate
from training.expert_data import expert_episodes
from training.monitor import start_monitor
from training.policy import Policy, make_optimizer, make_policy, use_autocast
from training.preferences import preference_episodes, step_pairs
from training.reward_model import load_reward_model, with_learned_rewards
from training.rollout import EpisodeBatch, collect_episodes
from training.top_layers import assemble, capture_below
from training.update import NonFiniteLossError, top_layer_start, train_step

# ====================================================================================================
# Run directory
# ====================================================================================================

SUMMARY_KEYS = ("mean_return", "stderr_return", "gold_per_episode", "mold_per_episode", "action_freq")
_RESUME_FREE = ("resume", "stop_at_step", "threads", "progress", "device", "parallel", "log_episodes", "monitor_every",
                "monitor_n_per_class")  # fmt: skip


def _check_same_config(saved: dict[str, Any], args: Args, run_dir: Path) -> None:
    current = json.loads(json.dumps(dataclasses.asdict(args), default=str))
    free = set(_RESUME_FREE)
    if saved.get("autocast") is None:
        free.add("autocast")  # runs made before the dtype was recorded ran float32 on our CPUs
    if saved.get("anneal_steps") is not None and current.get("anneal_steps") is not None:
        free.add("steps")  # the schedule does not depend on steps then
    diffs = [
        f"{k}: {saved.get(k)!r} (saved) vs {current.get(k)!r} (now)"
        for k in sorted(set(saved) | set(current))
        if k not in free and saved.get(k) != current.get(k)
    ]
    if diffs:
        raise ValueError(
            f"cannot resume {run_dir}: it was created with another config ({'; '.join(diffs)}). "
            "Resume with the same settings, or start a new run with another --out"
        )


def _read_metrics(path: Path, before_step: int) -> list[str]:
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if json.loads(line).get("step", -1) < before_step]


@dataclass
class RunResult:
    """What :func:`main` returns: the run directory, the last step and the evaluations."""

    run_dir: Path
    steps_done: int
    metrics: list[dict[str, Any]]
    before: EvalResult | None = None
    after: EvalResult | None = None


# ====================================================================================================
# Main loop
# ====================================================================================================


def main(args: Args) -> RunResult:
    """Train as configured by ``args``; see the module docstring.

    Under ``torchrun`` / ``accelerate launch`` every rank runs this: each collects its rollout shards,
    gradients are all-reduced (``args.parallel``), rank 0 writes metrics, checkpoints and evaluations.
    """
    validate(args)
    with D.session(device=args.device) as ctx:
        return _main(args, ctx)


def _main(args: Args, ctx: D.DistContext) -> RunResult:
    from tqdm.auto import tqdm

    # the dtype rule, resolved once for this device and recorded (config.json says true or false)
    args = dataclasses.replace(args, autocast=resolve_autocast(args.autocast, ctx.device))
    run_dir = Path(args.out)
    config_path = run_dir / "config.json"
    if args.resume:
        if not config_path.is_file():
            raise FileNotFoundError(
                f"nothing to resume: {config_path} does not exist; drop --resume to start a run"
            )
        _check_same_config(upgrade_config(json.loads(config_path.read_text())), args, run_dir)
    elif config_path.is_file():
        raise FileExistsError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    D.barrier(ctx)  # every rank has checked the run directory before rank 0 writes into it

    # SEEDING
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    # MODEL
    policy = make_policy(dataclasses.replace(args, device=str(ctx.device)) if ctx.distributed else args)
    if ctx.distributed:
        policy.parallel = D.parallelize(policy.model, ctx, args.parallel)  # before the optimizer (FSDP)
    optimizer = make_optimizer(policy, args)
    if args.init_from is not None:  # a warm start; a resumed run's own checkpoint replaces it below
        warm = latest_checkpoint(Path(args.init_from))
        if warm is None:
            raise RunDirError(
                f"--init-from {args.init_from}: no checkpoint there; point it at a finished run's directory "
                "(one with checkpoints/, e.g. from welfare-axis train --recipe cpu --algo sft)"
            )
        try:
            load_checkpoint(warm, policy)
        except ValueError as err:
            raise ValueError(f"--init-from {args.init_from}: {err}; use that run's LoRA settings") from None
    start = 0
    if args.resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is not None:
            start = load_checkpoint(checkpoint, policy, optimizer)
    elif ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(config_path, dataclasses.asdict(args))
    metrics_path = run_dir / "metrics.jsonl"
    kept = _read_metrics(metrics_path, start)
    if ctx.is_main:
        atomic_write(metrics_path, lambda p: p.write_text("".join(line + "\n" for line in kept)))
    history = [json.loads(line) for line in kept]
    eval_path = run_dir / "eval.json"
    evals: dict[str, Any] = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
    eval_seeds = heldout_seeds(args.eval_episodes) if args.eval_episodes else []

    def run_eval(name: str) -> EvalResult:  # every rank evaluates (FSDP needs them all); rank 0 records
        log = run_dir / "episodes" / f"eval_{name}" if args.log_episodes and ctx.is_main else None
        return policy.call_no_grad(
            evaluate,
            policy.tokenizer,
            **eval_settings(args),
            autocast=use_autocast(args, policy.model),
            log_path=log,
            progress=f"eval {name}" if args.progress and ctx.is_main else False,
        )

    before = EvalResult(**evals["before"]) if "before" in evals else None
    if eval_seeds and before is None and args.eval_before:
        t0 = time.perf_counter()
        with _eval_mode(policy):
            before = run_eval("before")
        evals["before"] = before.to_dict()
        evals["before_seconds"] = time.perf_counter() - t0
        if ctx.is_main:
            write_json(eval_path, evals)
            print(f"before training: {before.line()}", file=sys.stderr)

    # RLHF's second stage: a learned reward replaces the environment's in the update (training.reward_model)
    reward_model = load_reward_model(args.reward_model, device=str(ctx.device)) if args.reward_model else None

    # the reward axis, read every monitor_every steps (probes.axis_monitor)
    monitor = start_monitor(policy, args, run_dir, start, ctx) if args.monitor_every else None
    algo = ALGORITHMS[args.algo]
    end = args.steps if args.stop_at_step is None else min(args.steps, args.stop_at_step)
    start_layer = top_layer_start(policy, args)
    bar = tqdm(
        range(start, end),
        initial=start,
        total=args.steps,
        disable=not (args.progress and ctx.is_main),
        desc=args.algo,
    )
    last_checkpoint = latest_checkpoint(run_dir)
    for step in bar:
        t_step = time.perf_counter()
        step_args = scaled_for_step(args, step)

        # ROLLOUT (SFT: the expert plays instead; every episode gets its own maze)
        t0 = time.perf_counter()
        episodes, hidden = play_step(policy, args, step, ctx, start_layer)
        rollout_seconds = time.perf_counter() - t0
        summary = _summarise(episodes, args, step, ctx, run_dir)  # rank 0: the global batch, logged
        if reward_model is not None:  # after the summary: logs keep the true return
            episodes = with_learned_rewards(episodes, reward_model)

        # ADVANTAGES + UPDATE (the algorithm's entry says which episodes train; train_step does the rest)
        t0 = time.perf_counter()
        rows = algo.keep(episodes, args) if algo.keep is not None else None
        train_batch = episodes if rows is None else episodes.select(rows)
        hidden = None if hidden is None else hidden if rows is None else hidden[rows]
        stats = _update(policy, optimizer, train_batch, step_args, step, hidden, last_checkpoint)
        update_seconds = time.perf_counter() - t0

        # LOG
        record = _step_record(step, step_args, summary, stats, episodes, train_batch, ctx)
        if reward_model is not None:
            record["learned_reward_mean_return"] = float(episodes.rewards.sum(1).mean())
        seconds = {"rollout": rollout_seconds, "update": update_seconds, "step": time.perf_counter() - t_step}
        record.update({f"{k}_seconds": v for k, v in seconds.items()})
        record["tokens_per_s"] = (record["rollout_tokens"] + stats["update_tokens"]) / seconds["step"]
        done = step + 1
        if args.eval_every and done % args.eval_every == 0 and eval_seeds and done < args.steps:
            with _eval_mode(policy):
                mid = run_eval(f"step_{done:06d}")
            record["eval_mean_return"], record["eval_stderr_return"] = mid.mean_return, mid.stderr_return
            record["eval_gold_per_episode"], record["eval_mold_per_episode"] = (
                mid.gold_per_episode,
                mid.mold_per_episode,
            )
        if monitor is not None and done % args.monitor_every == 0:
            t0 = time.perf_counter()
            with _eval_mode(policy):
                record["axis"] = policy.call_no_grad(monitor.read).to_dict()
            record["monitor_seconds"] = time.perf_counter() - t0
        if ctx.is_main:
            with open(metrics_path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            history.append(record)
            bar.set_postfix(
                ret=f"{summary['mean_return']:+.1f}",
                ent=f"{stats.get('entropy', 0):.2f}",
                loss=f"{stats['loss']:.3g}",
            )
        if done % args.checkpoint_every == 0 or done == end:
            last_checkpoint = save_checkpoint(run_dir, done, policy, optimizer, args)
    bar.close()

    steps_done = max(start, end)
    after = EvalResult(**evals["after"]) if "after" in evals and start >= args.steps else None
    if steps_done >= args.steps and after is None:
        save_final(run_dir, policy, args)
        evals["train_seconds"] = float(sum(r["step_seconds"] for r in history))
        if eval_seeds:
            t0 = time.perf_counter()
            with _eval_mode(policy):
                after = run_eval("after")
            evals["after"] = after.to_dict()
            evals["after_seconds"] = time.perf_counter() - t0
            evals["comparison"] = compare_evals(before, after) if before is not None else None
            if ctx.is_main:
                print(f"after training:  {after.line()}", file=sys.stderr)
        if ctx.is_main:
            write_json(eval_path, evals)
    return RunResult(run_dir=run_dir, steps_done=steps_done, metrics=history, before=before, after=after)


def _summarise(
    episodes: EpisodeBatch, args: Args, step: int, ctx: D.DistContext, run_dir: Path
) -> dict[str, Any] | None:
    """The global batch's summary on rank 0 (None elsewhere), its episodes logged when asked."""
    everyone = D.gather_objects(episodes, ctx)
    if everyone is None:
        return None
    global_batch = everyone[0] if len(everyone) == 1 else EpisodeBatch.cat(everyone)
    if args.log_episodes:
        save_episodes(
            global_batch, run_dir / "episodes" / f"step_{step:06d}", extra={"step": step, "algo": args.algo}
        )
    return global_batch.summary()


def _update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    batch: EpisodeBatch,
    args: Args,
    step: int,
    hidden: torch.Tensor | None,
    last_checkpoint: Path | None,
) -> dict[str, float]:
    """:func:`train_step`, with a non-finite loss reported next to the last good checkpoint."""
    try:
        return train_step(policy, optimizer, batch, args, step, hidden=hidden)
    except NonFiniteLossError as err:
        where = (
            f"{last_checkpoint} (step {_checkpoint_step(last_checkpoint)})" if last_checkpoint else "none yet"
        )
        raise NonFiniteLossError(
            f"{err}; training stopped without applying this update. The last good checkpoint is {where}. "
            f"Lower --lr (now {args.lr}) or --entropy-coef, then rerun (with --resume to continue from it)"
        ) from None


def _step_record(
    step: int,
    step_args: Args,
    summary: dict[str, Any] | None,
    stats: dict[str, float],
    episodes: EpisodeBatch,
    train_batch: EpisodeBatch,
    ctx: D.DistContext,
) -> dict[str, Any]:
    """One line of ``metrics.jsonl`` (its timings are added by the loop)."""
    algo = ALGORITHMS[step_args.algo]
    record: dict[str, Any] = {
        "step": step,
        "episodes": step_args.episodes_per_step,
        "turns": step_turns(step_args, step)[0],
    }
    if summary is not None:  # rank 0: statistics of the global batch
        record.update({key: summary[key] for key in SUMMARY_KEYS})
    record.update(**stats, rollout_tokens=int(D.global_count(episodes.n_tokens, ctx)))
    if algo.plays in ("expert", "preferences"):  # the returns above are the data's, not the policy's
        record["data"] = algo.plays
    if algo.keep is not None:
        kept = D.mean_metrics({"r": float(train_batch.returns.mean())}, ctx, weight=len(train_batch))
        record["kept_mean_return"] = kept["r"]
    return record


def play_step(
    policy: Policy, args: Args, step: int, ctx: D.DistContext, start_layer: int | None
) -> tuple[EpisodeBatch, torch.Tensor | None]:
    """A step's episodes (this rank's rollout shards) and, with ``start_layer``, the rollout's activations
    entering that layer (right-padded ``(B, P, d)``), which the update reuses.

    The policy plays seeded GRPO groups (``train_seeds``); for SFT the expert plays instead, one maze per
    episode. One call per rollout shard, each with its own sampling generator, so a run is the same on any
    world size that divides ``rollout_shards``.
    """
    turns, _ = step_turns(args, step)
    step_config = dataclasses.replace(maze_config(args), n_turns=turns)
    step_args = scaled_for_step(args, step)
    n_groups = step_args.episodes_per_step // args.group_size
    # One call per rollout shard; this rank collects D.rank_shard_ids (all of them in one process).
    sharded = args.rollout_shards > 1
    parts, hiddens = [], []
    if ALGORITHMS[args.algo].plays == "preferences":  # pairs of moves ranked by true Q, one state each
        n_pairs = step_args.episodes_per_step // 2
        base = train_seeds(args.seed, step, 1, 1)[0]
        pairs = step_pairs(n_pairs, config=step_config, seed=base, horizon=args.preference_horizon,
                           rule=args.preference_rule)  # fmt: skip
        full = preference_episodes(policy.tokenizer, pairs, step_config)
        shards = D.shard_seeds(list(range(len(full))), args.rollout_shards, 2)
        parts = [full.select(shards[shard]) for shard in D.rank_shard_ids(args.rollout_shards, ctx)]
    elif ALGORITHMS[args.algo].plays == "expert":
        blocks = D.shard_seeds(
            train_seeds(args.seed, step, step_args.episodes_per_step, 1), args.rollout_shards
        )
        for shard in D.rank_shard_ids(args.rollout_shards, ctx):
            expert_seed = args.seed + step
            if sharded:
                expert_seed = int(np.random.SeedSequence([args.seed, step, shard]).generate_state(1)[0])
            parts.append(
                expert_episodes(
                    policy.tokenizer,
                    seeds=blocks[shard],
                    config=step_config,
                    horizon=args.expert_horizon,
                    expert_seed=expert_seed,
                )
            )
    else:
        seeds = train_seeds(args.seed, step, n_groups, args.group_size)
        blocks = D.shard_seeds(seeds, args.rollout_shards, args.group_size)
        for shard in D.rank_shard_ids(args.rollout_shards, ctx):
            capture = capture_below(policy.model, start_layer) if start_layer else contextlib.nullcontext([])
            with capture as captured:
                parts.append(
                    policy.call_no_grad(
                        collect_episodes,
                        policy.tokenizer,
                        seeds=blocks[shard],
                        config=step_config,
                        temperature=args.temperature,
                        generator=sampling_generator(
                            args.seed, step, torch.device("cpu"), shard if sharded else None
                        ),
                        autocast=use_autocast(args, policy.model),
                        batch_size=step_args.rollout_batch_size,
                    )
                )
            if start_layer:
                hiddens.append(assemble(captured, parts[-1], step_args.rollout_batch_size))
    episodes = parts[0] if len(parts) == 1 else EpisodeBatch.cat(parts)
    hidden = None
    if hiddens:  # right-padded (B, P, d) per shard: pad to the widest, then stack the rows
        width = max(h.shape[1] for h in hiddens)
        hidden = torch.cat([torch.nn.functional.pad(h, (0, 0, 0, width - h.shape[1])) for h in hiddens])
    return episodes, hidden


def _checkpoint_step(path: Path | None) -> int | None:
    return None if path is None else int(path.name.removeprefix("step_"))


@contextlib.contextmanager
def _eval_mode(policy: Policy) -> Iterator[None]:
    was = policy.model.training
    policy.model.eval()
    try:
        yield
    finally:
        policy.model.train(was)


# ====================================================================================================
# Command line
# ====================================================================================================


def _flag(argv: list[str], flag: str, *, remove: bool) -> tuple[str | None, list[str]]:
    """The value of ``flag`` (``--flag V`` or ``--flag=V``; the last one wins) and ``argv`` without it when
    ``remove`` (else unchanged)."""
    rest, value, i = [], None, 0
    while i < len(argv):
        token = argv[i]
        if token == flag and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
            if not remove:
                rest += [token, value]
            continue
        if token == flag and remove:
            raise ValueError(f"{flag} needs a value: one of {sorted(RECIPES)}")
        if token.startswith(flag + "="):
            value = token.split("=", 1)[1]
            if remove:
                i += 1
                continue
        rest.append(token)
        i += 1
    return value, rest


def parse_args(argv: Sequence[str] | None = None, prog: str = "python -m training.train") -> Args:
    """Parse command-line flags (tyro; ``--help`` lists every field). ``--recipe NAME`` sets the defaults:
    the recipe's values, and its values for the ``--algo`` given (``RECIPE_ALGO_OVERRIDES``)."""
    import tyro

    argv = list(sys.argv[1:] if argv is None else argv)
    name, rest = _flag(argv, "--recipe", remove=True)
    defaults = Args()
    if name:
        algo, _ = _flag(rest, "--algo", remove=False)
        defaults = recipe_args(name, **({"algo": algo} if algo else {}))
    return tyro.cli(Args, args=rest, default=defaults, prog=prog, description=__doc__.splitlines()[0])


def cli(argv: Sequence[str] | None = None, prog: str = "python -m training.train") -> int:
    """Entry point: parse, train, print the evaluation. Returns the exit status."""
    args = parse_args(argv, prog=prog)
    result = main(args)
    print(f"run: {result.run_dir} ({result.steps_done}/{args.steps} steps)")
    if result.before is not None and result.after is not None:
        comparison = compare_evals(result.before, result.after)
        print(f"before: {result.before.line()}")
        print(f"after:  {result.after.line()}")
        print(
            f"change: {comparison['return_diff']:+.2f} return = {comparison['z_unpaired']:.1f} SE (unpaired), "
            f"gold {comparison['gold_diff']:+.2f}, mold {comparison['mold_diff']:+.2f} per episode"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(cli())
    except (ValueError, TypeError, KeyError, FileNotFoundError, FileExistsError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
