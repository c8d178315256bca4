"""Slice geometry of a DICOM series: sort, validate, and plan a regular orthogonal grid.

Pure functions on header numbers (positions, orientation, pixel spacing) and on stacks of
slices; no file access. The world frame is DICOM LPS, mm. A stack of N slices is indexed
(k, row, column) = (z, y, x).

Decisions (see docs/dicom.md):

- Slices are sorted by their position along the slice normal (row x column direction),
  never by InstanceNumber or file name.
- Spacing along the normal comes from the positions, never from SliceThickness (they
  differ for overlapping reconstructions) and never from an average over a gap.
- A regular stack (every position within ``min(0.1 mm, 10 % of a step)`` of a regular grid)
  is used as is.
- Missing slices and uneven spacing: the slices are interpolated linearly along the
  normal onto a regular grid whose step is the median slice step, provided that no gap is
  wider than ``(max_missing + 1)`` steps; a wider gap is refused. The caller is told, in a
  warning, where slices were missing and how many were interpolated.
- Gantry tilt (positions drifting in-plane along the stack): every slice is shifted
  in-plane onto an orthogonal grid (linear interpolation) whose in-plane extent grows to
  hold all of every slice, so nothing is cut off; the new border is filled with air. Tilts
  over ``max_tilt_deg`` are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..errors import InputError

DUPLICATE_TOL_MM = 0.01
"""Two slices closer than this along the normal share one position."""

MAX_MISSING_SLICES = 2
"""Fill at most this many consecutive missing slices; a wider gap is refused."""

MAX_TILT_DEG = 45.0
"""Refuse a gantry tilt steeper than this."""

FILL_HU = -1024
"""Value (air, HU) of voxels outside every slice after tilt correction."""


@dataclass
class GridPlan:
    """How to turn N sorted slices into a regular orthogonal (z, y, x) volume.

    Attributes
    ----------
    positions_mm : ndarray (N,)
        Slice positions along the normal (mm), ascending.
    shifts_yx_vox : ndarray (N, 2)
        In-plane shift (rows, columns; voxels) to apply to each slice so it lands on the
        output grid (zero without tilt; includes the border offset when the grid grows).
    out_shape_zyx : tuple of int
    spacing_zyx_mm : tuple of float
    origin_lps_mm : ndarray (3,)
        World position of output voxel (0, 0, 0).
    direction : ndarray (3, 3)
        Columns: row direction, column direction, normal (x, y, z index axes).
    regular : bool
        True when slices map one-to-one onto output slices without interpolation along z.
    tilt_deg : float
    warnings : list of str
    """

    positions_mm: np.ndarray
    shifts_yx_vox: np.ndarray
    out_shape_zyx: tuple[int, int, int]
    spacing_zyx_mm: tuple[float, float, float]
    origin_lps_mm: np.ndarray
    direction: np.ndarray
    regular: bool
    tilt_deg: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def shifted(self) -> bool:
        return bool(np.any(self.shifts_yx_vox != 0))


def orthonormal_axes(orientation: np.ndarray) -> np.ndarray:
    """(3, 3) matrix whose columns are the row direction, column direction and normal.

    ``orientation`` is ImageOrientationPatient (6 numbers). Slightly non-orthogonal
    values (rounded headers) are made orthonormal; a sheared pixel grid is refused.
    """
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:], dtype=np.float64)
    if np.linalg.norm(row) < 1e-6 or np.linalg.norm(col) < 1e-6:
        raise InputError("ImageOrientationPatient has a zero vector; the header is broken.")
    row = row / np.linalg.norm(row)
    col = col / np.linalg.norm(col)
    if abs(row @ col) > 0.01:
        raise InputError(
            f"ImageOrientationPatient row and column directions are not perpendicular "
            f"(cos = {row @ col:.3f}); the pixel grid is sheared and cannot be used. Re-export the series."
        )
    col = col - (col @ row) * row
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)
    return np.stack([row, col, normal], axis=1)


def sort_along_normal(positions_lps_mm: np.ndarray, normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order (ascending) of slices along ``normal`` and their sorted positions (mm)."""
    s = np.asarray(positions_lps_mm, dtype=np.float64) @ np.asarray(normal, dtype=np.float64)
    order = np.argsort(s, kind="stable")
    return order, s[order]


