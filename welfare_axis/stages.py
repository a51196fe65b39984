"""Stages of a study: cached by a hash of their config and inputs, resumable, written atomically.

A stage writes into its own directory ``<run>/stages/<name>/``. It is finished when ``stage.json`` holds
its key (the hash of the stage name, its config, the keys of the stages it depends on, and the stage
format version). Rerunning a study skips finished stages whose key still matches, reruns stages whose
inputs changed, and resumes an interrupted stage from scratch (or from its own checkpoints, for
training). Output files of a stage are staged in a temporary directory and renamed into place, so a
crash never leaves a half-written stage that looks finished.

Example:
    >>> import tempfile
    >>> run = StageRunner(tempfile.mkdtemp())
    >>> out = run.stage("square", {"x": 3}, lambda d: {"y": 9})
    >>> out.result, out.cached
    ({'y': 9}, False)
    >>> run.stage("square", {"x": 3}, lambda d: {"y": -1}).cached
    True
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probes.artifacts import read_json, write_json
from probes.resources import peak_rss_gb

STAGE_FORMAT = 1
"""Bumped when a stage's on-disk layout changes; older stage dirs are then recomputed."""
RUN_FORMAT = 1
"""Bumped when the run directory layout changes incompatibly."""


class IncompatibleRunError(RuntimeError):
    """The run directory was written by an incompatible version of welfare-axis."""


def config_hash(obj: Any) -> str:
    """A stable short hash of a JSON-able object (key order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StageOutput:
    name: str
    key: str
    dir: Path
    result: dict[str, Any]
    cached: bool
    seconds: float
    peak_rss_gb: float | None = None
    """The process's peak resident memory when the stage finished (``ru_maxrss`` only grows, so the first stage
    whose value jumps is the one that needed it); None for stages recorded before it was kept."""


class StageRunner:
    """Runs named stages inside one run directory."""

    def __init__(self, run_dir: str | Path, *, version: str | None = None) -> None:
        from welfare_axis import __version__

        self.run_dir = Path(run_dir)
        self.version = version or __version__
        self.run_dir.mkdir(parents=True, exist_ok=True)
        manifest = self.run_dir / "run.json"
        if manifest.exists():
            info = read_json(manifest)
            if info.get("run_format") != RUN_FORMAT:
                raise IncompatibleRunError(
                    f"{self.run_dir} was written with run format {info.get('run_format')} (welfare-axis "
                    f"{info.get('version')}); this is format {RUN_FORMAT} (welfare-axis {self.version}). "
                    "Use a new --out directory or delete the old one."
                )
        else:
            write_json(manifest, {"run_format": RUN_FORMAT, "version": self.version, "created": time.time()})
        self.outputs: dict[str, StageOutput] = {}

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / "stages" / name

    def stage(
        self,
        name: str,
        config: Mapping[str, Any],
        fn: Callable[[Path], dict[str, Any]],
        *,
        depends: Sequence[str] = (),
        resumable: bool = False,
    ) -> StageOutput:
        """Run ``fn(work_dir) -> result`` unless a finished stage with the same key exists.

        Args:
            name: stage name (a directory name).
            config: everything the stage's output depends on besides its upstream stages.
            fn: does the work, writes files into ``work_dir`` and returns a JSON-able result dict.
            depends: names of stages (already run in this runner) whose outputs this stage reads.
            resumable: ``fn`` checkpoints inside ``work_dir`` and continues from them; the work dir is
                then kept across interruptions instead of being started afresh.
        """
        for dep in depends:
            if dep not in self.outputs:
                raise KeyError(f"stage {name!r} depends on {dep!r}, which has not run in this study yet")
        key = config_hash(
            {
                "stage": name,
                "format": STAGE_FORMAT,
                "config": dict(config),
                "depends": {d: self.outputs[d].key for d in depends},
            }
        )
        final = self.stage_dir(name)
        marker = final / "stage.json"
        if marker.exists():
            info = read_json(marker)
            if info.get("key") == key:
                out = StageOutput(
                    name, key, final, info["result"], cached=True, seconds=info.get("seconds", 0.0),
                    peak_rss_gb=info.get("peak_rss_gb"),
                )  # fmt: skip
                self.outputs[name] = out
                return out
        work = final.parent / f".{name}.work"
        if work.exists() and not (
            resumable and (work / ".key").exists() and (work / ".key").read_text() == key
        ):
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
        (work / ".key").write_text(key)
        start = time.perf_counter()
        result = fn(work)
        seconds = time.perf_counter() - start
        peak = round(peak_rss_gb(), 2)
        if not isinstance(result, dict):
            raise TypeError(f"stage {name!r} must return a dict of results; got {type(result).__name__}")
        write_json(
            work / "stage.json",
            {"key": key, "config": dict(config), "result": result, "seconds": seconds, "peak_rss_gb": peak},
        )
        (work / ".key").unlink()
        old = final.parent / f".{name}.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        work.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        out = StageOutput(name, key, final, result, cached=False, seconds=seconds, peak_rss_gb=peak)
        self.outputs[name] = out
        return out
