"""The whole study on a tiny model: every stage runs, the report is filled, a rerun is fully cached."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from welfare_axis.cli import main as cli
from welfare_axis.compare import compare_runs, comparison_rows, load_summary
from welfare_axis.study import PRESETS, StudyConfig, run_study
from welfare_axis.summary import StudySummary

TINY = {
    "model": "tiny-llama",
    "train_overrides": {
        "n_turns": 3,
        "maze_size": 12,
        "progress": False,
        "lora_layers": None,
        "monitor_every": 1,
        "monitor_n_per_class": 8,
    },
    "n_per_class": 8,
    "steer_evals": ("sentiment",),
    "n_prompts": 2,
    "max_new_tokens": 6,
    "forgetting_qa": 4,
    "forgetting_texts": 4,
}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    cfg = StudyConfig.from_overrides(StudyConfig.preset("fast"), TINY)
    return cfg, out, run_study(cfg, out)


def test_study_fills_every_section(tiny_study):
    cfg, out, summary = tiny_study
    assert summary.fast is True and summary.training.steps == 3
    import numpy as np

    evals = json.loads((out / "stages" / "train" / "run" / "eval.json").read_text())
    diff = np.array(evals["after"]["returns"]) - np.array(evals["before"]["returns"])
    gain = summary.training.return_gain  # paired by maze: the same held-out mazes before and after
    assert gain.paired and gain.diff == pytest.approx(diff.mean())
    assert gain.se == pytest.approx(diff.std(ddof=1) / np.sqrt(len(diff)))
    assert summary.study_minutes > 0 and set(summary.stage_seconds) >= {"train", "readouts", "steering"}
    peaks = summary.stage_peak_rss_gb  # ru_maxrss only grows: the stages' peaks never fall in run order
    assert set(peaks) == set(summary.stage_seconds) and list(peaks.values()) == sorted(peaks.values())
    assert summary.peak_rss_gb == max(peaks.values()) > 0
    import dataclasses

    later = dataclasses.replace(summary, stage_peak_rss_gb={"train": 1.0, "readouts": 3.5, "steering": 3.5})
    assert later.peak_rss_gb == 3.5 and later.peak_rss_stage == "readouts"  # the first stage at the peak
    assert dataclasses.replace(summary, stage_peak_rss_gb={}).peak_rss_stage is None
    for section in ("geometry", "logit_lens", "emotions", "tracking", "q_readout", "env_probes"):
        assert summary.section(section), section
    assert summary.forgetting and summary.steering
    cos = summary.measure("cos_min")
    assert -1.0 <= cos.trained <= 1.0 and -1.0 <= cos.control <= 1.0
    assert (
        cos.trained_estimate.value == cos.trained
        and cos.control_estimate.ci_low <= cos.control_estimate.ci_high
    )
    assert summary.measure("control_maze_d_on_v_gold").control_estimate is not None  # the control read on v
    assert summary.measure("implicit_reward_spearman").trained_estimate is not None  # π vs the naive π_ref
    assert summary.steering["v_Gold_sentiment"]["n"] > 0 and summary.steering["u_Gold_sentiment"]["n"] > 0
    with pytest.raises(KeyError, match="no measure 'cos'"):
        summary.measure("cos")
    from probes.readouts import ReadoutReport

    trained = ReadoutReport.load(out / "stages" / "readouts" / "readouts_trained.json")
    control = ReadoutReport.load(out / "stages" / "readouts" / "readouts_control.json")
    # the paper's common ground: one emotion basis (the untrained model's), read at the trained layer
    assert trained.emotions.basis_model == control.emotions.basis_model == control.model
    assert control.emotions.scatter.layer == trained.extraction.best_mean_auroc_layer
    html = (out / "report.html").read_text()
    for title in ("Training", "Geometry", "Logit lens", "Emotion alignment", "Tracking", "Logits as Q-values",
                  "Environment probes", "Forgetting", "Steering", "FAST MODE"):  # fmt: skip
        assert title in html, title
    assert "<script src" not in html  # self-contained
    assert "anti-steerable" in html and "consistency predictor" in html  # reliability beside every slope
    assert "training and the reward axis (axis monitor)" in html  # the monitored run's axis curves
    from welfare_axis.study import steering_reliability

    steering = json.loads((out / "stages" / "steering" / "stage.json").read_text())["result"]
    rows = {(r.vector, r.eval): r for r in steering_reliability(out / "stages" / "steering", steering)}
    for concept in ("Mold", "Gold"):  # the control is expected to move as its vector does
        v, u = rows[(f"v_{concept}", "sentiment")], rows[(f"u_{concept}", "sentiment")]
        assert u.expected_sign == v.expected_sign == (1 if v.pooled_slope >= 0 else -1)
    pngs = sorted((out / "figures").glob("*.png")) if (out / "figures").is_dir() else []
    if pngs:  # a Chromium for kaleido is present: one PNG per report figure
        assert len(pngs) == html.count('class="plotly-graph-div"')
        assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    else:  # no browser: the report says why and how to get the PNGs
        assert "PNG export skipped" in html and "Chromium" in html
    assert StudySummary.load(out) == summary  # summary.json reads back typed


def test_rerun_is_cached_and_a_changed_setting_reruns_only_downstream(tiny_study, capsys):
    cfg, out, summary = tiny_study

    assert run_study(cfg, out) == summary
    assert capsys.readouterr().out.count("cached") == 4
    changed = StudyConfig.from_overrides(cfg, {"alphas": (-2.0, 0.0, 2.0)})
    run_study(changed, out)
    log = capsys.readouterr().out
    assert log.count("cached") == 3 and "stage steering done (cached)" not in log


def test_compare_tabulates_runs(tiny_study, tmp_path):
    _, out, _ = tiny_study
    table, html = compare_runs([out, out], out=tmp_path / "compare.html")
    assert table.count(out.name) == 2 and html.exists()
    assert "(no finished non-fast studies)" in table  # fast runs are pipeline checks, never a claim's seed
    text = html.read_text()
    assert "The paper&#x27;s claims" in text or "The paper's claims" in text
    assert "cos(v_Mold, v_Gold) by layer" in text and "logits as Q: Spearman" in text
    with pytest.raises(FileNotFoundError, match="has no summary.json"):
        compare_runs([tmp_path])
    (row,) = comparison_rows([("tiny", load_summary(out))])  # forgetting with its paired interval and test
    drop = load_summary(out).forgetting["drop"]
    assert row["perplexity_increase"] == drop["perplexity_increase"]
    assert [row["perplexity_increase_ci_low"], row["perplexity_increase_ci_high"]] == drop[
        "perplexity_increase_ci"
    ]
    assert (
        row["perplexity_increase_ci_low"] <= row["perplexity_increase"] <= row["perplexity_increase_ci_high"]
    )
    assert row["qa_mcnemar_p"] == drop["qa_mcnemar_p"] and 0 <= row["qa_mcnemar_p"] <= 1


def test_bad_settings_get_clear_errors(tmp_path, capsys):
    with pytest.raises(KeyError, match="unknown study setting"):
        StudyConfig.from_overrides(StudyConfig(), {"colour": "red"})
    with pytest.raises(ValueError, match="unknown study preset"):
        StudyConfig.preset("nope")
    assert cli(["run", "--out", str(tmp_path / "x"), "--set", "colour=red"]) == 2
    assert "unknown study setting(s) ['colour']" in capsys.readouterr().err
    assert set(PRESETS) >= {
        "fast",
        "tile-swap",
        "tile-shuffle",
        "gemma",
        "sft",
        "reinforce",
        "tbrm-short",
        "short",
        "iterative-sft",
        "full-ft",
    }


def test_train_cache_key_leaves_out_settings_that_do_not_apply():
    from welfare_axis import study

    key = study.train_stage_settings(StudyConfig())  # a finished study is not retrained by new inert settings
    assert not set(key) & {"dpo_beta", "preference_horizon", "intervene_vector", "monitor_every", "out"}
    dpo = study.train_stage_settings(StudyConfig.from_overrides(StudyConfig(), {"algo": "dpo"}))
    assert dpo["dpo_beta"] == 0.1 and "intervene_mode" not in dpo
    iv = StudyConfig.from_overrides(
        StudyConfig(), {"train_overrides": {"intervene_vector": "v", "lora_layers": None}}
    )
    assert study.train_stage_settings(iv)["intervene_mode"] == "add"
    rlhf = StudyConfig.from_overrides(
        StudyConfig(), {"train_overrides": {"reward_model": "runs/rm", "lora_layers": None}}
    )
    assert study.train_stage_settings(rlhf)["reward_model"] == "runs/rm" and "reward_model" not in key


def test_the_default_studys_train_key_is_stable():
    """A new training setting that is off by default must not retrain finished studies (their train stage is
    45 minutes): the default study's key is the one its recorded runs were trained under. Change this value only
    with a change to what the default study trains."""
    from welfare_axis import study
    from welfare_axis.stages import STAGE_FORMAT, config_hash

    def key(cfg: StudyConfig) -> str:
        settings = study.train_stage_settings(cfg)
        return config_hash({"stage": "train", "format": STAGE_FORMAT, "config": settings, "depends": {}})

    assert (
        key(StudyConfig()) == "81f5b7ca2b8f1fc5"
    )  # the top 8 layers at lr 2e-3 for 4 steps since session 24
    assert (
        key(StudyConfig.preset("top-lr-6-steps")) == "b0eab48a4146ce90"
    )  # the default's key in sessions 21-23
    assert key(StudyConfig.preset("tbrm-8-steps")) == "b78bf920f2bc1b8c"  # the default's key in session 20
    assert key(StudyConfig.preset("tbrm-6-steps")) == "871b813a915a9e9f"  # the default's key until session 20


def test_train_cache_key_is_the_resolved_training_config(monkeypatch):
    from welfare_axis import study

    fast = StudyConfig.preset("fast")
    key = study.train_stage_settings(fast)
    assert key["n_turns"] == study.FAST_TRAIN["n_turns"] and "out" not in key and "threads" not in key
    # a change to the fast settings (or a preset) must retrain, not reuse a stale run
    monkeypatch.setitem(study.FAST_TRAIN, "n_turns", 7)
    assert study.train_stage_settings(fast) != key
    assert study.train_stage_settings(fast)["n_turns"] == 7


def test_frozen_layers_note_only_when_a_selected_layer_is_below_the_adapted_ones():
    from welfare_axis.study import frozen_layers_note

    readout = (30, {"Mold": 21, "Gold": 25})  # n_layers, layer_star
    note = frozen_layers_note({"finetune": "lora", "lora_layers": 8}, *readout)
    assert "layers 22-29" in note and "Mold L21" in note and "Gold" not in note.split("(")[1]
    assert frozen_layers_note({"finetune": "lora", "lora_layers": 9}, *readout) is None  # 21..29 adapted
    assert frozen_layers_note({"finetune": "lora", "lora_layers": None}, *readout) is None
    assert frozen_layers_note({"finetune": "full", "lora_layers": 8}, *readout) is None


def test_learning_notes_say_when_the_model_did_not_learn_or_broke():
    from welfare_axis.study import learning_notes
    from welfare_axis.summary import ReturnGain, TrainingSummary

    def notes(z, gold=0.5, mold=-0.5, ppl=(15.0, 16.0)):
        gain = ReturnGain(diff=z * 7.0, se=7.0, z=z, paired=True, gold_diff=gold, mold_diff=mold)
        forgetting = {"before": {"perplexity": ppl[0]}, "after": {"perplexity": ppl[1]}}
        return learning_notes(TrainingSummary(steps=4, return_gain=gain), forgetting)

    assert notes(3.0) == []  # the default's criterion: >= 3 paired SE, Gold up, Mold down
    assert notes(4.8, gold=-0.1) and notes(4.8, mold=0.2)  # a gain with Gold down or Mold up is not learning
    (note,) = notes(2.9)
    assert note.startswith(
        "The trained model did not learn the maze: held-out gain +20.3 ± 7.0 (paired z 2.9;"
    )
    assert notes(-5.2)[0].startswith("The trained model did not learn the maze; it got worse:")
    assert notes(-1.0)[0].startswith("The trained model did not learn the maze:")
    broken = notes(4.0, ppl=(14.9, 1226.6))
    assert broken == ["Training damaged the language model: perplexity on the general texts 14.9 → 1226.6 (82×). "
                      "Its vectors are directions of a broken model; a smaller step (train_overrides lr, top_lr) "
                      "or another recipe is needed."]  # fmt: skip
    assert notes(4.0, ppl=(15.0, 29.9)) == []  # less than double
    assert learning_notes(TrainingSummary(steps=0)) == []  # not evaluated: nothing to say
    unknown = ReturnGain(diff=30.0, se=7.0, z=4.3, paired=True)  # a record without Gold/Mold: judged by z
    assert learning_notes(TrainingSummary(steps=4, return_gain=unknown)) == []


def test_adapted_layers_and_the_layer_star_candidates_they_give():
    from welfare_axis.study import adapted_layers, layer_star_candidates

    assert adapted_layers({"finetune": "lora", "lora_layers": 8}, 30) == list(range(22, 30))
    assert adapted_layers({"finetune": "lora", "lora_layers": None}, 30) is None
    assert adapted_layers({"finetune": "lora", "lora_layers": 30}, 30) is None
    assert adapted_layers({"finetune": "full", "lora_layers": 8}, 30) is None
    top8 = {"finetune": "lora", "lora_layers": 8}
    assert layer_star_candidates(StudyConfig(), top8, 30) is None  # the default: every layer
    adapted = StudyConfig(layer_star_layers="adapted")
    assert layer_star_candidates(adapted, top8, 30) == list(range(22, 30))
    with pytest.raises(ValueError, match="layer_star_layers must be all or adapted"):
        layer_star_candidates(StudyConfig(layer_star_layers="top"), top8, 30)


def test_default_study_sizes_and_their_precedence(tmp_path):
    from welfare_axis import study

    args = StudyConfig.preset("short").train_args(tmp_path)
    assert (args.recipe, args.steps, args.eval_episodes, args.lora_layers) == ("cpu", 3, 24, 16)
    assert args.episodes_per_step == 16 and args.n_turns == 15  # the CPU recipe's episodes
    # the documented short study runs' optimiser settings stay pinned while the CPU recipe moves on
    pinned = (args.lr, args.temperature, args.entropy_coef, args.minibatches, args.curriculum_steps)
    assert pinned == (2e-4, 0.7, 0.05, 1, 0) and args.checkpoint_every == 8
    fast = StudyConfig.preset("fast").train_args(tmp_path)
    assert (fast.checkpoint_every, fast.lr, fast.curriculum_steps, fast.n_turns) == (1, 5e-4, 0, 5)
    assert (fast.algo, fast.lora_layers) == ("tbrm", None)  # the default's algorithm, at fast sizes
    sft = StudyConfig.preset("sft").train_args(tmp_path)
    assert (sft.lr, sft.minibatches, sft.sft_targets, sft.lora_layers) == (2e-4, 1, "expert", 16)
    tbrm = StudyConfig.preset("tbrm-short").train_args(tmp_path)  # not the CPU recipe's TBRM recipe
    assert (tbrm.algo, tbrm.curriculum_scale, tbrm.update_epochs, tbrm.tbrm_beta) == (
        "tbrm",
        None,
        None,
        10.0,
    )
    series = StudyConfig.preset("checkpoint-series").train_args(tmp_path)
    assert (series.lora_layers, series.lr, series.top_lr, series.checkpoint_every) == (None, 5e-4, 2e-3, 2)
    default = StudyConfig().train_args(tmp_path)  # every layer adapted; the top 8 at the recipe's step
    assert (default.lora_layers, default.lr, default.top_lr, default.top_lr_layers) == (None, 5e-4, 2e-3, 8)
    assert (default.steps, default.curriculum_steps) == (4, 4)
    # train_steps sets the step count over the default's own; its single-turn curriculum stays 4 steps
    longer = StudyConfig.from_overrides(StudyConfig(), {"train_steps": 8}).train_args(tmp_path)
    assert (longer.steps, longer.curriculum_steps, longer.top_lr) == (8, 4, 2e-3)
    # train_steps beats the study's sizes and a step count in train_overrides; their other fields beat everything
    cfg = StudyConfig.from_overrides(
        StudyConfig.preset("short"), {"train_steps": 12, "train_overrides": {"lora_layers": 8}}
    )
    assert (cfg.train_args(tmp_path).steps, cfg.train_args(tmp_path).lora_layers) == (12, 8)
    assert (
        StudyConfig.preset("fast").train_args(tmp_path).steps == study.FAST_TRAIN["steps"]
    )  # not the default's 8
    fast12 = StudyConfig.from_overrides(StudyConfig.preset("fast"), {"train_steps": 12})
    assert fast12.train_args(tmp_path).steps == 12
    settings = study._readout_settings(StudyConfig(), tmp_path / "r.json")
    assert (settings.n_per_class, settings.maze_size, settings.n_turns) == (24, 100, 15)
    assert all(getattr(settings, k) == v for k, v in study.STUDY_READOUTS.items())
    full = study._readout_settings(StudyConfig.from_overrides(StudyConfig(), {"readout_scale": "full"}), None)
    assert full.tracking_n > settings.tracking_n
    with pytest.raises(ValueError, match="readout_scale must be"):
        study._readout_settings(StudyConfig.from_overrides(StudyConfig(), {"readout_scale": "huge"}), None)
    # on/off settings take True/False, also as the words --set passes through; anything else is refused
    off = StudyConfig.from_overrides(StudyConfig(), {"activation_cache": "false"})
    assert off.activation_cache is False and study._readout_settings(off).activation_cache is None
    assert study._readout_settings(StudyConfig()).activation_cache == study.default_activation_cache_dir()
    with pytest.raises(ValueError, match="activation_cache is on or off"):
        StudyConfig.from_overrides(StudyConfig(), {"activation_cache": "sometimes"})


def test_the_control_can_be_steered_at_its_own_layer_star(tiny_study):
    from probes.readouts import ReadoutReport

    cfg, out, _ = tiny_study
    run_study(cfg, out)  # the default first: the option alone must rerun the steering stage
    run_study(StudyConfig.from_overrides(cfg, {"control_layer": "own"}), out)
    steering = json.loads((out / "stages" / "steering" / "stage.json").read_text())["result"]
    control = ReadoutReport.load(out / "stages" / "readouts" / "readouts_control.json")
    assert steering["control_layer"] == "own"
    for concept in ("Mold", "Gold"):
        own = control.extraction.layer_star[concept]
        assert steering[f"layer_u_{concept}"] == own
        rows = [r for r in steering["slopes"] if r["vector"] == f"u_{concept}"]
        assert rows and {r["layer"] for r in rows} == {own}
        assert (out / "stages" / "steering" / steering["control_sweeps"][concept]).is_file()
    run_study(cfg, out)  # back to the default for the other tests


def test_a_second_training_reuses_the_untrained_models_activations(tiny_study, tmp_path, capsys):
    from probes.activation_cache import default_activation_cache_dir
    from probes.readouts import ReadoutReport

    cfg, out, _ = tiny_study  # stored the untrained model's extraction (and the trained one's)
    capsys.readouterr()
    other = {**cfg.train_overrides, "lr": 1.234e-3}  # another trained model from the same untrained one
    run_study(StudyConfig.from_overrides(cfg, {"train_overrides": other}), tmp_path)
    hits = [
        line for line in capsys.readouterr().out.splitlines() if "activations: read from the cache" in line
    ]
    assert (
        len(hits) == 1
    )  # u came from the cache; the new trained model was captured (the folder may be shared
    # with another test worker, so the hit is counted, not the files)
    entry = Path(hits[0].split("(", 1)[1].rstrip(")"))
    record = json.loads(entry.with_suffix(".json").read_text())
    assert entry.parent == default_activation_cache_dir()
    assert record["layers"] == [0, 1] and record["classes"] == ["Mold", "Gold", "Path"]
    read = {
        d: ReadoutReport.load(d / "stages" / "readouts" / "readouts_control.json") for d in (out, tmp_path)
    }
    assert read[out].extraction == read[tmp_path].extraction  # the same u, bit for bit
    assert read[tmp_path].settings["activation_cache"] == str(default_activation_cache_dir())


def test_layer_star_can_be_chosen_among_the_adapted_layers_only(tmp_path):
    from probes.readouts import ReadoutReport
    from welfare_axis.claims import configuration_name

    top = {**TINY["train_overrides"], "lora_layers": 1}  # tiny-llama has 2 layers: LoRA on layer 1 only
    cfg = StudyConfig.from_overrides(StudyConfig.preset("fast"), {**TINY, "train_overrides": top,
                                                                  "layer_star_layers": "adapted"})  # fmt: skip
    summary = run_study(cfg, tmp_path)
    for name in ("trained", "control"):  # v and u are chosen alike
        report = ReadoutReport.load(tmp_path / "stages" / "readouts" / f"readouts_{name}.json")
        assert report.settings["layer_star_candidates"] == [1], name
        assert (
            report.extraction.layer_star == {"Mold": 1, "Gold": 1}
            and report.extraction.best_mean_auroc_layer == 1
        )
        assert len(report.geometry.cos_mold_gold.by_layer) == 2  # the per-layer curves keep every layer
    assert summary.layer_star == {"Mold": 1, "Gold": 1}
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "chosen among the adapted layers L1 only" in html
    steering = json.loads((tmp_path / "stages" / "steering" / "stage.json").read_text())["result"]
    assert {r["layer"] for r in steering["slopes"]} == {1}
    config = json.loads((tmp_path / "study_config.json").read_text())
    assert configuration_name(config).endswith(
        "layer_star_layers=adapted"
    )  # its own configuration in compare
    assert "layer_star_layers" not in configuration_name({**config, "layer_star_layers": "all"})
    with pytest.raises(ValueError, match="layer_star_layers must be all or adapted"):
        run_study(StudyConfig.from_overrides(cfg, {"layer_star_layers": "top"}), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_the_default_study_trains_the_cpu_recipes_tbrm_on_every_layer_its_top_8_at_the_recipes_lr():
    from pathlib import Path

    from training.config import recipe_args

    args = StudyConfig().train_args(Path("run"))
    assert StudyConfig.preset("learn") == StudyConfig.preset("default") == StudyConfig()
    recipe = recipe_args("cpu", algo="tbrm")
    assert args.algo == "tbrm" and args.lora_layers is None  # every layer adapted: v can differ from u
    for key in ("tbrm_beta", "curriculum_scale", "minibatches", "eval_episodes"):
        assert getattr(args, key) == getattr(recipe, key), key
    # the recipe's step on the top 8 layers, a quarter of it on the 22 below (2e-3 everywhere collapses)
    assert (args.top_lr, args.top_lr_layers, args.lr) == (recipe.lr, recipe.lora_layers, recipe.lr / 4)
    assert args.steps == args.curriculum_steps == 4 and recipe.steps == 6  # every step single-turn
    top6 = StudyConfig.preset("top-lr-6-steps").train_args(Path("run"))
    assert (top6.steps, top6.curriculum_steps, top6.lr, top6.top_lr, top6.lora_layers) == (
        6,
        6,
        args.lr,
        recipe.lr,
        None,
    )
    six = StudyConfig.preset("tbrm-6-steps").train_args(Path("run"))
    assert (six.steps, six.curriculum_steps, six.lr, six.top_lr, six.lora_layers) == (
        6,
        6,
        args.lr,
        None,
        None,
    )
    eight = StudyConfig.preset("tbrm-8-steps").train_args(Path("run"))
    assert (eight.steps, eight.curriculum_steps, eight.lr, eight.top_lr, eight.lora_layers) == (
        8,
        8,
        args.lr,
        None,
        None,
    )
    with pytest.raises(ValueError, match="train_sizes"):
        StudyConfig.from_overrides(StudyConfig(), {"train_sizes": "huge"}).train_args(Path("run"))


def test_a_shipped_trained_model_is_read_out_and_steered_without_training(tmp_path, monkeypatch):
    import training as T
    from training import shipped as S
    from welfare_axis import study

    T.main(T.Args(model="tiny-llama", steps=1, episodes_per_step=4, group_size=2, n_turns=3, maze_size=12,
                  progress=False, threads=1, lr=1e-2, eval_episodes=4, out=str(tmp_path / "run")))  # fmt: skip
    root = tmp_path / "shipped"
    S.ship_run(tmp_path / "run", "tiny-rl", command="python -m training.train ...", commit="c0ffee", root=root,
               progress=False)  # fmt: skip
    monkeypatch.setattr(S, "SHIPPED_DIR", root)
    monkeypatch.setattr(T, "main", lambda *a, **k: pytest.fail("a shipped model must not be trained"))
    monkeypatch.setattr(study, "main", lambda *a, **k: pytest.fail("a shipped model must not be trained"))
    out = tmp_path / "study"
    assert cli(["run", "--fast", "--trained", "tiny-llama/tiny-rl", "--out", str(out),
                "--set", "n_per_class=8", "--set", "steer_evals=('sentiment',)", "--set", "n_prompts=2",
                "--set", "max_new_tokens=6", "--set", "forgetting_qa=4", "--set", "forgetting_texts=4"]) == 0  # fmt: skip
    summary = StudySummary.load(out / "summary.json")
    prov = S.find_shipped("tiny-llama", "tiny-rl").provenance
    assert summary.config["trained"] == "tiny-rl" and summary.model == "tiny-llama"
    assert summary.training.after["mean_return"] == prov.after["mean_return"]
    assert summary.training.return_gain.diff == pytest.approx(prov.gain["return_diff"])
    assert summary.steering and summary.forgetting
    report = (out / "report.html").read_text()
    assert "Shipped trained model tiny-llama/tiny-rl" in report and "c0ffee" in report
    with pytest.raises(S.ShippedModelError, match="no shipped trained model"):
        run_study(StudyConfig.from_overrides(StudyConfig(), {"trained": "nope"}), tmp_path / "x")
    with pytest.raises(ValueError, match="no checkpoints"):
        run_study(StudyConfig.from_overrides(StudyConfig(), {"trained": "tiny-rl", "checkpoint_series": True}),
                  tmp_path / "y")  # fmt: skip


def test_a_finished_training_run_is_studied_without_training(tiny_study, tmp_path, monkeypatch, capsys):
    """--from-run reads out a run of welfare-axis train: the same model as the study that trained it, so the
    same vectors to the bit, its evaluation as the training record, nothing trained."""
    from probes.concept_vector import ConceptVector
    from training.checkpoints import RunDirError
    from welfare_axis import study

    cfg, out, summary = tiny_study
    run = out / "stages" / "train" / "run"
    monkeypatch.setattr(study, "main", lambda *a, **k: pytest.fail("a finished run must not be trained"))
    again = tmp_path / "again"
    assert cli(["run", "--fast", "--from-run", str(run), "--out", str(again), "--set", "n_per_class=8",
                "--set", "steer_evals=('sentiment',)", "--set", "n_prompts=2", "--set", "max_new_tokens=6",
                "--set", "forgetting_qa=4", "--set", "forgetting_texts=4"]) == 0  # fmt: skip
    read = StudySummary.load(again / "summary.json")
    assert (
        read.config["from_run"] == str(run) and read.model == "tiny-llama" and read.config["algo"] == cfg.algo
    )
    assert read.training.steps == summary.training.steps
    assert read.training.return_gain == summary.training.return_gain
    for concept in ("Mold", "Gold"):
        ours, theirs = (ConceptVector.load(d / "stages" / "readouts" / "vectors_trained" / concept)
                        for d in (again, out))  # fmt: skip
        assert all(torch.equal(ours[layer], theirs[layer]) for layer in theirs.layers)
    with pytest.raises(ValueError, match="--set model=tiny-llama"):
        run_study(StudyConfig.from_overrides(StudyConfig(), {"from_run": str(run)}), tmp_path / "x")
    with pytest.raises(RunDirError, match="not a training run"):
        run_study(StudyConfig.from_overrides(cfg, {"from_run": str(tmp_path)}), tmp_path / "y")
    with pytest.raises(ValueError, match="give one"):
        run_study(StudyConfig.from_overrides(cfg, {"from_run": str(run), "trained": "tbrm"}), tmp_path / "z")


def test_direction_cosines_across_studies(tiny_study, capsys):
    """A study against itself: v and the shift coincide (cos 1); cos(u, v_ref) is the vectors' own cosine; a
    direction equal to a study's v_Gold − u_Gold has shift cosine 1 with it."""
    from probes.concept_vector import ConceptVector
    from welfare_axis.directions import cli as directions_cli
    from welfare_axis.directions import direction_cosines, random_cosine_bound, reward_model_cosines

    _, out, summary = tiny_study
    rows = direction_cosines([out], out)
    assert {(r.concept, r.layer_is) for r in rows} >= {("Gold", "ℓ*"), ("Mold", "ℓ*")}
    vectors = out / "stages" / "readouts"
    for r in rows:
        v = ConceptVector.load(vectors / "vectors_trained" / r.concept)
        u = ConceptVector.load(vectors / "vectors_control" / r.concept)
        assert r.cos_v == pytest.approx(1.0) and r.cos_shift == pytest.approx(1.0)
        assert r.cos_u == pytest.approx(u.cosine(v)[r.layer], abs=1e-6)
        assert r.null95 == pytest.approx(1.959964 / np.sqrt(v[r.layer].numel()), rel=1e-5)
        if r.layer_is == "ℓ*":
            assert r.layer == summary.layer_star[r.concept]
    v = ConceptVector.load(vectors / "vectors_trained" / "Gold")
    u = ConceptVector.load(vectors / "vectors_control" / "Gold")
    last = max(v.layers)
    shift = ConceptVector({last: v[last] - u[last]}, concept="shift")
    (rm,) = reward_model_cosines(shift, [out])
    assert rm.cos_shift_gold == pytest.approx(1.0) and rm.layer == last
    assert random_cosine_bound(100) == pytest.approx(0.1959964, rel=1e-5)
    assert directions_cli(["--reference", str(out), "--runs", str(out)]) == 0
    assert "cos(v − u, v_ref − u_ref)" in capsys.readouterr().out
    # the base model's valence axis against each study's vectors: by hand from the same pieces
    from probes.emotions import emotion_vectors, valence_axis
    from training import Args, load_base_model
    from welfare_axis.directions import valence_direction

    train = json.loads((out / "stages" / "train" / "stage.json").read_text())["result"]
    base, tok = load_base_model(Args(**train["train_args"]))
    axis = valence_direction(base, tok, last)
    expected = valence_axis(emotion_vectors(base, tok, [last]), last).pc1.float()
    assert torch.equal(axis[last], expected)
    (row,) = reward_model_cosines(axis, [out])
    assert row.cos_v_gold == pytest.approx(float(torch.cosine_similarity(expected, v[last], dim=0)), abs=1e-6)
    assert directions_cli(["--reference", str(out), "--runs", str(out), "--valence"]) == 0
    assert "cos(valence, v_Gold − u_Gold)" in capsys.readouterr().out


