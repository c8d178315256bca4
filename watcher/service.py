"""The watcher service: observe the inbox, claim settled items, run them, publish or fail.

One worker runs one job at a time through an injected ``process(input_path, out_dir)``
callable; by default that is :meth:`pengwin_demo.pipeline.Pipeline.run` on a pipeline
loaded once. The web app passes its own pipeline so that app requests and inbox jobs
share one set of models (the pipeline's lock serializes them)::

    from watcher import WatcherConfig, WatcherService
    service = WatcherService(WatcherConfig(inbox="IN", outbox="OUT"), pipeline=pipeline)
    service.start()            # background thread + watchdog observer
    service.recent_jobs()      # list of dicts for the app's table
    service.stop()
"""

from __future__ import annotations

import enum
import errno
import inspect
import logging
import os
import re
import shutil
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from pengwin_demo.errors import InputError, ModelError

from .arrival import InboxScanner, Item, ScanResult
from .config import WatcherConfig
from .faults import Point, checkpoint
from .jobs import Job, JobStore, iso, write_json_atomic
from .split import plan_split

log = logging.getLogger("watcher")

DoneFn = Callable[[str, Path], None]
"""``on_done(job_id, output_dir)``: called once the outputs are published, before the job
folder is removed (again for a recovered job whose outputs were complete), so it must be
idempotent. Exceptions are logged, not raised."""

ProcessFn = Callable[[Path, Path], Any]
"""``process(input_path, out_dir)``: read the input, write every output into ``out_dir``.

Raise :class:`~pengwin_demo.errors.InputError` for bad input. The return value may have a
``warnings`` attribute (list of str), copied into the outbox ``job.json``. A callable with a
``progress`` keyword gets ``progress(stage, fraction)`` as the pipeline reports it.
"""

class _DropStopNoise(logging.Filter):
    """watchdog 7's inotify emitter logs an ERROR when it is stopped mid-read; harmless."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


def _drop_watchdog_stop_noise() -> None:
    """Install :class:`_DropStopNoise` once; done when a service starts, never on import."""
    logger = logging.getLogger("watchdog.observers.inotify")
    if not any(isinstance(f, _DropStopNoise) for f in logger.filters):
        logger.addFilter(_DropStopNoise())

_MODIFYING_EVENTS = {"created", "modified", "moved", "closed"}
STATUS_HEARTBEAT_S = 30.0

JOB_LOG = "job.log"
"""The job's own log (the pipeline's INFO lines), inside its result or failed folder."""

_RESOURCE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
_RESOURCE_PHRASES = ("no space left", "disk quota", "file too large", "read-only file system")


class Failure(str, enum.Enum):
    """Why a job ended in the failed area (``job.json`` "failure", the log line)."""

    INPUT = "input"  # the input cannot be used; the message says why
    MODEL = "model"  # a model is missing or broken
    INTERRUPTED = "interrupted"  # the watcher was killed during every attempt
    UNEXPECTED = "unexpected"  # a bug, or the machine


class _JobLog(logging.Handler):
    """Collects the pipeline's log lines of one job (its thread only) for ``job.log``."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.thread = threading.get_ident()
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.lines.append(self.format(record))

    def write(self, folder: Path) -> None:
        if self.lines:
            (folder / JOB_LOG).write_text("\n".join(self.lines) + "\n", encoding="utf-8")


def is_resource_error(err: BaseException) -> bool:
    """A write failed for want of space (or a read-only disk): the machine, not the input."""
    if isinstance(err, OSError) and err.errno in _RESOURCE_ERRNOS:
        return True
    text = str(err).lower()  # SimpleITK and others raise RuntimeError with the OS message
    return isinstance(err, (OSError, RuntimeError)) and any(p in text for p in _RESOURCE_PHRASES)


class _InboxEvents(FileSystemEventHandler):
    def __init__(self, scanner: InboxScanner, wake: threading.Event):
        self.scanner = scanner
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in _MODIFYING_EVENTS:
            return  # reads (opened/closed_no_write) and removals do not delay arrival
        path = getattr(event, "dest_path", "") if event.event_type == "moved" else event.src_path
        if path:
            self.scanner.note_event(os.fsdecode(path))
            self.wake.set()


