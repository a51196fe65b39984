"""Environment probes: does the model linearly represent the maze at its decision positions?

Linear probes (scikit-learn, seeded) decode, from the residual stream at every decision position
(``probes.maze_states.read_decisions``), these targets of :class:`~probes.maze_states.MazeStates`:

==================  ==============  ===================================================================
task                kind            target
==================  ==============  ===================================================================
``neighbour_N/E/S/W`` classification  tile class (Path/Mold/Gold) next to the agent in that direction
``x``, ``y``        regression      position relative to the episode's start
``last_reward``     classification  sign of the previous turn's reward against the step cost: -1 (a
                                    Mold entered), 0 (plain move), +1 (Gold); turn-0 states excluded
==================  ==============  ===================================================================

Classification uses ``StandardScaler + LogisticRegression`` (accuracy; the majority-class rate of the
test set is reported as the baseline), regression ``StandardScaler + Ridge`` (R²). Train and test
states come from disjoint mazes: the maze seeds are split (``test_fraction``) with a seeded RNG, so a
probe cannot memorise a layout.

**Control tasks (selectivity, Hewitt & Liang 2019).** A control task keeps the inputs and the label
distribution but breaks the link to the world. Hewitt & Liang give every *word type* a random label;
here every decision is read at the same token (the end of the assistant header), so the only "type" is
the state itself and the control reduces to a random relabelling of the states. The control targets are
a seeded permutation of the true targets *within each turn index*, which preserves the label
distribution per turn (turn correlates with distance from start and with the last reward).
Selectivity = score(task) - score(control), the same probe and split on both.

Example:
    >>> import numpy as np
    >>> from maze_env import MazeConfig
    >>> states = MazeStates.random_walks(6, config=MazeConfig(size=30), n_turns=4)
    >>> rng = np.random.default_rng(0)
    >>> one_hot = np.eye(3)[states.neighbours[:, 0]]  # the tile to the north, plus noise
    >>> acts = {0: torch.as_tensor(np.c_[one_hot, rng.normal(size=(len(states), 4))]).float()}
    >>> table = run_probes(acts, states, tasks=["neighbour_N"])
    >>> table.get("neighbour_N", 0).score
    1.0
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from maze_env.dynamics import ACTIONS
from probes.maze_states import MazeStates, read_decisions

Kind = Literal["classification", "regression"]
TASKS: tuple[str, ...] = (*(f"neighbour_{a}" for a in ACTIONS), "x", "y", "last_reward")


class ProbeError(ValueError):
    """Bad probe input: unknown task, mismatched rows, too few mazes to split."""


@dataclass(frozen=True)
class ProbeTask:
    """One decoding target over the states.

    Attributes:
        name: task name (see :data:`TASKS`).
        kind: ``"classification"`` or ``"regression"``.
        targets: ``(n_states,)`` labels or values.
        valid: ``(n_states,)`` bool, states where the target is defined.
    """

    name: str
    kind: Kind
    targets: np.ndarray
    valid: np.ndarray


def probe_tasks(states: MazeStates, names: Sequence[str] | None = None) -> list[ProbeTask]:
    """The decoding targets of ``states`` (all of :data:`TASKS` by default)."""
    names = list(TASKS if names is None else names)
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ProbeError(f"unknown probe tasks {unknown}; choose from {list(TASKS)}")
    everywhere = np.ones(len(states), dtype=bool)
    out = []
    for name in names:
        if name.startswith("neighbour_"):
            d = ACTIONS.index(name.removeprefix("neighbour_"))
            out.append(ProbeTask(name, "classification", states.neighbours[:, d].copy(), everywhere))
        elif name in ("x", "y"):
            column = 0 if name == "x" else 1
            out.append(
                ProbeTask(name, "regression", states.relative_position[:, column].astype(float), everywhere)
            )
        else:
            reward = states.last_reward
            valid = np.isfinite(reward)
            step = states.config.step_cost
            sign = np.zeros(len(states), dtype=np.int64)
            sign[valid] = np.sign(np.round(reward[valid] - step, 6)).astype(np.int64)
            out.append(ProbeTask(name, "classification", sign, valid))
    return out


def seed_split(
    seeds: np.ndarray, *, test_fraction: float = 0.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train/test masks over rows, splitting the distinct maze ``seeds`` (seeded).

    Raises:
        ProbeError: fewer than 2 distinct mazes, or ``test_fraction`` outside (0, 1).
    """
    if not 0.0 < test_fraction < 1.0:
        raise ProbeError(f"test_fraction must be in (0, 1), got {test_fraction}")
    unique = np.unique(np.asarray(seeds))
    if unique.shape[0] < 2:
        raise ProbeError(f"need states from at least 2 mazes to split by maze, got {unique.shape[0]}")
    n_test = min(unique.shape[0] - 1, max(1, round(test_fraction * unique.shape[0])))
    test_seeds = np.random.default_rng(seed).permutation(unique)[:n_test]
    test = np.isin(seeds, test_seeds)
    return ~test, test


