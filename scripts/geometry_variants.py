"""Eq. 1 geometry of one model under the extraction choices the paper's text leaves open, with nulls and CIs.

For each variant (``--variants fresh reversal none``: the default design; Mold allowed to turn back onto
the tile it just left; no system prompt), extract the scripted Mold/Gold/Path activations, split them with
the matched split, and print every geometry number with its 95% bootstrap interval and permutation null
(``probes.nulls``) as one Markdown table, plus a JSON file. This is the geometry part of
``probes.readout_report``, run once per variant (the other readouts do not depend on these choices in a
way the docs compare).

    python scripts/geometry_variants.py --n-per-class 100 --out docs/geometry_variants_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from maze_env import config_for_tiles
from probes import layers as _layers
from probes.artifacts import write_text
from probes.extract import reward_activations
from probes.geometry import analysis_layer
from probes.models import load_model
from probes.nulls import TripletResampler
from probes.readout_report import ReportSettings, geometry_estimates

VARIANTS = {
    "fresh": {"mold_reversal": False, "system_prompt": "template"},
    "reversal": {"mold_reversal": True, "system_prompt": "template"},
    "none": {"mold_reversal": False, "system_prompt": "none"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--n-per-class", type=int, default=100)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(2)
    settings = ReportSettings(n_per_class=args.n_per_class)
    config = config_for_tiles(settings.tiles, size=settings.maze_size, n_turns=settings.n_turns)
    results = {}
    for name in args.variants:
        variant = VARIANTS[name]
        start = time.perf_counter()
        model, tok = load_model(args.model, device="cpu", system_prompt=variant["system_prompt"])
        acts = reward_activations(
            model, tok, n_per_class=args.n_per_class, config=config, seed=settings.seed,
            mold_reversal=variant["mold_reversal"], batch_size=settings.batch_size, progress=True,
        )  # fmt: skip
        train, _ = acts.split(settings.held_out, seed=settings.split_seed, matched=True)
        resampler = TripletResampler(train, n_shuffles=settings.null_shuffles, n_boot=settings.n_boot)
        centred_layer = analysis_layer(_layers.n_layers(model))
        est = geometry_estimates(model, train, resampler, centred_layer, settings)
        results[name] = {"variant": variant, "seconds": round(time.perf_counter() - start, 1),
                         "n_train_per_class": train.n_per_class["Mold"], **est.to_dict()}  # fmt: skip
        print(f"{name}: {results[name]['seconds']} s", flush=True)
    write_text(args.out, json.dumps({"model": args.model, "n_per_class": args.n_per_class,
                                     "variants": results}, indent=1, ensure_ascii=False))  # fmt: skip
    print(table(results))


def table(results: dict) -> str:
    """Markdown: one row per geometry number, one column per variant (value [CI]; p)."""
    names = list(results)
    first = results[names[0]]
    rows = [("cos(Mold, Gold), average", "cos_mold_gold_avg"), ("cos(Mold, Gold), minimum", "cos_mold_gold_min"),
            ("cos(Mold, Gold), last layer, residual", "last_layer_pre_norm"),
            ("cos(Mold, Gold), last layer, after the final norm", "last_layer_post_norm"),
            ("Path-reference cosine, average", "path_reference_avg"),
            ("Path-reference cosine, last layer", "path_reference_last")]  # fmt: skip
    lines = ["| readout | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]

    def cell(e: dict) -> str:
        return f"{e['value']:+.3f} [{e['ci_low']:+.3f}, {e['ci_high']:+.3f}]; null {e['null_mean']:+.3f}, p {e['p']:.3f}"

    for label, key in rows:
        lines.append(f"| {label} | " + " | ".join(cell(results[n][key]) for n in names) + " |")
    for pair in first["centred"]:
        lines.append(
            f"| centred {pair} | " + " | ".join(cell(results[n]["centred"][pair]) for n in names) + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
