"""The training loop: CLI runs, checkpoints and exact resume, bad input, expert data, evaluation."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import training as T
from maze_env import MazeConfig, MazeEnv
from training import losses as L
from training import train as loop
from training import update as U
from training.algorithms import ALGORITHMS
from training.config import scaled_for_step
from training.expert_data import expert_episodes
from training.rollout import action_logits, collect_episodes, episode_token_ids

TINY = dict(
    model="tiny-llama",
    steps=4,
    episodes_per_step=4,
    group_size=2,
    n_turns=3,
    maze_size=12,
    progress=False,
    threads=1,
    lr=1e-2,
    checkpoint_every=1,
)


def tiny_args(tmp_path, name="run", **overrides) -> T.Args:
    return T.Args(**{**TINY, "out": str(tmp_path / name), **overrides})


def weights(run_dir, step):
    return load_file(str(run_dir / "checkpoints" / f"step_{step:06d}" / "trainable.safetensors"))


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- the CLI --------------------------------------------------------------------------------------------


def test_cli_two_step_run_writes_config_metrics_checkpoints_and_eval(tmp_path, capsys):
    from welfare_axis.cli import main as cli_main

    out = tmp_path / "cli"
    argv = ["train", "--model", "tiny-llama", "--steps", "2", "--episodes-per-step", "4", "--group-size", "2"]
    argv += ["--n-turns", "2", "--maze-size", "12", "--out", str(out), "--no-progress", "--threads", "1"]
    argv += ["--checkpoint-every", "1", "--eval-episodes", "2", "--lr", "1e-3"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "before:" in printed and "after:" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["algo"] == "dr_grpo" and config["steps"] == 2 and config["n_turns"] == 2
    assert config["autocast"] is False  # the dtype rule resolved on the CPU and recorded: float32
    lines = metrics(out)
    assert [r["step"] for r in lines] == [0, 1]
    for key in ("mean_return", "gold_per_episode", "mold_per_episode", "entropy", "entropy_eq", "loss", "lr"):
        assert all(math.isfinite(r[key]) for r in lines), key
    assert all(r["tokens_per_s"] > 0 and r["step_seconds"] > 0 for r in lines)
    # lr: cosine over S + 1 = 3 points, so the last step still learns; the entropy coefficient hits 0
    assert lines[0]["lr"] == pytest.approx(1e-3) and lines[1]["lr"] == pytest.approx(0.5e-3)
    assert lines[1]["entropy_coef"] == pytest.approx(0.0)
    # checkpoints: safetensors + JSON only, latest pointer, keep_checkpoints=2
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("step_*"))
    assert ckpts == ["step_000001", "step_000002"]
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 2
    files = {p.name for p in (out / "checkpoints" / "step_000002").iterdir()}
    assert files == {
        "trainable.safetensors",
        "optimizer.safetensors",
        "optimizer.json",
        "rng.safetensors",
        "rng.json",
        "state.json",
    }
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))
    assert (out / "final" / "adapter_model.safetensors").is_file()
    evals = json.loads((out / "eval.json").read_text())
    assert evals["before"]["n_episodes"] == 2 and evals["after"]["n_episodes"] == 2
    assert evals["before"]["seeds"] == T.heldout_seeds(2)
    # every step's episodes and both evaluations are logged (safetensors + JSON) and read back exactly
    from training.episodes import load_episodes, read_episode_info

    logs = sorted(p.name for p in (out / "episodes").glob("*.safetensors"))
    assert logs == ["eval_after.safetensors", "eval_before.safetensors", "step_000000.safetensors",
                    "step_000001.safetensors"]  # fmt: skip
    step0 = load_episodes(out / "episodes" / "step_000000")
    assert (
        len(step0) == 4
        and step0.n_turns == 2
        and read_episode_info(out / "episodes" / "step_000000")["extra"]["step"] == 0
    )
    assert step0.summary()["mean_return"] == pytest.approx(lines[0]["mean_return"])
    after = load_episodes(out / "episodes" / "eval_after")
    assert after.returns.tolist() == pytest.approx(evals["after"]["returns"])


def test_cli_rejects_bad_input_with_clear_errors(tmp_path, capsys):
    from welfare_axis.cli import main as cli_main

    base = ["train", "--model", "tiny-llama", "--out", str(tmp_path / "bad"), "--no-progress"]
    assert cli_main([*base, "--steps", "0"]) == 2
    assert "steps must be an integer >= 1; got 0" in capsys.readouterr().err
    assert cli_main([*base, "--episodes-per-step", "5", "--group-size", "2"]) == 2
    assert "group_size=2 does not divide episodes_per_step=5" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main([*base, "--algo", "not_an_algo"])
    assert cli_main(["train", "--model", str(tmp_path / "no_such_model"), "--out", str(tmp_path / "m")]) == 2
    assert "no_such_model" in capsys.readouterr().err
    assert cli_main([*base, "--recipe", "gpu9000"]) == 2
    assert "unknown recipe 'gpu9000'" in capsys.readouterr().err


def test_every_algorithm_is_a_command_line_choice():
    import typing

    from training.config import Algo

    assert typing.get_args(Algo) == T.ALGOS == tuple(ALGORITHMS)


def test_validate_names_the_bad_value():
    with pytest.raises(ValueError, match="unknown algo 'foo'"):
        T.validate(T.Args(algo="foo"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps must be an integer >= 1; got -3"):
        T.validate(T.Args(steps=-3))
    with pytest.raises(
        ValueError, match="group_size=3 does not divide episodes_per_step=8; .* episodes_per_step=9"
    ):
        T.validate(T.Args(episodes_per_step=8, group_size=3))
    with pytest.raises(ValueError, match="rloo needs group_size >= 2"):
        T.validate(T.Args(algo="rloo", episodes_per_step=4, group_size=1))
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        T.validate(T.Args(lr=float("nan")))
    with pytest.raises(ValueError, match="keep_fraction"):
        T.validate(T.Args(keep_fraction=0.0))
    with pytest.raises(ValueError, match="n_turns"):
        T.validate(T.Args(n_turns=0))


def test_curriculum_is_validated_with_a_clear_error():
    with pytest.raises(ValueError, match="curriculum_steps=3 needs curriculum_turns"):
        T.validate(T.Args(curriculum_steps=3))
    with pytest.raises(ValueError, match=r"curriculum_turns=4 must divide n_turns=15 .* \[1, 3, 5, 15\]"):
        T.validate(T.Args(curriculum_turns=4, curriculum_steps=3))
    with pytest.raises(ValueError, match="sft_targets must be 'expert' or 'best'"):
        T.validate(T.Args(sft_targets="all"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="curriculum_scale=4 needs curriculum_turns"):
        T.validate(T.Args(curriculum_scale=4))
    with pytest.raises(ValueError, match="curriculum_scale must be an integer >= 1"):
        T.validate(T.Args(curriculum_turns=1, curriculum_steps=1, curriculum_scale=0))
    a = T.Args(n_turns=15, curriculum_turns=3, curriculum_steps=2)
    assert [T.step_turns(a, s) for s in range(4)] == [(3, 5), (3, 5), (15, 1), (15, 1)]
    scaled = dataclasses.replace(a, curriculum_scale=40)
    assert [T.step_turns(scaled, s) for s in range(3)] == [(3, 40), (3, 40), (15, 1)]
    assert scaled_for_step(scaled, 0).episodes_per_step == 40 * a.episodes_per_step
    assert T.step_turns(T.Args(n_turns=15), 0) == (15, 1)


def test_curriculum_steps_play_more_shorter_episodes(tmp_path):
    from training.episodes import load_episodes

    run = T.main(tiny_args(tmp_path, steps=3, curriculum_turns=1, curriculum_steps=2, lora_layers=1))
    rows = metrics(run.run_dir)
    assert [(r["episodes"], r["turns"]) for r in rows] == [(12, 1), (12, 1), (4, 3)]
    assert all(r["top_layers_only"] and r["logit_drift"] < 1e-4 for r in rows)
    first, last = (load_episodes(run.run_dir / "episodes" / f"step_{s:06d}") for s in (0, 2))
    assert first.actions.shape == (12, 1) and last.actions.shape == (4, 3)
    # every short step draws fresh mazes, in groups of group_size
    assert first.seeds == T.train_seeds(0, 0, n_groups=6, group_size=2)


def test_sft_best_targets_train_on_the_planner_best_set(tmp_path):
    args = tiny_args(tmp_path, algo="sft", sft_targets="best", steps=1, expert_horizon=1, lr=1e-9)
    policy = T.make_policy(args)
    batch = expert_episodes(policy.tokenizer, seeds=[5, 6], config=T.maze_config(args), horizon=1)
    loss, logits, _ = U._micro_loss(policy, batch, {}, args, 0.0)
    assert torch.allclose(loss, L.sft_best_set_loss(logits, batch.direction_logits))
    hard, _, _ = U._micro_loss(policy, batch, {}, dataclasses.replace(args, sft_targets="expert"), 0.0)
    assert torch.allclose(hard, L.sft_loss(logits, batch.actions))


def test_documented_run_records_load_under_the_current_names():
    from pathlib import Path

    run = Path(__file__).resolve().parents[1] / "docs" / "training_runs" / "tbrm_cpu_preset"
    args = T.load_run_args(run)  # its config.json says "preset": "cpu", the name before "recipe"
    assert args.recipe == "cpu" and args.algo == "tbrm" and args.steps == 6


def test_recipe_sets_defaults_and_explicit_flags_win():
    args = T.parse_args(["--recipe", "cpu", "--algo", "sft", "--lr", "1e-3"])
    assert args.recipe == "cpu" and args.algo == "sft" and args.lr == 1e-3
    assert args.lora_layers == T.RECIPES["cpu"]["lora_layers"]
    assert args.episodes_per_step == T.RECIPES["cpu"]["episodes_per_step"]
    assert T.parse_args(["--steps", "3"]).recipe is None
    # the recipe's per-algorithm values follow --algo; explicit flags still win
    sft_values = T.RECIPE_ALGO_OVERRIDES["cpu"]["sft"]
    sft = T.parse_args(["--recipe", "cpu", "--algo", "sft"])
    assert all(getattr(sft, k) == v for k, v in sft_values.items())
    assert T.recipe_args("cpu", algo="sft") == sft
    grpo = T.parse_args(["--recipe", "cpu", "--algo", "dr_grpo"])
    assert all(getattr(grpo, k) == T.RECIPES["cpu"][k] for k in sft_values)
    assert (grpo.curriculum_scale, grpo.update_epochs, grpo.tbrm_beta) == (None, None, 10.0)
    # the recipe's own algorithm is TBRM, with its values
    tbrm = T.parse_args(["--recipe", "cpu"])
    assert tbrm.algo == "tbrm" and tbrm == T.recipe_args("cpu", algo="tbrm")
    assert all(getattr(tbrm, k) == v for k, v in T.RECIPE_ALGO_OVERRIDES["cpu"]["tbrm"].items())
    assert T.parse_args(["--recipe", "cpu", "--algo", "sft", "--minibatches", "2"]).minibatches == 2
    assert T.parse_args(["--recipe=cpu", "--algo=sft"]) == sft  # the = spellings
    assert T.parse_args(["--algo", "sft", "--recipe", "cpu"]) == sft  # in any order


# -- resume ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ["dr_grpo", "reinforce", "ppo", "tbrm", "iterative_sft", "sft"])
def test_resume_continues_bit_for_bit(tmp_path, algo):
    extra = {"kl_coef": 0.1} if algo in ("dr_grpo", "tbrm") else {}
    if algo in ("reinforce", "tbrm", "iterative_sft"):
        extra["lora_layers"] = 1  # the top-layer path that reuses rollout activations
    whole = T.main(tiny_args(tmp_path, "whole", algo=algo, **extra))
    T.main(tiny_args(tmp_path, "split", algo=algo, stop_at_step=2, **extra))
    split_dir = tmp_path / "split"
    assert json.loads((split_dir / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert not (split_dir / "final").exists()
    resumed = T.main(tiny_args(tmp_path, "split", algo=algo, resume=True, **extra))
    assert resumed.steps_done == whole.steps_done == 4
    a, b = weights(tmp_path / "whole", 4), weights(split_dir, 4)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert metrics(tmp_path / "whole") == [
        {
            **r,
            **{
                k: metrics(tmp_path / "whole")[i][k]
                for k in r
                if k.endswith("seconds") or k == "tokens_per_s"
            },
        }
        for i, r in enumerate(metrics(split_dir))
    ]
    # and training did move the weights
    lora_b = [k for k in a if "lora_B" in k]
    assert lora_b and any(a[k].abs().max() > 0 for k in lora_b)


def test_resume_across_the_curriculum_boundary_is_bit_for_bit(tmp_path):
    extra = dict(curriculum_turns=1, curriculum_steps=2, minibatches=2, lora_layers=1)
    T.main(tiny_args(tmp_path, "whole", **extra))
    T.main(tiny_args(tmp_path, "split", stop_at_step=2, **extra))
    T.main(tiny_args(tmp_path, "split", resume=True, **extra))
    a, b = weights(tmp_path / "whole", 4), weights(tmp_path / "split", 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    drop = ("seconds", "tokens_per_s")
    strip = lambda rows: [{k: v for k, v in r.items() if not k.endswith(drop)} for r in rows]  # noqa: E731
    assert strip(metrics(tmp_path / "whole")) == strip(metrics(tmp_path / "split"))
    assert [r["turns"] for r in metrics(tmp_path / "split")] == [1, 1, 3, 3]


def test_resume_with_another_config_is_refused(tmp_path):
    T.main(tiny_args(tmp_path, steps=2, stop_at_step=1))
    with pytest.raises(ValueError, match=r"another config \(lr: 0.01 \(saved\) vs 0.02 \(now\)\)"):
        T.main(tiny_args(tmp_path, steps=2, lr=0.02, resume=True))
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        T.main(tiny_args(tmp_path, steps=2))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        T.main(tiny_args(tmp_path, name="never_started", steps=2, resume=True))
    # the precision is part of the run: bf16 autocast cannot continue a float32 run
    with pytest.raises(ValueError, match=r"autocast: False \(saved\) vs True \(now\)"):
        T.main(tiny_args(tmp_path, steps=2, resume=True, autocast=True))
    # threads and progress may change; autocast=None resolves to the saved float32 on this CPU
    T.main(tiny_args(tmp_path, steps=2, resume=True, threads=2, autocast=None))


def test_top_lr_moves_the_top_layers_at_their_own_rate_and_resumes_bit_for_bit(tmp_path):
    """One AdamW step from LoRA's zero B moves each weight by lr·g/(|g|+ε): the top layer's move scales by
    top_lr/lr, the layers below keep the plain run's move exactly, and top_lr = lr is the plain run."""
    one = dict(algo="tbrm", steps=1, lr=1e-3)
    plain = T.main(tiny_args(tmp_path, "plain", **one))
    same = T.main(tiny_args(tmp_path, "same", **one, top_lr=1e-3, top_lr_layers=1))
    fast = T.main(tiny_args(tmp_path, "fast", **one, top_lr=1e-2, top_lr_layers=1))
    start = T.make_policy(tiny_args(tmp_path, "start", **one)).trainable_parameters()
    a, b, c = (weights(r.run_dir, 1) for r in (plain, same, fast))
    assert all(torch.equal(a[k], b[k]) for k in a)
    n_layers = T.make_policy(tiny_args(tmp_path, "start", **one)).model.config.num_hidden_layers
    top = [k for k in a if f".layers.{n_layers - 1}." in k]
    assert top and len(top) < len(a)
    for k in a:
        moved_plain, moved_fast = a[k] - start[k].detach(), c[k] - start[k].detach()
        if k in top:
            assert moved_plain.abs().max() > 0 or "lora_A" in k, k
            torch.testing.assert_close(moved_fast, 10 * moved_plain, rtol=1e-4, atol=1e-9)
        else:
            assert torch.equal(moved_fast, moved_plain), k
    rates = [(r["lr"], r["top_lr"]) for r in metrics(fast.run_dir)]
    assert rates == [(pytest.approx(1e-3), pytest.approx(1e-2))]
    # two groups in the optimizer: a checkpoint restores each at its own rate
    extra = dict(algo="tbrm", top_lr=3e-2, top_lr_layers=1)
    T.main(tiny_args(tmp_path, "whole", **extra))
    T.main(tiny_args(tmp_path, "split", stop_at_step=2, **extra))
    T.main(tiny_args(tmp_path, "split", resume=True, **extra))
    w, s = weights(tmp_path / "whole", 4), weights(tmp_path / "split", 4)
    assert all(torch.equal(w[k], s[k]) for k in w)
    with pytest.raises(ValueError, match="top_lr must be None or a finite number > 0"):
        T.main(tiny_args(tmp_path, "bad", top_lr=0.0))
    # more top layers than the model has: every layer at top_lr, the same as top_lr_layers = its layer count
    every = T.main(tiny_args(tmp_path, "every", **one, top_lr=1e-2, top_lr_layers=9))
    whole = T.main(tiny_args(tmp_path, "whole_model", **one, top_lr=1e-2, top_lr_layers=n_layers))
    e, w = weights(every.run_dir, 1), weights(whole.run_dir, 1)
    assert all(torch.equal(e[k], w[k]) for k in e) and not all(torch.equal(e[k], c[k]) for k in e)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = U._micro_loss

    def poisoned(policy, chunk, extras, args, entropy_coef):
        loss, logits, stats = real(policy, chunk, extras, args, entropy_coef)
        return (loss * float("nan") if poisoned.step >= 2 else loss), logits, stats

    real_step = T.train_step

    def tracking(policy, optimizer, episodes, args, step, **kwargs):
        poisoned.step = step
        return real_step(policy, optimizer, episodes, args, step, **kwargs)

    poisoned.step = 0
    monkeypatch.setattr(U, "_micro_loss", poisoned)
    monkeypatch.setattr(loop, "train_step", tracking)
    run = tmp_path / "run"
    with pytest.raises(
        T.NonFiniteLossError, match=r"loss is nan at step 2.*last good checkpoint is .*step_000002"
    ):
        T.main(tiny_args(tmp_path))
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["step"] == 2
    assert [r["step"] for r in metrics(run)] == [0, 1]
    good = weights(run, 2)
    assert all(torch.isfinite(v).all() for v in good.values())


