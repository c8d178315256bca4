"""DICOM receiver: a PACS (or a router) sends CT series by C-STORE; each settled series
becomes one inbox folder, processed by the same exactly-once job machinery.

Durability: an instance is written to a temporary file, fsynced, renamed into its series
folder under ``<work>/dicom/staging/`` and the folder fsynced *before* the C-STORE success
status goes back, so an acknowledged image survives kill -9 and power loss. Temporary
files (never acknowledged) are removed on start; series folders found on start are
resumed and handed on after a full settle time.

Hand-over: a series whose last instance arrived ``settle_seconds`` ago gets a ``READY``
marker and is renamed into the inbox in one step (staging lives in the work area, which
the job store has checked is on the inbox's filesystem); the inbox scanner claims it at
once because of the marker. Instances of a series arriving after its hand-over start a
new staging folder, so they become a second job (as a folder copied in two parts would).

Names on disk and in the log are hashes of UIDs, never UIDs or patient data.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from pydicom.uid import (
    UID,
    CTImageStorage,
    EnhancedCTImageStorage,
    LegacyConvertedEnhancedCTImageStorage,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from pengwin_demo.errors import InputError

from .config import WatcherConfig
from .jobs import fsync_dir

log = logging.getLogger("watcher.dicom")

CT_STORAGE_SOP_CLASSES = (CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage)
"""The SOP classes the node stores; any other storage SOP class is refused."""

STAGING_DIR_NAME = "dicom/staging"
"""Staging area, relative to the work area."""

INBOX_PREFIX = "dicom-"
"""Inbox folders made from received series are named ``dicom-<series hash>-<random>``."""


class StoreStatus(IntEnum):
    """C-STORE response statuses the node returns (PS3.4 B.2.3, PS3.7 C)."""

    SUCCESS = 0x0000
    REFUSED_SOP_CLASS_NOT_SUPPORTED = 0x0122
    REFUSED_OUT_OF_RESOURCES = 0xA700
    ERROR_DATASET_DOES_NOT_MATCH = 0xA900
    ERROR_CANNOT_UNDERSTAND = 0xC000


def uid_key(uid: str, prefix: str) -> str:
    """A short, stable file name for a UID (a hash: UIDs never appear in names or logs)."""
    return prefix + hashlib.blake2b(uid.encode("ascii", "replace"), digest_size=8).hexdigest()


@dataclass
class _Series:
    key: str
    last_arrival: float  # monotonic s
    n_received: int = 0


class SeriesStaging:
    """Instances on disk, grouped by series, handed to the inbox once settled.

    Parameters
    ----------
    root : Path
        Staging folder (on the inbox's filesystem).
    inbox : Path
        Where settled series folders are renamed to.
    settle_seconds : float
        Quiet time after a series' last instance before it is handed on.
    marker_name : str
        Marker file the inbox scanner treats as "copy complete".
    """

    def __init__(self, root: Path, inbox: Path, settle_seconds: float, marker_name: str = "READY",
                 clock=time.monotonic):
        self.root = Path(root)
        self.tmp = self.root / ".tmp"
        self.inbox = Path(inbox)
        self.settle_seconds = float(settle_seconds)
        self.marker_name = marker_name
        self._clock = clock
        self._lock = threading.Lock()
        self._series: dict[str, _Series] = {}

    def recover(self) -> int:
        """Create the folders, drop unacknowledged temp files, resume staged series.

        Returns the number of series resumed (each waits a full settle time again).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        now = self._clock()
        with self._lock:
            for d in sorted(self.root.iterdir()):
                if d.is_dir() and not d.name.startswith("."):
                    n = sum(1 for _ in d.glob("*.dcm"))
                    self._series.setdefault(d.name, _Series(d.name, now, n))
            return len(self._series)

    def store(self, series_uid: str, sop_instance_uid: str, data: bytes) -> Path:
        """Write one instance durably; return its path. Raises OSError (disk full...).

        A resent instance (same SOP Instance UID) replaces the earlier copy.
        """
        key = uid_key(series_uid, "s-")
        name = uid_key(sop_instance_uid, "i-") + ".dcm"
        tmp = self.tmp / f"{name}.{threading.get_ident()}.{secrets.token_hex(3)}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            with self._lock:  # a hand-over renames the series folder: not in between
                folder = self.root / key
                folder.mkdir(exist_ok=True)
                os.replace(tmp, folder / name)
                fsync_dir(folder)
                fsync_dir(self.root)
                series = self._series.setdefault(key, _Series(key, self._clock()))
                series.last_arrival = self._clock()
                series.n_received += 1
        finally:
            if tmp.exists():
                tmp.unlink()
        return folder / name

    def pending(self) -> list[tuple[str, int, float]]:
        """(series key, instances received, quiet seconds) of the series still staged."""
        now = self._clock()
        with self._lock:
            return [(s.key, s.n_received, now - s.last_arrival) for s in self._series.values()]

    def hand_over_settled(self, force: bool = False) -> list[Path]:
        """Move every settled series into the inbox (one rename each); return the new folders."""
        now = self._clock()
        moved = []
        with self._lock:
            for key, series in list(self._series.items()):
                if not force and now - series.last_arrival < self.settle_seconds:
                    continue
                target = self._hand_over(key)
                del self._series[key]
                if target is not None:
                    moved.append(target)
                    log.info("series %s complete: %d instance(s) handed to the inbox as %s",
                             key, series.n_received, target.name)
        return moved

    def _hand_over(self, key: str) -> Path | None:
        folder = self.root / key
        if not folder.is_dir():
            return None
        marker = folder / self.marker_name
        marker.write_bytes(b"")
        target = self.inbox / f"{INBOX_PREFIX}{key[2:]}-{secrets.token_hex(3)}"
        os.rename(folder, target)
        fsync_dir(self.inbox)
        fsync_dir(self.root)
        return target


@dataclass(frozen=True)
class NodeSettings:
    """Network settings of the receiver.

    Parameters
    ----------
    port : int
        TCP port to listen on (104 and 11112 are usual; >1024 needs no root).
    ae_title : str
        This node's Application Entity title (what the PACS calls it).
    host : str
        Address to bind ("0.0.0.0": every interface).
    calling_aets : tuple of str
        Calling AE titles allowed to associate; empty: everyone.
    """

    port: int
    ae_title: str = "PENGWIN"
    host: str = "0.0.0.0"
    calling_aets: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: WatcherConfig) -> "NodeSettings":
        allowed = tuple(a.strip() for a in config.calling_aets.split(",") if a.strip())
        settings = cls(int(config.dicom_port), config.ae_title, config.dicom_host, allowed)
        settings.check()
        return settings

    def check(self) -> None:
        if not 0 < self.port < 65536:
            raise InputError(f"--dicom-port {self.port}: choose a TCP port between 1 and 65535.")
        for title in (self.ae_title, *self.calling_aets):
            if not 0 < len(title) <= 16 or "\\" in title or not title.isprintable():
                raise InputError(f"AE title {title!r}: must be 1-16 printable characters without '\\'.")


