"""The claims table: spreads across seeds, configurations, and every verdict rule."""

from __future__ import annotations

import math

import pytest
from scipy.stats import t

from probes.readouts import Estimate
from welfare_axis.claims import (
    CLAIMS,
    Claim,
    PreregisteredTest,
    Spread,
    claims_markdown,
    claims_table,
    configuration_name,
    preregistered_rows,
    preregistered_verdict,
)
from welfare_axis.summary import Measure, StudySummary, TrainingSummary

CLAIMS_BY_KEY = {c.key: c for c in CLAIMS}

COS = Claim("antiparallel", "min cos", "cos_min", "lower", "−0.9")


def summary(trained, control, *, seed=0, tiles="office", p=0.01, fast=False, algo="tbrm"):
    estimate = Estimate(
        value=trained,
        ci_low=trained - 0.1,
        ci_high=trained + 0.1,
        null_mean=-0.5,
        null_sd=0.1,
        p=p,
        alternative="less",
    )
    measures = {
        "cos_min": Measure(section="geometry", trained=trained, control=control, trained_estimate=estimate)
    }
    config = {"model": "m", "algo": algo, "finetune": "lora", "seed": seed, "tiles": tiles}
    return StudySummary(config=config, fast=fast, model="m", training=TrainingSummary(steps=1), measures=measures,
                        layer_star={"Mold": 1, "Gold": 1})  # fmt: skip


def runs(pairs, **kw):
    return {f"{kw.get('tiles', 'office')}{i}": summary(a, b, seed=i, **kw) for i, (a, b) in enumerate(pairs)}


def test_spread_is_the_mean_and_t_interval_across_seeds():
    s = Spread.of([1.0, 2.0, 4.0, None, math.nan])
    half = t.ppf(0.975, 2) * 1.5275252316519468 / math.sqrt(3)
    assert s.values == (1.0, 2.0, 4.0) and s.mean == pytest.approx(7 / 3)
    assert (s.ci_low, s.ci_high) == pytest.approx((7 / 3 - half, 7 / 3 + half))
    assert math.isnan(Spread.of([1.0]).ci_low) and "1 seed" in Spread.of([1.0]).text()
    assert Spread.of([]).text() == "—"


def test_a_replication_needs_three_seeds_a_signed_interval_the_null_and_the_swap():
    office = runs([(-0.8, -0.2), (-0.7, -0.25), (-0.9, -0.15)])
    (row,) = claims_table(office, [COS])
    assert row.verdict == "replicates" and "no tile-swap runs yet" in row.reason
    assert row.difference.mean == pytest.approx(-0.6) and row.null.mean == -0.5
    swap_follows = runs([(-0.75, -0.2), (-0.85, -0.2)], tiles="swap")
    (row,) = claims_table({**office, **swap_follows}, [COS])
    assert (
        row.verdict == "replicates" and "tile-swap follows" in row.reason and len(row.tile_swap.values) == 2
    )
    swap_flips = runs([(0.3, -0.2), (0.4, -0.2)], tiles="swap")
    (row,) = claims_table({**office, **swap_flips}, [COS])
    assert row.verdict == "not distinguishable from control" and "glyphs" in row.reason


def test_the_other_verdicts():
    (row,) = claims_table(runs([(-0.3, -0.2), (-0.1, -0.2), (-0.25, -0.2)]), [COS])
    assert row.verdict == "not distinguishable from control"
    (row,) = claims_table(runs([(0.3, -0.2), (0.35, -0.2), (0.4, -0.25)]), [COS])
    assert row.verdict == "opposite"
    (row,) = claims_table(runs([(-0.8, -0.2), (-0.7, -0.25), (-0.9, -0.15)], p=0.2), [COS])
    assert row.verdict == "not distinguishable from the null" and "0 of 3" in row.reason
    (row,) = claims_table(runs([(-0.8, -0.2), (-0.7, -0.25)]), [COS])
    assert row.verdict == "too few seeds" and "2 seed" in row.reason
    higher = Claim("x", "x", "cos_min", "higher", "")
    (row,) = claims_table(runs([(0.3, -0.2), (0.35, -0.2), (0.4, -0.25)]), [higher])
    assert row.verdict == "replicates"
    (row,) = claims_table(runs([(0.0, 0.0), (0.0, 0.0), (0.0, 0.0)]), [COS])  # e.g. no refusal at any α
    assert row.verdict == "not measurable" and "+0.000" in row.reason
    (row,) = claims_table(runs([(0.0, 0.0), (0.0, 0.0), (0.1, 0.0)]), [COS])  # one seed moved: measurable
    assert row.verdict == "not distinguishable from control"


