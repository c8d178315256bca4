"""Every series that arrives is accounted for, and the watcher reads DICOM as ``convert`` does.

The jobs run the real DICOM loader (:func:`_helpers.watcher_jobs.convert_process`); the
deliveries are synthetic studies from :mod:`dicom_factory`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian

from _helpers import dicom_factory as factory
from pengwin_demo.__main__ import main as cli
from pengwin_demo.dicom import read_header
from pengwin_demo.io import read_volume
from _helpers.watcher_jobs import failed_jobs, make_dirs, outputs
from _helpers.watcher_jobs import convert_process
from watcher import WatcherConfig, WatcherService


def run_inbox(inbox: Path, outbox: Path, **settings) -> tuple[dict, WatcherConfig]:
    cfg = WatcherConfig(inbox=inbox, outbox=outbox, settle_seconds=0, **settings)
    counts = WatcherService(cfg, process=convert_process).run_once(timeout=60)
    return counts, cfg


def two_studies(folder: Path) -> dict[str, int]:
    """Two studies (one CT series each, 12 and 16 slices, plus a localizer) in ``folder``."""
    a = factory.make_series(n_slices=12, description="Pelvis A", series_number=2)
    b = factory.make_series(n_slices=16, description="Pelvis B", series_number=3)
    factory.write_files(a, folder / "a")
    factory.write_files(b, folder / "b")
    factory.write_files(factory.localizer(study_uid=a[0].StudyInstanceUID), folder / "a_scout")
    return {a[0].SeriesInstanceUID: 12, b[0].SeriesInstanceUID: 16}


def slice_counts(outbox: Path) -> list[int]:
    return sorted(read_volume(job / "ct.nii.gz").shape[0] for job in outputs(outbox))


def split_parent(cfg: WatcherConfig) -> dict:
    history = [json.loads(line) for line in (cfg.work / "history.jsonl").read_text().splitlines()]
    (parent,) = [e for e in history if e.get("state") == "split"]
    return parent


@pytest.mark.parametrize("form", ["folder", "zip", "loose"])
def test_two_studies_become_two_jobs_in_every_form(tmp_path, form):
    inbox, outbox = make_dirs(tmp_path)
    staging = tmp_path / "staging" / "delivery"
    two_studies(staging)
    if form == "folder":
        shutil.move(staging, inbox / "delivery")
    elif form == "zip":
        factory.zip_folder(staging, inbox / "delivery.zip")
    else:
        for p in staging.rglob("*.dcm"):
            os.rename(p, inbox / f"{p.parent.name}_{p.name}")
    counts, cfg = run_inbox(inbox, outbox)
    # the localizer rides with study A (as loose files it is its own series: a failed entry)
    assert slice_counts(outbox) == [12, 16]
    assert counts["done"] == 2 and counts["left"] == 0
    if form == "loose":
        (scout,) = failed_jobs(cfg)
        assert "localizer" in (scout / "error.txt").read_text()
        return
    assert counts["split"] == 1 and not failed_jobs(cfg)
    parent = split_parent(cfg)
    for job in outputs(outbox):
        assert (job / "job.json").is_file()
        assert job.name in parent["split_into"] and job.name.startswith(parent["job_id"])
    assert not list((cfg.work / "jobs").iterdir())


def test_a_study_without_a_ct_series_is_kept_failed_with_the_reason(tmp_path):
    inbox, outbox = make_dirs(tmp_path)
    delivery = inbox / "delivery"
    factory.write_files(factory.make_series(n_slices=12), delivery / "ct")
    factory.write_files(factory.mr_series(n_slices=12), delivery / "mr")
    counts, cfg = run_inbox(inbox, outbox)
    assert slice_counts(outbox) == [12]
    (failed,) = failed_jobs(cfg)
    text = (failed / "error.txt").read_text()
    assert "no usable CT series" in text and "MR" in text
    assert len(list((failed / "input").rglob("*.dcm"))) == 12  # kept, not deleted
    assert json.loads((failed / "job.json").read_text())["failure"] == "input"


def test_one_study_with_a_localizer_and_a_dose_screen_is_one_job(tmp_path):
    inbox, outbox = make_dirs(tmp_path)
    ct = factory.make_series(n_slices=12)
    study = ct[0].StudyInstanceUID
    factory.write_files(ct, inbox / "study" / "ct")
    factory.write_files(factory.localizer(study_uid=study), inbox / "study" / "scout")
    factory.write_files(factory.dose_screen(study_uid=study), inbox / "study" / "dose")
    counts, cfg = run_inbox(inbox, outbox)
    assert counts["split"] == 0 and slice_counts(outbox) == [12] and not failed_jobs(cfg)


def test_cli_refuses_two_studies_and_names_the_series(tmp_path, capsys):
    uids = two_studies(tmp_path / "delivery")
    code = cli(["convert", str(tmp_path / "delivery"), str(tmp_path / "out.nii.gz")])
    err = capsys.readouterr().err
    assert code == 2 and "2 different studies" in err and "--series" in err
    assert all(uid in err for uid in uids)
    big = max(uids, key=uids.get)
    assert cli(["convert", str(tmp_path / "delivery"), str(tmp_path / "out.nii.gz"),
                "--series", big]) == 0
    assert read_volume(tmp_path / "out.nii.gz").shape[0] == 16


# -- one reading policy ------------------------------------------------------------------
def _write_variant(ds: Dataset, path: Path, variant: str) -> None:
    """Write ``ds`` as real deliveries do: with/without preamble and file meta, either VR."""
    if variant == "no-preamble-no-meta-implicit":
        factory.write_files([ds], path.parent, names=[path.name], preamble=False)
    elif variant == "no-preamble-no-meta-explicit":
        bare = Dataset()
        bare.update(ds)
        bare.save_as(path, implicit_vr=False, little_endian=True)
    elif variant == "preamble-implicit-vr":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    else:
        raise ValueError(variant)


VARIANTS = ["no-preamble-no-meta-implicit", "no-preamble-no-meta-explicit", "preamble-implicit-vr"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_what_convert_reads_the_watcher_accepts(tmp_path, variant):
    dss = factory.make_series(n_slices=11)
    staging = tmp_path / "files"
    staging.mkdir()
    for k, ds in enumerate(dss):
        _write_variant(ds, staging / f"IM{k:04d}", variant)
    assert all(read_header(p)[0] is not None for p in staging.iterdir())
    assert cli(["convert", str(staging), str(tmp_path / "ct.nii.gz")]) == 0
    inbox, outbox = make_dirs(tmp_path)
    for p in staging.iterdir():  # loose files: grouped by the shared reader
        shutil.copy(p, inbox / p.name)
    shutil.copytree(staging, inbox / "folder")
    counts, cfg = run_inbox(inbox, outbox)
    assert not failed_jobs(cfg), [(j / "error.txt").read_text() for j in failed_jobs(cfg)]
    assert slice_counts(outbox) == [11, 11]
