"""Watcher on the real filesystem with real watchdog observers.

The jobs run :func:`_helpers.watcher_jobs.convert_process` (the real DICOM loader, writing
``ct.nii.gz``), so arrival, claiming, settling, atomic outputs, failure and recovery are
checked on actual series; tests/watcher/test_watcher_pipeline.py runs the full pipeline.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pengwin_demo.errors import InputError
from pengwin_demo.io import read_volume
from watcher import WatcherConfig, WatcherService, load_config
from watcher.arrival import InboxScanner
from watcher.jobs import JobStore

from _helpers import dicom_factory as factory
from _helpers.watcher_jobs import (
    REPO,
    convert_process,
    drop,
    failed_jobs,
    make_dirs,
    outputs,
    wait_for,
    watcher_cmd,
    watcher_env,
)



def series_files(folder: Path, n_slices: int, **kw) -> list[Path]:
    return factory.write_files(factory.make_series(n_slices=n_slices, **kw), folder)


def slices_out(job_dir: Path) -> int:
    return read_volume(job_dir / "ct.nii.gz").shape[0]





# -- configuration -----------------------------------------------------------------
def test_config_sources_and_validation(tmp_path):
    conf = tmp_path / "watcher.toml"
    conf.write_text('[watcher]\ninbox = "/srv/in"\noutbox = "/srv/out"\nsettle_seconds = 45\npolling = true\n')
    env = {"PENGWIN_WATCHER_SETTLE_SECONDS": "12", "PENGWIN_WATCHER_CONFIG": str(conf)}
    cfg = load_config({"settle_seconds": None, "outbox": "/data/out"}, environ=env)
    assert cfg.inbox == Path("/srv/in")          # from the file
    assert cfg.polling is True                   # from the file
    assert cfg.settle_seconds == 12.0            # environment beats file
    assert cfg.outbox == Path("/data/out")       # command line beats both
    assert cfg.work == Path("/srv/in/.pengwin-work") and cfg.failed == cfg.work / "failed"
    assert load_config({"inbox": "a", "outbox": "b", "settle_seconds": 3}, environ={}).settle_seconds == 3
    shared = {"PENGWIN_INBOX": "/x/in", "PENGWIN_OUTBOX": "/x/out", "PENGWIN_POLLING": "1",
              "PENGWIN_WATCHER_OUTBOX": "/y/out"}       # the app's variables work too
    cfg = load_config({}, environ=shared)
    assert (cfg.inbox, cfg.outbox, cfg.polling) == (Path("/x/in"), Path("/y/out"), True)
    with pytest.raises(InputError, match="inbox"):
        load_config({}, environ={})
    with pytest.raises(InputError, match="outbox"):
        WatcherConfig(inbox=tmp_path / "in", outbox=tmp_path / "out", failed=tmp_path / "out" / "failed")
    with pytest.raises(InputError, match="separate"):
        WatcherConfig(inbox=tmp_path / "in", outbox=tmp_path / "in" / "out")
    with pytest.raises(InputError, match="not a valid"):
        load_config({"inbox": "a", "outbox": "b"}, environ={"PENGWIN_WATCHER_SETTLE_SECONDS": "soon"})


def test_work_area_on_another_filesystem_is_refused(tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) to test a cross-device work area")
    inbox, outbox = make_dirs(tmp_path)
    work = shm / f"pengwin-watcher-test-{os.getpid()}"
    try:
        cfg = WatcherConfig(inbox=inbox, outbox=outbox, work=work)
        with pytest.raises(InputError, match="another filesystem"):
            WatcherService(cfg, process=convert_process).run_once(timeout=1)
        assert [p.name for p in inbox.iterdir()] == []  # the probe is cleaned up
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_cli_refuses_bad_settings_with_exit_2(tmp_path):
    result = subprocess.run(watcher_cmd(tmp_path / "missing", tmp_path / "out", "--once"),
                            cwd=REPO, env=watcher_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "inbox" in result.stderr and "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


# -- arrival -----------------------------------------------------------------------
@pytest.mark.parametrize("polling", [False, True], ids=["native", "polling"])
def test_slow_copy_is_not_picked_up_early(tmp_path, polling):
    """A series copied file by file with pauses shorter than the settle time arrives whole."""
    inbox, outbox = make_dirs(tmp_path)
    source = tmp_path / "source"
    files = series_files(source, 12)
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=1.0, polling=polling)
    service = WatcherService(cfg, process=convert_process).start()
    try:
        target = inbox / "series"
        target.mkdir()
        for path in files:
            # each file is itself written in two halves, as a slow copy does
            data = path.read_bytes()
            with open(target / path.name, "wb") as fh:
                fh.write(data[: len(data) // 2])
                fh.flush()
                time.sleep(0.15)
                fh.write(data[len(data) // 2:])
            time.sleep(0.25)
            assert target.is_dir(), "the series was claimed while it was still being copied"
            assert not outputs(outbox) and not failed_jobs(cfg)
        assert wait_for(lambda: len(outputs(outbox)) == 1, 30)
    finally:
        service.stop(timeout=30)
    (job,) = outputs(outbox)
    assert slices_out(job) == 12
    meta = json.loads((job / "job.json").read_text())
    assert meta["state"] == "done" and meta["files"] == 12 and meta["kind"] == "folder"
    received = service.recent_jobs()[0]
    assert received["job_id"] == job.name and received["state"] == "done"
    assert not target.exists() and not failed_jobs(cfg)
    assert not list(outbox.glob(".tmp-*"))


def test_marker_ends_the_wait_and_settle_holds_otherwise(tmp_path):
    inbox, outbox = make_dirs(tmp_path)
    series_files(inbox / "with_marker", 11)
    (inbox / "with_marker" / "READY").write_text("")
    series_files(inbox / "zipped_src", 10)
    factory.zip_folder(inbox / "zipped_src", tmp_path / "study.zip")
    shutil.rmtree(inbox / "zipped_src")
    shutil.copy(tmp_path / "study.zip", inbox / "study.zip")
    (inbox / "study.zip.ready").write_text("")
    series_files(inbox / "no_marker", 12)
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=600)
    counts = WatcherService(cfg, process=convert_process).run_once(timeout=3)
    assert counts == {"done": 2, "failed": 0, "left": 1, "split": 0, "retrying": 0}
    assert sorted(slices_out(j) for j in outputs(outbox)) == [10, 11]
    assert (inbox / "no_marker").is_dir()            # still settling: untouched
    assert not (inbox / "study.zip.ready").exists()  # marker consumed with its item
    assert sorted(p.name for p in inbox.iterdir()) == [".pengwin-work", "no_marker"]


def test_real_series_as_folder_zip_and_loose_files_present_at_start(tmp_path, siemens_series_dir):
    inbox, outbox = make_dirs(tmp_path)
    shutil.copytree(siemens_series_dir, inbox / "siemens")
    factory.zip_folder(siemens_series_dir, inbox / "siemens.zip")
    for path in sorted(siemens_series_dir.iterdir()):          # loose files of the real series
        shutil.copy(path, inbox / path.name)
    series_files(tmp_path / "phantom", 14)          # and loose files of a second series
    for path in (tmp_path / "phantom").iterdir():
        shutil.copy(path, inbox / f"ph-{path.name}")
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=0.5)
    counts = WatcherService(cfg, process=convert_process).run_once(timeout=60)
    assert counts == {"done": 4, "failed": 0, "left": 0, "split": 0, "retrying": 0}
    jobs = outputs(outbox)
    kinds = sorted(json.loads((j / "job.json").read_text())["kind"] for j in jobs)
    assert kinds == ["files", "files", "folder", "zip"]
    shapes = sorted(read_volume(j / "ct.nii.gz").shape for j in jobs)
    assert shapes == [(14, 48, 40)] + [(20, 512, 512)] * 3
    assert [p.name for p in inbox.iterdir()] == [".pengwin-work"]
    # the real series loads identically from every form it arrived in
    arrays = [read_volume(j / "ct.nii.gz").array for j in jobs if read_volume(j / "ct.nii.gz").shape[0] == 20]
    assert all(np.array_equal(arrays[0], a) for a in arrays[1:])


# -- failure -----------------------------------------------------------------------
def test_junk_goes_to_failed_with_inputs_intact_and_the_service_keeps_running(tmp_path, caplog):
    inbox, outbox = make_dirs(tmp_path)
    staging = tmp_path / "staging"
    (staging / "notes").mkdir(parents=True)
    (staging / "notes" / "readme.txt").write_text("not a CT")
    paths = series_files(staging / "truncated", 12)
    data = paths[5].read_bytes()
    paths[5].write_bytes(data[: len(data) // 2])
    factory.write_files(factory.mr_series(n_slices=12), staging / "mr")
    (staging / "nothing_here").mkdir()
    (staging / "loose.pdf").write_bytes(b"%PDF-1.4 not dicom")
    series_files(staging / "good", 10)
    before = {p.relative_to(staging): p.read_bytes() for p in staging.rglob("*") if p.is_file()}
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=0.3, empty_grace_seconds=0.5)
    service = WatcherService(cfg, process=convert_process).start()
    try:
        for entry in sorted(staging.iterdir()):
            drop(entry, inbox)
        assert wait_for(lambda: len(failed_jobs(cfg)) == 5 and len(outputs(outbox)) == 1, 60)
        assert service.running
    finally:
        service.stop(timeout=30)
    (good,) = outputs(outbox)
    assert slices_out(good) == 10
    after = {}
    for job in failed_jobs(cfg):
        text = (job / "error.txt").read_text()
        assert "What was wrong" in text and "What to do" in text
        for p in (job / "input").rglob("*"):
            if p.is_file():
                rel = p.relative_to(job / "input")
                after[rel if rel.parts[0] != "unreadable" else Path(*rel.parts[1:])] = p.read_bytes()
    good_files = {k for k in before if k.parts[0] == "good"}
    assert after == {k: v for k, v in before.items() if k not in good_files}  # byte for byte
    errors = {j["kind"] + ":" + (j["error"] or "") for j in service.recent_jobs() if j["state"] == "failed"}
    assert any("modality MR" in e or "MR study" in e for e in errors), errors
    assert any("cannot be decoded" in e for e in errors), errors
    assert any(e.startswith("unreadable:") for e in errors)
    assert any("empty" in e for e in errors)
    assert not list(outbox.glob(".*")), "nothing of a failed job may appear in the outbox"
    assert [p.name for p in inbox.iterdir()] == [".pengwin-work"]
    assert "Traceback" not in caplog.text


def test_a_crashing_process_is_failed_with_traceback_and_next_job_runs(tmp_path):
    inbox, outbox = make_dirs(tmp_path)
    series_files(inbox / "a_first", 10)
    series_files(inbox / "b_second", 11)
    calls = []

    def process(input_path: Path, out_dir: Path):
        calls.append(input_path.name)
        if len(calls) == 1:
            (out_dir / "partial.txt").write_text("half")
            raise MemoryError("simulated")
        return convert_process(input_path, out_dir)

    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=0.2)
    counts = WatcherService(cfg, process=process).run_once(timeout=30)
    assert counts == {"done": 1, "failed": 1, "left": 0, "split": 0, "retrying": 0}
    (failed,) = failed_jobs(cfg)
    text = (failed / "error.txt").read_text()
    assert "MemoryError" in text and "Traceback" in text
    assert (failed / "input" / calls[0]).is_dir()
    assert len(outputs(outbox)) == 1 and not list(outbox.glob(".tmp-*"))


# -- exactly once ------------------------------------------------------------------
def test_two_series_at_once(tmp_path):
    inbox, outbox = make_dirs(tmp_path)
    sources = {n: series_files(tmp_path / f"src{n}", n) for n in (10, 13)}
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=0.8)
    service = WatcherService(cfg, process=convert_process).start()

    def copy_slowly(n: int) -> None:
        target = inbox / f"series{n}"
        target.mkdir()
        for path in sources[n]:
            shutil.copy(path, target / path.name)
            time.sleep(0.1)

    try:
        threads = [threading.Thread(target=copy_slowly, args=(n,)) for n in sources]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert wait_for(lambda: len(outputs(outbox)) == 2, 30)
    finally:
        service.stop(timeout=30)
    assert sorted(slices_out(j) for j in outputs(outbox)) == [10, 13]
    assert not failed_jobs(cfg)


def test_claim_is_exclusive_between_stores(tmp_path):
    """Many concurrent claims of one settled item: exactly one wins, nothing is lost."""
    inbox, outbox = make_dirs(tmp_path)
    series_files(inbox / "s", 10)
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=0)
    stores = [JobStore(cfg) for _ in range(6)]
    stores[0].prepare()
    (item,) = InboxScanner(cfg).scan().ready
    results, barrier = [], threading.Barrier(len(stores))

    def claim(store):
        barrier.wait()
        results.append(store.claim(item))

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [j for j in results if j is not None]
    assert len(won) == 1
    assert len(list((won[0].input_path).iterdir())) == 10
    assert [p.name for p in (cfg.work / "jobs").iterdir()] == [won[0].job_id]
    won[0].release()


def test_two_watcher_processes_on_one_inbox(tmp_path):
    inbox, outbox = make_dirs(tmp_path)
    sizes = [10, 11, 12, 13, 14]
    staging = tmp_path / "staging"
    for n in sizes:
        series_files(staging / f"series{n}", n)
    env = watcher_env(WATCHER_TEST_DELAY_S="0.5")
    args = watcher_cmd(inbox, outbox, "--settle-seconds", "0.5")
    procs = [subprocess.Popen(args, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    try:
        assert wait_for(lambda: (inbox / ".pengwin-work" / "status.json").exists(), 60)
        for n in sizes:
            drop(staging / f"series{n}", inbox)
        done = wait_for(lambda: len(outputs(outbox)) == len(sizes), 90)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        logs = [p.communicate(timeout=60)[1] for p in procs]
    assert done, logs
    assert all(p.returncode == 0 for p in procs), logs
    assert sorted(slices_out(j) for j in outputs(outbox)) == sizes  # each exactly once
    pids = {json.loads((j / "report.json").read_text())["pid"] for j in outputs(outbox)}
    assert pids <= {p.pid for p in procs}
    assert not list((inbox / ".pengwin-work" / "jobs").iterdir())
    assert sum(log.count(" done in ") for log in logs) == len(sizes)


def test_kill9_during_a_job_then_restart_redoes_it_once(tmp_path):
    inbox, outbox = make_dirs(tmp_path)
    series_files(tmp_path / "staging" / "series", 12)
    drop(tmp_path / "staging" / "series", inbox)
    started = tmp_path / "started"
    env = watcher_env(WATCHER_TEST_DELAY_S="60", WATCHER_TEST_STARTED_FILE=str(started))
    proc = subprocess.Popen(watcher_cmd(inbox, outbox, "--settle-seconds", "0.3"), cwd=REPO, env=env,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_for(started.exists, 60), "the job never started"
    finally:
        proc.kill()  # SIGKILL: no clean-up of any kind
        proc.wait(timeout=30)
    jobs_dir = inbox / ".pengwin-work" / "jobs"
    (job_dir,) = list(jobs_dir.iterdir())
    assert not outputs(outbox), "a half-written job must never appear in the outbox"
    assert (outbox / f".tmp-{job_dir.name}" / "ct.nii.gz").exists()  # it was half written
    assert len(list((job_dir / "input" / "series").iterdir())) == 12

    result = subprocess.run(watcher_cmd(inbox, outbox, "--settle-seconds", "0.3", "--once"),
                            cwd=REPO, env=watcher_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "recovered" in result.stderr
    (out,) = outputs(outbox)
    assert out.name == job_dir.name
    assert sorted(p.name for p in out.iterdir()) == ["ct.nii.gz", "job.json", "report.json"]
    assert slices_out(out) == 12
    assert not list(outbox.glob(".tmp-*")) and not list(jobs_dir.iterdir())
    history = [json.loads(line) for line in (inbox / ".pengwin-work" / "history.jsonl").read_text().splitlines()]
    assert [e.get("attempt") for e in history if e["state"] == "running"] == [1, 2]
    assert [e["state"] for e in history].count("done") == 1

    # a second restart finds nothing to do: no duplicates
    again = subprocess.run(watcher_cmd(inbox, outbox, "--settle-seconds", "0.3", "--once"),
                           cwd=REPO, env=watcher_env(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and len(outputs(outbox)) == 1


def test_job_interrupted_too_often_goes_to_failed(tmp_path):
    """An orphan that used up its attempts is failed, not retried forever."""
    inbox, outbox = make_dirs(tmp_path)
    series_files(inbox / "s", 10)
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=0, max_attempts=1)
    store = JobStore(cfg)
    store.prepare()
    (item,) = InboxScanner(cfg).scan().ready
    job = store.claim(item)
    job.meta.update(attempts=1, state="running")  # as a process killed in attempt 1 left it
    job.save()
    job.release()                                  # its lock dies with the process
    counts = WatcherService(cfg, process=convert_process).run_once(timeout=10)
    assert counts["failed"] == 1 and not outputs(outbox)
    (failed,) = failed_jobs(cfg)
    assert "interrupted 1 times" in (failed / "error.txt").read_text()
    assert len(list((failed / "input" / "s").iterdir())) == 10


def test_outputs_already_published_are_not_redone(tmp_path):
    """Killed after the outbox rename but before clean-up: restart finishes, no rerun."""
    inbox, outbox = make_dirs(tmp_path)
    series_files(inbox / "s", 10)
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=0)
    store = JobStore(cfg)
    store.prepare()
    job = store.claim(InboxScanner(cfg).scan().ready[0])
    tmp = store.temp_output_dir(job)
    convert_process(job.input_path, tmp)
    store.publish(job, tmp)
    job.release()
    calls = []
    counts = WatcherService(cfg, process=lambda i, o: calls.append(i)).run_once(timeout=10)
    assert calls == [] and counts["failed"] == 0
    assert len(outputs(outbox)) == 1 and not list((cfg.work / "jobs").iterdir())


# -- operations --------------------------------------------------------------------
class _SharedPipeline:
    """Anything with the pipeline's ``run`` signature, as the app passes its own."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = 0

    def run(self, input_path, out_dir, *, progress=None, series_uid=None, dicom_seg=False):
        with self.lock:
            self.calls += 1
            return convert_process(input_path, out_dir)


