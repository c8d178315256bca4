"""Is what Stage 1 found a pelvis? Refusals and warnings on real pelves, phantoms with bones
removed, swapped sides and soft tissue taken for bone."""

import numpy as np
import pytest

from pengwin_demo.labels import anatomy_from_fragments
from pengwin_demo.phantom import make_phantom
from pengwin_demo.plausibility import (MAX_GAP_MM, MAX_HIPS_ACROSS_MIDLINE, MIN_HIP_SEPARATION_MM, check_anatomy,
                                      drop_pieces_without_cortex, hips_across_midline, keep_near_pelvis)
from pengwin_demo.volume import Volume


@pytest.fixture(scope="module")
def phantom():
    ct, truth = make_phantom(7, "small")
    return ct, truth.with_array(anatomy_from_fragments(truth.array))


@pytest.mark.slow
def test_real_pelves_with_expert_bones_pass_without_warnings(real_pelves):
    for name, ct, labels in real_pelves:
        check = check_anatomy(labels.with_array(anatomy_from_fragments(labels.array)), ct.array)
        assert check.refusal is None and check.warnings == [], (name, check)
        assert all(b["dense_ml"] > 100 for b in check.bones.values())


def test_phantom_passes_and_a_phantom_without_its_sacrum_still_does(phantom):
    ct, anatomy = phantom
    assert check_anatomy(anatomy, ct.array).refusal is None
    no_sacrum = anatomy.with_array(np.where(anatomy.array == 1, 0, anatomy.array).astype(np.uint8))
    check = check_anatomy(no_sacrum, ct.array)
    assert check.refusal is None and check.bones["sacrum"]["dense_ml"] == 0


def test_one_bone_is_not_a_pelvis_unless_the_user_says_so(phantom):
    ct, anatomy = phantom
    one = anatomy.with_array(np.where(anatomy.array == 2, 2, 0).astype(np.uint8))
    check = check_anatomy(one, ct.array)
    assert check.refusal.startswith("no pelvis found: Stage 1 found fewer than 2 of sacrum")
    assert "left_hip" in check.refusal and "No fragments were produced." in check.refusal
    assert check_anatomy(one, ct.array, min_bones=1).refusal is None


def test_swapped_sides_and_a_half_missing_hip_warn(phantom):
    ct, anatomy = phantom
    swapped = anatomy.array.copy()
    swapped[anatomy.array == 2], swapped[anatomy.array == 3] = 3, 2
    check = check_anatomy(anatomy.with_array(swapped), ct.array)
    assert check.refusal is None
    assert any("left hip lies on the patient's right" in w for w in check.warnings)
    cut = anatomy.array.copy()
    right = np.argwhere(cut == 3)
    cut[tuple(right[right[:, 0] > np.percentile(right[:, 0], 30)].T)] = 0  # keep the lowest 30 %
    check = check_anatomy(anatomy.with_array(cut), ct.array)
    assert any(w.startswith("the hips differ in size") for w in check.warnings)


def test_soft_tissue_taken_for_bone_is_refused(phantom):
    ct, anatomy = phantom
    nothing_dense = ct.array.copy()
    nothing_dense[anatomy.array > 0] = 40  # an MR-like or bone-free scan: Stage 1 hit soft tissue
    assert check_anatomy(anatomy, nothing_dense).refusal.startswith("no pelvic bone found (Stage 1 found 0.0 mL")
    blob = anatomy.array.copy()
    blob[(blob == 0) & (ct.array < 100)] = 1  # the 'sacrum' swallows the soft tissue around it
    check = check_anatomy(anatomy.with_array(blob), ct.array)
    assert "soft tissue rather than bone" in check.refusal


def test_bone_far_from_the_pelvis_is_dropped_and_near_pieces_kept():
    grid = np.zeros((40, 60, 60), np.uint8)
    grid[10:30, 10:30, 10:30] = 2  # the pelvis (largest piece)
    grid[10:14, 10:14, 30 + int(20 / 2):34 + int(20 / 2)] = 2  # a fragment 20 mm away: kept
    grid[34:38, 50:54, 50:54] = 3  # a rib far away: dropped
    vol = Volume(grid, (2.0, 2.0, 2.0))
    kept, dropped_ml = keep_near_pelvis(vol)
    assert np.count_nonzero(kept.array == 3) == 0
    assert dropped_ml == pytest.approx(4 * 4 * 4 * 8 / 1000, abs=0.01)  # mL, rounded to 0.01
    assert np.array_equal(kept.array == 2, grid == 2)
    # nothing apart: unchanged; the gap is a parameter
    assert keep_near_pelvis(kept)[1] == 0.0
    assert keep_near_pelvis(vol, max_gap_mm=1000)[1] == 0.0
    assert MAX_GAP_MM >= 20


def test_a_chain_of_displaced_fragments_is_kept():
    grid = np.zeros((20, 20, 80), np.uint8)
    grid[5:15, 5:15, 0:16] = 3  # the largest piece
    for k in range(3):  # 1.7 mL pieces with gaps of 16 mm, the last 72 mm from the largest
        x0 = 16 + 8 + k * 14
        grid[7:13, 7:13, x0:x0 + 6] = 3
    grid[9:11, 9:11, 64:66] = 3  # a 0.06 mL speck 12 mm beyond the last piece: kept
    vol = Volume(grid, (2.0, 2.0, 2.0))
    kept, dropped_ml = keep_near_pelvis(vol)
    assert dropped_ml == 0.0 and np.array_equal(kept.array, grid)
    assert keep_near_pelvis(vol, max_gap_mm=10.0)[1] > 0



