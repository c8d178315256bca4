"""A corpus of bad inputs, generated on the fly (this module holds no tests).

Each :class:`Case` writes one input (a file, a folder or a zip) into a folder, as real
users and scanners send them, and names the words its refusal must contain. Every case
must be refused by ``convert`` and ``segment`` (exit 2, one clear message, no traceback)
and by the watcher (a failed-area entry with a one-line reason), with the input
unchanged. :func:`write_corpus` writes all of them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from _helpers import dicom_factory as factory
from pengwin_demo.io import VOLUME_SUFFIXES, write_volume
from pengwin_demo.volume import Volume

RNG_SEED = 20261206


@dataclass(frozen=True)
class Case:
    """One bad input: ``make(folder) -> path`` and a regular expression its refusal matches."""

    name: str
    make: Callable[[Path], Path]
    expect: str


# -- helpers ----------------------------------------------------------------------------
def _random_bytes(n: int = 4096) -> bytes:
    return np.random.default_rng(RNG_SEED).integers(0, 256, n, dtype=np.uint8).tobytes()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _ct_like(shape=(24, 40, 40)) -> np.ndarray:
    """A small CT in HU: air around a soft-tissue body with bone inside."""
    z, y, x = np.indices(shape)
    r = np.hypot((y - shape[1] / 2) / (shape[1] / 2.5), (x - shape[2] / 2) / (shape[2] / 2.5))
    ct = np.where(r < 1.0, 40, -1000).astype(np.int16)
    ct[r < 0.35] = 900
    return ct + np.random.default_rng(RNG_SEED).integers(-20, 20, shape).astype(np.int16)


def _volume(folder: Path, name: str, array: np.ndarray) -> Path:
    return write_volume(Volume(array, (2.0, 1.0, 1.0)), folder / name)


def _dicom_series(folder: Path, name: str, datasets: list[Dataset]) -> Path:
    factory.write_files(datasets, folder / name)
    return folder / name


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _non_image_object(modality: str, sop_class: str, folder: Path, name: str) -> Path:
    """A DICOM object without pixel data (RTSTRUCT, SR): what a PACS sends beside images."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = modality
    ds.PatientName = factory.PATIENT_NAME
    ds.SeriesDescription = f"{modality} object"
    folder = folder / name
    folder.mkdir(parents=True)
    ds.save_as(folder / "obj.dcm", enforce_file_format=True)
    return folder


# -- the cases --------------------------------------------------------------------------
def _empty_file(folder: Path) -> Path:
    return _write(folder / "empty.nii.gz", b"")


def _empty_folder(folder: Path) -> Path:
    (folder / "empty_folder").mkdir(parents=True)
    return folder / "empty_folder"


def _random_with(suffix: str) -> Callable[[Path], Path]:
    return lambda folder: _write(folder / f"random{suffix}", _random_bytes())


