"""bench.learn: the paired gain curve read back from a run's evaluation logs, and the learn_minutes rule."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import training as T
from bench.learn import GainPoint, gain_curve, learn_minutes
from training.episodes import load_episodes
from training.evaluation import compare_evals, summarize_episodes
from welfare_axis.claims import configuration_name


def test_gain_curve_pairs_every_mid_run_evaluation_with_the_untrained_one(tmp_path):
    out = tmp_path / "run"
    T.main(T.Args(model="tiny-llama", steps=3, episodes_per_step=4, group_size=2, n_turns=3, maze_size=12,
                  progress=False, threads=1, lr=1e-2, eval_episodes=4, eval_every=1, out=str(out)))  # fmt: skip
    points = gain_curve(out)
    assert [p.step for p in points] == [1, 2, 3]
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert points[-1].train_minutes == pytest.approx(sum(m["step_seconds"] for m in metrics) / 60)
    assert points[0].train_minutes == pytest.approx(metrics[0]["step_seconds"] / 60)
    evals = json.loads((out / "eval.json").read_text())
    before = T.EvalResult(**evals["before"])
    mid = summarize_episodes(
        load_episodes(out / "episodes" / "eval_step_000001"), greedy=False, temperature=before.temperature
    )
    assert mid.mean_return == pytest.approx(metrics[0]["eval_mean_return"])  # the log is the evaluation
    gain = compare_evals(before, mid)
    assert (points[0].gain, points[0].se) == pytest.approx((gain["return_diff"], gain["stderr_diff_paired"]))
    final = compare_evals(before, T.EvalResult(**evals["after"]))
    assert points[-1].gain == pytest.approx(final["return_diff"])


def test_mid_run_evaluations_change_nothing_that_is_trained(tmp_path):
    tiny = dict(model="tiny-llama", steps=2, episodes_per_step=4, group_size=2, n_turns=3, maze_size=12,
                progress=False, threads=1, lr=1e-2, eval_episodes=4)  # fmt: skip
    T.main(T.Args(**tiny, eval_every=1, out=str(tmp_path / "on")))
    T.main(T.Args(**tiny, out=str(tmp_path / "off")))
    on, off = (load_file(str(tmp_path / r / "final" / "adapter_model.safetensors")) for r in ("on", "off"))
    assert on.keys() == off.keys() and all(torch.equal(on[k], off[k]) for k in on)
    evals = [json.loads((tmp_path / r / "eval.json").read_text())["after"]["returns"] for r in ("on", "off")]
    assert evals[0] == evals[1]
    name = configuration_name(
        {"model": "m", "algo": "tbrm", "train_overrides": {"lr": 5e-4, "eval_every": 2}}
    )
    assert name == configuration_name({"model": "m", "algo": "tbrm", "train_overrides": {"lr": 5e-4}})


def test_learn_minutes_is_the_first_point_at_the_threshold():
    points = [GainPoint(1, 4.0, 10.0, 3.0), GainPoint(2, 8.0, 25.0, 5.0), GainPoint(3, 12.0, 30.0, 5.0)]
    assert learn_minutes(points) == 8.0
    assert learn_minutes(points, threshold=31) is None
    assert learn_minutes([GainPoint(8, 13.1, 24.999998, 6.6)]) == 13.1  # +25 up to float32 rounding
    assert learn_minutes([GainPoint(8, 13.1, 24.99, 6.6)]) is None
    assert points[1].z == 5.0


def test_a_warm_started_study_continues_the_warm_starts_curve_over_the_untrained_model(tmp_path):
    tiny = dict(model="tiny-llama", episodes_per_step=4, group_size=2, n_turns=3, maze_size=12, progress=False,
                threads=1, eval_episodes=4)  # fmt: skip
    warm, run = tmp_path / "stages" / "warm_start" / "run", tmp_path / "stages" / "train" / "run"
    T.main(T.Args(algo="sft", steps=2, lr=1e-2, out=str(warm), **tiny))
    T.main(T.Args(algo="dr_grpo", steps=3, lr=1e-2, init_from=str(warm), out=str(run), **tiny))
    points = gain_curve(tmp_path)
    assert [p.step for p in points] == [2, 5]  # the run's steps continue the warm start's
    first = gain_curve(warm)[-1]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert points[1].train_minutes == pytest.approx(
        first.train_minutes + sum(m["step_seconds"] for m in metrics) / 60
    )
    untrained = T.EvalResult(**json.loads((warm / "eval.json").read_text())["before"])
    gain = compare_evals(untrained, T.EvalResult(**json.loads((run / "eval.json").read_text())["after"]))
    assert (points[1].gain, points[1].se) == pytest.approx((gain["return_diff"], gain["stderr_diff_paired"]))
    assert gain_curve(tmp_path / "stages" / "train" / "run")[-1].gain != pytest.approx(points[1].gain)
