"""Atomic writes leave nothing half-written."""

from __future__ import annotations

import errno

import pytest

from probes.artifacts import atomic_write, read_json, write_json


def test_write_json_round_trips(tmp_path):
    write_json(tmp_path / "a" / "s.json", {"x": [1, 2], "y": None})
    assert read_json(tmp_path / "a" / "s.json") == {"x": [1, 2], "y": None}


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "s.json"
    write_json(target, {"old": True})

    def disk_full(path):
        path.write_text('{"new": tr')  # half-written
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="disk full while writing .*s.json; nothing was written"):
        atomic_write(target, disk_full)
    assert read_json(target) == {"old": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]


def test_interrupted_write_leaves_no_file(tmp_path):
    def interrupted(path):
        path.write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "new.json", interrupted)
    assert list(tmp_path.iterdir()) == []
