"""Jobs on disk: claim by atomic rename, lock while running, publish or fail in one step.

Layout of the work area (``WatcherConfig.work``)::

    jobs/<job-id>/lock         flock held by the process working on the job
    jobs/<job-id>/claiming.json  names a multi-file claim is moving (until it is complete)
    jobs/.split-<job-id>-<n>/  a child of a split being built (renamed into jobs/ when whole)
    jobs/<job-id>/job.json     kind, file count, times, attempts (no patient identifiers)
    jobs/<job-id>/input/<entry>  the inbox item, moved here by rename (the claim)
    failed/<job-id>/           input/ + error.txt + job.json (default failed area)
    done/<job-id>/             inputs of finished jobs, only with keep_inputs
    history.jsonl              one line per job event, read by recent_jobs()
    status.json                queue and recent jobs, rewritten atomically
    claim.lock                 serializes claims between watcher processes

Exactly once: an inbox item moves into ``jobs/`` by one ``os.rename``; of two watchers
only one rename succeeds. A job directory whose lock nobody holds belongs to a process
that died: the next scan (of any watcher) takes it over and runs it again, at most
``max_attempts`` times in all. Outputs are written into ``<outbox>/.tmp-<job-id>`` and
renamed to ``<outbox>/<job-id>`` in one step; if that folder already exists the job had
finished before the crash and is not run again.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pengwin_demo.errors import InputError

from .arrival import Item, entry_kind
from .config import WatcherConfig
from .faults import Point, checkpoint

log = logging.getLogger(__name__)

CLAIMING = "claiming.json"
"""The names a multi-file claim is moving (removed once the claim is complete)."""

ORPHAN_MIN_AGE_S = 60.0
"""A job folder without input is removed only when older than this (a claim in flight)."""


def new_job_id(now: float | None = None) -> str:
    """A job id: UTC time stamp and random hex, e.g. ``20261126-160227-3f9a1c``.

    It carries no patient identifiers and sorts by time of claim.
    """
    stamp = datetime.fromtimestamp(now if now is not None else time.time(), timezone.utc)
    return f"{stamp:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def iso(t: float | None) -> str | None:
    """Epoch seconds -> ISO 8601 UTC string (None stays None)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON under a temporary name and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class Job:
    """A claimed job: its folder in ``jobs/`` and the open, locked lock file."""

    job_id: str
    dir: Path
    lock_fd: int
    meta: dict = field(default_factory=dict)

    @property
    def input_dir(self) -> Path:
        return self.dir / "input"

    @property
    def input_path(self) -> Path:
        """The claimed item: the single entry inside ``input/``."""
        entries = sorted(p for p in self.input_dir.iterdir()) if self.input_dir.is_dir() else []
        if len(entries) != 1:
            raise InputError(
                f"job {self.job_id}: expected one item in {self.input_dir}, found {len(entries)}."
            )
        return entries[0]

    def save(self) -> None:
        write_json_atomic(self.dir / "job.json", self.meta)

    def release(self) -> None:
        if self.lock_fd >= 0:
            try:
                fcntl.flock(self.lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self.lock_fd)
                self.lock_fd = -1


