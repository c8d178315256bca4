"""Helpers shared by the test modules (no tests here).

- :mod:`.paths`: the project folder and the real test data, whatever a test file's depth.
- :mod:`.dicom_factory`: synthetic DICOM series with the quirks real deliveries have.
- :mod:`.abbc_checks`: invariant checks for ABBC maps and a plain, independent recovery.
- :mod:`.watcher_jobs`: light ``process`` callables and filesystem helpers for the watcher.

Shared fixtures (the real test data and its skip reasons) are in ``tests/conftest.py``.
"""
