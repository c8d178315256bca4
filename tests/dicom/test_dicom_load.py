"""load_ct on synthetic DICOM (every container and encoding) and on real scanner data."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless

from pengwin_demo.dicom import CTInput, load_ct
from pengwin_demo.errors import InputError
from pengwin_demo.io import write_volume
from pengwin_demo.volume import Volume

from _helpers import dicom_factory as fac
from _helpers.dicom_factory import assert_on_field



def test_volume_file_is_delegated(tmp_path):
    arr = (np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) * 7 - 500)
    vol = Volume(arr, (2.0, 0.7, 0.8), (10.0, -20.0, 30.0))
    write_volume(vol, tmp_path / "case_001.nii.gz")
    ct = load_ct(tmp_path / "case_001.nii.gz")
    assert isinstance(ct, CTInput) and ct.source_kind == "volume-file"
    assert ct.series is None and ct.dicom_headers is None and ct.name == "case_001"
    assert ct.volume.array.dtype == np.int16 and np.array_equal(ct.volume.array, arr)
    assert ct.volume.same_grid(vol)


def test_folder_geometry_and_hu(tmp_path):
    dss = fac.make_series(n_slices=16, slope=1.0, intercept=-1024)
    fac.write_files(dss, tmp_path / "in")
    ct = load_ct(tmp_path / "in")
    v = ct.volume
    assert ct.source_kind == "dicom" and v.array.dtype == np.int16
    assert v.shape == (16, 48, 40)
    assert v.spacing_zyx_mm == pytest.approx((2.0, 1.5, 1.25))
    assert v.origin_lps_mm == pytest.approx((-60.0, -50.0, -100.0))
    assert np.allclose(v.direction, np.eye(3))
    assert np.array_equal(v.array, fac.expected_hu(dss))
    assert_on_field(v, 0.6)
    assert ct.series.n_slices == 16 and ct.series.modality == "CT"
    assert len(ct.dicom_headers) == 16 and "PixelData" not in ct.dicom_headers[0]
    z = [float(h.ImagePositionPatient[2]) for h in ct.dicom_headers]
    assert z == sorted(z)
    assert ct.warnings == []


def test_rescale_slope_and_signed_pixels(tmp_path):
    dss = fac.make_series(n_slices=12, slope=0.5, intercept=-1000, signed=True)
    fac.write_files(dss, tmp_path / "in")
    v = load_ct(tmp_path / "in").volume
    assert np.array_equal(v.array, fac.expected_hu(dss))
    assert_on_field(v, 1.0)  # stored steps of 0.5 HU, then rounding


def test_shuffled_file_order_and_names(tmp_path):
    dss = fac.make_series(n_slices=20)
    order = list(range(20))
    random.Random(4).shuffle(order)
    # file names and InstanceNumbers both disagree with the anatomy
    shuffled = [dss[i] for i in order]
    for k, ds in enumerate(shuffled):
        ds.InstanceNumber = k + 1
    fac.write_files(shuffled, tmp_path / "in", names=[f"f{random.Random(k).randint(0, 10**9)}_{k}" for k in range(20)])
    ct = load_ct(tmp_path / "in")
    assert np.array_equal(ct.volume.array, fac.expected_hu(dss))
    assert ct.volume.origin_lps_mm == pytest.approx((-60.0, -50.0, -100.0))


def test_descending_positions_oblique_matches_simpleitk(tmp_path):
    """A coronal-ish oblique series stored head-to-foot: same grid as SimpleITK's reader."""
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    orientation = (c, s, 0.0, 0.0, 0.0, -1.0)
    dss = fac.make_series(n_slices=14, orientation=orientation, spacing_z_mm=-1.5)
    fac.write_files(dss, tmp_path / "in")
    ct = load_ct(tmp_path / "in", min_slices=5)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "in")))
    ref = Volume.from_sitk(reader.Execute())
    assert ct.volume.same_grid(ref, tol_mm=1e-3)
    assert np.array_equal(ct.volume.array, ref.array)
    assert_on_field(ct.volume, 0.6)  # rounding + 6-decimal IOP


def test_nested_folder_with_junk_and_dicomdir(tmp_path):
    root = tmp_path / "export"
    dss = fac.make_series(n_slices=12)
    fac.write_files(dss[:6], root / "PAT1" / "STUDY" / "SER1")
    fac.write_files(dss[6:], root / "PAT1" / "STUDY" / "SER1" / "more")
    (root / "README.TXT").write_text("exported by PACS viewer 1.0\n")
    (root / "viewer.exe").write_bytes(bytes(range(256)) * 40)
    (root / "PAT1" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 50)
    (root / "thumbs.db").write_bytes(b"")
    dicomdir = pydicom.Dataset()
    dicomdir.file_meta = pydicom.dataset.FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dicomdir.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    dicomdir.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    dicomdir.FileSetID = "EXPORT"
    dicomdir.DirectoryRecordSequence = []
    dicomdir.save_as(root / "DICOMDIR", enforce_file_format=True)
    ct = load_ct(root)
    assert ct.volume.shape[0] == 12
    assert np.array_equal(ct.volume.array, fac.expected_hu(dss))


