"""The trainer's axis monitor: ``probes.axis_monitor.AxisMonitor`` built on the run's untrained model.

``Args.monitor_every = N`` reads the reward axis every N steps (``axis`` in ``metrics.jsonl``, its cost as
``monitor_seconds``, outside ``step_seconds``); ``axis_monitor.json`` holds the monitor's settings and the
untrained model's reading. The monitor reads without gradients or random numbers, so a run trains the same
weights with it on or off.

Example:
    >>> main(Args(model="tiny-llama", steps=2, monitor_every=1, out="runs/tiny"))  # doctest: +SKIP
    >>> axis_monitor_figure(*axis_records("runs/tiny"))  # probes.plots; doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from probes.artifacts import write_json
from probes.axis_monitor import AxisMonitor
from training.config import Args, maze_config

MONITOR_FILE = "axis_monitor.json"


def start_monitor(policy: Any, args: Args, run_dir: Path, start: int, ctx: Any) -> AxisMonitor:
    """Build the monitor on the untrained model (the LoRA adapter switched off, or the frozen reference copy;
    a full fine-tune from scratch reads its own weights before the first step) and record its reading.

    Raises:
        ValueError: full fine-tuning resumed or warm-started without a reference copy, or several processes.
    """
    if ctx.distributed:
        raise ValueError("monitor_every runs in one process; train without torchrun, or monitor_every=0")
    if policy.is_lora or policy.reference is not None:
        context = policy.reference_model()
    elif start == 0 and args.init_from is None:
        context = contextlib.nullcontext(policy.model)
    else:
        raise ValueError(
            "monitor_every with full fine-tuning needs the untrained weights: start the run with the monitor on "
            "(not a resumed or --init-from run), or use LoRA"
        )
    with context as base:
        was_training = base.training
        base.eval()
        try:
            with torch.no_grad():
                monitor = AxisMonitor(
                    base, policy.tokenizer, config=maze_config(args), n_per_class=args.monitor_n_per_class
                )
                reading = monitor.read(base)
        finally:
            base.train(was_training)
    if ctx.is_main:
        write_json(run_dir / MONITOR_FILE, {"settings": monitor.settings(), "base": reading.to_dict()})
    return monitor


def axis_records(run_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(axis_monitor.json, [metrics records with an axis reading])`` of a run (so far: a live run works)."""
    run_dir = Path(run_dir)
    path = run_dir / MONITOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: train with monitor_every > 0 to monitor the axis")
    head = json.loads(path.read_text())
    metrics = run_dir / "metrics.jsonl"
    records = []
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
    return head, records
