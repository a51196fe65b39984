"""probes.readout_report: every readout in one call (tiny model: fast; SmolLM2-135M-Instruct: slow)."""

from __future__ import annotations

import base64
import dataclasses
import json

import numpy as np
import pytest

from probes.models import tiny_model
from probes.readout_report import ReportSettings, load_figures, markdown_tables, readout_report
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
    return dataclasses.replace(report, timings_s={})


def test_report_on_a_tiny_model_has_every_section_and_writes_json(tmp_path):
    model, tok = tiny_model("llama", n_layers=3)
    report = readout_report(model, tok, dataclasses.replace(TINY, out=tmp_path / "r.json"))
    saved = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert [k for k in SECTIONS if k in saved] == SECTIONS
    assert saved == report.to_dict() and ReadoutReport.load(tmp_path / "r.json") == report  # typed round trip
    assert report.geometry.centred.layer == 2  # floor(2 * 3 / 3) clipped to L - 1
    null = report.geometry.cos_mold_gold_null  # Eq. 1's cosine beside its permutation null
    assert (
        null.n_shuffles == TINY.null_shuffles
        and 0 < null.p_min <= 1
        and null.min_null_mean <= null.avg_null_mean
    )
    assert report.settings["matched_split"] is True and "permutation null" in markdown_tables(report)
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
