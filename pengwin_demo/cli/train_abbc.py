"""``train-abbc``: train the fragment (ABBC) model on real bone-masked fractured pelves."""

from __future__ import annotations

from pathlib import Path

from ._options import add_real_training, real_training_inputs

NAME = "train-abbc"
HELP = "train the ABBC (fragment) model on real per-bone masked pelves, holding patients out"


def add_arguments(parser) -> None:
    add_real_training(parser, "abbc")


def run(args) -> int:
    from ..training import train_real_abbc

    inputs = real_training_inputs(args, "abbc")
    if inputs is None:
        return 2
    out = train_real_abbc(args.work_dir, Path(args.out), args.sources, **inputs)
    print(f"abbc: {out}")
    return 0
