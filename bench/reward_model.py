"""Reward-model cost: scoring each chat once (shared prefix, KV cache) against one full forward per move.

1. ``rm_train_shared_vs_full``: one Bradley–Terry training step (forward, loss, backward; LoRA on every layer, as
   ``python -m training.reward_model`` trains) on the same ``--pairs`` preference pairs, timed alternately with
   one full forward per row (the chosen and the rejected move each re-read the whole chat) and with
   :meth:`training.reward_model.RewardModel.score_after` (each chat once, both moves from its KV cache). Ratio of
   the medians of ``--reps``: full ÷ shared (> 1: the shared path is faster).
2. ``rm_score_moves_shared_vs_full``: scoring all four moves of ``--states`` held-out chats without gradients,
   the same way.

The two paths give the same rewards and gradients up to float rounding (tests/test_reward_model.py), which the
script re-checks on its own batch before timing.

Ends with:
    BENCH rm_train_shared_vs_full <full ÷ shared step time> >=1.5
    BENCH rm_score_moves_shared_vs_full <full ÷ shared scoring time> >=2

Run (heavy: takes the shared lock): flock /tmp/wa/heavy.lock python -m bench.reward_model
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as a file: keep bench/ from shadowing the packages
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

import argparse
import statistics
import time

import torch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="bundled name or local checkpoint")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--pairs", type=int, default=16, help="pairs per training step (the RM's batch_pairs)"
    )
    parser.add_argument("--states", type=int, default=16, help="chats whose four moves are scored")
    parser.add_argument("--reps", type=int, default=5, help="timed repetitions of each variant")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from training.losses import bradley_terry_loss
    from training.preference_eval import decision_prefix, held_out_states
    from training.preferences import preference_episodes, step_pairs
    from training.reward_model import RewardModelConfig, build_reward_model
    from training.rollout import right_pad

    config = RewardModelConfig(model=args.model, device=args.device, progress=False)
    rm = build_reward_model(config)
    with torch.no_grad():  # a head that reads something, so the backward pass reaches every layer
        rm.head.weight.normal_(std=0.02, generator=torch.Generator().manual_seed(0))
    pairs = step_pairs(args.pairs, config=config.maze(), seed=0, horizon=config.horizon)
    batch = preference_episodes(rm.tokenizer, pairs, config.maze())
    device = rm.head.weight.device
    letter_at = batch.action_positions[:, -1:] + 1

    def full_rows() -> torch.Tensor:
        return rm(batch.input_ids.to(device), batch.attention_mask.to(device), letter_at.to(device))[:, 0]

    def train_step(score) -> float:
        rm.zero_grad(set_to_none=True)
        start = time.perf_counter()
        rewards = score().view(-1, 2)
        bradley_terry_loss(rewards[:, 0], rewards[:, 1]).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    rm.train()
    gap = (rm.score_pairs(batch) - full_rows()).abs().max().item()
    print(f"max |shared − full| reward on the batch: {gap:.2e}")
    timings: dict[str, list[float]] = {"full": [], "shared": []}
    for _ in range(args.reps):
        timings["full"].append(train_step(full_rows))
        timings["shared"].append(train_step(lambda: rm.score_pairs(batch)))
    train_full, train_shared = (statistics.median(timings[k]) for k in ("full", "shared"))
    print(
        f"BT step ({args.pairs} pairs, fwd+bwd): full rows {train_full:.2f} s, shared prefix {train_shared:.2f} s"
    )

    rm.eval()
    chats = held_out_states(args.states, config.maze(), seed=0).prompts[: args.states]
    letters = torch.tensor(batch.direction_token_ids)

    @torch.no_grad()
    def score_full() -> float:
        start = time.perf_counter()
        for i in range(0, len(chats), 4):  # 4 chats × 4 moves = 16 rows per forward, as the shared path's 16
            rows = [
                [*decision_prefix(rm.tokenizer, chat), int(t)] for chat in chats[i : i + 4] for t in letters
            ]
            ids, mask = right_pad(rows, int(rm.tokenizer.pad_token_id))
            rm(ids.to(device), mask.to(device), torch.tensor([[len(r) - 1] for r in rows], device=device))
        return time.perf_counter() - start

    def score_shared() -> float:
        start = time.perf_counter()
        rm.score_moves(chats, batch_size=16)
        return time.perf_counter() - start

    scoring: dict[str, list[float]] = {"full": [], "shared": []}
    for _ in range(args.reps):
        scoring["full"].append(score_full())
        scoring["shared"].append(score_shared())
    score_full_s, score_shared_s = (statistics.median(scoring[k]) for k in ("full", "shared"))
    print(
        f"scoring 4 moves of {len(chats)} chats: full rows {score_full_s:.2f} s, shared {score_shared_s:.2f} s"
    )
    print(f"BENCH rm_train_shared_vs_full {train_full / train_shared:.2f} >=1.5")
    print(f"BENCH rm_score_moves_shared_vs_full {score_full_s / score_shared_s:.2f} >=2")


if __name__ == "__main__":
    main()
