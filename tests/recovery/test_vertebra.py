"""A vertebral body resting on the sacrum across a disc is cut off the sacrum fragment; dense
pieces elsewhere, hip fragments and every real expert sacrum stay."""

from __future__ import annotations

import numpy as np
import pytest

from pengwin_demo.recovery import cut_vertebra_off_sacrum
from pengwin_demo.volume import Volume

SPACING_MM = 2.0


def _matrix(direction=np.eye(3)) -> np.ndarray:
    """Index (z, y, x) -> LPS mm, 2 mm voxels; identity direction: +z index is superior,
    +y posterior, +x left."""
    vol = Volume(np.zeros((2, 2, 2), np.uint8), (SPACING_MM,) * 3, (0.0, 0.0, 0.0), direction)
    return vol.index_to_world_matrix()[:3, :3]


def _scene(piece_y=slice(20, 35), piece_x=slice(22, 38), piece_z=slice(29, 41)):
    """Sacrum block (z 5-24) with a vertebral body on it across a 4-voxel disc (80 HU), all
    labelled sacrum (1) as Stage 2 gives them; a left hip block beside. HU grid too."""
    labels = np.zeros((50, 70, 90), np.uint8)
    hu = np.full(labels.shape, -50.0)
    labels[5:25, 30:60, 15:45] = 1
    hu[5:25, 30:60, 15:45] = 350.0
    labels[25:29, piece_y, piece_x] = 1          # the disc, soft tissue
    hu[25:29, piece_y, piece_x] = 80.0
    labels[piece_z, piece_y, piece_x] = 1        # the vertebral body, 23 mL
    hu[piece_z, piece_y, piece_x] = 250.0
    labels[5:30, 30:60, 55:85] = 11
    hu[5:30, 30:60, 55:85] = 350.0
    return labels, hu


def test_vertebra_above_in_front_on_the_midline_is_cut():
    labels, hu = _scene()
    out, n_cut = cut_vertebra_off_sacrum(labels, hu, _matrix())
    assert not out[27:41, 20:35, 22:38].any()                 # the body and the disc's upper half
    assert np.all(out[25:27, 30:35, 22:38] == 1)              # its lower half on the sacrum stays
    assert np.all(out[5:25, 30:60, 15:45] == 1)               # the sacrum, whole
    assert np.array_equal(out == 11, labels == 11)            # hips are never touched
    assert n_cut == np.count_nonzero(labels == 1) - np.count_nonzero(out == 1)
    assert (12 + 2) * 15 * 16 <= n_cut <= (12 + 4) * 15 * 16


def test_superior_is_taken_from_the_patient_axes_not_the_array():
    """The same scene stored feet-up (z index running inferior) gives the same cut."""
    labels, hu = _scene()
    flipped = np.diag([1.0, 1.0, -1.0])  # LPS z = -index z
    out, n_cut = cut_vertebra_off_sacrum(labels[::-1].copy(), hu[::-1].copy(), _matrix(flipped))
    expected, n_expected = cut_vertebra_off_sacrum(labels, hu, _matrix())
    assert n_cut == n_expected and np.array_equal(out[::-1], expected)


@pytest.mark.parametrize("where", ["behind", "off the mid-line", "below"])
def test_dense_pieces_elsewhere_stay(where):
    if where == "behind":   # posterior elements, not a vertebral body in front
        labels, hu = _scene(piece_y=slice(50, 65))
    elif where == "off the mid-line":  # 30 mm to the side of the sacrum's centre
        labels, hu = _scene(piece_x=slice(37, 53))
    else:  # a piece separated at the bottom is no lumbar vertebra
        labels, hu = _scene()
        labels, hu = labels[::-1].copy(), hu[::-1].copy()
    out, n_cut = cut_vertebra_off_sacrum(labels, hu, _matrix())
    assert n_cut == 0 and np.array_equal(out, labels)


def test_a_continuous_bone_or_a_small_piece_stays():
    labels, hu = _scene()
    hu[25:29][labels[25:29] == 1] = 300.0  # no disc: one dense piece
    assert cut_vertebra_off_sacrum(labels, hu, _matrix())[1] == 0
    labels, hu = _scene(piece_z=slice(29, 31), piece_y=slice(20, 25), piece_x=slice(26, 34))
    # 2 x 5 x 8 voxels = 0.64 mL, under MIN_VERTEBRA_ML
    assert cut_vertebra_off_sacrum(labels, hu, _matrix())[1] == 0
    assert cut_vertebra_off_sacrum(labels, hu, _matrix(), min_piece_ml=0.5)[1] > 0


def test_bad_input_refused():
    labels, hu = _scene()
    with pytest.raises(ValueError, match="share a grid"):
        cut_vertebra_off_sacrum(labels, hu[:-1], _matrix())
    with pytest.raises(ValueError, match="invertible"):
        cut_vertebra_off_sacrum(labels, hu, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="labels"):
        cut_vertebra_off_sacrum(np.full((4, 4, 4), 31, np.uint8), np.zeros((4, 4, 4)), _matrix())


@pytest.mark.slow
def test_no_real_expert_sacrum_loses_a_voxel(real_expert_cases):
    """The 5 real fractured pelves and the real fractured sacrum: no sacrum fragment has a
    second dense piece that the rule would take for vertebra."""
    for name, ct, labels in real_expert_cases:
        out, n_cut = cut_vertebra_off_sacrum(labels.array, ct.array, labels.index_to_world_matrix()[:3, :3])
        assert n_cut == 0, name
        assert np.array_equal(out, labels.array)
