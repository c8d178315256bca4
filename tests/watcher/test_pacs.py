"""The watcher as a DICOM node: receive series by C-STORE, send the SEG back to a PACS.

Real components only: the receiver and the sender talk DICOM over loopback to pynetdicom
peers and to a real Orthanc (tests skip with the reason when the ``Orthanc`` binary is
missing); crashes are real SIGKILLs of a real ``python -m watcher`` process.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import CTImageStorage, MRImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from _helpers import dicom_factory as factory
from _helpers.orthanc import ORTHANC_BIN, SKIP_REASON, Orthanc, free_port
from pengwin_demo.dicom import load_ct
from pengwin_demo.errors import InputError
from pengwin_demo.io import read_volume
from pengwin_demo.outputs import (ENCAPSULATED_STL_STORAGE, fragment_meshes, stl_from_instance,
                                  write_dicom_seg, write_stls)
from pengwin_demo.phantom import make_phantom, write_dicom_series
from pengwin_demo.volume import Volume, resample_onto
from _helpers.watcher_jobs import REPO, make_dirs, outputs, wait_for, watcher_cmd, watcher_env
from _helpers.watcher_jobs import convert_process
from watcher import WatcherConfig, WatcherService, load_config
from watcher.arrival import InboxScanner
from watcher.dicom_node import DicomReceiver, StoreStatus
from watcher.jobs import JobStore
from watcher.send import Destination, ResultSender

needs_orthanc = pytest.mark.skipif(ORTHANC_BIN is None, reason=SKIP_REASON)


# -- helpers -----------------------------------------------------------------------
def scu(port: int, calling: str = "TESTSCU", called: str = "PENGWIN"):
    """An association from a pynetdicom SCU offering CT, MR and Verification."""
    ae = AE(ae_title=calling)
    for context in (CTImageStorage, MRImageStorage, Verification):
        ae.add_requested_context(context)
    return ae.associate("127.0.0.1", port, ae_title=called)


def node_is_up(port: int, calling: str = "TESTSCU") -> bool:
    assoc = scu(port, calling)
    if not assoc.is_established:
        return False
    ok = assoc.send_c_echo().Status == 0
    assoc.release()
    return ok


def dataset(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def staged_files(work: Path) -> list[Path]:
    return sorted((work / "dicom" / "staging").glob("s-*/*.dcm"))


def seg_labels_on(seg: pydicom.Dataset, grid: Volume) -> np.ndarray:
    """The SEG as a PENGWIN label map on ``grid`` (segment labels start with the label)."""
    seg = hd.seg.Segmentation.from_dataset(seg)
    numbers = Volume.from_sitk(seg.get_volume(combine_segments=True).to_simpleitk())
    on_grid = resample_onto(numbers, grid.with_array(np.zeros(grid.shape, np.uint8)), "nearest").array
    lut = np.zeros(256, np.uint8)
    for item in seg.SegmentSequence:
        lut[int(item.SegmentNumber)] = int(str(item.SegmentLabel)[:2])
    return lut[on_grid]


def small_job_output(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A job output folder as the pipeline writes it: a SEG and fragment STLs."""
    files = factory.write_files(factory.make_series(n_slices=24), tmp_path / "ct")
    ct = load_ct(tmp_path / "ct")
    array = np.zeros(ct.volume.shape, np.uint8)
    array[3:12, 10:30, 8:22] = 1
    array[12:20, 30:42, 5:18] = 11
    labels = ct.volume.with_array(array)
    out = tmp_path / "outbox" / "job-a"
    write_dicom_seg(labels, ct.dicom_headers, out / "segmentation.dcm")
    write_stls(fragment_meshes(labels, "coarse"), out / "fragments")
    return out, files


