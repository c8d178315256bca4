"""Cavities enclosed by a bone go to its nearest fragment; open and slice-only holes stay.
Fatty marrow behind a missed cortex is filled where Stage 1 marks the bone, a canal is not."""

from __future__ import annotations

import numpy as np
import pytest

from pengwin_demo.recovery import fill_bone_cavities, fill_marrow


def _ball(shape, centre, radius) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius ** 2


def test_enclosed_cavity_split_between_two_fragments():
    shape = (40, 40, 40)
    shell = _ball(shape, (20, 20, 20), 15) & ~_ball(shape, (20, 20, 20), 8)
    labels = np.zeros(shape, np.uint8)
    labels[shell & (np.indices(shape)[2] < 20)] = 11
    labels[shell & (np.indices(shape)[2] >= 20)] = 12
    out = fill_bone_cavities(labels)
    cavity = _ball(shape, (20, 20, 20), 8)
    assert out[cavity].min() > 0, "the whole cavity is filled"
    x = np.indices(shape)[2]
    # each cavity voxel takes the fragment on its own side (the nearest one)
    assert np.all(out[cavity & (x <= 18)] == 11) and np.all(out[cavity & (x >= 21)] == 12)
    assert np.array_equal(out[~cavity], labels[~cavity]), "nothing outside the cavity changes"


def test_open_cavity_and_tunnel_stay_background():
    shape = (40, 40, 40)
    centre = (20, 20, 20)
    labels = np.zeros(shape, np.uint8)
    shell = _ball(shape, centre, 15) & ~_ball(shape, centre, 8)
    labels[shell] = 1
    labels[18:23, 18:23, 20:] = 0          # a channel from the cavity to the outside
    assert np.array_equal(fill_bone_cavities(labels), labels)
    tube = np.zeros(shape, np.uint8)
    block = np.zeros(shape, bool)
    block[5:35, 10:30, 10:30] = True
    tube[block] = 21
    tube[:, 17:23, 17:23] = 0               # a canal through the bone: a hole in every slice
    assert np.array_equal(fill_bone_cavities(tube), tube)


def test_other_bone_inside_a_cavity_is_kept():
    shape = (40, 40, 40)
    centre = (20, 20, 20)
    labels = np.zeros(shape, np.uint8)
    labels[_ball(shape, centre, 15) & ~_ball(shape, centre, 8)] = 21
    labels[_ball(shape, centre, 3)] = 1     # a piece of sacrum inside a hip's cavity
    out = fill_bone_cavities(labels)
    assert np.all(out[_ball(shape, centre, 3)] == 1)
    assert np.all(out[_ball(shape, centre, 8) & ~_ball(shape, centre, 3)] == 21)


def test_bad_labels_refused():
    with pytest.raises(ValueError, match="labels"):
        fill_bone_cavities(np.full((4, 4, 4), 31, np.uint8))
    with pytest.raises(ValueError):
        fill_bone_cavities(np.zeros((4, 4), np.uint8))


def _bone_with_open_marrow(shape=(40, 40, 40), spacing_mm=1.0):
    """A ball of bone (radius 15 voxels) whose labelled part is only the outer 4 voxels,
    the marrow inside left out and open to the outside through a 3-voxel gap in that
    shell; the anatomy map marks the whole ball as left hip."""
    centre = (20, 20, 20)
    bone = _ball(shape, centre, 15)
    marrow = _ball(shape, centre, 11)
    labels = np.zeros(shape, np.uint8)
    x = np.indices(shape)[2]
    labels[bone & ~marrow & (x < 20)] = 11
    labels[bone & ~marrow & (x >= 20)] = 12
    labels[19:22, 19:22, 30:] = 0           # the missed cortex: 3 mm wide at 1 mm voxels
    anatomy = np.where(bone, 2, 0).astype(np.uint8)
    return labels, anatomy, marrow


def test_marrow_behind_a_missed_cortex_is_filled():
    labels, anatomy, marrow = _bone_with_open_marrow()
    assert np.array_equal(fill_bone_cavities(labels), labels), "no 3D hole: open to the outside"
    out = fill_marrow(labels, anatomy, (1.0, 1.0, 1.0), close_mm=3.0)
    assert out[marrow].min() > 0, "the whole marrow is filled"
    x = np.indices(labels.shape)[2]
    assert np.all(out[marrow & (x <= 18)] == 11) and np.all(out[marrow & (x >= 21)] == 12)
    assert np.array_equal(out[anatomy == 0], labels[anatomy == 0]), "nothing outside Stage-1 bone"
    assert np.array_equal(out[labels > 0], labels[labels > 0])
    assert np.array_equal(fill_marrow(labels, anatomy, (1.0, 1.0, 1.0), close_mm=0.0), labels)
    # a closing narrower than half the gap does not bridge it (it only smooths voxel steps)
    assert (fill_marrow(labels, anatomy, (1.0, 1.0, 1.0), close_mm=1.0)[marrow] == 0).mean() > 0.9


def test_marrow_fill_leaves_what_stage1_leaves_out():
    """A canal through the bone (the sacral canal): closing would fill it, but the anatomy
    map does not mark it, so it stays background; neither does another bone's marrow."""
    labels, anatomy, marrow = _bone_with_open_marrow()
    canal = np.zeros(labels.shape, bool)
    canal[:, 18:22, 12:16] = True           # through the shell and the marrow, along z
    labels[canal] = 0
    anatomy[canal] = 0
    out = fill_marrow(labels, anatomy, (1.0, 1.0, 1.0), close_mm=3.0)
    assert not out[canal].any()
    assert out[marrow & ~canal].min() > 0
    other = np.where(anatomy > 0, 3, 0).astype(np.uint8)  # Stage 1 says right hip here
    assert np.array_equal(fill_marrow(labels, other, (1.0, 1.0, 1.0), close_mm=3.0), labels)


def test_marrow_fill_radius_in_mm():
    """At 2 mm voxels the 3-voxel gap is 6 mm wide, its middle 4 mm from the cortex: a 3 mm
    closing leaves the marrow open, a 5 mm one fills it."""
    labels, anatomy, marrow = _bone_with_open_marrow()
    spacing = (2.0, 2.0, 2.0)
    assert (fill_marrow(labels, anatomy, spacing, close_mm=3.0)[marrow] == 0).mean() > 0.9
    assert fill_marrow(labels, anatomy, spacing, close_mm=5.0)[marrow].min() > 0


def test_marrow_fill_refuses_bad_input():
    labels, anatomy, _ = _bone_with_open_marrow()
    with pytest.raises(ValueError, match="shape"):
        fill_marrow(labels, anatomy[:-1], (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="anatomy"):
        fill_marrow(labels, np.full(labels.shape, 4, np.uint8), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="close_mm"):
        fill_marrow(labels, anatomy, (1.0, 1.0, 1.0), close_mm=-1.0)
    with pytest.raises(ValueError, match="spacing"):
        fill_marrow(labels, anatomy, (1.0, 0.0, 1.0))
