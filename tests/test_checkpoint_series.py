"""The checkpoint series (paper App. G) on a tiny 3-step run: exact cosines, fixed valence frame, errors, JSON."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

import training as T
from probes.emotions import (
    emotion_vectors,
    load_emotion_stories,
    load_neutral_texts,
    subset_stories,
    valence_axis,
)
from probes.extract import reward_vectors
from welfare_axis import checkpoint_series as CS

SIZES = dict(n_per_class=4, n_emotions=4, stories_per_emotion=2, n_neutral=6)


def _cos(a, b) -> float:
    a, b = a.double(), b.double()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 3-step tiny-llama run keeping every checkpoint (steps 1, 2, 3), and its series.

    ``anneal_steps=10``: with the default (S = steps) the cosine schedule gives the last step lr 0, so the
    last two checkpoints would be equal."""
    out = tmp_path_factory.mktemp("series") / "run"
    args = T.Args(model="tiny-llama", steps=3, checkpoint_every=1, keep_checkpoints=10, eval_episodes=0,
                  episodes_per_step=4, group_size=2, n_turns=2, maze_size=12, lr=1e-2, anneal_steps=10, progress=False,
                  threads=1, out=str(out))  # fmt: skip
    T.main(args)
    return out, CS.checkpoint_series(out, **SIZES)


def test_series_covers_base_and_every_checkpoint_in_step_order(run):
    out, series = run
    assert series.steps == [0, 1, 2, 3]
    assert series.checkpoints == ["base", "step_000001", "step_000002", "step_000003"]
    assert series.layer == 1 and series.n_layers == 2  # floor(2 * 2 / 3)
    assert series.cos_mold_base[0] == pytest.approx(1.0, abs=1e-6)
    assert series.cos_gold_base[0] == pytest.approx(1.0, abs=1e-6)
    for name in CS.CURVES:
        if name.startswith("cos"):
            assert all(-1 - 1e-9 <= x <= 1 + 1e-9 for x in getattr(series, name)), name
    assert series.cos_mold_base[1] < 0.999  # lr 1e-2 moves the vectors
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert series.mean_return == [None] + [m["mean_return"] for m in metrics]
    assert series.valence["computed_on"] == "base" and series.valence["n_emotions"] == 4


def test_series_equals_a_hand_computation_from_load_trained(run):
    out, series = run
    args = T.Args(**json.loads((out / "config.json").read_text()))
    maze = T.maze_config(args)
    base, tok = T.load_base_model(args)
    u = reward_vectors(base, tok, n_per_class=4, config=maze)
    stories = subset_stories(load_emotion_stories(), 4, 2)
    ev = emotion_vectors(base, tok, [1], stories=stories, neutral_texts=load_neutral_texts()[:6])
    pc1 = valence_axis(ev, 1).pc1
    trained, _ = T.load_trained(out, checkpoint="step_000002", merge=True)
    v = reward_vectors(trained, tok, n_per_class=4, config=maze)
    i = series.steps.index(2)
    mold, gold = v["Mold"].directions, v["Gold"].directions
    assert series.cos_mold_gold[i] == pytest.approx(_cos(mold[1], gold[1]), abs=1e-6)
    assert series.cos_mold_gold_min[i] == pytest.approx(
        min(_cos(mold[layer], gold[layer]) for layer in (0, 1)), abs=1e-6
    )
    assert series.cos_mold_base[i] == pytest.approx(_cos(mold[1], u["Mold"].directions[1]), abs=1e-6)
    assert series.cos_gold_base[i] == pytest.approx(_cos(gold[1], u["Gold"].directions[1]), abs=1e-6)
    assert series.cos_mold_valence[i] == pytest.approx(_cos(mold[1], pc1), abs=1e-6)
    assert series.cos_gold_valence[i] == pytest.approx(_cos(gold[1], pc1), abs=1e-6)
    assert series.norm_gold[i] == pytest.approx(float(gold[1].double().norm()), rel=1e-6)
    assert series.cos_mold_valence[0] == pytest.approx(_cos(u["Mold"].directions[1], pc1), abs=1e-6)


def test_a_checkpoint_with_the_base_weights_has_cosine_one_to_base(run, tmp_path):
    out, series = run
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(out / "config.json", copy / "config.json")
    args = dataclasses.replace(T.Args(**json.loads((out / "config.json").read_text())), out=str(copy))
    policy = T.make_policy(args)  # LoRA B = 0: merged weights equal the base bit for bit
    T.save_checkpoint(copy, 5, policy, T.make_optimizer(policy, args), args)
    same = CS.checkpoint_series(copy, **SIZES)
    assert same.steps == [0, 5]
    assert same.cos_mold_base[1] == pytest.approx(1.0, abs=1e-6)
    assert same.cos_gold_base[1] == pytest.approx(1.0, abs=1e-6)
    for name in ("cos_mold_gold", "cos_mold_valence", "cos_gold_valence", "norm_mold"):
        assert getattr(same, name)[1] == pytest.approx(getattr(series, name)[0], abs=1e-6), name


