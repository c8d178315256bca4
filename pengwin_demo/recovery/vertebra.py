"""The part of the L5 vertebra that Stage 1 took for sacrum, cut off the sacrum.

On real CT the anatomy model often takes the lower half of the L5 vertebral body for
sacrum, and Stage 2, which sees only the Stage-1 bone, then makes L5 and S1 one fragment:
on TotalSegmentator's example CT that is 21.5 mL of the sacrum's 48 mL of surplus. The two
are apart in the CT, though: the L5-S1 disc (soft tissue) lies between the L5 body and the
S1 endplate. Within a sacrum fragment, the voxels of at least :data:`MIN_BONE_HU` then fall
into separate 6-connected pieces (on that CT: an 11 mL piece of L5 beside the sacrum's
89 mL), and the vertebra's piece
sits where only L5 can: above the sacrum's main piece, in front of it, on the mid-line.
In the expert labels of five real fractured pelves and a real fractured sacrum, no sacrum
fragment has a second dense piece of even :data:`MIN_VERTEBRA_ML`.
"""

from __future__ import annotations

import cc3d
import numpy as np
from scipy import ndimage

from ..labels import MAX_FRAGMENTS_PER_BONE, MAX_LABEL, Anatomy, first_label
from ..volume import check_label_array

__all__ = ["MAX_MIDLINE_OFFSET_MM", "MIN_BONE_HU", "MIN_VERTEBRA_ML", "cut_vertebra_off_sacrum"]

MIN_BONE_HU = 150.0
"""CT values at or above this (HU) count as bone when a fragment is split into dense pieces;
the L5-S1 disc lies below it."""

MIN_VERTEBRA_ML = 2.0
"""Smallest dense piece (mL) that may be cut off as vertebra."""

MAX_MIDLINE_OFFSET_MM = 15.0
"""The vertebra's piece lies within this distance (mm, left-right) of the sacrum's main
piece: a vertebral body sits on the mid-line."""


def cut_vertebra_off_sacrum(labels: np.ndarray, hu: np.ndarray, index_to_lps_mm: np.ndarray, *,
                            min_bone_hu: float = MIN_BONE_HU, min_piece_ml: float = MIN_VERTEBRA_ML,
                            max_midline_offset_mm: float = MAX_MIDLINE_OFFSET_MM) -> tuple[np.ndarray, int]:
    """Set to background the part of each sacrum fragment that is a lumbar vertebral body.

    Each sacrum fragment's voxels of at least ``min_bone_hu`` are split into 6-connected
    pieces. A piece of at least ``min_piece_ml`` other than the largest is vertebra when its
    centre lies above (superior to) and in front of (anterior to) the largest piece's centre
    and within ``max_midline_offset_mm`` of it left-right. The fragment's voxels whose
    nearest dense voxel belongs to such a piece are cut off, the disc's half included.

    Parameters
    ----------
    labels : ndarray of int, shape (Z, Y, X)
        PENGWIN fragment labels (0 background, 1-10 sacrum, 11-20 left hip, 21-30 right hip).
    hu : ndarray, shape (Z, Y, X)
        The CT on the same grid, HU.
    index_to_lps_mm : ndarray, shape (3, 3)
        Linear part of the map from voxel indices (z, y, x) to patient LPS coordinates
        (x left, y posterior, z superior; mm): column k is one voxel step along axis k
        (:meth:`pengwin_demo.volume.Volume.index_to_world_matrix`, top-left 3 x 3).
    min_bone_hu, min_piece_ml, max_midline_offset_mm : float
        See :data:`MIN_BONE_HU`, :data:`MIN_VERTEBRA_ML`, :data:`MAX_MIDLINE_OFFSET_MM`.

    Returns
    -------
    (ndarray, int)
        The labels (same dtype; fragments keep their numbers; the input itself when nothing
        is cut) and the number of voxels cut.
    """
    labels = check_label_array("labels", labels, max_label=MAX_LABEL)
    hu = np.asarray(hu)
    matrix = np.asarray(index_to_lps_mm, dtype=np.float64)
    if hu.shape != labels.shape:
        raise ValueError(f"hu has shape {hu.shape}, labels {labels.shape}: they must share a grid")
    if matrix.shape != (3, 3) or abs(np.linalg.det(matrix)) <= 0:
        raise ValueError(f"index_to_lps_mm must be an invertible 3 x 3 matrix, got {matrix.tolist()}")
    spacing = np.linalg.norm(matrix, axis=0)  # mm per step along z, y, x
    min_vox = min_piece_ml * 1000 / float(np.prod(spacing))
    out = labels
    cut = 0
    first = first_label(Anatomy.SACRUM)
    # one pass for every sacrum fragment's box; label v's box is boxes[v - 1]
    boxes = ndimage.find_objects(labels, max_label=first + MAX_FRAGMENTS_PER_BONE - 1)
    for value in range(first, first + MAX_FRAGMENTS_PER_BONE):
        box = boxes[value - 1]
        if box is None:
            continue
        fragment = labels[box] == value
        gone = _vertebra_part(fragment, hu[box] >= min_bone_hu, matrix, spacing, min_vox,
                              max_midline_offset_mm)
        if gone is not None:
            out = labels.copy() if out is labels else out  # copied only when something is cut
            out[box][gone] = 0
            cut += int(np.count_nonzero(gone))
    return out, cut


def _vertebra_part(fragment: np.ndarray, dense: np.ndarray, matrix: np.ndarray, spacing: np.ndarray,
                   min_vox: float, max_midline_offset_mm: float) -> np.ndarray | None:
    """The voxels of one fragment (box-sized mask) nearest to its vertebra pieces, or None."""
    pieces = cc3d.connected_components(fragment & dense, connectivity=6)
    stats = cc3d.statistics(pieces)
    counts = np.asarray(stats["voxel_counts"], dtype=np.int64)
    counts[0] = 0
    big = np.flatnonzero(counts >= min_vox)
    if big.size < 2:
        return None
    main = int(np.argmax(counts))
    # offsets of each piece's centre from the main piece's, LPS mm (x left, y posterior, z superior)
    offset = (np.asarray(stats["centroids"], dtype=np.float64)[big] - stats["centroids"][main]) @ matrix.T
    vertebra = big[(big != main) & (offset[:, 2] > 0) & (offset[:, 1] < 0)
                   & (np.abs(offset[:, 0]) <= max_midline_offset_mm)]
    if vertebra.size == 0:
        return None
    # each voxel of the fragment goes with its nearest dense voxel's piece: the disc splits
    nearest = ndimage.distance_transform_edt(pieces == 0, sampling=spacing, return_distances=False,
                                             return_indices=True)
    return fragment & np.isin(pieces[tuple(nearest)], vertebra)
