"""mercure module mode: ``python -m watcher.mercure`` on a folder laid out as mercure does.

mercure puts the series in ``$MERCURE_IN_DIR`` as ``<series UID>#<instance UID>.dcm`` with
a ``.tags`` JSON file beside each image and a ``task.json`` whose "process" > "settings"
hold the module settings, and dispatches the DICOM files the module writes to
``$MERCURE_OUT_DIR``. These tests run the module as mercure's container does: a process
with those two variables.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
import trimesh

from _helpers import dicom_factory as factory
from pengwin_demo.phantom import make_phantom, write_dicom_series
from pengwin_demo.outputs import ENCAPSULATED_STL_STORAGE, stl_from_instance
from _helpers.watcher_jobs import REPO, watcher_env
from watcher.mercure import ModuleSettings, Output


def mercure_folder(datasets_or_files, root: Path, settings: dict | None) -> tuple[Path, Path]:
    """(in_dir, out_dir) as mercure lays them out for a series-level rule."""
    in_dir, out_dir = root / "in", root / "out"
    in_dir.mkdir(parents=True)
    out_dir.mkdir()
    for item in datasets_or_files:
        ds = pydicom.dcmread(item) if isinstance(item, Path) else item
        stem = f"{ds.SeriesInstanceUID}#{ds.SOPInstanceUID}"
        ds.save_as(in_dir / f"{stem}.dcm", enforce_file_format=True)
        tags = {"SeriesInstanceUID": str(ds.SeriesInstanceUID), "Modality": str(ds.Modality)}
        (in_dir / f"{stem}.tags").write_text(json.dumps(tags))
    task = {"id": "3f2c", "info": {"action": "process", "uid_type": "series",
                                   "applied_rule": "pengwin_ct_pelvis"},
            "process": {"module_name": "pengwin", "settings": settings or {},
                        "retain_input_images": False}}
    (in_dir / "task.json").write_text(json.dumps(task))
    return in_dir, out_dir


def run_module(in_dir: Path, out_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = watcher_env(MERCURE_IN_DIR=str(in_dir), MERCURE_OUT_DIR=str(out_dir))
    return subprocess.run([sys.executable, "-m", "watcher.mercure"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_settings_from_task_json():
    s = ModuleSettings.from_task({"process": {"settings": {"device": "cpu", "mesh_detail": "coarse",
                                                           "outputs": ["seg", "STL"]}}})
    assert s == ModuleSettings("cpu", "coarse", (Output.SEG, Output.STL))
    assert ModuleSettings.from_task({}) == ModuleSettings()
    for bad, match in (({"mesh_detail": "ultra"}, "mesh_detail"), ({"outputs": ["nifti"]}, "outputs"),
                       ({"device": "tpu"}, "device"), ({"threshold": 3}, "unknown")):
        with pytest.raises(Exception, match=match):
            ModuleSettings.from_task({"process": {"settings": bad}})


def test_bad_settings_and_mr_input_fail_with_exit_code_and_one_readable_line(tmp_path):
    ct = factory.make_series(n_slices=12)
    in_dir, out_dir = mercure_folder(ct, tmp_path / "a", {"mesh_detail": "ultra"})
    result = run_module(in_dir, out_dir)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "pengwin: failed (exit 2): task.json settings: mesh_detail 'ultra'" in last

    mr = factory.mr_series(n_slices=12)
    in_dir, out_dir = mercure_folder(mr, tmp_path / "b", {"device": "cpu"})
    result = run_module(in_dir, out_dir)
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert "pengwin: failed (exit 1)" in last and "MR" in last
    assert "Traceback" not in result.stderr
    assert str(mr[0].SeriesInstanceUID) not in result.stderr  # UIDs are scrubbed
    assert str(mr[0].PatientName) not in result.stderr
    assert list(out_dir.iterdir()) == []

    result = subprocess.run([sys.executable, "-m", "watcher.mercure"], cwd=REPO, env=watcher_env(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "$MERCURE_IN_DIR is not set" in result.stderr


@pytest.mark.slow
def test_module_writes_seg_and_encapsulated_stl_for_a_phantom_series(tmp_path):
    ct, _ = make_phantom(6, size="small")
    slab = (slice(30, 80), slice(0, ct.shape[1]), slice(0, ct.shape[2]))
    files = write_dicom_series(ct.crop(slab), tmp_path / "series")
    settings = {"device": "cpu", "mesh_detail": "coarse", "outputs": ["seg", "stl"]}
    in_dir, out_dir = mercure_folder(files, tmp_path / "m", settings)
    result = run_module(in_dir, out_dir)
    if result.returncode == 2 and "model problem" in result.stderr:
        pytest.skip(f"bundled models not available: {result.stderr[-400:]}")
    assert result.returncode == 0, result.stderr[-3000:]
    source = pydicom.dcmread(files[0])
    written = sorted(p.name for p in out_dir.iterdir())
    assert "pengwin-seg.dcm" in written
    seg = pydicom.dcmread(out_dir / "pengwin-seg.dcm")
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    meshes = [pydicom.dcmread(out_dir / n) for n in written if n.startswith("pengwin-mesh-")]
    assert len(meshes) == len(seg.SegmentSequence) > 0  # one mesh per fragment
    for mesh in meshes:
        assert mesh.SOPClassUID == ENCAPSULATED_STL_STORAGE
        assert mesh.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert mesh.SourceInstanceSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
        surface = trimesh.load(io.BytesIO(stl_from_instance(mesh)), file_type="stl")
        assert len(surface.faces) > 0
    assert f"done, {len(written)} DICOM file(s) written" in result.stderr
    assert str(source.PatientName) not in result.stderr


def test_dockerfile_has_a_mercure_target_and_keeps_the_app_as_default():
    text = (REPO / "Dockerfile").read_text()
    stages = [line.split() for line in text.splitlines() if line.startswith("FROM ")]
    assert ["FROM", "base", "AS", "mercure"] in stages
    assert stages[-1][-1] == "app"  # `docker build .` still gives the web app
    mercure = text.split("AS mercure", 1)[1].split("FROM ", 1)[0]
    assert 'CMD ["python", "-m", "watcher.mercure"]' in mercure
    assert text.rstrip().endswith('CMD ["python", "app.py"]')
