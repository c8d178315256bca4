"""Write synthetic DICOM series with pydicom, with the quirks real deliveries have.

The voxel values are an analytic function of the LPS world position
(:func:`field_hu`), so a reader's geometry can be checked voxel by voxel: wherever the
reader says a voxel is, the value there must be ``field_hu`` of that place. Reusable by
any test that needs DICOM input (watcher, app, SEG export).

Typical use::

    dss = make_series(n_slices=24)            # list of pydicom Datasets, in memory
    random.shuffle(dss); del dss[7]           # make a quirk
    write_files(dss, tmp_path / "in")         # one file per slice
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pengwin_demo.phantom.dicom_export import SeriesUids, image_slice
from pengwin_demo.volume import Volume

PATIENT_NAME = "Doe^Jane^Q"
PATIENT_ID = "PID-8675309"


def field_hu(points_lps_mm: np.ndarray) -> np.ndarray:
    """Smooth synthetic CT value (HU, float) at LPS points (..., 3) in mm.

    Air-like background with a smooth varying body; gradients are gentle so linear
    interpolation between slices is accurate to a few HU.
    """
    p = np.asarray(points_lps_mm, dtype=np.float64)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    return 400.0 * np.sin(x / 23.0) * np.cos(y / 31.0) + 300.0 * np.sin(z / 17.0) + 0.5 * x - 100.0


def slice_positions(
    n_slices: int,
    spacing_z_mm: float = 2.0,
    origin_lps_mm=(-60.0, -50.0, -100.0),
    orientation=(1, 0, 0, 0, 1, 0),
    tilt_deg: float = 0.0,
) -> np.ndarray:
    """(N, 3) ImagePositionPatient for a regular stack along the normal.

    With ``tilt_deg`` the stack advances along the normal by ``spacing_z_mm`` and drifts
    along the column direction by ``spacing_z_mm * tan(tilt)`` per slice, as a tilted
    gantry records it.
    """
    o = np.asarray(orientation, dtype=np.float64)
    row, col = o[:3], o[3:]
    normal = np.cross(row, col)
    k = np.arange(n_slices)[:, None]
    drift = spacing_z_mm * np.tan(np.radians(tilt_deg))
    return np.asarray(origin_lps_mm)[None] + k * spacing_z_mm * normal[None] + k * drift * col[None]


def make_series(
    n_slices: int = 24,
    rows: int = 48,
    columns: int = 40,
    pixel_spacing_rc_mm=(1.5, 1.25),
    spacing_z_mm: float = 2.0,
    origin_lps_mm=(-60.0, -50.0, -100.0),
    orientation=(1, 0, 0, 0, 1, 0),
    tilt_deg: float = 0.0,
    positions: np.ndarray | None = None,
    modality: str = "CT",
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    description: str = "Pelvis 2.0",
    series_number: int = 3,
    slope: float = 1.0,
    intercept: float = -1024.0,
    slice_thickness_mm: float | None = None,
    sop_class_uid: str | None = None,
    series_uid: str | None = None,
    study_uid: str | None = None,
    patient_name: str = PATIENT_NAME,
    patient_id: str = PATIENT_ID,
    signed: bool = False,
) -> list[Dataset]:
    """A single-frame DICOM series whose pixels sample :func:`field_hu` at their LPS place.

    Returns datasets in acquisition order (InstanceNumber 1..N), uncompressed
    (explicit VR little endian), ready for :func:`write_files`.
    """
    ori = np.asarray(orientation, dtype=np.float64)
    row, col = ori[:3], ori[3:]
    pos = positions if positions is not None else slice_positions(
        n_slices, spacing_z_mm, origin_lps_mm, orientation, tilt_deg)
    pos = np.asarray(pos, dtype=np.float64)
    sy, sx = pixel_spacing_rc_mm
    jj, ii = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    uids = SeriesUids(study_uid or generate_uid(), series_uid or generate_uid(), generate_uid())
    sop_class = CTImageStorage if sop_class_uid is None else sop_class_uid
    out = []
    for k, p in enumerate(pos):
        world = p[None, None] + ii[..., None] * sx * row + jj[..., None] * sy * col
        stored = np.rint((field_hu(world) - intercept) / slope)
        if not signed:
            stored = np.clip(stored, 0, 4095)
        ds = image_slice(
            stored.astype(np.int16 if signed else np.uint16), p, ori, (sy, sx), uids=uids,
            sop_uid=generate_uid(), instance_number=k + 1, modality=modality, sop_class_uid=sop_class,
            bits_stored=16 if signed else 12, rescale=(slope, intercept) if modality == "CT" else None,
        )
        ds.PatientName = patient_name
        ds.PatientID = patient_id
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.ImageType = list(image_type)
        ds.SliceThickness = slice_thickness_mm if slice_thickness_mm is not None else spacing_z_mm
        if tilt_deg:
            ds.GantryDetectorTilt = tilt_deg
        out.append(ds)
    return out


def expected_hu(datasets: list[Dataset]) -> np.ndarray:
    """The HU each dataset's pixels hold (N, rows, columns) int16, as a reader should give."""
    arrays = []
    for ds in datasets:
        arr = ds.pixel_array.astype(np.float64)
        arrays.append(np.rint(arr * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))))
    return np.stack(arrays).astype(np.int16)


