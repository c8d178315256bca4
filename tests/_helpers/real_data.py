"""Where the real test data live: ``shared/data`` beside the repository (see its README.md)."""

from pathlib import Path

REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
"""Folder of the real test data; absent on a fresh clone (the tests needing it skip)."""
