"""Fragments that are soft tissue or contrast, not bone, dropped by their CT values.

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

Contrast-filled bowel lying against the sacrum is dense enough to pass the median (177-179
HU on a real planning CT with oral contrast), but it is uniform: its 90th percentile lies
30-32 HU above its median. Bone is not: a cortex around cancellous bone puts the 90th
percentile of every expert fragment 88 HU or more above the median at native resolution,
129 HU or more in 3 mm slabs, and 58 HU or more in 5 mm slabs (a 0.05 mL fragment; all
others 97 HU or more). A fragment (again, not a bone's largest) whose 90th percentile is
less than :data:`MIN_FRAGMENT_SPREAD_HU` above its median is dropped too.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..labels import BONES, MAX_LABEL, bone_of_labels
from ..volume import bounding_box, check_label_array
from ._numbering import close_up_numbers

__all__ = ["MIN_FRAGMENT_MEDIAN_HU", "MIN_FRAGMENT_SPREAD_HU", "drop_soft_tissue_fragments"]

MIN_FRAGMENT_MEDIAN_HU = 100.0
"""A fragment (not the largest of its bone) whose median CT value is below this (HU) is
soft tissue. Real expert fragments: 132 HU and above; muscle split off real bone: 48-71 HU."""

MIN_FRAGMENT_SPREAD_HU = 50.0
"""A fragment (not the largest of its bone) whose 90th percentile lies less than this above its
median (HU) is uniform, contrast rather than bone. Real expert fragments: 58 HU and above
(5 mm slabs); contrast-filled bowel taken for sacrum: 30-32 HU."""


def drop_soft_tissue_fragments(labels: np.ndarray, ct_hu: np.ndarray,
                               min_median_hu: float = MIN_FRAGMENT_MEDIAN_HU,
                               min_spread_hu: float = MIN_FRAGMENT_SPREAD_HU) -> tuple[np.ndarray, list[int]]:
    """Set fragments whose median HU is below ``min_median_hu``, or whose 90th percentile
    lies less than ``min_spread_hu`` above the median, to background, except the largest
    fragment of each bone; the remaining fragments of a bone close up its numbers.

    Parameters
    ----------
    labels : ndarray of int, shape (Z, Y, X)
        PENGWIN fragment labels (0 background, 1-10 sacrum, 11-20 left hip, 21-30 right hip).
    ct_hu : ndarray, shape (Z, Y, X)
        The CT in HU on the same grid.
    min_median_hu : float
        Smallest median (HU) a fragment needs to stay.
    min_spread_hu : float
        Smallest difference (HU) between a fragment's 90th percentile and its median that it
        needs to stay (0: not checked).

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
    bone_of = bone_of_labels(present)
    boxes = ndimage.find_objects(inside)  # boxes[v - 1]: label v's bounding box
    dropped: list[int] = []
    for bone in BONES:
        of_bone = present[bone_of == bone]  # in label order: the recovery's ranking
        if of_bone.size == 0:
            continue
        largest = of_bone[np.argmax(counts[of_bone])]  # kept whatever its values: not measured
        dropped += [int(v) for v in of_bone if v != largest
                    and not _bone_like(ct_hu[box], inside, int(v), boxes[v - 1], min_median_hu, min_spread_hu)]
    if not dropped:
        return labels, []
    out = labels.copy()
    out[box] = close_up_numbers(inside, present, dropped)
    return out, dropped


def _bone_like(values: np.ndarray, labels: np.ndarray, value: int, box, min_median_hu: float,
               min_spread_hu: float) -> bool:
    """Whether label ``value``'s voxels (within ``box``) have a bone's median and spread (HU)."""
    median, p90 = np.percentile(values[box][labels[box] == value], [50, 90])
    return bool(median >= min_median_hu and (min_spread_hu <= 0 or p90 - median >= min_spread_hu))
