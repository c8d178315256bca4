"""``python -m watcher --inbox IN --outbox OUT [--work DIR] [--polling] [--settle-seconds S] [--once]``.

Settings also come from a config file (``--config FILE`` or ``PENGWIN_WATCHER_CONFIG``) and
from ``PENGWIN_WATCHER_<KEY>`` environment variables; the command line wins.
Exit status: 0 normally (``--once``: also when some jobs failed; see the failed area),
2 for bad settings or a model that cannot be loaded.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from pengwin_demo.errors import InputError, exit_status

from .config import load_config
from .service import WatcherService


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m watcher",
        description="Watch an inbox for CT series (DICOM folders, zips, loose DICOM files, "
        "NIfTI/MHA/NRRD) and write fragment labels, meshes and reports to an outbox.",
    )
    p.add_argument("--inbox", help="folder staff copy series into")
    p.add_argument("--outbox", help="folder results appear in, one <job-id>/ folder per job")
    p.add_argument("--work", help="work area on the inbox's filesystem (default <inbox>/.pengwin-work)")
    p.add_argument("--failed", help="failed area (default <work>/failed); never inside the outbox")
    p.add_argument("--config", help="TOML or JSON config file (keys as below, underscores)")
    p.add_argument("--settle-seconds", type=float, dest="settle_seconds",
                   help="quiet time before an item counts as arrived (default 30)")
    p.add_argument("--empty-grace-seconds", type=float, dest="empty_grace_seconds",
                   help="how long an empty folder may wait for files (default 300)")
    p.add_argument("--polling", action="store_const", const=True, default=None,
                   help="use watchdog's PollingObserver (SMB/NFS shares send no events)")
    p.add_argument("--keep-inputs", action="store_const", const=True, default=None,
                   dest="keep_inputs", help="keep inputs of finished jobs in <work>/done/")
    p.add_argument("--dicom-seg", action="store_const", const=True, default=None,
                   dest="dicom_seg", help="also write a DICOM SEG per job")
    p.add_argument("--device", help="pipeline device: auto, cpu or cuda (default auto)")
    p.add_argument("--max-attempts", type=int, dest="max_attempts",
                   help="attempts before an interrupted job is failed (default 2)")
    p.add_argument("--once", action="store_true",
                   help="process what is in the inbox (after settling) and exit")
    p.add_argument("--timeout", type=float, default=None,
                   help="with --once: give up waiting for unsettled items after this many seconds")
    p.add_argument("--process", default=None, metavar="MODULE:FUNCTION",
                   help="advanced: import path of a process(input_path, out_dir) callable to "
                   "run instead of the bundled pipeline")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _import_callable(spec: str):
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InputError(f"--process {spec!r}: expected MODULE:FUNCTION.")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise InputError(f"--process {spec!r}: cannot import it ({err}).") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return exit_status(lambda: _serve(args))


def _serve(args: argparse.Namespace) -> int:
    keys = ("inbox", "outbox", "work", "failed", "settle_seconds", "empty_grace_seconds",
            "polling", "keep_inputs", "dicom_seg", "device", "max_attempts")
    config = load_config({k: getattr(args, k) for k in keys}, config_file=args.config)
    process = _import_callable(args.process) if args.process else None
    service = WatcherService(config, process=process)
    if args.once:
        counts = service.run_once(timeout=args.timeout)
        logging.getLogger("watcher").info(
            "once: %d done, %d failed, %d left in the inbox",
            counts["done"], counts["failed"], counts["left"])
        return 0
    interrupted = []

    def _graceful(signum, _frame):
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(signum)
        logging.getLogger("watcher").info("stopping after the current job (signal %d)", signum)
        service.stop(timeout=0)

    signal.signal(signal.SIGTERM, _graceful)
    signal.signal(signal.SIGINT, _graceful)
    service.run_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
