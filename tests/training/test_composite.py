"""Composite training cases: a bone-masked pelvis placed in a synthetic body."""

from __future__ import annotations

import numpy as np
import pytest

from pengwin_demo.training import (CompositeOptions, composite_case, mirror_case, pelvis_box_crop,
                                   pelvis_free_crop)
from pengwin_demo.phantom import make_phantom
from pengwin_demo.training import to_canonical


def _bone_ids(labels: np.ndarray) -> np.ndarray:
    return np.where(labels > 0, (labels - 1) // 10 + 1, 0)


def _centre_x_mm(volume, mask: np.ndarray) -> float:
    return float(volume.index_to_world(np.argwhere(mask).mean(0, keepdims=True))[0, 0])


TEST_BODIES = CompositeOptions(inplane_mm=(2.5, 3.0), slice_mm=(2.5, 3.0), below_mm=(60.0, 80.0),
                               above_mm=(80.0, 100.0), fov_mm=(300.0, 320.0), fatty_marrow_probability=0.0)
"""Coarser, shorter bodies than the training default: the same code, test-sized, with
the real bone's own marrow (fatty marrow has its own test)."""


@pytest.fixture(scope="module")
def masked_phantom():
    """A phantom pelvis masked like the real data (0 HU outside the labelled bones)."""
    ct, labels = make_phantom(3, "small", n_fragments={"sacrum": 1, "left_hip": 2, "right_hip": 1})
    return ct.with_array(np.where(labels.array > 0, ct.array, 0).astype(np.int16)), labels


def _check_composite(src_ct, src_lab, ct, lab) -> None:
    voxel_ml = np.prod(ct.spacing_zyx_mm) / 1000
    src_ml = np.prod(src_lab.spacing_zyx_mm) / 1000
    for bone in (1, 2, 3):
        before = np.count_nonzero(_bone_ids(src_lab.array) == bone) * src_ml
        after = np.count_nonzero(_bone_ids(lab.array) == bone) * voxel_ml
        assert after == pytest.approx(before, rel=0.08), (bone, before, after)
        # the left hip (2) stays on the patient's left: larger LPS x than the right hip (3)
    assert _centre_x_mm(lab, _bone_ids(lab.array) == 2) > _centre_x_mm(lab, _bone_ids(lab.array) == 3)
    a = ct.array
    assert ct.array.dtype == np.int16 and np.allclose(ct.direction, np.eye(3))
    assert (a < -900).mean() > 0.05  # air around the body
    soft = a[(a > -150) & (a < 100)]
    assert soft.size > 0.2 * a.size  # a body of fat and muscle
    # distractor bone (femurs, vertebrae) exists and is not labelled
    unlabelled_bone_ml = np.count_nonzero((a > 300) & (lab.array == 0)) * voxel_ml
    assert unlabelled_bone_ml > 20, unlabelled_bone_ml
    # the real bone keeps its own intensities
    src_bone = src_ct.array[src_lab.array > 0]
    assert np.median(a[lab.array > 0]) == pytest.approx(np.median(src_bone), rel=0.2, abs=40)


def test_composite_of_masked_phantom(masked_phantom):
    ct, labels = masked_phantom
    c_ct, c_lab = composite_case(ct, labels, np.random.default_rng(0), TEST_BODIES)
    _check_composite(ct, labels, c_ct, c_lab)
    again = composite_case(ct, labels, np.random.default_rng(0), TEST_BODIES)
    assert np.array_equal(again[0].array, c_ct.array)  # same seed, same case


def test_mirror_swaps_sides_with_labels(masked_phantom):
    ct, labels = masked_phantom
    c_ct, c_lab = composite_case(ct, labels, np.random.default_rng(1), TEST_BODIES)
    m_ct, m_lab = mirror_case(c_ct, c_lab)
    left_before = _bone_ids(c_lab.array) == 2
    left_after = _bone_ids(m_lab.array) == 2
    assert np.count_nonzero(left_after) == np.count_nonzero(_bone_ids(c_lab.array) == 3)
    assert np.array_equal(left_after, (_bone_ids(c_lab.array) == 3)[:, :, ::-1])
    assert _centre_x_mm(m_lab, left_after) > _centre_x_mm(m_lab, _bone_ids(m_lab.array) == 3)
    assert np.array_equal(m_ct.array, c_ct.array[:, :, ::-1])
    assert np.count_nonzero(left_before) > 0


def test_crop_above_pelvis_has_no_pelvis(masked_phantom):
    ct, labels = masked_phantom
    for seed in range(6):
        c_ct, c_lab = composite_case(ct, labels, np.random.default_rng(seed), TEST_BODIES)
        crop = pelvis_free_crop(c_ct, c_lab)
        if crop is not None:
            break
    assert crop is not None
    a_ct, a_lab = crop
    assert not a_lab.array.any() and a_ct.shape[0] >= 24
    # the crop keeps its place in the patient: its first slice is above the last bone slice
    top_bone = np.nonzero(c_lab.array.any((1, 2)))[0].max()
    assert a_ct.origin_lps_mm[2] > c_ct.index_to_world(np.array([[top_bone, 0, 0]]))[0, 2]
    # lumbar vertebrae above the sacrum: dense bone in the crop
    assert np.count_nonzero(a_ct.array > 300) > 0


def test_pelvis_box_crop_keeps_all_bone_with_margins_in_range(masked_phantom):
    ct, labels = masked_phantom
    c_ct, c_lab = composite_case(ct, labels, np.random.default_rng(1), TEST_BODIES)
    b_ct, b_lab = pelvis_box_crop(c_ct, c_lab, np.random.default_rng(2), margin_mm=(10.0, 30.0))
    assert np.count_nonzero(b_lab.array) == np.count_nonzero(c_lab.array)  # every bone voxel kept
    assert b_ct.same_grid(b_lab) and b_ct.shape < c_ct.shape
    # the crop sits where it was in the patient, voxel for voxel
    corner = c_ct.world_to_index(np.asarray([b_ct.origin_lps_mm]))[0]
    z0, y0, x0 = (int(round(v)) for v in corner)
    np.testing.assert_array_equal(b_ct.array, c_ct.array[z0:z0 + b_ct.shape[0], y0:y0 + b_ct.shape[1],
                                                          x0:x0 + b_ct.shape[2]])
    # each side's margin, mm, where the body left room for it: within the range, +- a voxel
    bone = np.argwhere(b_lab.array > 0)
    spacing = np.asarray(b_ct.spacing_zyx_mm)
    before, after = bone.min(0) * spacing, (np.asarray(b_ct.shape) - 1 - bone.max(0)) * spacing
    room_before = np.argwhere(c_lab.array > 0).min(0) * spacing
    for margin, room in zip(before, room_before):
        if room > 30.0 + 3:
            assert 10.0 - 3 <= margin <= 30.0 + 3, (before, after)
    assert (after <= 30.0 + 3).all(), after
    with pytest.raises(ValueError, match="labelled bone"):
        pelvis_box_crop(c_ct, c_lab.with_array(np.zeros_like(c_lab.array)), np.random.default_rng(0))


def test_fatty_marrow_lowers_the_interior_and_keeps_the_cortex(masked_phantom):
    """Fatty marrow: same bodies and labels, the deep cancellous bone much lower in HU,
    the bone's outer layer as it was."""
    from scipy import ndimage

    ct, labels = masked_phantom
    # 2 mm voxels, so that the outer layer lies within the cortex kept (2.5 mm or more)
    fine = CompositeOptions(**{**TEST_BODIES.__dict__, "inplane_mm": (2.0, 2.0), "slice_mm": (2.0, 2.0)})
    plain = composite_case(ct, labels, np.random.default_rng(3), fine)
    fatty_opts = CompositeOptions(**{**fine.__dict__, "fatty_marrow_probability": 1.0, "marrow_hu": (-60.0, -60.0)})
    fatty = composite_case(ct, labels, np.random.default_rng(3), fatty_opts)
    assert np.array_equal(plain[1].array, fatty[1].array)
    bone = plain[1].array > 0
    depth_mm = ndimage.distance_transform_edt(bone, sampling=plain[1].spacing_zyx_mm)
    shell, deep = bone & (depth_mm < 2.5), depth_mm >= 6.0
    assert deep.sum() > 100
    assert np.median(fatty[0].array[shell]) == pytest.approx(np.median(plain[0].array[shell]), abs=15)
    drop = np.median(plain[0].array[deep]) - np.median(fatty[0].array[deep])
    # at least 0.5 * 0.3 of the way to -60 HU everywhere, usually far more
    assert drop > 0.15 * (np.median(plain[0].array[deep]) + 60), drop
    outside = ~ndimage.binary_dilation(bone, iterations=2)
    assert np.median(fatty[0].array[outside]) == pytest.approx(np.median(plain[0].array[outside]), abs=5)


@pytest.mark.slow
def test_composite_of_real_pelvis(real_pelves):
    _, ct, labels = real_pelves[0]
    c_ct, c_lab = composite_case(ct, labels, np.random.default_rng(5), CompositeOptions(fatty_marrow_probability=0.0))
    _check_composite(to_canonical(ct), to_canonical(labels), c_ct, c_lab)


def test_lowest_vertebra_sits_on_the_tilted_endplate():
    """L5 rests on S1 across a disc, its base following the endplate's slope, so part of it
    lies below the sacrum's highest point (as in real CTs), and it never covers the sacrum."""
    from pengwin_demo.training.composite import _Canvas, _lumbar_spine
    from pengwin_demo.volume import Volume

    shape, step = (80, 80, 60), 2.0
    geom = Volume(np.zeros(shape, np.uint8), (step,) * 3, (0.0, 0.0, 0.0), np.eye(3))
    z = (step * np.arange(shape[0]))[:, None, None]
    y = (step * np.arange(shape[1]))[None, :, None]
    x = (step * np.arange(shape[2]))[None, None, :]
    cv = _Canvas(geom, z, y, x)
    # a sacrum block whose top slopes down anteriorly (small y) by 35 degrees
    top_mm = 90.0 - np.tan(np.radians(35)) * (120.0 - y)
    sacrum = (z <= top_mm) & (z >= 20) & (y >= 50) & (y <= 120) & (np.abs(x - 60) <= 40)
    spine = _lumbar_spine(cv, sacrum, np.random.default_rng(0))
    assert not (spine & sacrum).any()
    body_rows = np.flatnonzero(spine[: int(90 / step) + 1].any(axis=(0, 2)))  # rows reaching below the top
    assert body_rows.size, "part of the lowest vertebra lies below the sacrum's highest point"
    lowest = [np.flatnonzero(spine[:, r, :].any(axis=1)).min() * step for r in body_rows]
    gap = np.array(lowest) - np.broadcast_to(top_mm, (1, shape[1], 1))[0, body_rows, 0]
    assert np.all(gap >= 5.0), "a disc between the endplate and the vertebra"
    assert lowest[0] < lowest[-1], "the base follows the endplate down anteriorly"


@pytest.mark.parametrize("wrong", [{"fatty_marrow_probability": 1.5}, {"fatty_marrow_probability": -0.1},
                                   {"slice_mm": (3.0, 2.0)}, {"inplane_mm": (0.0, 2.0)},
                                   {"below_mm": (-10.0, 20.0)}, {"marrow_hu": (30.0, -80.0)}])
def test_composite_options_refuse_impossible_ranges(wrong):
    name = next(iter(wrong))
    with pytest.raises(ValueError, match=f"CompositeOptions.{name}"):
        CompositeOptions(**wrong)
