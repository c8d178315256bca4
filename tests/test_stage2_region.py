"""What Stage 2 sees (the CT cropped to the Stage-1 bones, masked outside them) and Stage 1
taken from a user's anatomy map (``anatomy_map`` / ``segment --anatomy-map``)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from _helpers.paths import REPO
from pengwin_demo.recovery import abbc_targets
from pengwin_demo.anatomy_map import anatomy_map_onto, read_anatomy_map
from pengwin_demo.bone_region import MASK_FILL_HU, anatomy_onto, bone_box_on, mask_outside_bones
from pengwin_demo.errors import InputError
from pengwin_demo.io import write_volume
from pengwin_demo.labels import anatomy_from_fragments
from pengwin_demo.pipeline import Pipeline
from pengwin_demo.volume import Volume, resample_onto

FLIP_XY = np.diag([-1.0, -1.0, 1.0])


def _body(direction=np.eye(3)) -> tuple[Volume, Volume]:
    """A 'body' CT (soft tissue 40 HU, a bone block of 500 +- 150 HU in two fragments, a
    distant 'vertebra' 700 HU that is not pelvis) and its PENGWIN truth, 1.25 mm voxels."""
    shape, spacing = (48, 64, 96), (1.25, 1.25, 1.25)
    truth = np.zeros(shape, np.uint8)
    truth[10:30, 20:40, 20:40] = 11
    truth[10:30, 20:40, 42:60] = 12  # a 2.5 mm fracture gap at x index 40-41
    truth[10:30, 20:40, 64:92] = 21
    # bone values spread as a cortex around cancellous bone does (uniform values are contrast)
    bone_hu = np.random.default_rng(0).normal(500, 150, shape)
    ct = np.where(truth > 0, bone_hu, 40).astype(np.int16)
    ct[38:46, 50:60, 5:15] = 700  # bone that Stage 1 does not call pelvis
    ct[:, :6], ct[:, -4:] = -1000, -1000  # air in front of and behind the body
    grid = Volume(ct, spacing, (-60.0, -40.0, 0.0), direction)
    return grid, grid.with_array(truth)


class RecordingABBC:
    """Stage 2 stand-in: the true ABBC map on the grid it is given, which it records."""

    target_spacing_zyx_mm = (2.0, 2.0, 2.0)

    def __init__(self, truth: Volume):
        self.truth, self.seen = truth, []

    def predict(self, volume: Volume) -> np.ndarray:
        self.seen.append(volume)
        labels = resample_onto(self.truth, volume, "nearest").array
        return abbc_targets(labels, volume.spacing_zyx_mm)


def _runs_toggling(tmp_path, ct: Volume, abbc_truth: Volume, anatomy: Volume, option: str, values) -> dict:
    """Pipeline runs with the true-ABBC stand-in for Stage 2 and ``anatomy`` as Stage 1, one
    per value of the Pipeline ``option``; {value: result}."""
    runs = {}
    for value in values:
        pipe = Pipeline(device="cpu", anatomy=str(tmp_path / "no_such_model"),
                        fragments=RecordingABBC(abbc_truth), min_bone_ml=1.0, **{option: value})
        runs[value] = pipe.run(ct, tmp_path / f"out-{option}-{value}", anatomy_map=anatomy)
    return runs


def test_bone_box_covers_the_bones_plus_the_margin_on_another_grid():
    ct, truth = _body(FLIP_XY)
    coarse = resample_onto(truth.with_array(anatomy_from_fragments(truth.array)),
                           Volume(np.zeros((1, 1, 1), np.uint8), (4.0, 4.0, 4.0), ct.origin_lps_mm, FLIP_XY),
                           "nearest", shape_zyx=(15, 20, 30))
    box = bone_box_on(coarse, ct, margin_mm=5.0)
    inside = np.zeros(ct.shape, bool)
    inside[box] = True
    assert inside[truth.array > 0].all()  # every bone voxel of the fine grid is in the box
    assert not inside[42, 55, 10]  # the 'vertebra' is not
    sizes = [s.stop - s.start for s in box]
    # the bone spans 20 x 20 x 66 voxels; 4 mm Stage-1 voxels + 2 x 5 mm margin add at most 15 voxels
    assert all(20 <= n <= 20 + 15 for n in sizes[:2]) and 66 <= sizes[2] <= 66 + 15
    assert bone_box_on(coarse.with_array(np.zeros_like(coarse.array)), ct, 5.0) is None


def test_the_stage1_map_goes_onto_the_finer_grid_with_smooth_surfaces():
    """Two balls (r 20 mm, sacrum and left hip) mapped at 4 mm, with a partial-volume
    foreground, onto 1.5 mm: smooth surfaces fit the true balls better than 4 mm blocks
    do (IoU 0.97-0.98 against 0.85-0.86), and each voxel keeps its ball's bone."""
    def balls(spacing_mm, shape):
        grid = Volume(np.zeros(shape, np.uint8), (spacing_mm,) * 3, (0.0, 0.0, 0.0))
        zyx = np.indices(shape).reshape(3, -1).T
        pts = grid.index_to_world(zyx).reshape(*shape, 3)
        d1 = np.linalg.norm(pts - [40.0, 48.0, 48.0], axis=-1)
        d2 = np.linalg.norm(pts - [90.0, 48.0, 48.0], axis=-1)
        return grid, d1, d2
    coarse, d1, d2 = balls(4.0, (24, 24, 34))
    labels = np.where(d1 <= 20, 1, np.where(d2 <= 20, 2, 0)).astype(np.uint8)
    # partial volume: the share of a 4 mm voxel inside either ball, as a smooth ramp
    foreground = np.clip(0.5 + (20 - np.minimum(d1, d2)) / 4.0, 0, 1).astype(np.float32)
    anatomy = coarse.with_array(labels)
    fine, f1, f2 = balls(1.5, (64, 64, 90))
    truth = np.where(f1 <= 20, 1, np.where(f2 <= 20, 2, 0))
    smooth = anatomy_onto(anatomy, fine, foreground=foreground)
    blocks = anatomy_onto(anatomy, fine, smooth=False)
    for bone in (1, 2):
        iou = [np.sum((m == bone) & (truth == bone)) / np.sum((m == bone) | (truth == bone)) for m in (smooth, blocks)]
        assert iou[0] > 0.95 and iou[0] > iou[1] + 0.02, (bone, iou)
        assert not np.any(smooth[truth == 3 - bone] == bone)
    # a foreground of another shape (a map not made on the model's grid) is not used
    assert np.array_equal(anatomy_onto(anatomy, fine, foreground=foreground[:-1]), anatomy_onto(anatomy, fine))
    assert anatomy_onto(anatomy, coarse) is labels


