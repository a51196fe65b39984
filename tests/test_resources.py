"""The process's allocator settings (``probes.resources``), observed from the outside in fresh processes."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import probes.resources
from welfare_axis import cli

ROOT = Path(__file__).resolve().parent.parent
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Applies the setting (or not), then touches and frees a 256 MiB block: prints whether it applied and how many
# MiB the resident set kept after the free.
_KEPT = """
from probes.resources import keep_freed_memory
applied = keep_freed_memory()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
base = rss()
block = b"x" * (256 << 20)
del block
print(applied, round((rss() - base) / 2**20))
"""


def _run(env_value: str | None) -> tuple[bool, int]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k != probes.resources.MALLOC_ENV and not k.startswith("MALLOC_")
    }
    if env_value is not None:
        env[probes.resources.MALLOC_ENV] = env_value
    out = subprocess.run(
        [sys.executable, "-c", _KEPT], env=env, cwd=ROOT, capture_output=True, text=True, check=True
    )
    applied, kept = out.stdout.split()
    return applied == "True", int(kept)


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_keep_freed_memory_keeps_a_freed_block_and_the_opt_out_leaves_glibc_as_it_is():
    applied, kept = _run(None)
    assert applied and kept >= 250  # the block came from the heap and stayed there for reuse
    applied, kept = _run("default")
    assert not applied and kept < 16  # glibc's default: a block this large is mmap'd and unmapped on free


def test_the_program_sets_the_allocator_and_a_call_from_python_does_not(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(probes.resources, "keep_freed_memory", lambda: calls.append(1) or True)
    assert cli.main(["maze", "show", "--seed", "0"]) == 0
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["welfare-axis", "maze", "show", "--seed", "0"])
    assert cli.main() == 0
    assert calls == [1]
    capsys.readouterr()
