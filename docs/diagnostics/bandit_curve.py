"""Single-turn learning curves of SFT and of policy gradients (docs/training_results.md).

Every arm trains the CPU recipe's LoRA (top 8 layers of SmolLM2-135M-Instruct) on the same pool of
single-turn maze states, ``STATES`` per update, and prints the probability the policy (T = 1) puts on
Mold and on Gold directions in 96 held-out states every 10 updates. The activations entering the adapted
layers are computed once (the layers below are frozen), so an update costs only the top 8 layers.
A move's reward is the tile it enters (+20 Gold, −10 Mold, −0.1 per turn; no wind here).

Arms (the first argument, a JSON object):

* ``{"arm": "sft"}``: cross-entropy to the planner's best set (``losses.sft_best_set_loss``).
* ``{"arm": "exact", "entropy": 0.0, "kl": 0.0}``: the exact policy gradient, the gradient of
  ``−Σ_a π(a|s)·r(s,a)``: what Dr. GRPO estimates, without its sampling noise (plus the equalized
  entropy bonus, and the exact KL to the untrained policy, the adapter switched off).
* ``{"arm": "dr_grpo", "group": 8, "entropy": 0.2}``: Dr. GRPO's estimator: ``group`` sampled moves
  per state, advantage = reward − group mean, the dual-clip surrogate, the equalized entropy bonus.
* ``{"arm": "tbrm", "group": 8, "beta": 10.0, "entropy": 0.0}``: TBRM with ReVal on ``group`` sampled
  moves per state: the squared residual ``logit(s,a) − logit_ref(s,a) − r(s,a)/β`` (a single turn's
  ``V(s) + log π(a|s) − V_ref(s) − log π_ref(a|s) − r/β``), plus the equalized entropy bonus.

Other keys: ``lr`` (default 1e-3), ``states`` (per update, default 24), ``updates`` (default 60),
``seed``.

    python docs/diagnostics/bandit_curve.py '{"arm": "exact"}'
"""

import json
import os
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from training import heldout_seeds, make_optimizer, make_policy, maze_config, recipe_args
from training import losses as L
from training.expert_data import expert_episodes
from training.top_layers import capture_below, top_action_logits

v = json.loads(sys.argv[1])
POOL, HELD = 768, 96
CACHE_DIR = Path(os.environ.get("BANDIT_CACHE", "/tmp/bandit_curve_cache"))
CACHE_DIR.mkdir(parents=True, exist_ok=True)
torch.manual_seed(v.get("seed", 0))
torch.set_num_threads(2)
args = recipe_args("cpu", algo="dr_grpo", n_turns=1, lr=v.get("lr", 1e-3))
policy = make_policy(args)
optimizer = make_optimizer(policy, args)
config = maze_config(args)
start = policy.model.config.num_hidden_layers - args.lora_layers
rewards_of_tile = torch.tensor(config.tile_rewards) + config.step_cost  # Path, Mold, Gold


def states(seeds):
    """Single-turn states with the activations entering layer ``start``, 32 at a time (the activations
    are cached in CACHE_DIR, as safetensors, for the next arm)."""
    batches, hiddens = [], []
    policy.model.eval()
    for first in range(0, len(seeds), 32):
        batch = expert_episodes(policy.tokenizer, seeds=seeds[first : first + 32], config=config, horizon=1)
        path = CACHE_DIR / f"{seeds[first]}_{len(batch.seeds)}_{start}.safetensors"
        if path.is_file():
            hidden = load_file(path)["hidden"]
        else:
            with torch.no_grad(), capture_below(policy.model, start) as captured:
                policy.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            hidden = captured[0]
            save_file({"hidden": hidden.contiguous()}, path)
        batches.append(batch)
        hiddens.append(hidden)
    policy.model.train()
    return batches, hiddens


t0 = time.time()
train_batches, train_hidden = states(list(range(20_000, 20_000 + POOL)))
held_batches, held_hidden = states(heldout_seeds(HELD))
print(f"cached {POOL} + {HELD} states in {time.time() - t0:.0f}s", flush=True)


def logits_of(batch, hidden):
    return top_action_logits(policy.model, hidden, batch, start)[:, 0]  # (b, 4)


def evaluate():
    with torch.no_grad():
        p_mold = p_gold = 0.0
        p_dir = torch.zeros(4)
        for batch, hidden in zip(held_batches, held_hidden, strict=True):
            p = logits_of(batch, hidden).softmax(-1)
            p_mold += (p * (batch.neighbours[:, 0] == 1)).sum().item()
            p_gold += (p * (batch.neighbours[:, 0] == 2)).sum().item()
            p_dir += p.sum(0)
    return {
        "p_mold": round(p_mold / HELD, 3),
        "p_gold": round(p_gold / HELD, 3),
        "p_NESW": [round(x, 2) for x in (p_dir / HELD).tolist()],
    }


def reference_logits(batch, hidden):
    """The untrained policy's logits: the adapter switched off."""
    with torch.no_grad(), policy.model.disable_adapter():
        return logits_of(batch, hidden)


def loss_of(batch, hidden, generator):
    logits = logits_of(batch, hidden)
    reward = rewards_of_tile[batch.neighbours[:, 0]]  # (b, 4): the reward of each move
    if v["arm"] == "sft":
        return L.sft_best_set_loss(logits[:, None], batch.direction_logits)
    p = logits.softmax(-1)
    entropy = L.equalized_entropy(logits[:, None], batch.neighbours)[:, 0]
    if v["arm"] == "exact":  # minus the expected reward: its gradient is the exact policy gradient
        loss = -(p * reward).sum(-1).mean() - v.get("entropy", 0.0) * entropy.mean()
        if v.get("kl", 0.0) > 0:  # exact KL(π ‖ π_ref) to the untrained policy
            log_ref = reference_logits(batch, hidden).log_softmax(-1)
            log_p = logits.log_softmax(-1)
            loss = loss + v["kl"] * (p * (log_p - log_ref)).sum(-1).mean()
        return loss
    g = v.get("group", 8)
    actions = torch.multinomial(p.detach(), g, replacement=True, generator=generator)  # (b, g)
    r = reward.gather(1, actions)
    if v["arm"] == "tbrm":
        residual = (logits - reference_logits(batch, hidden)).gather(1, actions) - r / v.get("beta", 10.0)
        return (residual**2).mean() - v.get("entropy", 0.0) * entropy.mean()
    advantages = r - r.mean(1, keepdim=True)
    logp = logits.log_softmax(-1).gather(1, actions)
    per, _ = L.clipped_surrogate(logp, logp.detach(), advantages, dual_clip=3.0)
    return per.mean() - v.get("entropy", 0.0) * entropy.mean()


print("variant", v, "before", evaluate(), flush=True)
generator = torch.Generator().manual_seed(v.get("seed", 0))
per_update, t0 = v.get("states", 24), time.time()
for update in range(1, v.get("updates", 60) + 1):
    pick = torch.randperm(POOL, generator=generator)[:per_update].tolist()
    optimizer.zero_grad()
    by_batch: dict[int, list[int]] = {}
    for r in pick:
        by_batch.setdefault(r // 32, []).append(r % 32)
    for b, idx in by_batch.items():
        loss = loss_of(train_batches[b].select(idx), train_hidden[b][idx], generator) * len(idx) / per_update
        loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in policy.model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    if update % 10 == 0:
        print(
            f"update {update} states={update * per_update} t={time.time() - t0:.0f}s", evaluate(), flush=True
        )
