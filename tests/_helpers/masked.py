"""Small per-bone masked cases (the real data's layout) written for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pengwin_demo.io import write_volume
from pengwin_demo.volume import Volume


def write_masked_case(folder: Path, seed: int) -> None:
    """A small per-bone masked case: three textured bone blocks, the left hip in two pieces.

    ``folder/{SA,LI,RI}_image.nii.gz`` (HU, 0 outside the bone) and ``_fragments.nii.gz``
    on one 1.5 mm grid; the left hip (LI) lies at larger LPS x than the right (RI).
    """
    rng = np.random.default_rng(seed)
    shape = (40, 56, 72)
    grid = Volume(np.zeros(shape, np.int16), (1.5, 1.5, 1.5), (0.0, 0.0, 0.0))
    S = np.s_
    pieces = {"SA": [S[8:32, 16:40, 28:44]], "LI": [S[8:32, 16:40, 48:58], S[8:32, 16:40, 60:68]],
              "RI": [S[8:32, 16:40, 4:24]]}
    for prefix, boxes in pieces.items():
        frags = np.zeros(shape, np.uint8)
        for k, box in enumerate(boxes, start=1):
            frags[box] = k
        ct = np.where(frags > 0, rng.normal(400, 150, shape), 0).astype(np.int16)
        write_volume(grid.with_array(ct), folder / f"{prefix}_image.nii.gz")
        write_volume(grid.with_array(frags), folder / f"{prefix}_fragments.nii.gz")
