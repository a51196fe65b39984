"""The paper's claims at our scale: one row per claim, across training seeds, beside its controls, with a verdict.

Input: finished studies (``summary.json``, :class:`~welfare_axis.summary.StudySummary`), grouped into
*configurations* (model, algorithm and training settings; the seed and the tile set left out). For every claim
(``CLAIMS``: the paper's §C numbers and our own readouts) and configuration, a :class:`ClaimRow` holds

- the paper's value;
- **trained v**: the mean over the configuration's office-tile seeds with a 95% t-interval across seeds (the
  spread across seeds is the error bar that matters);
- **untrained u**: the same study's control, mean and interval across seeds;
- **tile-swap**: the same training with the Mold and Gold glyphs swapped (tiles ``swap``): an axis that follows
  reward, not glyphs, must give the same sign as trained v (the vectors are labelled by the tile's role): its
  own 95% interval of trained − untrained on the paper's side with 3 or more swap seeds, every swap seed there
  with fewer;
- **null**: the readout's label-shuffle null mean (``probes.nulls``), i.e. what a direction with no class
  information gives;

and a verdict, with its reason:

- ``replicates``: the paired difference trained − untrained (per seed) has a 95% interval on the paper's side
  of 0, every seed's trained value beats its null (p < 0.05 where the readout has one), and the tile-swap
  runs (when present) differ from their own control in the same direction;
- ``opposite``: the interval lies on the other side of 0;
- ``not distinguishable from control``: the interval contains 0;
- ``not distinguishable from the null``: the trained values do not beat their null;
- ``too few seeds``: fewer than 3 seeds (the row still shows the numbers);
- ``not measurable``: every trained and untrained value is the same number (a floor or ceiling of the measure,
  e.g. a steering eval that scored no response at any α, or a value read at layers training did not change).

Example:
    >>> rows = claims_table({})
    >>> rows
    []
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from training.config import INERT_ARGS
from welfare_axis.summary import StudySummary

Direction = Literal["lower", "higher"]
MIN_SEEDS = 3
"""Seeds per configuration a verdict needs."""
CONFIG_KEYS: tuple[str, ...] = ("model", "algo", "warm_start", "warm_start_overrides", "finetune", "train_recipe",
                                "train_sizes", "train_steps", "train_overrides", "system_prompt", "trained", "from_run",
                                "layer_star_layers")  # fmt: skip
"""The study settings that define a configuration (everything that changes what is trained, but the seed and
the tile set, and where ℓ* may lie)."""


@dataclass(frozen=True)
class Claim:
    """One claim: the study number it reads and the direction the paper reports (trained vs untrained).

    ``measure`` names a :class:`~welfare_axis.summary.Measure`; ``steering="v_Gold_sentiment"`` reads a
    dose-response slope instead: v's slope as trained, the norm-matched control u's as untrained.
    ``at_layer_star`` names the concept whose vector the claim reads at its ℓ* (None: a claim read at fixed
    layers or from the logits).
    """

    key: str
    text: str
    measure: str
    direction: Direction
    paper: str
    steering: str | None = None
    at_layer_star: str | None = None

    def vector_is_the_control(self, summary: StudySummary) -> bool:
        """True when the study's v equals u at the ℓ* this claim reads (cos(v, u) = 1: ℓ* lies below the layers
        training adapted), so trained and untrained read the same direction."""
        if self.at_layer_star is None:
            return False
        m = summary.measures.get(f"cos_v_u_{self.at_layer_star.lower()}_at_layer_star")
        return m is not None and _numeric(m.trained) is not None and float(m.trained) >= 1 - 1e-6

    def read(self, summary: StudySummary) -> tuple[Any, Any, Any]:
        """(trained, untrained, the trained value's Estimate or None) of one study."""
        if self.steering is None:
            m = summary.measures.get(self.measure)
            return (None, None, None) if m is None else (m.trained, m.control, m.trained_estimate)
        slopes = summary.steering or {}
        v, u = slopes.get(self.steering), slopes.get("u_" + self.steering.removeprefix("v_"))
        return (v or {}).get("slope"), (u or {}).get("slope"), None


CLAIMS: tuple[Claim, ...] = (
    Claim("antiparallel", "min over layers cos(v_Mold, v_Gold) (Eq. 1)", "cos_min", "lower",
          "−0.84 to −0.95 trained; −0.13 to −0.23 untrained"),
    Claim("antiparallel_avg", "layer-averaged cos(v_Mold, v_Gold)", "cos_avg", "lower", "−0.210 trained; +0.089 control"),
    Claim("antiparallel_last", "cos(v_Mold, v_Gold) at the last layer (preregistered lead, session 20)",
          "cos_last_layer", "lower", "not reported per layer (Eq. 1 takes the minimum over layers)"),
    Claim("path_reference", "Path-reference cosine at the last layer", "path_reference_last_layer", "lower",
          "−0.60 trained; positive untrained"),
    Claim("centred", "centred class means Mold·Gold at ⌊2L/3⌋", "centred_mold_gold", "lower",
          "−0.47 to −0.89 trained; about 0 untrained"),
    Claim("failure_tokens", "failure-token AUROC of v_Mold in the logit lens", "v_mold_failure_auroc", "higher",
          "top-5 tokens are failure words"),
    Claim("emotion_slope", "emotion-valence scatter slope", "slope", "lower", "about −1; controls a cloud"),
    Claim("emotion_r", "emotion-valence scatter r", "r", "lower", "a line; controls a cloud"),
    Claim("tracking", "maze tracking d on v_Gold", "maze_d_gold_vector", "higher", "> 1.6 trained; < 0.12 untrained",
          at_layer_star="Gold"),
    Claim("feedback_tracking", "correctness-feedback tracking d", "feedback_d", "higher", "not reported at this size",
          at_layer_star="Gold"),
    Claim("logits_as_q", "logits-as-Q Spearman with the true Q (ours)", "spearman_pooled_centred", "higher",
          "(ours: logits are Q/β + C(s))"),
    *(Claim(f"steer_{vec}_{ev}", f"steering slope per unit α, {vec} on {ev} (u: norm-matched)", "", direction,
            paper, steering=f"{vec}_{ev}", at_layer_star=vec.removeprefix("v_"))
      for vec, ev, direction, paper in (
          ("v_Gold", "sentiment", "higher", "+0.71"), ("v_Mold", "sentiment", "lower", "−0.23"),
          ("v_Gold", "confidence", "higher", "+0.15"), ("v_Mold", "confidence", "lower", "−0.12 to −0.13"),
          ("v_Mold", "backtracking", "higher", "+0.10"), ("v_Gold", "backtracking", "lower", "−0.08"),
          ("v_Mold", "refusal", "higher", "+0.03"), ("v_Gold", "refusal", "lower", "−0.04"))),
)  # fmt: skip


@dataclass(frozen=True)
class Spread:
    """Values across seeds: mean and 95% t-interval (NaN interval with one seed)."""

    values: tuple[float, ...]
    mean: float
    ci_low: float
    ci_high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """Mean and t-interval of ``values`` (None and NaN left out).

        Example:
            >>> s = Spread.of([1.0, 2.0, 3.0])
            >>> s.mean, round(s.ci_low, 4), round(s.ci_high, 4)
            (2.0, -0.4841, 4.4841)
        """
        xs = tuple(float(v) for v in values if v is not None and math.isfinite(float(v)))
        if not xs:
            return cls((), math.nan, math.nan, math.nan)
        mean = float(np.mean(xs))
        if len(xs) < 2:
            return cls(xs, mean, math.nan, math.nan)
        from scipy.stats import t

        half = float(t.ppf(0.975, len(xs) - 1) * np.std(xs, ddof=1) / math.sqrt(len(xs)))
        return cls(xs, mean, mean - half, mean + half)

    def text(self) -> str:
        if not self.values:
            return "—"
        if math.isnan(self.ci_low):
            return f"{self.mean:+.3f} (1 seed)"
        return f"{self.mean:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}] ({len(self.values)} seeds)"


@dataclass(frozen=True)
class ClaimRow:
    """One claim in one configuration."""

    claim: str
    text: str
    configuration: str
    paper: str
    trained: Spread
    untrained: Spread
    difference: Spread
    """trained − untrained, per seed."""
    tile_swap: Spread
    swap_difference: Spread
    null: Spread
    """The trained readout's label-shuffle null mean, per seed."""
    p_values: tuple[float, ...]
    verdict: str
    reason: str

    def row(self) -> dict[str, str]:
        return {"claim": self.text, "configuration": self.configuration, "paper": self.paper,
                "trained v": self.trained.text(), "untrained u": self.untrained.text(),
                "trained − untrained": self.difference.text(), "tile-swap": self.tile_swap.text(),
                "tile-swap − its untrained": self.swap_difference.text(), "null": self.null.text(), "verdict": self.verdict, "reason": self.reason}  # fmt: skip


def configuration_name(config: Mapping[str, Any]) -> str:
    """A readable name of a study's configuration (its :data:`CONFIG_KEYS`).

    Example:
        >>> configuration_name({"model": "smollm2-135m-instruct", "algo": "tbrm", "finetune": "lora"})
        'smollm2-135m-instruct tbrm lora'
        >>> configuration_name({"model": "m", "algo": "dpo", "finetune": "lora", "from_run": "runs/dpo",
        ...                     "train_overrides": {"lr": 5e-4}})
        'm dpo lora from_run=runs/dpo'
    """
    parts = []
    # a study of a finished run (--from-run) trained nothing: the run defines it, not the training settings
    keys = (
        ("model", "algo", "finetune", "from_run", "layer_star_layers")
        if config.get("from_run")
        else CONFIG_KEYS
    )
    for key in keys:
        value = config.get(key)
        if value in (None, {}, "", "study", "cpu", "template", "all") and key not in ("model", "algo"):
            continue
        if isinstance(value, dict):
            shown = {k: v for k, v in value.items() if k not in INERT_ARGS}  # e.g. monitor_every: same model
            if not shown and key not in ("model", "algo"):
                continue
            value = ",".join(f"{k}={v}" for k, v in sorted(shown.items()))
        parts.append(str(value) if key in ("model", "algo", "finetune") else f"{key}={value}")
    return " ".join(parts)


def configuration_of(summary: StudySummary) -> str:
    """The configuration a study's readouts are a seed of: :func:`configuration_name` of its settings, except
    for a finished run that a study trained (``--from-run <study>/stages/train/run``,
    ``TrainingSummary.trained_by``), which is a seed of that study's configuration read with this study's
    layer rule. So a later readout of a trained run pools with the studies that trained the same way (and their
    tile-swap control), not with one run path.

    Example:
        >>> from welfare_axis.summary import TrainingSummary
        >>> trained = {"model": "m", "algo": "dr_grpo", "finetune": "lora", "warm_start": "sft", "seed": 2}
        >>> later = StudySummary(config={"model": "m", "algo": "tbrm", "finetune": "lora",
        ...     "from_run": "runs/a/stages/train/run", "layer_star_layers": "adapted"}, fast=False, model="m",
        ...     training=TrainingSummary(steps=12, trained_by=trained), measures={}, layer_star={})
        >>> configuration_of(later)
        'm dr_grpo warm_start=sft lora layer_star_layers=adapted'
    """
    return configuration_name(_trained_settings(summary))


def _trained_settings(summary: StudySummary) -> Mapping[str, Any]:
    """The settings that trained the study's model (its own, or for a later readout of a study's trained run,
    that study's, with this readout's layer rule): its configuration and training seed."""
    config, by = summary.config, summary.training.trained_by
    if config.get("from_run") and by:
        return {**by, "from_run": None, "layer_star_layers": config.get("layer_star_layers", "all")}
    return config


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(float(value)) else None


def _verdict(
    claim: Claim, diff: Spread, p_values: Sequence[float], swap_diff: Spread, readings: Sequence[float] = ()
) -> tuple[str, str]:
    """``readings``: every trained and untrained value of the configuration (one constant: nothing to compare)."""
    sign = -1.0 if claim.direction == "lower" else 1.0
    n = len(diff.values)
    if n == 0:
        return "not measured", "no seed measured it"
    if len(readings) > 1 and len(set(readings)) == 1:
        return "not measurable", (
            f"every seed read {readings[0]:+.3f}, trained and untrained alike: the measure has no signal here (a "
            "floor, e.g. no response at any α was scored as refusing or backtracking; or a value read where "
            "training changed nothing, e.g. a minimum over layers reached below the adapted layers)"
        )
    if n < MIN_SEEDS:
        return "too few seeds", f"{n} seed(s); a verdict needs {MIN_SEEDS}"
    low, high = sign * diff.ci_low, sign * diff.ci_high
    low, high = min(low, high), max(low, high)
    if low <= 0 <= high:
        return "not distinguishable from control", (
            f"the 95% interval of trained − untrained across {n} seeds contains 0"
        )
    if high < 0:
        return (
            "opposite",
            f"the 95% interval of trained − untrained across {n} seeds lies on the other side of 0",
        )
    if p_values and any(p >= 0.05 for p in p_values):
        beaten = sum(p < 0.05 for p in p_values)
        return "not distinguishable from the null", (
            f"trained differs from untrained, but only {beaten} of {len(p_values)} seeds beat the label-shuffle null"
        )
    if swap_diff.values:
        if len(swap_diff.values) >= MIN_SEEDS:  # its own interval on the paper's side
            follows = min(sign * swap_diff.ci_low, sign * swap_diff.ci_high) > 0
        else:  # fewer seeds: every swap run on the paper's side
            follows = all(sign * d > 0 for d in swap_diff.values)
        if not follows:
            return (
                "not distinguishable from control",
                "the tile-swap runs do not move the same way: the effect follows the glyphs, not reward",
            )
    return "replicates", f"trained − untrained on the paper's side of 0 across {n} seeds" + (
        ", tile-swap follows" if swap_diff.values else " (no tile-swap runs yet)"
    )


def claims_table(runs: Mapping[str, StudySummary], claims: Sequence[Claim] = CLAIMS) -> list[ClaimRow]:
    """One :class:`ClaimRow` per claim and configuration of ``runs`` (``{run name: summary}``).

    Office-tile runs are the configuration's seeds; runs with ``tiles="swap"`` are its tile-swap control. Fast
    runs (pipeline checks) are left out.

    Raises:
        ValueError: two runs are the same seed of one configuration and tile set (one trained model twice).
    """
    groups: dict[str, dict[str, list[StudySummary]]] = defaultdict(lambda: {"office": [], "swap": []})
    seen: dict[tuple[str, str, Any], str] = {}
    for run_name, summary in sorted(runs.items()):
        if summary.fast:
            continue
        tiles = summary.config.get("tiles", "office")
        if tiles in ("office", "swap"):
            trained = _trained_settings(summary)
            configuration = configuration_name(trained)
            key = (configuration, tiles, trained.get("seed"))  # the seed that trained the model
            if key in seen:  # one trained model counted twice would narrow the interval across seeds
                raise ValueError(
                    f"{seen[key]} and {run_name} are both seed {key[2]} of {configuration!r} ({tiles} tiles): the "
                    "same trained model read twice (e.g. at two readout sizes); pass one of them"
                )
            seen[key] = run_name
            groups[configuration][tiles].append(summary)
    out = []
    for name, members in sorted(groups.items()):
        for claim in claims:
            trained, untrained, diffs, nulls, ps = [], [], [], [], []
            for s in members["office"]:
                raw_a, raw_b, estimate = claim.read(s)
                a, b = _numeric(raw_a), _numeric(raw_b)
                trained.append(a)
                untrained.append(b)
                if a is not None and b is not None:
                    diffs.append(a - b)
                if estimate is not None:
                    nulls.append(estimate.null_mean)
                    if estimate.p is not None:
                        ps.append(float(estimate.p))
            swap, swap_diffs = [], []
            for s in members["swap"]:
                raw_a, raw_b, _ = claim.read(s)
                a, b = _numeric(raw_a), _numeric(raw_b)
                swap.append(a)
                if a is not None and b is not None:
                    swap_diffs.append(a - b)
            diff, swap_diff = Spread.of(diffs), Spread.of(swap_diffs)
            readings = [x for x in trained + untrained if x is not None]
            verdict, reason = _verdict(claim, diff, ps, swap_diff, readings)
            office = members["office"]
            if (
                office
                and verdict not in ("not measured", "not measurable")
                and all(claim.vector_is_the_control(s) for s in office)
            ):
                verdict, reason = (
                    "not distinguishable from control",
                    (
                        f"v_{claim.at_layer_star} equals u_{claim.at_layer_star} at ℓ* in every seed (ℓ* below the "
                        "adapted layers): trained and untrained read the same direction, so trained − untrained "
                        "comes from the inputs (e.g. the trained model's own answers), not from training the vector"
                    ),
                )
            out.append(ClaimRow(claim=claim.key, text=claim.text, configuration=name, paper=claim.paper,
                                trained=Spread.of(trained), untrained=Spread.of(untrained), difference=diff,
                                tile_swap=Spread.of(swap), swap_difference=swap_diff, null=Spread.of(nulls),
                                p_values=tuple(ps), verdict=verdict, reason=reason))  # fmt: skip
    return out


@dataclass(frozen=True)
class PreregisteredTest:
    """A test written down before its runs were read: the claims it decides, the configuration (and readout size)
    whose office and tile-swap seeds make its test set, and where its text and decision rule are recorded.

    The decision rule (:func:`preregistered_verdict`) reads each claim's trained − untrained per seed on both
    sides: the test is about what training changes, whatever the label-shuffle null says of v alone."""

    claims: tuple[str, ...]
    configuration: str
    n_per_class: int
    registered: str


LAST_LAYER_LEAD = PreregisteredTest(
    claims=("antiparallel_last", "path_reference"),
    configuration="smollm2-135m-instruct tbrm lora train_sizes=recipe train_overrides=lora_layers=None,lr=0.0005",
    n_per_class=150,
    registered="docs/results.md, session 20 (commit ad61b38)",
)
"""Session 19's last-layer lead, tested on the 6-step TBRM configuration (``--preset tbrm-6-steps``) at 150
trajectories per class, three office and three tile-swap seeds."""


def preregistered_verdict(row: ClaimRow, direction: Direction, min_seeds: int = MIN_SEEDS) -> tuple[str, str]:
    """The preregistered decision rule on one claim's row: "confirmed" if on both sides (office and tile-swap) the
    95% t-interval of trained − untrained across seeds lies wholly on the predicted side of 0; "opposite" if a
    side's interval lies wholly on the other side; "in the predicted direction, not confirmed" if every run is
    on the predicted side (with three seeds a side, a one-sided sign test's p = 1/64) but an interval reaches 0;
    otherwise "not confirmed".

    Example:
        >>> office, swap = Spread.of([-0.2, -0.3, -0.4]), Spread.of([-0.3, -0.35, -0.4])
        >>> row = ClaimRow("c", "c", "cfg", "", office, office, office, swap, swap, Spread.of([]), (), "", "")
        >>> preregistered_verdict(row, "lower")[0]
        'confirmed'
        >>> wide = Spread.of([-0.1, -0.9, -0.05])
        >>> preregistered_verdict(ClaimRow("c", "c", "cfg", "", office, office, office, swap, wide, Spread.of([]),
        ...                                (), "", ""), "lower")
        ('in the predicted direction, not confirmed', 'all 6 runs on the predicted side, but the tile-swap interval reaches 0')
    """
    sign = -1.0 if direction == "lower" else 1.0
    sides = {"office": row.difference, "tile-swap": row.swap_difference}
    short = [f"{name} has {len(d.values)}" for name, d in sides.items() if len(d.values) < min_seeds]
    if short:
        return "too few seeds", f"{', '.join(short)} seed(s); the test needs {min_seeds} on each side"
    lows = {name: min(sign * d.ci_low, sign * d.ci_high) for name, d in sides.items()}
    highs = {name: max(sign * d.ci_low, sign * d.ci_high) for name, d in sides.items()}
    if all(low > 0 for low in lows.values()):
        return (
            "confirmed",
            "on both sides the 95% interval of trained − untrained lies on the predicted side of 0",
        )
    against = [name for name, high in highs.items() if high < 0]
    if against:
        lie = "intervals lie" if len(against) > 1 else "interval lies"
        return "opposite", f"the {' and '.join(against)} {lie} wholly on the other side of 0"
    runs = [sign * x for d in sides.values() for x in d.values]
    reaching = [name for name, low in lows.items() if low <= 0]
    if all(x > 0 for x in runs):
        return "in the predicted direction, not confirmed", (
            f"all {len(runs)} runs on the predicted side, but the {' and '.join(reaching)} "
            + ("intervals reach 0" if len(reaching) > 1 else "interval reaches 0")
        )
    wrong = sum(x <= 0 for x in runs)
    return "not confirmed", f"{wrong} of {len(runs)} runs are not on the predicted side"


def preregistered_rows(
    runs: Mapping[str, StudySummary], test: PreregisteredTest = LAST_LAYER_LEAD
) -> list[tuple[ClaimRow, str, str]]:
    """The rows of ``test``'s claims over its test set among ``runs`` (``{run name: summary}``: the runs of its
    configuration read at its ``n_per_class``), each with the preregistered verdict and its reason; empty when
    ``runs`` holds none of them."""
    members = {
        name: s
        for name, s in runs.items()
        if configuration_of(s) == test.configuration and s.config.get("n_per_class") == test.n_per_class
    }
    claims = [c for c in CLAIMS if c.key in test.claims]
    directions = {c.key: c.direction for c in claims}
    return [
        (row, *preregistered_verdict(row, directions[row.claim])) for row in claims_table(members, claims)
    ]


def claims_markdown(rows: Sequence[ClaimRow]) -> str:
    """The table as Markdown (for ``docs/results.md`` and the report); the configuration column only when the
    rows span more than one configuration (with one, the caller names it once)."""
    if not rows:
        return "(no finished non-fast studies)"
    one = len({r.configuration for r in rows}) == 1
    cols = [c for c in rows[0].row() if not (one and c == "configuration")]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = r.row()
        lines.append("| " + " | ".join(str(cells[c]).replace("|", "\\|") for c in cols) + " |")
    return "\n".join(lines)
