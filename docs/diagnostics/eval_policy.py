"""Evaluate the untrained model, or a run's latest checkpoint, on the CPU recipe's held-out mazes.

The same evaluation a ``--recipe cpu`` run does before and after training (64 held-out mazes, 15 turns,
T = 1.0, sampling seed 0, chunks of 32), so its episodes pair with those runs' ``eval.json``. With
``--compare BEFORE AFTER`` it prints the paired comparison of two results: this script's files, or a
run's ``eval.json:before`` / ``eval.json:after``.

    python docs/diagnostics/eval_policy.py untrained runs/untrained_eval.json
    python docs/diagnostics/eval_policy.py runs/sft_cpu runs/sft_cpu_eval.json
    python docs/diagnostics/eval_policy.py --compare runs/untrained_eval.json runs/grpo_warm/eval.json:after
"""

import dataclasses
import json
import sys
from pathlib import Path

import torch

from probes.artifacts import atomic_write
from training import (
    EvalResult,
    compare_evals,
    eval_settings,
    evaluate,
    load_trained,
    make_policy,
    recipe_args,
)


def _result(spec: str) -> EvalResult:
    """``FILE`` (this script's output) or ``RUN/eval.json:before`` / ``:after``."""
    path, _, key = spec.partition(":")
    data = json.loads(Path(path).read_text())
    return EvalResult(**(data[key] if key else data))


if sys.argv[1] == "--compare":
    print(json.dumps(compare_evals(_result(sys.argv[2]), _result(sys.argv[3])), indent=1))
    sys.exit(0)

torch.set_num_threads(2)
args = recipe_args("cpu")
if sys.argv[1] == "untrained":
    policy = make_policy(args)
    model, tokenizer = policy.model, policy.tokenizer
else:
    model, tokenizer = load_trained(sys.argv[1])
with torch.no_grad():
    result = evaluate(model, tokenizer, **eval_settings(args))
print(result.line())
atomic_write(Path(sys.argv[2]), lambda p: p.write_text(json.dumps(dataclasses.asdict(result), indent=1)))
