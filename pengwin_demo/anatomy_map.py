"""Stage 1 from a file: a bone map the user already has (TotalSegmentator run elsewhere,
manual masks, expert labels for evaluation) in place of the anatomy model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import read_volume
from .labels import BONES
from .volume import Volume, resample_onto

__all__ = ["read_anatomy_map", "read_bone_masks", "anatomy_map_onto", "BONE_MASK_FILES"]

BONE_MASK_FILES: dict[int, str] = {1: "sacrum", 2: "hip_left", 3: "hip_right"}
"""Anatomy label -> file stem of its 0/1 mask, as TotalSegmentator names them
(``sacrum.nii.gz``, ``hip_left.nii.gz``, ``hip_right.nii.gz``)."""


def anatomy_map_onto(anatomy: Volume, ct: Volume, name: str = "anatomy map") -> Volume:
    """An anatomy map resampled (nearest) onto the CT grid, checked.

    Parameters
    ----------
    anatomy : Volume
        0 background, 1 sacrum, 2 left hip, 3 right hip, on any grid.
    ct : Volume
        The CT whose grid the result takes.
    name : str
        Named in error messages.

    Raises
    ------
    InputError
        Values other than 0-3, or no bone of the map falls inside the CT.
    """
    values = np.unique(anatomy.array)
    bad = [int(v) for v in values if int(v) not in (0, *BONES)]
    if bad:
        raise InputError(
            f"{name}: holds label values {bad[:8]}; an anatomy map has 0 background, "
            "1 sacrum, 2 left hip, 3 right hip. Relabel it (e.g. TotalSegmentator's sacrum 25, "
            "hip_left 77, hip_right 78 -> 1, 2, 3)."
        )
    if not np.any(values > 0):
        raise InputError(f"{name}: holds no bone (all 0); give a map with sacrum/hip labels 1-3.")
    if anatomy.same_grid(ct, tol_mm=1e-3):
        return anatomy
    on_ct = resample_onto(anatomy, ct, "nearest")
    if not on_ct.array.any():
        raise InputError(
            f"{name}: none of its bone lies inside the CT (the map's grid misses the CT's "
            "volume); give a map made from this CT, in the same patient coordinates."
        )
    return on_ct


def read_anatomy_map(path: str | os.PathLike, ct: Volume) -> Volume:
    """Read an anatomy map file and put it on the CT grid (see :func:`anatomy_map_onto`).

    Raises
    ------
    InputError
        Unreadable, not 3D, values other than 0-3, or missing the CT.
    """
    path = Path(path)
    try:
        anatomy = read_volume(path, "label")
    except InputError as err:
        raise InputError(f"anatomy map: {err}") from None
    return anatomy_map_onto(anatomy, ct, f"anatomy map {path.name}")


def read_bone_masks(mask_dir: str | os.PathLike, ct: Volume) -> Volume:
    """Per-bone 0/1 masks named as TotalSegmentator names them -> one anatomy map on the CT grid.

    Parameters
    ----------
    mask_dir : path-like
        Folder with ``sacrum.nii.gz``, ``hip_left.nii.gz`` and ``hip_right.nii.gz``
        (:data:`BONE_MASK_FILES`), e.g. TotalSegmentator's output or its data set's
        ``segmentations/`` folder.
    ct : Volume
        The CT the masks belong to; each mask is put on its grid.

    Returns
    -------
    Volume
        uint8 map on the CT's grid: 0 background, 1 sacrum, 2 left hip, 3 right hip (a voxel
        in two masks takes the later bone of that list).

    Raises
    ------
    InputError
        A mask missing, unreadable, empty, not 3D or not covering the CT.
    """
    out = np.zeros(ct.shape, np.uint8)
    for bone, stem in BONE_MASK_FILES.items():
        path = Path(mask_dir) / f"{stem}.nii.gz"
        if not path.is_file():
            raise InputError(f"{path}: no such bone mask; {Path(mask_dir)} needs "
                             + ", ".join(f"{s}.nii.gz" for s in BONE_MASK_FILES.values()))
        try:
            mask = read_volume(path, "label")
        except InputError as err:
            raise InputError(f"bone mask: {err}") from None
        if not mask.array.any():
            raise InputError(f"{path}: the {stem} mask holds no voxel; the reference needs all three bones")
        mask = anatomy_map_onto(mask, ct, f"bone mask {path.name}")  # a 0/1 mask is a valid anatomy map
        out[mask.array > 0] = bone
    return ct.with_array(out)