class DicomReceiver:
    """A Storage SCP (CT images) and Verification SCP in front of :class:`SeriesStaging`.

    ``start()`` listens in background threads and hands settled series to the inbox every
    ``poll_seconds``; ``stop()`` closes the port (staged series stay for the next start).
    """

    def __init__(self, settings: NodeSettings, staging: SeriesStaging):
        self.settings = settings
        self.staging = staging
        self._server = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refused = 0

    @classmethod
    def from_config(cls, config: WatcherConfig) -> "DicomReceiver":
        staging = SeriesStaging(config.work / STAGING_DIR_NAME, config.inbox,
                                config.settle_seconds, config.marker_name)
        return cls(NodeSettings.from_config(config), staging)

    def _application_entity(self) -> AE:
        ae = AE(ae_title=self.settings.ae_title)
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            # CT in any transfer syntax the loader can decode; other classes are accepted
            # at negotiation only so that each instance gets a clear refusal status
            uid = context.abstract_syntax
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES if uid in CT_STORAGE_SOP_CLASSES
                                     else context.transfer_syntax)
        ae.require_calling_aet = list(self.settings.calling_aets)
        ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs for big images
        return ae

    def start(self) -> "DicomReceiver":
        """Resume staged series, open the port, start handing over settled series."""
        resumed = self.staging.recover()
        if resumed:
            log.info("%d staged series resumed from before the restart", resumed)
        # pynetdicom's INFO/DEBUG lines can quote dataset values: keep them out of the log
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo)]
        ae = self._application_entity()
        try:
            self._server = ae.start_server((self.settings.host, self.settings.port), block=False,
                                           evt_handlers=handlers)
        except OSError as err:
            raise InputError(
                f"cannot listen for DICOM on {self.settings.host}:{self.settings.port} "
                f"({err.strerror or err}). Choose a free --dicom-port (ports below 1024 need root)."
            ) from None
        self._stop.clear()
        self._thread = threading.Thread(target=self._hand_over_loop, name="pengwin-dicom-handover",
                                        daemon=True)
        self._thread.start()
        allowed = ", ".join(self.settings.calling_aets) or "any calling AE"
        log.info("DICOM receiver %s listening on %s:%d (%s)", self.settings.ae_title,
                 self.settings.host, self.settings.port, allowed)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    @property
    def poll_seconds(self) -> float:
        return min(max(self.staging.settle_seconds / 5.0, 0.1), 1.0)

    def _hand_over_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.staging.hand_over_settled()
            except OSError:  # inbox gone for a while: the series stay staged, retried
                log.exception("handing a received series to the inbox failed; retrying")

    # -- DIMSE handlers (run in pynetdicom's association threads) ----------------------
    def _on_echo(self, event) -> int:
        log.info("C-ECHO from %s", _calling(event))
        return StoreStatus.SUCCESS

    def _on_store(self, event) -> int:
        sop_class = UID(str(event.request.AffectedSOPClassUID))
        if sop_class not in CT_STORAGE_SOP_CLASSES:
            self.refused += 1
            log.warning("refused an instance of %s from %s: only CT images are processed",
                        sop_class.name, _calling(event))
            return StoreStatus.REFUSED_SOP_CLASS_NOT_SUPPORTED
        try:
            series_uid = str(event.dataset.get("SeriesInstanceUID", "") or "")
        except Exception:  # noqa: BLE001 - any decoding failure is the sender's data
            log.warning("an instance from %s could not be decoded; refused", _calling(event))
            return StoreStatus.ERROR_CANNOT_UNDERSTAND
        if not series_uid:
            log.warning("an instance from %s has no SeriesInstanceUID; refused", _calling(event))
            return StoreStatus.ERROR_DATASET_DOES_NOT_MATCH
        try:
            self.staging.store(series_uid, str(event.request.AffectedSOPInstanceUID),
                               event.encoded_dataset())
        except OSError as err:
            log.error("cannot store an instance from %s (%s); the sender was told to retry",
                      _calling(event), err.strerror or type(err).__name__)
            return StoreStatus.REFUSED_OUT_OF_RESOURCES
        return StoreStatus.SUCCESS


def _calling(event) -> str:
    """The calling AE title of an event's association (not a patient identifier)."""
    title = event.assoc.requestor.ae_title
    return str(title).strip() or "?"
