"""probes.readout_report: every readout in one call (tiny model: fast; SmolLM2-135M-Instruct: slow)."""

from __future__ import annotations

import base64
import dataclasses
import json

import numpy as np
import pytest

from probes.models import tiny_model
from probes.readout_markdown import markdown_tables, uncertainty_table
from probes.readout_report import ReportSettings, load_figures, readout_report
from probes.readouts import ReadoutReport

SECTIONS = [
    "extraction",
    "geometry",
    "logit_lens",
    "emotions",
    "sentiment",
    "tracking",
    "q_readout",
    "env_probes",
]

TINY = ReportSettings.smoke()


def _array(values):
    """A plotly JSON array as numpy (plotly 6 writes numeric arrays as base64 ``bdata``)."""
    if isinstance(values, dict) and "bdata" in values:
        flat = np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"])
        return flat.reshape([int(n) for n in str(values.get("shape", len(flat))).split(",")])
    return np.asarray(values)


def _without_timings(report):
    return dataclasses.replace(report, timings_s={}, peak_rss_gb={})


def test_report_on_a_tiny_model_has_every_section_and_writes_json(tmp_path):
    model, tok = tiny_model("llama", n_layers=3)
    report = readout_report(model, tok, dataclasses.replace(TINY, out=tmp_path / "r.json"))
    saved = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert [k for k in SECTIONS if k in saved] == SECTIONS
    assert saved == report.to_dict() and ReadoutReport.load(tmp_path / "r.json") == report  # typed round trip
    assert report.geometry.centred.layer == 2  # floor(2 * 3 / 3) clipped to L - 1
    consistency = report.extraction.consistency_at_layer_star  # the steerability predictor, in [-1, 1]
    assert set(consistency) == {"Mold", "Gold"} and all(-1 <= x <= 1 for x in consistency.values())
    est = report.geometry.estimates  # every geometry number beside its interval and permutation null
    assert est.n_shuffles == TINY.null_shuffles and est.n_boot == TINY.n_boot
    assert est.cos_mold_gold_min.value == report.geometry.cos_mold_gold.min
    assert est.cos_mold_gold_avg.value == pytest.approx(report.geometry.cos_mold_gold.avg, abs=1e-6)
    assert est.last_layer_pre_norm.value == report.geometry.cos_mold_gold.by_layer[-1]
    assert est.path_reference_last.value == report.geometry.path_reference.last_layer
    assert est.centred["Mold·Gold"].value == report.geometry.centred.pairs["Mold·Gold"]
    assert est.cos_mold_gold_min.null_mean <= est.cos_mold_gold_avg.null_mean
    assert est.cos_mold_gold_min.ci_low <= est.cos_mold_gold_min.ci_high and 0 < est.cos_mold_gold_min.p <= 1
    lens = report.logit_lens
    assert lens.of("Mold").failure_auroc_estimate.value == lens.of("Mold").failure_auroc
    assert lens.failure_tokens and " cannot" in lens.failure_tokens  # whole words of this vocabulary
    assert report.emotions.scatter.slope_estimate.value == report.emotions.scatter.slope
    t = report.tracking
    assert t.maze_d_gold_estimate.value == t.maze_d_gold_vector_at_layer_star
    assert t.feedback_d_gold_estimate.value == t.feedback_d_gold_vector_at_layer_star
    assert (
        t.feedback_answers == "reference"
        and t.feedback_n_correct == t.feedback_n_incorrect == TINY.feedback_n
    )
    assert report.q_readout.spearman_pooled_estimate.value == report.q_readout.spearman_pooled_centred
    assert report.q_readout.implicit_reward_spearman_estimate is None  # no reference model given
    assert report.settings["matched_split"] is True and "95% CI" in uncertainty_table(report)
    assert len(report.geometry.cos_mold_gold.by_layer) == 3
    assert saved["n_layers"] == 3 and saved["geometry"]["centred"]["layer"] == 2
    figures = load_figures(tmp_path / "r.json")  # written beside the JSON, plotly JSON (no pickle)
    assert sorted(figures) == ["centred_geometry", "emotion_scatter", "logit_lens_gold", "logit_lens_mold",
                               "probe_accuracy", "q_scatter"]  # fmt: skip
    centred = _array(figures["centred_geometry"].data[0].z)
    assert centred[0, 1] == pytest.approx(report.geometry.centred.pairs["Mold·Gold"], abs=1e-6)
    assert len(_array(figures["emotion_scatter"].data[0].x)) == report.emotions.n_emotions
    (tmp_path / "old.json").write_text('{"n_layers": 3}')  # written before reports had figures
    assert load_figures(tmp_path / "old.json") == {}
    table = markdown_tables(report)
    assert f"{report.geometry.cos_mold_gold.min:+.3f}" in table
    assert "| neighbour_N |" in table


