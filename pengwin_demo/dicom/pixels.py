"""Decode DICOM pixel data into Hounsfield units (int16), any transfer syntax pydicom reads.

Compressed syntaxes (JPEG 2000, JPEG-LS, JPEG lossless, RLE) are decoded by pydicom's
plugins: pylibjpeg-openjpeg, pylibjpeg-libjpeg / pyjpegls, pylibjpeg-rle, with GDCM as a
fallback. HU = stored value x RescaleSlope + RescaleIntercept, rounded and clipped to int16.
Files are decoded in a small thread pool (the decoders release the GIL).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import pixel_array

from ..errors import InputError
from .series import SliceHeader


def _decode_file(path: Path, forced: bool) -> np.ndarray:
    """All frames of one file as stored values, shape (frames, rows, columns)."""
    if forced:
        ds = pydicom.dcmread(path, force=True)
        if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = (
                pydicom.uid.ImplicitVRLittleEndian if ds.is_implicit_VR else pydicom.uid.ExplicitVRLittleEndian
            )
        arr = ds.pixel_array
    else:
        try:
            arr = pixel_array(str(path))
        except Exception:  # noqa: BLE001 - retry through a full parse (and GDCM) below
            ds = pydicom.dcmread(path)
            try:
                arr = ds.pixel_array
            except Exception:  # noqa: BLE001
                arr = pydicom.pixels.pixel_array(ds, decoding_plugin="gdcm")
    arr = np.asarray(arr)
    return arr[None] if arr.ndim == 2 else arr


def _to_hu(stored: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Stored values -> int16 HU (rounded, clipped)."""
    if slope == 1.0 and float(intercept).is_integer():
        hu = stored.astype(np.int32) + int(intercept)
    else:
        hu = np.rint(stored.astype(np.float32) * np.float32(slope) + np.float32(intercept))
    return np.clip(hu, -32768, 32767).astype(np.int16)


def decode_stack(slices: list[SliceHeader], workers: int | None = None) -> np.ndarray:
    """Decode ``slices`` (in the given order) into an int16 HU stack (N, rows, columns).

    Raises
    ------
    InputError
        A file cannot be decoded (missing codec, truncated data) or its size disagrees
        with its header.
    """
    if not slices:
        raise InputError("no slices to decode.")
    rows, cols = slices[0].rows, slices[0].columns
    out = np.empty((len(slices), rows, cols), dtype=np.int16)
    by_file: dict[Path, list[int]] = {}
    for i, s in enumerate(slices):
        by_file.setdefault(s.path, []).append(i)

    def work(item: tuple[Path, list[int]]) -> None:
        path, indices = item
        first = slices[indices[0]]
        try:
            frames = _decode_file(path, first.forced)
        except Exception as err:  # noqa: BLE001
            tsyntax = getattr(getattr(first.dataset, "file_meta", None), "TransferSyntaxUID", None)
            tname = getattr(tsyntax, "name", str(tsyntax))
            raise InputError(
                f"{path.name}: pixel data cannot be decoded (transfer syntax {tname}; "
                f"{type(err).__name__}: {str(err)[:160]}). The file may be truncated, or a decoder "
                "is missing (install pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-libjpeg, "
                "pylibjpeg-rle, python-gdcm)."
            ) from None
        for i in indices:
            s = slices[i]
            f = s.frame or 0
            if f >= frames.shape[0] or frames.shape[1:] != (rows, cols):
                raise InputError(
                    f"{path.name}: pixel data has shape {frames.shape}, but the header says "
                    f"{rows} x {cols} (frame {f}). The file is damaged; export it again."
                )
            if frames.ndim != 3:
                raise InputError(f"{path.name}: colour pixel data; a CT slice is grey-scale.")
            out[i] = _to_hu(frames[f], s.slope, s.intercept)

    n_workers = workers or min(4, os.cpu_count() or 1)
    items = list(by_file.items())
    if n_workers <= 1 or len(items) < 8:
        for item in items:
            work(item)
    else:
        with ThreadPoolExecutor(n_workers) as pool:
            for _ in pool.map(work, items):
                pass
    return out