def control_targets(targets: np.ndarray, groups: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Permute ``targets`` within each group (the turn index): same label distribution per group."""
    rng = np.random.default_rng(seed)
    out = targets.copy()
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        out[rows] = targets[rng.permutation(rows)]
    return out


@dataclass(frozen=True)
class ProbeResult:
    """One probe at one layer.

    Attributes:
        task, layer, kind: what was decoded where.
        metric: ``"accuracy"`` or ``"r2"``.
        score: test score on the true task.
        control_score: test score on the control task.
        baseline: majority-class test accuracy (classification) or 0 (R² of the mean).
        n_train, n_test: rows used.
    """

    task: str
    layer: int
    kind: Kind
    metric: str
    score: float
    control_score: float
    baseline: float
    n_train: int
    n_test: int

    @property
    def selectivity(self) -> float:
        """``score - control_score``."""
        return self.score - self.control_score


@dataclass(frozen=True)
class ProbeTable:
    """Probe results over tasks and layers, with provenance."""

    results: tuple[ProbeResult, ...]
    model_name: str = ""
    seed: int = 0

    @property
    def tasks(self) -> list[str]:
        return list(dict.fromkeys(r.task for r in self.results))

    @property
    def layers(self) -> list[int]:
        return sorted({r.layer for r in self.results})

    def get(self, task: str, layer: int) -> ProbeResult:
        for r in self.results:
            if r.task == task and r.layer == layer:
                return r
        raise KeyError(
            f"no result for task {task!r} at layer {layer}; tasks {self.tasks}, layers {self.layers}"
        )

    def by_layer(self, task: str, field: str = "score") -> dict[int, float]:
        """``{layer: value}`` of ``field`` (``score``, ``control_score``, ``selectivity``, ``baseline``)."""
        rows = [r for r in self.results if r.task == task]
        if not rows:
            raise KeyError(f"no results for task {task!r}; tasks are {self.tasks}")
        return {r.layer: float(getattr(r, field)) for r in sorted(rows, key=lambda r: r.layer)}

    def best(self, task: str) -> ProbeResult:
        """The layer with the highest score for ``task``."""
        rows = [r for r in self.results if r.task == task and math.isfinite(r.score)]
        if not rows:
            raise KeyError(f"no finite results for task {task!r}")
        return max(rows, key=lambda r: (r.score, -r.layer))

    def to_rows(self) -> list[dict[str, Any]]:
        """Plain dicts (for tables and JSON)."""
        return [{**r.__dict__, "selectivity": r.selectivity} for r in self.results]


def _fit_score(
    kind: Kind,
    x: np.ndarray,
    y: np.ndarray,
    train: np.ndarray,
    test: np.ndarray,
    seed: int,
    c: float,
    alpha: float,
) -> float:
    if kind == "classification":
        if np.unique(y[train]).shape[0] < 2:
            return float("nan")
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe.fit(x[train], y[train])
        return float((probe.predict(x[test]) == y[test]).mean())
    probe = make_pipeline(StandardScaler(), Ridge(alpha=alpha, random_state=seed))
    probe.fit(x[train], y[train])
    if np.ptp(y[test]) == 0:
        return float("nan")
    return float(r2_score(y[test], probe.predict(x[test])))


def run_probes(
    activations: Mapping[int, Float[Tensor, "n_states d_model"]],
    states: MazeStates,
    *,
    tasks: Sequence[str] | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    c: float = 1.0,
    alpha: float = 1.0,
    model_name: str = "",
) -> ProbeTable:
    """Fit every task's probe (and its control) at every layer of ``activations``.

    Args:
        activations: ``{layer: (n_states, d_model)}`` rows aligned with ``states``.
        states: the decision states (targets, maze seeds, turns).
        tasks: subset of :data:`TASKS`.
        test_fraction: fraction of mazes held out.
        seed: split, control permutation and solver seed.
        c: inverse L2 strength of the logistic probes; alpha: Ridge strength.
    """
    if not activations:
        raise ProbeError("no activations: pass {layer: (n_states, d_model)}")
    task_list = probe_tasks(states, tasks)
    train_all, test_all = seed_split(states.state_seed, test_fraction=test_fraction, seed=seed)
    results = []
    for layer in sorted(activations):
        x = torch.as_tensor(activations[layer]).detach().cpu().double().numpy()
        if x.shape[0] != len(states):
            raise ProbeError(f"layer {layer}: {x.shape[0]} rows for {len(states)} states")
        if not np.isfinite(x).all():
            raise ProbeError(f"layer {layer}: activations contain NaN or inf")
        for task in task_list:
            train, test = train_all & task.valid, test_all & task.valid
            if not train.any() or not test.any():
                raise ProbeError(f"task {task.name}: no valid train or test states")
            control = control_targets(task.targets, states.turn, seed=seed)
            score = _fit_score(task.kind, x, task.targets, train, test, seed, c, alpha)
            control_score = _fit_score(task.kind, x, control, train, test, seed, c, alpha)
            if task.kind == "classification":
                values, counts = np.unique(task.targets[test], return_counts=True)
                baseline = float(counts.max() / counts.sum())
            else:
                baseline = 0.0
            results.append(
                ProbeResult(
                    task=task.name,
                    layer=int(layer),
                    kind=task.kind,
                    metric="accuracy" if task.kind == "classification" else "r2",
                    score=score,
                    control_score=control_score,
                    baseline=baseline,
                    n_train=int(train.sum()),
                    n_test=int(test.sum()),
                )
            )
    return ProbeTable(tuple(results), model_name=model_name, seed=seed)


def probe_model(
    model: nn.Module,
    tokenizer: Any,
    states: MazeStates,
    layers: int | Sequence[int] | str = "all",
    *,
    tasks: Sequence[str] | None = None,
    batch_size: int = 4,
    **kwargs: Any,
) -> ProbeTable:
    """Read ``model`` at every decision of ``states`` and run :func:`run_probes` on ``layers``."""
    from probes.layers import model_name

    read = read_decisions(model, tokenizer, states, layers, batch_size=batch_size)
    return run_probes(read.activations, states, tasks=tasks, model_name=model_name(model), **kwargs)


def compare_probes(
    model_before: nn.Module,
    model_after: nn.Module,
    tokenizer: Any,
    states: MazeStates,
    layers: int | Sequence[int] | str = "all",
    **kwargs: Any,
) -> dict[str, ProbeTable]:
    """The same probes on two models (e.g. maze-naive and RL-trained): ``{"before": ..., "after": ...}``."""
    return {
        "before": probe_model(model_before, tokenizer, states, layers, **kwargs),
        "after": probe_model(model_after, tokenizer, states, layers, **kwargs),
    }
