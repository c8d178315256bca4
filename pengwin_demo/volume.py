"""A CT or label volume with its geometry, and the helpers every stage needs.

Axes and units
--------------
``Volume.array`` is indexed (z, y, x). ``spacing_zyx_mm`` is in the same order, in mm.
``origin_lps_mm`` is the world position (x, y, z in DICOM LPS mm) of the centre of voxel
(0, 0, 0). ``direction`` is the 3 x 3 matrix SimpleITK uses: column ``c`` is the LPS unit
vector of index axis ``c`` in (i=x, j=y, k=z) order, so that::

    world_lps = origin_lps_mm + direction @ (spacing_xyz * index_xyz)

Only here and in :mod:`pengwin_demo.io` does the (x, y, z) order of the world appear next
to the (z, y, x) order of the array.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk

Box = tuple[slice, slice, slice]
"""A crop box: one ``slice`` per array axis (z, y, x), with explicit start and stop."""


def check_spacing_zyx_mm(spacing_zyx_mm) -> tuple[float, float, float]:
    """Check a voxel spacing and return it as 3 floats.

    Parameters
    ----------
    spacing_zyx_mm : sequence of 3 numbers
        Voxel size along the array axes (z, y, x), mm.

    Returns
    -------
    tuple of 3 float
        The spacing (z, y, x), mm.

    Raises
    ------
    ValueError
        Not 3 numbers, or one of them is not finite and positive.
    """
    try:
        spacing = tuple(float(s) for s in np.asarray(spacing_zyx_mm, dtype=np.float64).ravel())
    except (TypeError, ValueError):
        spacing = ()
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"spacing_zyx_mm must be 3 positive numbers (z, y, x mm), got {spacing_zyx_mm!r}")
    return spacing  # type: ignore[return-value]


def check_label_array(name: str, array, *, max_label: int | None = None, hint: str = "") -> np.ndarray:
    """Check a label map is a 3D (z, y, x) array of integer labels.

    Parameters
    ----------
    name : str
        What the array is (``"ABBC map"``), named in the messages.
    array : array_like, shape (Z, Y, X)
        Integer (or bool) labels.
    max_label : int, optional
        Values must lie in 0..max_label; None: the values are not checked.
    hint : str
        Appended to the out-of-range message (what the labels mean, what to do).

    Returns
    -------
    ndarray
        ``np.asarray(array)``, unchanged.

    Raises
    ------
    ValueError
        Not 3D, or values outside 0..max_label.
    TypeError
        Neither an integer nor a bool dtype.
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name} must be a 3D (z, y, x) array, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise TypeError(
            f"{name} must hold integers (labels), got dtype {array.dtype}; give the label map, "
            "not an intensity or probability image"
        )
    if max_label is not None and array.size:
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > max_label:
            raise ValueError(f"{name} values range {lo}..{hi}; expected 0-{max_label}{hint}")
    return array


