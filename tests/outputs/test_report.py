"""report.json: fragment volumes, centroids and boxes in LPS mm; no patient identifiers."""

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from pengwin_demo.labels import PALETTE_RGB
from pengwin_demo.outputs import (
    build_report,
    fragment_stats,
    input_summary,
    series_summary,
    write_report,
)
from pengwin_demo.volume import Volume

SPACING = (2.0, 0.5, 0.8)  # z, y, x mm
ORIGIN = (-100.0, 50.0, -400.0)


def _labels(direction=np.eye(3)) -> Volume:
    a = np.zeros((20, 40, 30), np.uint8)
    a[2:6, 10:20, 5:15] = 1  # 4 x 10 x 10 = 400 voxels
    a[10:12, 30:34, 20:29] = 11  # 2 x 4 x 9 = 72 voxels
    a[15, 5, 3] = 22
    return Volume(a, SPACING, ORIGIN, direction)


def test_fragment_stats_volumes_centroids_and_boxes_in_lps():
    vol = _labels()
    stats = {f["label"]: f for f in fragment_stats(vol)}
    assert sorted(stats) == [1, 11, 22]
    voxel_mm3 = 2.0 * 0.5 * 0.8
    assert stats[1]["voxels"] == 400
    assert stats[1]["volume_ml"] == pytest.approx(400 * voxel_mm3 / 1000, abs=1e-3)
    assert stats[11]["bone"] == "left_hip" and stats[22]["bone"] == "right_hip"
    assert stats[22]["rank_in_bone"] == 2 and stats[1]["rank_in_bone"] == 1
    # label 1 spans z 2..5, y 10..19, x 5..14 (voxel centres); LPS x = origin_x + 0.8 * i_x
    c = stats[1]["centroid_lps_mm"]
    np.testing.assert_allclose(c, [-100 + 0.8 * 9.5, 50 + 0.5 * 14.5, -400 + 2.0 * 3.5], atol=1e-3)
    box = stats[1]["bbox_lps_mm"]
    np.testing.assert_allclose(box["min"], [-100 + 0.8 * 5, 50 + 0.5 * 10, -400 + 2.0 * 2], atol=1e-3)
    np.testing.assert_allclose(box["max"], [-100 + 0.8 * 14, 50 + 0.5 * 19, -400 + 2.0 * 5], atol=1e-3)
    assert stats[22]["bbox_lps_mm"]["min"] == stats[22]["bbox_lps_mm"]["max"]
    assert stats[11]["color_rgb"] == PALETTE_RGB[11].tolist()


@pytest.mark.parametrize("direction", ["ras", "oblique"])
def test_fragment_boxes_follow_the_direction_matrix(direction):
    if direction == "ras":
        d = np.diag([-1.0, -1.0, 1.0])
    else:
        d = np.array(sitk.VersorTransform((1.0, 2.0, 0.5), 0.6).GetMatrix()).reshape(3, 3)
    vol = _labels(d)
    for f in fragment_stats(vol):
        pts = vol.index_to_world(np.argwhere(vol.array == f["label"]))
        np.testing.assert_allclose(f["bbox_lps_mm"]["min"], pts.min(axis=0), atol=1e-3)
        np.testing.assert_allclose(f["bbox_lps_mm"]["max"], pts.max(axis=0), atol=1e-3)
        np.testing.assert_allclose(f["centroid_lps_mm"], pts.mean(axis=0), atol=1e-3)


def test_empty_label_map_has_no_fragments():
    assert fragment_stats(Volume(np.zeros((3, 4, 5), np.uint8), (1, 1, 1))) == []


def _header() -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-12345"
    ds.PatientBirthDate = "19600101"
    ds.AccessionNumber = "ACC999"
    ds.InstitutionName = "Saint Somewhere Hospital"
    ds.StudyDate = "20240102"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.SeriesNumber = 3
    ds.SeriesDescription = "Pelvis 1.0 Br40"
    ds.Modality = "CT"
    ds.Manufacturer = "ACME"
    ds.SliceThickness = "1.0"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    return ds


def test_report_is_json_and_free_of_patient_identifiers(tmp_path):
    labels = _labels()
    ct = labels.with_array(np.full(labels.shape, -1000, np.int16))
    series = series_summary(None, _header(), n_slices=20)
    report = build_report(
        ct=ct, labels=labels, source_kind="dicom", series=series,
        warnings=["slices are 3.0 mm thick"], timings_s={"load": 1.23456},
        models={"anatomy": {"name": "demo", "version": "1"}},
    )
    path = write_report(report, tmp_path / "report.json")
    text = path.read_text()
    back = json.loads(text)
    for secret in ("Doe", "Jane", "PID-12345", "19600101", "ACC999", "Saint Somewhere", "20240102"):
        assert secret not in text
    assert back["series"]["series_description"] == "Pelvis 1.0 Br40"
    assert back["series"]["slice_thickness_mm"] == 1.0
    assert back["series"]["n_slices"] == 20
    assert back["series"]["image_type"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert back["input"]["spacing_zyx_mm"] == list(SPACING)
    assert back["input"]["orientation"] == "LPS"
    assert back["n_fragments"] == 3
    assert back["bones"]["sacrum"]["fragments"] == 1
    assert back["bones"]["right_hip"]["fragments"] == 1
    assert back["timings_s"]["load"] == pytest.approx(1.235)
    assert back["warnings"] == ["slices are 3.0 mm thick"]


def test_input_summary_reports_storage_orientation():
    vol = Volume(np.zeros((2, 3, 4), np.int16), (1, 1, 1), direction=np.diag([-1.0, -1.0, 1.0]))
    assert input_summary(vol)["orientation"] == "RAS"
