"""Volume geometry: index <-> world, crop/paste, resampling, with non-trivial directions."""

import numpy as np
import pytest
import SimpleITK as sitk

from pengwin_demo.volume import (
    Volume,
    bounding_box,
    check_label_array,
    check_spacing_zyx_mm,
    paste,
    resample_onto,
    resample_to_spacing,
)

RAS_STORED = np.diag([-1.0, -1.0, 1.0])


def _oblique(deg_z=20.0, deg_x=10.0):
    a, b = np.deg2rad(deg_z), np.deg2rad(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


DIRECTIONS = {"lps": np.eye(3), "ras": RAS_STORED, "oblique": _oblique()}


def _vol(direction, shape=(7, 9, 11), spacing=(3.0, 0.7, 0.9), origin=(-12.5, 30.0, 100.25)):
    arr = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    return Volume(arr, spacing, origin, direction)


@pytest.mark.parametrize("name", DIRECTIONS)
def test_index_to_world_matches_simpleitk(name):
    vol = _vol(DIRECTIONS[name])
    img = vol.to_sitk()
    rng = np.random.default_rng(0)
    idx_zyx = rng.uniform(0, 6, size=(20, 3))
    ours = vol.index_to_world(idx_zyx)
    theirs = np.array([img.TransformContinuousIndexToPhysicalPoint(tuple(i[::-1])) for i in idx_zyx])
    np.testing.assert_allclose(ours, theirs, atol=1e-9)


@pytest.mark.parametrize("name", DIRECTIONS)
def test_world_to_index_inverts(name):
    vol = _vol(DIRECTIONS[name])
    idx = np.array([[0, 0, 0], [6, 8, 10], [2.5, 3.25, 7.75]])
    np.testing.assert_allclose(vol.world_to_index(vol.index_to_world(idx)), idx, atol=1e-9)


def test_ras_storage_flips_x_and_y_in_world():
    vol = _vol(RAS_STORED, origin=(0, 0, 0), spacing=(2.0, 1.0, 1.0))
    # one step along array x (last axis) moves to the patient's right (-x in LPS)
    np.testing.assert_allclose(vol.index_to_world([[0, 0, 1]])[0], [-1.0, 0, 0])
    np.testing.assert_allclose(vol.index_to_world([[0, 1, 0]])[0], [0, -1.0, 0])
    np.testing.assert_allclose(vol.index_to_world([[1, 0, 0]])[0], [0, 0, 2.0])


def test_sitk_round_trip_keeps_everything():
    vol = _vol(DIRECTIONS["oblique"])
    back = Volume.from_sitk(vol.to_sitk())
    assert back.same_grid(vol)
    np.testing.assert_array_equal(back.array, vol.array)


@pytest.mark.parametrize("name", DIRECTIONS)
def test_crop_moves_origin_so_world_positions_agree(name):
    vol = _vol(DIRECTIONS[name])
    box = (slice(2, 5), slice(3, 8), slice(1, 10))
    sub = vol.crop(box)
    assert sub.shape == (3, 5, 9)
    np.testing.assert_array_equal(sub.array, vol.array[box])
    # voxel (0,0,0) of the crop is voxel (2,3,1) of the original, in the world
    np.testing.assert_allclose(sub.index_to_world([[0, 0, 0]]), vol.index_to_world([[2, 3, 1]]))
    np.testing.assert_allclose(sub.index_to_world([[1, 2, 3]]), vol.index_to_world([[3, 5, 4]]))


def test_spacing_check_returns_floats_and_refuses_bad_spacings():
    assert check_spacing_zyx_mm(np.array([2.5, 0.8, 0.8], np.float32)) == (2.5, 0.800000011920929, 0.800000011920929)
    for bad in [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -1.0, 1.0), (1.0, np.nan, 1.0), (1.0, np.inf, 1.0), "abc", None]:
        with pytest.raises(ValueError, match="spacing_zyx_mm must be 3 positive numbers"):
            check_spacing_zyx_mm(bad)
    with pytest.raises(ValueError, match="spacing_zyx_mm"):
        Volume(np.zeros((2, 2, 2), np.uint8), (1.0, 0.0, 1.0))


def test_label_array_check_names_the_map_and_the_problem():
    labels = np.zeros((2, 3, 4), np.int16)
    assert check_label_array("ABBC map", labels, max_label=3) is labels
    with pytest.raises(ValueError, match=r"ABBC map must be a 3D \(z, y, x\) array, got shape \(3, 4\)"):
        check_label_array("ABBC map", labels[0])
    with pytest.raises(TypeError, match="ABBC map must hold integers.*float32"):
        check_label_array("ABBC map", labels.astype(np.float32))
    labels[0, 0, 0] = -1
    with pytest.raises(ValueError, match=r"ABBC map values range -1..0; expected 0-3 \(why\)"):
        check_label_array("ABBC map", labels, max_label=3, hint=" (why)")
    assert check_label_array("any map", labels) is labels  # no range asked: values not checked


