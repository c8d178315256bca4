"""PENGWIN metrics on small box phantoms whose answers are worked out by hand.

Layout of the ground truth (z, y, x), spacing 1 mm unless a test says otherwise:
three boxes of 16 x 24 x 12 voxels, right hip (21) at x 4-15, sacrum (1) at x 18-29 and
left hip (11) at x 32-43 (the patient's left is +x in LPS). A box of a x b x c voxels has
its centroid in the middle, so the template's IoU-0 penalty radius is
0.5 * sqrt((a-1)^2 + (b-1)^2 + (c-1)^2) (voxel units; in mm with the spacing applied).
"""

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from pengwin_demo.errors import InputError
from pengwin_demo.metrics import (
    METRIC_KEYS,
    bounding_radius,
    evaluate_case,
    reference_surface_distances_mm,
    reference_surface_points_mm,
    surface_distances_mm,
    surface_points_mm,
    surface_shell,
)

SHAPE = (24, 32, 48)
Z, Y = slice(4, 20), slice(4, 28)
X_RIGHT, X_SACRUM, X_LEFT = slice(4, 16), slice(18, 30), slice(32, 44)
BOX_VOX = 16 * 24 * 12


def box_radius(a, b, c, spacing=(1.0, 1.0, 1.0)):
    """Largest voxel-centre distance from the centroid of an a x b x c box."""
    return 0.5 * math.sqrt(((a - 1) * spacing[0]) ** 2 + ((b - 1) * spacing[1]) ** 2
                           + ((c - 1) * spacing[2]) ** 2)


R_BOX = box_radius(16, 24, 12)  # voxel units (and mm at 1 mm spacing)


def pelvis():
    gt = np.zeros(SHAPE, np.uint8)
    gt[Z, Y, X_RIGHT] = 21
    gt[Z, Y, X_SACRUM] = 1
    gt[Z, Y, X_LEFT] = 11
    return gt


def frag(result, gt=None, pred=None):
    hits = [f for f in result["details"]["fragments"]
            if (gt is None or f["gt"] == gt) and (pred is None or f["pred"] == pred)]
    assert len(hits) == 1, hits
    return hits[0]


@pytest.mark.parametrize("strict", [False, True])
def test_perfect_prediction_scores_one_and_zero_distance(strict):
    gt = pelvis()
    r = evaluate_case(gt.copy(), gt, (1.5, 0.7, 0.7), strict=strict)
    for key in ("iou_f", "dice_f", "iou_a", "dice_a"):
        assert r[key] == 1.0
    for key in ("hd95_f", "assd_f", "hd95_a", "assd_a"):
        assert r[key] == 0.0
    assert r["n_gt_fragments"] == r["n_pred_fragments"] == 3
    assert r["details"]["notes"] == []


def test_one_fragment_split_in_two():
    gt = pelvis()
    pred = gt.copy()
    pred[12:20, Y, X_SACRUM] = 2  # the sacrum box cut in two halves of 8 x 24 x 12
    official = evaluate_case(pred, gt, (1.0, 1.0, 1.0))
    # GT 1 overlaps each half with IoU 0.5; the tie goes to the lowest label (1).
    assert frag(official, gt=1)["pred"] == 1
    assert frag(official, gt=1)["iou"] == 0.5
    assert official["iou_f"] == pytest.approx((0.5 + 1 + 1) / 3, abs=1e-12)
    assert official["dice_f"] == pytest.approx((2 / 3 + 1 + 1) / 3, abs=1e-12)
    assert frag(official, gt=1)["hd95"] > 0 and official["hd95_f"] > 0
    assert official["iou_a"] == 1.0 and official["hd95_a"] == 0.0  # the bone is whole

    strict = evaluate_case(pred, gt, (1.0, 1.0, 1.0), strict=True)
    extra = frag(strict, pred=2)
    assert extra["gt"] is None and extra["scored"] == "extra_pred" and extra["iou"] == 0.0
    r_half = box_radius(8, 24, 12)
    assert extra["hd95"] == pytest.approx(2 * r_half) and extra["assd"] == pytest.approx(r_half)
    # 3 ground-truth fragments + 1 extra predicted fragment
    assert strict["iou_f"] == pytest.approx((0.5 + 1 + 1 + 0) / 4, abs=1e-12)
    hd_pair = frag(strict, gt=1)["hd95"]
    assert strict["hd95_f"] == pytest.approx((hd_pair + 2 * r_half) / 4, rel=1e-6)


