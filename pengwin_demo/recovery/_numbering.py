"""Dropping fragments from a PENGWIN label map while each bone keeps consecutive numbers."""

from __future__ import annotations

import numpy as np

from ..labels import BONES, MAX_LABEL, bone_of_labels, first_label


def close_up_numbers(labels_box: np.ndarray, present: np.ndarray, dropped: list[int]) -> np.ndarray:
    """``labels_box`` with the fragments ``dropped`` set to 0 and each bone's remaining
    fragments numbered on from its first label, in their former order.

    Parameters
    ----------
    labels_box : ndarray of int
        PENGWIN labels (any shape; typically the fragments' bounding box).
    present : ndarray of int
        The labels present in ``labels_box``, ascending.
    dropped : list of int
        Labels (as given) to drop.
    """
    lut = np.zeros(MAX_LABEL + 1, dtype=labels_box.dtype)
    bone_of = bone_of_labels(present)
    for bone in BONES:
        kept = [int(v) for v in present[bone_of == bone] if int(v) not in dropped]
        lut[kept] = first_label(bone) + np.arange(len(kept))
    return lut[labels_box]
