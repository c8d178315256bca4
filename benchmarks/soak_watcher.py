"""Soak test: series keep arriving while the watcher is killed (SIGKILL) at random moments.

Usage::

    python benchmarks/soak_watcher.py [--series 50] [--drop-seconds 150] [--budget-seconds 360]
                                      [--kill-every 4 15] [--seed 1] [--workdir DIR] [--json OUT]

Writes ``--series`` small phantom CT series (:mod:`pengwin_demo.phantom`, coarsened to
4 mm so that a job takes well under a second), then drops them into an inbox over
``--drop-seconds`` at random moments -- as folders, zips and loose files -- while a watcher
(``python -m watcher``) processes them. A killer sends SIGKILL to the watcher every
``--kill-every`` seconds (uniform between the two values) and starts a new one at once.
After the last drop the watcher runs without kills until the inbox is empty (at most
``--budget-seconds`` in all), then a final ``--once`` pass collects what is left.

The jobs run :func:`process`: the real DICOM loader and a real NIfTI write (not the
models, which would take minutes per series on a CPU); every job-level step the
watcher guarantees -- settle, claim, split, recovery, publish, fail -- is the real one.

Counted per series (by its SeriesNumber, written into each result): received (dropped),
done (results), failed (failed-area entries), lost (neither: must be 0) and duplicated
(more than one result: must be 0); temporary folders left behind must be 0 too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pengwin_demo.dicom import load_ct, read_header  # noqa: E402
from pengwin_demo.io import write_volume  # noqa: E402

FORMS = ("folder", "folder", "zip", "loose")
"""How a series arrives (folders twice as often as the others)."""


def process(input_path: Path, out_dir: Path) -> SimpleNamespace:
    """The soak's job: load the series as the pipeline does, write it and its number."""
    ct = load_ct(input_path)
    write_volume(ct.volume, Path(out_dir) / "ct.nii.gz")
    (Path(out_dir) / "series.json").write_text(json.dumps({"series_number": ct.series.series_number}))
    return SimpleNamespace(warnings=[])


def write_series(staging: Path, n: int, seed: int) -> list[Path]:
    """``n`` phantom series (SeriesNumber 1..n), each in its own folder under ``staging``."""
    from pengwin_demo.phantom import make_phantom
    from pengwin_demo.phantom import write_dicom_series
    from pengwin_demo.volume import resample_to_spacing

    ct, _labels = make_phantom(seed, size="small")
    ct = resample_to_spacing(ct, (4.0, 4.0, 4.0), "linear")
    folders = []
    for k in range(1, n + 1):
        folder = staging / f"series{k:03d}"
        write_dicom_series(ct, folder, series_number=k, patient_index=k, uid_key=f"soak-{seed}-{k}")
        folders.append(folder)
    return folders


def drop(folder: Path, inbox: Path, form: str) -> None:
    """Move one prepared series into the inbox the way a finished copy appears."""
    if form == "zip":
        tmp = folder.with_suffix(".zip")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for p in sorted(folder.iterdir()):
                zf.write(p, p.name)
        os.rename(tmp, inbox / tmp.name)
        shutil.rmtree(folder)
    elif form == "loose":
        for p in sorted(folder.iterdir()):
            os.rename(p, inbox / f"{folder.name}_{p.name}")
        folder.rmdir()
    else:
        os.rename(folder, inbox / folder.name)


class Watcher:
    """The watcher process, restarted after every kill."""

    def __init__(self, inbox: Path, outbox: Path, log_path: Path):
        self.cmd = [sys.executable, "-m", "watcher", "--inbox", str(inbox), "--outbox", str(outbox),
                    "--settle-seconds", "1", "--process", "soak_watcher:process"]
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")]))
        self.log = open(log_path, "a", encoding="utf-8")
        self.proc: subprocess.Popen | None = None
        self.kills = 0

    def start(self, *extra: str) -> subprocess.Popen:
        self.proc = subprocess.Popen([*self.cmd, *extra], cwd=ROOT, env=self.env,
                                     stdout=self.log, stderr=self.log)
        return self.proc

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def inbox_empty(inbox: Path) -> bool:
    jobs = inbox / ".pengwin-work" / "jobs"
    pending = [p for p in inbox.iterdir() if not p.name.startswith(".")]
    return not pending and not (jobs.is_dir() and any(jobs.iterdir()))


def series_numbers_in(folder: Path) -> set[int]:
    """SeriesNumbers of the DICOM files under ``folder`` (a failed entry's input; zips too)."""
    numbers = set()
    for p in folder.rglob("*"):
        if p.suffix == ".zip":
            with zipfile.ZipFile(p) as zf, tempfile.TemporaryDirectory() as tmp:
                zf.extractall(tmp)
                numbers |= series_numbers_in(Path(tmp))
        elif p.is_file():
            ds, _ = read_header(p)
            if ds is not None and ds.get("SeriesNumber") is not None:
                numbers.add(int(ds.SeriesNumber))
    return numbers


def count(outbox: Path, failed_dir: Path, n: int) -> dict:
    results = Counter()
    for job in outbox.iterdir():
        if not job.name.startswith(".") and (job / "series.json").is_file():
            results[json.loads((job / "series.json").read_text())["series_number"]] += 1
    failed = set()
    for job in failed_dir.iterdir() if failed_dir.is_dir() else []:
        failed |= series_numbers_in(job / "input")
    received = set(range(1, n + 1))
    return {
        "received": n,
        "done": len(set(results) & received),
        "failed": len(failed - set(results)),
        "lost": len(received - set(results) - failed),
        "duplicated": sum(c - 1 for c in results.values() if c > 1),
        "temp_left": len(list(outbox.glob(".tmp-*"))),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=50)
    ap.add_argument("--drop-seconds", type=float, default=150.0)
    ap.add_argument("--budget-seconds", type=float, default=360.0)
    ap.add_argument("--kill-every", type=float, nargs=2, default=(4.0, 15.0), metavar=("MIN", "MAX"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="pengwin-soak-"))
    inbox, outbox, staging = work / "inbox", work / "outbox", work / "staging"
    for d in (inbox, outbox, staging):
        d.mkdir(parents=True, exist_ok=True)
    folders = write_series(staging, args.series, args.seed)
    drop_at = sorted(rng.uniform(0, args.drop_seconds) for _ in folders)
    watcher = Watcher(inbox, outbox, work / "watcher.log")
    start = time.monotonic()
    next_kill = start + rng.uniform(*args.kill_every)
    watcher.start()
    pending = list(zip(drop_at, folders))
    try:
        while time.monotonic() - start < args.budget_seconds:
            now = time.monotonic() - start
            while pending and pending[0][0] <= now:
                _, folder = pending.pop(0)
                drop(folder, inbox, rng.choice(FORMS))
            if pending and time.monotonic() >= next_kill:
                watcher.kill()
                watcher.start()
                next_kill = time.monotonic() + rng.uniform(*args.kill_every)
            if not pending and inbox_empty(inbox):
                break
            time.sleep(0.1)
    finally:
        watcher.stop()
    final = watcher.start("--once", "--timeout", "120")
    final.wait(timeout=600)
    figures = count(outbox, inbox / ".pengwin-work" / "failed", args.series)
    figures.update(kills=watcher.kills, seconds=round(time.monotonic() - start, 1),
                   dropped_late=len(pending))
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    ok = figures["lost"] == 0 and figures["duplicated"] == 0 and figures["temp_left"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
