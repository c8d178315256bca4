"""Real nnU-Net inference with the bundled demo models; model loading, zips, errors, TotalSegmentator."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pytest

from pengwin_demo.errors import ModelError
from pengwin_demo.labels import anatomy_from_fragments
from pengwin_demo.training.quality import bone_iou
from pengwin_demo.models import (
    TotalSegmentatorAnatomy,
    anatomy_model,
    bundled_model_path,
    export_model_zip,
    load_model,
    resolve_device,
    totalsegmentator_missing_weights,
)
from pengwin_demo.phantom import make_phantom
from pengwin_demo.volume import Volume

HELD_OUT_SEED = 424242  # never used for training (training uses case_seed(1, i))

# What the bundled CPU-trained demo models reach on one held-out small phantom (measured
# in docs/models.md), with some margin. The per-bone anatomy target (IoU 0.95)
# is not reached by the CPU-trained anatomy model: see test_anatomy_model_separates_bones.
MIN_BONE_DICE = 0.8
# a floor on the core class, whose components are the seeds of instance recovery
MIN_CORE_DICE_ABBC = 0.65
TARGET_ANATOMY_IOU = 0.95


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(HELD_OUT_SEED, "small")


@pytest.fixture(scope="module")
def anatomy():
    return load_model(bundled_model_path("anatomy"), "cpu", expected="anatomy")


@pytest.fixture(scope="module")
def abbc():
    return load_model(bundled_model_path("abbc"), "cpu", expected="abbc")


def test_bundled_anatomy_model_finds_the_pelvis(anatomy, phantom):
    ct, gt = phantom
    pred = anatomy.predict(ct)
    assert pred.dtype == np.uint8 and pred.shape == ct.shape
    assert set(np.unique(pred).tolist()) <= {0, 1, 2, 3}
    assert _dice(pred > 0, gt.array > 0) >= MIN_BONE_DICE


@pytest.mark.xfail(reason="the demo anatomy model works at 4 mm: even the ground truth taken to 4 mm "
                          "and back scores per-bone IoU 0.91 (held-out full phantom), and the CPU-trained "
                          "model is below that; a finer or GPU-trained model is needed", strict=False)
def test_anatomy_model_separates_bones(anatomy, phantom):
    ct, gt = phantom
    iou = bone_iou(anatomy.predict(ct), anatomy_from_fragments(gt.array))
    assert iou["mean"] >= TARGET_ANATOMY_IOU, iou


def _as_stage2_sees_it(ct: Volume, gt: Volume) -> Volume:
    """The CT masked beyond the pipeline's rim around the (here: true) bones, as the ABBC
    model is trained and run (pengwin_demo.bone_region)."""
    from pengwin_demo.bone_region import STAGE2_MASK_DILATION_MM, mask_outside_bones

    return ct.with_array(mask_outside_bones(ct.array, gt.array > 0, ct.spacing_zyx_mm, STAGE2_MASK_DILATION_MM))


def test_bundled_abbc_model_finds_bone_and_cores(abbc, phantom):
    from pengwin_demo.recovery import abbc_targets

    ct, gt = phantom
    ct = _as_stage2_sees_it(ct, gt)
    pred = abbc.predict(ct)
    assert pred.dtype == np.uint8 and pred.shape == ct.shape
    assert _dice(pred > 0, gt.array > 0) >= MIN_BONE_DICE
    target = abbc_targets(gt.array, gt.spacing_zyx_mm)
    assert _dice(pred == 2, target == 2) >= MIN_CORE_DICE_ABBC  # cores: the seeds of recovery


def test_foreground_probability_places_the_surface_between_coarse_voxels(abbc, phantom):
    """On a 3 mm grid, the bone taken back to the CT grid: nearest < smooth < smooth with the
    network's foreground probability (measured: bone Dice 0.923 / 0.943 / 0.950)."""
    from pengwin_demo.recovery import nearest_onto, smooth_labels_onto
    from pengwin_demo.volume import resample_to_spacing

    ct, gt = phantom
    grid = resample_to_spacing(_as_stage2_sees_it(ct, gt), (3.0, 3.0, 3.0), "linear")
    labels, fg = abbc.predict_with_foreground(grid)
    assert labels.shape == fg.shape == grid.shape and fg.dtype == np.float32
    assert 0.0 <= fg.min() and fg.max() <= 1.0
    assert np.mean((fg >= 0.5) == (labels > 0)) > 0.99  # argmax and probability agree
    coarse = grid.with_array(labels)
    bone = gt.array > 0
    dice = [_dice(a > 0, bone) for a in (nearest_onto(coarse, ct), smooth_labels_onto(coarse, ct),
                                         smooth_labels_onto(coarse, ct, foreground=fg))]
    assert dice[0] < dice[1] < dice[2], dice
    assert dice[2] >= MIN_BONE_DICE


def test_prediction_follows_the_patient_not_the_storage_order(anatomy, phantom):
    ct, _ = phantom
    box = (slice(20, 120), slice(None), slice(None))
    lps = ct.crop(box)
    lps = Volume(np.ascontiguousarray(lps.array), lps.spacing_zyx_mm, lps.origin_lps_mm, lps.direction)
    # the same voxels stored the other way round along x and y (RAS-style storage)
    flipped_arr = np.ascontiguousarray(lps.array[:, ::-1, ::-1])
    corner = lps.index_to_world(np.array([[0, lps.shape[1] - 1, lps.shape[2] - 1]]))[0]
    flipped = Volume(flipped_arr, lps.spacing_zyx_mm, tuple(corner), lps.direction @ np.diag([-1.0, -1.0, 1.0]))
    a = anatomy.predict(lps)
    b = anatomy.predict(flipped)[:, ::-1, ::-1]
    assert np.mean(a == b) > 0.999