def test_two_fragments_merged():
    gt = pelvis()
    gt[12:20, Y, X_SACRUM] = 2  # ground truth: sacrum in two halves
    pred = pelvis()  # prediction: one sacrum fragment
    official = evaluate_case(pred, gt, (1.0, 1.0, 1.0))
    # both ground-truth halves match the same predicted fragment, IoU 0.5 each
    assert frag(official, gt=1)["pred"] == frag(official, gt=2)["pred"] == 1
    assert official["iou_f"] == pytest.approx((0.5 + 0.5 + 1 + 1) / 4, abs=1e-12)
    assert official["iou_a"] == 1.0

    strict = evaluate_case(pred, gt, (1.0, 1.0, 1.0), strict=True)
    missed = [f for f in strict["details"]["fragments"] if f["scored"] == "missed_gt"]
    assert len(missed) == 1 and missed[0]["gt"] in (1, 2)
    assert missed[0]["hd95"] == pytest.approx(2 * box_radius(8, 24, 12))
    assert strict["iou_f"] == pytest.approx((0.5 + 0 + 1 + 1) / 4, abs=1e-12)


def test_missing_bone_official_drops_its_fragments_strict_counts_them():
    spacing = (2.0, 1.0, 1.0)
    gt = pelvis()
    pred = gt.copy()
    pred[pred == 21] = 0  # right hip not predicted at all
    official = evaluate_case(pred, gt, spacing)
    # official quirk: GT 21 has no candidate in its bone, so it is not scored at all
    assert official["details"]["unscored_gt"] == [21]
    assert official["iou_f"] == 1.0 and official["hd95_f"] == 0.0
    assert any("not scored" in n for n in official["details"]["notes"])
    # anatomical: right hip IoU 0 and the radius penalty of the GT bone, in VOXELS
    right = official["details"]["bones"]["right_hip"]
    assert right["iou"] == 0.0
    assert right["hd95"] == pytest.approx(2 * R_BOX) and right["assd"] == pytest.approx(R_BOX)
    assert official["iou_a"] == pytest.approx(2 / 3, abs=1e-12)
    assert official["hd95_a"] == pytest.approx(2 * R_BOX / 3)
    assert official["assd_a"] == pytest.approx(R_BOX / 3)

    strict = evaluate_case(pred, gt, spacing, strict=True)
    r_mm = box_radius(16, 24, 12, spacing)  # strict mode penalises in mm
    assert frag(strict, gt=21)["scored"] == "missed_gt"
    assert strict["iou_f"] == pytest.approx(2 / 3, abs=1e-12)
    assert strict["hd95_f"] == pytest.approx(2 * r_mm / 3)
    assert strict["assd_f"] == pytest.approx(r_mm / 3)
    assert strict["iou_a"] == official["iou_a"] and strict["hd95_a"] == official["hd95_a"]


def test_extra_fragments_cost_nothing_officially_but_count_in_strict_mode():
    gt = pelvis()
    pred = gt.copy()
    pred[21:24, 28:31, 44:47] = 12  # a 3x3x3 stray piece labelled left hip
    pred[0:2, 0:2, 20:22] = 3  # a 2x2x2 stray piece labelled sacrum
    official = evaluate_case(pred, gt, (1.0, 1.0, 1.0))
    assert official["iou_f"] == 1.0 and official["hd95_f"] == 0.0 and official["assd_f"] == 0.0
    bones = official["details"]["bones"]
    assert bones["left_hip"]["iou"] == pytest.approx(BOX_VOX / (BOX_VOX + 27), abs=1e-12)
    assert bones["sacrum"]["iou"] == pytest.approx(BOX_VOX / (BOX_VOX + 8), abs=1e-12)
    # the stray shells hold under 5 % of the points: HD95 ignores them, ASSD does not
    assert bones["left_hip"]["hd95"] == 0.0 and bones["left_hip"]["assd"] > 0.0
    assert official["n_pred_fragments"] == 5

    strict = evaluate_case(pred, gt, (1.0, 1.0, 1.0), strict=True)
    assert strict["iou_f"] == pytest.approx(3 / 5, abs=1e-12)
    r12, r3 = box_radius(3, 3, 3), box_radius(2, 2, 2)
    assert frag(strict, pred=12)["hd95"] == pytest.approx(2 * r12)
    assert strict["hd95_f"] == pytest.approx((2 * r12 + 2 * r3) / 5)
    assert strict["assd_f"] == pytest.approx((r12 + r3) / 5)