def test_the_preregistered_rule_reads_trained_minus_untrained_on_both_sides_of_its_test_set_only():
    office = runs(
        [(-0.8, -0.2), (-0.7, -0.25), (-0.9, -0.15)], p=0.3
    )  # no seed beats its null: irrelevant here
    swap = runs([(-0.75, -0.2), (-0.85, -0.2), (-0.8, -0.3)], tiles="swap")
    (row,) = claims_table({**office, **swap}, [COS])
    assert row.verdict == "not distinguishable from the null"
    assert preregistered_verdict(row, "lower")[0] == "confirmed"
    assert preregistered_verdict(row, "higher") == (
        "opposite",
        "the office and tile-swap intervals lie wholly on the other side of 0",
    )
    wide = runs(
        [(-0.75, -0.2), (-0.21, -0.2), (-0.8, -0.3)], tiles="swap"
    )  # all below 0, interval reaches it
    (row,) = claims_table({**office, **wide}, [COS])
    verdict, reason = preregistered_verdict(row, "lower")
    assert (
        verdict == "in the predicted direction, not confirmed"
        and "all 6 runs" in reason
        and "tile-swap" in reason
    )
    one_up = runs([(-0.75, -0.2), (-0.1, -0.2), (-0.8, -0.3)], tiles="swap")
    (row,) = claims_table({**office, **one_up}, [COS])
    assert preregistered_verdict(row, "lower") == (
        "not confirmed",
        "1 of 6 runs are not on the predicted side",
    )
    (row,) = claims_table({**office, **dict(list(swap.items())[:2])}, [COS])
    assert preregistered_verdict(row, "lower")[0] == "too few seeds"
    # the test set: its configuration read at its size; other runs are left out
    test = PreregisteredTest(
        claims=("antiparallel",), configuration="m tbrm lora", n_per_class=150, registered="r"
    )
    sized = {name: StudySummary.from_dict({**s.to_dict(), "config": {**s.config, "n_per_class": 150}})
             for name, s in {**office, **swap}.items()}  # fmt: skip
    (only,) = preregistered_rows(sized, test)
    assert only[0].claim == "antiparallel" and only[1] == "confirmed"
    assert preregistered_rows({**office, **swap}, test) == []  # read at another size
    assert preregistered_rows(sized, PreregisteredTest(("antiparallel",), "m dpo lora", 150, "r")) == []


def test_configurations_group_seeds_and_tiles_and_leave_out_fast_runs():
    all_runs = {**runs([(-0.8, -0.2)] * 3), "fast": summary(-0.9, 0.0, fast=True),
                "sft": summary(-0.5, -0.2, algo="sft")}  # fmt: skip
    rows = claims_table(all_runs, [COS])
    assert [r.configuration for r in rows] == ["m sft lora", "m tbrm lora"]
    assert len(rows[1].trained.values) == 3  # the fast run is not a seed
    assert configuration_name({"model": "m", "algo": "tbrm", "train_overrides": {"lr": 5e-4}}) == (
        "m tbrm train_overrides=lr=0.0005"
    )
    # a run-only setting (the axis monitor reads without changing the weights) does not split a configuration
    monitored = {"model": "m", "algo": "tbrm", "train_overrides": {"lr": 5e-4, "monitor_every": 2}}
    assert configuration_name(monitored) == "m tbrm train_overrides=lr=0.0005"
    assert (
        configuration_name({"model": "m", "algo": "tbrm", "train_overrides": {"monitor_every": 2}})
        == "m tbrm"
    )
    assert "| claim | configuration |" in claims_markdown(rows) and claims_markdown([]).startswith("(no")
    assert claims_markdown(rows[1:]).startswith("| claim | paper |")  # one configuration: named by the caller
    assert {c.key for c in CLAIMS} >= {"antiparallel", "path_reference", "failure_tokens", "tracking"}


