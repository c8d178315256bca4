"""Imperfect ABBC predictions on purpose: the ways a network gets the four classes wrong.

Instance recovery must degrade gracefully when the prediction is not the perfect ABBC map
of the ground truth. These functions take a clean ABBC map (0 background, 1 boundary,
2 core, 3 border) and return a corrupted copy with one kind of error at a chosen level,
so that tests and ``benchmarks/bench_recovery.py`` can measure fragment IoU against the
corruption level. All are pure (the input is not modified) and seeded.

Arrays are indexed (z, y, x); ``spacing_zyx_mm`` is in the same order, in mm.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..labels import ABBC_BORDER, ABBC_BOUNDARY, ABBC_CORE
from ..volume import bounding_box

_BALL6 = ndi.generate_binary_structure(3, 1)


def _smooth_noise(shape, spacing_zyx_mm, blob_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-smoothed white noise (float32) with blobs of about ``blob_mm``."""
    sigma = [blob_mm / 2.0 / s for s in spacing_zyx_mm]
    return ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)


def border_gaps(abbc, fraction: float, spacing_zyx_mm, *, blob_mm: float = 4.0, seed: int = 0):
    """Turn about ``fraction`` of the border into boundary, in blobs of about ``blob_mm``.

    The network misses parts of the fracture zone: the wall between two fragments gets holes.
    """
    out = np.array(abbc, dtype=np.uint8, copy=True)
    border = out == ABBC_BORDER
    box = bounding_box(border, margin_vox=1)
    if box is None or fraction <= 0:
        return out
    noise = _smooth_noise(border[box].shape, spacing_zyx_mm, blob_mm, np.random.default_rng(seed))
    sub = border[box]
    cut = np.quantile(noise[sub], min(float(fraction), 1.0))
    region = out[box]
    region[sub & (noise <= cut)] = ABBC_BOUNDARY
    return out


def border_width(abbc, change_vox: int):
    """Make the border ``change_vox`` voxels thicker (> 0) or thinner (< 0) on each side.

    Thicker: bone voxels within ``change_vox`` 6-steps of the border become border (core
    too, so a thin fragment can drown). Thinner: border voxels within ``-change_vox`` steps
    of boundary/core become boundary (a border only 1-2 voxels thick gets holes).
    """
    out = np.array(abbc, dtype=np.uint8, copy=True)
    if change_vox == 0:
        return out
    bone = out > 0
    border = out == ABBC_BORDER
    if change_vox > 0:
        grown = ndi.binary_dilation(border, _BALL6, iterations=change_vox, mask=bone)
        out[grown] = ABBC_BORDER
    else:
        solid = border | ~bone  # the wall, with the background beyond the bone surface
        kept = ndi.binary_erosion(solid, _BALL6, iterations=-change_vox, border_value=1)
        out[border & ~kept] = ABBC_BOUNDARY
    return out


def core_specks(abbc, n_specks: int, size_vox: int = 64, *, seed: int = 0):
    """Add ``n_specks`` spurious core blobs (cubes of about ``size_vox`` voxels) in the bone.

    Each is centred on a random boundary or border voxel: false seeds, possibly inside the
    fracture zone.
    """
    out = np.array(abbc, dtype=np.uint8, copy=True)
    rng = np.random.default_rng(seed)
    where = np.flatnonzero((out == ABBC_BOUNDARY) | (out == ABBC_BORDER))
    if where.size == 0 or n_specks <= 0:
        return out
    half = max(1, int(round(size_vox ** (1 / 3) / 2)))
    for flat in rng.choice(where, size=min(n_specks, where.size), replace=False):
        z, y, x = np.unravel_index(flat, out.shape)
        box = tuple(slice(max(c - half, 0), c + half) for c in (z, y, x))
        region = out[box]
        region[region > 0] = ABBC_CORE
    return out


def drop_core(abbc, mask):
    """Core -> boundary inside ``mask`` (a fragment the network found no core for)."""
    out = np.array(abbc, dtype=np.uint8, copy=True)
    out[mask & (out == ABBC_CORE)] = ABBC_BOUNDARY
    return out


def class_noise(abbc, fraction: float, *, seed: int = 0):
    """Give about ``fraction`` of the bone voxels a random class (1, 2 or 3): salt and pepper."""
    out = np.array(abbc, dtype=np.uint8, copy=True)
    rng = np.random.default_rng(seed)
    bone = np.flatnonzero(out)
    pick = bone[rng.random(bone.size) < fraction]
    out.ravel()[pick] = rng.integers(1, 4, size=pick.size, dtype=np.uint8)
    return out


def surface_noise(abbc, fraction: float, spacing_zyx_mm, *, blob_mm: float = 3.0, seed: int = 0):
    """Jitter the outer bone surface by one voxel on about ``fraction`` of it, in blobs.

    Where a smooth random field is high the bone gains a voxel layer (as boundary), where
    it is low the bone loses its outer layer: the boundary noise of a real segmentation.
    """
    out = np.array(abbc, dtype=np.uint8, copy=True)
    bone = out > 0
    box = bounding_box(bone, margin_vox=2)
    if box is None or fraction <= 0:
        return out
    sub = bone[box]
    outer = ndi.binary_dilation(sub, _BALL6) & ~sub
    inner = sub & ~ndi.binary_erosion(sub, _BALL6, border_value=1)
    noise = _smooth_noise(sub.shape, spacing_zyx_mm, blob_mm, np.random.default_rng(seed))
    half = min(float(fraction), 1.0) / 2
    grow = outer & (noise >= np.quantile(noise[outer], 1 - half))
    shrink = inner & (noise <= np.quantile(noise[inner], half))
    region = out[box]
    region[grow] = ABBC_BOUNDARY
    region[shrink] = 0
    return out
