"""DICOM SEG export: one segment per fragment, referencing the source series, on the CT grid."""

import logging
import warnings

import highdicom as hd
import numpy as np
import pytest

from _helpers import dicom_factory as fac
from pengwin_demo.dicom import load_ct
from pengwin_demo.errors import InputError
from pengwin_demo.labels import PALETTE_RGB
from pengwin_demo.outputs import labels_to_seg, segment_label, write_dicom_seg
from pengwin_demo.volume import Volume, resample_onto



def _fragments(shape) -> np.ndarray:
    a = np.zeros(shape, np.uint8)
    a[3:9, 10:25, 8:20] = 1
    a[12:16, 30:40, 5:15] = 11
    a[14:20, 5:12, 25:35] = 23
    return a


def _seg_on_grid(seg: hd.seg.Segmentation, grid: Volume) -> np.ndarray:
    """The SEG's segment numbers resampled (nearest) onto ``grid``, via world coordinates."""
    vol = seg.get_volume(combine_segments=True)
    back = Volume.from_sitk(vol.to_simpleitk())
    return resample_onto(back, grid.with_array(np.zeros(grid.shape, np.uint8)), "nearest").array


@pytest.mark.parametrize("tilt_deg", [0.0, 12.0], ids=["axial", "tilted"])
def test_seg_segments_reference_source_and_land_on_the_labels(tmp_path, tilt_deg):
    dss = fac.make_series(n_slices=24, rows=48, columns=40, tilt_deg=tilt_deg)
    fac.write_files(dss, tmp_path / "in")
    ct = load_ct(tmp_path / "in")
    labels = ct.volume.with_array(_fragments(ct.volume.shape))
    path, warnings = write_dicom_seg(labels, ct.dicom_headers, tmp_path / "segmentation.dcm")
    assert warnings == []
    seg = hd.seg.segread(path)

    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert seg.StudyInstanceUID == dss[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == dss[0].FrameOfReferenceUID
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == dss[0].SeriesInstanceUID
    referenced = {item.ReferencedSOPInstanceUID for item in ref.ReferencedInstanceSequence}
    assert referenced == {ds.SOPInstanceUID for ds in dss}

    assert seg.number_of_segments == 3
    names = [s.SegmentLabel for s in seg.SegmentSequence]
    assert names == [segment_label(1), segment_label(11), segment_label(23)]
    assert names[2] == "23 right hip fragment 3"
    types = [s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning for s in seg.SegmentSequence]
    assert types == ["Sacrum", "Hip", "Hip"]
    sides = [s.SegmentedPropertyTypeModifierCodeSequence[0].CodeMeaning
             for s in seg.SegmentSequence[1:]]
    assert sides == ["Left", "Right"]
    rgb = hd.color.CIELabColor.from_dicom_value(seg.SegmentSequence[0].RecommendedDisplayCIELabValue).to_rgb()
    np.testing.assert_allclose(rgb, PALETTE_RGB[1], atol=2)

    lut = np.zeros(256, np.uint8)
    lut[[1, 11, 23]] = [1, 2, 3]
    np.testing.assert_array_equal(_seg_on_grid(seg, labels), lut[labels.array])


def test_seg_refuses_empty_labels_and_non_dicom():
    vol = Volume(np.zeros((4, 5, 6), np.uint8), (1, 1, 1))
    with pytest.raises(InputError, match="at least one fragment"):
        labels_to_seg(vol, [object()])
    with pytest.raises(InputError, match="not DICOM"):
        labels_to_seg(vol.with_array(np.ones((4, 5, 6), np.uint8)), [])


def test_seg_from_real_siemens_headers_with_missing_uids(tmp_path, siemens_series_dir):
    ct = load_ct(siemens_series_dir)
    assert not str(ct.dicom_headers[0].get("SeriesInstanceUID", ""))  # the quirk under test
    a = np.zeros(ct.volume.shape, np.uint8)
    a[3:8, 100:200, 150:300] = 1
    a[10:15, 300:350, 100:200] = 12
    labels = ct.volume.with_array(a)
    path, warnings = write_dicom_seg(labels, ct.dicom_headers, tmp_path / "seg.dcm")
    assert any("will not be linked" in w for w in warnings)
    seg = hd.seg.segread(path)
    assert seg.FrameOfReferenceUID == ct.dicom_headers[0].FrameOfReferenceUID
    referenced = {i.ReferencedSOPInstanceUID
                  for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {h.file_meta.MediaStorageSOPInstanceUID for h in ct.dicom_headers}
    np.testing.assert_array_equal(_seg_on_grid(seg, labels), np.where(a == 12, 2, a))
    assert "PatientName" not in ct.dicom_headers[0] or not str(seg.PatientName)


def test_seg_export_echoes_no_patient_name_or_uid(tmp_path, caplog):
    # highdicom warns about a one-part name by quoting it, and logs the UIDs of the data sets
    # it copies from: neither may reach a log or the console
    caplog.set_level(logging.DEBUG)
    dss = fac.make_series(n_slices=12, rows=32, columns=32, patient_name="Doe")
    fac.write_files(dss, tmp_path / "in")
    ct = load_ct(tmp_path / "in")
    labels = ct.volume.with_array(_fragments(ct.volume.shape))
    caplog.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path, _ = write_dicom_seg(labels, ct.dicom_headers, tmp_path / "segmentation.dcm")
    assert hd.seg.segread(path).PatientName == "Doe"  # the SEG itself keeps the patient
    text = caplog.text + " ".join(str(w.message) for w in caught)
    for identifier in ["Doe", fac.PATIENT_ID] + [ds.SOPInstanceUID for ds in dss]:
        assert identifier not in text, f"{identifier!r} echoed: {text!r}"
