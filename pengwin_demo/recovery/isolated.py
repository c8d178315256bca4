"""Small fragments lying apart from every other fragment dropped as stray pieces.

On real intact pelves the pipeline sometimes returns crumbs of 0.5-1.4 mL that are no
pelvic fragment: bits of the L5 vertebra that Stage 1 took for sacrum, across the disc
(4.2 and 6.7 mm from the sacrum), and dense specks outside the bones (6.4-22.7 mm from any
fragment). Real small fragments lie against the bone they broke from: every expert
fragment under 4 mL of five real fractured pelves and a real fractured sacrum (9 fragments,
0.07-3.6 mL) lies within 1 mm of another fragment. A fragment of at most
:data:`MAX_CRUMB_ML` with no other fragment, of any bone, within :data:`MIN_CRUMB_GAP_MM` is
therefore dropped. The largest fragment of a bone is kept whatever its size: whether a bone
is there at all is Stage 1's question (:mod:`pengwin_demo.plausibility`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..labels import BONES, MAX_LABEL, bone_of_labels
from ..volume import bounding_box, check_label_array
from ._numbering import close_up_numbers

__all__ = ["MAX_CRUMB_ML", "MIN_CRUMB_GAP_MM", "drop_isolated_crumbs"]

MAX_CRUMB_ML = 2.0
"""Fragments up to this volume (mL) may be dropped as crumbs."""

MIN_CRUMB_GAP_MM = 3.0
"""A crumb lies farther than this (mm) from every other fragment. Real small fragments: 1 mm
or less; stray pieces on real intact pelves: 4.2 mm or more."""


def drop_isolated_crumbs(labels: np.ndarray, spacing_zyx_mm, max_ml: float = MAX_CRUMB_ML,
                         min_gap_mm: float = MIN_CRUMB_GAP_MM) -> tuple[np.ndarray, list[int]]:
    """Set small fragments that lie apart from every other fragment to background, except
    the largest fragment of each bone; the remaining fragments close up their numbers.

    Parameters
    ----------
    labels : ndarray of int, shape (Z, Y, X)
        PENGWIN fragment labels (0 background, 1-10 sacrum, 11-20 left hip, 21-30 right hip).
    spacing_zyx_mm : sequence of 3 float
        Voxel size along (z, y, x), mm.
    max_ml : float
        Largest volume (mL) of a fragment that may be dropped.
    min_gap_mm : float
        A fragment is apart when no voxel of another fragment lies within this distance
        (mm, between voxel centres) of it.

    Returns
    -------
    (ndarray, list of int)
        The labels (same dtype; each bone's remaining fragments numbered on from its first
        label in their former order) and the labels, as given, of the fragments dropped.
    """
    labels = check_label_array("labels", labels, max_label=MAX_LABEL)
    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(spacing > 0) or max_ml < 0 or min_gap_mm < 0:
        raise ValueError(f"spacing must be 3 positive values, max_ml and min_gap_mm >= 0; got "
                         f"{spacing_zyx_mm}, {max_ml}, {min_gap_mm}")
    box = bounding_box(labels > 0)
    if box is None:
        return labels, []
    inside = labels[box]
    counts = np.bincount(inside.ravel(), minlength=MAX_LABEL + 1)
    present = np.flatnonzero(counts[1:]) + 1
    max_vox = max_ml * 1000 / float(np.prod(spacing))
    bone_of = bone_of_labels(present)
    boxes = ndimage.find_objects(inside)  # boxes[v - 1]: label v's bounding box
    dropped: list[int] = []
    for bone in BONES:
        of_bone = present[bone_of == bone]
        if of_bone.size == 0:
            continue
        largest = of_bone[np.argmax(counts[of_bone])]
        dropped += [int(v) for v in of_bone
                    if v != largest and counts[v] <= max_vox
                    and _apart(inside, int(v), boxes[v - 1], spacing, min_gap_mm)]
    if not dropped:
        return labels, []
    out = labels.copy()
    out[box] = close_up_numbers(inside, present, dropped)
    return out, dropped


def _apart(labels: np.ndarray, value: int, own_box: tuple[slice, ...], spacing: np.ndarray,
           gap_mm: float) -> bool:
    """True when no voxel of another label lies within ``gap_mm`` of label ``value`` (whose
    bounding box is ``own_box``); distances are taken on that box grown by the gap only."""
    import edt

    grow = np.ceil(gap_mm / spacing).astype(int) + 1
    near = tuple(slice(max(s.start - g, 0), s.stop + g) for s, g in zip(own_box, grow))
    local = labels[near]
    others = (local > 0) & (local != value)
    if not others.any():
        return True
    dist_mm = edt.edt(local != value, anisotropy=tuple(float(s) for s in spacing), black_border=False)
    return not np.any(others & (dist_mm <= gap_mm))