def test_layer_star_candidates_confine_the_selected_layers():
    model, tok = tiny_model("llama", n_layers=3)
    report = readout_report(
        model, tok, dataclasses.replace(TINY, layer_star_candidates=(2,), null_shuffles=0, n_boot=0)
    )
    assert (
        report.extraction.layer_star == {"Mold": 2, "Gold": 2}
        and report.extraction.best_mean_auroc_layer == 2
    )
    assert (
        report.settings["layer_star_candidates"] == (2,) and len(report.geometry.cos_mold_gold.by_layer) == 3
    )
    # null_shuffles 0 means no nulls anywhere, feedback tracking included (it used to run a 1-shuffle null: NaN)
    assert report.tracking.feedback_d_gold_estimate is None and report.geometry.estimates is None
    assert report.tracking.feedback_d_gold_vector_at_layer_star is not None
    with pytest.raises(ValueError, match="tracking_vectors are read with a permutation null"):
        readout_report(
            model, tok, dataclasses.replace(TINY, null_shuffles=0), tracking_vectors={"Gold": None}
        )
    with pytest.raises(ValueError, match=r"within the model's layers 0..2 \(bad: \[5\]\)"):
        readout_report(
            model, tok, dataclasses.replace(TINY, layer_star_candidates=(5,), null_shuffles=0, n_boot=0)
        )


@pytest.mark.slow
def test_readouts_on_smollm2_are_finite_and_seeded():
    from probes.models import load_model

    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    first = readout_report(model, tok, TINY)  # raises on any non-finite number
    second = readout_report(model, tok, TINY)
    assert _without_timings(first) == _without_timings(second)
    assert first.n_layers == 30 and first.d_model == 576
    assert first.geometry.centred.layer == 20
    assert first.logit_lens.layer == 25
    assert len(first.logit_lens.of("Mold", "raw").top) == 5
    assert first.emotions.n_emotions == TINY.n_emotions
    assert -1.0 <= first.geometry.cos_mold_gold.min <= 1.0


def test_report_reads_the_maze_with_the_settings_tile_glyphs(monkeypatch):
    import probes.readout_report as report

    seen = []

    class Stop(Exception):
        pass

    def spy(model, tokenizer, *, config, **kwargs):
        seen.append(config)
        raise Stop

    monkeypatch.setattr(report, "reward_activations", spy)
    model, tok = tiny_model("llama", n_layers=2)
    for tiles in ("office", "swap"):
        with pytest.raises(Stop):
            readout_report(model, tok, dataclasses.replace(TINY, tiles=tiles))
    assert [c.tiles.name for c in seen] == ["office", "swap"]
    assert seen[1].tiles.mold == seen[0].tiles.gold  # swap: the Mold glyph is office's Gold glyph


def test_the_last_layer_after_the_final_norm_is_eq1_on_normed_activations():
    import torch

    from probes import layers
    from probes.extract import ClassActivations, aggregate
    from probes.nulls import TripletResampler
    from probes.readout_report import geometry_estimates

    model, _ = tiny_model("llama", n_layers=2)
    norm = layers.final_norm(model)
    with torch.no_grad():  # a gain that is not all ones, so the norm changes directions
        norm.weight.copy_(torch.linspace(0.2, 3.0, norm.weight.numel()))
    g = torch.Generator().manual_seed(0)
    width = layers.d_model(model)
    acts = ClassActivations(
        {c: {layer: torch.randn(9, width, generator=g) for layer in (0, 1)} for c in ("Mold", "Gold", "Path")}
    )
    settings = dataclasses.replace(TINY, null_shuffles=5, n_boot=5)
    est = geometry_estimates(model, acts, TripletResampler(acts, n_shuffles=5, n_boot=5), 1, settings)
    with torch.no_grad():
        normed = ClassActivations({c: {1: norm(a[1][:, None, :])[:, 0]} for c, a in acts.activations.items()})
    v = aggregate(normed, "mean_diff")
    expected = torch.nn.functional.cosine_similarity(v["Mold"][1].double(), v["Gold"][1].double(), dim=0)
    assert est.last_layer_post_norm.value == pytest.approx(float(expected), abs=1e-6)
    raw = aggregate(acts, "mean_diff")
    assert est.last_layer_pre_norm.value == pytest.approx(
        float(torch.nn.functional.cosine_similarity(raw["Mold"][1].double(), raw["Gold"][1].double(), dim=0)),
        abs=1e-6,
    )
    assert est.last_layer_post_norm.value != pytest.approx(est.last_layer_pre_norm.value, abs=1e-3)


def test_optional_maps_of_estimates_load_back_typed():
    from probes.readouts import Estimate, Tracking

    est = Estimate(
        value=0.1, ci_low=-0.2, ci_high=0.4, null_mean=0.0, null_sd=0.1, p=0.3, alternative="greater"
    )
    t = Tracking(0.1, -0.1, 0.2, [0.1, 0.2], None, None, maze_d_on_reference_vectors={"Gold": est})
    back = Tracking.from_dict(json.loads(json.dumps(t.to_dict())))
    assert back == t and isinstance(back.maze_d_on_reference_vectors["Gold"], Estimate)
