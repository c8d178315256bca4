"""Real whole CTs with bone masks as anatomy training cases (TotalSegmentator data-set layout)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from _helpers.masked import write_masked_case

from pengwin_demo.errors import InputError
from pengwin_demo.io import read_volume, write_volume
from pengwin_demo.labels import ANATOMY_CLASSES
from pengwin_demo.models import load_model
from pengwin_demo.training import (REAL_ANATOMY_CONFIG, CompositeOptions, find_whole_ct_cases, read_whole_ct_case,
                                   scan_digest, train_real_anatomy, write_whole_ct_cases)
from pengwin_demo.training.whole_ct import IGNORE_LABEL, filled_canal_voxels, ignore_filled_canal
from pengwin_demo.volume import Volume

SHAPE = (70, 40, 56)
"""z, y, x voxels of the small scan, 3 x 2 x 2 mm."""
BONES = {"sacrum": np.s_[20:40, 14:26, 24:32], "hip_left": np.s_[15:35, 12:28, 36:48],
         "hip_right": np.s_[15:35, 12:28, 8:20]}
"""Blocks at larger LPS x for the left hip, as in a patient lying head first supine."""
VERTEBRA = np.s_[42:52, 14:26, 24:32]
CANAL = np.s_[20:40, 20:24, 27:29]
"""Soft tissue inside the sacrum's mask, as in a mask drawn with the sacral canal filled."""
CANAL_VOXELS = 20 * 4 * 2


def write_whole_ct(folder: Path, stored_ras: bool = False) -> Volume:
    """A small body (air, 40 HU tissue) with three bone blocks masked and an unmasked
    vertebra above the sacrum, written as ``ct.nii.gz`` + ``segmentations/`` (with
    ``stored_ras`` on a grid whose x and y axes run the other way); returns its LPS grid."""
    ct = np.full(SHAPE, -1000, np.int16)
    ct[:, 4:36, 4:52] = 40
    for box in (*BONES.values(), VERTEBRA):
        ct[box] = 500
    ct[CANAL] = 20
    grid = Volume(ct, (3.0, 2.0, 2.0), (-56.0, -40.0, 0.0))

    def stored(volume: Volume) -> Volume:
        return Volume.from_sitk(sitk.DICOMOrient(volume.to_sitk(), "RAS")) if stored_ras else volume

    write_volume(stored(grid), folder / "ct.nii.gz")
    for name, box in BONES.items():
        mask = np.zeros(SHAPE, np.uint8)
        mask[box] = 1
        write_volume(stored(grid.with_array(mask)), folder / "segmentations" / f"{name}.nii.gz")
    return grid


def _centre_x_mm(labels: Volume, label: int) -> float:
    return float(labels.index_to_world(np.argwhere(labels.array == label).mean(0, keepdims=True))[0, 0])


def test_a_case_reads_as_pengwin_labels_in_lps(tmp_path):
    grid = write_whole_ct(tmp_path / "s1")
    write_whole_ct(tmp_path / "s2", stored_ras=True)
    assert not np.allclose(read_volume(tmp_path / "s2" / "ct.nii.gz").direction, np.eye(3))
    assert [p.name for p in find_whole_ct_cases(tmp_path)] == ["s1", "s2"]
    assert find_whole_ct_cases(tmp_path / "s1") == [tmp_path / "s1"]
    for name in ("s1", "s2"):
        ct, labels = read_whole_ct_case(tmp_path / name)
        assert np.allclose(ct.direction, np.eye(3)) and ct.same_grid(grid, tol_mm=1e-3)
        assert np.array_equal(ct.array, grid.array)
        for bone, label in (("sacrum", 1), ("hip_left", 11), ("hip_right", 21)):
            expected = np.zeros(SHAPE, bool)
            expected[BONES[bone]] = True
            assert np.array_equal(labels.array == label, expected), (name, bone)
        assert not labels.array[VERTEBRA].any()  # unmasked bone is background
        assert _centre_x_mm(labels, 11) > _centre_x_mm(labels, 21)
    # the digest names the scan, not its file or storage order
    digests = {scan_digest(read_volume(tmp_path / name / "ct.nii.gz")) for name in ("s1", "s2")}
    changed = grid.array.copy()
    changed[0, 0, 0] += 1
    assert digests == {scan_digest(grid)} and scan_digest(grid.with_array(changed)) not in digests


