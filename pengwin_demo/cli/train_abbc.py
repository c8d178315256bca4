"""``train-abbc``: train the fragment (ABBC) model on real bone-masked fractured pelves."""

from __future__ import annotations

import sys
from pathlib import Path

from ._options import add_fatty_marrow, add_real_training, fatty_marrow_ok, real_training_inputs

NAME = "train-abbc"
HELP = "train the ABBC (fragment) model on real per-bone masked pelves, holding patients out"


def add_arguments(parser) -> None:
    add_real_training(parser, "abbc")
    parser.add_argument("--bodies-per-case", type=int, default=0,
                        help="also train on each pelvis in this many synthetic bodies, cut and masked as "
                             "Stage 2 masks a real scan (default 0: the masked cases only)")
    parser.add_argument("--seed", type=int, default=0, help="seed of those bodies")
    add_fatty_marrow(parser, "those bodies")


def run(args) -> int:
    from ..training import train_real_abbc

    inputs = real_training_inputs(args, "abbc")
    if inputs is None or not fatty_marrow_ok(args):
        return 2
    if args.bodies_per_case < 0:
        print("error: --bodies-per-case must be 0 or more", file=sys.stderr)
        return 2
    out = train_real_abbc(args.work_dir, Path(args.out), args.sources, bodies_per_case=args.bodies_per_case,
                          seed=args.seed, fatty_marrow_probability=args.fatty_marrow, **inputs)
    print(f"abbc: {out}")
    return 0