@dataclass(frozen=True)
class Volume:
    """A 3D array with its place in the patient (LPS mm).

    Parameters
    ----------
    array : ndarray, shape (Z, Y, X)
        Voxel values (int16 HU for CT, uint8 for label maps).
    spacing_zyx_mm : tuple of 3 float
        Voxel size along the array axes (z, y, x), mm.
    origin_lps_mm : tuple of 3 float
        World position (x, y, z; LPS mm) of the centre of voxel (0, 0, 0).
    direction : ndarray, shape (3, 3)
        Column c is the LPS direction of index axis c in (x, y, z) index order.
    """

    array: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume needs a 3D (z, y, x) array, got shape {self.array.shape}")
        spacing = check_spacing_zyx_mm(self.spacing_zyx_mm)
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise ValueError(f"direction must be orthonormal, got {direction.tolist()}")
        object.__setattr__(self, "spacing_zyx_mm", spacing)
        object.__setattr__(self, "origin_lps_mm", tuple(float(o) for o in self.origin_lps_mm))
        object.__setattr__(self, "direction", direction)

    # -- geometry -------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        z, y, x = self.spacing_zyx_mm
        return z * y * x

    def index_to_world_matrix(self) -> np.ndarray:
        """4 x 4 affine mapping homogeneous (z, y, x, 1) indices to (x, y, z, 1) LPS mm."""
        spacing_xyz = np.array(self.spacing_zyx_mm[::-1])
        m_xyz = self.direction * spacing_xyz[None, :]  # columns: index axes x, y, z
        affine = np.eye(4)
        affine[:3, :3] = m_xyz[:, ::-1]  # columns in (z, y, x) index order
        affine[:3, 3] = self.origin_lps_mm
        return affine

    def index_to_world(self, index_zyx: np.ndarray) -> np.ndarray:
        """Map (N, 3) continuous (z, y, x) indices to (N, 3) LPS points (x, y, z), mm."""
        idx = np.asarray(index_zyx, dtype=np.float64).reshape(-1, 3)
        affine = self.index_to_world_matrix()
        return idx @ affine[:3, :3].T + affine[:3, 3]

    def world_to_index(self, points_lps_mm: np.ndarray) -> np.ndarray:
        """Map (N, 3) LPS points (x, y, z, mm) to continuous (z, y, x) indices."""
        pts = np.asarray(points_lps_mm, dtype=np.float64).reshape(-1, 3)
        affine = self.index_to_world_matrix()
        return np.linalg.solve(affine[:3, :3], (pts - affine[:3, 3]).T).T

    def same_grid(self, other: "Volume", tol_mm: float = 1e-4) -> bool:
        """True when ``other`` has the same shape, spacing, origin and direction."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing_zyx_mm, other.spacing_zyx_mm, atol=tol_mm)
            and np.allclose(self.origin_lps_mm, other.origin_lps_mm, atol=tol_mm)
            and np.allclose(self.direction, other.direction, atol=1e-6)
        )

    def with_array(self, array: np.ndarray) -> "Volume":
        """The same grid holding another array of the same shape."""
        if array.shape != self.array.shape:
            raise ValueError(f"array shape {array.shape} differs from the grid's {self.array.shape}")
        return replace(self, array=array)

    # -- cropping -------------------------------------------------------------------
    def crop(self, box: Box) -> "Volume":
        """The sub-volume inside ``box`` (a view, no copy), with its origin moved."""
        box = _normalise_box(box, self.shape)
        start_zyx = np.array([s.start for s in box], dtype=np.float64)
        origin = self.index_to_world(start_zyx)[0]
        return Volume(self.array[box], self.spacing_zyx_mm, tuple(origin), self.direction)

    # -- SimpleITK bridge -----------------------------------------------------------
    def to_sitk(self) -> sitk.Image:
        image = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        image.SetSpacing(self.spacing_zyx_mm[::-1])
        image.SetOrigin(self.origin_lps_mm)
        image.SetDirection(tuple(self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Volume":
        if image.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
        return cls(
            sitk.GetArrayFromImage(image),
            tuple(image.GetSpacing())[::-1],
            tuple(image.GetOrigin()),
            np.array(image.GetDirection()).reshape(3, 3),
        )


def _normalise_box(box: Box, shape: tuple[int, ...]) -> Box:
    if len(box) != 3:
        raise ValueError(f"a box needs 3 slices (z, y, x), got {box}")
    out = []
    for s, n in zip(box, shape):
        start, stop, step = s.indices(n)
        if step != 1 or stop <= start:
            raise ValueError(f"box slice {s} is empty or strided for an axis of length {n}")
        out.append(slice(start, stop))
    return tuple(out)  # type: ignore[return-value]


def bounding_box(mask: np.ndarray, margin_vox: int = 0) -> Box | None:
    """Tight box around the nonzero voxels of ``mask`` (z, y, x), grown by ``margin_vox``.

    Returns None when the mask is empty. The box is clipped to the array.
    """
    if mask.ndim != 3:
        raise ValueError(f"mask must be 3D (z, y, x), got shape {mask.shape}")
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(np.any(mask, axis=other))
        if hit.size == 0:
            return None
        start = max(int(hit[0]) - margin_vox, 0)
        stop = min(int(hit[-1]) + 1 + margin_vox, mask.shape[axis])
        box.append(slice(start, stop))
    return tuple(box)  # type: ignore[return-value]


def box_onto(source: Volume, box: Box, target: Volume, *, margin_vox: float = 0.0,
             margin_mm: float = 0.0) -> Box | None:
    """The box of ``target``'s grid that covers ``box`` of ``source``'s grid.

    Parameters
    ----------
    source, target : Volume
        Any two grids (spacing, origin and direction may all differ).
    box : tuple of slice
        (z, y, x) slices into ``source``'s array.
    margin_vox : float
        ``box`` grown by this many source voxels beyond its outer voxel centres (0.5: to
        the voxels' outer faces).
    margin_mm : float
        The result grown by this many mm on every side (in ``target``'s spacing).

    Returns
    -------
    tuple of slice or None
        Slices into ``target``'s array, clipped to it; None when nothing of ``box`` lies
        inside ``target``.
    """
    lo = np.array([s.start for s in box], dtype=np.float64) - margin_vox
    hi = np.array([s.stop - 1 for s in box], dtype=np.float64) + margin_vox
    corners = np.array(list(itertools.product(*zip(lo, hi))), dtype=np.float64)  # 8 x (z, y, x)
    idx = target.world_to_index(source.index_to_world(corners))
    pad = margin_mm / np.asarray(target.spacing_zyx_mm, dtype=np.float64)
    start = np.maximum(np.floor(idx.min(axis=0) - pad).astype(int), 0)
    stop = np.minimum(np.ceil(idx.max(axis=0) + pad).astype(int) + 1, target.shape)
    if np.any(stop <= start):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))  # type: ignore[return-value]


def paste(target: np.ndarray, patch: np.ndarray, box: Box, where: np.ndarray | None = None) -> None:
    """Write ``patch`` into ``target[box]`` in place (only where ``where`` is true, if given)."""
    box = _normalise_box(box, target.shape)
    region = target[box]
    if region.shape != patch.shape:
        raise ValueError(f"patch shape {patch.shape} does not fit box of shape {region.shape}")
    if where is None:
        region[...] = patch
    else:
        region[where] = patch[where]


def closing_mm(mask: np.ndarray, spacing_zyx_mm, radius_mm: float) -> np.ndarray:
    """Morphological closing of ``mask`` with a ball of ``radius_mm``, as if background
    continued beyond the array.

    Distance transforms, not a structuring element, so anisotropic voxels are handled
    exactly and large radii cost no more than small ones.

    Parameters
    ----------
    mask : ndarray of bool, shape (Z, Y, X)
    spacing_zyx_mm : sequence of 3 float
        Voxel size along (z, y, x), mm.
    radius_mm : float
        Radius of the ball, mm.

    Returns
    -------
    ndarray of bool, shape (Z, Y, X)
    """
    import edt

    spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    pad = int(np.ceil(radius_mm / spacing.min())) + 1
    aniso = tuple(float(s) for s in spacing)
    dilated = edt.edt(~np.pad(np.asarray(mask, dtype=bool), pad), anisotropy=aniso) <= radius_mm
    closed = edt.edt(dilated, anisotropy=aniso, black_border=True) > radius_mm
    return closed[(slice(pad, -pad),) * 3]


def _interpolator(kind: str) -> int:
    if kind == "linear":
        return sitk.sitkLinear
    if kind == "nearest":
        return sitk.sitkNearestNeighbor
    raise ValueError(f"interpolation must be 'linear' (CT) or 'nearest' (labels), got {kind!r}")


def resample_to_spacing(
    volume: Volume, spacing_zyx_mm: tuple[float, float, float], interpolation: str
) -> Volume:
    """Resample onto a grid with the same origin and direction and the given spacing.

    The new grid covers the same physical extent (rounded to whole voxels).
    ``interpolation`` is ``"linear"`` for CT and ``"nearest"`` for label maps; the dtype
    is kept (linear results are rounded for integer arrays).
    """
    new_spacing = np.asarray(spacing_zyx_mm, dtype=np.float64)
    old_spacing = np.asarray(volume.spacing_zyx_mm)
    extent = np.asarray(volume.shape) * old_spacing
    new_shape = np.maximum(np.round(extent / new_spacing).astype(int), 1)
    reference = Volume(
        np.zeros(1, dtype=np.uint8).reshape(1, 1, 1), tuple(new_spacing), volume.origin_lps_mm,
        volume.direction,
    )
    return resample_onto(volume, reference, interpolation, shape_zyx=tuple(new_shape))


def resample_onto(
    volume: Volume,
    reference: Volume,
    interpolation: str,
    shape_zyx: tuple[int, int, int] | None = None,
    default_value: float = 0,
) -> Volume:
    """Resample ``volume`` onto the grid of ``reference`` (its shape unless ``shape_zyx``).

    Use this to bring a result computed at another spacing back onto the input grid
    exactly: the output has the reference's shape, spacing, origin and direction.
    """
    shape = tuple(shape_zyx) if shape_zyx is not None else reference.shape
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(s) for s in shape[::-1]])
    resampler.SetOutputSpacing(reference.spacing_zyx_mm[::-1])
    resampler.SetOutputOrigin(reference.origin_lps_mm)
    resampler.SetOutputDirection(tuple(reference.direction.ravel()))
    resampler.SetInterpolator(_interpolator(interpolation))
    resampler.SetDefaultPixelValue(default_value)
    src = volume.to_sitk()
    dtype = volume.array.dtype
    if interpolation == "linear" and np.issubdtype(dtype, np.integer):
        resampler.SetOutputPixelType(sitk.sitkFloat32)
        out = sitk.GetArrayFromImage(resampler.Execute(src))
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max).astype(dtype)
    else:
        out = sitk.GetArrayFromImage(resampler.Execute(src)).astype(dtype, copy=False)
    return Volume(out, reference.spacing_zyx_mm, reference.origin_lps_mm, reference.direction)
