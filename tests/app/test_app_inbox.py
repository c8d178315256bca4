"""The app with an inbox configured: the watcher runs in the app's process on the app's
pipeline object, and the page's job table reports the inbox job (real filesystem, real
watchdog observer, real pipeline with the bundled models)."""

import argparse
import shutil
import time

import pytest

import app
from pengwin_demo.pipeline import get_pipeline

pytestmark = pytest.mark.slow


def test_inbox_job_runs_on_the_apps_pipeline_and_is_listed(tmp_path, monkeypatch):
    if not app.EXAMPLE_CASE.exists():
        pytest.skip(f"bundled example case missing: {app.EXAMPLE_CASE}")
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    outbox.mkdir()
    monkeypatch.setenv("PENGWIN_WATCHER_SETTLE_SECONDS", "1")
    args = argparse.Namespace(inbox=str(inbox), outbox=str(outbox), work=None, polling=None,
                              watcher_config=None)
    service = app.start_inbox_watcher(args)
    monkeypatch.setattr(app, "_watcher_service", service)
    try:
        assert service._pipeline is get_pipeline(service.config.device, "bundled")
        demo = app.build_demo(with_inbox=True)  # the page with the jobs table builds
        assert demo is not None
        shutil.copyfile(app.EXAMPLE_CASE, inbox / "case.nii.gz")
        deadline = time.time() + 600
        rows = []
        while time.time() < deadline:
            rows = app.inbox_rows()
            if rows and rows[0][1] in ("done", "failed"):
                break
            time.sleep(1)
        assert rows and rows[0][1] == "done", rows
        job_id = rows[0][0]
        assert "case" not in job_id  # no names from the inbox in job ids
        result = outbox / job_id
        assert (result / "labels.nii.gz").exists() and (result / "report.json").exists()
        assert not any(p.name.startswith(".tmp") for p in outbox.iterdir())
        assert not (inbox / "case.nii.gz").exists()  # claimed, not left behind
    finally:
        service.stop()
