"""Benchmark: which grid spacing the ABBC stage needs on real fractured pelves.

    python benchmarks/bench_real_resolution.py [--spacings 2.0,1.5,1.0] [--cases case_001,...]

For every real per-bone masked case (``../shared/data/real_fractured_pelves``) and every
spacing, the expert fragments go through the path a perfect ABBC network would take:
ABBC targets on the CT grid (:func:`pengwin_demo.recovery.abbc_targets`), to the model grid
(nearest, as a label map), instance recovery there with the expert anatomy, and back onto
the CT grid (:func:`pengwin_demo.recovery.smooth_labels_onto` with the bone's partial-volume
fraction as foreground, the field a well-trained network's foreground probability
approximates). The official PENGWIN metrics of that round trip are the ceiling of a model
at that spacing: fracture gaps narrower than the grid close and the fragments merge.

The case is cropped to its bone box (plus a margin) first; every figure is printed per
case and averaged.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pengwin_demo.labels import anatomy_from_fragments  # noqa: E402
from pengwin_demo.masked_cases import find_masked_cases, read_masked_case  # noqa: E402
from pengwin_demo.metrics import evaluate_case  # noqa: E402
from pengwin_demo.recovery import abbc_targets, recover_fragments, smooth_labels_onto  # noqa: E402
from pengwin_demo.volume import bounding_box, resample_onto, resample_to_spacing  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "real_fractured_pelves"
MARGIN_VOX = 8


def round_trip(labels, spacing_mm: float) -> tuple[np.ndarray, float]:
    """Expert labels -> ABBC -> model grid -> recovery -> CT grid; (labels, seconds)."""
    t0 = time.perf_counter()
    abbc = labels.with_array(abbc_targets(labels.array, labels.spacing_zyx_mm))
    anatomy = labels.with_array(anatomy_from_fragments(labels.array))
    grid = (spacing_mm,) * 3
    abbc_m = resample_to_spacing(abbc, grid, "nearest")
    anat_m = resample_onto(anatomy, abbc_m, "nearest")
    bone = labels.with_array((labels.array > 0).astype(np.float32))
    fraction = resample_onto(bone, abbc_m, "linear").array
    rec = recover_fragments(abbc_m.array, anat_m.array, abbc_m.spacing_zyx_mm)
    back = smooth_labels_onto(abbc_m.with_array(rec.labels), labels, foreground=fraction)
    return back, time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spacings", default="2.0,1.5,1.0", help="model grid spacings, mm")
    parser.add_argument("--cases", default="", help="comma-separated case folder names (default all)")
    parser.add_argument("--data", default=str(DATA), help="folder of per-bone masked cases")
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        print(f"real data not found at {args.data}: nothing to measure")
        return 0
    spacings = [float(s) for s in args.spacings.split(",")]
    wanted = set(filter(None, args.cases.split(",")))
    rows = []
    for case in find_masked_cases(args.data):
        if wanted and case.name not in wanted:
            continue
        _, labels = read_masked_case(case)
        labels = labels.crop(bounding_box(labels.array > 0, MARGIN_VOX))
        n_gt = len(np.unique(labels.array)) - 1
        for s in spacings:
            pred, seconds = round_trip(labels, s)
            m = evaluate_case(pred, labels.array, labels.spacing_zyx_mm)
            row = {"case": case.name, "spacing_mm": s, "iou_f": round(m["iou_f"], 4),
                   "hd95_f_mm": round(m["hd95_f"], 2), "iou_a": round(m["iou_a"], 4),
                   "fragments": f"{m['n_pred_fragments']}/{n_gt}", "seconds": round(seconds, 1)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    for s in spacings:
        sel = [r for r in rows if r["spacing_mm"] == s]
        if sel:
            print(f"spacing {s} mm: mean IoU-F {np.mean([r['iou_f'] for r in sel]):.4f}, "
                  f"IoU-A {np.mean([r['iou_a'] for r in sel]):.4f}, "
                  f"HD95-F {np.mean([r['hd95_f_mm'] for r in sel]):.2f} mm over {len(sel)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