class WatcherService:
    """Inbox -> pipeline -> outbox, exactly once, surviving crashes and bad input.

    Parameters
    ----------
    config : WatcherConfig
    pipeline : object, optional
        A loaded :class:`pengwin_demo.pipeline.Pipeline` (or anything with the same
        ``run(input_path, out_dir, *, dicom_seg=...)``) to share, e.g. the app's.
    process : callable, optional
        ``process(input_path, out_dir)``; overrides ``pipeline``. Default: the
        process-wide ``pengwin_demo.pipeline.get_pipeline(device=config.device)``, its
        models loaded on :meth:`start` (a :class:`ModelError` is raised there).
    on_done : callable, optional
        ``on_done(job_id, output_dir)`` after each successful job (see :data:`DoneFn`),
        e.g. :meth:`watcher.send.ResultSender.enqueue`.
    """

    def __init__(self, config: WatcherConfig, pipeline: Any = None, process: ProcessFn | None = None,
                 on_done: DoneFn | None = None):
        self.config = config
        self._on_done = on_done
        self.store = JobStore(config)
        self.scanner = InboxScanner(config)
        self._pipeline = pipeline
        self._process = process
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer = None
        self._stuck: dict[str, str] = {}
        self._current: str | None = None
        self._stage: str | None = None
        self._last_scan = ScanResult()
        self._status_written = (None, 0.0)
        self._retry_at: dict[str, float] = {}
        self.counts = {"done": 0, "failed": 0, "split": 0, "retrying": 0}

    # -- public API -----------------------------------------------------------------
    def start(self) -> "WatcherService":
        """Prepare folders, load the pipeline if needed, and run in a background thread."""
        self._prepare()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="pengwin-watcher", daemon=True)
        self._thread.start()
        log.info("watching %s (%s observer, settle %.0f s)", self.config.inbox,
                 "polling" if self.config.polling else "native", self.config.settle_seconds)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop after the current job (a pipeline run cannot be interrupted)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._stop_observer()

    def run_forever(self) -> None:
        """Run in the calling thread until :meth:`stop` is called (e.g. from a signal)."""
        self._prepare()
        log.info("watching %s (%s observer, settle %.0f s)", self.config.inbox,
                 "polling" if self.config.polling else "native", self.config.settle_seconds)
        try:
            self._loop()
        finally:
            self._stop_observer()

    def run_once(self, timeout: float | None = None) -> dict:
        """Process everything in the inbox (waiting for each item to settle), then return.

        Items that keep changing keep it waiting; ``timeout`` (s) bounds the wait.
        Returns counts: ``{"done": n, "failed": m, "left": k}``.
        """
        self._prepare()
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self._stop.is_set():
                if self._step():
                    continue
                if not self._last_scan.waiting and not self._pending_ready():
                    break
                if deadline is not None and time.monotonic() > deadline:
                    break
                self._wake.wait(self.config.scan_interval)
                self._wake.clear()
        finally:
            self._stop_observer()
        left = len(self._last_scan.waiting) + len(self._pending_ready())
        self._write_status(force=True)
        return {**self.counts, "left": left}

    def recent_jobs(self, limit: int = 20) -> list[dict]:
        """Most recent jobs of this inbox (every watcher process), newest first.

        Each dict has job_id, state ("received", "running", "done", "failed"), kind
        ("folder", "zip", "volume", "files", "unreadable"), files, received, started,
        finished (ISO 8601 UTC), seconds, error (one line), warnings, output (the outbox
        folder, or the failed folder) and stage (the pipeline stage of the job this
        process is running, else None). No patient identifiers.
        """
        jobs = self.store.recent(limit)
        current, stage = self._current, self._stage
        for job in jobs:
            job["stage"] = stage if current is not None and job["job_id"] == current else None
        return jobs

    def _on_progress(self, stage: str, fraction: float) -> None:
        self._stage = stage
        checkpoint(f"stage:{stage}")

    def status(self) -> dict:
        """The queue as written to ``<work>/status.json``."""
        return {
            "updated": iso(time.time()),
            "pid": os.getpid(),
            "inbox_waiting": [vars(w) for w in self._last_scan.waiting],
            "inbox_ready": len(self._pending_ready()),
            "running": self.store.running_jobs(),
            "current": self._current,
            "counts": dict(self.counts),
            "recent": self.recent_jobs(20),
        }

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- loop -----------------------------------------------------------------------
    def _prepare(self) -> None:
        self.store.prepare()
        self.store.clean_stale_temp_outputs()
        self._get_process()
        self._start_observer()

    def _get_process(self) -> ProcessFn:
        if self._process is not None:
            return self._process
        if self._pipeline is None:
            # the process-wide pipeline (the app gets the same one from get_pipeline);
            # load the models now so that a missing model stops the service at start-up
            from pengwin_demo.pipeline import get_pipeline

            self._pipeline = get_pipeline(device=self.config.device)
            self._pipeline.load_models()
        pipeline, dicom_seg, allow = self._pipeline, self.config.dicom_seg, self.config.allow_non_ct

        extra = {"allow_non_ct": True} if allow else {}  # pipeline-likes may lack the option

        def process(input_path: Path, out_dir: Path) -> Any:
            return pipeline.run(input_path, out_dir, dicom_seg=dicom_seg, progress=self._on_progress,
                                **extra)

        self._process = process
        return process

    def _call_process(self, input_path: Path, out_dir: Path) -> Any:
        """Run the process; one that takes ``progress`` gets the stage reports too."""
        process = self._get_process()
        try:
            takes_progress = "progress" in inspect.signature(process).parameters
        except (TypeError, ValueError):
            takes_progress = False
        if takes_progress:
            return process(input_path, out_dir, progress=self._on_progress)
        return process(input_path, out_dir)

    def _start_observer(self) -> None:
        if self._observer is not None:
            return
        _drop_watchdog_stop_noise()
        handler = _InboxEvents(self.scanner, self._wake)
        # The scanner walks each item itself on every scan and compares signatures, so
        # the observer only needs the top level: it wakes the loop when something
        # arrives, and an event restarts that item's quiet clock. (Watching recursively
        # would also watch the hidden work area and the trees being moved into it.)
        if self.config.polling:
            observer = PollingObserver(timeout=self.config.scan_interval)
        else:
            observer = Observer()
        observer.schedule(handler, str(self.config.inbox), recursive=False)
        observer.daemon = True
        try:
            observer.start()
        except OSError as err:  # e.g. the inotify watch limit is reached
            if self.config.polling:
                raise
            log.warning("native filesystem events unavailable (%s); polling instead", err)
            observer = PollingObserver(timeout=self.config.scan_interval)
            observer.schedule(handler, str(self.config.inbox), recursive=False)
            observer.daemon = True
            observer.start()
        self._observer = observer

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=10)
            self._observer = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                if self._step():
                    continue
            except Exception:  # keep the service alive whatever happens
                log.exception("watcher step failed; retrying in %.0f s", self.config.scan_interval)
            self._wake.wait(self.config.scan_interval)
            self._wake.clear()

    def _pending_ready(self) -> list[Item]:
        return [i for i in self._last_scan.ready if i.key not in self._stuck]

    def _step(self) -> bool:
        """Recover one orphan or claim and run one settled item. True if a job ran."""
        orphans = self.store.orphans()  # each one locked: run the first, let go of the rest
        runnable = [j for j in orphans if time.monotonic() >= self._retry_at.get(j.job_id, 0.0)]
        first = runnable[0] if runnable and not self._stop.is_set() else None
        for job in orphans:
            if job is not first:
                job.release()
        for job in runnable[:1]:
            if self._stop.is_set():
                return False
            if job.meta.get("split_from") and not job.meta.get("attempts"):
                log.info("job %s queued (one series of job %s)", job.job_id, job.meta["split_from"])
            elif job.meta.get("state") == "retrying":
                log.info("job %s retried (attempt %s failed on the machine)", job.job_id,
                         job.meta.get("attempts", 0) + 1)
            else:
                log.info("job %s recovered (its watcher stopped during attempt %s)",
                         job.job_id, job.meta.get("attempts", 0))
            self._run_job_safely(job)
            return True
        if self._stop.is_set():
            return False
        self._last_scan = self.scanner.scan()
        self._write_status()
        for item in self._pending_ready():
            if self._stop.is_set():
                return False
            checkpoint(Point.ARRIVAL)
            try:
                job = self.store.claim(item)
            except OSError as err:
                self._stuck[item.key] = str(err)
                log.error("an inbox %s could not be claimed (%s); it is left in place and "
                          "skipped until the watcher restarts", item.kind, err.strerror or err)
                continue
            self.scanner.forget(item.key)
            if job is None:
                continue  # another watcher took it
            self.store.record({"job_id": job.job_id, "state": "received", "kind": item.kind,
                               "files": job.meta["files"], "received": job.meta["received"]})
            log.info("job %s received: %s, %d files, %.1f MB (%s)", job.job_id, item.kind,
                     job.meta["files"], job.meta["bytes"] / 1e6, item.reason)
            checkpoint(Point.CLAIMED)
            self._run_job_safely(job)
            return True
        return False

    # -- one job --------------------------------------------------------------------
    def _run_job_safely(self, job: Job) -> None:
        """Run a job; if even failing it fails (disk full...), let go of it for a retry."""
        try:
            self._run_job(job)
        finally:
            if job.lock_fd >= 0:  # still ours: publishing or failing raised
                job.release()      # the next scan recovers it (bounded by max_attempts)

    def _run_job(self, job: Job) -> None:
        job.meta["attempts"] = int(job.meta.get("attempts", 0)) + 1
        if self._settled_without_running(job):
            return
        started = self._mark_running(job)
        job_log = _JobLog()
        detail_logger = logging.getLogger("pengwin_demo")
        detail_logger.addHandler(job_log)
        try:
            final, warnings = self._publish_outputs(job, started, job_log)
        except Exception as err:  # every failure is reported; the service keeps running
            self._fail_job(job, started, err, job_log)
            return
        finally:
            detail_logger.removeHandler(job_log)
            self._current = None
            self._stage = None
        seconds = round(time.time() - started, 2)
        self.store.record({"job_id": job.job_id, "state": "done", "finished": iso(time.time()),
                           "seconds": seconds, "warnings": warnings, "output": str(final)})
        self.counts["done"] += 1
        log.info("job %s done in %.1f s%s", job.job_id, seconds,
                 f" with {len(warnings)} warning(s)" if warnings else "")
        self._notify_done(job)
        self.store.finish(job)
        self._write_status(force=True)

    def _settled_without_running(self, job: Job) -> bool:
        """Finish a job that needs no run: already published, out of attempts, or split.

        Returns True when the job is settled (done, failed or split into children).
        """
        meta = job.meta
        if self.store.output_dir(job).exists():
            # published before the previous process died: do not run it again
            meta["state"] = "done"
            self.store.record({"job_id": job.job_id, "state": "done",
                               "output": str(self.store.output_dir(job))})
            log.info("job %s done (outputs were already complete)", job.job_id)
            self._notify_done(job)
            self.store.finish(job)
            return True
        if meta["attempts"] > self.config.max_attempts:
            self._fail(job, time.time(), (
                f"Processing was interrupted {meta['attempts'] - 1} times (the watcher was "
                "killed or crashed while working on this job, e.g. out of memory). The input "
                "itself may be fine.",
                "Check the watcher's log and the machine's memory, then move the item in "
                "input/ back into the inbox to try again.",
            ), kind=Failure.INTERRUPTED)
            return True
        return self._split(job)

    def _mark_running(self, job: Job) -> float:
        """Record and log that ``job`` starts now; returns the start time (epoch seconds)."""
        meta = job.meta
        started = time.time()
        meta.update(state="running", started=iso(started))
        job.save()
        self._current = job.job_id
        self.store.record({"job_id": job.job_id, "state": "running", "kind": meta.get("kind"),
                           "files": meta.get("files"), "received": meta.get("received"),
                           "started": meta["started"], "attempt": meta["attempts"]})
        log.info("job %s started (attempt %d)", job.job_id, meta["attempts"])
        self._write_status(force=True)
        return started

    def _publish_outputs(self, job: Job, started: float, job_log: _JobLog) -> tuple[Path, list[str]]:
        """Process the job's input into a temporary folder and publish it to the outbox.

        Returns the published folder and the run's warnings. On any error the temporary
        folder is removed and the error raised (:meth:`_fail_job` reports it).
        """
        meta = job.meta
        tmp = None
        try:
            problem = self._precheck(job)
            if problem:
                raise InputError(problem)
            tmp = self.store.temp_output_dir(job)
            result = self._call_process(job.input_path, tmp)
            checkpoint(Point.OUTPUTS)
            job_log.write(tmp)
            warnings = [str(w) for w in (getattr(result, "warnings", None) or [])]
            finished = time.time()
            outbox_meta = {
                "job_id": job.job_id,
                "state": "done",
                "kind": meta.get("kind"),
                "files": meta.get("files"),
                "received": meta.get("received"),
                "started": meta["started"],
                "finished": iso(finished),
                "seconds": round(finished - started, 2),
                "warnings": warnings,
            }
            write_json_atomic(tmp / "job.json", outbox_meta)
            checkpoint(Point.PUBLISH)
            final = self.store.publish(job, tmp)
            checkpoint(Point.PUBLISHED)
        except Exception:
            self._cleanup(tmp)
            raise
        return final, warnings

    def _fail_job(self, job: Job, started: float, err: Exception, job_log: _JobLog) -> None:
        """Report a failed run by its cause: the input, the models, or a bug / the machine.

        Called from within the ``except`` block, so the traceback is the run's. A resource
        error (disk full, memory) defers the job for a later retry instead of failing it.
        """
        if isinstance(err, InputError):
            self._fail(job, started, (str(err), _hint_for_input_error()), job_log=job_log)
        elif isinstance(err, ModelError):
            self._fail(job, started, (str(err), "Install or fix the models (see the README), "
                                      "then move the item in input/ back into the inbox."),
                       kind=Failure.MODEL, job_log=job_log)
        elif is_resource_error(err):
            self._defer(job, err)
        else:
            self._fail(job, started, (
                f"Unexpected error: {type(err).__name__}: {err}",
                "This is a bug or a problem of the machine (disk full, memory...). Report it "
                "with this file; the traceback is below. After fixing, move the item in "
                "input/ back into the inbox.",
            ), detail=traceback.format_exc(), kind=Failure.UNEXPECTED, job_log=job_log)

    def _split(self, job: Job) -> bool:
        """Turn a delivery of several CT series into one queued job per series.

        Returns True when the job was split (it is then finished: its children hold every
        file of its input). Safe to repeat after a crash: children already made are kept.
        """
        kind = job.meta.get("kind")
        try:
            entry = job.input_path
        except InputError:
            return False  # the run reports the broken job folder
        with plan_split(entry, kind) as plan:
            if len(plan.groups) < 2:
                return False
            name = entry.name[:-4] if kind == "zip" and entry.name.lower().endswith(".zip") else entry.name
            children: list[Job] = []
            ids: list[str] = []
            for index, group in enumerate(plan.groups, start=1):
                meta = {"kind": "folder", "received": job.meta.get("received"),
                        "claimed": iso(time.time()), "attempts": 0, "state": "queued",
                        "split_from": job.job_id, "series": group.description}
                child = self.store.create_child(job, index, name, group.files, meta)
                ids.append(f"{job.job_id}-{index}")
                if child is not None:
                    children.append(child)
                    self.store.record({"job_id": child.job_id, "state": "received", "kind": "folder",
                                       "files": child.meta["files"], "received": meta["received"],
                                       "split_from": job.job_id})
                checkpoint(Point.SPLIT)
        job.meta.update(state="split", split_into=ids, finished=iso(time.time()))
        job.save()
        self.store.record({"job_id": job.job_id, "state": "split", "split_into": ids,
                           "finished": job.meta["finished"]})
        log.info("job %s split into %d jobs, one per CT series: %s", job.job_id, len(ids),
                 ", ".join(ids))
        self.store.finish(job)
        for child in children:
            child.release()
        self.counts["split"] += 1
        return True

    def _defer(self, job: Job, err: BaseException) -> None:
        """A write failed on the machine (disk full...): keep the job queued, retry later."""
        reason = ("no space left (or the disk refused the write) while writing the outputs; "
                  f"free space on the outbox and work area; retried every "
                  f"{self.config.retry_seconds:.0f} s ({type(err).__name__}: "
                  f"{getattr(err, 'strerror', None) or str(err).splitlines()[-1][:120]})")
        job.meta.update(state="retrying", error=reason,
                        attempts=max(0, int(job.meta.get("attempts", 1)) - 1))  # not an interruption
        try:
            job.save()
            self.store.record({"job_id": job.job_id, "state": "retrying", "error": reason})
        except OSError:
            pass  # the work area is full too: the job stays queued all the same
        self._retry_at[job.job_id] = time.monotonic() + self.config.retry_seconds
        self.counts["retrying"] += 1
        log.warning("job %s waits for a retry in %.0f s: no space left for its outputs",
                    job.job_id, self.config.retry_seconds)
        job.release()
        self._write_status(force=True)

    def _notify_done(self, job: Job) -> None:
        if self._on_done is None:
            return
        try:
            self._on_done(job.job_id, self.store.output_dir(job))
        except Exception:  # the job is done; a failing follow-up must not undo that
            log.exception("job %s: the step after the job failed", job.job_id)

    def _precheck(self, job: Job) -> str | None:
        kind = job.meta.get("kind")
        path = job.input_path
        if kind == "unreadable":
            names = sorted(p.name for p in path.iterdir())[:10]
            return (
                f"{len(list(path.iterdir()))} loose file(s) in the inbox are not DICOM files "
                f"(e.g. {', '.join(names)}), so they cannot be grouped into a series. Copy DICOM "
                "series (a folder per series, a zip, or DICOM files), or a .nii.gz/.mha/.nrrd CT."
            )
        if path.is_dir() and not any(p.is_file() for p in path.rglob("*")):
            return (
                "the folder is empty (nothing arrived within "
                f"{self.config.empty_grace_seconds:.0f} s). Copy the series into it again, "
                "or remove it."
            )
        return None

    def _cleanup(self, tmp: Path | None) -> None:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    def _fail(self, job: Job, started: float, what: tuple[str, str], detail: str = "",
              kind: Failure = Failure.INPUT, job_log: _JobLog | None = None) -> None:
        message, todo = what
        finished = time.time()
        job.meta.update(state="failed", finished=iso(finished), failure=kind.value,
                        error=_redact(" ".join(message.split()), job)[:500])
        if job_log is not None:
            job_log.write(job.dir)
        text = (
            f"Job {job.job_id} could not be processed.\n\n"
            f"What was wrong:\n  {message}\n\n"
            f"What to do:\n  {todo}\n\n"
            f"The inputs are unchanged in input/ beside this file. The inbox was "
            f"{self.config.inbox}.\n"
            f"Failed at {iso(finished)} after {finished - started:.1f} s "
            f"(attempt {job.meta.get('attempts')}).\n"
        )
        if detail:
            text += "\n" + detail
        target = self.store.fail(job, text)
        seconds = round(finished - started, 2)
        self.store.record({"job_id": job.job_id, "state": "failed", "finished": iso(finished),
                           "seconds": seconds, "error": job.meta["error"], "output": str(target)})
        self.counts["failed"] += 1
        # the error text may name files (possible identifiers): the log gets only the kind
        log.warning("job %s failed (%s) after %.1f s; see %s", job.job_id,
                    "interrupted" if kind is Failure.INTERRUPTED else f"{kind.value} error",
                    seconds, target / "error.txt")
        self._write_status(force=True)

    # -- status ---------------------------------------------------------------------
    def _write_status(self, force: bool = False) -> None:
        status = self.status()
        comparable = {k: v for k, v in status.items() if k != "updated"}
        last, at = self._status_written
        now = time.monotonic()
        if not force and comparable == last and now - at < STATUS_HEARTBEAT_S:
            return
        try:
            write_json_atomic(self.store.status_path, status)
            self._status_written = (comparable, now)
        except OSError:
            log.warning("cannot write the status file %s", self.store.status_path)


def _redact(text: str, job: Job) -> str:
    """Replace the job's paths and the inbox entry name (maybe a patient name) in ``text``."""
    text = text.replace(str(job.dir), "<job>")
    try:
        name = job.input_path.name
    except (InputError, OSError):
        return text
    if len(name) < 3:
        return text
    return re.sub(r"(?<![\w.])" + re.escape(name) + r"(?![\w])", "<input>", text)


def _hint_for_input_error() -> str:
    return (
        "Fix the input as the message says (for DICOM: export the complete CT series "
        "again), then copy it into the inbox again. To retry these inputs unchanged, "
        "move the item in input/ back into the inbox."
    )
