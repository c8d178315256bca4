"""Fragment (ABBC) training cases that look like what Stage 2 sees in a real scan.

The real fractured pelves are bone-masked: 0 HU everywhere outside the expert bone
surface. A model trained only on them learns that every nonzero voxel is bone. In a real
scan Stage 2 gets the CT masked outside the Stage-1 bones plus a rim
(:func:`pengwin_demo.bone_region.mask_outside_bones`), and the Stage-1 surface is a voxel
or so off: soft tissue, the sacral canal and the foramina reach Stage 2 unmasked, and such
a model calls them bone. :func:`in_body_case` makes the cases that teach it otherwise: one
real pelvis in a synthetic body (:func:`pengwin_demo.training.composite.composite_case`),
cut to its bone box plus Stage 2's margin, fat put where a real scan has it between the
bones' walls, and masked the way the pipeline masks, around a
surface drawn to be off the expert one as much as a Stage-1 map is
(:func:`stage1_like_mask`). The labels stay the expert fragments.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..bone_region import MASK_FILL_HU, STAGE2_MARGIN_MM, STAGE2_MASK_DILATION_MM, mask_outside_bones
from ..volume import Volume, bounding_box, closing_mm
from .composite import CompositeOptions, composite_case, mirror_case

__all__ = ["IN_BODY_OPTIONS", "GAP_FAT_HU", "STAGE1_OFFSET_MM", "fat_between_walls", "stage1_like_mask",
           "in_body_case"]

IN_BODY_OPTIONS = CompositeOptions(inplane_mm=(1.0, 1.6), slice_mm=(1.0, 2.5),
                                   below_mm=(10.0, 30.0), above_mm=(10.0, 30.0))
"""Bodies on a grid near Stage 2's 1.5 mm, short above and below the bones: the case is cut
to the bone box anyway."""

GAP_FAT_HU = (-110.0, 0.0)
"""Range of the value given to what lies between the bones' walls (the sacral canal and
foramina: epidural fat and nerves in a real scan), HU."""

STAGE1_OFFSET_MM = (-3.0, 4.0)
"""Range of the drawn surface's offset from the expert surface, mm (negative: inside the
bone). A 4 mm anatomy model places the surface up to a voxel off either way."""


def _signed_distance_mm(bones: np.ndarray, spacing_zyx_mm) -> np.ndarray:
    """Distance to the bone surface, mm: negative inside ``bones``, positive outside."""
    import edt

    anisotropy = tuple(float(s) for s in spacing_zyx_mm)
    inside = edt.edt(bones.astype(np.uint8), anisotropy=anisotropy, black_border=False)
    outside = edt.edt((~bones).astype(np.uint8), anisotropy=anisotropy, black_border=False)
    return (outside - inside).astype(np.float32)


def _closed_and_filled(mask: np.ndarray, spacing_zyx_mm, radius_mm: float) -> np.ndarray:
    """``mask`` closed with a ball of ``radius_mm``, its holes then filled."""
    return ndimage.binary_fill_holes(closing_mm(mask, spacing_zyx_mm, radius_mm))


def stage1_like_mask(bones: np.ndarray, spacing_zyx_mm, rng: np.random.Generator,
                     offset_mm: tuple[float, float] = STAGE1_OFFSET_MM,
                     close_probability: float = 0.5) -> np.ndarray:
    """A bone mask whose surface is off the true one the way a Stage-1 map's is.

    The surface moves out or in by a smooth random field (a mean drawn per case plus a
    patchwork about 10 mm across) clipped to ``offset_mm``. With ``close_probability`` the
    mask is then closed with a 3-8 mm ball and its holes filled: Stage-1 maps often claim
    the sacral canal and foramina.

    Parameters
    ----------
    bones : ndarray of bool, shape (Z, Y, X)
        The expert bone mask.
    spacing_zyx_mm : sequence of 3 float
        Voxel size along (z, y, x), mm.
    rng : numpy.random.Generator
        Source of every random choice.
    offset_mm : (float, float)
        Lowest and highest offset of the surface, mm (negative: into the bone).
    close_probability : float
        Share of masks closed and filled.

    Returns
    -------
    ndarray of bool, shape (Z, Y, X)
    """
    bones = np.asarray(bones, dtype=bool)
    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    field = ndimage.gaussian_filter(rng.standard_normal(bones.shape).astype(np.float32), 5.0 / spacing)
    field /= max(float(field.std()), 1e-6)
    lo, hi = offset_mm
    offset = rng.uniform(lo / 2, hi / 2) + field * rng.uniform(0.5, 2.0)
    mask = _signed_distance_mm(bones, spacing) <= np.clip(offset, lo, hi)
    if rng.random() < close_probability:
        mask = _closed_and_filled(mask, spacing, rng.uniform(3.0, 8.0))
    return mask


def fat_between_walls(ct: np.ndarray, bones: np.ndarray, spacing_zyx_mm, rng: np.random.Generator,
                      value_hu: tuple[float, float] = GAP_FAT_HU) -> np.ndarray:
    """A copy of ``ct`` whose voxels enclosed by bone walls but not bone read as fat.

    The masked real data are 0 outside the bones, so a synthetic body puts muscle into the
    sacral canal and the foramina; in a real scan they hold fat and nerves, which read like
    fatty marrow. The voxels that a 6-10 mm closing of the bones adds get one value drawn
    from ``value_hu`` plus noise.

    Parameters
    ----------
    ct : ndarray, shape (Z, Y, X)
        CT (HU).
    bones, spacing_zyx_mm, rng
        As for :func:`stage1_like_mask`.
    value_hu : (float, float)
        Range of the fat's value, HU.

    Returns
    -------
    ndarray, same shape and dtype as ``ct``
    """
    bones = np.asarray(bones, dtype=bool)
    between = _closed_and_filled(bones, spacing_zyx_mm, rng.uniform(6.0, 10.0)) & ~bones
    out = np.array(ct, copy=True)
    fat = rng.uniform(*value_hu) + rng.normal(0.0, 10.0, int(between.sum()))
    out[between] = np.clip(np.rint(fat), -1024, 3071).astype(out.dtype)
    return out


def in_body_case(ct: Volume, labels: Volume, rng: np.random.Generator,
                 options: CompositeOptions = IN_BODY_OPTIONS) -> tuple[Volume, Volume]:
    """One real masked pelvis as Stage 2 would see it in a real scan.

    The pelvis is put in a synthetic body (mirrored left-right half the time), cut to its
    bone box plus :data:`~pengwin_demo.bone_region.STAGE2_MARGIN_MM`, given fat between
    its walls (:func:`fat_between_walls`), and every voxel
    farther than :data:`~pengwin_demo.bone_region.STAGE2_MASK_DILATION_MM` from a
    :func:`stage1_like_mask` is set to :data:`~pengwin_demo.bone_region.MASK_FILL_HU`.

    Parameters
    ----------
    ct : Volume
        Bone-masked CT (HU).
    labels : Volume
        PENGWIN fragment labels on the CT's grid.
    rng : numpy.random.Generator
        Source of every random choice (same state, same case).
    options : CompositeOptions
        Ranges the body is drawn from.

    Returns
    -------
    (Volume, Volume)
        int16 HU CT and uint8 PENGWIN labels on the body's LPS grid, cut to the box.
    """
    body_ct, body_labels = composite_case(ct, labels, rng, options)
    if rng.random() < 0.5:
        body_ct, body_labels = mirror_case(body_ct, body_labels)
    margin_vox = int(np.ceil(STAGE2_MARGIN_MM / min(body_ct.spacing_zyx_mm)))
    box = bounding_box(body_labels.array > 0, margin_vox)
    if box is None:
        raise ValueError("in_body_case needs labels with bone")
    body_ct, body_labels = body_ct.crop(box), body_labels.crop(box)
    bones, spacing = body_labels.array > 0, body_ct.spacing_zyx_mm
    filled = fat_between_walls(body_ct.array, bones, spacing, rng)
    mask = stage1_like_mask(bones, spacing, rng)
    masked = mask_outside_bones(filled, mask, spacing, STAGE2_MASK_DILATION_MM, MASK_FILL_HU)
    return body_ct.with_array(masked), body_labels
