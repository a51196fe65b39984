"""Trained models that ship with the toolkit: one LoRA adapter per model and recipe, with its provenance.

A notebook user gets a model that learned the maze in seconds, without training:

    >>> from training import load_trained
    >>> model, tok = load_trained("smollm2-135m-instruct", "tbrm")  # doctest: +SKIP

Each shipped model is a folder ``training/shipped/<model>/<recipe>/`` with

- ``adapter.safetensors``: the run's trainable LoRA weights (the names of its checkpoints'
  ``trainable.safetensors``), stored in bfloat16 to keep the package small; they are cast back to the
  base model's float32 when loaded, and the held-out evaluation in the provenance is the one of these
  stored weights, not of the float32 run;
- ``provenance.json`` (:class:`Provenance`): the exact command, commit, seed, the run's complete
  ``training.Args``, the stored dtype, library versions, the held-out evaluation before and after with the
  paired gain, a small ``check`` evaluation that :func:`verify_shipped` (and a slow test) reproduces
  exactly, and the adapter's sha256.

:func:`ship_run` writes such a folder from a finished run directory (``scripts/ship_trained.py``).
Other seeds of the same recipe are reproducible from the run records in ``docs/training_runs/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from probes.artifacts import atomic_directory
from probes.artifacts import file_sha256 as _sha256
from training.config import Args, upgrade_config
from training.evaluation import EvalResult, compare_evals, eval_settings, evaluate, untrained_evaluation
from training.policy import make_policy, merged_model

SHIPPED_DIR = Path(__file__).resolve().parent / "shipped"
"""Where the shipped adapters live (package data)."""
FORMAT = 1
CHECK_EPISODES = 4
"""Held-out mazes of the ``check`` evaluation that loading is verified against."""
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class ShippedModelError(LookupError):
    """No shipped model of that name and recipe, or its files do not match their provenance."""


@dataclass(frozen=True)
class Provenance:
    """Where a shipped adapter comes from and what it does (``provenance.json``)."""

    model: str
    recipe: str
    format: int
    command: str
    """The exact command that trained the run."""
    commit: str
    """The toolkit's git commit the run was trained at."""
    seed: int
    args: dict[str, Any]
    """The run's complete ``training.Args`` (``out`` as it was)."""
    stored_dtype: str
    versions: dict[str, str]
    """Library versions the stored weights were evaluated with."""
    sha256: str
    """sha256 of ``adapter.safetensors``."""
    size_bytes: int
    before: dict[str, Any]
    """Held-out evaluation of the untrained model (``EvalResult.to_dict``)."""
    after: dict[str, Any]
    """Held-out evaluation of the stored weights, on the same mazes and random numbers."""
    gain: dict[str, float]
    """``compare_evals(before, after)``: the paired gain and its standard error."""
    run_after: dict[str, Any] | None
    """The run's own float32 evaluation (for comparison with ``after``)."""
    check: dict[str, Any]
    """A small evaluation of the stored weights (the first :data:`CHECK_EPISODES` held-out mazes)."""
    notes: str = ""
    before_from: str | None = None
    """For a warm-started run (``init_from``), the run whose "before" is used: the warm start's (its untrained
    model), since the run's own "before" is the warm start's "after"; None: the run's own."""

    @property
    def train_args(self) -> Args:
        return Args(**upgrade_config(dict(self.args)))

    def line(self) -> str:
        g = self.gain
        se = g.get("stderr_diff_paired", g["stderr_diff_unpaired"])
        return (
            f"{self.model} / {self.recipe}: return {self.before['mean_return']:+.1f} -> "
            f"{self.after['mean_return']:+.1f} on {self.after['n_episodes']} held-out mazes, gain "
            f"{g['return_diff']:+.1f} ± {se:.1f} (paired SE); Gold {g['gold_diff']:+.2f}, Mold {g['mold_diff']:+.2f} "
            f"per episode"
        )


@dataclass(frozen=True)
class ShippedModel:
    """One shipped adapter: its folder and provenance."""

    path: Path
    provenance: Provenance

    @property
    def name(self) -> str:
        return f"{self.provenance.model}/{self.provenance.recipe}"


def _read(folder: Path) -> ShippedModel:
    raw = json.loads((folder / "provenance.json").read_text())
    return ShippedModel(folder, Provenance(**raw))


