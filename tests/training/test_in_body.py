"""In-body ABBC training cases: a real-like pelvis masked as Stage 2 masks a real scan."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from _helpers.masked import write_masked_case

from pengwin_demo.errors import InputError
from pengwin_demo.bone_region import MASK_FILL_HU, STAGE2_MARGIN_MM, STAGE2_MASK_DILATION_MM
from pengwin_demo.io import read_volume
from pengwin_demo.masked_cases import find_masked_cases, read_masked_case
from pengwin_demo.phantom import make_phantom
from pengwin_demo.training import CompositeOptions, train_real_abbc, write_training_cases
from pengwin_demo.training.in_body import (GAP_FAT_HU, IN_BODY_OPTIONS, STAGE1_OFFSET_MM, fat_between_walls,
                                          in_body_case, stage1_like_mask)
from pengwin_demo.training.real_abbc import _check_resumed

SPACING_MM = (1.5, 1.5, 1.5)

TEST_BODIES = CompositeOptions(inplane_mm=(2.0, 2.5), slice_mm=(2.0, 2.5), below_mm=(10.0, 20.0),
                               above_mm=(10.0, 20.0), fov_mm=(300.0, 320.0), fatty_marrow_probability=0.0)


def _ball(radius_mm: float, shape=(48, 48, 48)) -> np.ndarray:
    zz, yy, xx = np.indices(shape) - np.array(shape)[:, None, None, None] / 2
    return np.sqrt(zz**2 + yy**2 + xx**2) * SPACING_MM[0] <= radius_mm


def _distance_mm(mask: np.ndarray) -> np.ndarray:
    """Distance of every voxel outside ``mask`` to it, mm (0 inside)."""
    return ndimage.distance_transform_edt(~mask, sampling=SPACING_MM)


@pytest.mark.parametrize("seed", range(4))
def test_drawn_surface_stays_within_the_offset_range(seed):
    bone = _ball(20.0)
    mask = stage1_like_mask(bone, SPACING_MM, np.random.default_rng(seed), close_probability=0.0)
    lo, hi = STAGE1_OFFSET_MM
    voxel_mm = SPACING_MM[0]
    # nothing farther out than the highest offset, nothing deeper than the lowest one lost
    assert _distance_mm(bone)[mask].max(initial=0) <= hi + voxel_mm
    assert _distance_mm(~bone)[bone & ~mask].max(initial=0) <= -lo + voxel_mm


def test_drawn_surface_moves_out_and_in_by_the_offset():
    bone = _ball(20.0)
    one_voxel = ndimage.generate_binary_structure(3, 1)
    grown = stage1_like_mask(bone, SPACING_MM, np.random.default_rng(0), offset_mm=(2.0, 4.0),
                             close_probability=0.0)
    assert (grown >= ndimage.binary_dilation(bone, one_voxel)).all()
    shrunk = stage1_like_mask(bone, SPACING_MM, np.random.default_rng(0), offset_mm=(-4.0, -2.0),
                              close_probability=0.0)
    assert (shrunk <= ndimage.binary_erosion(bone, one_voxel)).all()


def test_closing_fills_an_enclosed_canal():
    shell = _ball(20.0) & ~_ball(9.0)
    centre = (24, 24, 24)
    assert not shell[centre]
    kept = stage1_like_mask(shell, SPACING_MM, np.random.default_rng(0), offset_mm=(0.0, 0.0),
                            close_probability=0.0)
    filled = stage1_like_mask(shell, SPACING_MM, np.random.default_rng(0), offset_mm=(0.0, 0.0),
                              close_probability=1.0)
    assert not kept[centre] and filled[centre]


def test_fat_fills_the_space_between_bone_walls_only():
    shell = _ball(20.0) & ~_ball(4.0)  # a wall around an 8 mm canal
    ct = np.where(shell, 400, 50).astype(np.int16)
    out = fat_between_walls(ct, shell, SPACING_MM, np.random.default_rng(0))
    centre = (24, 24, 24)
    lo, hi = GAP_FAT_HU
    assert lo - 40 <= out[centre] <= hi + 40
    np.testing.assert_array_equal(out[shell], ct[shell])  # the bone untouched
    assert (out[~_ball(22.0)] == 50).all()  # and what lies outside it
    assert out.dtype == ct.dtype


@pytest.fixture(scope="module")
def masked_phantom():
    """A phantom pelvis masked like the real data (0 HU outside the labelled bones)."""
    ct, labels = make_phantom(3, "small", n_fragments={"sacrum": 1, "left_hip": 2, "right_hip": 1})
    return ct.with_array(np.where(labels.array > 0, ct.array, 0).astype(np.int16)), labels


def test_in_body_case_is_masked_around_the_bone_with_soft_tissue_in_the_rim(masked_phantom):
    ct, labels = masked_phantom
    body_ct, body_labels = in_body_case(ct, labels, np.random.default_rng(1), TEST_BODIES)
    a, lab = body_ct.array, body_labels.array
    spacing = np.asarray(body_ct.spacing_zyx_mm)
    assert body_ct.same_grid(body_labels) and a.dtype == np.int16
    # every fragment kept; the same bone volume (nearest resampling) within a few per cent
    assert set(np.unique(lab)) == set(np.unique(labels.array))
    before_ml = np.count_nonzero(labels.array) * np.prod(labels.spacing_zyx_mm) / 1000
    assert np.count_nonzero(lab) * np.prod(spacing) / 1000 == pytest.approx(before_ml, rel=0.08)
    # cut to the bone box plus Stage 2's margin
    idx = np.argwhere(lab > 0)
    assert (idx.min(0) * spacing >= STAGE2_MARGIN_MM - spacing).all()
    assert ((np.array(a.shape) - 1 - idx.max(0)) * spacing >= STAGE2_MARGIN_MM - spacing).all()
    # masked far from the bone, soft tissue (not the fill value) right around it
    dist = ndimage.distance_transform_edt(lab == 0, sampling=spacing)
    far = dist > STAGE1_OFFSET_MM[1] + STAGE2_MASK_DILATION_MM + spacing.max()
    assert far.any() and (a[far] == MASK_FILL_HU).all()
    rim = (dist > 0) & (dist <= spacing.max())  # the first layer of voxels outside the bone
    soft = (a[rim] > -150) & (a[rim] < 100) & (a[rim] != MASK_FILL_HU)
    assert soft.mean() > 0.3
    # the bone keeps its own intensities
    assert np.median(a[lab > 0]) == pytest.approx(np.median(ct.array[labels.array > 0]), rel=0.2, abs=40)


def test_training_cases_include_in_body_cases(tmp_path):
    for i, name in enumerate(("p1", "p2")):
        write_masked_case(tmp_path / "src" / name, i)
    names = write_training_cases([tmp_path / "src"], tmp_path / "out", holdout=("p2",), bodies_per_case=2,
                                 seed=5)
    assert names == ["p1"]
    written = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    assert written == ["p1.nii.gz", "p1_body00.nii.gz", "p1_body01.nii.gz"]
    body = read_volume(tmp_path / "out" / "images" / "p1_body00.nii.gz")
    frags = read_volume(tmp_path / "out" / "labels" / "p1_body00.nii.gz", "label")
    masked = set(np.unique(read_volume(tmp_path / "out" / "labels" / "p1.nii.gz", "label").array).tolist())
    mirrored = {v + 10 if 11 <= v <= 20 else v - 10 if v >= 21 else v for v in masked}
    assert body.same_grid(frags) and set(np.unique(frags.array).tolist()) in (masked, mirrored)
    # the same seed draws the same bodies
    again = write_training_cases([tmp_path / "src"], tmp_path / "again", holdout=("p2",), bodies_per_case=1,
                                 seed=5)
    assert again == ["p1"]
    np.testing.assert_array_equal(read_volume(tmp_path / "again" / "images" / "p1_body00.nii.gz").array,
                                  body.array)


def test_a_work_folder_is_not_resumed_with_other_bodies(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "cases.json").write_text(json.dumps({"training": ["p1"], "holdout": []}))
    with pytest.raises(InputError, match="bodies_per_case.*use a new --work-dir"):
        train_real_abbc(work, tmp_path / "model", [tmp_path / "src"], bodies_per_case=2)


def test_the_share_of_bodies_with_fatty_marrow_is_an_option(tmp_path):
    write_masked_case(tmp_path / "src" / "p1", 0)
    written = {}
    for share in (0.0, 1.0):
        out = tmp_path / f"share{share:g}"
        write_training_cases([tmp_path / "src"], out, bodies_per_case=1, seed=3, fatty_marrow_probability=share)
        written[share] = read_volume(out / "images" / "p1_body00.nii.gz").array
    # each is the in-body case of that share, drawn as the first body of the first patient
    ct, labels = read_masked_case(find_masked_cases(tmp_path / "src")[0])
    options = replace(IN_BODY_OPTIONS, fatty_marrow_probability=1.0)
    expected, _ = in_body_case(ct, labels, np.random.default_rng([3, 0, 0]), options)
    np.testing.assert_array_equal(written[1.0], expected.array)
    assert written[0.0].shape != written[1.0].shape or not np.array_equal(written[0.0], written[1.0])


def test_a_work_folder_is_not_resumed_with_another_fatty_marrow_share(tmp_path):
    work = tmp_path / "work"
    drawn = {"bodies_per_case": 2, "seed": 1, "fatty_marrow_probability": 1.0}
    with pytest.raises(InputError, match="fatty_marrow_probability.*use a new --work-dir"):
        _check_resumed({"training": ["p1"], "bodies_per_case": 2, "seed": 1, "fatty_marrow_probability": 0.5},
                       drawn, work)
    # a record from before the option was drawn with the default share, 0.5
    _check_resumed({"training": ["p1"], "bodies_per_case": 2, "seed": 1}, {**drawn, "fatty_marrow_probability": 0.5},
                   work)
    with pytest.raises(InputError, match="between 0 and 1"):
        train_real_abbc(work, tmp_path / "model", [tmp_path / "src"], bodies_per_case=2, fatty_marrow_probability=1.5)


def test_train_abbc_refuses_a_fatty_marrow_share_outside_0_1(tmp_path, capsys):
    from pengwin_demo.__main__ import main

    write_masked_case(tmp_path / "src" / "p1", 0)
    code = main(["train-abbc", str(tmp_path / "src"), "--work-dir", str(tmp_path / "work"), "--out",
                 str(tmp_path / "model"), "--max-minutes", "1", "--bodies-per-case", "1", "--fatty-marrow", "-0.1"])
    assert code == 2 and "--fatty-marrow must lie between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "work").exists() and not (tmp_path / "model").exists()


def test_the_card_records_the_in_body_options(tmp_path):
    from pengwin_demo.training import REAL_ABBC_CONFIG
    from pengwin_demo.training.real_abbc import write_real_card

    card = write_real_card(tmp_path, REAL_ABBC_CONFIG, ["p1"], ["p2"], "cpu", None, bodies_per_case=2, seed=4,
                           fatty_marrow_probability=1.0).read_text()
    info = json.loads((tmp_path / "training.json").read_text())
    assert (info["bodies_per_case"], info["seed"], info["fatty_marrow_probability"]) == (2, 4, 1.0)
    assert "--bodies-per-case 2 --seed 4 --fatty-marrow 1" in card and "fatty marrow in about 100%" in card
