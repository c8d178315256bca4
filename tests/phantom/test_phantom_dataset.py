"""Phantom datasets on disk: PENGWIN layout, byte-identical per seed, DICOM round trip, CLI."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from pengwin_demo.__main__ import main
from pengwin_demo.io import read_volume
from pengwin_demo.phantom import (case_seed, generate_phantom, make_phantom, write_dicom_series,
                                  write_phantom_dataset)
from pengwin_demo.volume import Volume


def test_dataset_layout_and_same_seed_identical_files(tmp_path):
    a = write_phantom_dataset(tmp_path / "a", cases=1, seed=7)
    b = write_phantom_dataset(tmp_path / "b", cases=1, seed=7)
    assert a == b == ["phantom_7_000"]
    for name in a:
        for sub in ("images", "labels"):
            fa = (tmp_path / "a" / sub / f"{name}.mha").read_bytes()
            fb = (tmp_path / "b" / sub / f"{name}.mha").read_bytes()
            assert fa == fb
        ct = read_volume(tmp_path / "a" / "images" / f"{name}.mha")
        lab = read_volume(tmp_path / "a" / "labels" / f"{name}.mha", kind="label")
        assert ct.array.dtype == np.int16 and lab.array.dtype == np.uint8
        assert ct.same_grid(lab)
        # the file is the case make_phantom gives for the recorded seed
        ref_ct, ref_lab = make_phantom(case_seed(7, a.index(name)))
        assert np.array_equal(ct.array, ref_ct.array) and np.array_equal(lab.array, ref_lab.array)
    info = json.loads((tmp_path / "a" / "phantoms.json").read_text())
    assert [c["case"] for c in info["cases"]] == a
    other = write_phantom_dataset(tmp_path / "c", cases=1, seed=8)
    assert (tmp_path / "c" / "images" / f"{other[0]}.mha").read_bytes() != \
        (tmp_path / "a" / "images" / f"{a[0]}.mha").read_bytes()


def test_nifti_output_keeps_geometry(tmp_path):
    names = write_phantom_dataset(tmp_path, cases=1, seed=3, fmt="nii.gz")
    ct = read_volume(tmp_path / "images" / f"{names[0]}.nii.gz")
    ref, _ = make_phantom(case_seed(3, 0))
    assert np.array_equal(ct.array, ref.array)
    assert ct.same_grid(ref, tol_mm=1e-3)


def test_dicom_dataset_writes_series_beside_the_pengwin_layout(tmp_path):
    names = write_phantom_dataset(tmp_path, cases=1, seed=4, fmt="dicom")
    ref = read_volume(tmp_path / "images" / f"{names[0]}.mha")
    assert (tmp_path / "labels" / f"{names[0]}.mha").is_file()
    assert len(list((tmp_path / "dicom" / names[0]).glob("*.dcm"))) == ref.shape[0]


@pytest.mark.parametrize("seed, stored", [(0, "LPS"), (2, "RAS")])
def test_dicom_round_trip_pydicom_simpleitk_dicom2nifti(tmp_path, seed, stored):
    import dicom2nifti

    ph = generate_phantom(seed)
    assert ph.stored_as == stored
    ref = ph.ct
    folder = tmp_path / "series"
    files = write_dicom_series(ref, folder, patient_index=seed)
    assert len(files) == ref.shape[0]

    # pydicom: attributes and pixels, slice by slice
    for k in (0, len(files) // 2, len(files) - 1):
        ds = pydicom.dcmread(files[k])
        assert ds.SOPClassUID == pydicom.uid.CTImageStorage and ds.Modality == "CT"
        assert str(ds.PatientName) == f"PHANTOM^{seed}"
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        assert np.array_equal(hu, ref.array[k])
        np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient],
                                   ref.index_to_world(np.array([k, 0, 0]))[0], atol=1e-4)
        np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], ref.spacing_zyx_mm[1:], atol=1e-5)

    # SimpleITK series reader
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    vol = Volume.from_sitk(reader.Execute())
    assert vol.same_grid(ref, tol_mm=1e-3)
    assert np.array_equal(vol.array.astype(np.int32), ref.array.astype(np.int32))

    # dicom2nifti (no reorientation), read back by SimpleITK
    out = tmp_path / "series.nii.gz"
    dicom2nifti.dicom_series_to_nifti(str(folder), str(out), reorient_nifti=False)
    nii = read_volume(out)
    assert nii.same_grid(ref, tol_mm=1e-3)
    assert np.array_equal(nii.array, ref.array)


def test_cli_writes_cases(tmp_path, capsys):
    rc = main(["phantom", str(tmp_path / "out"), "--cases", "2", "--seed", "5"])
    assert rc == 0
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == \
        ["phantom_5_000.mha", "phantom_5_001.mha"]
    assert sorted(p.name for p in (tmp_path / "out" / "labels").iterdir()) == \
        ["phantom_5_000.mha", "phantom_5_001.mha"]
    assert main(["phantom", str(tmp_path / "bad"), "--cases", "0"]) == 2
    assert "--cases" in capsys.readouterr().err


def test_cli_fragment_distribution(tmp_path, capsys):
    assert main(["phantom", str(tmp_path / "o"), "--cases", "1", "--seed", "2",
                 "--fragment-probs", "3=1"]) == 0
    info = json.loads((tmp_path / "o" / "phantoms.json").read_text())
    assert info["cases"][0]["fragments"] == {"1": 3, "2": 3, "3": 3}
    assert main(["phantom", str(tmp_path / "x"), "--fragment-probs", "3:1"]) == 2
    assert main(["phantom", str(tmp_path / "x"), "--fragment-probs", "12=1"]) == 2
    assert "--fragment-probs" in capsys.readouterr().err
