"""Measure the demo models on held-out phantoms: Stage-1 anatomy IoU and end-to-end metrics.

Held-out phantoms are drawn with seeds that the training set never uses (the training set
is ``write_phantom_dataset(seed=TRAIN_SEED)``; evaluation cases are ``make_phantom(s)`` for
``s`` in ``EVAL_SEEDS``, a disjoint range), at full size by default, and run through the
whole pipeline (:class:`pengwin_demo.pipeline.Pipeline`) on the chosen device.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from ..labels import BONES

log = logging.getLogger(__name__)

EVAL_SEEDS = (900001, 900002, 900003, 900004, 900005)
"""Phantom seeds for held-out evaluation (training uses case_seed(TRAIN_SEED, i))."""


def bone_iou(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """IoU per bone of two anatomy maps (0 bg, 1 sacrum, 2 left hip, 3 right hip)."""
    out = {}
    for k, name in BONES.items():
        p, g = pred == k, gt == k
        union = np.count_nonzero(p | g)
        out[name] = float(np.count_nonzero(p & g) / union) if union else float("nan")
    out["mean"] = float(np.nanmean([out[n] for n in BONES.values()]))
    return out


def evaluate_models(
    anatomy_model: str | os.PathLike,
    abbc_model: str | os.PathLike,
    seeds=EVAL_SEEDS[:3],
    size: str = "full",
    device: str = "cpu",
    out_json: str | os.PathLike | None = None,
    refine_anatomy: str | os.PathLike = "auto",
) -> dict:
    """Score the models on held-out phantoms (pipeline end to end, official PENGWIN metrics).

    Returns a dict with per-case rows and means of ``stage1_iou`` (anatomy model alone,
    on the input grid), ``iou_a`` and ``iou_f`` (end to end, after the refining model
    ``refine_anatomy`` where one runs), fragment counts and seconds.
    """
    from ..labels import anatomy_from_fragments
    from ..metrics import evaluate_case
    from ..phantom import make_phantom
    from ..pipeline import Pipeline
    from ..recovery import nearest_onto

    pipe = Pipeline(device=device, anatomy=str(anatomy_model), fragments=str(abbc_model),
                    refine_anatomy=str(refine_anatomy))
    models = pipe.load_models()
    rows = []
    for seed in seeds:
        ct, gt = make_phantom(int(seed), size)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="pengwin-eval-") as tmp:
            result = pipe.run(ct, tmp)
        seconds = time.perf_counter() - t0
        anat_vol, _, _ = pipe._predict(models["anatomy"], ct, pipe.device_name(), "anatomy", [])
        stage1 = bone_iou(nearest_onto(anat_vol, ct), anatomy_from_fragments(gt.array))
        m = evaluate_case(result.labels.array, gt.array, gt.spacing_zyx_mm)
        row = {
            "seed": int(seed), "shape": list(ct.shape), "spacing_zyx_mm": [round(s, 3) for s in ct.spacing_zyx_mm],
            "stage1_iou": round(stage1["mean"], 4), "iou_a": round(m["iou_a"], 4), "iou_f": round(m["iou_f"], 4),
            "hd95_f_mm": round(m["hd95_f"], 2), "n_gt_fragments": m["n_gt_fragments"],
            "n_pred_fragments": m["n_pred_fragments"], "pipeline_s": round(seconds, 1),
        }
        log.info("held-out phantom %s: %s", seed, row)
        print(json.dumps(row), flush=True)
        rows.append(row)
    summary = {k: round(float(np.mean([r[k] for r in rows])), 4)
               for k in ("stage1_iou", "iou_a", "iou_f", "hd95_f_mm", "pipeline_s")}
    out = {"size": size, "device": device, "seeds": [int(s) for s in seeds], "mean": summary, "cases": rows}
    if out_json:
        Path(out_json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":  # python -m pengwin_demo.training.quality ANATOMY ABBC [N] [size] [out.json] [device] [refine]
    import sys

    logging.basicConfig(level=logging.WARNING)
    a, b = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    size = sys.argv[4] if len(sys.argv) > 4 else "full"
    device = sys.argv[6] if len(sys.argv) > 6 else "auto"
    res = evaluate_models(a, b, EVAL_SEEDS[:n], size, device, out_json=sys.argv[5] if len(sys.argv) > 5 else None,
                          refine_anatomy=sys.argv[7] if len(sys.argv) > 7 else "auto")
    print(json.dumps(res["mean"]))