def duplicate_groups(sorted_positions_mm: np.ndarray, tol_mm: float = DUPLICATE_TOL_MM) -> list[np.ndarray]:
    """Groups (arrays of sorted indices, 2 or more) of slices that share one position."""
    s = np.asarray(sorted_positions_mm)
    if s.size < 2:
        return []
    new_group = np.concatenate([[True], np.diff(s) > tol_mm])
    groups = np.split(np.arange(s.size), np.flatnonzero(new_group)[1:])
    return [g for g in groups if g.size > 1]


def plan_grid(
    positions_lps_mm: np.ndarray,
    orientation: np.ndarray,
    pixel_spacing_rc_mm: tuple[float, float],
    rows: int,
    columns: int,
    max_missing: int = MAX_MISSING_SLICES,
    max_tilt_deg: float = MAX_TILT_DEG,
    gantry_tilt_header_deg: float | None = None,
) -> GridPlan:
    """Plan the output grid for slices already sorted along the normal (no duplicates).

    Parameters
    ----------
    positions_lps_mm : ndarray (N, 3)
        ImagePositionPatient of each slice (centre of its first pixel), sorted.
    orientation : ndarray (6,)
        ImageOrientationPatient shared by all slices.
    pixel_spacing_rc_mm : (float, float)
        PixelSpacing: between rows (y), between columns (x), mm.
    rows, columns : int
        Slice size (y, x) in voxels.

    Raises
    ------
    InputError
        Too few slices, a gap wider than ``max_missing`` missing slices, slices that do not
        lie on a line, or a tilt steeper than ``max_tilt_deg``.
    """
    p = np.asarray(positions_lps_mm, dtype=np.float64)
    n = p.shape[0]
    if n < 2:
        raise InputError("a volume needs at least 2 slices at different positions.")
    axes = orthonormal_axes(orientation)
    normal = axes[:, 2]
    sy, sx = (float(v) for v in pixel_spacing_rc_mm)
    if not (sy > 0 and sx > 0):
        raise InputError(f"PixelSpacing {pixel_spacing_rc_mm} is not positive; the header is broken.")
    s = (p - p[0]) @ normal
    if np.any(np.diff(s) <= 0):
        raise InputError("slice positions are not strictly increasing after sorting (internal error).")
    warnings: list[str] = []
    off_y, off_x, tilt_deg = _in_plane_offsets(p, s, axes, (sy, sx), max_tilt_deg, gantry_tilt_header_deg,
                                               warnings)
    out_rows, out_cols, origin, shifts = _widened_frame(p[0], off_y, off_x, rows, columns, axes, (sy, sx))
    step, n_out, offset_mm = _normal_step(s, max_missing, warnings)
    regular = offset_mm is not None
    if regular:
        origin = origin + offset_mm * normal
    return GridPlan(
        positions_mm=s,
        shifts_yx_vox=shifts,
        out_shape_zyx=(n_out, out_rows, out_cols),
        spacing_zyx_mm=(float(step), sy, sx),
        origin_lps_mm=origin,
        direction=axes,
        regular=bool(regular),
        tilt_deg=tilt_deg,
        warnings=warnings,
    )


