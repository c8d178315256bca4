"""Oracle and imperfect-prediction tests: ground truth -> ABBC targets -> recovery -> compare.

Uses the project's own ABBC generator (:func:`pengwin_demo.recovery.abbc_targets`) on the real
fractured sacrum (the ``real_sacrum_dir`` fixture; skipped when absent) and on synthetic
phantoms. Fragment IoU follows the PENGWIN semantics (each ground-truth fragment against its
best same-bone prediction, averaged); ground-truth fragments under the minimum fragment size
are merged into their neighbour first, and the all-fragments figure is printed beside it.
"""

from __future__ import annotations

import numpy as np
import pytest

from pengwin_demo.labels import ABBC_CORE, anatomy_from_fragments
from pengwin_demo.metrics import fragment_iou, merge_small_fragments
from pengwin_demo.recovery import noise as abbc_noise
from pengwin_demo.recovery import recover_fragments
from pengwin_demo.volume import bounding_box

abbc_mod = pytest.importorskip("pengwin_demo.recovery.targets")

MIN_FRAGMENT_VOX = 1000


@pytest.fixture(scope="module")
def sacrum(real_sacrum_dir):
    """Real sacrum labels cropped to the bone (+4 voxels), its ABBC map and anatomy."""
    from pengwin_demo.io import read_volume

    vol = read_volume(real_sacrum_dir / "fragments.nii.gz", kind="label")
    box = bounding_box(vol.array > 0, margin_vox=4)
    gt = np.ascontiguousarray(vol.array[box])
    spacing = vol.spacing_zyx_mm
    abbc = abbc_mod.abbc_targets(gt, spacing)
    return gt, abbc, anatomy_from_fragments(gt), spacing, merge_small_fragments(gt, MIN_FRAGMENT_VOX)


def test_oracle_real_sacrum(sacrum):
    gt, abbc, anatomy, spacing, gt_merged = sacrum
    result = recover_fragments(abbc, anatomy, spacing, min_fragment_vox=MIN_FRAGMENT_VOX)
    iou = fragment_iou(result.labels, gt_merged)
    iou_all = fragment_iou(result.labels, gt)
    print(f"real sacrum oracle: fragment IoU {iou:.4f} (fragments >= {MIN_FRAGMENT_VOX} vox), "
          f"{iou_all:.4f} (all {len(np.unique(gt)) - 1} fragments)")
    assert iou >= 0.99
    assert len(result.fragments) == len(np.unique(gt_merged)) - 1
    lost = np.count_nonzero((gt > 0) & (result.labels == 0))
    assert lost <= 10  # only stray specks of a few voxels may be dropped
    assert iou_all > 0.6  # the three fragments under 1000 voxels are merged, not lost


@pytest.mark.slow
def test_fast_matches_reference_on_real_sacrum(sacrum):
    gt, abbc, anatomy, spacing, _ = sacrum
    fast = recover_fragments(abbc, anatomy, spacing).labels
    ref = recover_fragments(abbc, anatomy, spacing, method="reference").labels
    bone = abbc > 0
    assert np.mean(fast[bone] == ref[bone]) >= 0.995


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_phantoms_small(seed):
    """Small phantoms (about 2 mm voxels): the recovery must reproduce what the ABBC map
    encodes. It does not reach 0.99 on every phantom, and the shortfall is in the ABBC
    representation at this resolution, not in the growth (docs/recovery.md): a fragment whose
    fracture zone is 40 % of its voxels gets its wall split a voxel off, and a fragment
    whose boundary/core part is cut in two by another fragment's zone is two cores, i.e.
    two fragments, for any recovery. The reference (per-seed scikit-fmm) scores the same."""
    phantom = pytest.importorskip("pengwin_demo.phantom")
    _, lab = phantom.make_phantom(seed, "small")
    gt, spacing = lab.array, lab.spacing_zyx_mm
    abbc = abbc_mod.abbc_targets(gt, spacing)
    anatomy = anatomy_from_fragments(gt)
    gt_merged = merge_small_fragments(gt, MIN_FRAGMENT_VOX)
    result = recover_fragments(abbc, anatomy, spacing)
    iou = fragment_iou(result.labels, gt_merged)
    ref = recover_fragments(abbc, anatomy, spacing, method="reference")
    iou_ref = fragment_iou(ref.labels, gt_merged)
    print(f"phantom {seed} (small) oracle: fragment IoU {iou:.4f} (reference {iou_ref:.4f}), "
          f"all fragments {fragment_iou(result.labels, gt):.4f}")
    assert iou >= 0.95  # measured 0.968 / 0.993 / 0.956 (seeds 0 / 1 / 2)
    assert iou >= iou_ref - 0.005  # the fast path loses nothing the reference keeps
    assert np.count_nonzero((gt > 0) & (result.labels == 0)) <= 10