def compress(ds: Dataset, syntax: str) -> Dataset:
    """Compress ``ds`` in place to ``syntax`` (RLE, JPEG-LS, JPEG 2000 or JPEG lossless SV1)."""
    if syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        ds.compress(syntax, encoding_plugin="pylibjpeg" if syntax == JPEG2000Lossless else "")
        return ds
    if syntax == JPEGLosslessSV1:
        return _gdcm_compress(ds, syntax)
    raise ValueError(f"unsupported syntax {syntax}")


def _gdcm_compress(ds: Dataset, syntax: str) -> Dataset:
    """Compress with GDCM (pydicom has no JPEG lossless encoder)."""
    import tempfile

    import gdcm

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
        ds.save_as(src, enforce_file_format=True)
        reader = gdcm.ImageReader()
        reader.SetFileName(str(src))
        if not reader.Read():
            raise RuntimeError("gdcm could not read the file to compress")
        change = gdcm.ImageChangeTransferSyntax()
        change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
        change.SetInput(reader.GetImage())
        if not change.Change():
            raise RuntimeError("gdcm could not compress")
        writer = gdcm.ImageWriter()
        writer.SetFileName(str(dst))
        writer.SetFile(reader.GetFile())
        writer.SetImage(change.GetOutput())
        if not writer.Write():
            raise RuntimeError("gdcm could not write")
        new = pydicom.dcmread(dst)
    assert new.file_meta.TransferSyntaxUID == syntax, new.file_meta.TransferSyntaxUID
    return new


def write_files(
    datasets: list[Dataset],
    folder: Path,
    names: list[str] | None = None,
    preamble: bool = True,
) -> list[Path]:
    """Save each dataset to its own file in ``folder`` (created); return the paths.

    ``preamble=False`` writes the bare data set without the 128-byte preamble, ``DICM``
    prefix and file meta (as some old exports do): readers must force-read it.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(datasets):
        path = folder / (names[k] if names else f"IM{k:05d}.dcm")
        path.parent.mkdir(parents=True, exist_ok=True)
        if preamble:
            ds.save_as(path, enforce_file_format=True)
        else:
            bare = Dataset()
            bare.update(ds)
            bare.save_as(path, implicit_vr=True, little_endian=True)
        paths.append(path)
    return paths


def zip_folder(folder: Path, zip_path: Path) -> Path:
    """Zip every file under ``folder`` (relative names) into ``zip_path``."""
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(Path(folder).rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder).as_posix())
    return zip_path


def localizer(n: int = 2, **kw) -> list[Dataset]:
    """A scout/localizer series (one coronal and one sagittal image, ORIGINAL LOCALIZER)."""
    kw.setdefault("description", "Topogram 0.6")
    kw.setdefault("series_number", 1)
    return make_series(n_slices=n, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
                       orientation=(1, 0, 0, 0, 0, -1), **kw)


def dose_screen(**kw) -> list[Dataset]:
    """A dose-report screen capture (secondary capture, DERIVED SECONDARY)."""
    kw.setdefault("series_number", 501)
    return make_series(n_slices=1, image_type=("DERIVED", "SECONDARY", "OTHER"), description="Dose Report",
                       sop_class_uid=SecondaryCaptureImageStorage, **kw)


def mr_series(**kw) -> list[Dataset]:
    """An MR series (no rescale), otherwise like :func:`make_series`."""
    kw.setdefault("description", "T2 TSE ax")
    return make_series(modality="MR", sop_class_uid=MRImageStorage, intercept=0.0, **kw)


def world_field(vol: Volume) -> np.ndarray:
    """field_hu at the LPS centre of every voxel of ``vol`` (z, y, x)."""
    idx = np.indices(vol.shape).reshape(3, -1).T
    return field_hu(vol.index_to_world(idx)).reshape(vol.shape)


def assert_on_field(vol: Volume, tol_hu: float) -> None:
    """Every voxel holds the synthetic field value of the place the geometry says it is."""
    err = np.abs(vol.array.astype(np.float64) - world_field(vol))
    assert err.max() <= tol_hu, f"max deviation {err.max():.2f} HU"
