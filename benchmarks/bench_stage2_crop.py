"""Benchmark: Stage 2 on the Stage-1 bone box (masked) against Stage 2 on the whole CT.

    python benchmarks/bench_stage2_crop.py [--seed 900001] [--size full] [--model bundled]

One phantom (``make_phantom(seed, size)``, 512 x 512 in-plane at full size) goes through the
pipeline twice in this process with the same Stage 1 (its true bones, given as the anatomy
map, so only Stage 2 differs): once as the pipeline runs by default (CT cropped to the bones
plus ``STAGE2_MARGIN_MM``, masked beyond ``STAGE2_MASK_DILATION_MM``) and once with Stage 2
on the whole CT, unmasked (the reference). Printed for each: the ABBC stage's wall time, the
grid it ran on, whether the CPU coarsening kicked in, and official IoU-A / IoU-F.

``--sweep`` measures instead what the margin and the mask dilation keep when Stage 1 is a
model (the bundled anatomy model, or ``--anatomy``): for each dilation, the share of the true
bone voxels left unmasked (bone the mask would cut off is lost to Stage 2) and the volume of
non-bone kept, and for each margin the share of true bone inside the box.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pengwin_demo.labels import anatomy_from_fragments  # noqa: E402
from pengwin_demo.metrics import evaluate_case  # noqa: E402
from pengwin_demo.phantom import make_phantom  # noqa: E402
from pengwin_demo.pipeline import Pipeline  # noqa: E402

WHOLE_CT_MARGIN_MM = 1e6  # a bone box this much larger than the bones is the whole CT


def run(ct, truth, model: str, cropped: bool) -> dict:
    kwargs = {} if cropped else {"stage2_margin_mm": WHOLE_CT_MARGIN_MM, "stage2_mask_dilation_mm": None}
    pipe = Pipeline("cpu", fragments=model, **kwargs)
    pipe.load_models()
    anatomy = truth.with_array(anatomy_from_fragments(truth.array))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pengwin-crop-") as tmp:
        result = pipe.run(ct, tmp, anatomy_map=anatomy)
    m = evaluate_case(result.labels.array, truth.array, truth.spacing_zyx_mm)
    inference = result.report["inference"]
    return {"abbc_s": result.timings["abbc"], "total_s": time.perf_counter() - t0,
            "grid": inference["abbc_grid_shape_zyx"], "spacing": inference["abbc_spacing_zyx_mm"],
            "coarsened": any(w.startswith("reduced-resolution") for w in result.warnings),
            "iou_a": m["iou_a"], "iou_f": m["iou_f"]}


def sweep(ct, truth, anatomy_model: str) -> None:
    """Bone kept / soft tissue kept by the mask and the box, with a Stage-1 model's bones."""
    import numpy as np

    from pengwin_demo.bone_region import bone_box_on, mask_outside_bones
    from pengwin_demo.volume import resample_onto

    pipe = Pipeline("cpu", anatomy=anatomy_model)
    models = pipe.load_models()
    anatomy, _, _ = pipe._predict(models["anatomy"], ct, "cpu", "anatomy", [])
    on_ct = resample_onto(anatomy, ct, "nearest").array
    bone = truth.array > 0
    ml = ct.voxel_volume_mm3 / 1000.0
    print(f"Stage 1 ({anatomy_model}) on {anatomy.spacing_zyx_mm} mm; true bone {bone.sum() * ml:.0f} mL")
    for margin in (0.0, 5.0, 10.0, 20.0):
        box = bone_box_on(anatomy, ct, margin)
        inside = np.zeros(ct.shape, bool)
        inside[box] = True
        print(f"  margin {margin:4.0f} mm: box {[s.stop - s.start for s in box]}, "
              f"true bone inside {inside[bone].mean():.4f}")
    probe = np.ones(ct.shape, np.int16)
    for dilation in (0.0, 1.0, 2.0, 3.0, 5.0, 8.0):
        kept = mask_outside_bones(probe, on_ct, ct.spacing_zyx_mm, dilation) != 0
        print(f"  dilation {dilation:3.0f} mm: true bone kept {kept[bone].mean():.4f}, "
              f"non-bone kept {np.count_nonzero(kept & ~bone) * ml:7.0f} mL")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=900001)
    parser.add_argument("--size", default="full", choices=("small", "full"))
    parser.add_argument("--model", default="bundled", help="ABBC model: bundled or a model folder")
    parser.add_argument("--sweep", action="store_true", help="margin / dilation sweep with a Stage-1 model")
    parser.add_argument("--anatomy", default="bundled", help="Stage-1 model of the sweep")
    args = parser.parse_args()
    ct, truth = make_phantom(args.seed, args.size)
    print(f"phantom {args.seed} ({args.size}): {ct.shape} voxels at "
          f"{'x'.join(f'{s:.2f}' for s in ct.spacing_zyx_mm)} mm")
    if args.sweep:
        sweep(ct, truth, args.anatomy)
        return 0
    for name, cropped in (("bone box, masked (default)", True), ("whole CT (reference)", False)):
        r = run(ct, truth, args.model, cropped)
        print(f"  {name:<28} ABBC {r['abbc_s']:6.1f} s on {r['grid']} at {r['spacing']} mm"
              f"{' (coarsened)' if r['coarsened'] else ''}; pipeline {r['total_s']:.1f} s; "
              f"IoU-A {r['iou_a']:.4f} IoU-F {r['iou_f']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