def shipped_models(root: str | os.PathLike[str] | None = None) -> list[ShippedModel]:
    """Every shipped model, sorted by name.

    Example:
        >>> [m.name for m in shipped_models()]  # doctest: +SKIP
        ['smollm2-135m-instruct/tbrm']
    """
    base = Path(root) if root is not None else SHIPPED_DIR
    if not base.is_dir():
        return []
    found = [_read(p.parent) for p in sorted(base.glob("*/*/provenance.json"))]
    return sorted(found, key=lambda m: m.name)


def find_shipped(model: str, recipe: str, root: str | os.PathLike[str] | None = None) -> ShippedModel:
    """The shipped model ``model``/``recipe`` (clear error listing what ships otherwise)."""
    for shipped in shipped_models(root):
        if (shipped.provenance.model, shipped.provenance.recipe) == (model, recipe):
            return shipped
    names = [m.name for m in shipped_models(root)] or ["none"]
    raise ShippedModelError(
        f"no shipped trained model {model!r} with recipe {recipe!r}; shipped: {', '.join(names)}. Train one "
        "with `welfare-axis train` and load it with load_trained(run_dir)"
    )


def load_shipped(
    model: str,
    recipe: str,
    *,
    merge: bool = True,
    device: str | None = None,
    root: str | os.PathLike[str] | None = None,
) -> tuple[torch.nn.Module, Any]:
    """The shipped trained model and its tokenizer: the base model (float32) with the stored adapter.

    Args:
        model: the base model's bundled name (``smollm2-135m-instruct``, ``gemma3-270m``).
        recipe: the training recipe (``tbrm``, ...); :func:`shipped_models` lists what ships.
        merge: merge the LoRA weights into the base weights (a plain HF model, as the probes expect).
        device: where to load (default: the run's ``device`` setting, ``auto``).

    Raises:
        ShippedModelError: unknown name/recipe, or the adapter's sha256 differs from its provenance.
    """
    shipped = find_shipped(model, recipe, root)
    weights_path = shipped.path / "adapter.safetensors"
    if _sha256(weights_path) != shipped.provenance.sha256:
        raise ShippedModelError(
            f"{weights_path} does not match the sha256 in its provenance.json; reinstall the package "
            "(git checkout -- training/shipped) to restore it"
        )
    return _adapter_model(
        shipped.provenance.train_args, load_file(str(weights_path)), str(weights_path), merge, device
    )


def _adapter_model(
    args: Args, weights: dict[str, torch.Tensor], source: str, merge: bool, device: str | None = None
) -> tuple[torch.nn.Module, Any]:
    """The run's base model with ``weights`` (its trainable LoRA tensors, any dtype) in place, in eval mode."""
    args = dataclasses.replace(args, kl_coef=0.0, algo="sft", device=device or args.device)
    policy = make_policy(args)
    params = policy.trainable_parameters()
    if set(weights) != set(params):
        raise ShippedModelError(
            f"{source} does not fit {args.model}: missing {sorted(set(params) - set(weights))[:3]}, unexpected "
            f"{sorted(set(weights) - set(params))[:3]}"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(device=p.device, dtype=p.dtype))
    net = merged_model(policy) if merge else policy.model
    net.eval()
    net.requires_grad_(False)
    return net, policy.tokenizer


def _check_eval(net: torch.nn.Module, tok: Any, args: Args) -> EvalResult:
    settings = eval_settings(dataclasses.replace(args, eval_episodes=CHECK_EPISODES))
    return evaluate(net, tok, **settings)