@pytest.mark.parametrize("strict", [False, True])
def test_empty_prediction(strict):
    gt = pelvis()
    r = evaluate_case(np.zeros_like(gt), gt, (1.0, 1.0, 1.0), strict=strict)
    assert r["iou_f"] == 0.0 and r["dice_f"] == 0.0
    if strict:  # every ground-truth fragment missed, penalised with its radius in mm
        assert r["hd95_f"] == pytest.approx(2 * R_BOX) and r["assd_f"] == pytest.approx(R_BOX)
    else:  # the template divides by zero here; we report infinite distances and say why
        assert r["hd95_f"] == math.inf and r["assd_f"] == math.inf
        assert any("ZeroDivisionError" in n for n in r["details"]["notes"])
    # every bone: IoU 0 and the radius penalty (all three boxes have the same size)
    assert r["iou_a"] == 0.0 and r["dice_a"] == 0.0
    assert r["hd95_a"] == pytest.approx(2 * R_BOX) and r["assd_a"] == pytest.approx(R_BOX)
    assert r["n_pred_fragments"] == 0


def test_empty_ground_truth_gives_nan_fragment_metrics():
    gt = np.zeros(SHAPE, np.uint8)
    r = evaluate_case(pelvis(), gt, (1.0, 1.0, 1.0))
    assert all(math.isnan(r[k]) for k in ("iou_f", "dice_f", "hd95_f", "assd_f"))
    assert r["iou_a"] == 0.0 and r["hd95_a"] == math.inf  # predicted bones absent from GT


def test_anisotropic_spacing_slab_hand_computed():
    """A 2-voxel-thick slab shifted by one voxel along z, spacing 2 mm (z) x 0.5 mm (y, x).

    Shells (dilation minus erosion; the erosion of a 2-thick slab is empty): layers
    z0-1 .. z0+2, 400 square voxels each, plus a ring of 80 at z0 and z0+1: 1760 points.
    Ground truth to prediction: 400 points at 2.0 mm (z0-1 to the predicted z0 layer),
    80 ring points at z0 at 0.5 mm (one in-plane step), the other 1280 at 0. Sorted, the
    95th percentile (position 1671.05) falls among the 2.0 mm values; symmetric both ways.
    """
    spacing = (2.0, 0.5, 0.5)
    gt = np.zeros((10, 26, 26), np.uint8)
    pred = np.zeros_like(gt)
    gt[4:6, 3:23, 3:23] = 1
    pred[5:7, 3:23, 3:23] = 1
    r = evaluate_case(pred, gt, spacing)
    assert r["iou_f"] == pytest.approx(1 / 3, abs=1e-12)
    assert r["dice_f"] == pytest.approx(0.5, abs=1e-12)
    assert r["hd95_f"] == pytest.approx(2.0, abs=1e-6)
    assert r["assd_f"] == pytest.approx((400 * 2.0 + 80 * 0.5) / 1760, abs=1e-6)
    sacrum = r["details"]["bones"]["sacrum"]
    assert sacrum["hd95"] == pytest.approx(2.0, abs=1e-6)
    # the hips are absent from both maps: the template scores them IoU 0, infinite distance
    assert r["iou_a"] == pytest.approx((1 / 3) / 3, abs=1e-12)
    assert r["hd95_a"] == math.inf
    assert sum("absent from the ground truth" in n for n in r["details"]["notes"]) == 2
    # (z, y, x) order matters: read as x, y, z the same slab gives other distances
    swapped = evaluate_case(pred, gt, spacing[::-1])
    assert swapped["hd95_f"] == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("strict", [False, True])