def _truncated_gzip(folder: Path) -> Path:
    full = _volume(folder, "whole.nii.gz", _ct_like()).read_bytes()
    os.unlink(folder / "whole.nii.gz")
    return _write(folder / "truncated.nii.gz", full[: len(full) // 2])


def _truncated_zip(folder: Path) -> Path:
    files = {f"IM{k}.dcm": bytes(3000) + _random_bytes(2000) for k in range(5)}
    data = _zip_bytes(files)
    return _write(folder / "truncated.zip", data[: len(data) // 2])


def _gzip_of_text(folder: Path) -> Path:
    return _write(folder / "text.nii.gz", gzip.compress(b"patient notes, not an image\n" * 50))


def _hello(folder: Path) -> Path:
    return _write(folder / "hello.nii.gz", b"hello\n")


def _zip_bomb(folder: Path) -> Path:
    path = folder / "bomb.zip"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("IM0001.dcm", bytes(64 * 1024 * 1024))  # 64 MiB of zeros -> ~64 KiB
    return path


def _zip_slip(folder: Path) -> Path:
    return _write(folder / "slip.zip", _zip_bytes({"../../escaped.dcm": _random_bytes(512)}))


def _symlink_loops(folder: Path) -> Path:
    root = folder / "links"
    root.mkdir(parents=True)
    os.symlink("self", root / "self")  # a link to itself
    os.symlink(".", root / "here")  # a folder link back to its own folder
    os.symlink("../links", root / "parent")
    return root


def _two_d(folder: Path) -> Path:
    import SimpleITK as sitk

    path = folder / "slice.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(_ct_like()[0]), str(path))
    return path


def _four_d(folder: Path) -> Path:
    import SimpleITK as sitk

    path = folder / "timeseries.nii.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.stack([_ct_like((8, 20, 20))] * 3)
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=False), str(path))
    return path


def _five_slices(folder: Path) -> Path:
    return _dicom_series(folder, "five_slices", factory.make_series(n_slices=5))


def _stretched(lo: float, hi: float, dtype) -> np.ndarray:
    ct = _ct_like().astype(np.float64)
    return (lo + (ct - ct.min()) / (ct.max() - ct.min()) * (hi - lo)).astype(dtype)


def _mr_no_air(folder: Path) -> Path:
    return _volume(folder, "mr_like_30_983.nii.gz", _stretched(30, 983, np.int16))


def _no_negative(folder: Path) -> Path:
    return _volume(folder, "ct_without_intercept.nrrd", (_ct_like() + 1024).astype(np.int16))


def _unit_floats(folder: Path) -> Path:
    return _volume(folder, "normalised.nii.gz", _stretched(0.0, 1.0, np.float32))


def _label_map(folder: Path) -> Path:
    labels = np.zeros((24, 40, 40), np.uint8)
    labels[4:20, 10:30, 5:20] = 1
    labels[4:20, 10:30, 20:35] = 11
    labels[8:12, 12:20, 22:30] = 21
    return _volume(folder, "labels_as_ct.nii.gz", labels)


def _non_ascii(folder: Path) -> Path:
    return _write(folder / "Ärztin_Müller_日本_µ.nii.gz", _random_bytes())


def _header_without_data(folder: Path) -> Path:
    """A MetaImage header copied without the pixel data file it names."""
    header = _volume(folder, "scan.mhd", _ct_like())
    for other in folder.iterdir():
        if other != header:
            other.unlink()
    return header


def _missing_slices(folder: Path) -> Path:
    dss = factory.make_series(n_slices=24)
    del dss[8:14]  # six consecutive slices gone: more than may be filled in
    return _dicom_series(folder, "missing_slices", dss)


def _localizer_only(folder: Path) -> Path:
    return _dicom_series(folder, "localizer_only", factory.localizer(n=3))


def _seg_object(folder: Path) -> Path:
    from pydicom.uid import SegmentationStorage

    dss = factory.make_series(n_slices=12, modality="SEG", sop_class_uid=SegmentationStorage,
                              description="Segmentation")
    return _dicom_series(folder, "dicom_seg", dss)


def _rtstruct(folder: Path) -> Path:
    return _non_image_object("RTSTRUCT", pydicom.uid.RTStructureSetStorage, folder, "rtstruct")


def _sr(folder: Path) -> Path:
    return _non_image_object("SR", "1.2.840.10008.5.1.4.1.1.88.67", folder, "dose_sr")


def _dose_screenshot(folder: Path) -> Path:
    return _dicom_series(folder, "dose_screen", factory.dose_screen())


NOT_READABLE = r"cannot be read|not a readable|empty|damaged|no DICOM images|not DICOM"
NOT_CT = r"does not look like a CT in Hounsfield units"
NO_CT_SERIES = r"no usable CT series|no DICOM images"

CASES: list[Case] = [
    Case("empty file", _empty_file, r"empty \(0 bytes\)"),
    Case("empty folder", _empty_folder, r"contains no files|folder is empty"),
    *[Case(f"random bytes {s}", _random_with(s), NOT_READABLE) for s in (*VOLUME_SUFFIXES, ".zip", ".dcm")],
    Case("truncated gzip", _truncated_gzip, r"truncated|damaged|cannot be read"),
    Case("truncated zip", _truncated_zip, r"not a readable zip|damaged"),
    Case("gzip of text", _gzip_of_text, NOT_READABLE),
    Case("text named .nii.gz", _hello, NOT_READABLE),
    Case("zip bomb", _zip_bomb, r"zip bomb"),
    Case("zip slip", _zip_slip, r"climbs out"),
    Case("symlink loops", _symlink_loops, r"contains no files|folder is empty"),
    Case("2D image", _two_d, r"2D image"),
    Case("4D image", _four_d, r"4D image"),
    Case("5-slice series", _five_slices, r"5 slice\(s\), fewer than the minimum"),
    Case("MR-like 30..983", _mr_no_air, NOT_CT + r".*no air"),
    Case("CT without intercept", _no_negative, NOT_CT + r".*no air"),
    Case("0..1 floats", _unit_floats, NOT_CT + r".*0\.\.1"),
    Case("label map as CT", _label_map, NOT_CT + r".*label map"),
    Case("non-ASCII name", _non_ascii, NOT_READABLE),
    Case(".mhd without its data file", _header_without_data, r"separate file, 'scan\.z?raw', which is not beside it"),
    Case("missing slices", _missing_slices, r"missing|gap"),
    Case("localizer only", _localizer_only, r"localizer"),
    Case("DICOM SEG", _seg_object, r"modality SEG"),
    Case("RTSTRUCT", _rtstruct, NO_CT_SERIES),
    Case("structured report", _sr, NO_CT_SERIES),
    Case("dose-report screenshot", _dose_screenshot, r"dose report|secondary capture"),
]


def tree_digest(path: Path) -> str:
    """A digest of a file or folder tree: names, link targets and contents (links not followed)."""
    digest = hashlib.blake2b(digest_size=16)
    paths = [path] if not path.is_dir() or path.is_symlink() else [path, *sorted(path.rglob("*"))]
    for p in paths:
        rel = p.relative_to(path.parent).as_posix()
        if p.is_symlink():
            digest.update(f"L {rel} {os.readlink(p)}\n".encode())
        elif p.is_file():
            digest.update(f"F {rel}\n".encode() + p.read_bytes())
        else:
            digest.update(f"D {rel}\n".encode())
    return digest.hexdigest()


def write_corpus(folder: Path) -> dict[str, Path]:
    """Write every case into its own sub-folder of ``folder``; return name -> input path."""
    out = {}
    for k, case in enumerate(CASES):
        out[case.name] = case.make(folder / f"case{k:02d}")
    return out