def test_shared_pipeline_status_and_no_patient_identifiers(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    inbox, outbox = make_dirs(tmp_path)
    name = "Doe^Jane^Q_PID-8675309"            # folder named after the patient, as happens
    series_files(tmp_path / "staging" / name, 10, description="Pelvis 2.0")
    (tmp_path / "staging" / "Doe^Jane^Q_MR").mkdir()
    factory.write_files(factory.mr_series(n_slices=10), tmp_path / "staging" / "Doe^Jane^Q_MR")
    pipeline = _SharedPipeline()
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=0.3)
    service = WatcherService(cfg, pipeline=pipeline).start()
    try:
        for entry in (tmp_path / "staging").iterdir():
            drop(entry, inbox)
        assert wait_for(lambda: len(service.recent_jobs()) == 2
                        and all(j["state"] in ("done", "failed") for j in service.recent_jobs()), 30)
    finally:
        service.stop(timeout=30)
    assert pipeline.calls == 2
    jobs = service.recent_jobs()
    assert sorted(j["state"] for j in jobs) == ["done", "failed"]
    for j in jobs:
        assert set(j) >= {"job_id", "state", "received", "started", "finished", "seconds", "error"}
        assert j["seconds"] is not None and j["received"] <= j["started"] <= j["finished"]
    status = json.loads((cfg.work / "status.json").read_text())
    assert status["running"] == [] and status["inbox_waiting"] == []
    texts = [caplog.text, (cfg.work / "status.json").read_text(), (cfg.work / "history.jsonl").read_text()]
    texts += [p.read_text() for p in outbox.rglob("job.json")]
    texts += [j["job_id"] for j in jobs]
    for text in texts:
        assert "Doe" not in text and "8675309" not in text