def test_force_read_files_without_preamble(tmp_path):
    dss = fac.make_series(n_slices=12)
    fac.write_files(dss, tmp_path / "in", preamble=False)
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(tmp_path / "in" / "IM00000.dcm")
    ct = load_ct(tmp_path / "in")
    assert np.array_equal(ct.volume.array, fac.expected_hu(dss))
    assert any("force-read" in w for w in ct.warnings)


def test_empty_sop_class_uid(tmp_path):
    dss = fac.make_series(n_slices=12)
    for ds in dss:
        ds.SOPClassUID = ""
    fac.write_files(dss, tmp_path / "in")
    ct = load_ct(tmp_path / "in")
    assert np.array_equal(ct.volume.array, fac.expected_hu(dss))


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1, RLELossless],
                         ids=["jpeg2000", "jpeg-ls", "jpeg-lossless", "rle"])
def test_compressed_transfer_syntaxes(tmp_path, syntax):
    dss = fac.make_series(n_slices=10)
    expected = fac.expected_hu(dss)
    packed = [fac.compress(ds, syntax) for ds in dss]
    fac.write_files(packed, tmp_path / "in")
    assert pydicom.dcmread(tmp_path / "in" / "IM00000.dcm").file_meta.TransferSyntaxUID == syntax
    ct = load_ct(tmp_path / "in")
    assert np.array_equal(ct.volume.array, expected)


def test_enhanced_multiframe_file(tmp_path):
    import highdicom as hd

    dss = fac.make_series(n_slices=12)
    for ds in dss:
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240101", "120000", ""
        ds.ReferringPhysicianName, ds.StudyID, ds.PatientBirthDate, ds.PatientSex = "", "1", "", "O"
        ds.Manufacturer = "synthetic"
    mf = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=dss, series_instance_uid=pydicom.uid.generate_uid(), series_number=9,
        sop_instance_uid=pydicom.uid.generate_uid(), instance_number=1,
    )
    mf.save_as(tmp_path / "enhanced.dcm")
    ct = load_ct(tmp_path / "enhanced.dcm")
    assert ct.volume.shape == (12, 48, 40)
    assert ct.volume.origin_lps_mm == pytest.approx((-60.0, -50.0, -100.0))
    assert ct.volume.spacing_zyx_mm == pytest.approx((2.0, 1.5, 1.25))
    assert np.array_equal(ct.volume.array, fac.expected_hu(dss))
    assert len(ct.dicom_headers) == 1


def test_zip_input_and_temp_folder_removed(tmp_path):
    dss = fac.make_series(n_slices=12)
    fac.write_files(dss, tmp_path / "src" / "series")
    z = fac.zip_folder(tmp_path / "src", tmp_path / "upload.zip")
    ct = load_ct(z)
    assert np.array_equal(ct.volume.array, fac.expected_hu(dss))
    # the headers stay usable after the temporary folder is gone
    assert not Path(ct.series.slices[0].path).exists()
    assert ct.dicom_headers[0].SOPInstanceUID == dss[0].SOPInstanceUID


def test_not_dicom_at_all(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM images"):
        load_ct(tmp_path / "in")
    with pytest.raises(InputError, match="not found"):
        load_ct(tmp_path / "missing")


def test_real_siemens_jpeg2000_matches_simpleitk(siemens_series_dir):
    ct = load_ct(siemens_series_dir)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(siemens_series_dir)))
    ref = Volume.from_sitk(reader.Execute())
    assert ct.volume.shape == ref.shape == (20, 512, 512)
    assert ct.volume.same_grid(ref, tol_mm=1e-4)
    assert np.array_equal(ct.volume.array, ref.array)
    assert ct.volume.spacing_zyx_mm == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert ct.series.slice_thickness_mm == pytest.approx(3.0)
    assert ct.series.description == "CT Body 3.0"
    assert ct.dicom_headers[0].file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert ct.warnings == []


def test_zip_holding_one_volume_file(tmp_path):
    arr = np.full((3, 4, 5), -1000, dtype=np.int16)
    arr[1] = 700
    vol = Volume(arr, (2.5, 0.8, 0.8), (1.0, 2.0, 3.0))
    write_volume(vol, tmp_path / "src" / "pelvis.mha")
    ct = load_ct(fac.zip_folder(tmp_path / "src", tmp_path / "upload.zip"))
    assert ct.source_kind == "volume-file" and ct.name == "pelvis"
    assert ct.volume.same_grid(vol) and np.array_equal(ct.volume.array, arr)
