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
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from .volume import Volume

RESCALE_INTERCEPT = -1024


def _uid(*parts) -> str:
    return generate_uid(entropy_srcs=["pengwin_demo.phantom", *[str(p) for p in parts]])


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
    study_uid, series_uid, frame_uid = _uid(key, "study"), _uid(key, "series"), _uid(key, "frame")
    sz, sy, sx = ct.spacing_zyx_mm
    d = ct.direction
    orientation = [round(float(v), 8) for v in (*d[:, 0], *d[:, 1])]
    normal = np.cross(d[:, 0], d[:, 1])
    hu = np.clip(ct.array, RESCALE_INTERCEPT, 65535 + RESCALE_INTERCEPT)
    pixels = (hu.astype(np.int32) - RESCALE_INTERCEPT).astype(np.uint16)
    nz, ny, nx = ct.shape
    paths = []
    for k in range(nz):
        position = ct.index_to_world(np.array([k, 0.0, 0.0]))[0]
        sop_uid = _uid(key, "slice", k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
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
        ds.InstanceNumber = k + 1
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [round(float(v), 6) for v in position]
        ds.ImageOrientationPatient = orientation
        ds.SliceLocation = round(float(position @ normal), 6)
        ds.SliceThickness = round(float(sz), 6)
        ds.SpacingBetweenSlices = round(float(sz), 6)
        ds.PixelSpacing = [round(float(sy), 6), round(float(sx), 6)]
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = RESCALE_INTERCEPT
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = 400, 1800
        ds.KVP = 120
        ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
        path = out / f"slice_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