def test_masking_keeps_bone_and_a_rim_in_mm():
    bones = np.zeros((5, 5, 30), np.uint8)
    bones[2, 2, 10] = 1
    ct = np.full(bones.shape, -100, np.int16)
    out = mask_outside_bones(ct, bones, (1.0, 1.0, 0.5), dilation_mm=2.0)
    kept = np.flatnonzero(out[2, 2] != MASK_FILL_HU)
    assert kept.tolist() == list(range(6, 15))  # 2 mm = 4 voxels of 0.5 mm along x
    assert mask_outside_bones(ct, bones, (1.0, 1.0, 0.5), 0.0)[2, 2].tolist().count(-100) == 1
    with pytest.raises(ValueError):
        mask_outside_bones(ct, bones[:4], (1.0, 1.0, 0.5), 2.0)


def test_stage2_runs_on_the_masked_bone_box_and_labels_land_on_the_full_grid(tmp_path):
    ct, truth = _body(FLIP_XY)
    anatomy = truth.with_array(anatomy_from_fragments(truth.array))
    abbc = RecordingABBC(truth)
    # the anatomy model is not even loaded when a map is given: a missing one does no harm
    pipe = Pipeline(device="cpu", anatomy=str(tmp_path / "no_such_model"), fragments=abbc,
                    stage2_margin_mm=5.0, min_bone_ml=1.0,
                    stage2_mask_dilation_mm=2.0)
    result = pipe.run(ct, tmp_path / "out", anatomy_map=anatomy)
    (seen,) = abbc.seen
    extent_seen = np.asarray(seen.shape) * seen.spacing_zyx_mm
    extent_ct = np.asarray(ct.shape) * ct.spacing_zyx_mm
    assert np.all(extent_seen < extent_ct) and np.prod(extent_seen) < 0.5 * np.prod(extent_ct)
    assert np.any(seen.array == 40)  # the rim keeps soft tissue (linear resampling elsewhere)
    far = resample_onto(ct.with_array((ct.array == 40).astype(np.uint8)), seen, "nearest").array
    assert np.mean(seen.array[far.astype(bool)] == MASK_FILL_HU) > 0.5  # soft tissue beyond it is gone
    labels = result.labels
    assert labels.same_grid(ct)
    assert sorted(np.unique(labels.array).tolist()) == [0, 11, 12, 21]
    assert not labels.array[38:46, 50:60, 5:15].any()
    assert result.report["inference"]["no_fragments_reason"] is None
    report = json.loads(result.paths["report"].read_text())
    assert report["models"]["anatomy"]["backend"] == "anatomy-map"
    assert report["inference"]["stage2_mask_dilation_mm"] == 2.0
    assert report["inference"]["dropped_soft_tissue_fragments_ml"] == 0.0  # phantom fragments are bone


