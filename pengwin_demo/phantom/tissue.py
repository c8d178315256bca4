"""Soft tissue of the phantom on a coarse canonical grid: air, skin outline, fat, muscle,
bowel with gas, bladder and the scanner table (HU, float32).

Canonical frame as in :mod:`pengwin_demo.phantom.anatomy` (LPS mm, origin between the hip
joint centres). The grid is coarse (2-4 mm); the caller resamples it onto the CT grid.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

AIR_HU, FAT_HU, MUSCLE_HU, FLUID_HU, BOWEL_HU = -1000.0, -100.0, 45.0, 8.0, 25.0


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox: float) -> np.ndarray:
    """Unit-variance smooth random field (float32) with correlation length ~``sigma_vox``.

    Drawn on a grid ``sigma_vox`` times coarser and interpolated linearly (cheap).
    """
    step = max(float(sigma_vox), 1.0)
    coarse_shape = tuple(int(np.ceil(n / step)) + 2 for n in shape)
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape, dtype=np.float32), 0.7)
    coarse /= max(float(coarse.std()), 1e-6)
    coords = np.ix_(*[np.arange(n, dtype=np.float32) / np.float32(step) for n in shape])
    # separable linear interpolation, axis by axis
    out = coarse
    for axis, c in enumerate(coords):
        c = c.ravel()
        i0 = np.floor(c).astype(int)
        f = (c - i0).astype(np.float32)
        shape_f = [1] * 3
        shape_f[axis] = -1
        f = f.reshape(shape_f)
        out = np.take(out, i0, axis=axis) * (1 - f) + np.take(out, i0 + 1, axis=axis) * f
    return out.astype(np.float32)


def _soft_step(d: np.ndarray, width_mm: float) -> np.ndarray:
    """0 outside (d > 0) .. 1 inside (d < 0), linear over ``width_mm``."""
    return np.clip(0.5 - d / np.float32(width_mm), 0, 1)


def soft_tissue(
    rng: np.random.Generator, box_mm: np.ndarray, res_mm: float
) -> tuple[np.ndarray, np.ndarray]:
    """HU of the soft tissue on a canonical grid.

    Parameters
    ----------
    rng : numpy Generator
    box_mm : ndarray (2, 3)
        Canonical box to cover, rows min and max, columns (x, y, z) mm.
    res_mm : float
        Isotropic grid spacing (mm).

    Returns
    -------
    hu : ndarray (Z, Y, X) float32
        Indexed (z, y, x); voxel (0, 0, 0) is centred on ``origin``.
    origin : ndarray (3,)
        Canonical (x, y, z) mm of voxel (0, 0, 0).
    """
    lo, hi = np.asarray(box_mm, float)
    n = np.maximum(np.ceil((hi - lo) / res_mm).astype(int) + 1, 2)
    x = (lo[0] + res_mm * np.arange(n[0], dtype=np.float32))[None, None, :].astype(np.float32)
    y = (lo[1] + res_mm * np.arange(n[1], dtype=np.float32))[None, :, None].astype(np.float32)
    z = (lo[2] + res_mm * np.arange(n[2], dtype=np.float32))[:, None, None].astype(np.float32)
    shape = (n[2], n[1], n[0])
    u = rng.uniform
    ax0, ay0, cy = u(150, 195), u(105, 140), u(5, 20)
    fat = u(8, 35)
    # body outline: wider at the trochanters, slightly narrower at the waist
    ax = np.float32(ax0) * (1 + 0.07 * np.exp(-(((z + 35) / 60) ** 2)) - 0.04 * np.clip(z / 150, 0, 1))
    ay = np.float32(ay0) * (1 + 0.03 * np.exp(-(((z + 10) / 70) ** 2)))
    wobble = np.float32(1) + np.float32(0.03) * _smooth_noise(rng, shape, 20 / res_mm)
    r = np.sqrt((x / ax) ** 2 + ((y - np.float32(cy)) / ay) ** 2) * wobble
    # signed distance approximations (mm) of the skin and of the muscle boundary
    d_skin = (r - 1) * np.minimum(ax, ay)
    d_muscle = d_skin + np.float32(fat)
    hu = np.full(shape, AIR_HU, dtype=np.float32)
    body = _soft_step(d_skin, 2.0 * res_mm)
    muscle = _soft_step(d_muscle, 3.0 * res_mm)
    tissue = FAT_HU + (MUSCLE_HU - FAT_HU) * muscle
    # intermuscular fat streaks
    streak = _smooth_noise(rng, shape, 4 / res_mm)
    tissue = np.where(streak > 1.6, np.float32(FAT_HU * 0.7), tissue)
    # pelvic cavity and lower abdomen: bowel (soft tissue, fat, gas) and bladder
    cav = ((x / 60) ** 2 + ((y - 8) / 48) ** 2 + ((z - 10) / 70) ** 2) < 1
    abdomen = ((x / np.float32(ax0 * 0.65)) ** 2 + ((y + 20) / np.float32(ay0 * 0.6)) ** 2 < 1) & (z > 30)
    bowel_zone = cav | abdomen
    bn = _smooth_noise(rng, shape, 5 / res_mm)
    gas = _smooth_noise(rng, shape, 2.5 / res_mm)
    bowel = np.where(bn > 0.6, np.float32(FAT_HU * 0.8), np.float32(BOWEL_HU))
    bowel = np.where((gas > 1.9) & (z > -20), np.float32(-950.0), bowel)
    tissue = np.where(bowel_zone, bowel, tissue)
    bl = u(25, 45)
    bladder = ((x / bl) ** 2 + ((y + 28) / (bl * 0.8)) ** 2 + ((z + 28) / (bl * 0.75)) ** 2) < 1
    tissue = np.where(bladder, np.float32(FLUID_HU), tissue)
    hu = AIR_HU + (tissue - AIR_HU) * body
    # scanner table under the patient (posterior): thin dense shell
    y_table = cy + ay0 + u(8, 20)
    table = (np.abs(y - np.float32(y_table + 6)) < 5) & (np.abs(x) < 220)
    hu = np.where(table & (body < 0.5), np.float32(150.0), hu)
    hu = ndimage.uniform_filter(hu, 2)
    return hu.astype(np.float32), lo
