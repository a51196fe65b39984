"""Held-out evaluation: play seeded mazes, summarise with standard errors, compare two evaluations."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maze_env.config import MazeConfig
from maze_env.dynamics import ACTIONS
from training.config import Args, check_positive_int, heldout_seeds, maze_config
from training.episodes import save_episodes
from training.rollout import EpisodeBatch, collect_episodes

# ====================================================================================================
# Evaluation
# ====================================================================================================


@dataclass(frozen=True)
class EvalResult:
    """Held-out performance: mean return ± standard error and Gold/Mold entries per episode."""

    n_episodes: int
    mean_return: float
    stderr_return: float
    gold_per_episode: float
    mold_per_episode: float
    stderr_gold: float
    stderr_mold: float
    action_freq: dict[str, float]
    greedy: bool
    temperature: float
    returns: list[float] = field(repr=False)
    gold: list[int] = field(repr=False)
    mold: list[int] = field(repr=False)
    seeds: list[int] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def line(self) -> str:
        return (
            f"return {self.mean_return:+.2f} ± {self.stderr_return:.2f} (SE), gold {self.gold_per_episode:.2f} "
            f"± {self.stderr_gold:.2f}, mold {self.mold_per_episode:.2f} ± {self.stderr_mold:.2f} "
            f"per episode over {self.n_episodes} held-out mazes"
        )


def _stderr(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def evaluate(
    model: nn.Module,
    tokenizer: Any,
    seeds: Sequence[int],
    *,
    config: MazeConfig | None = None,
    temperature: float = 0.7,
    greedy: bool = False,
    sample_seed: int = 0,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    autocast: bool | None = None,
    log_path: str | os.PathLike[str] | None = None,
    progress: bool | str = False,
) -> EvalResult:
    """Play one held-out maze per seed and summarise.

    By default the policy is evaluated as it is trained and run: sampling at ``temperature`` from the
    action-masked distribution, with a sampling generator seeded by ``sample_seed`` (so two models
    evaluated with the same seeds see the same mazes and the same random numbers: a paired comparison).
    ``greedy=True`` takes the argmax direction instead (the untrained SmolLM2 then always answers N).
    Standard errors are ``std(ddof=1)/sqrt(n)`` over episodes. ``log_path`` also saves the episodes there
    (``training.episodes.save_episodes``). ``chunk_size`` plays the mazes that many at a time, one chunk
    after another, so the KV cache holds only one chunk (15-turn episodes of SmolLM2-135M: ~60 MB each).
    Each chunk draws its wind and later clause orders from its own first seed, so results depend on it.
    ``progress`` shows a tqdm bar over the played turns (a string names it; 64 fifteen-turn mazes of
    SmolLM2 take about 5 minutes on 2 CPU cores).

    Example:
        >>> result = evaluate(model, tok, heldout_seeds(64))  # doctest: +SKIP
        >>> result.line()  # doctest: +SKIP
        'return -75.31 ± 4.12 (SE), gold 1.20 ± 0.15, mold 9.02 ± 0.40 per episode over 64 held-out mazes'
    """
    seeds = [int(s) for s in seeds]
    if chunk_size is not None:
        check_positive_int("chunk_size", chunk_size)
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(int(sample_seed))
    step = chunk_size or len(seeds)
    firsts = range(0, len(seeds), step)
    turns = (config or MazeConfig()).n_turns
    desc = progress if isinstance(progress, str) else "evaluate"
    with tqdm(total=len(firsts) * turns, desc=desc, unit="turn", disable=not progress) as bar:
        episodes = EpisodeBatch.cat(
            [
                collect_episodes(
                    model,
                    tokenizer,
                    seeds=seeds[first : first + step],
                    config=config,
                    temperature=temperature,
                    generator=generator,
                    greedy=greedy,
                    autocast=autocast,
                    batch_size=batch_size,
                    on_turn=bar.update,
                )
                for first in firsts
            ]
        )
    if log_path is not None:
        save_episodes(episodes, log_path, extra={"eval": True, "sample_seed": int(sample_seed)})
    return summarize_episodes(episodes, greedy=greedy, temperature=temperature)


def summarize_episodes(episodes: EpisodeBatch, *, greedy: bool, temperature: float) -> EvalResult:
    """The :class:`EvalResult` of played episodes (one per maze seed), e.g. an evaluation log read back with
    ``training.episodes.load_episodes``."""
    seeds = [int(s) for s in episodes.seeds]
    returns = episodes.returns.double().numpy()
    gold = episodes.delta_gold.sum(1).numpy()
    mold = episodes.delta_mold.sum(1).numpy()
    counts = np.bincount(episodes.actions.flatten().numpy(), minlength=4)
    return EvalResult(
        n_episodes=len(seeds),
        mean_return=float(returns.mean()),
        stderr_return=_stderr(returns),
        gold_per_episode=float(gold.mean()),
        mold_per_episode=float(mold.mean()),
        stderr_gold=_stderr(gold.astype(float)),
        stderr_mold=_stderr(mold.astype(float)),
        action_freq={a: float(c / counts.sum()) for a, c in zip(ACTIONS, counts)},
        greedy=bool(greedy),
        temperature=float(temperature),
        returns=[float(r) for r in returns],
        gold=[int(g) for g in gold],
        mold=[int(m) for m in mold],
        seeds=seeds,
    )


def eval_settings(args: Args) -> dict[str, Any]:
    """The keyword arguments of :func:`evaluate` for a run's held-out evaluation (all but the model's).

    Example:
        >>> eval_settings(recipe_args("cpu"))["chunk_size"]
        32
    """
    return {
        "seeds": heldout_seeds(args.eval_episodes) if args.eval_episodes else [],
        "config": maze_config(args),
        "temperature": args.temperature,
        "greedy": args.eval_greedy,
        "sample_seed": args.seed,
        "batch_size": args.rollout_batch_size,
        "chunk_size": args.eval_chunk_size,
    }


def compare_evals(before: EvalResult, after: EvalResult) -> dict[str, float]:
    """Improvement of ``after`` over ``before`` in standard errors (unpaired and paired by maze).

    Example:
        >>> compare_evals(before, after)["z_unpaired"] >= 3  # doctest: +SKIP
        True
    """
    diff = after.mean_return - before.mean_return
    se = math.sqrt(before.stderr_return**2 + after.stderr_return**2)
    out = {
        "return_diff": diff,
        "stderr_diff_unpaired": se,
        "z_unpaired": diff / se if se > 0 else float("inf"),
        "gold_diff": after.gold_per_episode - before.gold_per_episode,
        "mold_diff": after.mold_per_episode - before.mold_per_episode,
    }
    if before.seeds == after.seeds:
        paired = _stderr(np.array(after.returns) - np.array(before.returns))
        out["stderr_diff_paired"] = paired
        out["z_paired"] = diff / paired if paired > 0 else float("inf")
    return out


def untrained_evaluation(run_dir: Path, args: Args, evals: dict[str, Any]) -> tuple[EvalResult, Path | None]:
    """The untrained model's held-out evaluation for a run, and the run it was read from (None: its own).

    A warm-started run (``init_from``) starts from another run's weights, so its own "before" evaluates
    those; the untrained model's is the first run's of the chain, which must evaluate alike (same held-out
    mazes, turns and sampling)."""
    if args.init_from is None:
        return EvalResult(**evals["before"]), None
    from training.checkpoints import load_run_args

    warm_dir = Path(args.init_from)
    warm = load_run_args(warm_dir)
    if warm.init_from is not None:
        raise ValueError(f"{run_dir} starts from {warm_dir}, which starts from another run: chains of warm "
                         "starts are not supported; use a run with one warm start")  # fmt: skip
    if eval_settings(warm) != eval_settings(args):
        raise ValueError(f"{run_dir} and its warm start {warm_dir} are evaluated differently: their gains over "
                         "the untrained model cannot be paired")  # fmt: skip
    warm_evals = json.loads((warm_dir / "eval.json").read_text())
    if not warm_evals.get("before"):
        raise ValueError(f"{warm_dir}/eval.json has no 'before' evaluation; train it with eval_before on")
    return EvalResult(**warm_evals["before"]), warm_dir
