"""Support for the watcher tests: ``process`` callables and inbox/outbox helpers.

:func:`convert_process` is a real, light ``process(input_path, out_dir)`` for the watcher:
it loads the CT with :func:`pengwin_demo.dicom.load_ct` (so junk, truncated and MR input
fail exactly as in the pipeline) and writes ``ct.nii.gz`` and ``report.json``, reporting
the pipeline's "load", "labels" and "report" stages on the way. The full
pipeline is exercised by the end-to-end tests; this one keeps the many filesystem tests
fast. ``WATCHER_TEST_DELAY_S`` makes it pause between its two outputs so that a test can
kill the watcher while a job is half written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from watcher import WatcherConfig

from _helpers.paths import REPO
from pengwin_demo.dicom import load_ct
from pengwin_demo.io import write_volume


def convert_process(input_path: Path, out_dir: Path, progress=None) -> SimpleNamespace:
    progress = progress or (lambda stage, fraction: None)
    progress("load", 0.0)
    ct = load_ct(input_path)
    progress("labels", 0.5)  # the stage names of the pipeline, for the kill points
    write_volume(ct.volume, Path(out_dir) / "ct.nii.gz")
    progress("report", 0.9)
    delay = float(os.environ.get("WATCHER_TEST_DELAY_S", "0") or 0)
    if delay:
        marker = os.environ.get("WATCHER_TEST_STARTED_FILE")
        if marker:
            Path(marker).write_text(str(os.getpid()))
        time.sleep(delay)
    report = {"shape_zyx": list(ct.volume.shape), "spacing_zyx_mm": list(ct.volume.spacing_zyx_mm),
              "warnings": ct.warnings, "pid": os.getpid()}
    (Path(out_dir) / "report.json").write_text(json.dumps(report))
    return SimpleNamespace(warnings=list(ct.warnings))


# -- the real pipeline with oracle models ------------------------------------------
class OracleModel:
    """A stand-in model that "predicts" a phantom's ground truth on any grid it is given.

    The pipeline accepts any object with ``predict(Volume) -> uint8 array``; with these
    the whole real pipeline (DICOM loading, resampling, recovery, meshes, report, outputs)
    runs without trained weights, and its labels can be compared with the truth.
    """

    def __init__(self, truth, name: str):
        self.truth = truth
        self.name = name

    def predict(self, ct):
        from pengwin_demo.volume import resample_onto

        return resample_onto(self.truth, ct, "nearest").array


_ORACLE_CACHE: dict = {}


def oracle_case(seed: int):
    """(ct, fragment labels, Pipeline with oracle models) for phantom ``seed`` (cached)."""
    if seed not in _ORACLE_CACHE:
        from pengwin_demo.recovery import abbc_targets
        from pengwin_demo.labels import anatomy_from_fragments
        from pengwin_demo.phantom import make_phantom
        from pengwin_demo.pipeline import Pipeline

        ct, labels = make_phantom(seed, size="small")
        anatomy = labels.with_array(anatomy_from_fragments(labels.array))
        abbc = labels.with_array(abbc_targets(labels.array, labels.spacing_zyx_mm))
        pipeline = Pipeline(device="cpu", anatomy=OracleModel(anatomy, "oracle-anatomy"),
                            fragments=OracleModel(abbc, "oracle-abbc"))
        _ORACLE_CACHE[seed] = (ct, labels, pipeline)
    return _ORACLE_CACHE[seed]


def oracle_pipeline_process(input_path: Path, out_dir: Path, progress=None):
    """``process`` for ``python -m watcher --process``: the real pipeline, oracle models of
    phantom ``$WATCHER_TEST_PHANTOM_SEED``."""
    _ct, _labels, pipeline = oracle_case(int(os.environ["WATCHER_TEST_PHANTOM_SEED"]))
    return pipeline.run(input_path, out_dir, progress=progress)


# -- inbox and outbox ---------------------------------------------------------------
# -- helpers -----------------------------------------------------------------------
def make_dirs(tmp_path: Path) -> tuple[Path, Path]:
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    return inbox, outbox


def drop(staging: Path, inbox: Path) -> Path:
    """Move a prepared item into the inbox in one step (as a finished copy looks)."""
    target = inbox / staging.name
    os.rename(staging, target)
    return target


def outputs(outbox: Path) -> list[Path]:
    return sorted(p for p in outbox.iterdir() if not p.name.startswith(".")) if outbox.is_dir() else []


def failed_jobs(config: WatcherConfig) -> list[Path]:
    return sorted(p for p in config.failed.iterdir()) if config.failed.is_dir() else []


def wait_for(condition, timeout: float, interval: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def watcher_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def watcher_cmd(inbox: Path, outbox: Path, *extra: str) -> list[str]:
    """``python -m watcher`` on ``inbox``/``outbox`` with :func:`convert_process` as the job."""
    return [sys.executable, "-m", "watcher", "--inbox", str(inbox), "--outbox", str(outbox),
            "--process", "_helpers.watcher_jobs:convert_process", *extra]
