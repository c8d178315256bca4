"""``evaluate``: score predicted PENGWIN label maps against ground truth (official metrics).

Prints a per-case table and a summary (mean, median, std); ``--json`` and ``--csv`` write
the same numbers. See :mod:`pengwin_demo.metrics` and docs/metrics.md for the semantics.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from ..errors import InputError
from ..metrics import METRIC_KEYS, OFFICIAL_SAMPLE_SIZE, OFFICIAL_SEED, evaluate_folders

NAME = "evaluate"
HELP = "score predicted PENGWIN label maps against ground truth (official challenge metrics)"

_STATS = ("mean", "median", "std")


def add_arguments(parser) -> None:
    parser.add_argument("--pred", required=True, help="predicted label file, or folder of them")
    parser.add_argument("--gt", required=True,
                        help="ground-truth label file, or folder (cases matched by file name)")
    parser.add_argument("--json", metavar="OUT.json", help="write per-case results and summary")
    parser.add_argument("--csv", metavar="OUT.csv", help="write one row per case, then mean/median/std")
    parser.add_argument("--strict", action="store_true",
                        help="one-to-one (Hungarian) fragment matching; missed and extra "
                             "fragments count (not the challenge's definition)")
    parser.add_argument("--seed", type=int, default=OFFICIAL_SEED,
                        help=f"random state of the surface subsampling (official: {OFFICIAL_SEED})")
    parser.add_argument("--sample-size", type=int, default=OFFICIAL_SAMPLE_SIZE,
                        help=f"surface points kept per shell (official: {OFFICIAL_SAMPLE_SIZE}); "
                             "0 keeps all points (exact, slower)")


def run(args) -> int:
    if args.sample_size < 0:
        raise InputError(f"--sample-size must be 0 (all points) or positive, got {args.sample_size}")
    sample_size = args.sample_size or None
    header = _row("case", list(METRIC_KEYS), header=True)
    shown = []

    def show(name: str, result: dict) -> None:
        if not shown:  # print the header only once the inputs were found and paired
            print(header)
        shown.append(name)
        print(_row(name, [result[k] for k in METRIC_KEYS]))
        for note in result["details"]["notes"]:
            print(f"    note: {note}")

    report = evaluate_folders(args.pred, args.gt, strict=args.strict, seed=args.seed,
                              sample_size=sample_size, on_case=show)
    print("-" * len(header))
    for stat in _STATS:
        print(_row(stat, [report["summary"][k][stat] for k in METRIC_KEYS]))
    print(f"{len(report['cases'])} case(s), {report['settings']['mode']} matching; "
          "distances in mm")
    if args.json:
        write_json(report, args.json)
        print(f"wrote {args.json}")
    if args.csv:
        write_csv(report, args.csv)
        print(f"wrote {args.csv}")
    return 0


def _row(name: str, values: list, header: bool = False) -> str:
    cells = [f"{v:>9}" if header else f"{_fmt(v):>9}" for v in values]
    return f"{name[:24]:<24} " + " ".join(cells)


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf"
    return f"{value:.4f}"


def _jsonable(obj):
    """Replace non-finite floats by None (strict JSON has no inf/NaN) and numpy scalars."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) or hasattr(obj, "dtype"):
        value = obj.item() if hasattr(obj, "item") else obj
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value
    return obj


def write_json(report: dict, path: str | os.PathLike) -> Path:
    """Write an :func:`~pengwin_demo.metrics.evaluate_folders` report as strict JSON.

    Infinite and NaN values (e.g. HD95 of a bone missing from the ground truth) become
    ``null``; the CSV keeps them as ``inf`` / ``nan``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(report), indent=2, allow_nan=False) + "\n")
    return path


def write_csv(report: dict, path: str | os.PathLike) -> Path:
    """One row per case (metrics and fragment counts), then mean, median and std rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", *METRIC_KEYS, "n_gt_fragments", "n_pred_fragments"])
        for name, result in report["cases"].items():
            writer.writerow([name, *(_csv(result[k]) for k in METRIC_KEYS),
                             result["n_gt_fragments"], result["n_pred_fragments"]])
        for stat in _STATS:
            writer.writerow([stat, *(_csv(report["summary"][k][stat]) for k in METRIC_KEYS), "", ""])
    return path


def _csv(value: float) -> str:
    return _fmt(value) if not math.isfinite(value) else repr(float(value))