# -- pieces ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [None, 2])
def test_top_layer_logits_from_rollout_activations_equal_the_full_pass(batch_size):
    from probes.models import tiny_model
    from training.top_layers import assemble, capture_below, top_action_logits

    model, tok = tiny_model("llama", n_layers=4)
    with capture_below(model, 2) as captured:
        episodes = collect_episodes(
            model,
            tok,
            seeds=[1, 2, 3],
            config=MazeConfig(n_turns=3, size=12),
            autocast=False,
            batch_size=batch_size,
        )
    hidden = assemble(captured, episodes, batch_size)
    assert hidden.shape[:2] == (3, int(episodes.action_positions[:, -1].max()) + 1)
    full = action_logits(model, episodes)
    top = top_action_logits(model, hidden, episodes, 2)
    assert torch.allclose(top, full, atol=1e-5) and torch.allclose(top, episodes.direction_logits, atol=1e-5)
    # gradients reach the top layers only
    top.sum().backward()
    layers = model.model.layers
    assert layers[2].mlp.up_proj.weight.grad is not None and layers[1].mlp.up_proj.weight.grad is None
    with pytest.raises(RuntimeError, match="captured"):
        assemble(captured[:-1], episodes, batch_size)


@pytest.mark.parametrize("turns", [1, 3])
def test_top_layers_shared_prefix_equals_whole_rows_in_value_and_gradient(turns):
    # The rows' common prefix runs once through the adapted layers (KV cache copied to every row), the rests on
    # top: the same logits and gradients as whole rows, and the slice's layer numbering is restored after.
    from probes.models import tiny_model
    from training.rollout import shared_prefix_length
    from training.top_layers import assemble, capture_below, top_action_logits

    model, tok = tiny_model("llama", n_layers=4, seed=3)
    config = MazeConfig(n_turns=turns, size=12, wind_prob=0.5)  # wind: rows of different lengths
    with capture_below(model, 2) as captured:
        episodes = collect_episodes(model, tok, seeds=[1, 2, 3, 4], config=config, autocast=False)
    hidden = assemble(captured, episodes)
    assert shared_prefix_length(episodes) >= 16
    if turns > 1:
        assert len(set(episodes.action_positions[:, -1].tolist())) > 1  # the rests are really left-padded

    def run(share: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        logits = top_action_logits(model, hidden, episodes, 2, share_prefix=share)
        (logits * torch.linspace(-1, 1, logits.numel()).view_as(logits)).sum().backward()
        return logits.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    shared, shared_grads = run(True)
    whole, whole_grads = run(False)
    torch.testing.assert_close(shared, whole, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(shared, episodes.direction_logits, atol=2e-5, rtol=1e-5)
    assert len(shared_grads) == len(whole_grads) > 0
    for a, b in zip(shared_grads, whole_grads, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1, 2, 3]
    model.zero_grad()


def test_single_turn_groups_are_run_once_with_the_same_logits_and_gradients():
    from probes.models import tiny_model
    from training.top_layers import assemble, capture_below

    model, tok = tiny_model("llama", n_layers=4)
    seeds = [
        5,
        5,
        5,
        6,
        6,
        6,
    ]  # single-turn groups: rows differ only in the sampled letter after the decision
    with capture_below(model, 2) as captured:
        episodes = collect_episodes(
            model, tok, seeds=seeds, config=MazeConfig(n_turns=1, size=12), autocast=False
        )
    assert [c.shape[0] for c in captured] == [1, 2]  # the common prefix once, then each distinct prompt once
    hidden = assemble(captured, episodes)
    assert len({tuple(row) for row in episodes.input_ids[:3].tolist()}) > 1  # the letters sampled apart
    results = []
    for h, start in ((None, None), (hidden, 2)):
        for shared in (True, False):
            model.zero_grad()
            if shared:
                logits = U._policy_logits(model, episodes, h, start)
            else:  # one row at a time: no sharing possible
                logits = torch.cat(
                    [
                        U._policy_logits(model, episodes.select([i]), None if h is None else h[[i]], start)
                        for i in range(6)
                    ]
                )
            (logits * torch.arange(24.0).view(6, 1, 4)).sum().backward()
            results.append((logits.detach(), model.model.layers[3].mlp.up_proj.weight.grad.clone()))
    for logits, grad in results[1:]:
        assert torch.allclose(logits, results[0][0], atol=1e-5) and torch.allclose(
            grad, results[0][1], atol=1e-5
        )
    assert torch.allclose(results[0][0], episodes.direction_logits, atol=1e-5)


def test_reusing_rollout_activations_gives_the_same_loss_and_gradients(tmp_path):
    from training.top_layers import assemble, capture_below

    args = tiny_args(tmp_path, lora_layers=1, algo="reinforce", kl_coef=0.1, episodes_per_step=2)
    policy = T.make_policy(args)
    start = U.top_layer_start(policy, args)
    assert start == 1
    with capture_below(policy.model, start) as captured:
        episodes = collect_episodes(policy.model, policy.tokenizer, seeds=[4, 4], config=T.maze_config(args))
    hidden = assemble(captured, episodes)
    extras = {
        "advantages": T.compute_advantages(episodes, args),
        "ref_logits": U._reference_logits(policy, episodes, args, None, None),
    }
    assert torch.allclose(
        extras["ref_logits"], U._reference_logits(policy, episodes, args, hidden, start), atol=1e-5
    )
    results = []
    for h in (None, hidden):
        policy.model.zero_grad()
        loss, logits, _ = U._micro_loss(policy, episodes, {**extras, "hidden": h, "start": start}, args, 0.01)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in policy.model.named_parameters() if p.requires_grad}
        results.append((loss.detach(), logits, grads))
    (l0, g0_logits, g0), (l1, g1_logits, g1) = results
    assert torch.allclose(l0, l1, atol=1e-6) and torch.allclose(g0_logits, g1_logits, atol=1e-5)
    assert all("layers.1." in n for n in g0)
    for name in g0:
        assert torch.allclose(g0[name], g1[name], rtol=1e-3, atol=1e-8), name
    run = T.main(tiny_args(tmp_path, "reuse", steps=2, lora_layers=1, algo="reinforce"))
    assert all(r["top_layers_only"] and r["logit_drift"] < 1e-4 for r in run.metrics)


def test_train_and_heldout_seeds_are_disjoint_and_grouped():
    seeds = T.train_seeds(0, 5, n_groups=3, group_size=4)
    assert len(seeds) == 12 and len(set(seeds)) == 3
    assert all(seeds[g * 4 : g * 4 + 4] == [seeds[g * 4]] * 4 for g in range(3))
    assert max(max(T.train_seeds(s, t, 8, 1)) for s in range(3) for t in range(50)) < 2**31
    assert min(T.heldout_seeds(64)) >= T.HELDOUT_BASE_SEED > 2**31
    assert T.train_seeds(0, 5, 3, 4) == seeds and T.train_seeds(0, 6, 3, 4) != seeds


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_expert_episodes_match_the_rollout_token_layout_and_the_env(family):
    from probes.models import tiny_model

    model, tok = tiny_model(family)
    config = MazeConfig(n_turns=4, size=20)
    demos = expert_episodes(tok, seeds=[3, 4], config=config)
    for i in range(2):
        row = demos.input_ids[i, : int(demos.attention_mask[i].sum())].tolist()
        assert row == episode_token_ids(tok, demos.messages[i])
        letters = [row[p + 1] for p in demos.action_positions[i].tolist()]
        assert letters == [demos.direction_token_ids[a] for a in demos.actions[i].tolist()]
        # replaying the actions in the env gives the same rewards (same seed: same maze, wind, prompts)
        env = MazeEnv(config)
        env.reset(seed=demos.seeds[i])
        rewards = [env.step(int(a))[1] for a in demos.actions[i]]
        assert np.allclose(rewards, demos.rewards[i].numpy(), atol=1e-5)
    logits = action_logits(model, demos)
    assert logits.shape == (2, 4, 4)


def test_expert_beats_random_play():
    from probes.models import tiny_model

    _, tok = tiny_model("llama")
    demos = expert_episodes(tok, seeds=range(6), config=MazeConfig(n_turns=8))
    rng = np.random.default_rng(0)
    random_returns = []
    for s in range(6):
        env = MazeEnv(MazeConfig(n_turns=8))
        env.reset(seed=s)
        random_returns.append(sum(env.step(int(rng.integers(4)))[1] for _ in range(8)))
    assert demos.returns.mean() > np.mean(random_returns) + 20


def test_select_top_episodes_keeps_the_best_of_each_group():
    from probes.models import tiny_model

    model, tok = tiny_model("llama")
    episodes = collect_episodes(
        model, tok, seeds=[1, 1, 1, 1, 2, 2, 2, 2], config=MazeConfig(n_turns=2, size=12)
    )
    episodes.rewards = torch.tensor([[1.0, 0], [5, 0], [3, 0], [2, 0], [0, 0], [-1, 0], [7, 0], [6, 0]])
    kept = T.select_top_episodes(episodes, 4, 0.5)
    assert kept.returns.tolist() == [5.0, 3.0, 7.0, 6.0]
    assert T.select_top_episodes(episodes, 4, 0.01).returns.tolist() == [5.0, 7.0]


def test_compute_advantages_per_algo_by_hand(tmp_path):
    from probes.models import tiny_model

    model, tok = tiny_model("llama")
    episodes = collect_episodes(model, tok, seeds=[1, 1, 2, 2], config=MazeConfig(n_turns=2, size=12))
    episodes.rewards = torch.tensor([[1.0, 2.0], [3.0, 6.0], [0.0, 0.0], [4.0, -2.0]])
    args = T.Args(episodes_per_step=4, group_size=2)
    # returns 3, 9 | 0, 2
    adv = T.compute_advantages(episodes, dataclasses.replace(args, algo="dr_grpo"))
    assert torch.allclose(adv, torch.tensor([[-3.0, -3.0], [3.0, 3.0], [-1.0, -1.0], [1.0, 1.0]]))
    adv = T.compute_advantages(episodes, dataclasses.replace(args, algo="rloo"))
    assert torch.allclose(adv, torch.tensor([[-6.0, -6.0], [6.0, 6.0], [-2.0, -2.0], [2.0, 2.0]]))
    # reinforce: G = [[3,2],[9,6],[0,0],[2,-2]]; baselines per group and turn: (6,4), (1,-1)
    adv = T.compute_advantages(episodes, dataclasses.replace(args, algo="reinforce"))
    assert torch.allclose(adv, torch.tensor([[-3.0, -2.0], [3.0, 2.0], [-1.0, 1.0], [1.0, -1.0]]))


def test_policy_gradient_step_raises_the_probability_of_good_actions():
    from probes.models import tiny_model

    model, tok = tiny_model("llama", seed=3)
    args = T.Args(
        model="tiny-llama",
        algo="dr_grpo",
        episodes_per_step=4,
        group_size=4,
        n_turns=3,
        maze_size=12,
        lr=1e-4,
        entropy_coef=0.0,
        steps=10,
    )
    policy = T.make_policy(args, model, tok)
    optimizer = T.make_optimizer(policy, args)
    episodes = collect_episodes(policy.model, tok, seeds=[5] * 4, config=T.maze_config(args), temperature=0.7)
    episodes.rewards = torch.tensor([[10.0, 0, 0], [0, 0, 0], [0, 0, 0], [-10.0, 0, 0]])  # A = +10, 0, 0, -10

    def logp():
        with torch.no_grad():
            return L.direction_logprobs(action_logits(policy.model, episodes), episodes.actions, 0.7).sum(1)

    before = logp()
    for _ in range(3):
        T.train_step(policy, optimizer, episodes, args, step=0)
    after = logp()
    assert after[0] > before[0] and after[3] < before[3]


def test_tbrm_update_epochs_revisit_the_batch_like_repeated_steps(tmp_path):
    """TBRM is off-policy, so ``update_epochs`` passes over one batch: exactly two one-pass steps on it."""
    from probes.models import tiny_model

    args = tiny_args(tmp_path, algo="tbrm", minibatches=2, micro_batch_size=1)
    runs = []
    for epochs, calls in ((2, 1), (1, 2)):
        model, tok = tiny_model("llama", seed=3)
        torch.manual_seed(0)
        policy = T.make_policy(args, model, tok)
        run_args = dataclasses.replace(args, update_epochs=epochs)
        optimizer = T.make_optimizer(policy, run_args)
        if not runs:
            episodes = collect_episodes(policy.model, tok, seeds=[5, 5, 6, 6], config=T.maze_config(args))
            before = {k: v.clone() for k, v in policy.trainable_parameters().items()}
        for _ in range(calls):
            out = T.train_step(policy, optimizer, episodes, run_args, step=0)
        assert out["update_tokens"] == episodes.n_tokens * epochs
        runs.append({k: v.detach().clone() for k, v in policy.trainable_parameters().items()})
    assert any(not torch.equal(before[k], runs[0][k]) for k in before)
    for k in runs[0]:
        torch.testing.assert_close(runs[0][k], runs[1][k], rtol=1e-6, atol=1e-7)


def test_evaluate_is_reproducible_and_compare_evals_by_hand():
    from probes.models import tiny_model

    model, tok = tiny_model("llama")
    config = MazeConfig(n_turns=3, size=12)
    a = T.evaluate(model, tok, T.heldout_seeds(4), config=config, sample_seed=1)
    b = T.evaluate(model, tok, T.heldout_seeds(4), config=config, sample_seed=1)
    assert a == b and a.n_episodes == 4
    assert a.mean_return == pytest.approx(np.mean(a.returns))
    assert a.stderr_return == pytest.approx(np.std(a.returns, ddof=1) / 2)
    greedy = T.evaluate(model, tok, T.heldout_seeds(4), config=config, greedy=True)
    assert greedy.greedy
    before = dataclasses.replace(a, mean_return=-10.0, stderr_return=3.0, returns=[-10.0, -13.0, -7.0, -10.0])
    after = dataclasses.replace(a, mean_return=2.0, stderr_return=4.0, returns=[1.0, 3.0, 0.0, 4.0])
    c = T.compare_evals(before, after)
    assert (
        c["return_diff"] == 12.0
        and c["stderr_diff_unpaired"] == 5.0
        and c["z_unpaired"] == pytest.approx(2.4)
    )
    diffs = np.array([11.0, 16.0, 7.0, 14.0])
    assert c["stderr_diff_paired"] == pytest.approx(diffs.std(ddof=1) / 2)


def test_chunked_evaluation_plays_the_chunks_one_after_another(capsys):
    from probes.models import tiny_model

    model, tok = tiny_model("llama")
    config = MazeConfig(n_turns=3, size=12)
    seeds = T.heldout_seeds(5)
    whole = T.evaluate(model, tok, seeds, config=config, sample_seed=1)
    assert T.evaluate(model, tok, seeds, config=config, sample_seed=1, chunk_size=5) == whole
    chunked = T.evaluate(model, tok, seeds, config=config, sample_seed=1, chunk_size=2)
    generator = torch.Generator().manual_seed(1)  # one generator, drawn chunk after chunk
    parts = [
        collect_episodes(model, tok, seeds=c, config=config, generator=generator)
        for c in (seeds[:2], seeds[2:4], seeds[4:])
    ]
    assert chunked.returns == [float(r) for p in parts for r in p.returns.double()]
    assert chunked.seeds == seeds and chunked.n_episodes == 5
    # the progress bar counts every played turn of every chunk, and showing it changes nothing
    shown = T.evaluate(model, tok, seeds, config=config, sample_seed=1, chunk_size=2, progress="eval x")
    assert shown == chunked
    err = capsys.readouterr().err
    assert "eval x" in err and "9/9" in err  # 3 chunks x 3 turns
    with pytest.raises(ValueError, match="chunk_size must be an integer >= 1"):
        T.evaluate(model, tok, seeds, config=config, chunk_size=0)
    with pytest.raises(ValueError, match="eval_chunk_size must be an integer >= 1"):
        T.validate(T.Args(eval_chunk_size=0))


def test_init_from_starts_from_another_run_s_weights(tmp_path):
    first = T.main(tiny_args(tmp_path, "first", steps=1, lora_layers=1))
    warm = T.main(tiny_args(tmp_path, "warm", steps=1, lora_layers=1, lr=1e-12, init_from=str(first.run_dir)))
    a, b = weights(first.run_dir, 1), weights(warm.run_dir, 1)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-9) for k in a)
    assert any(a[k].abs().max() > 0 for k in a)  # the warm start is not the zero-initialised adapter
    with pytest.raises(T.RunDirError, match="no checkpoint there"):
        T.main(tiny_args(tmp_path, "nowhere", init_from=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="use that run's LoRA settings"):
        T.main(tiny_args(tmp_path, "other", lora_layers=2, init_from=str(first.run_dir)))


def test_load_trained_gives_the_trained_policy(tmp_path):
    T.main(tiny_args(tmp_path, steps=2))
    model, tok = T.load_trained(tmp_path / "run")
    policy = T.make_policy(tiny_args(tmp_path, steps=2))
    T.load_checkpoint(tmp_path / "run" / "checkpoints" / "step_000002", policy)
    episodes = collect_episodes(model, tok, seeds=[7, 8], config=MazeConfig(n_turns=2, size=12))
    with torch.no_grad():
        merged = action_logits(model, episodes)
        adapted = action_logits(policy.model, episodes)
    assert torch.allclose(merged, adapted, atol=1e-4)
    assert not any("lora" in name for name, _ in model.named_parameters())


# -- the real model -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_cpu_recipe_smoke_on_smollm2(tmp_path):
    args = T.recipe_args(
        "cpu",
        out=str(tmp_path / "smoke"),
        steps=2,
        episodes_per_step=4,
        group_size=2,
        n_turns=3,
        minibatches=2,
        curriculum_steps=1,
        curriculum_scale=2,
        eval_episodes=0,
        progress=False,
    )
    assert args.algo == "tbrm" and args.update_epochs == 3
    result = T.main(args)
    lines = metrics(result.run_dir)
    assert len(lines) == 2 and all(math.isfinite(r["loss"]) for r in lines)
    assert (result.run_dir / "final" / "adapter_model.safetensors").is_file()


def test_the_package_exports_resolve_to_their_modules():
    assert sorted(T.__all__) == sorted(T._EXPORTS)
    assert all(
        getattr(T, name).__module__.startswith("training.")
        for name in T.__all__
        if callable(getattr(T, name))
    )
