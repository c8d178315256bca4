"""Write a phantom CT as a DICOM CT Image Storage series (pydicom), one file per slice.

Geometry: slice ``k`` of the (z, y, x) array is one file; ImagePositionPatient is the LPS
position of its voxel (k, 0, 0); ImageOrientationPatient holds the LPS directions of the
row (index x) and column (index y) axes; PixelSpacing is (row spacing = y, column spacing
= x). Pixels are stored unsigned (HU + 1024) with RescaleIntercept -1024, as most scanners
do. UIDs derive from the series identity, so the same phantom gives the same files.
Identifiers are synthetic (PatientName ``PHANTOM^<n>``); nothing resembles a person.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from ..volume import Volume

RESCALE_INTERCEPT = -1024


def _uid(*parts) -> str:
    return generate_uid(entropy_srcs=["pengwin_demo.phantom", *[str(p) for p in parts]])


@dataclass(frozen=True)
class SeriesUids:
    """The UIDs every slice of one series shares."""

    study: str
    series: str
    frame_of_reference: str


def image_slice(
    stored: np.ndarray,
    position_lps_mm,
    orientation,
    pixel_spacing_rc_mm,
    *,
    uids: SeriesUids,
    sop_uid: str,
    instance_number: int,
    modality: str = "CT",
    sop_class_uid: str = CTImageStorage,
    bits_stored: int = 16,
    rescale: tuple[float, float] | None = (1, RESCALE_INTERCEPT),
) -> Dataset:
    """One single-frame image as a DICOM data set: file meta, identity, plane and pixels.

    Patient, study and series descriptions are left to the caller.

    Parameters
    ----------
    stored : ndarray of uint16 or int16, shape (rows, columns)
        Stored pixel values; int16 gives PixelRepresentation 1 (signed).
    position_lps_mm : sequence of 3 float
        ImagePositionPatient: LPS position of the first pixel's centre, mm.
    orientation : sequence of 6 float
        ImageOrientationPatient: LPS directions of the row (index x) and column (index y) axes.
    pixel_spacing_rc_mm : (float, float)
        PixelSpacing: (row spacing = y, column spacing = x), mm.
    uids : SeriesUids
        Study, series and frame-of-reference UIDs.
    sop_uid : str
        SOPInstanceUID of this image.
    instance_number : int
        InstanceNumber (1-based).
    modality, sop_class_uid : str
        Modality and SOP class.
    bits_stored : int
        BitsStored (BitsAllocated is 16).
    rescale : (slope, intercept) or None
        RescaleSlope and RescaleIntercept (HU = stored x slope + intercept); None writes none.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid or CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = uids.study
    ds.SeriesInstanceUID = uids.series
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.Modality = modality
    ds.InstanceNumber = int(instance_number)
    ds.ImagePositionPatient = [round(float(v), 6) for v in position_lps_mm]
    ds.ImageOrientationPatient = [round(float(v), 8) for v in orientation]
    ds.PixelSpacing = [round(float(v), 6) for v in pixel_spacing_rc_mm]
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = int(bits_stored)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def write_dicom_series(
    ct: Volume,
    out_dir: str | os.PathLike,
    series_number: int = 1,
    patient_index: int = 0,
    uid_key: str | None = None,
) -> list[Path]:
    """Write ``ct`` (int16 HU) as a CT series in ``out_dir`` (``slice_0000.dcm`` ...).

    Parameters
    ----------
    ct : Volume
        int16 HU CT, array (z, y, x); any orthonormal direction.
    out_dir : path-like
        Folder to create; existing files of the same names are replaced.
    series_number, patient_index : int
        SeriesNumber and the ``<n>`` of ``PHANTOM^<n>``.
    uid_key : str, optional
        Identity the UIDs derive from (default: patient index and series number).

    Returns
    -------
    list of Path
        The files, in slice order.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = uid_key or f"{patient_index}-{series_number}"
    uids = SeriesUids(_uid(key, "study"), _uid(key, "series"), _uid(key, "frame"))
    sz, sy, sx = ct.spacing_zyx_mm
    d = ct.direction
    orientation = (*d[:, 0], *d[:, 1])
    normal = np.cross(d[:, 0], d[:, 1])
    hu = np.clip(ct.array, RESCALE_INTERCEPT, 65535 + RESCALE_INTERCEPT)
    pixels = (hu.astype(np.int32) - RESCALE_INTERCEPT).astype(np.uint16)
    paths = []
    for k in range(ct.shape[0]):
        position = ct.index_to_world(np.array([k, 0.0, 0.0]))[0]
        ds = image_slice(pixels[k], position, orientation, (sy, sx), uids=uids,
                         sop_uid=_uid(key, "slice", k), instance_number=k + 1)
        ds.Manufacturer = "pengwin_demo phantom"
        ds.PatientName = f"PHANTOM^{patient_index}"
        ds.PatientID = f"PHANTOM-{patient_index:04d}"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20000101"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "000000"
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "Synthetic fractured pelvis phantom"
        ds.SeriesDescription = "Phantom CT"
        ds.BodyPartExamined = "PELVIS"
        ds.SeriesNumber = int(series_number)
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.PatientPosition = "HFS"
        ds.SliceLocation = round(float(position @ normal), 6)
        ds.SliceThickness = round(float(sz), 6)
        ds.SpacingBetweenSlices = round(float(sz), 6)
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = 400, 1800
        ds.KVP = 120
        path = out / f"slice_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
