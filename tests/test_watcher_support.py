"""Support for the watcher tests (this module holds no tests).

:func:`convert_process` is a real, light ``process(input_path, out_dir)`` for the watcher:
it loads the CT with :func:`pengwin_demo.dicom.load_ct` (so junk, truncated and MR input
fail exactly as in the pipeline) and writes ``ct.nii.gz`` and ``report.json``. The full
pipeline is exercised by the end-to-end tests; this one keeps the many filesystem tests
fast. ``WATCHER_TEST_DELAY_S`` makes it pause between its two outputs so that a test can
kill the watcher while a job is half written.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

from pengwin_demo.dicom import load_ct
from pengwin_demo.io import write_volume


def convert_process(input_path: Path, out_dir: Path) -> SimpleNamespace:
    ct = load_ct(input_path)
    write_volume(ct.volume, Path(out_dir) / "ct.nii.gz")
    delay = float(os.environ.get("WATCHER_TEST_DELAY_S", "0") or 0)
    if delay:
        marker = os.environ.get("WATCHER_TEST_STARTED_FILE")
        if marker:
            Path(marker).write_text(str(os.getpid()))
        time.sleep(delay)
    report = {"shape_zyx": list(ct.volume.shape), "spacing_zyx_mm": list(ct.volume.spacing_zyx_mm),
              "warnings": ct.warnings, "pid": os.getpid()}
    (Path(out_dir) / "report.json").write_text(json.dumps(report))
    return SimpleNamespace(warnings=list(ct.warnings))
