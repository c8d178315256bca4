"""Folders the tests refer to, found from this file so that a test's own depth in tests/ does not matter."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The project folder (the one holding ``pengwin_demo/``, ``tests/`` and ``README.md``)."""

REAL_DATA = REPO.parent / "shared" / "data"
"""Folder of the real test data, beside the repository; absent on a fresh clone (the tests needing it skip)."""
