"""The watcher end to end with the real pipeline.

Two kinds of models: *oracle* models that return a phantom's ground truth (so the whole
real pipeline runs without trained weights and its labels can be checked voxel by voxel
against the truth), and the bundled demo models (skipped, with the reason, when absent).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pengwin_demo.errors import ModelError
from pengwin_demo.io import read_volume
from watcher import WatcherConfig, WatcherService

from _helpers import dicom_factory as factory
from _helpers.watcher_jobs import (
    REPO,
    drop,
    failed_jobs,
    make_dirs,
    oracle_case,
    outputs,
    wait_for,
    watcher_env,
)

pytest.importorskip("pengwin_demo.phantom.dicom_export", reason="phantom DICOM writer not available")
from pengwin_demo.phantom import write_dicom_series  # noqa: E402

ORACLE_SEED = 5


def largest_per_bone_iou(truth: np.ndarray, pred: np.ndarray) -> dict[int, float]:
    """IoU of labels 1, 11, 21 (the largest fragment of each bone) where present."""
    out = {}
    for label in (1, 11, 21):
        a, b = truth == label, pred == label
        if a.any():
            out[label] = float((a & b).sum() / (a | b).sum())
    return out


def mesh_inside_ct(stl: Path, ct) -> bool:
    import trimesh

    idx = np.array([[z, y, x] for z in (0, ct.shape[0] - 1) for y in (0, ct.shape[1] - 1)
                    for x in (0, ct.shape[2] - 1)])
    corners = ct.index_to_world(idx)
    bounds = trimesh.load(stl).bounds
    return bool(np.all(bounds[0] >= corners.min(0) - 2.0) and np.all(bounds[1] <= corners.max(0) + 2.0))


def test_phantom_dicom_and_junk_through_watcher_and_real_pipeline(tmp_path):
    ct, truth, pipeline = oracle_case(ORACLE_SEED)
    inbox, outbox = make_dirs(tmp_path)
    staging = tmp_path / "staging"
    write_dicom_series(ct, staging / "phantom")
    factory.write_files(factory.mr_series(n_slices=12), staging / "mr")
    (staging / "junk").mkdir()
    (staging / "junk" / "scan.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a CT")
    for entry in sorted(staging.iterdir()):
        drop(entry, inbox)
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=0.5)
    service = WatcherService(cfg, pipeline=pipeline)
    counts = service.run_once(timeout=300)
    assert counts == {"done": 1, "failed": 2, "left": 0, "split": 0, "retrying": 0}

    (job,) = outputs(outbox)
    names = {p.name for p in job.iterdir()}
    assert {"labels.nii.gz", "report.json", "job.json", "scene.glb", "fragments"} <= names
    labels = read_volume(job / "labels.nii.gz", kind="label")
    assert labels.shape == truth.shape
    assert np.allclose(labels.origin_lps_mm, truth.origin_lps_mm, atol=1e-2)
    ious = largest_per_bone_iou(truth.array, labels.array)  # the input grid, voxel for voxel
    assert ious and min(ious.values()) > 0.9, ious
    stls = sorted((job / "fragments").glob("*.stl"))
    assert len(stls) == len(np.unique(labels.array)) - 1
    assert all(mesh_inside_ct(s, ct) for s in stls)  # LPS mm, on the CT
    report = json.loads((job / "report.json").read_text())
    assert len(report["fragments"]) == len(stls)
    errors = sorted((f / "error.txt").read_text() for f in failed_jobs(cfg))
    assert any("MR" in e for e in errors) and any("no DICOM images" in e for e in errors)
    recent = service.recent_jobs()
    assert sorted(j["state"] for j in recent) == ["done", "failed", "failed"]


@pytest.mark.slow
def test_kill9_during_a_real_pipeline_job_then_restart(tmp_path):
    ct, truth, _ = oracle_case(ORACLE_SEED)
    inbox, outbox = make_dirs(tmp_path)
    write_dicom_series(ct, tmp_path / "staging" / "phantom")
    drop(tmp_path / "staging" / "phantom", inbox)
    history = inbox / ".pengwin-work" / "history.jsonl"
    args = [sys.executable, "-m", "watcher", "--inbox", str(inbox), "--outbox", str(outbox),
            "--settle-seconds", "0.3", "--process", "_helpers.watcher_jobs:oracle_pipeline_process"]
    env = watcher_env(WATCHER_TEST_PHANTOM_SEED=str(ORACLE_SEED))
    proc = subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: history.exists() and '"running"' in history.read_text(), 120)
        time.sleep(1.0)  # building the oracle and running the pipeline take several seconds
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert not outputs(outbox), "killed before the end: nothing may be in the outbox"
    result = subprocess.run(args + ["--once"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (job,) = outputs(outbox)
    labels = read_volume(job / "labels.nii.gz", kind="label")
    assert min(largest_per_bone_iou(truth.array, labels.array).values()) > 0.9
    assert not list(outbox.glob(".tmp-*"))
    assert not list((inbox / ".pengwin-work" / "jobs").iterdir())
    states = [json.loads(line)["state"] for line in history.read_text().splitlines()]
    assert states.count("running") == 2 and states.count("done") == 1
    assert os.listdir(inbox) == [".pengwin-work"]


@pytest.fixture(scope="module")
def bundled_pipeline():
    from pengwin_demo.pipeline import get_pipeline

    p = get_pipeline(device="cpu")
    try:
        p.load_models()
    except ModelError as err:
        pytest.skip(f"bundled models not available: {err}")
    return p


@pytest.mark.slow
def test_bundled_models_phantom_and_real_series_without_pelvis(tmp_path, bundled_pipeline,
                                                               siemens_series_dir_if_present):
    siemens = siemens_series_dir_if_present
    ct, _truth, _ = oracle_case(ORACLE_SEED)
    inbox, outbox = make_dirs(tmp_path)
    write_dicom_series(ct, tmp_path / "staging" / "phantom")
    n_phantom = len(list((tmp_path / "staging" / "phantom").iterdir()))
    drop(tmp_path / "staging" / "phantom", inbox)
    if siemens:
        shutil.copytree(siemens, inbox / "siemens")
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=0.5)
    counts = WatcherService(cfg, pipeline=bundled_pipeline).run_once(timeout=900)
    n_good = 2 if siemens else 1
    assert counts == {"done": n_good, "failed": 0, "left": 0, "split": 0, "retrying": 0}, [
        (f / "error.txt").read_text() for f in failed_jobs(cfg)]
    by_files = {json.loads((j / "job.json").read_text())["files"]: j for j in outputs(outbox)}
    phantom = by_files[n_phantom]
    labels = read_volume(phantom / "labels.nii.gz", kind="label")
    assert labels.shape == ct.shape
    meta = json.loads((phantom / "job.json").read_text())
    # the bootstrap demo models are weak: fragments, or a warning that says why there are none
    assert labels.array.any() or meta["warnings"], meta
    assert len(list((phantom / "fragments").glob("*.stl"))) == len(np.unique(labels.array)) - 1
    if siemens:  # upper abdomen, no pelvis: completes with a warning, not a failure
        meta = json.loads((by_files[20] / "job.json").read_text())
        assert meta["state"] == "done" and meta["warnings"], meta
