"""kill -9 at every step of a job, a full disk, and the watcher's log.

The watcher runs as its own process (``python -m watcher --once``); a named kill point
(:mod:`watcher.faults`, ``PENGWIN_WATCHER_KILL_AT``) makes it SIGKILL itself exactly there.
After each kill the inputs must still be whole (unless that series' result is complete);
after a restart every series must have exactly one result or one failed entry, with no
temporary folders left behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from _helpers import dicom_factory as factory
from pengwin_demo.dicom import read_header
from pengwin_demo.errors import InputError
from pengwin_demo.io import read_volume
from _helpers.watcher_jobs import REPO, failed_jobs, make_dirs, outputs, watcher_env
from _helpers.watcher_jobs import convert_process
from watcher import WatcherConfig, WatcherService
from watcher.faults import Point

CONVERT = "_helpers.watcher_jobs:convert_process"
ORACLE = "_helpers.watcher_jobs:oracle_pipeline_process"


def run_watcher(inbox: Path, outbox: Path, kill_at: str | None = None, process: str = CONVERT,
                *extra: str, **env: str) -> subprocess.CompletedProcess:
    if kill_at:
        env["PENGWIN_WATCHER_KILL_AT"] = kill_at
    cmd = [sys.executable, "-m", "watcher", "--inbox", str(inbox), "--outbox", str(outbox),
           "--process", process, "--once", "--settle-seconds", "0", "--timeout", "60", *extra]
    return subprocess.run(cmd, cwd=REPO, env=watcher_env(**env), capture_output=True, text=True,
                          timeout=300)


def deliver(inbox: Path, staging: Path, form: str) -> dict[str, int]:
    """Put a delivery in the inbox; return its series (uid -> slices)."""
    if form == "loose":
        dss = factory.make_series(n_slices=11)
        for p in factory.write_files(dss, staging):
            os.rename(p, inbox / p.name)
        return {dss[0].SeriesInstanceUID: 11}
    a = factory.make_series(n_slices=12, series_number=2)
    b = factory.make_series(n_slices=16, series_number=3)
    factory.write_files(a, staging / "two_studies" / "a")
    factory.write_files(b, staging / "two_studies" / "b")
    os.rename(staging / "two_studies", inbox / "two_studies")
    return {a[0].SeriesInstanceUID: 12, b[0].SeriesInstanceUID: 16}


def instances_present(tree: Path) -> dict[str, set[str]]:
    """Series uid -> SOP instance uids of every DICOM file under ``tree`` (hidden ones too)."""
    out: dict[str, set[str]] = {}
    for p in tree.rglob("*.dcm"):
        ds, _ = read_header(p)
        if ds is not None:
            out.setdefault(str(ds.SeriesInstanceUID), set()).add(str(ds.SOPInstanceUID))
    return out


def complete_results(outbox: Path) -> list[int]:
    return sorted(read_volume(j / "ct.nii.gz").shape[0] for j in outputs(outbox)
                  if (j / "job.json").is_file())


def assert_nothing_lost(inbox: Path, outbox: Path, series: dict[str, int]) -> None:
    """Each series is whole in the inbox/work area, or its result is complete."""
    present = instances_present(inbox)
    done = complete_results(outbox)
    for uid, n in series.items():
        assert len(present.get(uid, ())) == n or n in done, (uid, n, done)


def assert_exactly_once(inbox: Path, outbox: Path, series: dict[str, int]) -> None:
    cfg = WatcherConfig(inbox=inbox, outbox=outbox)
    assert complete_results(outbox) == sorted(series.values())
    assert not failed_jobs(cfg)
    assert not list(outbox.glob(".tmp-*")) and not any(outbox.rglob("*.tmp"))
    assert not list((cfg.work / "jobs").iterdir())
    assert not [p for p in inbox.iterdir() if not p.name.startswith(".")]


KILL_POINTS = [
    ("loose", Point.ARRIVAL.value), ("loose", Point.CLAIM.value), ("folder", Point.CLAIM.value),
    ("folder", Point.CLAIMED.value), ("folder", Point.SPLIT.value),
    ("folder", "stage:load"), ("folder", "stage:labels"), ("folder", "stage:report"),
    ("folder", Point.OUTPUTS.value), ("folder", Point.PUBLISH.value),
    ("folder", Point.PUBLISHED.value),
]


@pytest.mark.parametrize("form, point", KILL_POINTS, ids=[f"{f}-{p}" for f, p in KILL_POINTS])
def test_kill9_at_each_step_loses_and_duplicates_nothing(tmp_path, form, point):
    inbox, outbox = make_dirs(tmp_path)
    series = deliver(inbox, tmp_path / "staging", form)
    killed = run_watcher(inbox, outbox, point)
    assert killed.returncode == -9, killed.stderr  # it did reach the point
    assert_nothing_lost(inbox, outbox, series)
    restarted = run_watcher(inbox, outbox)
    assert restarted.returncode == 0, restarted.stderr
    assert_exactly_once(inbox, outbox, series)
    again = run_watcher(inbox, outbox)  # a further restart finds nothing to do
    assert again.returncode == 0 and complete_results(outbox) == sorted(series.values())


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["load", "models", "anatomy", "abbc", "recovery", "labels",
                                   "meshes", "report"])
def test_kill9_in_each_stage_of_the_real_pipeline(tmp_path, stage):
    from pengwin_demo.phantom import make_phantom
    from pengwin_demo.phantom import write_dicom_series

    inbox, outbox = make_dirs(tmp_path)
    ct, _labels = make_phantom(5, size="small")
    write_dicom_series(ct, tmp_path / "staging" / "phantom")
    os.rename(tmp_path / "staging" / "phantom", inbox / "phantom")
    env = {"WATCHER_TEST_PHANTOM_SEED": "5"}
    killed = run_watcher(inbox, outbox, f"stage:{stage}", ORACLE, **env)
    assert killed.returncode == -9, killed.stderr
    assert not outputs(outbox) and len(list((inbox / ".pengwin-work" / "jobs").iterdir())) == 1
    restarted = run_watcher(inbox, outbox, None, ORACLE, **env)
    assert restarted.returncode == 0, restarted.stderr
    (result,) = outputs(outbox)
    report = json.loads((result / "report.json").read_text())
    assert report["n_fragments"] > 0 and (result / "labels.nii.gz").is_file()
    assert not list(outbox.glob(".tmp-*")) and not failed_jobs(WatcherConfig(inbox=inbox, outbox=outbox))


def test_a_job_interrupted_twice_is_failed_as_an_interruption(tmp_path):
    inbox, outbox = make_dirs(tmp_path)
    deliver(inbox, tmp_path / "staging", "loose")
    for _ in range(2):
        assert run_watcher(inbox, outbox, "stage:load").returncode == -9
    final = run_watcher(inbox, outbox)
    assert final.returncode == 0, final.stderr
    (failed,) = failed_jobs(WatcherConfig(inbox=inbox, outbox=outbox))
    meta = json.loads((failed / "job.json").read_text())
    assert meta["failure"] == "interrupted" and "interrupted 2 times" in meta["error"]
    assert "failed (interrupted)" in final.stderr and "input error" not in final.stderr
    assert len(list((failed / "input" / "series").iterdir())) == 11


# -- a full disk ------------------------------------------------------------------------
@pytest.fixture
def tiny_outbox(tmp_path):
    """An outbox on a 16 KiB tmpfs where the machine allows mounting, else None."""
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    mounted = os.geteuid() == 0 and shutil.which("mount") and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(outbox)],
        capture_output=True).returncode == 0
    yield outbox if mounted else None
    if mounted:
        subprocess.run(["umount", "-l", str(outbox)], check=False)


def _fake_full_disk(input_path: Path, out_dir: Path):
    """A real write that fails as a full disk does (where no small disk can be mounted)."""
    (Path(out_dir) / "ct.nii.gz").write_bytes(b"partial")
    raise OSError(28, "No space left on device")


def test_a_full_disk_leaves_the_job_queued_for_a_retry(tmp_path, tiny_outbox):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    series = deliver(inbox, tmp_path / "staging", "folder")
    outbox = tiny_outbox or tmp_path / "outbox"
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=0, retry_seconds=3600)
    process = convert_process if tiny_outbox else _fake_full_disk
    counts = WatcherService(cfg, process=process).run_once(timeout=60)
    assert counts["done"] == 0 and counts["failed"] == 0 and counts["retrying"] >= 1
    queued = sorted((cfg.work / "jobs").iterdir())
    assert queued and not failed_jobs(cfg) and not list(outbox.glob(".tmp-*"))
    for job in queued:
        meta = json.loads((job / "job.json").read_text())
        assert meta["state"] == "retrying" and "no space left" in meta["error"]
        assert meta["attempts"] == 0  # not counted as an interruption
    assert_nothing_lost(inbox, outbox, series)
    if tiny_outbox:
        subprocess.run(["umount", "-l", str(tiny_outbox)], check=True)  # space is back
    counts = WatcherService(cfg, process=convert_process).run_once(timeout=60)
    assert counts["done"] == 2
    assert_exactly_once(inbox, outbox, series)


# -- the log -----------------------------------------------------------------------------
def test_the_log_has_one_line_per_event_and_no_identifiers(tmp_path):
    """A phantom series with a patient name, ids, dates and UIDs through the real pipeline."""
    from pengwin_demo.phantom import make_phantom
    from pengwin_demo.phantom import write_dicom_series

    inbox, outbox = make_dirs(tmp_path)
    ct, _ = make_phantom(5, size="small")
    files = write_dicom_series(ct, tmp_path / "staging" / "phantom")
    secrets = {"name": "Mustermann^Erika", "id": "PAT-4711-X", "birth": "19630812",
               "accession": "ACC99887766"}
    uids = set()
    for p in files:
        ds = pydicom.dcmread(p)
        ds.PatientName, ds.PatientID = secrets["name"], secrets["id"]
        ds.PatientBirthDate, ds.AccessionNumber = secrets["birth"], secrets["accession"]
        ds.StudyDate = ds.SeriesDate = "20240229"
        ds.save_as(p)
        uids |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    scout = factory.localizer(study_uid=str(ds.StudyInstanceUID))  # listed in the report
    for d in scout:
        d.PatientName = secrets["name"]
        uids.add(str(d.SeriesInstanceUID))
    factory.write_files(scout, tmp_path / "staging" / "phantom" / "scout")
    os.rename(tmp_path / "staging" / "phantom", inbox / "Mustermann_Erika")
    result = run_watcher(inbox, outbox, None, ORACLE, WATCHER_TEST_PHANTOM_SEED="5")
    assert result.returncode == 0, result.stderr
    log = result.stderr + result.stdout
    lines = [ln for ln in log.splitlines() if ln.strip()]
    for word in [*secrets.values(), "Mustermann", "Erika", "2024", *uids]:
        assert word not in log, word
    assert all(re.match(r"^\S+ \S+ (INFO|WARNING) watcher: ", ln) for ln in lines), lines
    events = [ln for ln in lines if " job " in ln]
    assert [re.search(r"job \S+ (\w+)", ln).group(1) for ln in events] == ["received", "started", "done"]
    (out,) = outputs(outbox)
    (unused,) = json.loads((out / "report.json").read_text())["series"]["not_used"]
    assert unused["n_slices"] == 2 and "localizer" in unused["reason"]
    job_log = (out / "job.log").read_text()
    assert "pengwin_demo" in job_log  # the pipeline's detail, with the result
    for word in [*secrets.values(), "Mustermann", *uids]:
        assert word not in job_log, word


def test_a_work_area_on_another_filesystem_is_refused_before_anything_is_made(tmp_path):
    other = tmp_path / "other_fs"
    other.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs",
                                            str(other)], capture_output=True).returncode:
        pytest.skip("mounting a second filesystem is not allowed here")
    try:
        inbox, outbox = make_dirs(tmp_path)
        cfg = WatcherConfig(inbox=inbox, outbox=outbox, work=other / "work")
        with pytest.raises(InputError, match="another filesystem"):
            WatcherService(cfg, process=convert_process).run_once(timeout=5)
        assert not (other / "work").exists() and not outbox.exists()
        assert not [p for p in inbox.iterdir()]  # the probe is gone too
    finally:
        subprocess.run(["umount", "-l", str(other)], check=False)
