"""Subcommands added to ``welfare-axis`` by the training code.

``welfare-axis train ...`` takes exactly the flags of ``python -m training.train`` (every field of
:class:`training.Args`, parsed by tyro; ``welfare-axis train --help`` lists them), plus
``--recipe cpu`` for the 2-core CPU defaults.

Examples:
    welfare-axis train --recipe cpu --out runs/tbrm_cpu
    welfare-axis train --model smollm2-135m-instruct --algo sft --steps 50 --out runs/sft
    welfare-axis train --recipe cpu --out runs/tbrm_cpu --resume
"""

from __future__ import annotations

import argparse


def _train(args: argparse.Namespace) -> int:
    from training import cli

    return cli(args.train_args, prog="welfare-axis train")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand (its flags are parsed by tyro, not argparse)."""
    parser = subparsers.add_parser(
        "train",
        help="RL/SFT-train a model in the maze (see: welfare-axis train --help)",
        add_help=False,
        prefix_chars="\x00",  # hand every flag, --help included, to tyro untouched
    )
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=_train)
