"""maze_env.distributed for real: 2 CPU processes (gloo, launched by torchrun) equal 1 process.

The worker below is a compact Dr. GRPO trainer on a tiny LoRA model built from the toolkit's pieces
(``collect_episodes``, ``action_logits``, ``maze_env.losses``) wired the way ``maze_env.distributed``
prescribes:

- each rank collects its seed shards;
- ``pm(action_logits, batch)`` is the differentiable call;
- the loss is the local mean;
- metrics go through ``mean_metrics``;
- rank 0 writes ``full_state_dicts``.

One ``torchrun --nproc_per_node=2`` launch runs DDP, FSDP2 and a one-step run that is saved for the
resume test. The pytest process runs the 1-process references and compares.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script by torchrun
    sys.path.insert(0, str(REPO))

from maze_env import MazeConfig  # noqa: E402
from maze_env import distributed as D  # noqa: E402

CONFIG = MazeConfig(size=12, n_turns=3)
GROUP = 2
SHARDS = 2
BATCH = 4  # episodes per step: 2 shards x 1 group of 2
STEPS = 2
LR = 0.5
# SGD with momentum: the update is linear in the gradient, so float-summation differences between
# one and two processes stay at rounding level (Adam's g/sqrt(v) amplifies them for near-zero
# gradients); the momentum buffer is optimizer state, which the resume test must carry over.


def step_seeds(step: int) -> list[int]:
    return [1000 + 10 * step + g for g in range(BATCH // GROUP) for _ in range(GROUP)]


def make_policy():
    from peft import LoraConfig, get_peft_model

    from probes.models import tiny_model

    model, tok = tiny_model("llama", seed=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0)
        )
    model.train()
    return model, tok


def run(ctx: D.DistContext, strategy: str, steps: range, state_dir: Path | None = None) -> dict:
    """Train ``steps`` (optionally resuming from / saving to ``state_dir``); return metrics and final weights."""
    from maze_env import losses as L
    from maze_env.rollout import EpisodeBatch, action_logits, collect_episodes

    model, tok = make_policy()
    pm = D.parallelize(model, ctx, strategy)
    optimizer = torch.optim.SGD(pm.trainable_parameters(), lr=LR, momentum=0.9)
    if state_dir is not None and (state_dir / "model.safetensors").is_file():
        model_state, optim_state, _ = D.load_full_state(state_dir)
        D.load_full_state_dicts(pm, model_state, optimizer, optim_state)
    history = []
    for step in steps:
        shards = D.local_shards(step_seeds(step), ctx, n_shards=SHARDS, group_size=GROUP)
        episodes = EpisodeBatch.cat(
            [
                pm.rollout(collect_episodes, tok, seeds=s, config=CONFIG, temperature=1.0, autocast=False)
                for s in shards
            ]
        )
        advantages = (
            L.dr_grpo_advantages(episodes.returns.double(), GROUP).float()[:, None].expand(-1, CONFIG.n_turns)
        )
        optimizer.zero_grad(set_to_none=True)
        logits = pm(action_logits, episodes)
        logp = L.direction_logprobs(logits, episodes.actions, 1.0)
        per_token, _ = L.clipped_surrogate(logp, episodes.logprobs, advantages)
        entropy = L.equalized_entropy(logits, episodes.neighbours, temperature=1.0)
        mask = torch.ones_like(per_token)
        loss = L.seq_mean_token_sum(per_token - 0.01 * entropy, mask, 4.0)  # local mean: equal shards
        loss.backward()
        optimizer.step()
        local = {"return": float(episodes.returns.mean()), "loss": float(loss.detach())}
        history.append(D.mean_metrics(local, ctx, weight=len(episodes)))
    model_state, optim_state = D.full_state_dicts(pm, optimizer)
    if state_dir is not None and ctx.is_main:
        D.save_full_state(state_dir, model_state, optim_state, extra={"steps": list(steps)})
    D.barrier(ctx)
    lora = {k: v for k, v in model_state.items() if "lora_" in k}
    return {"history": history, "lora": lora}


def worker(out: Path) -> None:
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    with D.session(backend="gloo", device="cpu") as ctx:
        assert ctx.world_size == 2
        results = {
            "ddp": run(ctx, "ddp", range(STEPS)),
            "fsdp": run(ctx, "fsdp", range(STEPS)),
            "half": run(ctx, "ddp", range(1), state_dir=out / "after_step0"),
        }
        gathered = D.gather_objects(
            {
                "rank": ctx.rank,
                "shards": D.local_shards(step_seeds(0), ctx, n_shards=SHARDS, group_size=GROUP),
            },
            ctx,
        )
        if ctx.is_main:
            for name, result in results.items():
                save_file(result["lora"], str(out / f"{name}.safetensors"))
            summary = {name: r["history"] for name, r in results.items()}
            summary["gathered"] = gathered
            (out / "summary.json").write_text(json.dumps(summary))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
        f"--master_port={_free_port()}", str(Path(__file__).resolve()), "--worker", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise AssertionError(
            f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-6000:]}"
        )


def _assert_same(lora_a: dict, lora_b: dict, atol: float = 1e-5) -> None:
    """Equal up to float summation order (a missing or doubled all-reduce is off by O(1))."""
    assert sorted(lora_a) == sorted(lora_b)
    for key in lora_a:
        torch.testing.assert_close(lora_a[key], lora_b[key], rtol=1e-4, atol=atol, msg=key)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    launch_two_processes(out)
    return out


def test_two_processes_equal_one_process(two_process_run):
    from safetensors.torch import load_file

    summary = json.loads((two_process_run / "summary.json").read_text())
    single = run(D.DistContext(), "none", range(STEPS))
    moved = {k: (v - make_policy()[0].state_dict()[k]).abs().max() for k, v in single["lora"].items()}
    assert max(float(m) for m in moved.values()) > 1e-3  # training really changed the adapters
    for strategy in ("ddp", "fsdp"):
        lora = load_file(str(two_process_run / f"{strategy}.safetensors"))
        _assert_same(lora, single["lora"])
        for got, want in zip(summary[strategy], single["history"], strict=True):
            assert got["return"] == pytest.approx(want["return"], abs=1e-9)  # identical episodes
            assert got["loss"] == pytest.approx(want["loss"], abs=1e-6)
    # rank r collected shard r of the global seeds
    ranks = summary["gathered"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert [s for r in ranks for shard in r["shards"] for s in shard] == step_seeds(0)


def test_resume_on_a_different_world_size(two_process_run):
    """Step 0 on 2 processes (DDP), saved by rank 0; step 1 resumed in 1 process == 2 steps in 1 process."""
    from safetensors.torch import load_file

    state_dir = two_process_run / "after_step0"
    _, optim_state, extra = D.load_full_state(state_dir)
    assert extra == {"steps": [0]} and optim_state is not None
    resumed = run(D.DistContext(), "none", range(1, STEPS), state_dir=state_dir)
    straight = run(D.DistContext(), "none", range(STEPS))
    _assert_same(resumed["lora"], straight["lora"])
    assert resumed["history"][0]["return"] == pytest.approx(straight["history"][1]["return"], abs=1e-9)
    half = load_file(str(two_process_run / "half.safetensors"))
    assert any(not torch.equal(half[k], resumed["lora"][k]) for k in half)  # step 1 moved the weights


def test_shard_and_launch_errors(monkeypatch):
    ctx = D.DistContext(rank=1, world_size=2)
    assert D.local_shards(list(range(8)), ctx, n_shards=4, group_size=2) == [[4, 5], [6, 7]]
    with pytest.raises(D.ShardError, match="multiple of n_shards × group_size = 8"):
        D.shard_seeds(list(range(12)), n_shards=2, group_size=4)
    with pytest.raises(D.ShardError, match="equal shards"):
        D.shard_seeds(list(range(5)), n_shards=2)
    with pytest.raises(D.ShardError, match="world size 2"):
        D.rank_shard_ids(3, ctx)
    with pytest.raises(ValueError, match="unknown strategy"):
        D.parallelize(torch.nn.Linear(2, 2), D.DistContext(), "zero3")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(D.DistributedError, match="RANK=3"):
        D.init()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(D.DistributedError, match="not an integer"):
        D.init()


def test_one_process_helpers_are_exact():
    ctx = D.DistContext()
    assert D.loss_scale(8, ctx) == 1 / 8
    assert D.mean_metrics({"a": 1.5, "b": -2.0}, ctx, weight=3) == {"a": 1.5, "b": -2.0}
    assert D.gather_objects({"x": 1}, ctx) == [{"x": 1}]
    assert D.broadcast_object("run-7", ctx) == "run-7"
    assert torch.equal(D.all_reduce_sum(torch.tensor([1.0, 2.0]), ctx), torch.tensor([1.0, 2.0]))


if __name__ == "__main__" and "--worker" in sys.argv:
    worker(Path(sys.argv[sys.argv.index("--worker") + 1]))
