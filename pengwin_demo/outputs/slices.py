"""Slice images for viewing: display orientation, CT windows, coloured label overlays.

Pure array functions used by the web app (and usable in notebooks). Images follow the
radiological convention: axial slices seen from the feet (patient's right on the image
left, anterior at the top); coronal seen from the front (superior at the top, patient's
right on the left); sagittal seen from the patient's left (superior at the top, anterior
on the left). Pixels are resampled to square millimetres so anatomy is not stretched.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..labels import PALETTE_RGB
from ..volume import Volume

WINDOWS_HU: dict[str, tuple[float, float]] = {
    "bone": (400.0, 1800.0),
    "soft tissue": (40.0, 400.0),
    "wide": (200.0, 2400.0),
}
"""Named CT windows: (centre, width) in HU."""

AXES = ("axial", "coronal", "sagittal")


def to_lps_orientation(volume: Volume) -> Volume:
    """Permute/flip the array so index axes run L, P, S (x, y, z) as closely as possible.

    No interpolation: oblique volumes get the nearest axis-aligned orientation.
    """
    if np.allclose(volume.direction, np.eye(3), atol=1e-6):
        return volume
    oriented = sitk.DICOMOrient(volume.to_sitk(), "LPS")
    return Volume.from_sitk(oriented)


def n_slices(shape_zyx: tuple[int, int, int], axis: str) -> int:
    """Number of slices along a viewing ``axis`` of an LPS-oriented (z, y, x) array."""
    return {"axial": shape_zyx[0], "coronal": shape_zyx[1], "sagittal": shape_zyx[2]}[axis]


def extract_slice(array: np.ndarray, spacing_zyx_mm, axis: str, index: int) -> np.ndarray:
    """One 2D slice of an LPS-oriented (z, y, x) array, in display orientation, square pixels.

    Parameters
    ----------
    array : ndarray (Z, Y, X)
        CT or label map, already passed through :func:`to_lps_orientation`.
    spacing_zyx_mm : tuple of 3 float
        Voxel size (z, y, x) in mm.
    axis : {"axial", "coronal", "sagittal"}
    index : int
        Slice number along that axis (clipped to the valid range).
    """
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    sz, sy, sx = spacing_zyx_mm
    index = int(np.clip(index, 0, n_slices(array.shape, axis) - 1))
    if axis == "axial":
        img, row_mm, col_mm = array[index], sy, sx
    elif axis == "coronal":
        img, row_mm, col_mm = array[::-1, index, :], sz, sx
    else:
        img, row_mm, col_mm = array[::-1, :, index], sz, sy
    return _square_pixels(img, row_mm, col_mm)


def _square_pixels(img: np.ndarray, row_mm: float, col_mm: float) -> np.ndarray:
    """Nearest-neighbour resize so both pixel sides equal the smaller spacing."""
    pixel_mm = min(row_mm, col_mm)
    rows = max(1, int(round(img.shape[0] * row_mm / pixel_mm)))
    cols = max(1, int(round(img.shape[1] * col_mm / pixel_mm)))
    r = np.minimum((np.arange(rows) * pixel_mm / row_mm).astype(int), img.shape[0] - 1)
    c = np.minimum((np.arange(cols) * pixel_mm / col_mm).astype(int), img.shape[1] - 1)
    return img[np.ix_(r, c)]


def window_to_uint8(ct_hu: np.ndarray, centre_hu: float, width_hu: float) -> np.ndarray:
    """Map HU to 0-255 grey with a window (centre, width); values outside are clipped."""
    lo = centre_hu - width_hu / 2.0
    scaled = (ct_hu.astype(np.float32) - lo) * (255.0 / width_hu)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def overlay_labels(grey: np.ndarray, labels: np.ndarray, alpha: float = 0.45,
                   outline_only: bool = False) -> np.ndarray:
    """Blend PENGWIN label colours over a grey image; returns (H, W, 3) uint8 RGB.

    Labels use :data:`pengwin_demo.labels.PALETTE_RGB`, the same colours as the meshes.
    """
    if grey.shape != labels.shape:
        raise ValueError(f"grey {grey.shape} and labels {labels.shape} differ in shape")
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    lab = np.clip(labels, 0, len(PALETTE_RGB) - 1).astype(np.intp)
    mask = lab > 0
    if outline_only:
        edge = np.zeros_like(mask)
        edge[1:, :] |= lab[1:, :] != lab[:-1, :]
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
        mask &= edge
    colours = PALETTE_RGB[lab].astype(np.float32)
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colours[mask]
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def render_slice(ct: np.ndarray, labels: np.ndarray | None, spacing_zyx_mm, axis: str, index: int,
                 window: str = "bone", alpha: float = 0.45) -> np.ndarray:
    """Windowed CT slice with the label overlay, ready for display (H, W, 3 uint8)."""
    centre, width = WINDOWS_HU[window]
    grey = window_to_uint8(extract_slice(ct, spacing_zyx_mm, axis, index), centre, width)
    if labels is None:
        return np.repeat(grey[..., None], 3, axis=2)
    return overlay_labels(grey, extract_slice(labels, spacing_zyx_mm, axis, index), alpha)