def test_anatomy_map_checks():
    ct, truth = _body()
    anatomy = truth.with_array(anatomy_from_fragments(truth.array))
    with pytest.raises(InputError, match=r"label values \[11, 12, 21\]"):
        anatomy_map_onto(truth, ct)
    elsewhere = Volume(anatomy.array, anatomy.spacing_zyx_mm, (500.0, 500.0, 500.0))
    with pytest.raises(InputError, match="none of its bone lies inside the CT"):
        anatomy_map_onto(elsewhere, ct)
    with pytest.raises(InputError, match="holds no bone"):
        anatomy_map_onto(anatomy.with_array(np.zeros_like(anatomy.array)), ct)
    coarse = resample_onto(anatomy, Volume(np.zeros((1, 1, 1), np.uint8), (2.5, 2.5, 2.5), ct.origin_lps_mm),
                           "nearest", shape_zyx=(24, 32, 48))
    on_ct = anatomy_map_onto(coarse, ct)
    assert on_ct.same_grid(ct) and np.mean(on_ct.array[truth.array > 0] > 0) > 0.8


def test_anatomy_map_files_2d_and_4d_are_refused(tmp_path):
    import nibabel as nib

    ct, _ = _body()
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.uint8), np.eye(4)), str(tmp_path / "flat.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 2), np.uint8), np.eye(4)), str(tmp_path / "time.nii.gz"))
    with pytest.raises(InputError, match="anatomy map: flat.nii.gz: is a 2D image"):
        read_anatomy_map(tmp_path / "flat.nii.gz", ct)
    with pytest.raises(InputError, match="anatomy map: time.nii.gz: is a 4D image"):
        read_anatomy_map(tmp_path / "time.nii.gz", ct)


def test_cli_segment_with_a_bad_anatomy_map_is_one_clear_line(tmp_path):
    ct, truth = _body()
    write_volume(ct, tmp_path / "ct.nii.gz")
    write_volume(truth, tmp_path / "map.nii.gz")  # fragment labels, not anatomy
    out = subprocess.run([sys.executable, "-m", "pengwin_demo", "segment", str(tmp_path / "ct.nii.gz"),
                          "-o", str(tmp_path / "out"), "--anatomy-map", str(tmp_path / "map.nii.gz"),
                          "--no-progress", "--device", "cpu"],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "anatomy map map.nii.gz: holds label values [11, 12, 21]" in out.stderr
    assert "Traceback" not in out.stderr


def test_fatty_marrow_left_out_by_stage2_is_filled_where_stage1_marks_bone(tmp_path):
    """A hip block whose interior reads as fat (-30 HU) behind a cortex with a 2.5 mm gap:
    Stage 2 (here the true ABBC map of the cortex only, as the real model behaves on fatty
    marrow) leaves the interior out; the pipeline gives it back to the bone because Stage 1
    marks it, and says how much in the report."""
    ct, truth = _body()
    marrow = np.zeros(truth.shape, bool)
    marrow[14:26, 24:36, 68:88] = True  # 5 mm inside the right hip block (21)
    ct = ct.with_array(np.where(marrow, -30, ct.array).astype(np.int16))
    cortex_only = truth.array.copy()
    cortex_only[marrow] = 0
    cortex_only[18:20, 28:30, 64:68] = 0  # the missed cortex: marrow open to the outside
    anatomy = truth.with_array(anatomy_from_fragments(truth.array))
    runs = _runs_toggling(tmp_path, ct, truth.with_array(cortex_only), anatomy, "marrow_close_mm", (0.0, 6.0))
    without, filled = runs[0.0].labels.array, runs[6.0].labels.array
    assert np.mean(without[marrow] == 21) < 0.3  # Stage 2 alone leaves the marrow out
    assert np.mean(filled[marrow] == 21) > 0.95
    gained = np.count_nonzero(filled) - np.count_nonzero(without)
    ml = runs[6.0].report["inference"]["marrow_filled_ml"] - runs[0.0].report["inference"]["marrow_filled_ml"]
    assert ml == pytest.approx(gained * ct.voxel_volume_mm3 / 1000, abs=0.02)
    assert runs[6.0].report["inference"]["marrow_close_mm"] == 6.0
    # nothing is added outside Stage-1 bone
    assert not filled[(anatomy.array == 0) & (without == 0)].any()


def test_a_stray_crumb_apart_from_the_bones_is_dropped(tmp_path):
    """A 0.5 mL dense speck 10 mm from the right hip, which Stage 1 (the map) takes for hip
    and Stage 2 for bone, is no fragment in the output; with ``drop_crumbs=False`` it is."""
    ct, truth = _body()
    speck = np.zeros(truth.shape, bool)
    speck[18:24, 28:34, 1:7] = True  # 216 voxels of 1.25 mm: 0.42 mL, 16 mm from fragment 11
    speck_hu = np.random.default_rng(1).normal(500, 150, ct.shape)
    ct = ct.with_array(np.where(speck, speck_hu, ct.array).astype(np.int16))
    with_speck = np.where(speck, 22, truth.array).astype(np.uint8)
    anatomy = truth.with_array(anatomy_from_fragments(with_speck))
    runs = _runs_toggling(tmp_path, ct, truth.with_array(with_speck), anatomy, "drop_crumbs", (False, True))
    kept, dropped = runs[False], runs[True]
    assert np.mean(kept.labels.array[speck] > 0) > 0.5
    assert not dropped.labels.array[speck].any()
    assert sorted(f["label"] for f in dropped.fragments) == [11, 12, 21]
    crumb_ml = dropped.report["inference"]["dropped_isolated_crumbs_ml"]
    assert crumb_ml == pytest.approx(np.count_nonzero(kept.labels.array == 22) * ct.voxel_volume_mm3 / 1000,
                                     abs=0.01)
    assert kept.report["inference"]["dropped_isolated_crumbs_ml"] == 0.0


def test_a_vertebra_resting_on_the_sacrum_is_cut_off(tmp_path):
    """A vertebral body on a sacrum block across a 5 mm disc (80 HU), all of which Stage 1
    (the map) and Stage 2 take for one sacrum fragment, is cut off the sacrum; the report
    says how much. With ``cut_vertebra=False`` it stays."""
    ct, truth = _body()
    sacrum = np.zeros(truth.shape, bool)
    sacrum[4:20, 30:46, 3:20] = True      # 8.5 mL
    vertebra = np.zeros(truth.shape, bool)
    vertebra[24:36, 22:34, 5:18] = True   # 3.7 mL, above and in front of it, on its mid-line
    disc = np.zeros(truth.shape, bool)
    disc[20:24, 22:34, 5:18] = True
    bone_hu = np.random.default_rng(2).normal(500, 150, ct.shape)
    hu = np.where(sacrum | vertebra, bone_hu, ct.array)
    ct = ct.with_array(np.where(disc, 80, hu).astype(np.int16))
    with_sacrum = np.where(sacrum | disc | vertebra, 1, truth.array).astype(np.uint8)
    anatomy = truth.with_array(anatomy_from_fragments(with_sacrum))
    runs = _runs_toggling(tmp_path, ct, truth.with_array(with_sacrum), anatomy, "cut_vertebra", (False, True))
    kept, cut = runs[False].labels.array, runs[True].labels.array
    assert np.mean(kept[vertebra] == 1) > 0.9
    assert np.mean(cut[vertebra] > 0) < 0.05
    assert np.mean(cut[sacrum] == 1) > 0.9 and np.mean(cut[sacrum] == 1) >= np.mean(kept[sacrum] == 1) - 0.01
    assert np.array_equal(cut[truth.array > 0], kept[truth.array > 0])  # the hips as they were
    cut_ml = runs[True].report["inference"]["cut_vertebra_ml"]
    voxel_ml = ct.voxel_volume_mm3 / 1000
    assert np.count_nonzero(vertebra) * voxel_ml <= cut_ml <= np.count_nonzero(vertebra | disc) * voxel_ml + 0.3
    assert runs[False].report["inference"]["cut_vertebra_ml"] == 0.0
