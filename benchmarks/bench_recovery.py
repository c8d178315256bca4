"""Benchmark: instance recovery, fast path vs the per-seed scikit-fmm reference, same run.

    python benchmarks/bench_recovery.py [--seed 1] [--fragments 5,5,5] [--repeat 3]
                                        [--no-reference] [--no-curve] [--real-full]
                                        [--border-mm 2.0]

Part 1, speed and agreement (budget: under 5 s on 2 cores, at least 10x faster than the
reference). The case is ``make_phantom(seed, "full", n_fragments)`` (512 x 512 in-plane,
sub-millimetre, 15 fragments by default); its ABBC map is ``abbc_targets`` of the ground
truth (the oracle) and its anatomy map is the ground truth's bones. Printed:

* ``recover_fragments(method="fast")``: best wall time of ``--repeat`` runs and its CPU time;
* ``recover_fragments(method="reference")``: one scikit-fmm distance field per seed over
  the bone's bounding box for each growth phase, arg-min over seeds (the article's method),
  with everything else identical; wall and CPU time, once;
* the voxel agreement between the two on bone voxels, and each one's fragment IoU against
  the ground truth (PENGWIN semantics; ground-truth fragments under 1000 voxels merged
  into their neighbour first, and all fragments).

Both run in this process one after the other, so other load on the machine hits both;
the CPU-time ratio is the steadier figure on a shared machine. A ``growth`` line splits
off the time spent in :func:`pengwin_demo.recovery.grow_labels` (both growth phases),
the only step where the two methods differ. ``--real-full`` adds the
real fractured sacrum on its whole 512 x 512 x 357 grid.

Part 2, imperfect predictions: fragment IoU against corruption level on the real
fractured sacrum (cropped to its bone), for every corruption in
:mod:`pengwin_demo.recovery.noise`: border with gaps, border thinner/thicker, spurious core
specks, fragments whose core is missing, salt-and-pepper class noise and jittered bone
surface. For the surface jitter the best any recovery could reach (the ground truth on
the jittered bone, added voxels labelled like a neighbour) is printed beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pengwin_demo.labels import anatomy_from_fragments  # noqa: E402
from pengwin_demo.metrics import fragment_iou, merge_small_fragments  # noqa: E402
from pengwin_demo.recovery import abbc_targets, instances, recover_fragments  # noqa: E402
from pengwin_demo.recovery import noise as abbc_noise  # noqa: E402
from pengwin_demo.volume import bounding_box  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "real_fracture_sacrum" / "fragments.nii.gz"
MIN_FRAGMENT_VOX = 1000


def timed(fn, *args, **kwargs):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - w0, time.process_time() - c0


class GrowthClock:
    """Times the geodesic growth (``grow_labels``) inside ``recover_fragments``, per method.

    ``recover_fragments`` calls it twice (through boundary/core, then through the border);
    the rest of the recovery (seeds, merges, anatomy) is identical for both methods.
    """

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    def __enter__(self):
        self._orig = instances.grow_labels

        def clocked(seeds, passable, spacing, method="fast"):
            out, wall, cpu = timed(self._orig, seeds, passable, spacing, method)
            self.cpu[method] = self.cpu.get(method, 0.0) + cpu
            self.wall[method] = self.wall.get(method, 0.0) + wall
            return out

        instances.grow_labels = clocked
        return self

    def __exit__(self, *exc) -> None:
        instances.grow_labels = self._orig


def speed(name: str, gt: np.ndarray, spacing, repeat: int, reference: bool) -> None:
    print(f"\n== {name}: grid {gt.shape} (z, y, x), spacing {tuple(round(s, 3) for s in spacing)} mm, "
          f"{len(np.unique(gt)) - 1} fragments, {np.count_nonzero(gt):,} bone voxels")
    abbc, t_abbc, _ = timed(abbc_targets, gt, spacing)
    anatomy = anatomy_from_fragments(gt)
    box = bounding_box(abbc > 0, 1)
    print(f"   ABBC oracle map in {t_abbc:.1f} s; bone box {tuple(s.stop - s.start for s in box)}; "
          f"classes (boundary, core, border) {np.bincount(abbc.ravel(), minlength=4)[1:].tolist()}")
    gt_merged = merge_small_fragments(gt, MIN_FRAGMENT_VOX)
    runs = []
    for _ in range(repeat):
        with GrowthClock() as clock:
            fast, wall, cpu = timed(recover_fragments, abbc, anatomy, spacing, method="fast")
        runs.append((wall, cpu, clock.wall["fast"], clock.cpu["fast"]))
    wall_f, cpu_f, grow_wall_f, grow_cpu_f = min(runs)
    print(f"   fast      : {wall_f:6.2f} s wall (best of {repeat}), {cpu_f:6.2f} s CPU, "
          f"{len(fast.fragments)} fragments, IoU {fragment_iou(fast.labels, gt_merged):.4f} "
          f"(all fragments {fragment_iou(fast.labels, gt):.4f})")
    if fast.warnings:
        print(f"               warnings: {fast.warnings}")
    if not reference:
        return
    with GrowthClock() as clock:
        ref, wall_r, cpu_r = timed(recover_fragments, abbc, anatomy, spacing, method="reference")
    bone = abbc > 0
    agree = float(np.mean(fast.labels[bone] == ref.labels[bone]))
    print(f"   reference : {wall_r:6.2f} s wall, {cpu_r:6.2f} s CPU, {len(ref.fragments)} fragments, "
          f"IoU {fragment_iou(ref.labels, gt_merged):.4f} (all fragments {fragment_iou(ref.labels, gt):.4f})")
    print(f"   speed-up  : {wall_r / wall_f:5.1f}x wall, {cpu_r / cpu_f:5.1f}x CPU; "
          f"agreement on bone voxels {100 * agree:.3f} %")
    grow_wall_r, grow_cpu_r = clock.wall["reference"], clock.cpu["reference"]
    print(f"   growth    : (grow_labels, both phases) fast {grow_wall_f:.2f} s wall / {grow_cpu_f:.2f} s CPU, "
          f"reference {grow_wall_r:.2f} / {grow_cpu_r:.2f} s: {grow_wall_r / grow_wall_f:.1f}x wall, "
          f"{grow_cpu_r / grow_cpu_f:.1f}x CPU; the rest of the recovery {wall_f - grow_wall_f:.2f} s wall / "
          f"{cpu_f - grow_cpu_f:.2f} s CPU (fast run)")


def curve(gt: np.ndarray, spacing, border_mm: float = 2.0) -> None:
    print("\n== imperfect predictions, real fractured sacrum (cropped), fragment IoU "
          f"(ground truth merged at {MIN_FRAGMENT_VOX} voxels; targets with a {border_mm} mm zone)")
    abbc = abbc_targets(gt, spacing, border_mm=border_mm)
    anatomy = anatomy_from_fragments(gt)
    gt_merged = merge_small_fragments(gt, MIN_FRAGMENT_VOX)
    n_true = len(np.unique(gt_merged)) - 1

    def row(kind: str, level, corrupted, ceiling: bool = False) -> None:
        res, wall, _ = timed(recover_fragments, corrupted, anatomy, spacing, min_fragment_vox=MIN_FRAGMENT_VOX)
        line = (f"   {kind:22s} {str(level):>6s}   IoU {fragment_iou(res.labels, gt_merged):.3f}   "
                f"fragments {len(res.fragments)}/{n_true}   {wall:5.2f} s")
        if ceiling:  # the ground truth on the jittered bone; added voxels take a neighbour's label
            from scipy import ndimage as ndi

            grown = ndi.grey_dilation(gt_merged, footprint=ndi.generate_binary_structure(3, 1))
            best = np.where(corrupted > 0, np.where(gt_merged > 0, gt_merged, grown), 0).astype(np.uint8)
            line += f"   (ground truth on the jittered bone: {fragment_iou(best, gt_merged):.3f})"
        print(line, flush=True)

    row("none (oracle)", 0, abbc)
    for f in (0.1, 0.25, 0.5, 0.75):
        row("border gaps (fraction)", f, abbc_noise.border_gaps(abbc, f, spacing))
    for k in (-2, -1, 1, 2, 3):
        row("border width (voxels)", k, abbc_noise.border_width(abbc, k))
    for n in (5, 20, 50):
        row("core specks (64 vox)", n, abbc_noise.core_specks(abbc, n, 64, seed=1))
    for lab in (2, 3, 8):
        row("no core in fragment", lab, abbc_noise.drop_core(abbc, gt == lab))
    for f in (0.01, 0.05, 0.1, 0.2):
        row("class noise (fraction)", f, abbc_noise.class_noise(abbc, f, seed=2))
    for f in (0.1, 0.2, 0.5):
        row("surface jitter (frac.)", f, abbc_noise.surface_noise(abbc, f, spacing, seed=2), ceiling=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fragments", default="5,5,5", help="fragments per bone: sacrum,left,right")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-reference", action="store_true")
    parser.add_argument("--no-curve", action="store_true")
    parser.add_argument("--real-full", action="store_true", help="also time the real sacrum's full grid")
    parser.add_argument("--border-mm", type=float, default=2.0,
                        help="fracture-zone width of the targets that Part 2 corrupts (mm)")
    args = parser.parse_args()

    from pengwin_demo.phantom import make_phantom

    counts = [int(c) for c in args.fragments.split(",")]
    _, labels = make_phantom(args.seed, "full", dict(zip(("sacrum", "left_hip", "right_hip"), counts)))
    speed(f"phantom seed {args.seed} (full)", labels.array, labels.spacing_zyx_mm, args.repeat,
          not args.no_reference)

    if DATA.exists():
        from pengwin_demo.io import read_volume

        vol = read_volume(DATA, kind="label")
        if args.real_full:
            speed("real sacrum (whole grid)", vol.array, vol.spacing_zyx_mm, args.repeat, not args.no_reference)
        if not args.no_curve:
            box = bounding_box(vol.array > 0, margin_vox=4)
            curve(np.ascontiguousarray(vol.array[box]), vol.spacing_zyx_mm, args.border_mm)
    else:
        print(f"\n(real data not found at {DATA}: real-sacrum parts skipped)")


if __name__ == "__main__":
    main()
