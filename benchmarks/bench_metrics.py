"""Benchmark: PENGWIN metrics on a full-size pair (budget: under 5 s on 2 cores).

    python benchmarks/bench_metrics.py [--repeats 3] [--skip-reference]
                                       [--template /path/to/evaluation_CT_core.py]

The ground truth is ``pengwin_demo.phantom.make_phantom(seed, size="full")`` with 5
fragments per bone (15 in all; ``--synthetic``: a 300 x 512 x 512 ellipsoid pelvis built
here); the prediction is the ground truth shifted by one voxel along each axis, with two
sacrum fragments merged, one hip fragment split and 12 stray pieces.

Printed beside :func:`pengwin_demo.metrics.evaluate_case` (official and strict):

* a whole-volume reference written here the way the organisers' template works (full
  masks for every label and candidate, shells on the whole grid, dense distance matrix
  between the sampled points), measured in the same run, with its metric differences;
* optionally the organisers' own ``evaluation_CT_core.py`` (``--template``; not shipped
  with this project: download it from YzzLiu/PENGWIN-example-algorithm; needs
  scikit-learn).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pengwin_demo.metrics import (  # noqa: E402
    METRIC_KEYS,
    evaluate_case,
    reference_surface_distances_mm,
    reference_surface_points_mm,
)

SPACING_ZYX_MM = (1.0, 0.8, 0.8)
SHAPE_ZYX = (300, 512, 512)


# ----------------------------------------------------------------------------- the pair
def synthetic_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ground truth and prediction label maps (uint8, z-y-x) of a full-size pelvis."""
    rng = np.random.default_rng(seed)
    gt = np.zeros(SHAPE_ZYX, np.uint8)
    # sacrum: solid ellipsoid; hips: thick ellipsoidal shells left (+x) and right
    bones = [
        (1, (150, 300, 256), (95, 70, 55), 0.0),
        (11, (150, 250, 390), (120, 120, 75), 0.72),
        (21, (150, 250, 122), (120, 120, 75), 0.72),
    ]
    for first, centre, radii, hollow in bones:
        box = tuple(slice(max(c - r - 1, 0), min(c + r + 2, n)) for c, r, n in zip(centre, radii, SHAPE_ZYX))
        z, y, x = (np.arange(b.start, b.stop, dtype=np.float32)[tuple(slice(None) if a == i else None
                                                                      for i in range(3))]
                   for a, b in enumerate(box))
        dz, dy, dx = (z - centre[0]) / radii[0], (y - centre[1]) / radii[1], (x - centre[2]) / radii[2]
        rho = dz * dz + dy * dy + dx * dx
        inside = (rho < 1.0) & (rho > hollow * hollow)
        # 5 fragments: sectors of the angle in the (z, y) plane, with jittered edges
        angle = np.arctan2(dz, dy + 0.01 * rng.standard_normal(dy.shape).astype(np.float32))
        edges = np.sort(rng.uniform(-np.pi, np.pi, 4)).astype(np.float32)
        sector = np.searchsorted(edges, angle).astype(np.uint8)
        region = gt[box]  # a view: writing into it fills gt
        region[inside] = np.broadcast_to(first + sector, rho.shape)[inside]
    return gt, perturb(gt, rng)


