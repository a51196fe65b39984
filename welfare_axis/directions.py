"""Where does each training method write the reward? Cosines of reward vectors across studies.

Each study (``welfare-axis run``, also ``--from-run`` on a DPO, SFT or RL-against-a-reward-model run) saves, per
concept, the untrained model's vector u and the trained model's v at every layer, both from the same seeded
trajectories. ``v − u`` is what training changed in that concept's direction. Against a reference study (an
RL-trained one), at the reference's ℓ* and at the last layer, this module reports:

- ``cos(v, v_ref)`` beside ``cos(u, v_ref)``: how close the trained vectors are, against where they started;
- ``cos(v − u, v_ref − u_ref)``: whether the two trainings moved the direction the same way (the shift
  cosine). A study against a second seed of the reference's configuration shows what "the same way" reaches
  at this size; random directions in ``d`` dimensions give ``|cos| < null95`` 95% of the time.

Vectors of different trained models are compared in one coordinate system, the shared base model's residual
stream; LoRA moves the basis little, so the cosines are approximate (the same holds for the paper's
cross-checkpoint comparisons).

``python -m welfare_axis.directions --reference runs/default --runs runs/default_seed1 runs/from-dpo`` prints
the markdown table; ``--reward-model DIR`` adds the Bradley–Terry reward model's head direction
(``RewardModel.residual_direction``) against each study's vectors at the last layer, and ``--valence`` the base
model's emotion valence axis there (emotion PC1 of ``probes.emotions.emotion_vectors`` on every shipped story,
signed so positive-valence emotions project higher; ``valence_direction``): a Gold shift along it and a Mold
shift against it are the paper's "recruited welfare axis".
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from probes.concept_vector import ConceptVector
from welfare_axis.summary import StudySummary

CONCEPTS = ("Gold", "Mold")


def random_cosine_bound(d: int, level: float = 0.95) -> float:
    """``c`` with ``P(|cos(x, y)| < c) = level`` for independent isotropic directions in ``d`` dimensions
    (normal approximation: ``cos·√d`` is close to a standard normal for large ``d``).

    Example:
        >>> round(random_cosine_bound(576), 4)
        0.0817
    """
    from scipy import stats

    return float(stats.norm.ppf(0.5 + level / 2) / math.sqrt(d))


@dataclass(frozen=True)
class DirectionCosine:
    """One study's vector of one concept at one layer against a reference study's."""

    run: str
    reference: str
    concept: str
    layer: int
    layer_is: str
    """Which layer this is: the reference's ℓ* of the concept, or the last layer."""
    cos_v: float
    """cos(v, v_ref)."""
    cos_u: float
    """cos(u, v_ref): the untrained model's vector, where v started."""
    cos_shift: float
    """cos(v − u, v_ref − u_ref): the two trainings' changes."""
    null95: float

    def row(self) -> str:
        return (f"| {self.run} | {self.reference} | {self.concept} | L{self.layer} ({self.layer_is}) | "
                f"{self.cos_v:+.3f} | {self.cos_u:+.3f} | {self.cos_shift:+.3f} | {self.null95:.3f} |")  # fmt: skip


def _vectors(run: Path, which: str, concept: str) -> ConceptVector:
    return ConceptVector.load(run / "stages" / "readouts" / f"vectors_{which}" / concept)


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))


def direction_cosines(runs: Sequence[Path], reference: Path) -> list[DirectionCosine]:
    """Every run's vectors against the reference study's, per concept, at the reference's ℓ* and last layer."""
    star = StudySummary.load(reference).layer_star
    rows = []
    for concept in CONCEPTS:
        v_ref, u_ref = _vectors(reference, "trained", concept), _vectors(reference, "control", concept)
        last = max(v_ref.layers)
        layers = [(int(star[concept]), "ℓ*")] + ([(last, "last")] if int(star[concept]) != last else [])
        for run in runs:
            v, u = _vectors(run, "trained", concept), _vectors(run, "control", concept)
            for layer, label in layers:
                rows.append(
                    DirectionCosine(
                        run=run.name, reference=reference.name, concept=concept, layer=layer, layer_is=label,
                        cos_v=_cos(v[layer], v_ref[layer]), cos_u=_cos(u[layer], v_ref[layer]),
                        cos_shift=_cos(v[layer] - u[layer], v_ref[layer] - u_ref[layer]),
                        null95=random_cosine_bound(v_ref[layer].numel()),
                    )
                )  # fmt: skip
    return rows