def _in_plane_offsets(p, s, axes, spacing_yx_mm, max_tilt_deg, gantry_tilt_header_deg, warnings):
    """In-plane drift of each slice (gantry tilt): offsets (rows, columns) in voxels and the tilt.

    ``p`` are the sorted slice positions (N, 3), LPS mm; ``s`` their distances along the
    normal from the first, mm. A drift under a tenth of a pixel is none. Raises
    :class:`InputError` when the slices do not lie on a straight line or lean more than
    ``max_tilt_deg``; appends the tilt correction to ``warnings``.
    """
    n = p.shape[0]
    row, col, normal = axes[:, 0], axes[:, 1], axes[:, 2]
    sy, sx = spacing_yx_mm
    d = (p - p[0]) - np.outer(s, normal)  # in-plane displacement of each slice, mm
    drift_mm = np.linalg.norm(d, axis=1)
    if drift_mm.max() <= 0.1 * min(sx, sy):
        return np.zeros(n), np.zeros(n), 0.0
    # displacement must be linear in s (a tilted but straight stack)
    a = np.vstack([s, np.ones_like(s)]).T
    coef, *_ = np.linalg.lstsq(a, d, rcond=None)
    resid = np.linalg.norm(d - a @ coef, axis=1).max()
    if resid > 0.5 * min(sx, sy):
        raise InputError(
            f"slice positions do not lie on a straight line (in-plane scatter up to {resid:.2f} mm); "
            "the series mixes different stacks or its headers are broken. Export a single "
            "reconstruction, or choose another series with --series."
        )
    tilt_deg = float(np.degrees(np.arctan(np.linalg.norm(coef[0]))))
    if tilt_deg > max_tilt_deg:
        raise InputError(
            f"the slices are sheared by {tilt_deg:.1f} degrees (gantry tilt), more than the "
            f"{max_tilt_deg:g} degrees we correct. Ask for a reconstruction without tilt "
            "(most scanners can reformat to an orthogonal axial series)."
        )
    hdr = f" (header GantryDetectorTilt {gantry_tilt_header_deg:g} deg)" if gantry_tilt_header_deg else ""
    warnings.append(
        f"gantry tilt of {tilt_deg:.1f} degrees{hdr}: slices were shifted in-plane onto an "
        "orthogonal grid (linear interpolation); the grid was widened to keep every slice whole"
    )
    return d @ col / sy, d @ row / sx, tilt_deg


def _widened_frame(first_lps_mm, off_y, off_x, rows, columns, axes, spacing_yx_mm):
    """The in-plane grid widened to hold every shifted slice.

    Returns its rows and columns, the LPS position (mm) of its first pixel and, per slice,
    where the slice's pixel (0, 0) lands in it (rows, columns; voxels).
    """
    sy, sx = spacing_yx_mm
    x0 = int(np.floor(min(0.0, off_x.min()) + 1e-6))
    x1 = int(np.ceil(max(0.0, off_x.max()) - 1e-6))
    y0 = int(np.floor(min(0.0, off_y.min()) + 1e-6))
    y1 = int(np.ceil(max(0.0, off_y.max()) - 1e-6))
    origin = first_lps_mm + x0 * sx * axes[:, 0] + y0 * sy * axes[:, 1]
    shifts = np.stack([off_y - y0, off_x - x0], axis=1)
    return rows + y1 - y0, columns + x1 - x0, origin, shifts


def _normal_step(s, max_missing, warnings) -> tuple[float, int, float | None]:
    """Spacing along the normal of slices at distances ``s`` (mm, increasing, from the first).

    Returns the step (mm), the number of output slices and, for a regular stack, the
    position (mm along the normal) of the first output slice; None when the slices must
    be resampled (missing slices or uneven spacing, each said in ``warnings``). Raises
    :class:`InputError` when more than ``max_missing`` slices are missing in a row.
    """
    n = s.shape[0]
    steps = np.diff(s)
    step = float(np.median(steps))
    span = float(s[-1])
    tol = max(0.01, min(0.1, 0.1 * step))
    if int(round(span / step)) + 1 == n:
        # least-squares line through the positions: robust to jitter at either end
        fit_step, offset = np.polyfit(np.arange(n, dtype=np.float64), s, 1)
        if np.abs(s - (offset + fit_step * np.arange(n))).max() <= tol:
            return float(fit_step), n, offset
    max_gap = steps.max()
    if max_gap > (max_missing + 1) * step + tol:
        k = int(np.argmax(steps))
        raise InputError(
            f"slice positions jump by {max_gap:.2f} mm between slices {k} and {k + 1} "
            f"(usual step {step:.2f} mm): about {int(round(max_gap / step)) - 1} slices are missing, "
            f"more than the {max_missing} we fill by interpolation. Export the complete series "
            "(check that the transfer did not drop files)."
        )
    n_out = int(np.floor(span / step + 1e-6)) + 1
    is_gap = steps > 1.5 * step
    missing = [(int(k), float(steps[k])) for k in np.flatnonzero(is_gap)]
    if missing:
        desc = ", ".join(f"{g:.2f} mm after slice {k}" for k, g in missing[:5])
        warnings.append(
            f"missing slice(s): {len(missing)} gap(s) ({desc}{', ...' if len(missing) > 5 else ''}); "
            f"filled by linear interpolation onto a regular {step:.3f} mm grid"
        )
    if not missing or np.any(np.abs(steps[~is_gap] - step) > tol):
        warnings.append(
            f"uneven slice spacing (steps {steps.min():.3f}-{steps.max():.3f} mm); resampled "
            f"linearly onto a regular {step:.3f} mm grid ({n} slices -> {n_out})"
        )
    return step, n_out, None


