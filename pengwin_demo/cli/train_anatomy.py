"""``train-anatomy``: train the anatomy model on real pelves placed in synthetic bodies."""

from __future__ import annotations

from pathlib import Path

from ._options import add_real_training, real_training_inputs

NAME = "train-anatomy"
HELP = "train the anatomy (Stage 1) model on real per-bone masked pelves inside synthetic bodies"


def add_arguments(parser) -> None:
    add_real_training(parser, "anatomy")
    parser.add_argument("--bodies-per-case", type=int, default=8,
                        help="synthetic bodies each real pelvis is placed in (half mirrored; default 8)")
    parser.add_argument("--phantoms", type=int, default=12,
                        help="small full-context phantoms added to the training set (default 12)")


def run(args) -> int:
    from ..training import train_real_anatomy

    inputs = real_training_inputs(args, "anatomy")
    if inputs is None:
        return 2
    out = train_real_anatomy(args.work_dir, Path(args.out), args.sources, per_case=args.bodies_per_case,
                             phantoms=args.phantoms, **inputs)
    print(f"anatomy: {out}")
    return 0
