"""Every benchmark script imports (the benches are not run in CI, so an API change must not break them silently)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCHES = sorted(
    p.stem for p in (Path(__file__).resolve().parents[1] / "bench").glob("*.py") if not p.stem.startswith("_")
)


def test_there_are_benches():
    assert {"maze_env", "probes", "steering", "trainer", "distributed"} <= set(BENCHES)


@pytest.mark.parametrize("name", BENCHES)
def test_bench_imports_and_has_a_main(name):
    module = importlib.import_module(f"bench.{name}")
    assert callable(getattr(module, "main", None))


def test_update_prefix_bench_runs_on_a_tiny_model(capsys):
    # the shared-prefix bench checks the two paths agree before it times them; here on a tiny random model
    from bench import update_prefix

    assert update_prefix.main(["--model", "tiny-llama", "--groups", "2", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert "BENCH update_shared_vs_full " in out and "(2 distinct)" in out


def test_allocator_bench_runs_on_a_tiny_model(capsys):
    # one fresh process per side; the bench checks both sides' losses agree to the bit before it reports
    from bench import allocator

    assert allocator.main(["--model", "tiny-llama", "--groups", "2", "--processes", "1", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert "BENCH update_keep_memory_vs_default " in out and "losses equal on both sides" in out


def test_step_prefix_bench_runs_on_a_tiny_model(capsys):
    # the preset-step bench checks rollout and update agree both ways before it times them
    from bench import step_prefix

    args = ["--model", "tiny-llama", "--lora-layers", "1", "--groups", "24", "--reps", "1"]
    assert step_prefix.main(args) == 0
    out = capsys.readouterr().out
    assert "BENCH step_shared_vs_full " in out and "on 24 groups" in out
