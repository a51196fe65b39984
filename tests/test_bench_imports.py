"""Every benchmark script imports (the benches are not run in CI, so an API change must not break them silently)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHES = sorted(
    p.stem for p in (Path(__file__).resolve().parents[1] / "bench").glob("*.py") if p.stem != "__init__"
)


def test_there_are_benches():
    assert {"maze_env", "probes", "steering", "trainer", "distributed"} <= set(BENCHES)


@pytest.mark.parametrize("name", BENCHES)
def test_bench_imports_and_has_a_main(name):
    module = importlib.import_module(f"bench.{name}")
    assert callable(getattr(module, "main", None))
