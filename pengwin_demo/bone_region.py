"""What Stage 2 sees: the CT cropped to the Stage-1 bone box and masked outside the bones.

The fragment (ABBC) model is trained on real CTs in which everything but the pelvic bones
is set to 0 HU (the per-bone masked data sets FracSegNet and PENGWIN publish, see
:mod:`pengwin_demo.masked_cases`). At inference the pipeline shows it the same picture:
the CT cropped to the bones found by Stage 1 (plus :data:`STAGE2_MARGIN_MM`), and every
voxel farther than :data:`STAGE2_MASK_DILATION_MM` from them set to :data:`MASK_FILL_HU`.
The crop also keeps Stage 2 off the rest of the body (a chest-to-thigh scan costs no more
than a pelvis). The Stage-1 map goes onto Stage 2's finer grid with smooth surfaces
(:func:`anatomy_onto`), not as the stack of 4 mm blocks nearest neighbour makes of it.
"""

from __future__ import annotations

import numpy as np

from .recovery import nearest_onto, smooth_labels_onto
from .volume import Box, Volume, bounding_box, box_onto

__all__ = [
    "MASK_FILL_HU",
    "STAGE2_MARGIN_MM",
    "STAGE2_MASK_DILATION_MM",
    "anatomy_onto",
    "bone_box_on",
    "mask_outside_bones",
]

STAGE2_MARGIN_MM = 10.0
"""Margin around the Stage-1 bone box, mm: room for the masked rim, for bone Stage 1 missed
at the edge of its box, and for the network's zero padding to lie off the bone."""

STAGE2_MASK_DILATION_MM = 3.0
"""Voxels farther than this from Stage-1 bone are set to :data:`MASK_FILL_HU`, mm. The
training data are masked exactly at the expert bone surface; a Stage-1 model at 2-4 mm
misses a voxel or two of cortex, which a 3 mm rim keeps while the soft tissue behind it is
gone. ``None`` in :class:`~pengwin_demo.pipeline.Pipeline` turns masking off."""

MASK_FILL_HU = 0
"""Value outside the bones: what the masked training data hold there."""


def bone_box_on(anatomy: Volume, target: Volume, margin_mm: float) -> Box | None:
    """The box of ``target``'s grid that covers the bones of ``anatomy`` plus a margin.

    Parameters
    ----------
    anatomy : Volume
        Anatomy map (0 background, bones > 0) on any grid.
    target : Volume
        The grid to crop (e.g. the CT); only its geometry is used.
    margin_mm : float
        Added on every side, mm (converted per axis with ``target``'s spacing).

    Returns
    -------
    tuple of slice or None
        (z, y, x) slices into ``target``'s array; None when there is no bone or the bone
        box lies outside ``target``.
    """
    if margin_mm < 0:
        raise ValueError(f"margin_mm must be >= 0, got {margin_mm}")
    box = bounding_box(np.asarray(anatomy.array) > 0)
    if box is None:
        return None
    return box_onto(anatomy, box, target, margin_vox=0.5, margin_mm=margin_mm)


def mask_outside_bones(ct: np.ndarray, bones: np.ndarray, spacing_zyx_mm, dilation_mm: float,
                       fill: int = MASK_FILL_HU) -> np.ndarray:
    """A copy of ``ct`` with every voxel farther than ``dilation_mm`` from bone set to ``fill``.

    Parameters
    ----------
    ct : ndarray, shape (Z, Y, X)
        CT in HU.
    bones : ndarray, shape (Z, Y, X)
        Nonzero where Stage 1 found bone (same grid).
    spacing_zyx_mm : sequence of 3 float
        Voxel size along (z, y, x), mm.
    dilation_mm : float
        Distance from bone kept unmasked, mm (0: only the bone voxels).
    fill : int
        Value written outside.

    Returns
    -------
    ndarray
        Same shape and dtype as ``ct``.
    """
    import edt

    if ct.shape != bones.shape:
        raise ValueError(f"ct shape {ct.shape} differs from bones shape {bones.shape}")
    if dilation_mm < 0:
        raise ValueError(f"dilation_mm must be >= 0, got {dilation_mm}")
    outside = np.asarray(bones) == 0
    if dilation_mm > 0 and not outside.all():
        # distance of each non-bone voxel to the nearest bone voxel, mm
        dist = edt.edt(outside.astype(np.uint8), anisotropy=tuple(float(s) for s in spacing_zyx_mm),
                       black_border=False, parallel=2)
        outside = dist > dilation_mm
    out = np.array(ct, copy=True)
    out[outside] = fill
    return out


def anatomy_onto(anatomy: Volume, grid: Volume, *, foreground: np.ndarray | None = None,
                 smooth: bool = True) -> np.ndarray:
    """The Stage-1 map resampled onto ``grid`` (e.g. Stage 2's 1.5 mm grid).

    Parameters
    ----------
    anatomy : Volume
        uint8 anatomy map (0 background, 1 sacrum, 2 left hip, 3 right hip), e.g. on the
        anatomy model's 4 mm grid.
    grid : Volume
        The grid to map onto; only its geometry is used.
    foreground : ndarray of float, shape ``anatomy.shape``, optional
        The anatomy model's foreground probability on the map's grid: where between two
        voxel centres the bone surface lies. Ignored when its shape differs from the map's
        (the map was not made on the model's grid).
    smooth : bool
        Smooth surfaces (:func:`pengwin_demo.recovery.smooth_labels_onto`: the 0.5 level of
        the interpolated foreground, each voxel to the bone whose interpolated indicator is
        largest). False: nearest neighbour (:func:`pengwin_demo.recovery.nearest_onto`).

    Returns
    -------
    ndarray of uint8, shape ``grid.shape``
        The map on ``grid`` (z, y, x).
    """
    if anatomy.same_grid(grid, tol_mm=1e-3):
        return anatomy.array
    if not smooth:
        return nearest_onto(anatomy, grid)
    if foreground is not None and np.shape(foreground) != anatomy.shape:
        foreground = None
    return smooth_labels_onto(anatomy, grid, foreground=foreground)