def test_crop_rejects_empty_box():
    vol = _vol(np.eye(3))
    with pytest.raises(ValueError, match="empty"):
        vol.crop((slice(3, 3), slice(0, 2), slice(0, 2)))


def test_bounding_box_with_margin_and_clipping():
    mask = np.zeros((10, 12, 14), bool)
    mask[2:4, 5, 0:3] = True
    assert bounding_box(mask) == (slice(2, 4), slice(5, 6), slice(0, 3))
    assert bounding_box(mask, margin_vox=2) == (slice(0, 6), slice(3, 8), slice(0, 5))
    assert bounding_box(np.zeros((3, 3, 3), bool)) is None


def test_paste_back_restores_and_respects_where():
    target = np.zeros((6, 6, 6), np.uint8)
    box = (slice(1, 3), slice(2, 5), slice(0, 6))
    patch = np.full((2, 3, 6), 7, np.uint8)
    where = np.zeros_like(patch, bool)
    where[0] = True
    paste(target, patch, box, where=where)
    assert target.sum() == 7 * 18
    assert (target[1, 2:5, :] == 7).all() and (target[2] == 0).all()
    with pytest.raises(ValueError, match="does not fit"):
        paste(target, patch[:1], box)


@pytest.mark.parametrize("name", DIRECTIONS)
def test_resample_labels_there_and_back_is_exact_grid(name):
    # a label sphere on an anisotropic grid, resampled to 2 mm isotropic and back
    shape, spacing = (30, 60, 50), (2.5, 0.8, 0.9)
    zz, yy, xx = np.indices(shape)
    centre = np.array(shape) / 2
    r2 = ((zz - centre[0]) * spacing[0]) ** 2 + ((yy - centre[1]) * spacing[1]) ** 2 + (
        (xx - centre[2]) * spacing[2]) ** 2
    labels = np.where(r2 < 15**2, 3, 0).astype(np.uint8)
    vol = Volume(labels, spacing, (10.0, -20.0, 5.0), DIRECTIONS[name])
    coarse = resample_to_spacing(vol, (2.0, 2.0, 2.0), "nearest")
    assert coarse.array.dtype == np.uint8
    assert set(np.unique(coarse.array)) == {0, 3}
    np.testing.assert_allclose(coarse.direction, vol.direction)
    np.testing.assert_allclose(coarse.origin_lps_mm, vol.origin_lps_mm)
    # physical extent preserved to within one coarse voxel
    extent_in = np.array(shape) * spacing
    extent_out = np.array(coarse.shape) * 2.0
    assert np.all(np.abs(extent_in - extent_out) <= 2.0)
    back = resample_onto(coarse, vol, "nearest")
    assert back.same_grid(vol)
    dice = 2 * np.sum((back.array == 3) & (labels == 3)) / (np.sum(back.array == 3) + np.sum(labels == 3))
    assert dice > 0.95


def test_resample_ct_linear_keeps_int16_and_values():
    shape = (20, 20, 20)
    ramp = (np.indices(shape)[2] * 10 - 100).astype(np.int16)  # HU ramp along x
    vol = Volume(ramp, (1.0, 1.0, 1.0))
    fine = resample_to_spacing(vol, (1.0, 1.0, 0.5), "linear")
    assert fine.array.dtype == np.int16
    assert fine.shape == (20, 20, 40)
    # linear interpolation of a ramp is the ramp: voxel 2k+... lies between originals
    world = fine.index_to_world([[5, 5, 7]])
    expected = -100 + 10 * vol.world_to_index(world)[0, 2]
    assert abs(int(fine.array[5, 5, 7]) - expected) <= 1


def test_resample_rejects_unknown_interpolation():
    vol = _vol(np.eye(3))
    with pytest.raises(ValueError, match="linear"):
        resample_to_spacing(vol, (1, 1, 1), "cubic")


def test_volume_validates_its_inputs():
    with pytest.raises(ValueError, match="3D"):
        Volume(np.zeros((3, 3)), (1, 1, 1))
    with pytest.raises(ValueError, match="positive"):
        Volume(np.zeros((3, 3, 3)), (0, 1, 1))
    with pytest.raises(ValueError, match="orthonormal"):
        Volume(np.zeros((3, 3, 3)), (1, 1, 1), direction=np.diag([2.0, 1, 1]))


def test_index_matrix_matches_sitk_physical_point_for_every_corner():
    vol = _vol(DIRECTIONS["oblique"], shape=(4, 5, 6))
    img = vol.to_sitk()
    for corner in np.indices((2, 2, 2)).reshape(3, -1).T * (np.array(vol.shape) - 1):
        ours = vol.index_to_world(corner)[0]
        theirs = img.TransformIndexToPhysicalPoint([int(c) for c in corner[::-1]])
        np.testing.assert_allclose(ours, theirs, atol=1e-9)
    assert isinstance(img, sitk.Image)