# -- receiver ----------------------------------------------------------------------
def test_receiver_stores_ct_refuses_other_classes_and_unknown_callers(tmp_path, caplog):
    inbox, outbox = make_dirs(tmp_path)
    port = free_port()
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=0.5, dicom_port=port,
                        dicom_host="127.0.0.1", calling_aets="TESTSCU, ORTHANC")
    JobStore(cfg).prepare()
    series = factory.make_series(n_slices=12)
    receiver = DicomReceiver.from_config(cfg)
    caplog.set_level(logging.INFO)
    receiver.start()
    try:
        assert not scu(port, calling="INTRUDER").is_established  # not on the allow-list
        assoc = scu(port)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == StoreStatus.SUCCESS
        statuses = [assoc.send_c_store(ds).Status for ds in series]
        mr_status = assoc.send_c_store(factory.mr_series(n_slices=2)[0]).Status
        assoc.release()
        assert statuses == [StoreStatus.SUCCESS] * 12
        assert mr_status == StoreStatus.REFUSED_SOP_CLASS_NOT_SUPPORTED == 0x0122
        assert wait_for(lambda: len(list(inbox.glob("dicom-*"))) == 1, 10)
        (folder,) = inbox.glob("dicom-*")
        stored = sorted(folder.glob("*.dcm"))
        assert len(stored) == 12 and (folder / "READY").is_file()
        by_uid = {ds.SOPInstanceUID: ds for ds in series}
        for path in stored:  # every instance intact, names carry no UIDs
            back = pydicom.dcmread(path)
            assert back.PixelData == by_uid[back.SOPInstanceUID].PixelData
            assert back.SOPInstanceUID not in path.name
        assert node_is_up(port)  # refusing did not hurt the node
        assert receiver.refused == 1
    finally:
        receiver.stop()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused an instance of MR Image Storage from TESTSCU" in text
    assert "12 instance(s) handed to the inbox" in text
    for ds in series[:1]:  # no identifiers in the log
        for value in (ds.PatientName, ds.PatientID, ds.SeriesInstanceUID, ds.SOPInstanceUID):
            assert str(value) not in text


def test_kill9_mid_transfer_loses_nothing_acknowledged_and_runs_the_series_once(tmp_path):
    inbox, outbox = make_dirs(tmp_path)
    work = inbox / ".pengwin-work"
    port = free_port()
    cmd = watcher_cmd(inbox, outbox, "--dicom-port", str(port), "--dicom-host", "127.0.0.1",
                      "--settle-seconds", "2")
    series = factory.make_series(n_slices=16)
    node = subprocess.Popen(cmd, cwd=REPO, env=watcher_env(), stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: node_is_up(port), 120, interval=0.5)
        assoc = scu(port)
        acked = [ds for ds in series[:7] if assoc.send_c_store(ds).Status == StoreStatus.SUCCESS]
        assert len(acked) == 7
        node.kill()  # mid-transfer: the association is still open
        node.wait(timeout=30)
        assoc.abort()
    finally:
        if node.poll() is None:
            node.kill()
    staged = {pydicom.dcmread(p).SOPInstanceUID for p in staged_files(work)}
    assert staged == {ds.SOPInstanceUID for ds in acked}  # every acknowledged image is there
    assert not outputs(outbox)

    node = subprocess.Popen(cmd, cwd=REPO, env=watcher_env(), stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: node_is_up(port), 120, interval=0.5)
        assoc = scu(port)  # the sender starts the series again: 7 repeats and 9 new
        assert all(assoc.send_c_store(ds).Status == StoreStatus.SUCCESS for ds in series)
        assoc.release()
        assert wait_for(lambda: len(outputs(outbox)) == 1, 120)
        time.sleep(3.0)  # longer than the settle time: nothing else may come
        node.terminate()
        _out, err = node.communicate(timeout=60)
    finally:
        if node.poll() is None:
            node.kill()
    (job,) = outputs(outbox)
    assert read_volume(job / "ct.nii.gz").shape[0] == 16
    assert json.loads((job / "job.json").read_text())["files"] == 16
    history = [json.loads(line) for line in (work / "history.jsonl").read_text().splitlines()]
    assert [e["state"] for e in history if "state" in e].count("done") == 1
    assert not staged_files(work) and not list(inbox.glob("dicom-*"))
    assert "staged series resumed" in err
    assert str(series[0].PatientName) not in err and str(series[0].PatientID) not in err


