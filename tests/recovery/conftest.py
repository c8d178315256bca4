"""Fixtures of the recovery tests."""

from __future__ import annotations

import pytest

from pengwin_demo.masked_cases import read_single_bone


@pytest.fixture(scope="session")
def real_expert_cases(real_pelves, real_sacrum_dir):
    """(name, CT, expert labels) of the five real fractured pelves and the real fractured
    sacrum, read once for every test that checks a rule against all real expert fragments."""
    cases = list(real_pelves)
    cases.append(("sacrum", *read_single_bone(real_sacrum_dir / "image.nii.gz",
                                              real_sacrum_dir / "fragments.nii.gz", "sacrum")))
    return cases
