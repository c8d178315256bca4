"""Signed distance primitives for the phantom: pure numpy, float32, broadcasting.

Every function takes points as three broadcastable arrays ``(x, y, z)`` in millimetres
(canonical patient frame, LPS: +x patient's left, +y posterior, +z superior) and returns
the signed distance in mm (negative inside). Shapes broadcast, so open grids
(``z[:, None, None]``, ``y[None, :, None]``, ``x[None, None, :]``) work.
"""

from __future__ import annotations

import numpy as np

Points = tuple[np.ndarray, np.ndarray, np.ndarray]


def length(x, y, z):
    """Euclidean norm of (x, y, z), elementwise."""
    return np.sqrt(x * x + y * y + z * z)


def sphere(p: Points, centre, radius: float):
    """Sphere of ``radius`` mm around ``centre`` (x, y, z mm)."""
    x, y, z = p
    return length(x - centre[0], y - centre[1], z - centre[2]) - np.float32(radius)


def capsule(p: Points, a, b, radius_a: float, radius_b: float | None = None):
    """Segment a-b (x, y, z mm) swept by a radius going linearly from ``radius_a`` to ``radius_b``."""
    x, y, z = p
    a = np.asarray(a, dtype=np.float32)
    ba = np.asarray(b, dtype=np.float32) - a
    rb = radius_a if radius_b is None else radius_b
    pax, pay, paz = x - a[0], y - a[1], z - a[2]
    h = np.clip((pax * ba[0] + pay * ba[1] + paz * ba[2]) / np.float32(ba @ ba), 0, 1)
    d = length(pax - ba[0] * h, pay - ba[1] * h, paz - ba[2] * h)
    return d - (np.float32(radius_a) + np.float32(rb - radius_a) * h)


def ellipsoid(p: Points, centre, radii):
    """Axis-aligned ellipsoid (approximate distance, exact surface), radii (x, y, z) mm."""
    x, y, z = p
    rx, ry, rz = (np.float32(r) for r in radii)
    qx, qy, qz = (x - centre[0]) / rx, (y - centre[1]) / ry, (z - centre[2]) / rz
    k0 = length(qx, qy, qz)
    k1 = length(qx / rx, qy / ry, qz / rz)
    return k0 * (k0 - 1) / np.maximum(k1, np.float32(1e-6))


def smooth_union(a, b, k: float):
    """Union of two distance fields with a fillet of about ``k`` mm (polynomial smooth min)."""
    k = np.float32(k)
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0, 1)
    return b + (a - b) * h - k * h * (1 - h)


def chain(p: Points, points, radii, k: float = 0.0):
    """Union of capsules through consecutive ``points`` with per-point ``radii`` (mm)."""
    out = None
    for i in range(len(points) - 1):
        d = capsule(p, points[i], points[i + 1], radii[i], radii[i + 1])
        out = d if out is None else (smooth_union(out, d, k) if k > 0 else np.minimum(out, d))
    return out


def rotation_matrix(axis, angle_rad: float) -> np.ndarray:
    """3 x 3 rotation about ``axis`` (x, y, z) by ``angle_rad`` (right hand)."""
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    x, y, z = axis
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def random_unit(rng: np.random.Generator) -> np.ndarray:
    """A uniformly distributed unit vector (x, y, z)."""
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


class Canvas:
    """A distance field on a regular canonical grid, painted primitive by primitive.

    Each primitive is evaluated only on the sub-grid of its bounding box (crop first);
    outside that box it is farther than the blend width, so the result is unchanged.

    Parameters
    ----------
    box_mm : array (2, 3)
        Rows min and max, columns (x, y, z) mm.
    res_mm : float
        Isotropic spacing (mm). ``array`` is indexed (z, y, x); voxel (0, 0, 0) is centred
        on ``origin_mm``.
    """

    MARGIN_MM = 3.0
    """Each primitive is painted this far beyond its surface (plus its fillet width)."""

    def __init__(self, box_mm, res_mm: float):
        lo, hi = np.asarray(box_mm, dtype=np.float64)
        n = np.ceil((hi - lo) / res_mm).astype(int) + 1
        self.origin_mm = lo
        self.res_mm = float(res_mm)
        self.axes = [(lo[i] + res_mm * np.arange(n[i])).astype(np.float32) for i in range(3)]
        self.array = np.full((n[2], n[1], n[0]), 1e4, dtype=np.float32)
        self.painted = np.zeros(self.array.shape, dtype=bool)

    def finish(self, coarse: int = 4) -> np.ndarray:
        """Fill the unpainted voxels with a lower bound of their distance and return the array.

        Every unpainted voxel is at least ``MARGIN_MM`` from the shape, and farther by its
        distance to the painted region (measured on blocks of ``coarse`` voxels, minus a
        block diagonal), so the field stays a conservative distance everywhere: safe to
        interpolate and to skip empty space with.
        """
        far = ~self.painted
        if not far.any():
            return self.array
        import edt

        f = int(coarse)
        shape = np.array(self.array.shape)
        nb = -(-shape // f)
        padded = np.zeros(nb * f, dtype=bool)
        padded[: shape[0], : shape[1], : shape[2]] = self.painted
        block_painted = padded.reshape(nb[0], f, nb[1], f, nb[2], f).any(axis=(1, 3, 5))
        step = f * self.res_mm
        d = edt.edt(~block_painted, anisotropy=(step,) * 3, black_border=False, parallel=1)
        d = np.maximum(d - np.float32(step * np.sqrt(3)), 0) + np.float32(self.MARGIN_MM)
        fill = d.astype(np.float32).repeat(f, 0).repeat(f, 1).repeat(f, 2)
        np.copyto(self.array, fill[: shape[0], : shape[1], : shape[2]], where=far)
        return self.array

    def region(self, lo, hi):
        """(z, y, x) slices and open-grid points (x, y, z) of the box [lo, hi] mm, or None."""
        sl, pts = [], []
        for i in range(3):
            a = self.axes[i]
            i0 = int(np.searchsorted(a, lo[i], "left"))
            i1 = int(np.searchsorted(a, hi[i], "right"))
            if i1 <= i0:
                return None
            sl.append(slice(i0, i1))
            pts.append(a[i0:i1])
        p = (pts[0][None, None, :], pts[1][None, :, None], pts[2][:, None, None])
        return (sl[2], sl[1], sl[0]), p

    def union(self, fn, lo, hi, k: float = 0.0) -> None:
        """Blend ``fn`` (signed distance of a shape inside [lo, hi]) in with fillet ``k`` mm."""
        m = k + self.MARGIN_MM
        r = self.region(np.asarray(lo) - m, np.asarray(hi) + m)
        if r is None:
            return
        sl, p = r
        cur = self.array[sl]
        val = fn(p)
        self.array[sl] = smooth_union(cur, val, k) if k > 0 else np.minimum(cur, val)
        self.painted[sl] = True

    def cut(self, fn, lo, hi) -> None:
        """Intersect with ``fn`` (keep where fn < 0), evaluated only where it can change values."""
        r = self.region(lo, hi)
        if r is None:
            return
        sl, p = r
        self.array[sl] = np.maximum(self.array[sl], fn(p))

    def evaluate_all(self, fn) -> None:
        """Replace the field by ``fn`` on the whole grid."""
        p = (self.axes[0][None, None, :], self.axes[1][None, :, None], self.axes[2][:, None, None])
        self.array[...] = np.broadcast_to(fn(p), self.array.shape)
        self.painted[...] = True


def capsule_box(a, b, r: float):
    """Bounding box (lo, hi) of a capsule, mm."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return np.minimum(a, b) - r, np.maximum(a, b) + r
