"""Cosines of a reward model's head direction (pulled back into the last block's residual stream) with the
reward vectors of study runs, trained and untrained, at that layer, beside a random-direction null.

    python scripts/rm_direction_cosines.py runs/rm_smollm2 runs/default runs/default_seed1

The policies' vectors live in their own (LoRA-adapted) models and the reward model's direction in its own;
all three share the base model, whose residual basis the small adapters leave nearly in place, so the cosines
compare directions across models approximately (issue 21).
"""

from __future__ import annotations

import sys

import torch

from probes.concept_vector import ConceptVector
from training.reward_model import load_reward_model


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=0))


def main(rm_dir: str, runs: list[str]) -> None:
    rm = load_reward_model(rm_dir, device="cpu")
    direction = rm.residual_direction()
    layer = direction.layers[0]
    w = direction[layer]
    print(
        f"| run | vectors | cos(RM, v_Gold) | cos(RM, v_Mold) | cos(RM, v_Gold − v_Mold) |  (layer {layer})"
    )
    print("|---|---|---|---|---|")
    for run in runs:
        for kind, label in (("vectors_trained", "trained v"), ("vectors_control", "untrained u")):
            gold = ConceptVector.load(f"{run}/stages/readouts/{kind}/Gold")[layer]
            mold = ConceptVector.load(f"{run}/stages/readouts/{kind}/Mold")[layer]
            print(
                f"| {run} | {label} | {cos(w, gold):+.3f} | {cos(w, mold):+.3f} | {cos(w, gold - mold):+.3f} |"
            )
    draws = torch.randn(2000, w.shape[0], generator=torch.Generator().manual_seed(0))
    null = torch.nn.functional.cosine_similarity(draws, w[None], dim=1).abs().quantile(0.95)
    print(f"random directions: 95% of |cos| below {float(null):.3f} (2,000 seeded Gaussian draws)")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
