"""Read and write CT and label volumes: NIfTI (.nii, .nii.gz), MetaImage (.mha, .mhd), NRRD.

SimpleITK does the reading and converts every file to LPS on the way in (a NIfTI stored
in RAS gets a direction with negative x and y columns), so a label written with
:func:`write_volume` on the grid of the image it was computed from lands on the same
anatomical voxels whatever the storage convention. Every problem with a file raises
:class:`~pengwin_demo.errors.InputError` whose message names the file, what is wrong and
what to do.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .ct_intensity import check_ct_intensities
from .errors import InputError
from .volume import Volume

log = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
"""File name endings read as a single 3D volume."""

MIN_SPACING_MM = 0.05
MAX_SPACING_MM = 20.0
"""Spacing outside this range is not a CT of a person (or the header is broken)."""


def volume_suffix(path: str | os.PathLike) -> str | None:
    """The recognised volume suffix of ``path`` (lower case), or None."""
    name = Path(path).name.lower()
    for suffix in VOLUME_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return None


def is_volume_file(path: str | os.PathLike) -> bool:
    return Path(path).is_file() and volume_suffix(path) is not None


def read_volume(path: str | os.PathLike, kind: str = "ct", *, allow_non_ct: bool = False) -> Volume:
    """Read a 3D CT (``kind="ct"``, int16 HU) or label map (``kind="label"``, uint8).

    Parameters
    ----------
    path : path-like
        A .nii, .nii.gz, .mha, .mhd, .nrrd or .nhdr file.
    kind : {"ct", "label"}
        "ct" rounds and clips to int16 and refuses values that do not look like HU
        (:mod:`pengwin_demo.ct_intensity`); "label" requires non-negative integers below
        256 and returns uint8.
    allow_non_ct : bool
        With ``kind="ct"``: accept values that do not look like HU, with a logged warning.

    Returns
    -------
    Volume
        Array (z, y, x) with spacing (z, y, x) in mm, LPS origin and direction.

    Raises
    ------
    InputError
        Missing, unreadable, truncated, not 3D, with impossible spacing, or (CT) not in HU.
    """
    if kind not in ("ct", "label"):
        raise ValueError(f"kind must be 'ct' or 'label', got {kind!r}")
    path = Path(path)
    name = path.name
    if not path.exists():
        raise InputError(f"{name}: file not found ({path}). Check the path and try again.")
    if path.is_dir():
        raise InputError(
            f"{name}: is a folder, not a volume file. Give a .nii/.nii.gz/.mha/.nrrd file "
            "(a DICOM folder is read by load_ct / the 'convert' command)."
        )
    if volume_suffix(path) is None:
        raise InputError(
            f"{name}: unknown file type. Supported: {', '.join(VOLUME_SUFFIXES)}."
        )
    if path.stat().st_size == 0:
        raise InputError(f"{name}: the file is empty (0 bytes). Copy or export it again.")
    missing = _missing_data_file(path)
    if missing:
        raise InputError(
            f"{name}: its pixel data are in a separate file, {missing!r}, which is not beside it. "
            "Keep the two files together (in the web app: upload both in one zip), or save the "
            "scan as a single .mha or .nii.gz file."
        )
    try:
        if volume_suffix(path) in (".nii", ".nii.gz"):
            _check_nifti_complete(path)
        image = sitk.ReadImage(str(path))
    except (RuntimeError, OSError, EOFError, ValueError) as err:
        raise InputError(
            f"{name}: cannot be read as an image; it may be truncated or not really a "
            f"{volume_suffix(path)} file ({_first_line(err)}). Export or copy it again."
        ) from None
    return validate_image(image, name, kind, allow_non_ct=allow_non_ct)


_DATA_FILE_FIELDS = {".mhd": ("=", ("elementdatafile",)), ".nhdr": (":", ("data file", "datafile"))}
"""Per detached-header format: the separator and the (lower-case) names of the header field
that names the separate pixel data file."""


def _missing_data_file(path: Path) -> str | None:
    """The data file a detached header (.mhd, .nhdr) names and that is not beside it, or
    None (not such a header, data kept in the header's own file, or a file list/pattern,
    which ITK resolves itself)."""
    fields = _DATA_FILE_FIELDS.get(volume_suffix(path) or "")
    if fields is None:
        return None
    separator, names = fields
    with open(path, "rb") as stream:
        head = stream.read(1 << 16).decode("latin-1")
    for line in head.splitlines():
        field, sep, value = line.partition(separator)
        if sep and field.strip().lower() in names:
            value = value.strip()
            if value.upper().startswith(("LOCAL", "LIST")) or "%" in value or " " in value:
                return None
            return None if (path.parent / value).is_file() else value
    return None


def _check_nifti_complete(path: Path) -> None:
    """Raise when a NIfTI file holds fewer data bytes than its header promises.

    SimpleITK (ITK's NIfTI reader) zero-fills a truncated NIfTI without any error, which
    would turn a half-copied file into a silently wrong scan.
    """
    import gzip

    import nibabel as nib

    try:
        header = nib.load(str(path)).header
    except Exception as err:  # noqa: BLE001 - nibabel, gzip and zlib each raise their own
        raise RuntimeError(f"not a NIfTI file: {_first_line(err)}") from None
    expected = int(header.get_data_offset()) + int(
        np.prod(header.get_data_shape(), dtype=np.int64) * header.get_data_dtype().itemsize
    )
    if path.name.lower().endswith(".gz"):
        actual = 0
        try:
            with gzip.open(path, "rb") as stream:
                while chunk := stream.read(1 << 22):
                    actual += len(chunk)
        except Exception as err:  # noqa: BLE001 - gzip and zlib raise their own on damage
            raise RuntimeError(f"damaged gzip stream: {_first_line(err)}") from None
    else:
        actual = path.stat().st_size
    if actual < expected:
        raise RuntimeError(f"data truncated: {actual} of {expected} bytes present")


def validate_image(image: sitk.Image, name: str, kind: str = "ct", *, allow_non_ct: bool = False) -> Volume:
    """Check a SimpleITK image is a usable 3D volume and convert it (see :func:`read_volume`)."""
    dim = image.GetDimension()
    size = image.GetSize()
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{name}: has {image.GetNumberOfComponentsPerPixel()} values per voxel (colour or "
            "vector image); a CT has one. Export the grey-scale CT."
        )
    if dim == 4 and size[3] == 1:
        image = image[:, :, :, 0]
        dim, size = 3, image.GetSize()
    if dim == 2 or (dim == 3 and min(size) == 1):
        raise InputError(
            f"{name}: is a 2D image (size {'x'.join(map(str, size))}); a 3D CT volume is needed. "
            "Export the whole series, not a single slice."
        )
    if dim != 3:
        raise InputError(
            f"{name}: is a {dim}D image (size {'x'.join(map(str, size))}); a single 3D CT volume "
            "is needed. Split time series or multi-channel files and give one 3D volume."
        )
    spacing = image.GetSpacing()
    if not all(np.isfinite(spacing)) or min(spacing) < MIN_SPACING_MM or max(spacing) > MAX_SPACING_MM:
        raise InputError(
            f"{name}: voxel spacing {tuple(round(s, 4) for s in spacing)} mm (x, y, z) is outside "
            f"{MIN_SPACING_MM}-{MAX_SPACING_MM} mm; the header is broken or this is not a CT of "
            "a patient. Fix the spacing in the header or export the series again."
        )
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-3):
        raise InputError(
            f"{name}: the direction matrix is not a rotation (sheared or scaled axes). "
            "Re-export the image with an orthonormal orientation."
        )
    array = sitk.GetArrayFromImage(image)
    if kind == "label":
        array = _as_label_array(array, name)
    else:
        array = _as_ct_array(array, name, allow_non_ct)
    return Volume(array, tuple(spacing)[::-1], image.GetOrigin(), direction)


def _as_label_array(array: np.ndarray, name: str) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InputError(
                f"{name}: a label map must hold whole numbers; this file has fractional "
                "values. Give the label map, not an intensity or probability image."
            )
    lo, hi = (array.min(), array.max()) if array.size else (0, 0)
    if lo < 0 or hi > 255:
        raise InputError(
            f"{name}: label values range {lo}..{hi}; labels must lie in 0..255. "
            "Give a label map (0 background, positive integers for structures)."
        )
    return array.astype(np.uint8, copy=False)


def _as_ct_array(array: np.ndarray, name: str, allow_non_ct: bool) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise InputError(f"{name}: contains NaN or infinite values; a CT in HU cannot. Re-export it.")
    for warning in check_ct_intensities(array, name, allow_non_ct):
        log.warning("%s: %s", name, warning)
    if array.dtype == np.int16:
        return array
    return np.clip(np.rint(array), -32768, 32767).astype(np.int16)


def write_volume(volume: Volume, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``volume`` with its exact geometry; the format follows the file suffix.

    The file is first written under a temporary name beside the target and then renamed,
    so a reader never sees a half-written file. A NIfTI is checked complete before the
    rename: ITK's NIfTI writer reports a full disk on stderr only and leaves a short file.

    Raises
    ------
    OSError
        ``ENOSPC`` when the disk filled up while writing (``EIO`` for another short write);
        the partial file is removed.
    """
    path = Path(path)
    suffix = volume_suffix(path)
    if suffix is None:
        raise InputError(f"{path.name}: unknown output type. Use one of {', '.join(VOLUME_SUFFIXES)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    if suffix in (".mhd", ".nhdr"):
        tmp = path  # detached headers name their data file; write in place
    sitk.WriteImage(volume.to_sitk(), str(tmp), useCompression=compress)
    if suffix in (".nii", ".nii.gz"):
        _check_written(tmp, path, volume.array.nbytes)
    if tmp != path:
        os.replace(tmp, path)
    return path


def _check_written(tmp: Path, path: Path, nbytes: int) -> None:
    try:
        _check_nifti_complete(tmp)
    except RuntimeError as err:
        tmp.unlink(missing_ok=True)
        full = shutil.disk_usage(path.parent).free < nbytes
        code = errno.ENOSPC if full else errno.EIO
        raise OSError(code, f"{os.strerror(code)}: {path.name} was not written completely "
                      f"({_first_line(err)})") from None


def write_like(array: np.ndarray, reference: Volume, path: str | os.PathLike) -> Path:
    """Write ``array`` (z, y, x) on exactly the grid of ``reference`` (e.g. a label map)."""
    return write_volume(reference.with_array(array), path)


def _first_line(err: Exception) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(err).__name__
    return text[:200]
