"""The ABBC invariant checks of tests/_helpers/abbc_checks.py catch broken maps (otherwise
the invariant tests prove nothing)."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers.abbc_checks import (
    check_all,
    check_border_near_same_bone,
    check_core_per_fragment,
    check_cores_apart,
    check_partition,
    check_walls,
)
from pengwin_demo.labels import ABBC_BORDER, ABBC_BOUNDARY, ABBC_CORE


def _two_slabs():
    labels = np.zeros((10, 10, 20), dtype=np.uint8)
    labels[2:8, 2:8, 2:10] = 1
    labels[2:8, 2:8, 10:18] = 2
    abbc = np.where(labels > 0, ABBC_BOUNDARY, 0).astype(np.uint8)
    abbc[4:6, 4:6, 4:6] = ABBC_CORE
    abbc[4:6, 4:6, 14:16] = ABBC_CORE
    abbc[2:8, 2:8, 9:11] = ABBC_BORDER
    return labels, abbc


def test_checks_accept_a_correct_map():
    labels, abbc = _two_slabs()
    check_all(labels, abbc, (1.0, 1.0, 1.0), max_width_mm=1.0)


def test_checks_catch_background_changed_and_missing_core():
    labels, abbc = _two_slabs()
    broken = abbc.copy()
    broken[0, 0, 0] = ABBC_BOUNDARY
    with pytest.raises(AssertionError):
        check_partition(labels, broken)
    broken = abbc.copy()
    broken[4:6, 4:6, 14:16] = ABBC_BOUNDARY
    with pytest.raises(AssertionError, match="fragment 2 has no core"):
        check_core_per_fragment(labels, broken)


def test_checks_catch_touching_cores_far_border_and_open_walls():
    labels, abbc = _two_slabs()
    broken = abbc.copy()
    broken[4:6, 4:6, 5:15] = ABBC_CORE
    with pytest.raises(AssertionError, match="span two fragments"):
        check_cores_apart(labels, broken)
    broken = abbc.copy()
    broken[2:8, 2:8, 3] = ABBC_BORDER  # 6 mm from fragment 2
    with pytest.raises(AssertionError, match="fragment 1: border"):
        check_border_near_same_bone(labels, broken, (1.0, 1.0, 1.0), 2.0)
    broken = abbc.copy()
    broken[4, 4, 9:11] = ABBC_BOUNDARY
    with pytest.raises(AssertionError, match="without border"):
        check_walls(labels, broken)