def test_load_model_is_cached(anatomy):
    assert load_model(bundled_model_path("anatomy"), "cpu", expected="anatomy") is anatomy


def test_model_zip_round_trip(tmp_path, anatomy, phantom, monkeypatch):
    monkeypatch.setenv("PENGWIN_MODEL_CACHE", str(tmp_path / "cache"))
    zip_path = export_model_zip(bundled_model_path("anatomy"), tmp_path / "anatomy.zip")
    with zipfile.ZipFile(zip_path) as zf:
        names = zf.namelist()
    assert "anatomy/fold_all/checkpoint_final.pth" in names and "anatomy/plans.json" in names
    from_zip = load_model(zip_path, "cpu", expected="anatomy")
    assert from_zip is not anatomy and from_zip.folder.is_relative_to(tmp_path / "cache")
    ct = phantom[0].crop((slice(40, 100), slice(40, 160), slice(20, 180)))
    assert np.array_equal(from_zip.predict(ct), anatomy.predict(ct))


def test_checkpoint_of_a_training_run_loads(tmp_path, anatomy, phantom):
    """A checkpoint as this package's training writes it into its work folder names the demo
    trainer (a class built when training starts); it loads and predicts as the exported model."""
    import torch

    folder = shutil.copytree(bundled_model_path("anatomy"), tmp_path / "work_model")
    ckpt_path = folder / "fold_all" / "checkpoint_final.pth"
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    checkpoint["trainer_name"] = "nnUNetTrainerDemo"
    torch.save(checkpoint, ckpt_path)
    model = load_model(folder, "cpu", expected="anatomy")
    ct = phantom[0].crop((slice(40, 100), slice(40, 160), slice(20, 180)))
    assert np.array_equal(model.predict(ct), anatomy.predict(ct))


def test_missing_incomplete_incompatible_models(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        load_model(tmp_path / "nope", "cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a complete nnU-Net model"):
        load_model(tmp_path / "empty", "cpu")
    incomplete = tmp_path / "incomplete"
    shutil.copytree(bundled_model_path("abbc"), incomplete)
    (incomplete / "fold_all" / "checkpoint_final.pth").unlink()
    with pytest.raises(ModelError, match="checkpoint_final.pth"):
        load_model(incomplete, "cpu")
    truncated = tmp_path / "truncated"
    shutil.copytree(bundled_model_path("abbc"), truncated)
    ckpt = truncated / "fold_all" / "checkpoint_final.pth"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(ModelError, match="cannot load"):
        load_model(truncated, "cpu")
    with pytest.raises(ModelError, match="abbc model"):
        load_model(bundled_model_path("abbc"), "cpu", expected="anatomy")
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError, match="not a valid zip"):
        load_model(bad_zip, "cpu")


def test_resolve_device():
    import torch

    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_totalsegmentator_without_weights_says_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "ts_home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    missing = totalsegmentator_missing_weights()
    assert any("Dataset292" in m for m in missing) and any("Dataset294" in m for m in missing)
    with pytest.raises(ModelError, match="TOTALSEG_HOME_DIR") as err:
        TotalSegmentatorAnatomy(device="cpu")
    assert str(tmp_path / "ts_home") in str(err.value)
    assert not (tmp_path / "ts_home" / "nnunet" / "results" / "Dataset292_TotalSegmentator_part2_vertebrae_1532subj").exists()


def test_totalsegmentator_falls_back_to_bundled_with_warning(tmp_path, monkeypatch, anatomy):
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "ts_home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    model, warnings = anatomy_model("totalsegmentator", "cpu")
    assert model is anatomy
    assert len(warnings) == 1 and "TotalSegmentator unavailable" in warnings[0] and "bundled" in warnings[0]


def test_totalsegmentator_weights_found_when_present(tmp_path, monkeypatch):
    """With the weight folders in place the backend constructs (no download attempted)."""
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "ts_home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    for name in totalsegmentator_missing_weights():
        (tmp_path / "ts_home" / "nnunet" / "results" / name).mkdir(parents=True)
    assert totalsegmentator_missing_weights() == []
    backend = TotalSegmentatorAnatomy(device="cpu")
    assert backend.labels == {"background": 0, "sacrum": 1, "left_hip": 2, "right_hip": 3}


@pytest.mark.parametrize("weights", [False, True])
def test_auto_uses_totalsegmentator_exactly_when_its_weights_are_installed(tmp_path, monkeypatch, weights):
    """No weights: the bundled model, without a warning. A weights folder (empty stand-ins,
    enough for the choice; running them needs the real files): TotalSegmentator, and the
    pipeline's model info says so."""
    from pengwin_demo.pipeline import Pipeline

    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(tmp_path / "ts_home"))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    if weights:
        for name in totalsegmentator_missing_weights():
            (tmp_path / "ts_home" / "nnunet" / "results" / name).mkdir(parents=True)
    model, warnings = anatomy_model("auto", "cpu")
    assert warnings == []
    assert isinstance(model, TotalSegmentatorAnatomy) == weights
    pipe = Pipeline(device="cpu")  # "auto" is the default
    assert pipe.model_info["anatomy"]["backend"] == ("totalsegmentator" if weights else "bundled")
    assert pipe.model_warnings == []
