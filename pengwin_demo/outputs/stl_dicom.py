"""Fragment meshes as DICOM Encapsulated STL instances (PS3.3 A.85), beside the SEG.

Each fragment STL (binary, LPS millimetres, see :mod:`.meshes`) is wrapped unchanged in
one instance of SOP class 1.2.840.10008.5.1.4.1.1.104.3. The instances copy patient and
study from the DICOM SEG (itself copied from the source CT), share the CT's Frame of
Reference (the mesh coordinates are that frame's patient coordinates, in mm, as the
Manufacturing 3D Model module's units say), form one series (Modality M3D) and name the
SEG as their source. UIDs derive from the SEG's SOP Instance UID and the fragment, so
building them again (a retried send) gives the same instances, not duplicates.
"""

from __future__ import annotations

import copy
import os
from datetime import datetime, timezone
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .. import __version__
from ..errors import InputError

ENCAPSULATED_STL_STORAGE = pydicom.uid.UID("1.2.840.10008.5.1.4.1.1.104.3")
STL_SERIES_NUMBER = 9101
"""Series number of the meshes (right after the SEG's 9100)."""

_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
           "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
           "StudyDescription", "SpecificCharacterSet")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def encapsulated_stl(stl_bytes: bytes, seg: Dataset, title: str, instance_number: int) -> Dataset:
    """One Encapsulated STL instance holding ``stl_bytes``, in the study of ``seg``.

    Parameters
    ----------
    stl_bytes : bytes
        A binary or ASCII STL file (coordinates LPS mm in the SEG's frame of reference).
    seg : pydicom.Dataset
        The DICOM SEG of the same job (study, patient, frame of reference, source).
    title : str
        DocumentTitle, e.g. the fragment's segment label.
    instance_number : int
        InstanceNumber within the mesh series.

    Raises
    ------
    InputError
        Empty STL data, or a SEG without a frame of reference.
    """
    if not stl_bytes:
        raise InputError(f"mesh {title!r}: the STL file is empty.")
    frame = str(seg.get("FrameOfReferenceUID", "") or "")
    if not frame:
        raise InputError("the DICOM SEG has no FrameOfReferenceUID; the meshes cannot be placed.")
    root = str(seg.SOPInstanceUID)
    sop_uid = generate_uid(entropy_srcs=[root, "stl", title])
    now = datetime.now(timezone.utc)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ENCAPSULATED_STL_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for key in _COPIED:
        if key in seg:
            setattr(ds, key, seg.data_element(key).value)
    ds.SOPClassUID, ds.SOPInstanceUID = ENCAPSULATED_STL_STORAGE, sop_uid
    ds.Modality = "M3D"
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[root, "stl-series"])
    ds.SeriesNumber = STL_SERIES_NUMBER
    ds.SeriesDescription = "Pelvic fragment meshes (pengwin_demo)"
    ds.FrameOfReferenceUID = frame
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = ds.ManufacturerModelName = "pengwin_demo"
    ds.DeviceSerialNumber = "0"
    ds.SoftwareVersions = __version__
    ds.InstanceNumber = int(instance_number)
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.BurnedInAnnotation = "NO"
    ds.DocumentTitle = title[:64]
    ds.ConceptNameCodeSequence = []
    ds.MeasurementUnitsCodeSequence = [_code("mm", "UCUM", "mm")]
    source = Dataset()
    source.ReferencedSOPClassUID = seg.SOPClassUID
    source.ReferencedSOPInstanceUID = seg.SOPInstanceUID
    ds.SourceInstanceSequence = [source]
    referenced = Dataset()  # Common Instance Reference: the series holding the source
    referenced.SeriesInstanceUID = seg.SeriesInstanceUID
    referenced.ReferencedInstanceSequence = [copy.deepcopy(source)]
    ds.ReferencedSeriesSequence = [referenced]
    ds.MIMETypeOfEncapsulatedDocument = "model/stl"
    ds.EncapsulatedDocumentLength = len(stl_bytes)
    # OB values have even length; the padding byte is not part of the document
    ds.EncapsulatedDocument = stl_bytes + (b"\0" if len(stl_bytes) % 2 else b"")
    return ds


def stl_instances(stl_paths: list[Path], seg: Dataset) -> list[Dataset]:
    """:func:`encapsulated_stl` for each fragment STL (titles from the file names)."""
    return [encapsulated_stl(Path(p).read_bytes(), seg, Path(p).stem.replace("_", " "), n)
            for n, p in enumerate(sorted(stl_paths), start=1)]


def stl_from_instance(ds: Dataset) -> bytes:
    """The STL file inside an Encapsulated STL instance (padding removed)."""
    data = bytes(ds.EncapsulatedDocument)
    return data[: int(ds.get("EncapsulatedDocumentLength", len(data)))]


def write_instance(ds: Dataset, path: str | os.PathLike) -> Path:
    """Save ``ds`` as a DICOM file (atomically: temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)
    return path