def test_specks_do_not_bridge_to_far_bone():
    grid = np.zeros((20, 20, 90), np.uint8)
    grid[5:15, 5:15, 0:16] = 2  # the pelvis
    grid[10:11, 10:11, 26:27] = 2  # a speck 20 mm away: kept
    grid[8:12, 8:12, 36:50] = 2  # a rib 40 mm from the pelvis, 18 mm from the speck: dropped
    kept, dropped_ml = keep_near_pelvis(Volume(grid, (2.0, 2.0, 2.0)))
    assert kept.array[10, 10, 26] == 2 and not kept.array[:, :, 36:].any()
    assert dropped_ml == pytest.approx(4 * 4 * 14 * 8 / 1000, abs=0.01)


@pytest.mark.slow
def test_every_real_expert_fragment_has_a_cortex(real_pelves):
    """Each fragment of the real pelves, alone as a Stage-1 piece, is kept."""
    n = 0
    for name, ct, labels in real_pelves:
        for label in np.unique(labels.array)[1:]:
            box = tuple(slice(max(int(i.min()) - 2, 0), int(i.max()) + 3) for i in np.nonzero(labels.array == label))
            piece = (labels.array[box] == label).astype(np.uint8)
            anatomy = Volume(piece, labels.spacing_zyx_mm)
            kept, dropped_ml = drop_pieces_without_cortex(anatomy, Volume(ct.array[box], ct.spacing_zyx_mm))
            assert dropped_ml == 0 and np.array_equal(kept.array, piece), (name, int(label))
            n += 1
    assert n >= 20


def test_contrast_taken_for_bone_is_dropped_and_bone_kept(phantom):
    ct, anatomy = phantom
    hu = ct.array.astype(np.int16).copy()
    marked = anatomy.array.copy()
    # a contrast-filled bowel loop (300 HU, no cortex) that a model took for sacrum
    loop = np.zeros(hu.shape, bool)
    loop[2:12, 2:14, 2:14] = True
    assert not (anatomy.array[loop] > 0).any()
    hu[loop] = 300
    marked[loop] = 1
    # a small displaced fragment: a cortex shell (900 HU) around cancellous bone
    chip = np.zeros(hu.shape, bool)
    chip[-9:-3, -11:-3, -11:-3] = True
    hu[chip] = 250
    hu[-7, -7, -7] = 900
    marked[chip] = 2
    # a crumb of cancellous bone (under 1 mL) is not judged by its peak
    crumb = np.zeros(hu.shape, bool)
    crumb[2:5, -6:-3, -6:-3] = True
    hu[crumb] = 250
    marked[crumb] = 3
    coarse = ct.with_array(marked)
    kept, dropped_ml = drop_pieces_without_cortex(coarse, ct.with_array(hu))
    assert not kept.array[loop].any()
    assert np.array_equal(kept.array[~loop], marked[~loop])
    assert dropped_ml == pytest.approx(loop.sum() * ct.voxel_volume_mm3 / 1000, abs=0.01)


def test_hips_too_close_together_are_refused(phantom):
    """A skull taken for both hips (a real head CT) lies about 60 mm wide: no pelvis."""
    ct, anatomy = phantom
    assert check_anatomy(anatomy, ct.array).refusal is None
    squeezed = anatomy.array.copy()
    # move the right hip next to the left one, as a narrow pair of "hips"
    left_x = np.nonzero(anatomy.array == 2)[2].mean()
    right_x = np.nonzero(anatomy.array == 3)[2].mean()
    shift_vox = int(round((left_x - right_x) - 0.5 * MIN_HIP_SEPARATION_MM / ct.spacing_zyx_mm[2]))
    squeezed[squeezed == 3] = 0
    moved = np.roll(anatomy.array == 3, shift_vox, axis=2) & (squeezed == 0)
    squeezed[moved] = 3
    hu = np.where(moved, ct.array.max(), ct.array)
    check = check_anatomy(anatomy.with_array(squeezed), hu)
    assert check.refusal is not None and "apart from left to right" in check.refusal


def test_hips_mixed_across_the_midline_are_refused(phantom):
    """Vertebrae and ribs taken for both hips (a real scan ending at L4/L5) put "left" and
    "right" hip bone on both sides of the body: no pelvis."""
    ct, anatomy = phantom
    assert hips_across_midline(anatomy, ct.array) < 0.01
    mixed = anatomy.array.copy()
    for bone, other in ((2, 3), (3, 2)):
        z = np.nonzero(anatomy.array == bone)[0]
        top = (anatomy.array == bone) & (np.arange(ct.shape[0]) >= np.percentile(z, 90))[:, None, None]
        mixed[top] = other  # the top tenth of each hip becomes the other hip
    across = hips_across_midline(anatomy.with_array(mixed), ct.array)
    assert MAX_HIPS_ACROSS_MIDLINE < across < 0.5
    check = check_anatomy(anatomy.with_array(mixed), ct.array)
    assert check.refusal is not None and "mixed across the body's mid-line" in check.refusal
    # the same map given by a user (one bone required) is trusted
    assert check_anatomy(anatomy.with_array(mixed), ct.array, min_bones=1).refusal is None