def test_steering_claims_read_v_against_its_norm_matched_control():
    import dataclasses

    claim = next(c for c in CLAIMS if c.key == "steer_v_Gold_sentiment")
    base = {f"r{i}": summary(-0.8, -0.2, seed=i) for i in range(3)}
    steered = {name: dataclasses.replace(s, steering={"v_Gold_sentiment": {"slope": 0.5 + 0.1 * i},
                                                     "u_Gold_sentiment": {"slope": 0.01 * i}})
               for i, (name, s) in enumerate(base.items())}  # fmt: skip
    (row,) = claims_table(steered, [claim])
    assert row.trained.values == (0.5, 0.6, 0.7) and row.untrained.values == (0.0, 0.01, 0.02)
    assert row.verdict == "replicates" and row.p_values == ()
    (missing,) = claims_table(base, [claim])
    assert missing.verdict == "not measured"


def test_figure_groups_are_labelled_by_what_tells_them_apart():
    """The committed records: three office seeds and one tile-swap run of one configuration."""
    from pathlib import Path

    from welfare_axis.claims_figures import group_runs

    records = Path(__file__).resolve().parents[1] / "docs" / "study_runs"
    runs = [records / n for n in ("default_smollm2", "default_smollm2_seed1", "default_smollm2_seed2",
                                  "tile_swap_smollm2_seed0")]  # fmt: skip
    groups = group_runs(runs)
    assert groups == {"office tiles": runs[:3], "tiles swap": runs[3:]}
    (label,) = group_runs(runs[:1])  # one group: its full configuration name
    assert label.startswith("smollm2-135m-instruct tbrm lora")


def test_later_readouts_of_trained_runs_are_seeds_of_the_configuration_that_trained_them():
    """The committed adapted readouts of SFT→GRPO seeds 0 and 1 (``--from-run <study>/stages/train/run``) pool
    as two seeds of the sft-grpo configuration read at the adapted layers, not as two run paths."""
    from pathlib import Path

    from welfare_axis.claims import configuration_of

    records = Path(__file__).resolve().parents[1] / "docs" / "study_runs"
    later = [StudySummary.load(records / f"sft_grpo_smollm2_seed{i}_adapted") for i in (0, 1)]
    trained = StudySummary.load(records / "sft_grpo_smollm2_seed0")
    assert later[0].config["from_run"] != later[1].config["from_run"]
    assert (
        configuration_of(later[0])
        == configuration_of(later[1])
        == configuration_name(trained.config | {"layer_star_layers": "adapted"})
    )
    assert configuration_of(trained) == configuration_name(trained.config) != configuration_of(later[0])
    rows = claims_table({"a": later[0], "b": later[1]}, CLAIMS[:1])
    assert len(rows) == 1 and len(rows[0].trained.values) == 2


def test_one_trained_model_is_not_counted_as_two_seeds():
    """The committed default seed 0 and its 40-prompt sentiment rerun are one trained model read twice."""
    from pathlib import Path

    records = Path(__file__).resolve().parents[1] / "docs" / "study_runs"
    twice = {n: StudySummary.load(records / n) for n in ("default_smollm2", "default_smollm2_sentiment40")}
    with pytest.raises(ValueError, match="both seed 0 of .* the same trained model read twice.*pass one"):
        claims_table(twice, CLAIMS[:1])
    swap = {"a": summary(-0.8, -0.2, seed=0), "b": summary(-0.7, -0.2, seed=0, tiles="swap")}
    assert len(claims_table(swap, [COS])) == 1  # a seed's tile-swap run is its control, not a duplicate


def test_a_claim_read_where_v_equals_u_is_not_a_trained_direction():
    """SFT→GRPO adapts the top 8 layers and the default rule puts ℓ* below them (cos(v, u) = 1): the committed
    three seeds' trained − untrained feedback tracking lies below 0 (the models answer differently), but the
    vector read is the control's; logits-as-Q reads no vector and keeps its verdict."""
    from pathlib import Path

    records = Path(__file__).resolve().parents[1] / "docs" / "study_runs"
    seeds = {i: StudySummary.load(records / f"sft_grpo_smollm2_seed{i}") for i in range(3)}
    rows = {r.claim: r for r in claims_table(seeds)}
    feedback = rows["feedback_tracking"]
    assert feedback.difference.ci_high < 0  # would read "opposite" by the interval alone
    assert (
        feedback.verdict == "not distinguishable from control" and "v_Gold equals u_Gold" in feedback.reason
    )
    assert rows["logits_as_q"].verdict == "replicates"
    assert all(CLAIMS_BY_KEY[k].vector_is_the_control(s) for k in ("tracking",) for s in seeds.values())
    default = StudySummary.load(records / "default_smollm2")  # every layer adapted: v moved at ℓ*
    assert not CLAIMS_BY_KEY["tracking"].vector_is_the_control(default)
    assert not CLAIMS_BY_KEY["logits_as_q"].vector_is_the_control(seeds[0])


