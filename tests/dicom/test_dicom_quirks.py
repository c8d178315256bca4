"""Geometry quirks and series choice: each one detected and handled (repaired or refused)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from pydicom.uid import generate_uid
from scipy import ndimage

from pengwin_demo.dicom import FILL_HU, load_ct
from pengwin_demo.errors import InputError

from _helpers import dicom_factory as fac
from _helpers.dicom_factory import assert_on_field, world_field


def _write(tmp_path, dss, sub="in"):
    fac.write_files(dss, tmp_path / sub)
    return tmp_path / sub


# ------------------------------------------------------------------ duplicates
def test_duplicate_positions_identical_pixels_are_dropped(tmp_path):
    dss = fac.make_series(n_slices=14)
    copies = []
    for k in (3, 9):
        dup = copy.deepcopy(dss[k])
        dup.SOPInstanceUID = dup.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        dup.InstanceNumber = 100 + k
        copies.append(dup)
    ct = load_ct(_write(tmp_path, dss + copies))
    assert ct.volume.shape[0] == 14
    assert np.array_equal(ct.volume.array, fac.expected_hu(dss))
    assert any("2 duplicate slice" in w for w in ct.warnings)


def test_exact_file_copies_are_ignored(tmp_path):
    dss = fac.make_series(n_slices=12)
    folder = _write(tmp_path, dss)
    fac.write_files(dss[:4], folder / "copy")  # same SOPInstanceUIDs again
    ct = load_ct(folder)
    assert np.array_equal(ct.volume.array, fac.expected_hu(dss))


def test_duplicate_positions_with_different_images_are_refused(tmp_path):
    dss = fac.make_series(n_slices=14)
    other = []
    for k in range(5):  # a second reconstruction at the same places, other values
        ds = copy.deepcopy(dss[k])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PixelData = (ds.pixel_array + 50).astype(np.uint16).tobytes()
        other.append(ds)
    with pytest.raises(InputError, match="different images"):
        load_ct(_write(tmp_path, dss + other))


# ------------------------------------------------------------------ gaps and spacing
def test_missing_slice_is_filled_never_averaged(tmp_path):
    dss = fac.make_series(n_slices=20, spacing_z_mm=2.0)
    del dss[8]
    ct = load_ct(_write(tmp_path, dss))
    v = ct.volume
    # a converter that averages would give 19 slices at 38/18 = 2.11 mm
    assert v.shape[0] == 20 and v.spacing_zyx_mm[0] == pytest.approx(2.0)
    assert v.origin_lps_mm == pytest.approx((-60.0, -50.0, -100.0))
    assert any("missing slice" in w for w in ct.warnings)
    present = [k for k in range(20) if k != 8]
    expected = fac.expected_hu(dss)
    assert np.array_equal(v.array[present], expected)  # measured slices untouched
    assert_on_field(v, 3.0)  # the filled slice is within interpolation error of the truth


def test_wide_gap_is_refused(tmp_path):
    dss = fac.make_series(n_slices=24, spacing_z_mm=1.0)
    del dss[10:14]
    with pytest.raises(InputError, match="4 slices are missing|about 4 slices"):
        load_ct(_write(tmp_path, dss))


def test_uneven_spacing_is_resampled_to_a_regular_grid(tmp_path):
    z = np.concatenate([np.arange(0, 20, 1.0), 20 + np.arange(0, 24, 1.5)])
    pos = np.stack([np.full_like(z, -60.0), np.full_like(z, -50.0), -100.0 + z], axis=1)
    dss = fac.make_series(positions=pos)
    ct = load_ct(_write(tmp_path, dss))
    v = ct.volume
    assert v.spacing_zyx_mm[0] == pytest.approx(1.0)  # the median step
    assert v.shape[0] == int(z[-1] / 1.0) + 1
    assert any("uneven slice spacing" in w for w in ct.warnings)
    assert_on_field(v, 3.0)


def test_small_position_jitter_is_not_resampled(tmp_path):
    dss = fac.make_series(n_slices=12, spacing_z_mm=2.5)
    for k, ds in enumerate(dss):
        p = [float(x) for x in ds.ImagePositionPatient]
        p[2] += 0.02 * (-1) ** k
        ds.ImagePositionPatient = [f"{x:.4f}" for x in p]
    ct = load_ct(_write(tmp_path, dss))
    assert ct.warnings == [] and ct.volume.shape[0] == 12
    assert ct.volume.spacing_zyx_mm[0] == pytest.approx(2.5, abs=0.01)


# ------------------------------------------------------------------ gantry tilt
def test_gantry_tilt_is_resampled_onto_an_orthogonal_grid(tmp_path):
    dss = fac.make_series(n_slices=20, spacing_z_mm=2.0, tilt_deg=15.0)
    ct = load_ct(_write(tmp_path, dss))
    v = ct.volume
    assert np.allclose(v.direction, np.eye(3))
    assert v.spacing_zyx_mm == pytest.approx((2.0, 1.5, 1.25))
    drift_rows = 19 * 2.0 * np.tan(np.radians(15)) / 1.5
    assert v.shape[1] == 48 + int(np.ceil(drift_rows))  # widened, nothing cut off
    assert any("gantry tilt of 15.0 degrees" in w for w in ct.warnings)
    inside = v.array != FILL_HU
    inside = ndimage.binary_erosion(inside, iterations=2)
    assert inside.sum() > 0.6 * 20 * 48 * 40
    err = np.abs(v.array - world_field(v))[inside]
    assert err.max() <= 2.0, err.max()
    # reading the tilted stack as if it were orthogonal puts values far off
    naive = np.abs(fac.expected_hu(dss) - world_field(v)[:, :48, :40])
    assert naive.max() > 50


def test_extreme_tilt_is_refused(tmp_path):
    dss = fac.make_series(n_slices=12, tilt_deg=50.0)
    with pytest.raises(InputError, match="gantry tilt"):
        load_ct(_write(tmp_path, dss))


# ------------------------------------------------------------------ refusals
def test_too_few_slices(tmp_path):
    dss = fac.make_series(n_slices=6)
    with pytest.raises(InputError, match="fewer than the minimum of 10"):
        load_ct(_write(tmp_path, dss))
    assert load_ct(tmp_path / "in", min_slices=5).volume.shape[0] == 6


def test_mr_series_is_refused(tmp_path):
    dss = fac.mr_series(n_slices=20)
    with pytest.raises(InputError, match="MR study; the models segment CT only"):
        load_ct(_write(tmp_path, dss))
    uid = dss[0].SeriesInstanceUID
    with pytest.raises(InputError, match="modality MR, not CT"):
        load_ct(tmp_path / "in", series_uid=uid)


def test_mixed_orientations_use_the_axial_stack(tmp_path):
    axial = fac.make_series(n_slices=16)
    sag = fac.make_series(n_slices=4, orientation=(0, 1, 0, 0, 0, -1), series_uid=axial[0].SeriesInstanceUID,
                          origin_lps_mm=(-20.0, -50.0, -60.0))
    ct = load_ct(_write(tmp_path, axial + sag))
    assert ct.volume.shape == (16, 48, 40)
    assert np.array_equal(ct.volume.array, fac.expected_hu(axial))
    assert any("mixes 2 orientations" in w for w in ct.warnings)


def test_mixed_orientations_of_equal_weight_are_refused(tmp_path):
    cor = fac.make_series(n_slices=12, orientation=(1, 0, 0, 0, 0, -1))
    sag = fac.make_series(n_slices=12, orientation=(0, 1, 0, 0, 0, -1), series_uid=cor[0].SeriesInstanceUID)
    with pytest.raises(InputError, match="cannot tell which is the volume"):
        load_ct(_write(tmp_path, cor + sag))


# ------------------------------------------------------------------ series choice
def _study(tmp_path):
    study = generate_uid()
    thin = fac.make_series(n_slices=30, spacing_z_mm=1.0, description="Pelvis 1.0 Br40", series_number=4,
                           study_uid=study)
    thick = fac.make_series(n_slices=15, spacing_z_mm=2.0, description="Pelvis 2.0 Br40", series_number=3,
                            study_uid=study)
    same_count_thicker = fac.make_series(n_slices=30, spacing_z_mm=1.0, slice_thickness_mm=3.0,
                                         description="Pelvis MPR", series_number=6, study_uid=study)
    derived = fac.make_series(n_slices=60, spacing_z_mm=0.5, image_type=("DERIVED", "SECONDARY", "MPR"),
                              description="Bone MPR", series_number=7, study_uid=study)
    scout = fac.localizer(study_uid=study)
    dose = fac.dose_screen(study_uid=study)
    folder = tmp_path / "study"
    for i, s in enumerate((thin, thick, same_count_thicker, derived, scout, dose)):
        fac.write_files(s, folder / f"s{i}")
    return folder, thin, thick, derived


def test_series_choice_in_a_whole_study(tmp_path):
    folder, thin, thick, derived = _study(tmp_path)
    ct = load_ct(folder)
    assert ct.series.series_uid == thin[0].SeriesInstanceUID
    assert "most slices" not in ct.series.reason and "thinnest" in ct.series.reason
    assert len(ct.series_seen) == 6
    seen = {s.description: s for s in ct.series_seen}
    assert "localizer" in seen["Topogram 0.6"].reason
    assert "secondary capture" in seen["Dose Report"].reason
    assert not seen["Bone MPR"].preferred  # derived, though it has the most slices
    assert seen["Pelvis 2.0 Br40"].reason == "usable; fewer slices (15)"
    assert seen["Pelvis MPR"].reason == "usable; thicker slices (3.0 mm)"
    assert np.array_equal(ct.volume.array, fac.expected_hu(thin))


def test_most_slices_wins_among_primary_axial(tmp_path):
    study = generate_uid()
    a = fac.make_series(n_slices=12, spacing_z_mm=1.0, description="short", study_uid=study)
    b = fac.make_series(n_slices=20, spacing_z_mm=3.0, description="long", study_uid=study)
    fac.write_files(a, tmp_path / "s" / "a")
    fac.write_files(b, tmp_path / "s" / "b")
    ct = load_ct(tmp_path / "s")
    assert ct.series.description == "long" and "most slices (20 vs 12)" in ct.series.reason


def test_explicit_series_uid(tmp_path):
    folder, thin, thick, _ = _study(tmp_path)
    ct = load_ct(folder, series_uid=thick[0].SeriesInstanceUID)
    assert ct.series.series_uid == thick[0].SeriesInstanceUID
    assert ct.series.reason == "chosen explicitly by SeriesInstanceUID"
    assert np.array_equal(ct.volume.array, fac.expected_hu(thick))
    with pytest.raises(InputError, match="is not in this input") as err:
        load_ct(folder, series_uid="1.2.3.4")
    assert thin[0].SeriesInstanceUID in str(err.value)  # the listing names what exists


def test_only_derived_series_is_used_with_a_warning(tmp_path):
    dss = fac.make_series(n_slices=12, image_type=("DERIVED", "SECONDARY", "AXIAL"))
    ct = load_ct(_write(tmp_path, dss))
    assert any("no axial ORIGINAL/PRIMARY" in w for w in ct.warnings)


def test_only_scout_and_dose_report_are_refused(tmp_path):
    fac.write_files(fac.localizer(), tmp_path / "in" / "a")
    fac.write_files(fac.dose_screen(), tmp_path / "in" / "b")
    with pytest.raises(InputError, match="no usable CT series"):
        load_ct(tmp_path / "in")


def test_gantry_tilt_ge_style_tilted_planes_table_steps(tmp_path):
    """Tilted image planes whose positions step straight along the table (z)."""
    t = np.radians(20)
    orientation = (1, 0, 0, 0, np.cos(t), -np.sin(t))
    k = np.arange(18)[:, None]
    pos = np.array([[-60.0, -50.0, -100.0]]) + k * np.array([[0.0, 0.0, 2.5]])
    dss = fac.make_series(positions=pos, orientation=orientation, spacing_z_mm=2.5)
    ct = load_ct(_write(tmp_path, dss))
    v = ct.volume
    normal = np.cross(orientation[:3], orientation[3:])
    assert np.allclose(v.direction[:, 2], normal, atol=1e-5)  # an orthogonal, oblique grid
    assert v.spacing_zyx_mm[0] == pytest.approx(2.5 * np.cos(t), abs=1e-3)
    assert any("gantry tilt of 20.0 degrees" in w for w in ct.warnings)
    inside = ndimage.binary_erosion(v.array != FILL_HU, iterations=2)
    assert inside.sum() > 0.6 * 18 * 48 * 40
    assert np.abs(v.array - world_field(v))[inside].max() <= 2.0


def test_low_dose_ct_is_not_mistaken_for_a_dose_report(tmp_path):
    dss = fac.make_series(n_slices=12, description="Low Dose Pelvis 1.0")
    ct = load_ct(_write(tmp_path, dss))
    assert ct.series.preferred and ct.warnings == []


def test_truncated_pixel_data_names_the_file(tmp_path):
    dss = fac.make_series(n_slices=12)
    paths = fac.write_files(dss, tmp_path / "in")
    paths[4].write_bytes(paths[4].read_bytes()[:-1000])
    with pytest.raises(InputError, match=r"IM00004\.dcm: pixel data cannot be decoded"):
        load_ct(tmp_path / "in")


def test_a_series_number_tie_break_is_named_as_such(tmp_path):
    study = generate_uid()
    a = fac.make_series(n_slices=12, description="first", series_number=2, study_uid=study)
    b = fac.make_series(n_slices=12, description="second", series_number=5, study_uid=study)
    fac.write_files(a + b, tmp_path / "in")
    ct = load_ct(tmp_path / "in")
    assert ct.series.description == "first"
    assert "lowest series number (#2 vs #5)" in ct.series.reason and "thinnest" not in ct.series.reason