def test_swapped_left_right(strict):
    gt = pelvis()
    pred = gt.copy()
    pred[gt == 11] = 21
    pred[gt == 21] = 11
    r = evaluate_case(pred, gt, (1.0, 1.0, 1.0), strict=strict)
    if strict:  # each hip: one missed GT fragment and one extra predicted fragment
        assert r["iou_f"] == pytest.approx(1 / 5, abs=1e-12)
        assert r["hd95_f"] == pytest.approx(4 * 2 * R_BOX / 5)
    else:  # GT 11 matches predicted 11 (on the other side) with IoU 0 -> radius penalty
        assert frag(r, gt=11)["pred"] == 11 and frag(r, gt=11)["scored"] == "iou0_radius_vox"
        assert r["iou_f"] == pytest.approx(1 / 3, abs=1e-12)
        assert r["hd95_f"] == pytest.approx(2 * 2 * R_BOX / 3)
        assert r["assd_f"] == pytest.approx(2 * R_BOX / 3)
    # hips do not overlap: IoU 0; the two boxes' shells are at least 15 voxels apart
    assert r["iou_a"] == pytest.approx(1 / 3, abs=1e-12)
    for side in ("left_hip", "right_hip"):
        assert r["details"]["bones"][side]["iou"] == 0.0
        assert r["details"]["bones"][side]["assd"] >= 15.0
        assert r["details"]["bones"][side]["hd95"] >= 15.0


def test_strict_matching_is_a_global_optimum_not_greedy():
    """Rods along x (same 3 x 3 cross-section, so IoU = ratio of lengths).

    GT A = x 0-9, GT B = x 10-19; predicted Y = x 0-2, X = x 3-13.
    IoU(A, X) = 7/14, IoU(A, Y) = 3/10, IoU(B, X) = 4/17. Official: A and B both take X.
    Greedy one-to-one would give A -> X and miss B (total 0.5); the Hungarian assignment
    takes A -> Y, B -> X (total 0.535).
    """
    gt = np.zeros((3, 3, 24), np.uint8)
    pred = np.zeros_like(gt)
    gt[:, :, 0:10], gt[:, :, 10:20] = 1, 2
    pred[:, :, 0:3], pred[:, :, 3:14] = 2, 1  # Y = label 2, X = label 1
    official = evaluate_case(pred, gt, (1.0, 1.0, 1.0))
    assert frag(official, gt=1)["pred"] == 1 and frag(official, gt=2)["pred"] == 1
    assert official["iou_f"] == pytest.approx((7 / 14 + 4 / 17) / 2, abs=1e-12)
    strict = evaluate_case(pred, gt, (1.0, 1.0, 1.0), strict=True)
    assert frag(strict, gt=1)["pred"] == 2 and frag(strict, gt=2)["pred"] == 1
    assert strict["iou_f"] == pytest.approx((3 / 10 + 4 / 17) / 2, abs=1e-12)


def test_labels_outside_pengwin_range_are_ignored():
    gt = pelvis()
    pred = gt.astype(np.int32)
    pred[0:2, 0:2, 0:2] = 31
    pred[22:24, 0:2, 0:2] = 255
    r = evaluate_case(pred, gt, (1.0, 1.0, 1.0))
    assert r["iou_f"] == 1.0 and r["iou_a"] == 1.0 and r["hd95_a"] == 0.0


# ---------------------------------------------------------------- building blocks
def test_cropped_subsampled_surfaces_match_the_whole_grid_reference():
    """Shells over 10 000 voxels: the crop must draw exactly the same points."""
    spacing = (1.25, 0.75, 0.8)
    zz, yy, xx = np.ogrid[:60, :90, :100]
    gt = np.zeros((60, 90, 100), np.uint8)
    ball = ((zz - 30) / 24.0) ** 2 + ((yy - 44) / 38.0) ** 2 + ((xx - 50) / 40.0) ** 2 < 1
    gt[ball] = 1
    pred = np.zeros_like(gt)
    pred[np.roll(ball, (2, -3, 1), axis=(0, 1, 2)) & (xx > 14)] = 1
    assert surface_shell(ball).sum() > 10_000
    r = evaluate_case(pred, gt, spacing)
    a = reference_surface_points_mm(gt == 1, spacing)
    b = reference_surface_points_mm(pred == 1, spacing)
    hd95, assd = reference_surface_distances_mm(a, b)
    assert r["hd95_f"] == pytest.approx(float(hd95), abs=1e-4)
    assert r["assd_f"] == pytest.approx(float(assd), abs=1e-4)
    assert r["iou_f"] == np.logical_and(gt, pred).sum() / np.logical_or(gt, pred).sum()
    # and the crop-with-offset path draws the same points as the whole grid
    box = (slice(3, 58), slice(4, 86), slice(8, 93))
    cropped = surface_points_mm(ball[box], spacing, offset_zyx_vox=(3, 4, 8))
    np.testing.assert_array_equal(cropped, reference_surface_points_mm(ball, spacing))


