"""Options shared by several commands."""

from __future__ import annotations


def add_allow_non_ct(parser) -> None:
    """``--allow-non-ct``: process an input whose values do not look like CT in HU."""
    parser.add_argument(
        "--allow-non-ct", action="store_true",
        help="process the input even when its values do not look like CT in Hounsfield units "
        "(MR, normalised 0..1 images, label maps; refused by default). Masked-bone CTs "
        "(zero outside the bone) are CT and need no override",
    )


def add_real_training(parser, kind: str) -> None:
    """Options of the commands that train on real per-bone masked pelves (``kind`` model)."""
    parser.add_argument("sources", nargs="+",
                        help="folders of per-bone masked cases (case_N/{SA,LI,RI}_image + _fragments)")
    parser.add_argument("--work-dir", required=True,
                        help="scratch folder: cases, nnU-Net folders, logs (reused to resume)")
    parser.add_argument("--out", required=True, help="where the trained model folder is written")
    parser.add_argument("--holdout", default="",
                        help="comma-separated case folder names kept out of training (validation patients)")
    parser.add_argument("--init-weights", default="bundled",
                        help="model folder or checkpoint whose weights start the training: "
                             f"'bundled' (the bundled {kind} model, default), 'none', or a path")
    parser.add_argument("--max-minutes", type=float, required=True,
                        help="training time budget, minutes (the learning rate decays over it)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")


def add_fatty_marrow(parser, which: str) -> None:
    """``--fatty-marrow P``: the share of ``which`` whose real bones get fatty marrow."""
    parser.add_argument("--fatty-marrow", type=float, default=0.5, metavar="P",
                        help=f"share of {which} whose real bones get fatty marrow (default 0.5)")


def fatty_marrow_ok(args) -> bool:
    """False (after a message) when ``--fatty-marrow`` lies outside 0..1."""
    import sys

    if 0.0 <= args.fatty_marrow <= 1.0:
        return True
    print(f"error: --fatty-marrow must lie between 0 and 1, not {args.fatty_marrow}", file=sys.stderr)
    return False


def real_training_inputs(args, kind: str) -> dict | None:
    """Keyword arguments shared by the real-data trainers, or None (after a message) when
    the options are invalid."""
    import sys

    from ..models import bundled_model_path, resolve_device

    if args.max_minutes <= 0:
        print("error: --max-minutes must be positive", file=sys.stderr)
        return None
    init = {"bundled": str(bundled_model_path(kind)), "none": None}.get(args.init_weights, args.init_weights)
    return {"holdout": tuple(filter(None, args.holdout.split(","))), "init_weights": init,
            "max_seconds": 60.0 * args.max_minutes, "device": resolve_device(args.device).type,
            "threads": args.threads}