def test_missing_or_empty_masks_are_named(tmp_path):
    write_whole_ct(tmp_path / "s1")
    (tmp_path / "s1" / "segmentations" / "hip_right.nii.gz").unlink()
    with pytest.raises(InputError, match=r"hip_right\.nii\.gz: no such bone mask"):
        read_whole_ct_case(tmp_path / "s1")
    grid = write_whole_ct(tmp_path / "s2")
    write_volume(grid.with_array(np.zeros(SHAPE, np.uint8)), tmp_path / "s2" / "segmentations" / "sacrum.nii.gz")
    with pytest.raises(InputError, match=r"sacrum\.nii\.gz: the sacrum mask holds no voxel"):
        read_whole_ct_case(tmp_path / "s2")
    with pytest.raises(InputError, match="no whole-CT case found"):
        find_whole_ct_cases(tmp_path / "s1" / "segmentations")


def test_variants_keep_the_bones_whole_and_mirror_every_second(tmp_path):
    write_whole_ct(tmp_path / "scans" / "s1")
    write_whole_ct(tmp_path / "scans" / "s2")
    used = write_whole_ct_cases([tmp_path / "scans"], tmp_path / "out", holdout=("s2",), per_case=4, seed=1)
    assert list(used) == ["s1"] and used["s1"] == scan_digest(read_whole_ct_case(tmp_path / "scans" / "s1")[0])
    names = sorted(p.name for p in (tmp_path / "out" / "labels").iterdir())
    assert names == ["s1_above.nii.gz"] + [f"s1_scan{k:02d}.nii.gz" for k in range(4)]
    _, original = read_whole_ct_case(tmp_path / "scans" / "s1")
    for k in range(4):
        lab = read_volume(tmp_path / "out" / "labels" / f"s1_scan{k:02d}.nii.gz", "label")
        ct = read_volume(tmp_path / "out" / "images" / f"s1_scan{k:02d}.nii.gz")
        for label in (1, 11, 21):  # every bone voxel kept, on its own CT value
            assert np.count_nonzero(lab.array == label) == np.count_nonzero(original.array == label)
            assert np.isin(ct.array[lab.array == label], (500, 20)).all()  # bone, or the filled canal
        # mirrored variants swap the sides with the labels: the left hip stays at larger x
        assert _centre_x_mm(lab, 11) > _centre_x_mm(lab, 21)
    above = read_volume(tmp_path / "out" / "labels" / "s1_above.nii.gz", "label")
    above_ct = read_volume(tmp_path / "out" / "images" / "s1_above.nii.gz")
    assert not above.array.any() and (above_ct.array == 500).any()  # the vertebra, as background


def test_holdout_may_name_a_whole_ct_but_not_an_unknown_case(tmp_path):
    write_masked_case(tmp_path / "src" / "p1", 0)
    write_whole_ct(tmp_path / "scans" / "s1")
    with pytest.raises(InputError, match=r"held-out case\(s\) \['s9'\]"):
        train_real_anatomy(tmp_path / "work", tmp_path / "model", [tmp_path / "src"], whole_ct=[tmp_path / "scans"],
                           holdout=("s9",), max_seconds=1.0)


def test_filled_canal_voxels_are_the_sacrums_low_hu_voxels():
    sacrum = np.zeros((4, 6, 6), bool)
    sacrum[1:3, 1:5, 1:5] = True
    ct = np.full(sacrum.shape, 400, np.int16)
    ct[:, 2:4, 2:4] = 20  # the canal, also outside the mask above and below
    ct[0] = -50  # fat outside the mask
    want = np.zeros_like(sacrum)
    want[1:3, 2:4, 2:4] = True
    np.testing.assert_array_equal(filled_canal_voxels(sacrum, ct), want)
    assert not filled_canal_voxels(sacrum, ct, below_hu=0.0).any()