def _shift_slice(slice_hu: np.ndarray, shift_yx: np.ndarray, out_shape_yx: tuple[int, int], fill: float) -> np.ndarray:
    """Place ``slice_hu`` into an ``out_shape_yx`` frame moved by ``shift_yx`` voxels (float32)."""
    iy, ix = np.floor(shift_yx).astype(int)
    fy, fx = shift_yx - np.floor(shift_yx)
    canvas = np.full(out_shape_yx, fill, dtype=np.float32)
    h, w = slice_hu.shape
    sub = slice_hu.astype(np.float32)
    if fy > 1e-6 or fx > 1e-6:
        pad = np.pad(sub, ((1, 1), (1, 1)), constant_values=fill)
        sub = ndimage.shift(pad, (fy, fx), order=1, mode="constant", cval=fill, prefilter=False)
        iy -= 1
        ix -= 1
        h, w = sub.shape
    y0, x0 = max(iy, 0), max(ix, 0)
    y1, x1 = min(iy + h, out_shape_yx[0]), min(ix + w, out_shape_yx[1])
    canvas[y0:y1, x0:x1] = sub[y0 - iy:y1 - iy, x0 - ix:x1 - ix]
    return canvas


def apply_plan(stack_hu: np.ndarray, plan: GridPlan, fill_hu: int = FILL_HU) -> np.ndarray:
    """Resample sorted slices (N, Y, X) int16 onto the planned grid; returns int16 (z, y, x).

    A regular, untilted stack is returned unchanged (no copy).
    """
    if plan.regular and not plan.shifted:
        return stack_hu
    out_z, out_y, out_x = plan.out_shape_zyx
    cache: dict[int, np.ndarray] = {}

    def slice_f32(k: int) -> np.ndarray:
        if k not in cache:
            if len(cache) > 4:
                cache.pop(min(cache))
            if plan.shifted or stack_hu.shape[1:] != (out_y, out_x):
                cache[k] = _shift_slice(stack_hu[k], plan.shifts_yx_vox[k], (out_y, out_x), fill_hu)
            else:
                cache[k] = stack_hu[k].astype(np.float32)
        return cache[k]

    out = np.empty(plan.out_shape_zyx, dtype=np.int16)
    s = plan.positions_mm
    step = plan.spacing_zyx_mm[0]
    tol = max(0.01, min(0.1, 0.1 * step))
    for j in range(out_z):
        t = j * step if not plan.regular else s[j]
        k = int(np.searchsorted(s, t))
        if k < len(s) and abs(s[k] - t) <= tol:
            val = slice_f32(k)
        elif k > 0 and abs(s[k - 1] - t) <= tol:
            val = slice_f32(k - 1)
        else:
            k = min(max(k, 1), len(s) - 1)
            w = (t - s[k - 1]) / (s[k] - s[k - 1])
            val = (1.0 - w) * slice_f32(k - 1) + w * slice_f32(k)
        out[j] = np.clip(np.rint(val), -32768, 32767)
    return out
