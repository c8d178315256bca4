"""Arrival: decide when something copied into the inbox is complete.

Every non-hidden top-level entry of the inbox is one *item*: a folder (a series or a
study), a ``.zip``, or a volume file (``.nii.gz``, ``.mha``, ``.nrrd``...). All other loose
top-level files are taken together and, once they have settled, grouped into one item per
DICOM series (SeriesInstanceUID); loose files that are not DICOM become one "unreadable"
item so that they end up in the failed area with an explanation instead of lying around.

An item is *settled* once its signature (file list, sizes, mtimes, including the
folders) has been observed unchanged for ``settle_seconds``. Filesystem events (from a
watchdog observer) reset the clock of the item they touch. Observed stability, not file
timestamps, is the rule: copies with ``cp -p``/robocopy keep old mtimes, and the clocks of
SMB/NFS servers drift. A marker ends the wait at once: a file named ``READY`` inside a
folder, ``<entry>.ready`` beside a folder/zip/file, or ``READY`` at the top level for the
loose files.

Names that start with "." or end like a partial download (``.part``, ``.tmp``, ``~``...) are
ignored: they are copies in progress (or the watcher's own hidden work area).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from pengwin_demo.dicom import series_key
from pengwin_demo.io import volume_suffix

from .config import TEMP_SUFFIXES, WatcherConfig

log = logging.getLogger(__name__)

LOOSE_KEY = "\0loose"
"""Tracking key of the loose top-level files (cannot clash with a file name)."""


@dataclass
class Item:
    """Something in the inbox that is ready to be claimed as one job.

    Attributes
    ----------
    key : str
        Tracking key (the top-level entry name, or a loose-files group key). May hold
        patient identifiers: never log it.
    kind : str
        "folder", "zip", "volume", "files" (loose DICOM files of one series) or
        "unreadable" (loose files that are not DICOM).
    paths : list of Path
        The inbox paths that make up the item (one, except for loose files).
    n_files : int
        Number of files.
    size_bytes : int
        Total size of the files.
    first_seen : float
        Wall-clock time (epoch s) the watcher first saw the item.
    marker : Path or None
        A sibling/top-level marker file to delete once the item is claimed.
    reason : str
        "settled" or "marker".
    """

    key: str
    kind: str
    paths: list[Path]
    n_files: int
    size_bytes: int
    first_seen: float
    marker: Path | None = None
    reason: str = "settled"


@dataclass
class Waiting:
    """An item still arriving (for the status file; carries no names)."""

    kind: str
    n_files: int
    size_bytes: int
    quiet_seconds: float
    needed_seconds: float


@dataclass
class ScanResult:
    ready: list[Item] = field(default_factory=list)
    waiting: list[Waiting] = field(default_factory=list)


@dataclass
class _Track:
    signature: str
    changed_at: float  # monotonic
    first_seen: float  # wall clock


def is_ignored_name(name: str) -> bool:
    """True for hidden names and partial-copy names that must never be picked up."""
    lower = name.lower()
    return name.startswith(".") or lower.endswith(TEMP_SUFFIXES) or lower in ("thumbs.db", "desktop.ini")


def entry_kind(path: Path) -> str:
    """Kind of a top-level inbox entry: folder, zip, volume or loose."""
    if path.is_dir():
        return "folder"
    lower = path.name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if volume_suffix(path) is not None:
        return "volume"
    return "loose"


def _walk_signature(path: Path) -> tuple[str, int, int]:
    """(signature hash, number of files, total bytes) of a file or a folder tree."""
    digest = hashlib.blake2b(digest_size=16)
    n_files = 0
    size = 0
    if path.is_file():
        st = path.stat()
        digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        return digest.hexdigest(), 1, st.st_size
    rows = []
    for root, dirs, files in os.walk(path):
        dirs.sort()
        rel_root = os.path.relpath(root, path)
        try:
            st = os.stat(root)
            rows.append(f"D {rel_root} {st.st_mtime_ns}")
        except FileNotFoundError:
            continue
        for name in sorted(files):
            try:  # lstat: a symbolic link (a loop, too) counts as itself
                st = os.lstat(os.path.join(root, name))
            except OSError:
                rows.append(f"F {rel_root}/{name} gone")
                continue
            rows.append(f"F {rel_root}/{name} {st.st_size} {st.st_mtime_ns}")
            n_files += 1
            size += st.st_size
    digest.update("\n".join(rows).encode("utf-8", "surrogateescape"))
    return digest.hexdigest(), n_files, size


class InboxScanner:
    """Tracks inbox entries across scans and reports those that have settled.

    Not thread-safe except :meth:`note_event`, which may be called from an observer
    thread while :meth:`scan` runs in another.
    """

    def __init__(self, config: WatcherConfig, clock=time.monotonic, wall_clock=time.time):
        self.config = config
        self._clock = clock
        self._wall = wall_clock
        self._tracks: dict[str, _Track] = {}
        self._events: dict[str, float] = {}
        self._loose_files: dict[str, tuple[int, int]] = {}
        self._inbox_missing = False

    # -- events ---------------------------------------------------------------------
    def note_event(self, path: str | os.PathLike) -> None:
        """A filesystem event touched ``path``: restart the quiet clock of its entry."""
        try:
            rel = Path(path).absolute().relative_to(self.config.inbox)
        except ValueError:
            return
        if not rel.parts:
            return
        top = rel.parts[0]
        if is_ignored_name(top):
            return
        key = top
        entry = self.config.inbox / top
        if len(rel.parts) == 1 and entry.is_file() and entry_kind(entry) == "loose":
            key = LOOSE_KEY
        self._events[key] = self._clock()

    # -- scanning -------------------------------------------------------------------
    def _settled(self, key: str, signature: str, needed: float, now: float) -> tuple[bool, float, _Track]:
        track = self._tracks.get(key)
        if track is None or track.signature != signature:
            first = track.first_seen if track else self._wall()
            track = _Track(signature, now, first)
            self._tracks[key] = track
        last_change = max(track.changed_at, self._events.get(key, -1e18))
        quiet = now - last_change
        return quiet >= needed, quiet, track

    def scan(self) -> ScanResult:
        """List the inbox once; return settled items and the ones still arriving."""
        now = self._clock()
        result = ScanResult()
        entries = self._list_inbox()
        if entries is None:
            return result
        names = {e.name for e in entries}
        seen: set[str] = set()
        loose: list[Path] = []
        for entry in entries:
            if is_ignored_name(entry.name) or self._is_marker(entry.name):
                continue
            path = Path(entry.path)
            try:
                kind = entry_kind(path)
                if kind == "loose":
                    loose.append(path)
                    continue
                signature, n_files, size = _walk_signature(path)
            except (FileNotFoundError, NotADirectoryError):
                continue
            seen.add(entry.name)
            self._scan_item(path, kind, signature, n_files, size, names, now, result)
        if loose:
            seen.add(LOOSE_KEY)
            result_loose = self._scan_loose(loose, now, names)
            result.ready.extend(result_loose.ready)
            result.waiting.extend(result_loose.waiting)
        self._forget_gone(seen, names)
        return result

    def _list_inbox(self) -> list[os.DirEntry] | None:
        """The inbox's entries by name; None (said once) while it cannot be listed."""
        cfg = self.config
        try:
            entries = sorted(os.scandir(cfg.inbox), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError, PermissionError) as err:
            if not self._inbox_missing:  # say it once, not on every scan
                log.warning("inbox %s cannot be listed (%s); waiting for it to come back",
                            cfg.inbox, type(err).__name__)
            self._inbox_missing = True
            return None
        if self._inbox_missing:
            log.info("inbox %s is back", cfg.inbox)
            self._inbox_missing = False
        return entries

    def _is_marker(self, name: str) -> bool:
        """Whether inbox entry ``name`` is a marker, not an item.

        A marker belongs to a sibling item, to the loose files, or to an item that is gone
        or not there yet; none of them is processed.
        """
        cfg = self.config
        return name == cfg.marker_name or name.lower().endswith(cfg.marker_suffix)

    def _scan_item(self, path: Path, kind: str, signature, n_files: int, size: int,
                   names: set[str], now: float, result: ScanResult) -> None:
        """Add one folder or archive of the inbox to ``result``: ready or still arriving."""
        cfg = self.config
        name = path.name
        sibling = cfg.inbox / (name + cfg.marker_suffix)
        inner = path / cfg.marker_name if kind == "folder" else None
        marker = None
        if sibling.name in names:
            marker = sibling
        elif inner is not None and inner.is_file():
            marker = inner
        needed = cfg.settle_seconds
        if kind == "folder" and n_files == 0:
            needed = max(cfg.settle_seconds, cfg.empty_grace_seconds)
        settled, quiet, track = self._settled(name, signature, needed, now)
        if marker is not None:
            settled = True
        if settled:
            result.ready.append(
                Item(name, kind, [path], n_files, size, track.first_seen, marker,
                     "marker" if marker is not None and quiet < needed else "settled")
            )
        else:
            result.waiting.append(Waiting(kind, n_files, size, round(quiet, 1), needed))

    def _forget_gone(self, seen: set[str], names: set[str]) -> None:
        """Drop the tracks of the items no longer in the inbox.

        Once every loose file was claimed, their marker goes too.
        """
        cfg = self.config
        if LOOSE_KEY not in seen:
            self._loose_files = {}
            if cfg.marker_name in names and (cfg.inbox / cfg.marker_name).is_file():
                _unlink_quiet(cfg.inbox / cfg.marker_name)  # every loose file was claimed
        for key in set(self._tracks) | set(self._events):
            if key not in seen:
                self._tracks.pop(key, None)
                self._events.pop(key, None)

    def _scan_loose(self, loose: list[Path], now: float, names: set[str]) -> ScanResult:
        """Loose files settle together; files leaving (claimed) do not restart the clock."""
        cfg = self.config
        files: dict[str, tuple[int, int]] = {}
        for path in loose:
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            files[path.name] = (st.st_size, st.st_mtime_ns)
        out = ScanResult()
        if not files:
            return out
        previous = self._loose_files
        grew = any(previous.get(name) != sig for name, sig in files.items())
        self._loose_files = files
        track = self._tracks.get(LOOSE_KEY)
        if track is None or grew:
            first = track.first_seen if track else self._wall()
            track = _Track("", now, first)
            self._tracks[LOOSE_KEY] = track
        quiet = now - max(track.changed_at, self._events.get(LOOSE_KEY, -1e18))
        settled = quiet >= cfg.settle_seconds
        marker = cfg.inbox / cfg.marker_name if cfg.marker_name in names else None
        n_files, size = len(files), sum(sig[0] for sig in files.values())
        if not (settled or marker is not None):
            out.waiting.append(Waiting("files", n_files, size, round(quiet, 1), cfg.settle_seconds))
            return out
        reason = "settled" if settled else "marker"
        present = [cfg.inbox / name for name in sorted(files)]
        for kind, key, paths in group_loose_files(present):
            out.ready.append(
                Item(key, kind, paths, len(paths), sum(files[p.name][0] for p in paths),
                     track.first_seen, marker, reason)
            )
        return out

    def forget(self, key: str) -> None:
        """Drop tracking of ``key`` (after it was claimed)."""
        self._tracks.pop(key, None)
        self._events.pop(key, None)


def _unlink_quiet(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def group_loose_files(paths: list[Path]) -> list[tuple[str, str, list[Path]]]:
    """Group loose files by DICOM series.

    A file is DICOM when :func:`pengwin_demo.dicom.read_header` reads it, the same
    policy ``convert`` follows (files without preamble included).

    Returns
    -------
    list of (kind, key, paths)
        kind "files" for one DICOM series (key derived from the series UID, hashed),
        "unreadable" for all files that are not DICOM (one group). Sorted by key.
    """
    groups: dict[str, list[Path]] = {}
    junk: list[Path] = []
    for path in sorted(paths):
        uid = series_key(path)
        if uid is None:
            junk.append(path)
        else:
            groups.setdefault(uid, []).append(path)
    out = []
    for uid, members in sorted(groups.items()):
        key = "series-" + hashlib.blake2b(uid.encode(), digest_size=8).hexdigest()
        out.append(("files", LOOSE_KEY + key, members))
    if junk:
        out.append(("unreadable", LOOSE_KEY + "unreadable", junk))
    return out