def _raw_case(raw: Path, name: str, ct: np.ndarray, labels: np.ndarray) -> None:
    grid = Volume(ct, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    write_volume(grid, raw / "imagesTr" / f"{name}_0000.nii.gz")
    write_volume(grid.with_array(labels), raw / "labelsTr" / f"{name}.nii.gz")


def test_ignore_filled_canal_marks_only_the_whole_ct_cases(tmp_path):
    raw = tmp_path / "Dataset522_PengwinAnatomy"
    labels = np.zeros((5, 8, 8), np.uint8)
    labels[1:4, 1:7, 1:4], labels[1:4, 1:7, 5:7] = 1, 2
    ct = np.where(labels > 0, 500, -1000).astype(np.int16)
    ct[1:4, 3:5, 2:3] = 30  # low values in the sacrum and in the hip
    ct[1:4, 3:5, 5] = 30
    for name in ("s1_scan00", "s1_above", "p1_body00", "s10_scan00", "s1_body00"):
        _raw_case(raw, name, ct, labels)
    (raw / "dataset.json").write_text(json.dumps({"labels": ANATOMY_CLASSES, "numTraining": 4}))
    marked_ml = ignore_filled_canal(raw, ["s1"])
    assert marked_ml == pytest.approx(2 * 6 * 8 / 1000)  # 6 voxels of 8 mm3 in s1_scan00 and in s1_above
    got = read_volume(raw / "labelsTr" / "s1_scan00.nii.gz", kind="label").array
    want = labels.copy()
    want[1:4, 3:5, 2:3] = IGNORE_LABEL  # the sacrum's low voxels only; the hip keeps its own
    np.testing.assert_array_equal(got, want)
    for other in ("p1_body00", "s10_scan00", "s1_body00"):  # composites and other scans keep theirs
        np.testing.assert_array_equal(read_volume(raw / "labelsTr" / f"{other}.nii.gz", kind="label").array, labels)
    meta = json.loads((raw / "dataset.json").read_text())
    assert meta["labels"] == {**ANATOMY_CLASSES, "ignore": IGNORE_LABEL} and meta["numTraining"] == 4


@pytest.mark.slow
def test_train_anatomy_with_a_whole_ct(tmp_path):
    for i, name in enumerate(("p1", "p2")):
        write_masked_case(tmp_path / "src" / name, i)
    write_whole_ct(tmp_path / "scans" / "s1")
    write_whole_ct(tmp_path / "scans" / "s2")
    cfg = replace(REAL_ANATOMY_CONFIG, iterations_per_epoch=2, val_iterations_per_epoch=1)
    out = train_real_anatomy(tmp_path / "work", tmp_path / "model", [tmp_path / "src"], whole_ct=[tmp_path / "scans"],
                             whole_ct_filled_canal=True, holdout=("p2", "s2"), per_case=2, phantoms=0, seed=3,
                             options=replace(CompositeOptions(fatty_marrow_probability=0.0), inplane_mm=(3.0, 3.0),
                                             slice_mm=(3.0, 3.0), below_mm=(20.0, 40.0), above_mm=(20.0, 40.0),
                                             fov_mm=(200.0, 220.0)),
                             max_seconds=3.0, config=cfg, threads=1)
    raw = tmp_path / "work" / "nnUNet_raw" / "Dataset522_PengwinAnatomy" / "imagesTr"
    names = sorted(p.name for p in raw.iterdir())
    assert [n for n in names if n.startswith("s")] == ["s1_above_0000.nii.gz", "s1_scan00_0000.nii.gz",
                                                       "s1_scan01_0000.nii.gz"]
    assert not [n for n in names if n.startswith(("p2", "s2"))]
    info = json.loads((out / "training.json").read_text())
    assert info["training_cases"] == ["p1"] and info["whole_ct_training_cases"] == ["s1"]
    assert list(info["whole_ct_digests"]) == ["s1"] and "real whole CTs with bone masks" in info["data"]
    assert info["holdout_cases"] == ["p2", "s2"]
    card = (out / "MODEL_CARD.md").read_text()
    assert "1 real whole CT(s) with sacrum and hip bones masked (s1;" in card and "--whole-ct SCANS" in card
    # the filled canal is left out of the loss in the scan's variants (nnU-Net trained with it), nowhere else
    labels_dir = raw.parent / "labelsTr"
    for name in ("s1_scan00", "s1_scan01"):
        ct = read_volume(raw / f"{name}_0000.nii.gz").array
        labels = read_volume(labels_dir / f"{name}.nii.gz", kind="label").array
        assert (labels == IGNORE_LABEL).sum() == CANAL_VOXELS
        np.testing.assert_array_equal(labels == IGNORE_LABEL, (ct < 100) & ((labels == 1) | (labels == IGNORE_LABEL)))
    assert not any((read_volume(p, kind="label").array == IGNORE_LABEL).any() for p in labels_dir.glob("p1_*"))
    assert info["whole_ct_filled_canal"] and "left out of the loss" in card and "--whole-ct-filled-canal" in card
    model = load_model(out, "cpu", expected="anatomy")  # the ignore label is no output class
    assert model.labels == ANATOMY_CLASSES