# -- sending -----------------------------------------------------------------------
def test_destination_and_receiver_settings_are_checked(tmp_path):
    assert Destination.parse("pacs.example.org:4242:ORTHANC") == Destination(
        "pacs.example.org", 4242, "ORTHANC")
    assert Destination.parse("[::1]:104:PACS").host == "::1"
    for bad in ("pacs:ORTHANC", "pacs:0:ORTHANC", "pacs:4242:", "pacs:4242:WAY_TOO_LONG_AE_TITLE"):
        with pytest.raises(InputError, match="HOST:PORT:AET"):
            Destination.parse(bad)
    env = {"PENGWIN_WATCHER_DICOM_PORT": "11112", "PENGWIN_WATCHER_SEND_TO": "pacs:4242:ORTHANC",
           "PENGWIN_WATCHER_SEND_STL": "yes"}
    cfg = load_config({"inbox": "in", "outbox": "out", "ae_title": "NODE1"}, environ=env)
    assert (cfg.dicom_port, cfg.send_to, cfg.send_stl, cfg.ae_title) == (
        11112, "pacs:4242:ORTHANC", True, "NODE1")
    cfg = WatcherConfig(inbox=tmp_path / "in", outbox=tmp_path / "out", dicom_port=70000)
    with pytest.raises(InputError, match="TCP port"):
        DicomReceiver.from_config(cfg)
    with pytest.raises(InputError, match="AE title"):
        DicomReceiver.from_config(cfg.with_(dicom_port=11112, ae_title="A" * 17))
    inbox, outbox = make_dirs(tmp_path)
    for extra, message in ((["--send-to", "pacs:ORTHANC"], "HOST:PORT:AET"),
                           (["--dicom-port", "11112", "--once"], "--once")):
        result = subprocess.run(watcher_cmd(inbox, outbox, *extra), cwd=REPO, env=watcher_env(),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr


@needs_orthanc
def test_failed_send_backs_off_then_reaches_orthanc_and_a_dead_pacs_ends_in_failed(tmp_path):
    job_dir, ct_files = small_job_output(tmp_path)
    inbox, outbox = make_dirs(tmp_path)
    pacs = Orthanc(tmp_path / "pacs", {})  # ports chosen, not started yet: the PACS is down
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, send_to=f"127.0.0.1:{pacs.dicom_port}:ORTHANC",
                        send_stl=True, send_retry_seconds=0.5, send_max_attempts=6)
    sender = ResultSender(cfg, record=JobStore(cfg).record)
    sender.enqueue("job-a", job_dir)
    sender.enqueue("job-a", job_dir)  # idempotent
    assert sender.run_due() == 1
    (entry,) = sender.entries()
    assert entry["attempts"] == 1 and "could not be reached" in entry["last_error"]
    assert entry["next_try"] > time.time()
    assert sender.run_due() == 0  # backing off
    assert sender.delay_after(1) == 0.5 and sender.delay_after(3) == 2.0
    pacs.start()
    try:
        assert sender.drain(timeout=60) == 0
        stls = sorted((job_dir / "fragments").glob("*.stl"))
        assert pacs.get("/statistics")["CountInstances"] == 1 + len(stls)
        (study,) = pacs.get("/studies")
        source = pydicom.dcmread(ct_files[0])
        assert pacs.get(f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"] == source.StudyInstanceUID
        by_modality = {s["MainDicomTags"]["Modality"]: s for s in pacs.series_of_study(study)}
        assert set(by_modality) == {"SEG", "M3D"}
        meshes = [dataset(pacs.instance_file(i))
                  for i in by_modality["M3D"]["Instances"]]
        assert {m.SOPClassUID for m in meshes} == {ENCAPSULATED_STL_STORAGE}
        assert sorted(stl_from_instance(m) for m in meshes) == sorted(p.read_bytes() for p in stls)
    finally:
        pacs.stop()
    history = (cfg.work / "history.jsonl").read_text()
    assert '"sent_to"' in history

    dead = cfg.with_(send_to=f"127.0.0.1:{free_port()}:NOBODY", send_retry_seconds=0.05,
                     send_max_attempts=3)
    sender = ResultSender(dead, record=JobStore(dead).record)
    sender.enqueue("job-b", job_dir)
    assert sender.drain(timeout=30) == 0
    failed = dead.failed / "send-job-b"
    error = (failed / "error.txt").read_text()
    assert "could not be reached" in error and "3 tries" in error and str(job_dir) in error
    assert json.loads((failed / "job-b.json").read_text())["output"] == str(job_dir)
    assert not sender.entries()


def test_finished_jobs_are_queued_for_sending_also_when_published_before_a_crash(tmp_path):
    inbox, outbox = make_dirs(tmp_path)
    factory.write_files(factory.make_series(n_slices=10), inbox / "s1")
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=0,
                        send_to=f"127.0.0.1:{free_port()}:PACS")
    store = JobStore(cfg)
    store.prepare()
    crashed = store.claim(InboxScanner(cfg).scan().ready[0])  # published, then killed
    tmp = store.temp_output_dir(crashed)
    convert_process(crashed.input_path, tmp)
    store.publish(crashed, tmp)
    crashed.release()
    factory.write_files(factory.make_series(n_slices=10), inbox / "s2")
    sender = ResultSender(cfg, record=store.record)
    counts = WatcherService(cfg, process=convert_process, on_done=sender.enqueue).run_once(timeout=30)
    assert counts["done"] == 1 and counts["failed"] == 0  # the crashed job was not redone
    queued = {e["job_id"]: e["output"] for e in sender.entries()}
    assert set(queued) == {p.name for p in outputs(outbox)} and crashed.job_id in queued
    assert all(Path(out).is_dir() for out in queued.values())