def test_the_claims_figures_regenerate_from_committed_records():
    """Records keep readouts_<which>.json beside summary.json: the per-layer band and the Q points read them."""
    import json
    from pathlib import Path

    import numpy as np

    from welfare_axis.claims_figures import layer_cosine_bands, q_agreement_points

    records = Path(__file__).resolve().parents[1] / "docs" / "study_runs"
    runs = [records / f"sft_grpo_smollm2_seed{i}_adapted" for i in range(3)] + [
        records / "sft_grpo_swap_smollm2_seed0"
    ]
    curves = [
        json.loads((r / "readouts_trained.json").read_text())["geometry"]["cos_mold_gold"]["by_layer"]
        for r in runs[:3]
    ]
    bands = layer_cosine_bands(runs)
    (office,) = [
        t for t in bands.data if t.name and "trained v" in t.name and "swap" not in t.name and t.mode
    ]
    np.testing.assert_allclose(office.y, np.mean(curves, axis=0))
    assert any(t.name and "tiles swap: trained v" in t.name for t in bands.data)
    points = q_agreement_points(runs)
    assert sum(len(t.y) for t in points.data) == 8  # 4 runs × (trained, untrained)


def test_a_later_readout_is_the_seed_that_trained_it():
    """Two readouts of SFT→GRPO seed 2's run are one trained model, whatever seed each readout used."""
    from pathlib import Path

    record = Path(__file__).resolve().parents[1] / "docs" / "study_runs" / "sft_grpo_smollm2_seed2_adapted"
    read = StudySummary.load(record)
    resplit = StudySummary.from_dict(read.to_dict() | {"config": read.config | {"seed": 0}})
    with pytest.raises(ValueError, match="both seed 2 of"):
        claims_table({"a": read, "b": resplit}, CLAIMS[:1])


def test_a_measure_added_after_a_study_ran_is_read_from_its_own_readouts(tmp_path):
    """Session 19's records predate ``cos_last_layer``: loading one reads it from the record's two readouts
    (cos(v_Mold, v_Gold) at the last layer before the final norm), keeps every recorded measure, and the
    claims table pools it across the seeds like any other measure."""
    import json
    import shutil
    from pathlib import Path

    records = Path(__file__).resolve().parents[1] / "docs" / "study_runs"
    names = [f"sft_grpo_smollm2_seed{i}_n150" for i in (0, 1)] + ["sft_grpo_smollm2_seed2_adapted_n150"]
    last = {}
    for name in names:
        assert "cos_last_layer" not in json.loads((records / name / "summary.json").read_text())["measures"]
        curves = [json.loads((records / name / f"readouts_{w}.json").read_text())["geometry"]["cos_mold_gold"]
                  for w in ("trained", "control")]  # fmt: skip
        last[name] = (curves[0]["by_layer"][-1], curves[1]["by_layer"][-1])
    loaded = {name: StudySummary.load(records / name) for name in names}
    for name, s in loaded.items():
        m = s.measure("cos_last_layer")
        assert (m.trained, m.control) == last[name] and m.trained_estimate.value == m.trained
        recorded = json.loads((records / name / "summary.json").read_text())["measures"]["cos_min"]
        assert s.measure("cos_min").trained == recorded["trained"]
    (row,) = claims_table(loaded, [CLAIMS_BY_KEY["antiparallel_last"]])
    assert row.difference.mean == pytest.approx(sum(t - c for t, c in last.values()) / 3)
    alone = tmp_path / "alone"  # a summary without its readouts is read as recorded
    alone.mkdir()
    shutil.copy(records / names[0] / "summary.json", alone / "summary.json")
    assert "cos_last_layer" not in StudySummary.load(alone / "summary.json").measures
