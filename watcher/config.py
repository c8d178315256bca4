"""Watcher settings: defaults < config file < environment < command line.

A config file is TOML (``.toml``) or JSON (``.json``) holding the keys of
:class:`WatcherConfig` at the top level or under a ``[watcher]`` table. Environment
variables are ``PENGWIN_WATCHER_<KEY>`` in upper case (``PENGWIN_WATCHER_INBOX``,
``PENGWIN_WATCHER_SETTLE_SECONDS``, ...); the app's ``PENGWIN_INBOX``, ``PENGWIN_OUTBOX``,
``PENGWIN_WORK`` and ``PENGWIN_POLLING`` are read too (the ``PENGWIN_WATCHER_`` form wins);
``PENGWIN_WATCHER_CONFIG`` names a config file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from pengwin_demo.errors import InputError

ENV_PREFIX = "PENGWIN_WATCHER_"

TEMP_SUFFIXES = (".part", ".partial", ".tmp", ".temp", ".crdownload", ".filepart", ".download", "~")
"""Inbox names ending like this are copies in progress and are never picked up."""


@dataclass(frozen=True)
class WatcherConfig:
    """Where the watcher reads, works and writes, and how it decides a series has arrived.

    Parameters
    ----------
    inbox : Path
        Folder staff copy series into (folders, zips, loose DICOM files, volume files).
    outbox : Path
        Folder results appear in, one complete ``<job-id>/`` folder per job.
    work : Path, optional
        Work area holding claimed jobs, the failed area, the status file and the job
        history. Must be on the same filesystem as the inbox (claims are renames).
        Default: ``<inbox>/.pengwin-work`` (hidden, so never taken for a series).
    failed : Path, optional
        Where unprocessable inputs go with an ``error.txt``. Default ``<work>/failed``.
        Never inside the outbox.
    settle_seconds : float
        An item is picked up only after its file list, sizes and mtimes have been
        unchanged for this long (default 30 s).
    empty_grace_seconds : float
        An empty folder is given this long to receive files before it is failed
        (default 300 s; staff often create the folder first and paste later).
    marker_name : str
        A file with this name inside a folder, or ``<entry><marker_suffix>`` beside a
        folder/zip/file, means "copy complete": the wait ends at once.
    polling : bool
        Use watchdog's PollingObserver (SMB/NFS shares deliver no inotify events).
    scan_interval_seconds : float, optional
        How often the inbox is rescanned even without events. Default: settle/5,
        clipped to 0.2-5 s.
    max_attempts : int
        A job interrupted (process killed) this many times goes to the failed area
        instead of being tried again.
    keep_inputs : bool
        Keep the inputs of finished jobs in ``<work>/done/<job-id>/`` (default: delete).
    dicom_seg : bool
        Ask the pipeline for a DICOM SEG as well.
    allow_non_ct : bool
        Process inputs whose values do not look like CT in Hounsfield units (MR, 0..1
        images, label maps); refused into the failed area by default.
    retry_seconds : float
        A job that failed for want of disk space (or another write error of the machine)
        stays queued and is retried after this long (default 60 s).
    device : str
        Device for the default pipeline ("auto", "cpu", "cuda").
    dicom_port : int
        Also receive CT series by DICOM C-STORE on this TCP port (0: off); see
        :mod:`watcher.dicom_node`.
    dicom_host : str
        Address the DICOM receiver binds to (default every interface).
    ae_title : str
        This node's AE title (the receiver's, and the calling AE title when sending).
    calling_aets : str
        Comma-separated calling AE titles allowed to send to the receiver (empty: any).
    send_to : str
        ``HOST:PORT:AET`` of a PACS to C-STORE each job's DICOM SEG to (empty: off);
        see :mod:`watcher.send`.
    send_stl : bool
        With ``send_to``: also send each fragment mesh as an Encapsulated STL instance.
    send_max_attempts : int
        Tries of a send before it goes to the failed area.
    send_retry_seconds : float
        Wait after the first failed send; doubled after each further failure (at most
        one hour).
    """

    inbox: Path
    outbox: Path
    work: Path | None = None
    failed: Path | None = None
    settle_seconds: float = 30.0
    empty_grace_seconds: float = 300.0
    marker_name: str = "READY"
    marker_suffix: str = ".ready"
    polling: bool = False
    scan_interval_seconds: float | None = None
    max_attempts: int = 2
    keep_inputs: bool = False
    dicom_seg: bool = False
    allow_non_ct: bool = False
    retry_seconds: float = 60.0
    device: str = "auto"
    history_max_bytes: int = 5_000_000
    dicom_port: int = 0
    dicom_host: str = "0.0.0.0"
    ae_title: str = "PENGWIN"
    calling_aets: str = ""
    send_to: str = ""
    send_stl: bool = False
    send_max_attempts: int = 6
    send_retry_seconds: float = 30.0

    def __post_init__(self) -> None:
        inbox = Path(self.inbox).expanduser().absolute()
        outbox = Path(self.outbox).expanduser().absolute()
        work = Path(self.work).expanduser().absolute() if self.work else inbox / ".pengwin-work"
        failed = Path(self.failed).expanduser().absolute() if self.failed else work / "failed"
        object.__setattr__(self, "inbox", inbox)
        object.__setattr__(self, "outbox", outbox)
        object.__setattr__(self, "work", work)
        object.__setattr__(self, "failed", failed)
        if self.settle_seconds < 0 or self.empty_grace_seconds < 0:
            raise InputError("settle_seconds and empty_grace_seconds must be >= 0.")
        if self.max_attempts < 1:
            raise InputError("max_attempts must be at least 1.")
        if _inside(outbox, inbox) or _inside(inbox, outbox):
            raise InputError(
                f"inbox ({inbox}) and outbox ({outbox}) must be separate folders, neither "
                "inside the other. Choose two sibling folders."
            )
        if _inside(failed, outbox) or _inside(work, outbox):
            raise InputError(
                f"the work area ({work}) and failed area ({failed}) must not lie inside the "
                f"outbox ({outbox}), which downstream systems read. Choose another --work/--failed."
            )

    @property
    def scan_interval(self) -> float:
        """Seconds between inbox rescans when no filesystem event arrives."""
        if self.scan_interval_seconds:
            return float(self.scan_interval_seconds)
        return min(max(self.settle_seconds / 5.0, 0.2), 5.0)

    def with_(self, **changes: Any) -> "WatcherConfig":
        return replace(self, **changes)


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


SHARED_ENV = {"inbox": "PENGWIN_INBOX", "outbox": "PENGWIN_OUTBOX", "work": "PENGWIN_WORK",
              "polling": "PENGWIN_POLLING"}
"""Variables ``python app.py`` reads too; ``PENGWIN_WATCHER_<KEY>`` wins over them."""

_FIELD_TYPES = {f.name: f.type for f in fields(WatcherConfig)}


def _coerce(key: str, value: Any, source: str) -> Any:
    kind = str(_FIELD_TYPES[key])
    if value is None:
        return None
    try:
        if "bool" in kind:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(value)
        if "float" in kind:
            return float(value)
        if "int" in kind:
            return int(value)
        if "Path" in kind:
            return Path(str(value))
        return str(value)
    except (TypeError, ValueError):
        raise InputError(f"{source}: {key}={value!r} is not a valid {kind}.") from None


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML or JSON config file into a dict of :class:`WatcherConfig` keys."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: config file not found. Check --config / PENGWIN_WATCHER_CONFIG.")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import tomllib

            data = tomllib.loads(text)
    except (ValueError, json.JSONDecodeError) as err:
        raise InputError(f"{path.name}: cannot be parsed ({err}). Fix the syntax.") from None
    if isinstance(data.get("watcher"), dict):
        data = data["watcher"]
    out = {}
    for key, value in data.items():
        key = key.replace("-", "_")
        if key not in _FIELD_TYPES:
            raise InputError(
                f"{path.name}: unknown setting {key!r}. Known: {', '.join(sorted(_FIELD_TYPES))}."
            )
        out[key] = _coerce(key, value, path.name)
    return out


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``PENGWIN_WATCHER_<KEY>`` variables as a dict of :class:`WatcherConfig` keys."""
    environ = os.environ if environ is None else environ
    out = {}
    for key, name in SHARED_ENV.items():  # the app's names, so one environment serves both
        if environ.get(name, "") != "":
            out[key] = _coerce(key, environ[name], name)
    for key in _FIELD_TYPES:
        name = ENV_PREFIX + key.upper()
        if name in environ and environ[name] != "":
            out[key] = _coerce(key, environ[name], name)
    return out


def load_config(
    cli: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_file: str | os.PathLike | None = None,
) -> WatcherConfig:
    """Merge defaults, config file, environment and command line (later wins).

    Parameters
    ----------
    cli : mapping
        Settings given on the command line; ``None`` values mean "not given".
    environ : mapping, optional
        Environment (default ``os.environ``).
    config_file : path-like, optional
        Config file; default ``$PENGWIN_WATCHER_CONFIG`` if set.

    Raises
    ------
    InputError
        Inbox or outbox missing from every source, or a value that does not parse.
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG") or None
    if config_file:
        merged.update(read_config_file(config_file))
    merged.update(settings_from_env(environ))
    for key, value in (cli or {}).items():
        if value is not None and key in _FIELD_TYPES:
            merged[key] = _coerce(key, value, f"--{key.replace('_', '-')}")
    missing = [k for k in ("inbox", "outbox") if not merged.get(k)]
    if missing:
        raise InputError(
            f"no {' and no '.join(missing)} configured. Give --inbox IN --outbox OUT, set "
            f"{ENV_PREFIX}INBOX / {ENV_PREFIX}OUTBOX, or name a config file with --config."
        )
    return WatcherConfig(**merged)