@needs_orthanc
def test_once_with_send_to_processes_the_inbox_and_sends_before_exit(tmp_path):
    inbox, outbox = make_dirs(tmp_path)
    files = factory.write_files(factory.make_series(n_slices=12), inbox / "series")
    study_uid = pydicom.dcmread(files[0]).StudyInstanceUID  # the files move into the job
    pacs = Orthanc(tmp_path / "pacs", {}).start()
    try:
        cmd = [sys.executable, "-m", "watcher", "--inbox", str(inbox), "--outbox", str(outbox),
               "--process", "_helpers.orthanc:seg_process", "--settle-seconds", "0", "--once",
               "--send-to", f"127.0.0.1:{pacs.dicom_port}:ORTHANC"]
        result = subprocess.run(cmd, cwd=REPO, env=watcher_env(), capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "1 done, 0 failed, 0 left in the inbox, 0 sends pending" in result.stderr
        (study,) = pacs.get("/studies")
        (series,) = pacs.series_of_study(study)
        assert series["MainDicomTags"]["Modality"] == "SEG"
        seg = dataset(pacs.instance_file(series["Instances"][0]))
        assert seg.StudyInstanceUID == study_uid
    finally:
        pacs.stop()


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy (Debian package dicom3tools) not installed")
def test_encapsulated_stl_passes_the_dicom_iod_validator(tmp_path):
    from pengwin_demo.outputs import stl_instances, write_instance

    job_dir, _ = small_job_output(tmp_path)
    seg = pydicom.dcmread(job_dir / "segmentation.dcm")
    stls = sorted((job_dir / "fragments").glob("*.stl"))
    (first, *_rest) = stl_instances(stls, seg)
    path = write_instance(first, tmp_path / "mesh.dcm")
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    report = result.stdout + result.stderr
    assert "EncapsulatedSTL" in report
    # the test series has no study date/time/ID: only DICOMDIR building would miss them
    problems = [line for line in report.splitlines() if line.startswith(("Error", "Warning"))
                and "needed to build DICOMDIR" not in line]
    assert problems == [], report
    assert stl_from_instance(pydicom.dcmread(path)) == stls[0].read_bytes()
    again = stl_instances(stls, seg)[0]  # a retried send rebuilds the same instance
    assert again.SOPInstanceUID == first.SOPInstanceUID


# -- the whole loop with Orthanc ---------------------------------------------------
def _store_in_halves(pacs: Orthanc, instances: list[str], pause_s: float) -> None:
    half = len(instances) // 2
    pacs.store("pengwin", instances[:half])
    time.sleep(pause_s)  # the transfer stops half-way; the rest arrives later
    pacs.store("pengwin", instances[half:])


@pytest.mark.slow
@needs_orthanc
def test_orthanc_sends_two_series_at_once_and_gets_the_seg_back_voxel_for_voxel(tmp_path):
    inbox, outbox = make_dirs(tmp_path)
    node_port = free_port()
    ct_a, _ = make_phantom(5, size="small")
    ct_b, _ = make_phantom(6, size="small")
    def slab(ct, z0: int, z1: int):  # 50-60 slices through the pelvis: a faster test
        return ct.crop((slice(z0, z1), slice(0, ct.shape[1]), slice(0, ct.shape[2])))

    cts = {"a": slab(ct_a, 25, 85), "b": slab(ct_b, 30, 80)}
    files = {k: write_dicom_series(ct, tmp_path / "dicom" / k, patient_index=i + 1)
             for i, (k, ct) in enumerate(cts.items())}
    pacs = Orthanc(tmp_path / "pacs", {"pengwin": ("PENGWIN", "127.0.0.1", node_port)}).start()
    cmd = [sys.executable, "-m", "watcher", "--inbox", str(inbox), "--outbox", str(outbox),
           "--dicom-port", str(node_port), "--dicom-host", "127.0.0.1", "--ae-title", "PENGWIN",
           "--calling-aets", "ORTHANC", "--send-to", f"127.0.0.1:{pacs.dicom_port}:ORTHANC",
           "--send-stl", "--send-retry-seconds", "1", "--settle-seconds", "4", "--device", "cpu"]
    log_path = tmp_path / "node.log"
    with open(log_path, "wb") as log:
        node = subprocess.Popen(cmd, cwd=REPO, env=watcher_env(), stdout=log, stderr=subprocess.STDOUT)
    back = {}
    try:
        if not wait_for(lambda: node.poll() is not None or node_is_up(node_port, "ORTHANC"), 180, 0.5):
            pytest.fail("the node did not start:\n" + log_path.read_text()[-3000:])
        if node.poll() is not None:
            text = log_path.read_text()
            if node.returncode == 2 and "model" in text.lower():
                pytest.skip(f"bundled models not available: {text[-500:]}")
            pytest.fail(text[-3000:])
        uploaded = {k: pacs.upload(paths) for k, paths in files.items()}
        studies = {k: answers[0]["ParentStudy"] for k, answers in uploaded.items()}
        a_instances = [a["ID"] for a in uploaded["a"]]
        halves = threading.Thread(target=_store_in_halves, args=(pacs, a_instances, 1.0))
        halves.start()
        pacs.store("pengwin", [uploaded["b"][0]["ParentSeries"]])  # at the same time
        halves.join()

        def by_modality(study: str) -> dict:
            return {s["MainDicomTags"]["Modality"]: s for s in pacs.series_of_study(study)}

        history_path = inbox / ".pengwin-work" / "history.jsonl"

        def n_sent() -> int:  # a job is "sent" once the SEG and every mesh were stored
            text = history_path.read_text() if history_path.exists() else ""
            return text.count('"sent_to"')

        assert wait_for(lambda: n_sent() == 2 or node.poll() is not None, 600, 2.0), \
            log_path.read_text()[-3000:]
        time.sleep(2.0)  # the node's last log lines
        for key, study in studies.items():
            series = by_modality(study)
            (seg_id,) = series["SEG"]["Instances"]
            back[key] = (dataset(pacs.instance_file(seg_id)),
                         [dataset(pacs.instance_file(i)) for i in series["M3D"]["Instances"]])
    finally:
        if node.poll() is None:
            node.terminate()
            node.wait(timeout=120)
        pacs.stop()
    log_text = log_path.read_text()

    jobs = outputs(outbox)
    assert len(jobs) == 2, log_text[-3000:]  # one job per series: the halves were not split
    by_seg_uid = {pydicom.dcmread(j / "segmentation.dcm").SOPInstanceUID: j for j in jobs}
    for key, (seg, meshes) in back.items():
        source = pydicom.dcmread(files[key][0])
        assert seg.StudyInstanceUID == source.StudyInstanceUID
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        job = by_seg_uid[seg.SOPInstanceUID]
        assert json.loads((job / "job.json").read_text())["files"] == len(files[key])
        labels = read_volume(job / "labels.nii.gz", kind="label")
        assert labels.shape == cts[key].shape
        np.testing.assert_array_equal(seg_labels_on(seg, labels), labels.array)
        stls = sorted((job / "fragments").glob("*.stl"))
        assert sorted(stl_from_instance(m) for m in meshes) == sorted(p.read_bytes() for p in stls)
    history = [json.loads(line) for line in
               (inbox / ".pengwin-work" / "history.jsonl").read_text().splitlines()]
    assert [e.get("state") for e in history].count("done") == 2
    assert sum(1 for e in history if "sent_to" in e) == 2
    for paths in files.values():
        source = pydicom.dcmread(paths[0])
        for value in (source.PatientName, source.PatientID):
            assert str(value) not in log_text


@needs_orthanc
def test_orthanc_routes_stable_ct_series_with_the_documented_lua_script(tmp_path):
    inbox, outbox = make_dirs(tmp_path)
    node_port = free_port()
    script = REPO / "deploy" / "orthanc" / "pengwin-route.lua"
    pacs = Orthanc(tmp_path / "pacs", {"pengwin": ("PENGWIN", "127.0.0.1", node_port)},
                   lua_scripts=(script,))
    cmd = watcher_cmd(inbox, outbox, "--dicom-port", str(node_port), "--dicom-host", "127.0.0.1",
                      "--calling-aets", "ORTHANC,TESTSCU", "--settle-seconds", "1")
    node = subprocess.Popen(cmd, cwd=REPO, env=watcher_env(), stderr=subprocess.DEVNULL)
    pacs.start()
    try:
        assert wait_for(lambda: node_is_up(node_port), 120, interval=0.5)
        ct = factory.write_files(factory.make_series(n_slices=14), tmp_path / "ct")
        mr = factory.write_files(factory.mr_series(n_slices=6), tmp_path / "mr")
        pacs.upload(ct + mr)  # only uploaded: Orthanc routes the CT by itself once stable
        assert wait_for(lambda: len(outputs(outbox)) == 1, 120), pacs.log_tail()
        time.sleep(4.0)  # the MR series is stable too by now: it must not have been sent
    finally:
        node.kill()
        node.wait(timeout=30)
        pacs.stop()
    (job,) = outputs(outbox)
    assert read_volume(job / "ct.nii.gz").shape[0] == 14
    assert not list(inbox.glob("dicom-*")) and not staged_files(inbox / ".pengwin-work")


@needs_orthanc
def test_orthanc_transfer_cut_by_kill9_then_sent_again_is_one_complete_job(tmp_path):
    inbox, outbox = make_dirs(tmp_path)
    work = inbox / ".pengwin-work"
    node_port = free_port()
    pacs = Orthanc(tmp_path / "pacs", {"pengwin": ("PENGWIN", "127.0.0.1", node_port)}).start()
    cmd = watcher_cmd(inbox, outbox, "--dicom-port", str(node_port), "--dicom-host", "127.0.0.1",
                      "--settle-seconds", "2")
    files = factory.write_files(factory.make_series(n_slices=120), tmp_path / "ct")
    node = None
    try:
        (series_id,) = {a["ParentSeries"] for a in pacs.upload(files)}
        node = subprocess.Popen(cmd, cwd=REPO, env=watcher_env(), stderr=subprocess.DEVNULL)
        assert wait_for(lambda: node_is_up(node_port), 120, interval=0.5)
        errors = []

        def store() -> None:
            try:
                pacs.store("pengwin", [series_id])
            except OSError as err:  # urllib's HTTPError: the store job failed
                errors.append(err)

        sending = threading.Thread(target=store)
        sending.start()
        assert wait_for(lambda: len(staged_files(work)) >= 10, 60, interval=0.02)
        node.kill()  # mid-transfer
        node.wait(timeout=30)
        sending.join(timeout=120)
        staged = staged_files(work)
        assert errors and 10 <= len(staged) < 120  # Orthanc saw the transfer fail part-way
        assert all(len(pydicom.dcmread(p).PixelData) > 0 for p in staged)  # none truncated

        node = subprocess.Popen(cmd, cwd=REPO, env=watcher_env(), stderr=subprocess.DEVNULL)
        assert wait_for(lambda: node_is_up(node_port), 120, interval=0.5)
        pacs.store("pengwin", [series_id])  # the PACS operator (or a retry) sends it again
        assert wait_for(lambda: len(outputs(outbox)) == 1, 120)
        time.sleep(3.0)  # past the settle time: no second job appears
        node.kill()
        node.wait(timeout=30)
    finally:
        if node is not None and node.poll() is None:
            node.kill()
        pacs.stop()
    (job,) = outputs(outbox)
    assert read_volume(job / "ct.nii.gz").shape[0] == 120
    states = [json.loads(line).get("state") for line in (work / "history.jsonl").read_text().splitlines()]
    assert states.count("done") == 1 and "failed" not in states
