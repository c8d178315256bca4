"""Results back to the PACS: C-STORE each finished job's DICOM SEG (and meshes).

A job that finishes is queued as ``<work>/send/<job-id>.json`` (before its job folder is
removed, so a crash cannot skip it: a recovered job whose outputs were complete is queued
again, and queuing is idempotent). A background thread sends due entries: the SEG of
``<outbox>/<job-id>/segmentation.dcm`` and, with ``send_stl``, every fragment STL wrapped
as Encapsulated STL (:mod:`pengwin_demo.outputs.stl_dicom`). The SEG copies the source CT's
study, so the PACS files it under that study and a viewer overlays it on the CT.

A failed send is retried after ``send_retry_seconds``, doubling each time (at most one
hour), and after ``send_max_attempts`` tries the entry moves to
``<failed>/send-<job-id>/`` with an ``error.txt`` that gives the reason; it is never
dropped. Retry state is on disk, so back-off and attempt counts survive restarts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from pengwin_demo.errors import InputError

from .config import WatcherConfig
from .jobs import fsync_dir, iso, write_json_atomic

log = logging.getLogger("watcher.send")

MAX_RETRY_DELAY_S = 3600.0
SEG_NAME = "segmentation.dcm"


class SendError(Exception):
    """A send failed; the message says where and why (no patient data)."""


@dataclass(frozen=True)
class Destination:
    """A DICOM node to send to, from ``HOST:PORT:AET``."""

    host: str
    port: int
    ae_title: str

    @classmethod
    def parse(cls, text: str) -> "Destination":
        host, sep, rest = text.strip().rpartition(":")  # AET last: a host may hold ':' (IPv6)
        host, sep2, port = host.rpartition(":")
        try:
            port_n = int(port)
        except ValueError:
            port_n = -1
        if not (sep and sep2 and host and rest) or not 0 < port_n < 65536 or len(rest) > 16:
            raise InputError(
                f"--send-to {text!r}: expected HOST:PORT:AET, e.g. pacs.example.org:4242:ORTHANC "
                "(port 1-65535, AE title at most 16 characters)."
            )
        return cls(host.strip("[]"), port_n, rest)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def result_datasets(output_dir: Path, with_stl: bool) -> list[Dataset]:
    """The DICOM instances to send for one job: its SEG, then its meshes (if asked).

    Empty when the job wrote no SEG (no fragments found, or input that was not DICOM).
    Raises FileNotFoundError when the job's output folder is gone.
    """
    if not Path(output_dir).is_dir():
        raise FileNotFoundError(f"the job's output folder {output_dir} is gone")
    seg_path = Path(output_dir) / SEG_NAME
    if not seg_path.is_file():
        return []
    seg = pydicom.dcmread(seg_path)
    out = [seg]
    if with_stl:
        from pengwin_demo.outputs import stl_instances

        out += stl_instances(sorted((Path(output_dir) / "fragments").glob("*.stl")), seg)
    return out


def c_store(destination: Destination, datasets: list[Dataset], calling_aet: str,
            timeout_s: float = 60.0) -> None:
    """Send ``datasets`` over one association; raise :class:`SendError` on any failure.

    Warning statuses (0xB000-0xBFFF: stored with coercion) count as stored.
    """
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        why = "rejected the association" if assoc.is_rejected else "could not be reached"
        raise SendError(f"{destination} {why}")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = status.get("Status") if status else None
            if code is None:
                raise SendError(f"{destination}: the connection was lost during the transfer")
            if code != 0x0000 and not 0xB000 <= code <= 0xBFFF:
                raise SendError(f"{destination} refused a {ds.SOPClassUID.name} instance "
                                f"(status 0x{code:04X})")
    finally:
        if assoc.is_established:
            assoc.release()


class ResultSender:
    """Queue on disk + background thread that C-STOREs finished jobs' results.

    Parameters
    ----------
    config : WatcherConfig
        ``send_to``, ``ae_title``, ``send_stl``, ``send_max_attempts``,
        ``send_retry_seconds``, ``work`` and ``failed`` are used.
    record : callable, optional
        ``record(event_dict)`` for the job history (:meth:`JobStore.record`).
    """

    def __init__(self, config: WatcherConfig, record: Callable[[dict], None] | None = None,
                 clock=time.time):
        self.destination = Destination.parse(config.send_to)
        self.config = config
        self.queue_dir = config.work / "send"
        self.failed_dir = config.failed
        self._record = record or (lambda event: None)
        self._clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the queue --------------------------------------------------------------------
    def enqueue(self, job_id: str, output_dir: Path) -> None:
        """Queue a finished job (idempotent; a queued job keeps its attempts)."""
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        path = self.queue_dir / f"{job_id}.json"
        if path.exists():
            return
        entry = {"job_id": job_id, "output": str(output_dir), "attempts": 0,
                 "next_try": 0.0, "queued": iso(self._clock()), "last_error": None}
        write_json_atomic(path, entry)
        fsync_dir(self.queue_dir)
        self._wake.set()

    def entries(self) -> list[dict]:
        out = []
        for path in sorted(self.queue_dir.glob("*.json")):
            try:
                out.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                log.warning("send queue entry %s is unreadable; skipped", path.name)
        return out

    def delay_after(self, attempts: int) -> float:
        """Seconds to wait after ``attempts`` failed tries (exponential back-off)."""
        base = max(float(self.config.send_retry_seconds), 0.0)
        return min(base * 2 ** max(attempts - 1, 0), MAX_RETRY_DELAY_S)

    # -- sending ----------------------------------------------------------------------
    def run_due(self) -> int:
        """Try every entry whose back-off has passed; return how many were tried."""
        now = self._clock()
        tried = 0
        for entry in self.entries():
            if self._stop.is_set():
                break
            if float(entry.get("next_try", 0)) <= now:
                self._send_entry(entry)
                tried += 1
        return tried

    def _send_entry(self, entry: dict) -> None:
        job_id = entry["job_id"]
        try:
            datasets = result_datasets(Path(entry["output"]), self.config.send_stl)
            if datasets:
                c_store(self.destination, datasets, self.config.ae_title)
        except SendError as err:
            self._failed_try(entry, str(err))
            return
        except (OSError, InputError, InvalidDicomError) as err:  # outputs unreadable
            self._failed_try(entry, f"{type(err).__name__}: {err}")
            return
        (self.queue_dir / f"{job_id}.json").unlink(missing_ok=True)
        if not datasets:
            log.info("job %s: no DICOM SEG (no fragments, or not DICOM input); nothing sent", job_id)
            return
        self._record({"job_id": job_id, "sent": iso(self._clock()), "sent_to": str(self.destination)})
        log.info("job %s: %d instance(s) sent to %s", job_id, len(datasets), self.destination)

    def _failed_try(self, entry: dict, reason: str) -> None:
        entry["attempts"] = int(entry.get("attempts", 0)) + 1
        entry["last_error"] = reason
        job_id = entry["job_id"]
        if entry["attempts"] >= self.config.send_max_attempts:
            target = self._give_up(entry)
            log.error("job %s: sending failed %d times (%s); see %s", job_id, entry["attempts"],
                      reason, target / "error.txt")
            return
        delay = self.delay_after(entry["attempts"])
        entry["next_try"] = self._clock() + delay
        write_json_atomic(self.queue_dir / f"{job_id}.json", entry)
        log.warning("job %s: sending failed (%s); try %d of %d in %.0f s", job_id, reason,
                    entry["attempts"] + 1, self.config.send_max_attempts, delay)

    def _give_up(self, entry: dict) -> Path:
        job_id = entry["job_id"]
        target = self.failed_dir / f"send-{job_id}"
        target.mkdir(parents=True, exist_ok=True)
        entry["next_try"] = 0.0
        entry["attempts"] = 0  # moved back, it starts a fresh round of tries
        write_json_atomic(target / f"{job_id}.json", entry)
        (target / "error.txt").write_text(
            f"The results of job {job_id} could not be sent to {self.destination}.\n\n"
            f"What was wrong:\n  {entry['last_error']}\n  ({self.config.send_max_attempts} tries, "
            f"the last at {iso(self._clock())}.)\n\n"
            f"What to do:\n  Check that the PACS is running, reachable from this machine, and "
            f"knows this node (AE title {self.config.ae_title}). The results are unchanged in "
            f"{entry['output']}. To send them again, move {job_id}.json from this folder into "
            f"{self.queue_dir}.\n", encoding="utf-8")
        (self.queue_dir / f"{job_id}.json").unlink(missing_ok=True)
        fsync_dir(self.queue_dir)
        self._record({"job_id": job_id, "send_error": entry["last_error"], "output": str(target)})
        return target

    # -- background thread ------------------------------------------------------------
    def start(self) -> "ResultSender":
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="pengwin-send", daemon=True)
        self._thread.start()
        log.info("results go to %s (DICOM SEG%s)", self.destination,
                 " and Encapsulated STL" if self.config.send_stl else "")
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_due()
            except Exception:  # keep sending whatever one entry does
                log.exception("send step failed; retrying")
            self._wake.wait(1.0)
            self._wake.clear()

    def drain(self, timeout: float | None = None) -> int:
        """Send until the queue is empty (sent or failed) or ``timeout`` s passed; return
        the entries left. For ``--once``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.entries():
            if deadline is not None and time.monotonic() > deadline:
                break
            if not self.run_due():
                time.sleep(min(1.0, max(self.config.send_retry_seconds, 0.05)))
        return len(self.entries())
