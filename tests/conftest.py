"""Fixtures shared by the test modules: the real test data, found and skipped in one place.

The real data (a fractured sacrum with expert labels, a scanner's DICOM series) is not
part of the repository: it lives in ``shared/data`` beside the project folder, and the
tests that need it skip, saying where they looked, when it is absent (as on a fresh clone).
Helper code shared by tests is in the ``_helpers`` package beside this file.

The test modules sit in folders that mirror the project (``tests/dicom/`` tests
``pengwin_demo/dicom/``, ``tests/watcher/`` the watcher, ``tests/app/`` app.py; the top-level
modules of ``pengwin_demo`` and the project-wide checks are tested here in ``tests/``); this
file and ``_helpers`` serve them all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _helpers.paths import REAL_DATA
from pengwin_demo.masked_cases import find_masked_cases, read_masked_case


def real_data(name: str) -> Path:
    """``REAL_DATA / name``, or skip the test with the one reason every such test gives."""
    path = REAL_DATA / name
    if not path.exists():
        pytest.skip(f"real test data {name} not found in {REAL_DATA} (kept beside the repository, not in it)")
    return path


@pytest.fixture(scope="session")
def real_sacrum_dir() -> Path:
    """Real fractured sacrum: ``image.nii.gz`` (masked CT) and ``fragments.nii.gz`` (labels 1-10)."""
    return real_data("real_fracture_sacrum")


@pytest.fixture(scope="session")
def real_pelves_dir() -> Path:
    """Five real fractured pelves, each bone masked separately (``case_00N/{LI,RI,SA}_*``)."""
    return real_data("real_fractured_pelves")


@pytest.fixture(scope="session")
def real_pelves(real_pelves_dir) -> list:
    """(name, CT, expert labels) of the five real fractured pelves, read once (about a minute
    on 2 cores) for every test that needs them; their arrays are read-only, so that no test
    can change what the next one sees."""
    cases = []
    for case in find_masked_cases(real_pelves_dir):
        ct, labels = read_masked_case(case)
        ct.array.flags.writeable = labels.array.flags.writeable = False
        cases.append((case.name, ct, labels))
    return cases


@pytest.fixture(scope="session")
def siemens_series_dir() -> Path:
    """A real 20-slice JPEG 2000 CT series from a Siemens scanner (upper abdomen, no pelvis)."""
    return real_data("dicom_ct_siemens")


@pytest.fixture(scope="session")
def siemens_series_dir_if_present() -> Path | None:
    """:func:`siemens_series_dir` for tests that also run without it (None when absent)."""
    path = REAL_DATA / "dicom_ct_siemens"
    return path if path.is_dir() else None