class JobStore:
    """The work area of one inbox, shared by every watcher process on that inbox."""

    def __init__(self, config: WatcherConfig):
        self.config = config
        self.work = config.work
        self.jobs_dir = config.work / "jobs"
        self.done_dir = config.work / "done"
        self.trash_dir = config.work / "trash"
        self.failed_dir = config.failed
        self.outbox = config.outbox
        self.history_path = config.work / "history.jsonl"
        self.status_path = config.work / "status.json"

    # -- set-up ---------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the folders and check that claiming by rename will be atomic.

        Raises
        ------
        InputError
            The inbox is missing, or the work area is on another filesystem.
        """
        cfg = self.config
        if not cfg.inbox.is_dir():
            raise InputError(
                f"inbox {cfg.inbox} does not exist or is not a folder. Create it or fix --inbox."
            )
        # check before creating anything: a refused work area must be left as it was
        self._check_rename(cfg.inbox, _existing_ancestor(self.jobs_dir), "work area", "--work")
        for d in (self.jobs_dir, self.trash_dir, self.failed_dir, self.outbox):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self.trash_dir.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
        self.clean_stale_splits()

    @staticmethod
    def _check_rename(src_dir: Path, dst_dir: Path, what: str, flag: str) -> None:
        """Claims and publishing are renames: try one (a different mount fails with EXDEV)."""
        probe = src_dir / f".pengwin-rename-probe-{os.getpid()}-{secrets.token_hex(3)}"
        target = dst_dir / (probe.name + ".moved")
        probe.mkdir()
        try:
            os.rename(probe, target)
        except OSError as err:
            shutil.rmtree(probe, ignore_errors=True)
            if err.errno == errno.EXDEV:
                raise InputError(
                    f"the {what} {dst_dir} is on another filesystem or mount than {src_dir}; "
                    f"moving a series there would not be one atomic step. Put {flag} on the "
                    "same share and mount as the inbox (the default, <inbox>/.pengwin-work, is; "
                    "in Docker mount one parent folder rather than separate volumes)."
                ) from None
            raise
        shutil.rmtree(target, ignore_errors=True)

    @contextmanager
    def claim_lock(self) -> Iterator[None]:
        """Serialize claims between watcher processes sharing this work area."""
        fd = os.open(self.work / "claim.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    # -- claiming -------------------------------------------------------------------
    def _new_job_dir(self) -> tuple[str, Path, int]:
        while True:
            job_id = new_job_id()
            d = self.jobs_dir / job_id
            try:
                d.mkdir()
            except FileExistsError:
                continue
            fd = os.open(d / "lock", os.O_CREAT | os.O_RDWR, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            return job_id, d, fd

    def claim(self, item: Item) -> Job | None:
        """Move ``item`` out of the inbox into a new locked job folder.

        Returns None when another process claimed it first (the item is gone).
        Raises OSError for other failures (permissions...), leaving the item in place.
        """
        with self.claim_lock():
            job_id, d, fd = self._new_job_dir()
            job = Job(job_id, d, fd)
            moved = 0
            try:
                (d / "input").mkdir()
                if item.kind in ("files", "unreadable"):
                    target = d / "input" / ("series" if item.kind == "files" else "unreadable")
                    target.mkdir()
                    pairs = [(path, target / path.name) for path in item.paths]
                    # several renames: note them first, so a crash part way is completed
                    # on recovery (:meth:`_complete_claim`) instead of splitting the series
                    write_json_atomic(d / CLAIMING, [path.name for path in item.paths])
                else:
                    pairs = [(item.paths[0], d / "input" / item.paths[0].name)]
                for src, dst in pairs:
                    try:
                        os.rename(src, dst)
                        moved += 1
                    except FileNotFoundError:
                        pass  # another watcher took it, or the sender removed it
                    checkpoint(Point.CLAIM)
            except BaseException:
                if moved == 0:
                    self._remove_job_dir(job)
                    raise
                # some loose files moved: keep them as this job, the rest stays in the inbox
                log.warning("job %s: claim stopped part way; the remaining files stay in the inbox",
                            job_id, exc_info=True)
            if moved == 0:
                self._remove_job_dir(job)
                return None
        if item.marker is not None:
            marker = item.marker
            if marker.parent == self.config.inbox:
                if marker.name != self.config.marker_name:  # the loose-files READY stays
                    _unlink_quiet(marker)  # until no loose file is left (see arrival)
            else:  # the READY file inside the folder moved with it
                _unlink_quiet(job.input_path / marker.name)
        n_files, size = _count(d / "input")
        now = time.time()
        job.meta = {
            "job_id": job_id,
            "kind": item.kind,
            "files": n_files,
            "bytes": size,
            "received": iso(item.first_seen),
            "claimed": iso(now),
            "attempts": 0,
            "state": "queued",
            "host": socket.gethostname(),
        }
        job.save()
        _unlink_quiet(d / CLAIMING)
        fsync_dir(self.jobs_dir)
        return job

    def _complete_claim(self, job: Job) -> None:
        """Move the loose files a killed claim had not moved yet (still in the inbox)."""
        try:
            names = json.loads((job.dir / CLAIMING).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            names = []
        targets = [p for p in (job.dir / "input").iterdir() if p.is_dir()] if names else []
        with self.claim_lock():
            for name in names if len(targets) == 1 else []:
                try:
                    os.rename(self.config.inbox / name, targets[0] / name)
                except FileNotFoundError:
                    pass  # moved before the crash, or removed by the sender
        job.meta["files"], job.meta["bytes"] = _count(job.dir / "input")
        job.save()
        _unlink_quiet(job.dir / CLAIMING)

    def _remove_job_dir(self, job: Job) -> None:
        trash = self.trash_dir / f"{job.job_id}-{os.getpid()}"
        try:
            os.rename(job.dir, trash)
        except FileNotFoundError:
            pass
        job.release()
        shutil.rmtree(trash, ignore_errors=True)

    # -- splitting ------------------------------------------------------------------
    def known(self, job_id: str) -> bool:
        """Whether a job of this id exists anywhere (queued, done, failed or archived)."""
        return any((d / job_id).exists() for d in (self.jobs_dir, self.outbox, self.failed_dir,
                                                   self.done_dir))

    def create_child(self, parent: Job, index: int, entry_name: str,
                     files: list[tuple[Path, Path]], meta: dict) -> Job | None:
        """Queue ``<parent-id>-<index>`` holding ``files`` in ``input/<entry_name>/``.

        ``files`` are (source, relative path) pairs; sources are hard-linked when they can
        be (the parent's input, same filesystem) and copied otherwise (an unpacked zip).
        The child is built in a hidden folder and appears in ``jobs/`` by one rename, locked
        by the caller; its id is fixed by the parent's, so splitting again after a crash
        skips the children already made (returns None for those).
        """
        job_id = f"{parent.job_id}-{index}"
        if self.known(job_id):
            return None
        stage = self.jobs_dir / f".split-{job_id}"
        shutil.rmtree(stage, ignore_errors=True)  # half-built by a process that died
        target = stage / "input" / entry_name
        target.mkdir(parents=True)
        fd = os.open(stage / "lock", os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        job = Job(job_id, stage, fd, dict(meta, job_id=job_id))
        try:
            for src, rel in files:
                dst = target / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                _link_or_copy(src, dst)
            job.meta["files"], job.meta["bytes"] = _count(stage / "input")
            job.save()
            os.rename(stage, self.jobs_dir / job_id)
        except BaseException:
            job.release()
            shutil.rmtree(stage, ignore_errors=True)
            raise
        job.dir = self.jobs_dir / job_id
        fsync_dir(self.jobs_dir)
        return job

    def clean_stale_splits(self) -> None:
        """Remove half-built children (``jobs/.split-*``) that no process is building."""
        for stage in self.jobs_dir.glob(".split-*"):
            if not _is_locked(stage / "lock"):
                shutil.rmtree(stage, ignore_errors=True)

    # -- recovery -------------------------------------------------------------------
    def orphans(self) -> list[Job]:
        """Job folders whose owner died: lock them and return them for another attempt.

        Folders without input that are older than :data:`ORPHAN_MIN_AGE_S` are removed.
        """
        out = []
        try:
            names = sorted(os.listdir(self.jobs_dir))
        except FileNotFoundError:
            return out
        for name in names:
            if name.startswith("."):
                continue
            d = self.jobs_dir / name
            try:
                fd = os.open(d / "lock", os.O_CREAT | os.O_RDWR, 0o644)
            except (FileNotFoundError, NotADirectoryError):
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                os.close(fd)
                if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    continue  # a live process is working on it
                raise
            if not d.is_dir():  # finished and removed while we were opening the lock
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                continue
            job = Job(name, d, fd)
            try:
                job.meta = json.loads((d / "job.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):  # killed between the claim and job.json
                job.meta = {"job_id": name, "kind": _infer_kind(d / "input"), "attempts": 0,
                            "state": "queued"}
            if (d / CLAIMING).exists():
                self._complete_claim(job)
            has_input = (d / "input").is_dir() and any((d / "input").iterdir())
            if not has_input:
                age = time.time() - d.stat().st_mtime
                if age > ORPHAN_MIN_AGE_S:
                    self._remove_job_dir(job)
                else:
                    job.release()
                continue
            out.append(job)
        return out

    # -- outputs --------------------------------------------------------------------
    def output_dir(self, job: Job) -> Path:
        return self.outbox / job.job_id

    def temp_output_dir(self, job: Job) -> Path:
        """A fresh hidden folder in the outbox to write this job's outputs into."""
        tmp = self.outbox / f".tmp-{job.job_id}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        return tmp

    def publish(self, job: Job, tmp: Path) -> Path:
        """Rename the finished temp folder to ``<outbox>/<job-id>`` in one step."""
        final = self.output_dir(job)
        os.rename(tmp, final)
        fsync_dir(self.outbox)
        return final

    def finish(self, job: Job) -> None:
        """Done: archive or delete the inputs, drop the job folder, release the lock."""
        if self.config.keep_inputs:
            self.done_dir.mkdir(parents=True, exist_ok=True)
            target = self.done_dir / job.job_id
            os.rename(job.dir, target)
            _unlink_quiet(target / "lock")
            job.release()
        else:
            self._remove_job_dir(job)

    def fail(self, job: Job, error_text: str) -> Path:
        """Move the job folder (inputs intact) to the failed area with ``error.txt``."""
        (job.dir / "error.txt").write_text(error_text.rstrip() + "\n", encoding="utf-8")
        job.save()
        target = self.failed_dir / job.job_id
        try:
            os.rename(job.dir, target)
        except OSError as err:
            if err.errno != errno.EXDEV:
                raise
            shutil.copytree(job.dir, target, ignore=shutil.ignore_patterns("lock"))
            shutil.rmtree(job.dir)
        _unlink_quiet(target / "lock")
        job.release()
        return target

    def clean_stale_temp_outputs(self) -> None:
        """Remove ``<outbox>/.tmp-*`` folders of jobs that no process is running."""
        for tmp in self.outbox.glob(".tmp-*"):
            job_id = tmp.name[len(".tmp-"):]
            d = self.jobs_dir / job_id
            if d.is_dir() and _is_locked(d / "lock"):
                continue
            shutil.rmtree(tmp, ignore_errors=True)

    # -- history --------------------------------------------------------------------
    def record(self, event: dict) -> None:
        """Append one event line to ``history.jsonl`` (rotated when large)."""
        line = json.dumps(event, default=str) + "\n"
        try:
            if self.history_path.stat().st_size > self.config.history_max_bytes:
                os.replace(self.history_path, self.history_path.with_suffix(".jsonl.1"))
        except FileNotFoundError:
            pass
        fd = os.open(self.history_path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
        finally:
            os.close(fd)

    def recent(self, limit: int = 20, tail_bytes: int = 512_000) -> list[dict]:
        """The latest state of the most recent jobs, newest first (from the history)."""
        try:
            with open(self.history_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                end = fh.tell()
                fh.seek(max(0, end - tail_bytes))
                data = fh.read()
        except FileNotFoundError:
            return []
        jobs: dict[str, dict] = {}
        for raw in data.splitlines():
            try:
                event = json.loads(raw)
            except ValueError:
                continue  # the first, partial line of the tail
            if not isinstance(event, dict) or "job_id" not in event:
                continue
            merged = jobs.pop(event["job_id"], {})
            merged.update({k: v for k, v in event.items() if v is not None or k not in merged})
            jobs[event["job_id"]] = merged  # re-insert: most recently touched last
        out = list(jobs.values())[::-1][:limit]
        keys = ("job_id", "state", "kind", "files", "received", "started", "finished",
                "seconds", "error", "warnings", "output")
        return [{k: job.get(k) for k in keys} for job in out]

    def running_jobs(self) -> list[str]:
        """Ids of job folders currently locked by some process."""
        try:
            names = sorted(n for n in os.listdir(self.jobs_dir) if not n.startswith("."))
        except FileNotFoundError:
            return []
        return [n for n in names if _is_locked(self.jobs_dir / n / "lock")]


def _is_locked(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _unlink_quiet(path: Path) -> None:
    try:
        path.unlink()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        pass


def _infer_kind(input_dir: Path) -> str:
    """The kind of a claimed item whose job.json was never written."""
    try:
        entries = list(input_dir.iterdir())
    except OSError:
        return "unknown"
    if len(entries) != 1:
        return "unknown"
    entry = entries[0]
    if entry.is_dir():
        return {"series": "files", "unreadable": "unreadable"}.get(entry.name, "folder")
    return entry_kind(entry)


def _existing_ancestor(path: Path) -> Path:
    """``path`` or the nearest folder above it that exists (where it would be created)."""
    while not path.is_dir() and path.parent != path:
        path = path.parent
    return path


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or one without hard links (some shares)
        shutil.copy2(src, dst)


def _count(path: Path) -> tuple[int, int]:
    n = size = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:  # lstat: a symbolic link (a loop, too) counts as itself
                size += os.lstat(os.path.join(root, name)).st_size
                n += 1
            except OSError:
                pass
    return n, size