@dataclass(frozen=True)
class RewardModelCosine:
    """The reward model's head direction against one study's vectors at the last layer."""

    run: str
    layer: int
    cos_v_gold: float
    cos_v_mold: float
    cos_u_gold: float
    cos_u_mold: float
    cos_shift_gold: float
    cos_shift_mold: float
    null95: float

    def row(self) -> str:
        return (f"| {self.run} | L{self.layer} | {self.cos_v_gold:+.3f} / {self.cos_u_gold:+.3f} | "
                f"{self.cos_v_mold:+.3f} / {self.cos_u_mold:+.3f} | {self.cos_shift_gold:+.3f} | "
                f"{self.cos_shift_mold:+.3f} | {self.null95:.3f} |")  # fmt: skip


def reward_model_cosines(direction: ConceptVector, runs: Sequence[Path]) -> list[RewardModelCosine]:
    """``direction`` (one layer, e.g. ``RewardModel.residual_direction()``) against each study's v, u and v − u."""
    (layer,) = direction.layers
    w = direction[layer]
    out = []
    for run in runs:
        vec = {(c, k): _vectors(run, k, c)[layer] for c in CONCEPTS for k in ("trained", "control")}
        out.append(
            RewardModelCosine(
                run=run.name, layer=layer,
                cos_v_gold=_cos(w, vec["Gold", "trained"]), cos_v_mold=_cos(w, vec["Mold", "trained"]),
                cos_u_gold=_cos(w, vec["Gold", "control"]), cos_u_mold=_cos(w, vec["Mold", "control"]),
                cos_shift_gold=_cos(w, vec["Gold", "trained"] - vec["Gold", "control"]),
                cos_shift_mold=_cos(w, vec["Mold", "trained"] - vec["Mold", "control"]),
                null95=random_cosine_bound(w.numel()),
            )
        )  # fmt: skip
    return out


def valence_direction(model, tokenizer, layer: int) -> ConceptVector:
    """The model's emotion valence axis at ``layer`` (emotion PC1 over every shipped story, denoised with the
    neutral texts' PCs, signed so positive-valence emotions score higher: ``probes.emotions.valence_axis``)."""
    from probes.emotions import emotion_vectors, valence_axis

    axis = valence_axis(emotion_vectors(model, tokenizer, [layer]), layer)
    return ConceptVector({layer: axis.pc1.float()}, concept="valence")


def markdown(
    rows: Sequence[DirectionCosine],
    rm_rows: Sequence[RewardModelCosine] = (),
    valence_rows: Sequence[RewardModelCosine] = (),
) -> str:
    lines = ["| study | reference | concept | layer | cos(v, v_ref) | cos(u, v_ref) | cos(v − u, v_ref − u_ref) | "
             "random 95% |cos| < |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [r.row() for r in rows]
    for name, extra in (("RM", rm_rows), ("valence", valence_rows)):
        if extra:
            lines += ["", f"| study | layer | cos({name}, v_Gold) / cos({name}, u_Gold) | cos({name}, v_Mold) / "
                          f"cos({name}, u_Mold) | cos({name}, v_Gold − u_Gold) | cos({name}, v_Mold − u_Mold) | "
                          "random 95% |cos| < |", "|---|---|---|---|---|---|---|"]  # fmt: skip
            lines += [r.row() for r in extra]
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m welfare_axis.directions", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--reference", required=True, help="the reference study (an RL-trained run)")
    parser.add_argument("--runs", nargs="+", required=True, help="studies to compare with it")
    parser.add_argument(
        "--reward-model", default=None, help="a reward-model directory: its head direction too"
    )
    parser.add_argument(
        "--valence", action="store_true", help="the base model's emotion valence axis at the last layer too"
    )
    args = parser.parse_args(argv)
    runs = [Path(p) for p in args.runs]
    everyone = [Path(args.reference), *runs]
    rm_rows: list[RewardModelCosine] = []
    valence_rows: list[RewardModelCosine] = []
    if args.reward_model:
        from training.reward_model import load_reward_model

        direction = load_reward_model(args.reward_model, device="cpu").residual_direction()
        rm_rows = reward_model_cosines(direction, everyone)
    if args.valence:
        from probes.artifacts import read_json
        from training import Args, load_base_model

        # the base model every study's u was read on (the reference's, as its train stage loads it)
        train = read_json(Path(args.reference) / "stages" / "train" / "stage.json")["result"]
        model, tokenizer = load_base_model(Args(**{**train["train_args"], "device": "cpu"}))
        last = max(_vectors(Path(args.reference), "control", "Gold").layers)
        valence_rows = reward_model_cosines(valence_direction(model, tokenizer, last), everyone)
    print(markdown(direction_cosines(runs, Path(args.reference)), rm_rows, valence_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
