"""Enclosed cavities of a bone given to its fragments.

A bone is a solid object in the expert labels of real fractured pelves: filling the 3D
holes of each bone's label mask adds at most 7 voxels of several hundred thousand in every
one of them. A predicted bone, in contrast, may enclose background where the model took
low-density cancellous bone for soft tissue (a whole scan at 3 mm: 8.6 mL inside one hip).
Filling those cavities gives the prediction the labels' convention. Only 3D cavities are
filled: in single slices the experts' bones do have holes (the sacral canal, foramina).

Fatty marrow is the case that filling holes does not reach. In real CTs the cancellous
interior of the sacrum and the iliac wings often reads -50 to 50 HU (a fifth to a half of
the bone deeper than 5 mm in the real check scans), and the ABBC model leaves it out; but
the marrow region opens to the outside wherever the thin cortex around it is missed, so it
is no 3D hole. :func:`fill_marrow` closes each bone's mask (gaps narrower than about twice
:data:`MARROW_CLOSE_MM`) and gives the background it then encloses to the bone's nearest
fragment, where the Stage-1 anatomy map also marks that bone. Closing alone would also
fill the sacral canal and the sacral foramina (12-20 mL in every expert sacrum); the anatomy
map keeps them out only as far as Stage 1 leaves them out. The bundled anatomy model, trained
with a whole CT whose manual labels fill the canal, marks most of them: on a real 3 mm CT,
13.8 of the 18.5 mL between the sacrum's walls, of which the fill gives about 10 mL to the
sacrum (docs/real_data.md weighs the radius and other rules on real scans).
"""

from __future__ import annotations

import cc3d
import numpy as np
from scipy import ndimage

from ..labels import BONES, bone_of_labels
from ..volume import bounding_box, check_label_array, closing_mm

__all__ = ["MARROW_CLOSE_MM", "fill_bone_cavities", "fill_marrow"]

MARROW_CLOSE_MM = 6.0
"""Radius of the closing that bridges the missed cortex around fatty marrow, mm."""


def fill_bone_cavities(labels: np.ndarray) -> np.ndarray:
    """Give every background cavity enclosed by one bone to that bone's nearest fragment.

    Parameters
    ----------
    labels : ndarray of int, shape (Z, Y, X)
        PENGWIN fragment labels (0 background, 1-10 sacrum, 11-20 left hip, 21-30 right hip).

    Returns
    -------
    ndarray, same shape and dtype
        The labels with each 3D hole of a bone's mask (background voxels that no path of
        6-connected background reaches from outside the bone) set to the label of the
        nearest voxel of that bone (Euclidean, in voxels). Other voxels are unchanged.
    """
    labels = check_label_array("labels", labels, max_label=30)
    out = labels.copy()
    bone_map = bone_of_labels(labels) * (labels > 0)
    for bone in BONES:
        box = bounding_box(bone_map == bone, margin_vox=1)
        if box is None:
            continue
        bone_mask = bone_map[box] == bone
        cavity = ndimage.binary_fill_holes(bone_mask) & (labels[box] == 0)
        if cavity.any():
            _give_to_nearest(out[box], cavity, bone_mask)
    return out


def fill_marrow(labels: np.ndarray, anatomy: np.ndarray, spacing_zyx_mm,
                close_mm: float = MARROW_CLOSE_MM) -> np.ndarray:
    """Give background that a bone encloses once closed, and that Stage 1 marks as that
    bone, to the bone's nearest fragment.

    Parameters
    ----------
    labels : ndarray of int, shape (Z, Y, X)
        PENGWIN fragment labels (0 background, 1-10 sacrum, 11-20 left hip, 21-30 right hip).
    anatomy : ndarray of int, shape (Z, Y, X)
        Stage-1 anatomy map on the same grid: 0 background, 1 sacrum, 2 left hip, 3 right hip.
    spacing_zyx_mm : sequence of 3 float
        Voxel size along (z, y, x), mm.
    close_mm : float
        Radius of the morphological closing of each bone's mask, mm (0: nothing is filled).

    Returns
    -------
    ndarray, same shape and dtype
        The labels with each such voxel set to the label of the nearest voxel of its bone
        (Euclidean, in voxels). Other voxels are unchanged.
    """
    labels = check_label_array("labels", labels, max_label=30)
    anatomy = check_label_array("anatomy", anatomy, max_label=3)
    if anatomy.shape != labels.shape:
        raise ValueError(f"anatomy shape {anatomy.shape} differs from labels shape {labels.shape}")
    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    if spacing.shape != (3,) or not np.all(spacing > 0) or close_mm < 0:
        raise ValueError(f"spacing must be 3 positive values and close_mm >= 0, got {spacing_zyx_mm}, {close_mm}")
    out = labels.copy()
    if close_mm == 0:
        return out
    bone_map = bone_of_labels(labels) * (labels > 0)
    margin = int(np.ceil(close_mm / spacing.min())) + 1
    for bone in BONES:
        box = bounding_box(bone_map == bone, margin_vox=margin)
        if box is None:
            continue
        bone_mask = bone_map[box] == bone
        enclosed = ndimage.binary_fill_holes(closing_mm(bone_mask, spacing, close_mm))
        marrow = enclosed & (labels[box] == 0) & (anatomy[box] == bone)
        if marrow.any():
            _give_to_nearest(out[box], marrow, bone_mask, margin_vox=margin + 1)
    return out


def _give_to_nearest(labels_box: np.ndarray, cavity: np.ndarray, bone_mask: np.ndarray,
                     margin_vox: int = 2) -> None:
    """Set each cavity voxel of ``labels_box`` (in place) to its nearest bone voxel's label,
    one cavity at a time on the cavity's own box plus ``margin_vox`` (which must reach the
    bone around it) so that large bones cost nothing extra."""
    pieces, n = cc3d.connected_components(cavity, connectivity=6, return_N=True)
    for piece, sl in enumerate(ndimage.find_objects(pieces), start=1):
        grown = tuple(slice(max(s.start - margin_vox, 0), s.stop + margin_vox) for s in sl)
        if not bone_mask[grown].any():
            continue
        hole = pieces[grown] == piece
        _, nearest = ndimage.distance_transform_edt(~bone_mask[grown], return_indices=True)
        local = labels_box[grown]
        local[hole] = local[tuple(idx[hole] for idx in nearest)]
