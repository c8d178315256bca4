"""Fixtures of the recovery tests."""

from __future__ import annotations

import pytest

from pengwin_demo.masked_cases import find_masked_cases, read_masked_case, read_single_bone


@pytest.fixture(scope="session")
def real_expert_cases(real_pelves_dir, real_sacrum_dir):
    """(name, CT, expert labels) of the five real fractured pelves and the real fractured
    sacrum, read once for every test that checks a rule against all real expert fragments."""
    cases = [(c.name, *read_masked_case(c)) for c in find_masked_cases(real_pelves_dir)]
    cases.append(("sacrum", *read_single_bone(real_sacrum_dir / "image.nii.gz",
                                              real_sacrum_dir / "fragments.nii.gz", "sacrum")))
    return cases
