"""``python -m watcher --inbox IN --outbox OUT [--work DIR] [--polling] [--settle-seconds S] [--once]``.

``--dicom-port PORT --ae-title TITLE`` also receives CT series over DICOM (C-STORE);
``--send-to HOST:PORT:AET`` sends each job's DICOM SEG back to a PACS (docs/watcher.md).

Settings also come from a config file (``--config FILE`` or ``PENGWIN_WATCHER_CONFIG``) and
from ``PENGWIN_WATCHER_<KEY>`` environment variables; the command line wins.
Without ``-v`` the log has one line per job event; the pipeline's own lines go to the
``job.log`` of each result (or failed entry). Exit status: 0 normally (``--once``: also when some jobs failed; see the failed area),
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
from .dicom_node import DicomReceiver
from .jobs import JobStore
from .send import ResultSender
from .service import WatcherService

NETWORK_KEYS = ("dicom_port", "dicom_host", "ae_title", "calling_aets", "send_to", "send_stl",
                "send_max_attempts", "send_retry_seconds")


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
    p.add_argument("--allow-non-ct", action="store_const", const=True, default=None,
                   dest="allow_non_ct", help="process inputs whose values do not look like CT "
                   "in HU (refused by default; masked-bone CTs need no override)")
    p.add_argument("--device", help="pipeline device: auto, cpu or cuda (default auto)")
    p.add_argument("--max-attempts", type=int, dest="max_attempts",
                   help="attempts before an interrupted job is failed (default 2)")
    net = p.add_argument_group("DICOM network (a PACS sends series and gets the SEG back)")
    net.add_argument("--dicom-port", type=int, dest="dicom_port",
                     help="receive CT series by C-STORE on this TCP port (default off)")
    net.add_argument("--dicom-host", dest="dicom_host",
                     help="address the receiver binds to (default 0.0.0.0, every interface)")
    net.add_argument("--ae-title", dest="ae_title", help="this node's AE title (default PENGWIN)")
    net.add_argument("--calling-aets", dest="calling_aets", metavar="AET[,AET...]",
                     help="only these calling AE titles may send (default any)")
    net.add_argument("--send-to", dest="send_to", metavar="HOST:PORT:AET",
                     help="C-STORE each job's DICOM SEG to this PACS (implies --dicom-seg)")
    net.add_argument("--send-stl", action="store_const", const=True, default=None, dest="send_stl",
                     help="with --send-to: also send each fragment mesh as Encapsulated STL")
    net.add_argument("--send-max-attempts", type=int, dest="send_max_attempts",
                     help="tries of a send before it goes to the failed area (default 6)")
    net.add_argument("--send-retry-seconds", type=float, dest="send_retry_seconds",
                     help="wait after a failed send, doubled each time (default 30)")
    p.add_argument("--once", action="store_true",
                   help="process what is in the inbox (after settling) and exit")
    p.add_argument("--timeout", type=float, default=None,
                   help="with --once: give up waiting for unsettled items after this many seconds")
    p.add_argument("--process", default=None, metavar="MODULE:FUNCTION",
                   help="advanced: import path of a process(input_path, out_dir) callable to "
                   "run instead of the bundled pipeline")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _job_events_only(record: logging.LogRecord) -> bool:
    """Keep the watcher's own lines; the pipeline's (pengwin_demo.*) belong in job.log."""
    return not record.name.startswith("pengwin_demo")


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
    if not args.verbose:  # one line per job event; the pipeline's detail goes to job.log
        for handler in logging.getLogger().handlers:
            handler.addFilter(_job_events_only)
    return exit_status(lambda: _serve(args))


def _serve(args: argparse.Namespace) -> int:
    keys = ("inbox", "outbox", "work", "failed", "settle_seconds", "empty_grace_seconds",
            "polling", "keep_inputs", "dicom_seg", "allow_non_ct", "device", "max_attempts",
            *NETWORK_KEYS)
    config = load_config({k: getattr(args, k) for k in keys}, config_file=args.config)
    if config.send_to:
        config = config.with_(dicom_seg=True)
    if args.once and config.dicom_port:
        raise InputError("--dicom-port runs a receiver, which --once would stop at once; "
                         "run without --once (e.g. under systemd).")
    process = _import_callable(args.process) if args.process else None
    sender = ResultSender(config, record=JobStore(config).record) if config.send_to else None
    service = WatcherService(config, process=process, on_done=sender.enqueue if sender else None)
    if args.once:
        counts = service.run_once(timeout=args.timeout)
        left = sender.drain(timeout=args.timeout) if sender else 0
        logging.getLogger("watcher").info(
            "once: %d done, %d failed, %d left in the inbox, %d sends pending",
            counts["done"], counts["failed"], counts["left"], left)
        return 0
    receiver = None
    try:
        if config.dicom_port:
            receiver = DicomReceiver.from_config(config)
            JobStore(config).prepare()  # the staging area must be on the inbox's filesystem
            receiver.start()
        if sender:
            sender.start()
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
    finally:
        for part in (receiver, sender):
            if part is not None:
                part.stop()


if __name__ == "__main__":
    sys.exit(main())
