"""training.distributed for real: 2 CPU processes (gloo, launched by torchrun) equal 1 process.

The worker below is a compact Dr. GRPO trainer on a tiny LoRA model built from the toolkit's pieces
(``collect_episodes``, ``action_logits``, ``training.losses``) wired the way ``training.distributed``
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
import shutil
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
from training import distributed as D  # noqa: E402

CONFIG = MazeConfig(size=12, n_turns=3)
GROUP = 2
SHARDS = 2
BATCH = 4  # episodes per step: 2 shards x 1 group of 2
STEPS = 2
LR = 0.5
# SGD with momentum: the update is linear in the gradient, so float-summation differences between
# one and two processes stay at rounding level (Adam's g/sqrt(v) amplifies them for near-zero
# gradients); the momentum buffer is optimizer state, which the resume test must carry over.


WHITEN_VALUES = torch.tensor([[1.0, 2.0, 4.0], [3.0, -1.0, 0.5], [7.0, 0.0, 2.5], [-2.0, 1.0, 1.0]])
WHITEN_MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])


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
    from training import losses as L
    from training.rollout import EpisodeBatch, action_logits, collect_episodes

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


def trainer_supports_distributed() -> bool:
    from training import train

    return hasattr(train.Args, "rollout_shards")


def trainer_args(out: Path, **overrides):
    from training import Args

    settings = dict(
        model="tiny-llama", steps=2, episodes_per_step=4, group_size=2, rollout_shards=2, n_turns=3,
        maze_size=12, micro_batch_size=2, lr=1e-3, lora_r=4, lora_alpha=8, lora_layers=1, autocast=False,
        checkpoint_every=1, progress=False, threads=1, entropy_coef=0.01, out=str(out),
    )  # fmt: skip
    settings.update(overrides)
    return Args(**settings)


def worker(out: Path) -> None:
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    with D.session(backend="gloo", device="cpu") as ctx:
        assert ctx.world_size == 2
        if trainer_supports_distributed():
            from training import main

            main(trainer_args(out / "train_ddp"))
            main(trainer_args(out / "train_fsdp", parallel="fsdp"))
            main(trainer_args(out / "train_resume", stop_at_step=1))
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
        whitened = D.gather_objects(
            D.whiten_global(WHITEN_VALUES[ctx.rank :: 2], WHITEN_MASK[ctx.rank :: 2], ctx), ctx
        )
        if ctx.is_main:
            for name, result in results.items():
                save_file(result["lora"], str(out / f"{name}.safetensors"))
            summary = {name: r["history"] for name, r in results.items()}
            summary["gathered"] = gathered
            summary["whitened"] = [w.tolist() for w in whitened]
            (out / "summary.json").write_text(json.dumps(summary))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


ABORT_AT_EXIT = "terminate called without an active exception"


def launch_two_processes(out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
        f"--master_port={_free_port()}", str(Path(__file__).resolve()), "--worker", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and ABORT_AT_EXIT in done.stderr:
        # Seen twice in session 7 on the 2 shared cores (SIGABRT in a gloo worker, cause not found; not
        # since the trainer package stopped importing everything eagerly): launch once more, and fail
        # for real on anything else or on a second abort.
        for leftover in out.iterdir():  # the first attempt's run directories would refuse a new run
            shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        command[command.index(next(a for a in command if a.startswith("--master_port=")))] = (
            f"--master_port={_free_port()}"
        )
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
    # PPO whitening with the global batch's statistics: rank r holds rows r, r+2
    from training import losses as L

    expected = L.whiten(WHITEN_VALUES, WHITEN_MASK)
    rank0, rank1 = (torch.tensor(w) for w in summary["whitened"])
    torch.testing.assert_close(rank0, expected[0::2], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rank1, expected[1::2], rtol=1e-6, atol=1e-6)
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


def _trainer_run(run_dir: Path) -> tuple[dict, list[dict]]:
    from safetensors.torch import load_file

    latest = json.loads((run_dir / "checkpoints" / "latest.json").read_text())["path"]
    weights = load_file(str(run_dir / "checkpoints" / latest / "trainable.safetensors"))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return weights, metrics


def test_trainer_two_processes_equal_one_and_resume_on_one(two_process_run, tmp_path):
    """training.main under torchrun (DDP and FSDP) against one process; resume 2 -> 1 processes."""
    if not trainer_supports_distributed():
        pytest.skip("training.train has no rollout_shards/parallel yet (patch: see the distributed report)")
    from training import main

    single = main(trainer_args(tmp_path / "single"))
    w_single, m_single = _trainer_run(tmp_path / "single")
    for name in ("train_ddp", "train_fsdp"):
        weights, metrics = _trainer_run(two_process_run / name)
        assert [m["step"] for m in metrics] == [0, 1]
        for got, want in zip(metrics, m_single, strict=True):
            assert got.get(
                "top_layers_only", True
            )  # lora_layers=1: the update reuses the shards' activations
            assert got["mean_return"] == want["mean_return"] and got["action_freq"] == want["action_freq"]
            assert got["rollout_tokens"] == want["rollout_tokens"]
            for key in ("loss", "pg_loss", "entropy", "entropy_eq", "ratio"):
                assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
            # the norm of the all-reduced gradient: a missing or doubled all-reduce changes it
            assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4), name
        # AdamW's first steps are ±lr per element where the gradient is nonzero; allow rounding flips
        _assert_same(weights, w_single, atol=4e-3)
        close = [torch.isclose(weights[k], w_single[k], rtol=1e-4, atol=1e-6).float().mean() for k in weights]
        assert float(torch.stack(close).mean()) > 0.99
        assert (two_process_run / name / "final").is_dir()
    # resume the 2-process run (stopped after step 1) in one process
    resumed_dir = two_process_run / "train_resume"
    assert json.loads((resumed_dir / "checkpoints" / "latest.json").read_text())["step"] == 1
    main(trainer_args(resumed_dir, resume=True))
    w_resumed, m_resumed = _trainer_run(resumed_dir)
    assert [m["step"] for m in m_resumed] == [0, 1]
    assert m_resumed[1]["mean_return"] == m_single[1]["mean_return"]
    _assert_same(w_resumed, w_single, atol=4e-3)
    assert single.steps_done == 2


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
    from training import losses as L

    values = torch.tensor([[1.0, 2.0, 4.0], [3.0, -1.0, 0.5]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(D.whiten_global(values, mask, ctx), L.whiten(values, mask))


if __name__ == "__main__" and "--worker" in sys.argv:
    worker(Path(sys.argv[sys.argv.index("--worker") + 1]))
