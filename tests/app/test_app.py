"""The web app, for real: launched Gradio server, the real pipeline and bundled models,
driven by gradio_client and by a headless Chromium."""

from __future__ import annotations

import json
import shutil
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest

gr = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from _helpers.paths import REPO  # noqa: E402
import app  # noqa: E402
from pengwin_demo.io import read_volume  # noqa: E402

EXAMPLE_GT = REPO / "examples" / "example_pelvis_labels.nii.gz"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    if not app.EXAMPLE_CASE.exists():
        pytest.skip(f"bundled example case missing: {app.EXAMPLE_CASE}")
    demo = app.build_demo()
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True,
                max_file_size="50mb", quiet=True)
    url = f"http://127.0.0.1:{port}/"
    yield url
    demo.close()


@pytest.fixture(scope="module")
def example_result(served):
    client = Client(served, verbose=False)
    return client.predict("cpu", "bundled", "normal", api_name="/example")


def test_example_case_gives_glb_table_and_downloads(example_result):
    glb, image, _slider, table, downloads, summary = example_result  # gr.State is not sent
    assert glb and Path(glb).suffix == ".glb"
    import trimesh

    scene = trimesh.load(glb)
    assert len(scene.geometry) >= 2
    rows = table["data"] if isinstance(table, dict) else table
    assert len(rows) == len(scene.geometry)
    assert all(r[1] in ("sacrum", "left_hip", "right_hip") for r in rows)
    assert all(float(r[2]) > 0 for r in rows)
    names = sorted(Path(d).name for d in downloads)
    assert "labels.nii.gz" in names and "report.json" in names and "fragments_stl.zip" in names
    zipped = next(d for d in downloads if d.endswith("fragments_stl.zip"))
    with zipfile.ZipFile(zipped) as zf:
        stls = [n for n in zf.namelist() if n.endswith(".stl")]
    assert len(stls) == len(rows)
    assert "fragments" in summary


def test_example_labels_match_ground_truth(example_result):
    """The bundled models on the bundled example: the labels overlap the phantom's truth."""
    if not EXAMPLE_GT.exists():
        pytest.skip("example ground truth missing")
    downloads = example_result[4]
    labels = read_volume(next(d for d in downloads if d.endswith("labels.nii.gz")), kind="label")
    gt = read_volume(EXAMPLE_GT, kind="label")
    assert labels.same_grid(gt, tol_mm=1e-3)
    bone_pred, bone_gt = labels.array > 0, gt.array > 0
    iou = np.sum(bone_pred & bone_gt) / np.sum(bone_pred | bone_gt)
    assert iou > 0.8, f"bone IoU {iou:.3f}"
    report = json.loads(Path(next(d for d in downloads if d.endswith("report.json"))).read_text())
    assert len(report["fragments"]) >= 3


def test_bad_upload_gives_clear_message(served, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not a CT")
    client = Client(served, verbose=False)
    with pytest.raises(Exception) as info:
        client.predict([handle_file(str(bad))], "cpu", "bundled", "normal", api_name="/segment")
    text = str(info.value)
    assert "notes.txt" in text
    assert "Traceback" not in text


def test_stage_upload_keeps_files_inside_request_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.dcm").write_bytes(b"x")
    (src / "b.dcm").write_bytes(b"y")
    dest = tmp_path / "req"
    dest.mkdir()
    upload = app.stage_upload([str(src / "a.dcm"), str(src / "b.dcm")], dest)
    assert upload.path.parent == dest and len(list(upload.path.iterdir())) == 2
    assert app._safe_name("../../etc/passwd") == "passwd"
    assert app._safe_name("a b;rm -rf.nii.gz") == "a_b_rm_-rf.nii.gz"


def test_stage_upload_names_no_patient_and_shows_the_users_names(tmp_path):
    # a file named after the patient is staged under a neutral name (a traceback in the server
    # log shows staged paths); a message to the user names the file as they uploaded it
    src = tmp_path / "src"
    src.mkdir()
    for name in ("Doe Jane pelvis.nii.gz", "DOE_JANE_0001.dcm", "IM0002"):
        (src / name).write_bytes(b"x")
    single = app.stage_upload([str(src / "Doe Jane pelvis.nii.gz")], tmp_path / "one")
    many = app.stage_upload([str(src / "DOE_JANE_0001.dcm"), str(src / "IM0002")], tmp_path / "many")
    assert single.path.name == "uploaded_ct.nii.gz"
    assert sorted(p.name for p in many.path.iterdir()) == ["file00000.dcm", "file00001"]
    assert single.shown(f"{single.path}: unreadable").endswith("/Doe_Jane_pelvis.nii.gz: unreadable")
    assert many.shown("file00000.dcm and file00001 unreadable") == "DOE_JANE_0001.dcm and IM0002 unreadable"


@pytest.mark.browser
def test_real_browser_runs_example_and_shows_3d(served, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("Debian chromium not installed (scripts/install_browser.sh installs it)")
    from playwright.sync_api import sync_playwright

    shot = tmp_path / "app.png"
    from scripts.app_screenshot import screenshot_example

    screenshot_example(served, shot, chromium)
    assert shot.exists() and shot.stat().st_size > 20_000


def test_old_request_folders_are_purged_and_sessions_cleaned(tmp_path, monkeypatch):
    import os
    import time
    from types import SimpleNamespace

    monkeypatch.setattr(app, "_WORK_ROOT", tmp_path)
    old = app._new_request_dir("sessionA")
    (old / "ct.npy").write_bytes(b"x")
    past = time.time() - (app.KEEP_RESULTS_MINUTES + 1) * 60
    os.utime(old, (past, past))
    fresh = app._new_request_dir("sessionB")  # starting a request purges expired ones
    assert not old.exists() and fresh.exists()
    assert fresh.parent.parent == tmp_path  # everything stays inside the app's root
    app._cleanup_session(SimpleNamespace(session_hash="sessionB"))  # tab closed
    assert not fresh.parent.exists()
