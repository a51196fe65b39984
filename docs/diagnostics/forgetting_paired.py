"""Forgetting with its uncertainty for studies recorded before the forgetting stage kept per-item results.

For each study run directory: the study's own forgetting stage (``welfare_axis.study.stage_forgetting``, same
texts, QA items and seed as its config), re-run on the run's base and trained models, which now returns the
paired change with 95% bootstrap intervals and McNemar's p (``steering.evals.capability.capability_change``).
The point values must equal the ones the study recorded (checked; a mismatch is reported, not hidden). Nothing
in the run directory is changed; one JSON per run is written to ``--out``.

``--training-runs`` measures finished ``welfare-axis train`` runs that no study read (the same stage at the
study's default settings: 30 texts, 50 QA items, seed 0), e.g. to set a recipe's RL beside its SFT.

    flock /tmp/wa/heavy.lock python docs/diagnostics/forgetting_paired.py runs/default runs/default_seed1 ... \
        --out docs/diagnostics/forgetting_paired
    flock /tmp/wa/heavy.lock python docs/diagnostics/forgetting_paired.py --training-runs runs/learn_preset \
        --out docs/diagnostics/forgetting_paired

``--between A B`` compares two trained models directly (training run directories, e.g. SFT and RL after it): the
same texts and items, so the change from A to B is paired too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from probes.artifacts import read_json, write_json  # noqa: E402
from welfare_axis.stages import StageOutput, StageRunner  # noqa: E402
from welfare_axis.study import StudyConfig, stage_forgetting  # noqa: E402


def paired_forgetting(run: Path) -> dict:
    """The run's forgetting stage re-measured, with the recorded values beside it."""
    cfg = StudyConfig.from_overrides(StudyConfig(), read_json(run / "study_config.json"))
    runner = StageRunner(run)
    train = read_json(run / "stages" / "train" / "stage.json")
    runner.outputs["train"] = StageOutput(
        "train", train["key"], run / "stages" / "train", train["result"], True, 0.0
    )
    recorded = read_json(run / "stages" / "forgetting" / "stage.json")["result"]
    t0 = time.perf_counter()
    result = stage_forgetting(cfg, runner, run)
    same = all(
        abs(result[w][k] - recorded[w][k]) <= 1e-4 * max(1.0, abs(recorded[w][k]))
        for w in ("before", "after")
        for k in ("perplexity", "qa_accuracy")
    )
    return {"run": str(run), "seconds": time.perf_counter() - t0, "matches_recorded": same,
            "recorded": recorded, "paired": result}  # fmt: skip


def training_run_forgetting(run: Path) -> dict:
    """A finished training run's forgetting, as a study of it (``--from-run``) would measure it."""
    import dataclasses
    import tempfile

    from training.checkpoints import load_run_args

    args = load_run_args(run)
    cfg = StudyConfig(model=args.model, tiles=args.tiles, from_run=str(run))
    with tempfile.TemporaryDirectory() as scratch:  # the runner's manifest stays out of the run directory
        runner = StageRunner(scratch)
        result = {"run": str(run.resolve()), "train_args": dataclasses.asdict(args)}
        runner.outputs["train"] = StageOutput("train", "", Path(scratch), result, True, 0.0)
        t0 = time.perf_counter()
        paired = stage_forgetting(cfg, runner, Path(scratch))
    return {"run": str(run), "seconds": time.perf_counter() - t0, "training_run": True, "paired": paired}


def between_runs(a: Path, b: Path, qa: int = 50, texts: int = 30, seed: int = 0) -> dict:
    """The paired change in perplexity and QA from training run ``a``'s model to ``b``'s (the study's defaults)."""
    from steering.evals.capability import capability_change, general_texts, perplexity, qa_accuracy
    from training import load_trained

    t0 = time.perf_counter()
    sample = general_texts(texts)
    measured = {}
    for name, run in (("a", a), ("b", b)):
        model, tok = load_trained(run, merge=True)
        measured[name] = (perplexity(model, tok, sample), qa_accuracy(model, tok, qa, seed=seed))
    change = capability_change(measured["a"], measured["b"], seed=seed).to_dict()
    values = {k: {"perplexity": v[0].value, "qa_accuracy": v[1].accuracy} for k, v in measured.items()}
    return {"a": str(a), "b": str(b), "seconds": time.perf_counter() - t0, "values": values, "change": change}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="*", type=Path, help="study run directories")
    parser.add_argument("--training-runs", nargs="*", type=Path, default=[], help="training run directories")
    parser.add_argument(
        "--between", nargs=2, type=Path, default=None, metavar=("A", "B"), help="two training runs"
    )
    parser.add_argument("--out", type=Path, required=True)
    a = parser.parse_args(argv)
    if not a.runs and not a.training_runs and not a.between:
        parser.error("give study run directories, --training-runs or --between")
    if a.between:
        record = between_runs(*a.between)
        first, second = a.between
        study = second.parts[-3:-1] == ("stages", "train")  # a study's own training run: name it by the study
        write_json(a.out / f"{first.name}_to_{second.parts[-4] if study else second.name}.json", record)
        d = record["change"]
        print(f"{record['a']} -> {record['b']}: perplexity {d['perplexity_increase']:+.3f} {d['perplexity_increase_ci']}, "
              f"QA drop {d['qa_accuracy_drop']:+.3f} (lost {d['qa_lost']}, gained {d['qa_gained']}, McNemar p "
              f"{d['qa_mcnemar_p']:.3g}) ({record['seconds']:.0f} s)", flush=True)  # fmt: skip
    for run, measure in [(r, paired_forgetting) for r in a.runs] + [
        (r, training_run_forgetting) for r in a.training_runs
    ]:
        record = measure(run)
        write_json(a.out / f"{run.name}.json", record)
        d = record["paired"]["drop"]
        print(f"{run.name}: perplexity {d['perplexity_increase']:+.3f} {d['perplexity_increase_ci']}, QA drop "
              f"{d['qa_accuracy_drop']:+.3f} {d['qa_accuracy_drop_ci']} (lost {d['qa_lost']}, gained {d['qa_gained']}, "
              f"McNemar p {d['qa_mcnemar_p']:.3g}); matches the recorded values: {record.get('matches_recorded', '-')} "
              f"({record['seconds']:.0f} s)", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
