"""``train-abbc``: train the fragment (ABBC) model on real bone-masked fractured pelves."""

from __future__ import annotations

import sys
from pathlib import Path

NAME = "train-abbc"
HELP = "train the ABBC (fragment) model on real per-bone masked pelves, holding patients out"


def add_arguments(parser) -> None:
    parser.add_argument("sources", nargs="+",
                        help="folders of per-bone masked cases (case_N/{SA,LI,RI}_image + _fragments)")
    parser.add_argument("--work-dir", required=True,
                        help="scratch folder: cases, nnU-Net folders, logs (reused to resume)")
    parser.add_argument("--out", required=True, help="where the trained model folder is written")
    parser.add_argument("--holdout", default="",
                        help="comma-separated case folder names kept out of training (validation patients)")
    parser.add_argument("--init-weights", default="bundled",
                        help="model folder or checkpoint whose weights start the training: "
                             "'bundled' (the bundled ABBC model, default), 'none', or a path")
    parser.add_argument("--max-minutes", type=float, required=True,
                        help="training time budget, minutes (the learning rate decays over it)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")


def run(args) -> int:
    from ..models import bundled_model_path, resolve_device
    from ..real_training import train_real_abbc

    init = {"bundled": str(bundled_model_path("abbc")), "none": None}.get(args.init_weights, args.init_weights)
    if args.max_minutes <= 0:
        print("error: --max-minutes must be positive", file=sys.stderr)
        return 2
    out = train_real_abbc(
        args.work_dir, Path(args.out), args.sources,
        holdout=tuple(filter(None, args.holdout.split(","))), init_weights=init,
        max_seconds=60.0 * args.max_minutes, device=resolve_device(args.device).type, threads=args.threads,
    )
    print(f"abbc: {out}")
    return 0
