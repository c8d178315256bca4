"""Benchmark: the ABBC oracle for each parameter variant (ground truth -> ABBC -> recovery).

    python benchmarks/bench_abbc_oracle.py [--real] [--phantom-seeds 1 2 3 0] [--per-bone 5]
        [--variants NAME ...]

For every variant of :func:`pengwin_demo.recovery.abbc_targets` parameters (the defaults,
the article read literally, and one change at a time), the ground-truth fragments are
turned into ABBC targets, recovered with :func:`pengwin_demo.recovery.recover_fragments`
and scored with :func:`pengwin_demo.metrics.fragment_iou` against the ground truth with
fragments under the recovery's minimum size (1000 voxels) merged as the recovery merges
them. Printed per case and variant: that IoU, the IoU against all fragments, fragments
found / expected, border voxels and the wall seconds of ``abbc_targets``.

Cases: ``--real``, the real fractured sacrum from ../shared/data cropped to its bone plus
12 voxels (10 fragments, 7 of at least 1000 voxels); ``--phantom-seeds``, full-size
phantoms ``make_phantom(seed, "full")`` with ``--per-bone`` fragments per bone (0: the
generator's own random counts; by default the defaults and the variant without symmetric
walls only, as each case takes a minute).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pengwin_demo.io import read_volume  # noqa: E402
from pengwin_demo.labels import anatomy_from_fragments  # noqa: E402
from pengwin_demo.metrics import fragment_iou, merge_small_fragments  # noqa: E402
from pengwin_demo.recovery import abbc_targets, recover_fragments  # noqa: E402
from pengwin_demo.volume import bounding_box  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "real_fracture_sacrum" / "fragments.nii.gz"
MIN_FRAGMENT_VOX = 1000
LITERAL = dict(border_mm=6.0, border_radius_fraction=None, border_shell_only=True,
               extra_core_min_vox=None, min_core_vox=1, zone_half_thickness=False)
VARIANTS: dict[str, dict] = {
    "literal": LITERAL,
    "literal+whole-zone": {**LITERAL, "border_shell_only": False},
    "literal+core": {**LITERAL, "min_core_vox": 50},
    "literal+radius": {**LITERAL, "border_radius_fraction": 0.5},
    "6mm": {"border_mm": 6.0},
    "3mm": {"border_mm": 3.0},
    "defaults": {},
    "1.5mm": {"border_mm": 1.5},
    "1mm": {"border_mm": 1.0},
    "no-radius-scaling": {"border_radius_fraction": None},
    "no-half-thickness": {"zone_half_thickness": False},
    "no-symmetric-walls": {"symmetric_walls": False},
}
PHANTOM_VARIANTS = ("defaults", "no-symmetric-walls")


def oracle_row(name: str, labels: np.ndarray, spacing_zyx_mm, options: dict) -> str:
    """One variant on one case, as a printed row.

    Parameters
    ----------
    name : str
        The variant's name.
    labels : ndarray of uint8, shape (Z, Y, X)
        Ground-truth PENGWIN fragment labels.
    spacing_zyx_mm : tuple of float
        Voxel spacing (z, y, x) in mm.
    options : dict
        Keyword arguments for ``abbc_targets``.
    """
    start = time.perf_counter()
    abbc = abbc_targets(labels, spacing_zyx_mm, **options)
    wall_s = time.perf_counter() - start
    pred = recover_fragments(abbc, anatomy_from_fragments(labels), spacing_zyx_mm,
                             min_fragment_vox=MIN_FRAGMENT_VOX).labels
    merged = merge_small_fragments(labels, MIN_FRAGMENT_VOX)
    found, expected = (len(np.unique(a[a > 0])) for a in (pred, merged))
    return (f"  {name:32s} IoU {fragment_iou(pred, merged):.4f}   all fragments "
            f"{fragment_iou(pred, labels):.4f}   found {found} of {expected}   "
            f"border {int(np.count_nonzero(abbc == 3)):6d} vox   abbc_targets {wall_s:5.1f} s")


def real_sacrum() -> tuple[np.ndarray, tuple]:
    """The real fractured sacrum's labels cropped to the bone plus 12 voxels, and spacing."""
    vol = read_volume(DATA, kind="label")
    box = bounding_box(vol.array > 0, margin_vox=12)
    return np.ascontiguousarray(vol.array[box]), vol.spacing_zyx_mm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--real", action="store_true", help="the real fractured sacrum")
    parser.add_argument("--phantom-seeds", type=int, nargs="*", default=[],
                        help="full-size phantoms")
    parser.add_argument("--per-bone", type=int, default=5,
                        help="fragments per bone of the phantoms (0: drawn at random)")
    parser.add_argument("--variants", nargs="*", choices=sorted(VARIANTS),
                        help="only these variants (default: all on --real, two on phantoms)")
    args = parser.parse_args()
    if args.real:
        labels, spacing = real_sacrum()
        print("real fractured sacrum (cropped), fragment IoU (>= 1000 voxels):", flush=True)
        for name in args.variants or VARIANTS:
            print(oracle_row(name, labels, spacing, VARIANTS[name]), flush=True)
    for seed in args.phantom_seeds:
        from pengwin_demo.phantom import make_phantom

        counts = {b: args.per_bone for b in ("sacrum", "left_hip", "right_hip")} if args.per_bone else None
        _, lab = make_phantom(seed, "full", counts)
        print(f"full-size phantom seed {seed}, {args.per_bone or 'random'} fragments per bone:", flush=True)
        for name in args.variants or PHANTOM_VARIANTS:
            print(oracle_row(name, lab.array, lab.spacing_zyx_mm, VARIANTS[name]), flush=True)


if __name__ == "__main__":
    main()
