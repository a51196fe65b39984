"""SFT learning curves by episode length (docs/training_results.md): best-set targets, many small steps.

Trains on fresh n-turn expert episodes for a wall-clock budget and prints, every few steps, the
teacher-forced probability the policy (T = 0.7) puts on Mold and on Gold directions: on 48 held-out
single-turn states and on 4 held-out 15-turn expert episodes.

    python docs/diagnostics/sft_curve.py '{"layers": 8, "lr": 2e-3, "bs": 16, "turns": 1}' 480
    python docs/diagnostics/sft_curve.py '{"layers": 16, "lr": 2e-3, "bs": 2, "turns": 15}' 1800
"""

import dataclasses
import json
import sys
import time

import torch

from training import heldout_seeds, make_optimizer, make_policy, maze_config, recipe_args
from training import losses as L
from training.expert_data import expert_episodes
from training.rollout import action_logits

v = json.loads(sys.argv[1])
budget = float(sys.argv[2])
torch.manual_seed(0)
torch.set_num_threads(2)
args = recipe_args("cpu", algo="sft", lora_layers=v.get("layers", 8), lr=v.get("lr", 2e-3))
policy = make_policy(args)
optimizer = make_optimizer(policy, args)
tok = policy.tokenizer
base = maze_config(args)
train_config = dataclasses.replace(base, n_turns=v.get("turns", 1))
held = {
    "1-turn": expert_episodes(
        tok, seeds=heldout_seeds(48), config=dataclasses.replace(base, n_turns=1), horizon=1
    ),
    "15-turn": expert_episodes(
        tok, seeds=heldout_seeds(4), config=dataclasses.replace(base, n_turns=15), horizon=1
    ),
}


def evaluate():
    out = {}
    policy.model.eval()
    for name, batch in held.items():
        with torch.no_grad():
            rows = [list(range(i, min(i + 4, len(batch.seeds)))) for i in range(0, len(batch.seeds), 4)]
            logits = torch.cat([action_logits(policy.model, batch.select(r)) for r in rows])
        p = (logits / 0.7).softmax(-1)
        out[name] = {
            "p_mold": round((p * (batch.neighbours == 1)).sum(-1).mean().item(), 3),
            "p_gold": round((p * (batch.neighbours == 2)).sum(-1).mean().item(), 3),
        }
    policy.model.train()
    return out


print("variant", v, "before", evaluate(), flush=True)
t0, step, bs = time.time(), 0, v.get("bs", 16)
while time.time() - t0 < budget:
    seeds = list(range(10_000 + step * bs, 10_000 + (step + 1) * bs))
    batch = expert_episodes(tok, seeds=seeds, config=train_config, horizon=1, expert_seed=step)
    optimizer.zero_grad()
    loss = L.sft_best_set_loss(action_logits(policy.model, batch), batch.direction_logits)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in policy.model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    step += 1
    if step % v.get("eval_every", 10) == 0:
        decisions = step * bs * train_config.n_turns
        print(
            f"step {step} t={time.time() - t0:.0f}s decisions={decisions} loss={loss.item():.3f}", evaluate()
        )
print("final", step, evaluate(), f"t={time.time() - t0:.0f}s", flush=True)
