"""Small fragments apart from every other fragment are dropped; small fragments against
the bone, large ones and a bone's largest fragment stay."""

from __future__ import annotations

import numpy as np
import pytest

from pengwin_demo.recovery import drop_isolated_crumbs

SPACING = (1.0, 1.0, 1.0)


def test_apart_crumbs_dropped_and_numbers_closed_up():
    labels = np.zeros((60, 60, 120), np.uint8)
    labels[10:50, 10:50, 10:40] = 1          # sacrum block
    labels[20:30, 20:30, 40:50] = 2          # 1 mL chip against it
    labels[20:30, 20:30, 55:65] = 3          # 1 mL crumb, 5 mm (52-54 empty) from the chip
    labels[45:55, 45:55, 45:105] = 4         # 6 mL piece, far from everything
    labels[20:40, 10:50, 80:110] = 11        # left hip block
    labels[25:30, 30:40, 72:75] = 12         # 0.15 mL crumb, 5 mm off the hip block
    out, dropped = drop_isolated_crumbs(labels, SPACING)
    assert sorted(dropped) == [3, 12]
    assert not out[labels == 3].any() and not out[labels == 12].any()
    assert np.all(out[labels == 2] == 2) and np.all(out[labels == 4] == 3)  # 4 closes up to 3
    assert np.all(out[labels == 1] == 1) and np.all(out[labels == 11] == 11)
    # the gap is in mm: at 0.5 mm voxels the same voxels are 2.5 mm apart, under the 3 mm
    out_fine, dropped_fine = drop_isolated_crumbs(labels, (0.5, 0.5, 0.5), max_ml=1.0)
    assert dropped_fine == [] and np.array_equal(out_fine, labels)
    # size in mL: with a 0.5 mL ceiling the 1 mL crumb stays
    assert drop_isolated_crumbs(labels, SPACING, max_ml=0.5)[1] == [12]


def test_a_bones_largest_fragment_is_kept_however_small():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[5:10, 5:10, 5:10] = 21            # 0.125 mL, the right hip's only fragment
    labels[20:25, 20:25, 20:25] = 1
    out, dropped = drop_isolated_crumbs(labels, SPACING)
    assert dropped == [] and np.array_equal(out, labels)
    assert drop_isolated_crumbs(np.zeros((4, 4, 4), np.uint8), SPACING)[1] == []


def test_bad_input_refused():
    with pytest.raises(ValueError, match="labels"):
        drop_isolated_crumbs(np.full((4, 4, 4), 31, np.uint8), SPACING)
    with pytest.raises(ValueError, match="spacing"):
        drop_isolated_crumbs(np.zeros((4, 4, 4), np.uint8), (1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="min_gap_mm"):
        drop_isolated_crumbs(np.zeros((4, 4, 4), np.uint8), SPACING, min_gap_mm=-1.0)


@pytest.mark.slow
def test_every_real_expert_fragment_is_kept(real_expert_cases):
    """Real small fragments lie against their bone: none of the 5 pelves' and the real
    sacrum's expert fragments is dropped (the smallest: 0.07 mL)."""
    for name, _, labels in real_expert_cases:
        out, dropped = drop_isolated_crumbs(labels.array, labels.spacing_zyx_mm)
        assert dropped == [], name
        assert np.array_equal(out, labels.array)
