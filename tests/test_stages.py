"""Stage caching: keys, reruns on changed inputs, interrupted stages, incompatible run dirs."""

from __future__ import annotations

import pytest

from probes.artifacts import write_json
from welfare_axis.stages import IncompatibleRunError, StageRunner, config_hash


def test_cached_stage_is_skipped_and_changed_config_reruns(tmp_path):
    calls = []

    def work(d):
        calls.append(1)
        (d / "out.txt").write_text("hello")
        return {"n": len(calls)}

    run = StageRunner(tmp_path)
    a = run.stage("s", {"x": 1}, work)
    assert not a.cached and (a.dir / "out.txt").read_text() == "hello"
    again = StageRunner(tmp_path).stage("s", {"x": 1}, work)
    assert again.cached and len(calls) == 1
    assert again.peak_rss_gb == a.peak_rss_gb > 0  # the peak memory it ran with, kept in stage.json
    c = StageRunner(tmp_path).stage("s", {"x": 2}, work)
    assert not c.cached and c.result == {"n": 2}


def test_downstream_reruns_when_upstream_changes(tmp_path):
    run = StageRunner(tmp_path)
    run.stage("a", {"x": 1}, lambda d: {})
    first = run.stage("b", {}, lambda d: {"v": 1}, depends=["a"])
    run2 = StageRunner(tmp_path)
    run2.stage("a", {"x": 2}, lambda d: {})
    second = run2.stage("b", {}, lambda d: {"v": 2}, depends=["a"])
    assert first.key != second.key and not second.cached and second.result == {"v": 2}


def test_interrupted_stage_is_not_taken_as_finished(tmp_path):
    def crash(d):
        (d / "half.txt").write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        StageRunner(tmp_path).stage("s", {}, crash)
    assert not (tmp_path / "stages" / "s").exists()
    out = StageRunner(tmp_path).stage("s", {}, lambda d: {"ok": True})
    assert out.result == {"ok": True} and not (out.dir / "half.txt").exists()


def test_resumable_stage_keeps_its_work_dir(tmp_path):
    def crash(d):
        (d / "ckpt").write_text("step 3")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        StageRunner(tmp_path).stage("train", {"steps": 5}, crash, resumable=True)
    out = StageRunner(tmp_path).stage(
        "train", {"steps": 5}, lambda d: {"resumed_from": (d / "ckpt").read_text()}, resumable=True
    )
    assert out.result == {"resumed_from": "step 3"}


def test_incompatible_run_dir_gets_a_clear_error(tmp_path):
    write_json(tmp_path / "run.json", {"run_format": 0, "version": "0.0.1"})
    with pytest.raises(IncompatibleRunError, match="Use a new --out directory"):
        StageRunner(tmp_path)


def test_missing_dependency_and_bad_result(tmp_path):
    run = StageRunner(tmp_path)
    with pytest.raises(KeyError, match="depends on 'train'"):
        run.stage("extract", {}, lambda d: {}, depends=["train"])
    with pytest.raises(TypeError, match="must return a dict"):
        run.stage("x", {}, lambda d: [1])


def test_config_hash_ignores_key_order():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1}) != config_hash({"a": 2, "b": 1})