def test_load_checkpoint_model_equals_load_trained(run):
    out, _ = run
    args = CS.load_run_args(out)
    base, tok = T.load_base_model(args)
    mine = CS.load_checkpoint_model(args, base, tok, out / "checkpoints" / "step_000003")
    theirs, _ = T.load_trained(out, checkpoint="step_000003")
    ids = tok("N E S W", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(mine(ids).logits, theirs(ids).logits)
        assert not torch.equal(base(ids).logits, mine(ids).logits)


def test_same_run_same_numbers_and_json_round_trip(run, tmp_path):
    out, series = run
    assert CS.checkpoint_series(out, **SIZES) == series
    path = series.save(tmp_path / "sub" / "series.json")
    assert CS.CheckpointSeries.load(path) == series
    assert CS.CheckpointSeries.from_json(series.to_json()) == series
    assert [p.name for p in path.parent.iterdir()] == ["series.json"]  # no temp file left
    bad = {**series.to_dict(), "format": 99}
    with pytest.raises(ValueError, match="format 99"):
        CS.CheckpointSeries.from_dict(bad)


def test_headline_and_valence_separation_by_hand(run):
    _, series = run
    head = series.headline()
    sep = [g - m for g, m in zip(series.cos_gold_valence, series.cos_mold_valence, strict=True)]
    assert series.valence_separation() == sep
    assert head["valence_separation"] == {"base": sep[0], "final": sep[-1]}
    assert head["cos_gold_base"]["base"] == series.cos_gold_base[0] and head["n_checkpoints"] == 3
    assert len(set(sep)) == 4  # no ties
    ranks = torch.tensor(sep).argsort().argsort().double()  # Spearman = Pearson of ranks (no ties)
    steps = torch.arange(4).double()
    rho = float(
        ((ranks - ranks.mean()) @ (steps - steps.mean()))
        / ((ranks - ranks.mean()).norm() * (steps - steps.mean()).norm())
    )
    assert head["spearman_valence_separation_vs_step"] == pytest.approx(rho, abs=1e-12)


def test_bad_run_dirs_name_the_problem_and_the_fix(run, tmp_path):
    out, _ = run
    with pytest.raises(CS.RunDirError, match="does not exist"):
        CS.checkpoint_series(tmp_path / "nope")
    with pytest.raises(CS.RunDirError, match="no config.json"):
        CS.checkpoint_series(tmp_path)
    (tmp_path / "fresh").mkdir()
    shutil.copy(out / "config.json", tmp_path / "fresh" / "config.json")
    with pytest.raises(CS.RunDirError, match="keep-checkpoints"):
        CS.checkpoint_series(tmp_path / "fresh")
    with pytest.raises(IndexError, match="out of range"):
        CS.checkpoint_series(out, layer=7, **SIZES)
    with pytest.raises(ValueError, match="strictly increasing"):
        dataclasses.replace(run[1], steps=[0, 2, 1, 3])


def test_figure_has_one_trace_per_quantity(run):
    _, series = run
    fig = CS.checkpoint_series_figure(series)
    assert [t.name for t in fig.data] == list(CS._LABELS.values())
    assert all(list(t.x) == series.steps for t in fig.data)
    assert list(fig.data[-1].y) == series.cos_gold_valence


def test_cli_writes_the_series(run, tmp_path, capsys):
    out, series = run
    dest = tmp_path / "cli.json"
    argv = [str(out), "--out", str(dest), "--n-per-class", "4", "--n-emotions", "4", "--stories-per-emotion", "2",
            "--n-neutral", "6", "--html", str(tmp_path / "fig.html"), "--threads", "1"]  # fmt: skip
    assert CS.cli(argv) == 0
    assert CS.CheckpointSeries.load(dest) == series
    assert "<html>" in (tmp_path / "fig.html").read_text()
    assert "written:" in capsys.readouterr().out
    assert CS.cli([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_study_stage_summary_and_report_section(run, tmp_path, monkeypatch):
    from welfare_axis import study
    from welfare_axis.stages import StageRunner

    out, series = run
    cfg = study.StudyConfig.from_overrides(study.StudyConfig.preset("checkpoint-series"), {"n_per_class": 4})
    assert cfg.checkpoint_series and cfg.train_overrides["keep_checkpoints"] > 2
    assert study.StudyConfig().checkpoint_series is False
    assert study.series_settings(dataclasses.replace(cfg, fast=True)) == {"n_per_class": 4, "n_emotions": 12,
                                                                        "stories_per_emotion": 4, "n_neutral": 24}  # fmt: skip
    for key in ("n_emotions", "stories_per_emotion", "n_neutral"):  # the tiny subset of SIZES
        monkeypatch.setitem(study.SERIES_EMOTIONS, key, SIZES[key])
    runner = StageRunner(tmp_path / "study")
    runner.stage("train", {}, lambda d: (shutil.copytree(out, d / "run"), {"run": "run"})[1])
    stage = runner.stage("checkpoint_series", study.series_settings(cfg),
                         lambda d: study.stage_checkpoint_series(cfg, runner, d), depends=["train"])  # fmt: skip
    assert stage.result["headline"] == series.headline()
    assert (
        CS.CheckpointSeries.load(stage.dir / stage.result["file"]).cos_gold_valence == series.cos_gold_valence
    )
    section = study.checkpoint_series_section(runner)
    assert section.title.startswith("Rotation during training") and len(section.tables[0].rows) == 4
    assert len(section.figures[0].data) == len(CS._LABELS)
