"""Fragments that are soft tissue, not bone, dropped by their CT values.

On real CTs the fragment stage sometimes splits off a piece of muscle lying against a bone
(the iliacus on the inner face of the iliac wing) as a fragment of its own. Bone is dense:
every one of the 36 expert fragments of five real fractured pelves and a real fractured
sacrum has a median of 138 HU or more (the pelves as a 3 mm slice reconstruction shows
them: 132 HU or more), while the pieces of muscle split off two intact real pelves have
medians of 48-71 HU.
A fragment other than the largest of its bone whose median is under
:data:`MIN_FRAGMENT_MEDIAN_HU` is therefore dropped. The largest fragment of a bone is kept
whatever its values: whether a bone is there at all is Stage 1's question
(:mod:`pengwin_demo.plausibility`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..labels import BONES, MAX_LABEL, bone_of_labels
from ..volume import bounding_box, check_label_array
from ._numbering import close_up_numbers

__all__ = ["MIN_FRAGMENT_MEDIAN_HU", "drop_soft_tissue_fragments"]

MIN_FRAGMENT_MEDIAN_HU = 100.0
"""A fragment (not the largest of its bone) whose median CT value is below this (HU) is
soft tissue. Real expert fragments: 132 HU and above; muscle split off real bone: 48-71 HU."""


def drop_soft_tissue_fragments(labels: np.ndarray, ct_hu: np.ndarray,
                               min_median_hu: float = MIN_FRAGMENT_MEDIAN_HU) -> tuple[np.ndarray, list[int]]:
    """Set fragments whose median HU is below ``min_median_hu`` to background, except the
    largest fragment of each bone; the remaining fragments of a bone close up its numbers.

    Parameters
    ----------
    labels : ndarray of int, shape (Z, Y, X)
        PENGWIN fragment labels (0 background, 1-10 sacrum, 11-20 left hip, 21-30 right hip).
    ct_hu : ndarray, shape (Z, Y, X)
        The CT in HU on the same grid.
    min_median_hu : float
        Smallest median (HU) a fragment needs to stay.

    Returns
    -------
    (ndarray, list of int)
        The labels (same dtype; with fragments dropped, each bone's remaining fragments are
        numbered on from its first label in their former order) and the labels, as given, of
        the fragments dropped.
    """
    labels = check_label_array("labels", labels, max_label=MAX_LABEL)
    if ct_hu.shape != labels.shape:
        raise ValueError(f"ct_hu shape {ct_hu.shape} differs from labels shape {labels.shape}")
    box = bounding_box(labels > 0)
    if box is None:
        return labels, []
    inside = labels[box]  # all fragments lie in their bounding box: the work is done there
    counts = np.bincount(inside.ravel(), minlength=MAX_LABEL + 1)
    present = np.flatnonzero(counts[1:]) + 1
    medians = np.asarray(ndimage.median(ct_hu[box], inside, present), dtype=np.float64)
    bone_of = bone_of_labels(present)
    dropped: list[int] = []
    for bone in BONES:
        of_bone = np.flatnonzero(bone_of == bone)  # in label order: the recovery's ranking
        if of_bone.size == 0:
            continue
        largest = of_bone[np.argmax(counts[present[of_bone]])]
        dropped += [int(present[i]) for i in of_bone if i != largest and medians[i] < min_median_hu]
    if not dropped:
        return labels, []
    out = labels.copy()
    out[box] = close_up_numbers(inside, present, dropped)
    return out, dropped
