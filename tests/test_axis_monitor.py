"""The axis monitor: live readings in metrics.jsonl equal an extraction on the saved checkpoint, and the
monitor changes nothing that is trained."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import training as T
from probes.extract import aggregate, reward_activations
from probes.geometry import cosine
from probes.plots import axis_monitor_figure
from training.monitor import axis_records, start_monitor

TINY = dict(model="tiny-llama", steps=2, episodes_per_step=4, group_size=2, n_turns=3, maze_size=12, progress=False,
            threads=1, lr=1e-2, checkpoint_every=1, keep_checkpoints=10)  # fmt: skip


@pytest.fixture(scope="module")
def monitored(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitor")
    T.main(T.Args(**TINY, monitor_every=1, monitor_n_per_class=8, out=str(tmp / "on")))
    return tmp


def test_every_monitored_step_logs_the_axis_and_the_untrained_reading_is_v_equals_u(monitored):
    head, records = axis_records(monitored / "on")
    base = head["base"]
    assert base["cos_mold_u"] == [1.0] * 2 and base["cos_gold_u"] == [1.0] * 2  # tiny-llama: 2 layers
    assert head["settings"]["n_per_class"] == 8 and head["settings"]["layer"] == base["layer"]
    assert [("axis" in r) for r in records] == [True, True]
    for r in records:
        axis = r["axis"]
        assert len(axis["cos_mold_gold"]) == 2 and all(-1 <= x <= 1 for x in axis["cos_mold_gold"])
        assert axis["cos_gold_valence"] is not None and r["monitor_seconds"] > 0
    fig = axis_monitor_figure(head, records)
    assert len(fig.data) >= 7 and list(fig.data[2].x) == [0, 1, 2]  # step 0 is the untrained reading


def test_a_reading_equals_extraction_on_the_saved_checkpoint(monitored):
    run = monitored / "on"
    _, records = axis_records(run)
    model, tok = T.load_trained(run, checkpoint="step_000002", merge=True)
    args = T.load_run_args(run)
    acts = reward_activations(model, tok, n_per_class=8, config=T.maze_config(args), batch_size=8)
    train, _ = acts.split(0.5, seed=0, matched=True)
    v = aggregate(train, "mean_diff", classes=["Mold", "Gold"])
    want = [cosine(v["Mold"][layer], v["Gold"][layer]) for layer in v["Mold"].layers]
    assert records[1]["axis"]["cos_mold_gold"] == pytest.approx(want, abs=1e-4)


def test_the_monitor_changes_nothing_that_is_trained(monitored):
    T.main(T.Args(**TINY, out=str(monitored / "off")))
    on = load_file(str(monitored / "on" / "checkpoints" / "step_000002" / "trainable.safetensors"))
    off = load_file(str(monitored / "off" / "checkpoints" / "step_000002" / "trainable.safetensors"))
    assert all(torch.equal(on[k], off[k]) for k in on)
    strip = ("axis", "monitor_seconds", "step_seconds", "rollout_seconds", "update_seconds", "tokens_per_s")
    rows = [[{k: v for k, v in json.loads(line).items() if k not in strip}
             for line in (monitored / name / "metrics.jsonl").read_text().splitlines()] for name in ("on", "off")]  # fmt: skip
    assert rows[0] == rows[1]


def test_monitor_errors_name_the_fix(tmp_path):
    policy = T.Policy(model=torch.nn.Linear(2, 2), tokenizer=None, reference=None, is_lora=False)
    args = T.Args(**{**TINY, "finetune": "full"}, monitor_every=1, out=str(tmp_path / "x"))

    class Ctx:
        distributed, is_main = False, True

    with pytest.raises(ValueError, match="needs the untrained weights"):
        start_monitor(policy, args, tmp_path, 1, Ctx())
    Ctx.distributed = True
    with pytest.raises(ValueError, match="one process"):
        start_monitor(policy, args, tmp_path, 0, Ctx())
    with pytest.raises(FileNotFoundError, match="monitor_every > 0"):
        axis_records(tmp_path)
    with pytest.raises(ValueError, match="monitor_n_per_class"):
        T.main(T.Args(**TINY, monitor_every=1, monitor_n_per_class=4, out=str(tmp_path / "y")))


def test_bench_monitor_overhead_reads_both_sides_from_one_run(monitored):
    from bench.monitor import overhead

    ratio, steps, monitor, readings = overhead(monitored / "on")
    records = [json.loads(line) for line in (monitored / "on" / "metrics.jsonl").read_text().splitlines()]
    assert readings == 2 and monitor == pytest.approx(sum(r["monitor_seconds"] for r in records))
    assert ratio == pytest.approx((steps + monitor) / steps) and ratio > 1
    with pytest.raises(ValueError, match="no axis readings"):
        overhead(monitored / "off") if (monitored / "off").is_dir() else overhead(_unmonitored(monitored))


def _unmonitored(tmp):
    T.main(T.Args(**TINY, out=str(tmp / "plain")))
    return tmp / "plain"
