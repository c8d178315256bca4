"""The bad-input corpus (:mod:`bad_inputs`) through ``convert``, ``segment`` and the watcher.

Each case must be refused with exit status 2 and one specific message (CLI) or a failed
entry with a one-line reason (watcher); no traceback anywhere, the input unchanged, no
model loaded. Two series in one input are covered in watcher/test_watcher_series.py (the CLI
refuses two studies, the watcher splits them into one job per series).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from _helpers import bad_inputs
from _helpers.bad_inputs import CASES, tree_digest, write_corpus
from _helpers.paths import REAL_DATA
from pengwin_demo.__main__ import main as cli
from pengwin_demo.dicom import load_ct
from pengwin_demo.io import write_volume
from pengwin_demo.pipeline import Pipeline
from pengwin_demo.volume import Volume
from _helpers.watcher_jobs import failed_jobs, make_dirs, outputs
from watcher import WatcherConfig, WatcherService

MASKED_REAL = [REAL_DATA / "real_fracture_sacrum" / "image.nii.gz",
               *sorted((REAL_DATA / "real_fractured_pelves").glob("case_*/SA_image.nii.gz"))[:2]]


def test_the_corpus_has_at_least_twenty_classes():
    assert len(CASES) >= 20 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_refuses_each_bad_input_with_exit_2(tmp_path, capsys, case):
    path = case.make(tmp_path / "in")
    before = tree_digest(path)
    commands = (
        ["convert", str(path), str(tmp_path / "out.nii.gz")],
        ["segment", str(path), "-o", str(tmp_path / "seg"), "--no-progress", "--device", "cpu"],
    )
    for argv in commands:
        code = cli(argv)
        captured = capsys.readouterr()
        assert code == 2, (argv[0], captured)
        err = captured.err.strip()
        assert err.startswith("error: ") and "Traceback" not in captured.err + captured.out
        assert re.search(case.expect, err, re.S), (argv[0], err)
        assert tree_digest(path) == before
    assert not (tmp_path / "out.nii.gz").exists()


def test_watcher_fails_each_bad_input_with_a_one_line_reason(tmp_path):
    inbox, outbox = make_dirs(tmp_path)
    staging = tmp_path / "staging"
    corpus = write_corpus(staging)
    digests = {}
    for k, (name, path) in enumerate(corpus.items()):
        target = inbox / f"{k:02d}_{path.name}"  # unique top-level names; loose files too
        path.rename(target)
        digests[target.name] = (name, tree_digest(target).replace(target.name, ""))
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=0, empty_grace_seconds=0)
    service = WatcherService(cfg, pipeline=Pipeline(device="cpu"))  # models never needed
    counts = service.run_once(timeout=120)
    assert counts["done"] == 0 and not outputs(outbox) and counts["left"] == 0
    failed = failed_jobs(cfg)
    seen = {}
    for job in failed:
        (entry,) = list((job / "input").iterdir())
        if entry.name == "unreadable":  # loose non-DICOM files are grouped on arrival
            (entry,) = list(entry.iterdir())
        name, digest = digests[entry.name]
        meta = json.loads((job / "job.json").read_text())
        error = meta["error"]
        case = next(c for c in CASES if c.name == name)
        assert "\n" not in error and error and meta["failure"] == "input", (name, error)
        assert "Traceback" not in (job / "error.txt").read_text()
        assert re.search(case.expect, error, re.S), (name, error)
        assert tree_digest(entry).replace(entry.name, "") == digest, name  # input unchanged
        seen[name] = job.name
    assert sorted(seen) == sorted(corpus), set(corpus) - set(seen)
    assert not list(outbox.glob(".tmp-*")) and not list((cfg.work / "jobs").iterdir())


# -- CT or not: masked-bone CTs stay accepted, the override works ------------------------
@pytest.mark.parametrize("path", MASKED_REAL, ids=lambda p: p.parent.name + "/" + p.name)
def test_real_masked_bone_ct_is_accepted_without_warning(path):
    if not path.is_file():
        pytest.skip(f"real data not found at {path} (../shared/data absent)")
    ct = load_ct(path)
    assert not ct.warnings and ct.volume.array.max() > 500


def test_generated_masked_bone_ct_is_accepted(tmp_path):
    ct = np.zeros((30, 60, 60), np.int16)  # zero outside the bone, as the training data
    z, y, x = np.indices(ct.shape)
    shell = np.hypot(y - 30, x - 30)
    ct[(shell < 12) & (shell >= 9)] = 1100  # cortex
    ct[shell < 9] = np.random.default_rng(0).integers(-60, 300, ct[shell < 9].shape)  # marrow
    path = write_volume(Volume(ct, (1.0, 0.8, 0.8)), tmp_path / "masked.nii.gz")
    assert not load_ct(path).warnings
    assert cli(["convert", str(path), str(tmp_path / "out.nii.gz")]) == 0


def test_allow_non_ct_overrides_the_refusal_with_a_warning(tmp_path, capsys):
    path = bad_inputs._mr_no_air(tmp_path)
    assert cli(["convert", str(path), str(tmp_path / "out.nii.gz")]) == 2
    capsys.readouterr()
    assert cli(["convert", str(path), str(tmp_path / "out.nii.gz"), "--allow-non-ct"]) == 0
    out = capsys.readouterr().out
    assert "warning: the image does not look like a CT" in out and "--allow-non-ct" in out
    ct = load_ct(path, allow_non_ct=True)
    assert ct.volume.array.min() == 30 and len(ct.warnings) == 1


def test_watcher_allow_non_ct_setting_reaches_the_pipeline(tmp_path):
    inbox, outbox = make_dirs(tmp_path)
    bad_inputs._mr_no_air(inbox)
    seen = []

    class Recorder:
        def run(self, input_path, out_dir, *, progress=None, dicom_seg=False, allow_non_ct=False):
            seen.append(allow_non_ct)
            load_ct(input_path, allow_non_ct=allow_non_ct)
            (Path(out_dir) / "ok").write_text("")

    for allow in (False, True):
        cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=0, allow_non_ct=allow)
        WatcherService(cfg, pipeline=Recorder()).run_once(timeout=30)
        if not allow:  # refused: put it back for the second run
            (job,) = failed_jobs(cfg)
            assert "Hounsfield" in json.loads((job / "job.json").read_text())["error"]
            shutil.move(next((job / "input").iterdir()), inbox)
    assert seen == [False, True] and len(outputs(outbox)) == 1