@pytest.mark.slow
def test_oracle_full_size_phantom_two_cores_and_thin_parts():
    """Full-size phantom seed 2, 5 fragments per bone (423 x 512 x 512, 15 fragments).
    It has a fragment with two cores meeting through a neck of open bone, and a thin part
    of a fragment cut off by its own contact layer: the targets join a fragment's pieces
    and demote minor cores sharing its open bone, recovery merges seeds that meet without
    border, and walls are symmetric (0.9916 measured, 15 of 15 fragments)."""
    phantom = pytest.importorskip("pengwin_demo.phantom")
    _, lab = phantom.make_phantom(2, "full", {"sacrum": 5, "left_hip": 5, "right_hip": 5})
    gt, spacing = lab.array, lab.spacing_zyx_mm
    abbc = abbc_mod.abbc_targets(gt, spacing)
    result = recover_fragments(abbc, anatomy_from_fragments(gt), spacing)
    gt_merged = merge_small_fragments(gt, MIN_FRAGMENT_VOX)
    iou = fragment_iou(result.labels, gt_merged)
    print(f"phantom 2 (full) oracle: fragment IoU {iou:.4f}, {len(result.fragments)} fragments")
    assert len(result.fragments) == len(np.unique(gt_merged)) - 1
    assert iou >= 0.99


# -- imperfect predictions: degrade gracefully, never crash --------------------------------------
def _iou(sacrum, abbc):
    gt, _, anatomy, spacing, gt_merged = sacrum
    result = recover_fragments(abbc, anatomy, spacing, min_fragment_vox=MIN_FRAGMENT_VOX)
    assert result.labels.dtype == np.uint8
    return fragment_iou(result.labels, gt_merged), result


def test_border_with_gaps(sacrum):
    gt, abbc, _, spacing, _ = sacrum
    iou, _ = _iou(sacrum, abbc_noise.border_gaps(abbc, 0.25, spacing))
    assert iou >= 0.95  # a quarter of the wall missing: fragments stay apart
    iou, result = _iou(sacrum, abbc_noise.border_gaps(abbc, 1.0, spacing))
    assert len(result.fragments) >= 1  # no wall at all: merged, but no crash


@pytest.mark.parametrize("change_vox, floor", [(-1, 0.97), (1, 0.97), (2, 0.95)])
def test_border_thicker_or_thinner(sacrum, change_vox, floor):
    _, abbc, _, _, _ = sacrum
    iou, _ = _iou(sacrum, abbc_noise.border_width(abbc, change_vox))
    assert iou >= floor


def test_spurious_core_specks(sacrum):
    _, abbc, _, _, gt_merged = sacrum
    iou, result = _iou(sacrum, abbc_noise.core_specks(abbc, 30, size_vox=64, seed=1))
    assert iou >= 0.98
    assert len(result.fragments) == len(np.unique(gt_merged)) - 1


def test_fragment_without_core(sacrum):
    gt, abbc, _, _, gt_merged = sacrum
    for lab in (2, 3):  # the second and third largest fragments lose their core
        iou, result = _iou(sacrum, abbc_noise.drop_core(abbc, gt == lab))
        assert iou >= 0.98
        assert len(result.fragments) == len(np.unique(gt_merged)) - 1


def test_class_noise(sacrum):
    _, abbc, _, _, gt_merged = sacrum
    iou, result = _iou(sacrum, abbc_noise.class_noise(abbc, 0.05, seed=2))
    assert iou >= 0.97
    assert len(result.fragments) == len(np.unique(gt_merged)) - 1


@pytest.mark.parametrize("seed", [0, 2])
def test_surface_noise(sacrum, seed):
    from scipy import ndimage as ndi

    gt, abbc, _, spacing, gt_merged = sacrum
    noisy = abbc_noise.surface_noise(abbc, 0.1, spacing, seed=seed)
    iou, result = _iou(sacrum, noisy)
    # the jittered surface itself costs IoU: compare with the best any recovery could do,
    # the ground truth on the jittered bone (added voxels take a neighbour's label)
    grown = ndi.grey_dilation(gt_merged, footprint=ndi.generate_binary_structure(3, 1))
    best = np.where(noisy > 0, np.where(gt_merged > 0, gt_merged, grown), 0).astype(np.uint8)
    ceiling = fragment_iou(best, gt_merged)
    print(f"surface noise 0.1 (seed {seed}): IoU {iou:.4f}, ceiling {ceiling:.4f}")
    assert iou >= ceiling - 0.03
    assert len(result.fragments) == len(np.unique(gt_merged)) - 1


def test_no_core_anywhere_and_all_border(sacrum):
    gt, abbc, anatomy, spacing, _ = sacrum
    all_border = np.where(abbc > 0, 3, 0).astype(np.uint8)
    result = recover_fragments(all_border, anatomy, spacing)
    assert not result.labels.any() and result.warnings
    only_core = np.where(abbc > 0, ABBC_CORE, 0).astype(np.uint8)
    result = recover_fragments(only_core, anatomy, spacing)
    assert len(result.fragments) >= 1  # all core: one seed per bone piece, nothing lost
    assert np.count_nonzero(result.labels[abbc > 0] == 0) <= 10  # but stray specks