def verify_shipped(model: str, recipe: str, root: str | os.PathLike[str] | None = None) -> EvalResult:
    """Load a shipped model and replay its ``check`` evaluation; raise unless the numbers are identical.

    Example:
        >>> verify_shipped("smollm2-135m-instruct", "tbrm").n_episodes  # doctest: +SKIP
        4
    """
    shipped = find_shipped(model, recipe, root)
    net, tok = load_shipped(model, recipe, root=root)
    got = _check_eval(net, tok, shipped.provenance.train_args)
    want = shipped.provenance.check
    for key in ("returns", "gold", "mold", "seeds"):
        if list(getattr(got, key)) != list(want[key]):
            raise ShippedModelError(
                f"{shipped.name}: the check evaluation's {key} are {getattr(got, key)}, the provenance records "
                f"{want[key]}"
            )
    return got


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "safetensors", "welfare-axis"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _portable(path: str | None) -> str | None:
    """A run path as the provenance records it: relative to the working directory when inside it (no build
    machine's absolute paths in a shipped file), else as given."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def ship_run(
    run_dir: str | os.PathLike[str],
    recipe: str,
    *,
    command: str,
    commit: str | None = None,
    dtype: str = "bfloat16",
    notes: str = "",
    root: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> ShippedModel:
    """Store a finished run's adapter as a shipped model, evaluating the stored weights on the run's
    held-out mazes (same seeds and random numbers as its own evaluation, so the gain is paired).

    Args:
        run_dir: a training run directory with ``eval.json`` (``eval_before`` on) and a final checkpoint.
        recipe: the name it ships under (``load_trained(model, recipe)``).
        command: the exact command that trained the run (recorded).
        commit: the commit it was trained at (default: this checkout's HEAD).
        dtype: stored dtype (bfloat16, float16 or float32).
    """
    from training.checkpoints import latest_checkpoint, load_run_args

    run_dir = Path(run_dir)
    args = load_run_args(run_dir)
    if args.finetune != "lora":
        raise ValueError(
            f"only LoRA runs ship (the adapter is small); {run_dir} is finetune={args.finetune!r}"
        )
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}; got {dtype!r}")
    evals = json.loads((run_dir / "eval.json").read_text())
    if not evals.get("before"):
        raise ValueError(f"{run_dir}/eval.json has no 'before' evaluation; train with eval_before on")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"no checkpoint in {run_dir}/checkpoints")
    done = int(checkpoint.name.removeprefix("step_"))
    if done != args.steps or not evals.get("after"):
        raise ValueError(
            f"{run_dir} is not finished ({done} of {args.steps} steps, after-evaluation "
            f"{'present' if evals.get('after') else 'missing'}): resume it to the end before shipping"
        )
    trained = load_file(str(checkpoint / "trainable.safetensors"))
    weights = {k: v.to(_DTYPES[dtype]).contiguous() for k, v in trained.items()}
    folder = (Path(root) if root is not None else SHIPPED_DIR) / args.model / recipe
    blob = save(weights)  # the exact bytes published below; loading them back gives ``weights``
    sha, size = hashlib.sha256(blob).hexdigest(), len(blob)
    net, tok = _adapter_model(args, weights, f"{run_dir} ({dtype})", merge=True)
    if progress:
        print(
            f"ship_run: evaluating the stored {dtype} weights on {args.eval_episodes} held-out mazes",
            flush=True,
        )
    after = evaluate(net, tok, **eval_settings(args))  # the stored weights, before anything is published
    check = _check_eval(net, tok, args)
    before, warm_dir = untrained_evaluation(run_dir, args, evals)
    before_from = None if warm_dir is None else _portable(str(warm_dir))
    provenance = Provenance(
        model=args.model,
        recipe=recipe,
        format=FORMAT,
        command=command,
        commit=commit or _git_commit(),
        seed=args.seed,
        # the run's directory as shipped: a study trains in a work directory (stages/.train.work) that it renames
        # when the stage finishes, so the ``out`` its config recorded no longer exists
        args=dataclasses.asdict(args)
        | {"out": _portable(str(run_dir)), "init_from": _portable(args.init_from)},
        stored_dtype=dtype,
        versions=_versions(),
        sha256=sha,
        size_bytes=size,
        before=before.to_dict(),
        after=after.to_dict(),
        gain=compare_evals(before, after),
        run_after=evals.get("after"),
        check=check.to_dict(),
        notes=notes,
        before_from=before_from,
    )

    def publish(tmp: Path) -> None:
        (tmp / "adapter.safetensors").write_bytes(blob)
        (tmp / "provenance.json").write_text(json.dumps(dataclasses.asdict(provenance), indent=1) + "\n")

    atomic_directory(folder, publish)
    if _sha256(folder / "adapter.safetensors") != sha:
        raise RuntimeError(f"{folder}/adapter.safetensors was not written byte for byte; ship again")
    return _read(folder)
