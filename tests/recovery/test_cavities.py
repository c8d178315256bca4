"""Cavities enclosed by a bone go to its nearest fragment; open and slice-only holes stay."""

from __future__ import annotations

import numpy as np
import pytest

from pengwin_demo.recovery import fill_bone_cavities


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