def test_rl_after_a_warm_start_reports_both_gains_and_reuses_a_finished_warm_start(tmp_path, monkeypatch):
    """--preset sft-grpo: SFT first, then Dr. GRPO from its weights. The run's "before" is the warm start's
    "after" (copied, not replayed); the headline gain is over the untrained model, paired by maze, and equals
    the sum of the two stages' gains; a finished run with the warm start's settings is reused, not retrained,
    and one with other settings is refused with the differences named."""
    import numpy as np

    from welfare_axis import study

    env = {"n_turns": 3, "maze_size": 12, "progress": False}
    tiny = {**TINY, "train_overrides": {**TINY["train_overrides"], **env}, "warm_start_overrides": env}
    cfg = StudyConfig.from_overrides(
        StudyConfig.from_overrides(StudyConfig.preset("sft-grpo"), PRESETS["fast"]), tiny
    )
    out = tmp_path / "study"
    summary = run_study(cfg, out)
    warm_run, run = out / "stages" / "warm_start" / "run", out / "stages" / "train" / "run"
    warm_eval, run_eval = (json.loads((d / "eval.json").read_text()) for d in (warm_run, run))
    assert json.loads((warm_run / "config.json").read_text())["algo"] == "sft"
    config = json.loads((run / "config.json").read_text())
    assert config["algo"] == "dr_grpo" and config["init_from"] == str(warm_run)
    assert run_eval["before"] == warm_eval["after"] and "warm start" in run_eval["before_copied_from"]
    untrained, warm_after, after = (np.array(e["returns"]) for e in
                                    (warm_eval["before"], warm_eval["after"], run_eval["after"]))  # fmt: skip
    t = summary.training
    assert t.before["mean_return"] == pytest.approx(untrained.mean())
    assert t.return_gain.paired and t.return_gain.diff == pytest.approx((after - untrained).mean())
    assert t.warm_start.algo == "sft" and t.warm_start.return_gain.diff == pytest.approx(
        (warm_after - untrained).mean()
    )
    assert t.warm_start.then_gain.diff == pytest.approx((after - warm_after).mean())
    assert t.return_gain.diff == pytest.approx(t.warm_start.return_gain.diff + t.warm_start.then_gain.diff)
    assert "RL after a warm start: sft" in (out / "report.html").read_text()

    # a finished run with the warm start's settings stands in for it: nothing is trained again for it
    trained_algos = []
    real_main = study.main
    monkeypatch.setattr(study, "main", lambda args: trained_algos.append(args.algo) or real_main(args))
    reused = run_study(
        StudyConfig.from_overrides(cfg, {"warm_start_run": str(warm_run)}), tmp_path / "reused"
    )
    assert trained_algos == ["dr_grpo"]
    assert reused.training.return_gain == summary.training.return_gain  # the same training, the same numbers
    # read out later as a finished run (--from-run): the gain is still over the untrained model, not the warm start
    later = run_study(StudyConfig.from_overrides(StudyConfig.preset("fast"), {**TINY, "from_run": str(run)}),
                      tmp_path / "later")  # fmt: skip
    assert trained_algos == ["dr_grpo"]  # nothing trained
    assert later.training.return_gain == summary.training.return_gain
    assert later.training.warm_start.then_gain == summary.training.warm_start.then_gain
    assert later.training.warm_start.algo == "sft" and later.training.warm_start.run == str(warm_run)
    # a seed of the configuration that trained it (with its own layer rule), not of a run path
    from welfare_axis.claims import configuration_name, configuration_of

    study_config = json.loads((out / "study_config.json").read_text())
    assert later.training.trained_by == study_config
    assert configuration_of(later) == configuration_of(summary) != configuration_name(later.config)
    adapted = StudySummary.from_dict(
        later.to_dict() | {"config": later.config | {"layer_star_layers": "adapted"}}
    )
    assert configuration_of(adapted) == configuration_name(study_config | {"layer_star_layers": "adapted"})
    assert configuration_of(adapted).endswith("layer_star_layers=adapted")
    # the Dr. GRPO run is not an SFT one
    other = StudyConfig.from_overrides(cfg, {"warm_start_run": str(run)})
    with pytest.raises(
        ValueError, match="is not this study's warm start .*algo: 'dr_grpo' \\(run\\) vs 'sft'"
    ):
        run_study(other, tmp_path / "other")
    mismatched = StudyConfig.from_overrides(cfg, {"warm_start_overrides": {**env, "n_turns": 2}})
    with pytest.raises(ValueError, match="evaluated differently \\(n_turns 2 vs 3"):
        run_study(mismatched, tmp_path / "mismatched")
    with pytest.raises(ValueError, match="warm_start_run: run directory .* does not exist"):
        run_study(
            StudyConfig.from_overrides(cfg, {"warm_start_run": str(tmp_path / "nowhere")}), tmp_path / "bad"
        )
    with pytest.raises(ValueError, match="unknown algo 'nope'"):
        run_study(StudyConfig.from_overrides(cfg, {"warm_start": "nope"}), tmp_path / "bad")
    assert not (tmp_path / "bad").exists()  # refused before anything is written
    with pytest.raises(ValueError, match="warm_start is not set"):
        run_study(
            StudyConfig.from_overrides(StudyConfig(), {"warm_start_run": str(warm_run)}), tmp_path / "x"
        )


