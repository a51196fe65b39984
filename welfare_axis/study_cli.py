"""``welfare-axis run`` (the whole study) and ``welfare-axis compare`` (several runs side by side)."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value; got {item!r}")
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def _run(args: argparse.Namespace) -> int:
    from welfare_axis.study import PRESETS, StudyConfig, learning_notes, run_study

    cfg = StudyConfig.preset(args.preset)
    if args.fast:  # the fast sizes on top of the chosen preset (its model, algo, tiles... are kept)
        cfg = StudyConfig.from_overrides(cfg, PRESETS["fast"])
    cfg = StudyConfig.from_overrides(cfg, _parse_set(args.set))
    name = args.preset
    if args.trained:  # model/recipe or recipe (of the preset's model)
        model, _, recipe = args.trained.rpartition("/")
        cfg = StudyConfig.from_overrides(cfg, {"trained": recipe, **({"model": model} if model else {})})
        name = f"trained-{recipe}"
    if args.from_run:
        if args.trained:
            raise SystemExit("--trained and --from-run both name the model to study; give one")
        from training.checkpoints import load_run_args

        run_args = load_run_args(Path(args.from_run))
        cfg = StudyConfig.from_overrides(
            cfg, {"from_run": args.from_run, "model": run_args.model, "tiles": run_args.tiles,
                  "algo": run_args.algo, "finetune": run_args.finetune}
        )  # fmt: skip
        name = f"from-{Path(args.from_run).name}"
    out = Path(args.out or f"runs/{name}{'-fast' if cfg.fast and name != 'fast' else ''}")
    summary = run_study(cfg, out)
    print(f"\nreport: {out / 'report.html'}\nsummary: {out / 'summary.json'}")
    cos = summary.measure("cos_min")

    def shown(value: float, estimate) -> str:
        return f"{value:+.3f}" if estimate is None else estimate.text()

    print(f"min cos(v_Mold, v_Gold): trained {shown(cos.trained, cos.trained_estimate)}, "
          f"control {shown(cos.control, cos.control_estimate)}")  # fmt: skip
    gain = summary.training.return_gain
    if gain is not None:
        print(f"training gain on held-out mazes: {gain.diff:+.1f} ± {gain.se:.1f} (z {gain.z:.1f})")
    if not cfg.trains_pipeline_check:
        for note in learning_notes(summary.training, summary.forgetting):
            print(f"NOTE: {note}")
    if summary.peak_rss_gb is not None:
        print(f"peak RSS {summary.peak_rss_gb:.1f} GB (reached by the end of stage {summary.peak_rss_stage})")
    print(
        f"BENCH study_minutes {summary.study_minutes:.1f} <=30{' (fast: a pipeline check)' if summary.fast else ''}"
    )
    return 0


def _compare(args: argparse.Namespace) -> int:
    from welfare_axis.compare import compare_runs

    if args.png and not args.out:
        raise SystemExit("--png needs --out (the HTML report the figures belong to)")
    table, html_path = compare_runs(
        [Path(p) for p in args.runs],
        out=Path(args.out) if args.out else None,
        png_dir=Path(args.png) if args.png else None,
    )
    print(table)
    if html_path:
        print(f"\nwritten: {html_path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from welfare_axis.study import PRESETS

    p = sub.add_parser("run", help="the whole study: train, extract, read out, steer, report")
    p.add_argument(
        "--preset",
        default="default",
        choices=sorted(PRESETS),
        help="study preset (controls: tile-swap, gemma, sft, ...)",
    )
    p.add_argument(
        "--fast", action="store_true", help="small settings: a few minutes end to end (the report says so)"
    )
    p.add_argument(
        "--trained",
        default=None,
        metavar="NAME",
        help="read out and steer a shipped trained model instead of training (recipe or model/recipe, e.g. tbrm; "
        "python -c 'import training; print([m.name for m in training.shipped_models()])' lists them)",
    )
    p.add_argument(
        "--from-run",
        default=None,
        metavar="DIR",
        help="read out and steer a finished training run (welfare-axis train --out DIR: DPO, SFT, RL against a "
        "reward model, ...) instead of training; its model and tiles are used",
    )
    p.add_argument("--out", default=None, help="run directory (default runs/<preset>)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any study setting, e.g. --set n_per_class=300",
    )
    p.set_defaults(handler=_run)

    c = sub.add_parser("compare", help="tabulate and plot several finished runs together")
    c.add_argument("runs", nargs="+", help="run directories holding summary.json")
    c.add_argument("--out", default=None, help="write a comparison HTML report here")
    c.add_argument(
        "--png", default=None, metavar="DIR", help="also write the claims' figures as PNGs into DIR"
    )
    c.set_defaults(handler=_compare)