def perturb(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible imperfect prediction: shifted one voxel, a merge, a split, stray pieces."""
    pred = np.roll(gt, (1, -1, 1), axis=(0, 1, 2))
    pred[pred == 3] = 2  # two sacrum fragments merged
    z = np.flatnonzero((pred == 11).any(axis=(1, 2)))
    if z.size:
        split = pred == 11
        split[: int(np.median(z))] = False
        pred[split] = 16  # a hip fragment split in two
    shape = np.array(gt.shape)
    for _ in range(12):  # stray pieces
        c = rng.integers(shape // 10, shape - shape // 10)
        pred[c[0]:c[0] + 4, c[1]:c[1] + 5, c[2]:c[2] + 5] = rng.choice([1, 5, 12, 15, 22, 25])
    return pred


def load_pair(seed: int, synthetic: bool = False) -> tuple[np.ndarray, np.ndarray, tuple, str]:
    """The project's full-size phantom (5 fragments per bone) unless ``synthetic``."""
    if not synthetic:
        try:
            from pengwin_demo.phantom import make_phantom
        except ImportError:
            synthetic = True
    if synthetic:
        gt, pred = synthetic_pair(seed)
        return gt, pred, SPACING_ZYX_MM, "synthetic ellipsoid pair built by this benchmark"
    _, labels = make_phantom(seed, size="full", n_fragments={"sacrum": 5, "left_hip": 5, "right_hip": 5})
    gt = labels.array
    pred = perturb(gt, np.random.default_rng(seed))
    return gt, pred, labels.spacing_zyx_mm, f"make_phantom({seed}, size='full'), prediction perturbed"


# ----------------------------------------------------------------------------- reference
def _ref_surface_scores(mask_a, mask_b, spacing) -> tuple[float, float]:
    a = reference_surface_points_mm(mask_a, spacing)
    return reference_surface_distances_mm(a, reference_surface_points_mm(mask_b, spacing))


def _ref_radius(mask):
    pts = np.argwhere(mask)
    if not len(pts):
        return np.inf
    return float(np.max(np.linalg.norm(pts - pts.mean(axis=0), axis=1)))


def reference_evaluate(pred, gt, spacing) -> dict:
    """Whole-volume evaluation, the template's way (official semantics only)."""
    frag = []
    for lo in (1, 11, 21):
        labels = range(lo, lo + 10)
        present = [p for p in labels if (pred == p).any()]
        for g in labels:
            gmask = gt == g
            if not gmask.any() or not present:
                continue
            ious = []
            for p in present:
                pmask = pred == p
                ious.append(np.logical_and(gmask, pmask).sum() / np.logical_or(gmask, pmask).sum())
            best = int(np.argmax(ious))
            if ious[best] > 0:
                hd, asd = _ref_surface_scores(gmask, pred == present[best], spacing)
            else:
                r = _ref_radius(gmask)
                hd, asd = 2 * r, r
            frag.append((ious[best], hd, asd))
    anat = []
    for lo in (1, 11, 21):
        gmask, pmask = np.isin(gt, range(lo, lo + 10)), np.isin(pred, range(lo, lo + 10))
        union = np.logical_or(gmask, pmask).sum()
        iou = np.logical_and(gmask, pmask).sum() / union if union else 0.0
        if pmask.any():
            hd, asd = _ref_surface_scores(gmask, pmask, spacing)
        else:
            r = _ref_radius(gmask)
            hd, asd = 2 * r, r
        anat.append((iou, hd, asd))
    f, a = np.array(frag, dtype=np.float64), np.array(anat, dtype=np.float64)
    return {"iou_f": f[:, 0].mean(), "hd95_f": f[:, 1].mean(), "assd_f": f[:, 2].mean(),
            "iou_a": a[:, 0].mean(), "hd95_a": a[:, 1].mean(), "assd_a": a[:, 2].mean()}


def template_evaluate(path: str, pred, gt, spacing) -> dict:
    spec = importlib.util.spec_from_file_location("pengwin_template", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with contextlib.redirect_stdout(io.StringIO()):
        out = module.evaluate_3d_single_case(gt, pred, spacing)
    names = {"fracture_iou": "iou_f", "fracture_hd95": "hd95_f", "fracture_assd": "assd_f",
             "anatomical_iou": "iou_a", "anatomical_hd95": "hd95_a", "anatomical_assd": "assd_a"}
    return {names[k]: float(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- main
def _timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _diff(ours: dict, ref: dict) -> str:
    parts = []
    for k in ("iou_f", "hd95_f", "assd_f", "iou_a", "hd95_a", "assd_a"):
        a, b = float(ours[k]), float(ref[k])
        parts.append(f"{k} {abs(a - b):.1e}" if np.isfinite(a) and np.isfinite(b) else f"{k} {a}/{b}")
    return ", ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic", action="store_true",
                    help="use the ellipsoid pair built here instead of pengwin_demo.phantom")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-reference", action="store_true", help="skip the slow whole-volume reference")
    ap.add_argument("--template", help="path to the organisers' evaluation_CT_core.py, to time it too")
    args = ap.parse_args(argv)

    t = time.perf_counter()
    gt, pred, spacing, source = load_pair(args.seed, args.synthetic)
    n_gt = len(np.unique(gt)) - 1
    print(f"pair: {source}; shape (z, y, x) {gt.shape}, spacing {spacing} mm, {n_gt} GT fragments, "
          f"{len(np.unique(pred)) - 1} predicted ({time.perf_counter() - t:.1f} s to build)")

    t_off, off = _timed(lambda: evaluate_case(pred, gt, spacing), args.repeats)
    t_str, strict = _timed(lambda: evaluate_case(pred, gt, spacing, strict=True), args.repeats)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    print(f"evaluate_case official: {t_off:6.2f} s (median of {args.repeats})  "
          + "  ".join(f"{k}={off[k]:.4f}" for k in METRIC_KEYS))
    print(f"evaluate_case strict:   {t_str:6.2f} s (median of {args.repeats})  "
          + "  ".join(f"{k}={strict[k]:.4f}" for k in METRIC_KEYS))
    print(f"peak RSS so far (pair included): {rss_gb:.2f} GB")
    if not args.skip_reference:
        t_ref, ref = _timed(lambda: reference_evaluate(pred, gt, spacing), 1)
        print(f"whole-volume reference: {t_ref:6.2f} s -> speed-up {t_ref / t_off:.0f}x; "
              f"|difference|: {_diff(off, ref)}")
    if args.template:
        t_tpl, tpl = _timed(lambda: template_evaluate(args.template, pred, gt, spacing), 1)
        print(f"official template:      {t_tpl:6.2f} s -> speed-up {t_tpl / t_off:.0f}x; "
              f"|difference|: {_diff(off, tpl)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
