"""The one DICOM header reading policy, shared by :func:`pengwin_demo.dicom.load_ct` and the watcher.

Whatever ``convert`` reads, the watcher accepts and groups the same way, because both
call :func:`read_header`:

- a file with the 128-byte preamble and ``DICM`` prefix is read as it is;
- a file without them (a raw data set, as some old exports and PACS caches write it,
  with or without file meta, explicit or implicit VR) is read with ``force=True`` and
  accepted only when it carries what an image or a DICOM object needs: a
  SeriesInstanceUID and Rows or a SOPInstanceUID (``force=True`` parses almost anything,
  so the check keeps text files and random bytes out);
- anything else (damaged, not DICOM) gives ``None``.

pydicom's own log messages and warnings are silenced while reading (:func:`quiet_pydicom`):
it quotes invalid values, and an invalid PatientName would be quoted into the logs.
"""

from __future__ import annotations

import logging
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

__all__ = ["quiet_pydicom", "read_header", "series_key"]

_quiet_state = threading.local()


class _DropWhileQuiet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet_state, "depth", 0)


logging.getLogger("pydicom").addFilter(_DropWhileQuiet())


@contextmanager
def quiet_pydicom():
    """Silence pydicom's logger (this thread) and Python warnings while reading headers."""
    _quiet_state.depth = getattr(_quiet_state, "depth", 0) + 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _quiet_state.depth -= 1


def _looks_like_dicom_object(ds: Dataset) -> bool:
    """A force-read data set counts only when it names its series and is an object."""
    try:
        return bool(ds.get("SeriesInstanceUID")) and ("Rows" in ds or "SOPInstanceUID" in ds)
    except Exception:  # noqa: BLE001 - a value pydicom cannot convert
        return False


def _add_transfer_syntax(ds: Dataset) -> None:
    """Give a raw data set the file meta its pixel decoding needs (as it was parsed)."""
    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in ds.file_meta:
        if ds.is_implicit_VR:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = (
                ExplicitVRLittleEndian if ds.is_little_endian else ExplicitVRBigEndian
            )


def read_header(path: Path) -> tuple[Dataset | None, bool]:
    """The header of ``path`` without pixel data, and whether it had to be force-read.

    Returns
    -------
    (Dataset or None, bool)
        ``None`` when the file is not DICOM (or too damaged to read); the flag is True
        for a file without preamble/``DICM`` prefix that was accepted by force-reading.
    """
    with quiet_pydicom():
        try:
            return pydicom.dcmread(path, stop_before_pixels=True), False
        except InvalidDicomError:
            pass
        except Exception:  # noqa: BLE001 - a damaged file is skipped like a non-DICOM one
            return None, False
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        except Exception:  # noqa: BLE001
            return None, False
        if not _looks_like_dicom_object(ds):
            return None, False
        try:
            _add_transfer_syntax(ds)
        except Exception:  # noqa: BLE001
            return None, False
        return ds, True


def series_key(path: Path) -> str | None:
    """SeriesInstanceUID of a DICOM file ("" when it has none); None when not DICOM."""
    ds, _forced = read_header(path)
    if ds is None:
        return None
    try:
        return str(ds.get("SeriesInstanceUID", "") or "")
    except Exception:  # noqa: BLE001
        return ""