def test_gemma_sft_grpo_preset_is_the_recorded_gemma_warm_start():
    """--preset gemma-sft-grpo: Gemma's SFT at lr 5e-4 (the recorded run that fits the expert; the CPU recipe's
    2e-3 diverges on Gemma), then Dr. GRPO at a tenth of it, read where LoRA adapted. The warm start's settings
    are exactly the recorded run's, so that run can stand in for it (``warm_start_run``)."""
    from welfare_axis.study import load_run_args, warm_start_differences

    cfg = StudyConfig.preset("gemma-sft-grpo")
    run, warm = cfg.train_args(Path("run")), cfg.warm_start_args(Path("warm"))
    assert (cfg.model, cfg.warm_start, cfg.algo, cfg.layer_star_layers) == (
        "gemma3-270m",
        "sft",
        "dr_grpo",
        "adapted",
    )
    assert (warm.algo, warm.lr, run.lr) == ("sft", 5e-4, 5e-5)
    assert warm.lora_layers == run.lora_layers == 8
    record = Path(__file__).resolve().parents[1] / "docs" / "training_runs" / "gemma_sft_lr5e-4"
    recorded = load_run_args(record)
    assert warm_start_differences(cfg, recorded) == []
    assert warm_start_differences(StudyConfig.preset("sft-grpo"), recorded) == [
        "lr: 0.0005 (run) vs 0.002 (warm start)",
        "model: 'gemma3-270m' (run) vs 'smollm2-135m-instruct' (warm start)",
    ]


def test_sft_grpo_all_preset_is_the_recorded_every_layer_run():
    """--preset sft-grpo-all: the sft-grpo preset with LoRA on every layer at a quarter of both step sizes; its
    settings are exactly the recorded study's (docs/study_runs/sft_grpo_all_smollm2_seed0)."""
    import dataclasses
    import json

    cfg = StudyConfig.preset("sft-grpo-all")
    run, warm = cfg.train_args(Path("run")), cfg.warm_start_args(Path("warm"))
    assert (warm.algo, run.algo) == ("sft", "dr_grpo") and warm.lora_layers is run.lora_layers is None
    top8 = StudyConfig.preset("sft-grpo")
    assert warm.lr == top8.warm_start_args(Path("w")).lr / 4 and run.lr == top8.train_args(Path("r")).lr / 4
    record = Path(__file__).resolve().parents[1] / "docs" / "study_runs" / "sft_grpo_all_smollm2_seed0"
    recorded = json.loads((record / "study_config.json").read_text())
    current = json.loads(json.dumps(dataclasses.asdict(cfg)))
    assert current.pop("activation_cache") is True  # later than the record; it changes no number
    assert current == recorded
