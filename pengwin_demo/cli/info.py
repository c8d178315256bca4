"""``info``: print the geometry and intensity summary of a volume file."""

from __future__ import annotations

import numpy as np

from ..io import read_volume

NAME = "info"
HELP = "show size, spacing, origin, orientation and value range of a volume file"


def add_arguments(parser) -> None:
    parser.add_argument("input", help="a .nii/.nii.gz/.mha/.mhd/.nrrd file")
    parser.add_argument("--label", action="store_true", help="read as a label map (uint8)")


def run(args) -> int:
    vol = read_volume(args.input, kind="label" if args.label else "ct", allow_non_ct=True)
    a = vol.array
    print(f"shape (z, y, x):        {vol.shape}")
    print(f"spacing (z, y, x) mm:   {tuple(round(s, 4) for s in vol.spacing_zyx_mm)}")
    print(f"origin (LPS mm):        {tuple(round(o, 3) for o in vol.origin_lps_mm)}")
    print(f"direction (columns):    {np.round(vol.direction, 4).tolist()}")
    print(f"dtype / min / max:      {a.dtype} / {a.min()} / {a.max()}")
    if args.label:
        labels, counts = np.unique(a[a > 0], return_counts=True)
        for lab, n in zip(labels, counts):
            print(f"  label {int(lab):3d}: {int(n)} voxels, {n * vol.voxel_volume_mm3 / 1000:.2f} mL")
    return 0