def test_sampling_matches_scikit_learn_resample():
    resample = pytest.importorskip("sklearn.utils").resample
    mask = np.zeros((40, 60, 60), bool)
    mask[5:35, 5:55, 5:55] = True
    pts = np.argwhere(surface_shell(mask))
    assert len(pts) > 10_000
    expected = resample(pts, n_samples=10_000, random_state=2024) * np.array([1.0, 0.5, 0.5])
    np.testing.assert_array_equal(surface_points_mm(mask, (1.0, 0.5, 0.5)), expected)


def test_sample_size_none_keeps_every_point_and_seed_changes_the_draw():
    mask = np.zeros((40, 60, 60), bool)
    mask[5:35, 5:55, 5:55] = True
    n = int(surface_shell(mask).sum())
    assert len(surface_points_mm(mask, (1, 1, 1), sample_size=None)) == n
    a = surface_points_mm(mask, (1, 1, 1), seed=1)
    b = surface_points_mm(mask, (1, 1, 1), seed=2)
    assert len(a) == len(b) == 10_000 and not np.array_equal(a, b)


def test_surface_shell_equals_scipy_dilation_minus_erosion():
    rng = np.random.default_rng(3)
    struct = ndi.generate_binary_structure(3, 1)
    for density in (0.2, 0.6, 0.95):
        mask = rng.random((13, 17, 11)) < density
        expected = ndi.binary_dilation(mask, struct) & ~ndi.binary_erosion(mask, struct)
        np.testing.assert_array_equal(surface_shell(mask), expected)


def test_surface_shell_is_two_voxels_thick_and_border_voxels_count():
    mask = np.zeros((5, 5, 5), bool)
    mask[1:4, 1:4, 1:4] = True
    shell = surface_shell(mask)
    # 27 - 1 interior voxel + 6 faces x 9 outside = 80
    assert shell.sum() == 80 and not shell[2, 2, 2]
    full = np.ones((3, 3, 3), bool)  # touches every face: outside counts as background
    assert surface_shell(full).sum() == 26


def test_distances_and_radius_building_blocks():
    a = np.array([[0.0, 0, 0], [0, 0, 1]])
    b = np.array([[0.0, 0, 3]])
    hd95, assd = surface_distances_mm(a, b)
    # a->b: 3, 2 (p95 = 2.95, mean 2.5); b->a: 2  -> hd95 2.95, assd (2.5 + 2) / 2
    assert hd95 == pytest.approx(2.95, abs=1e-6) and assd == pytest.approx(2.25, abs=1e-6)
    assert surface_distances_mm(a, np.zeros((0, 3))) == (math.inf, math.inf)
    mask = np.zeros((4, 4, 4), bool)
    mask[0:3, 0, 0] = True  # 3 voxels in a line along z
    assert bounding_radius(mask) == 1.0
    assert bounding_radius(mask, spacing_zyx_mm=(2.5, 1, 1)) == 2.5
    assert bounding_radius(np.zeros((2, 2, 2), bool)) == math.inf


def test_bad_input_raises_value_or_type_error():
    gt = pelvis()
    with pytest.raises(ValueError, match="shape") as err:
        evaluate_case(gt[:, :, :40], gt, (1, 1, 1))
    assert not isinstance(err.value, InputError)  # arrays: the file readers name the file
    with pytest.raises(TypeError, match="dtype"):
        evaluate_case(gt.astype(np.float32), gt, (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        evaluate_case(gt, gt, (1, 0, 1))
    with pytest.raises(ValueError, match="3D"):
        evaluate_case(gt[0], gt[0], (1, 1, 1))
    with pytest.raises(ValueError, match="sample_size"):
        evaluate_case(gt, gt, (1, 1, 1), sample_size=0)


def test_result_keys():
    r = evaluate_case(pelvis(), pelvis(), (1, 1, 1))
    assert set(METRIC_KEYS) <= set(r)
    assert all(isinstance(r[k], float) for k in METRIC_KEYS)
    assert set(r["details"]["bones"]) == {"sacrum", "left_hip", "right_hip"}
