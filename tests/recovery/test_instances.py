"""Instance recovery on small hand-built ABBC maps: geometry, merging rules, edge cases.

The ABBC maps here are built by a deliberately simple rule of this file's own (core =
deeper than ``core_mm``; border = within ``border_mm`` of another fragment of the same
bone), independent of :mod:`pengwin_demo.recovery.targets`, so that these tests pin down
the recovery itself. Oracle tests through the real ABBC generator live in
test_instances_oracle.py.
"""

from __future__ import annotations

import edt
import numpy as np
import pytest

from pengwin_demo.errors import InputError
from pengwin_demo.recovery import RecoveryResult, grow_labels, recover_fragments
from pengwin_demo.labels import ABBC_BORDER, ABBC_BOUNDARY, ABBC_CORE, anatomy_from_fragments
from pengwin_demo.metrics import fragment_iou, rank_fragments

SPACING = (1.5, 1.0, 1.0)  # (z, y, x) mm


def simple_abbc(fragments: np.ndarray, spacing, core_mm: float = 3.0, border_mm: float = 2.0) -> np.ndarray:
    """ABBC classes from PENGWIN fragment labels by the plain distance rule (test helper)."""
    out = np.zeros(fragments.shape, dtype=np.uint8)
    bones = anatomy_from_fragments(fragments)
    for lab in np.unique(fragments[fragments > 0]):
        frag = fragments == lab
        depth = edt.edt(frag, anisotropy=spacing, black_border=True)
        others = (bones == bones[frag][0]) & ~frag & (fragments > 0)
        near_other = edt.edt(~others, anisotropy=spacing) <= border_mm if others.any() else np.zeros_like(frag)
        out[frag] = ABBC_BOUNDARY
        out[frag & (depth > core_mm)] = ABBC_CORE
        out[frag & near_other] = ABBC_BORDER
    return out


def toy_pelvis(shape=(36, 56, 96)) -> np.ndarray:
    """PENGWIN labels: sacrum in 2 pieces, left hip (high x) in 3, right hip (low x) in 1."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    zc, yc = shape[0] / 2, shape[1] / 2
    labels = np.zeros(shape, dtype=np.uint8)

    def ellipsoid(xc, rz, ry, rx):
        return ((z - zc) * SPACING[0] / rz) ** 2 + ((y - yc) / ry) ** 2 + ((x - xc) / rx) ** 2 <= 1

    sacrum = ellipsoid(48, 20, 18, 12)
    labels[sacrum & (z >= zc)] = 1  # upper part bigger? both halves
    labels[sacrum & (z < zc - 0)] = 2
    right = ellipsoid(18, 20, 20, 12)
    labels[right] = 21
    left = ellipsoid(78, 20, 20, 14)
    labels[left & (x < 74)] = 11
    labels[left & (x >= 74) & (y < yc)] = 12
    labels[left & (x >= 74) & (y >= yc)] = 13
    return rank_fragments(labels)


@pytest.fixture(scope="module")
def toy():
    gt = toy_pelvis()
    return gt, simple_abbc(gt, SPACING), anatomy_from_fragments(gt)


# -- geodesic growth --------------------------------------------------------------------------
def test_grow_labels_fast_matches_reference_and_respects_walls():
    shape = (20, 30, 40)
    passable = np.ones(shape, dtype=bool)
    passable[:, :, 20] = False  # a wall ...
    passable[8:12, 12:18, 20] = True  # ... with a door
    passable[:, :, 32] = False  # a closed wall: x > 32 is its own room without seed
    seeds = np.zeros(shape, dtype=np.uint32)
    seeds[10, 5, 5] = 1
    seeds[10, 25, 10] = 2
    seeds[10, 15, 26] = 3
    ref = grow_labels(seeds, passable, (2.0, 1.0, 1.0), method="reference")
    fast = grow_labels(seeds, passable, (2.0, 1.0, 1.0), method="fast")
    assert np.all(ref[:, :, 33:] == 0) and np.all(fast[:, :, 33:] == 0)
    assert np.all(fast[~passable] == 0)
    # three seeds compete in one component: joint field + watershed, off on the cell walls
    agree = np.mean(ref[passable] == fast[passable])
    assert agree >= 0.98, agree
    # two seeds in a small component: one field per seed, as in the reference
    two = np.where(seeds == 3, 0, seeds).astype(np.uint32)
    ref2 = grow_labels(two, passable, (2.0, 1.0, 1.0), method="reference")
    fast2 = grow_labels(two, passable, (2.0, 1.0, 1.0), method="fast")
    assert np.mean(ref2[passable] == fast2[passable]) >= 0.999
    # seed 3 owns its side of the wall except what comes through the door
    right_room = fast[:, :, 21:32]
    assert np.mean(right_room == 3) > 0.9


def test_grow_labels_uses_physical_spacing():
    # two seeds on a line along z and y: with z voxels 3x longer, the wall moves toward z
    shape = (21, 21, 3)
    seeds = np.zeros(shape, dtype=np.uint32)
    seeds[0, 10, 1] = 1  # 20 voxels along z away from the far corner
    seeds[10, 0, 1] = 2
    passable = np.ones(shape, dtype=bool)
    for method in ("fast", "reference"):
        out = grow_labels(seeds, passable, (3.0, 1.0, 1.0), method=method)
        # voxel (10, 10): 30 mm from seed 1 (10 z-steps of 3 mm), 10 mm from seed 2
        assert out[10, 10, 1] == 2
        # voxel (3, 18): 9 mm from seed 1 (8 y steps + 3 z steps => ~12 mm) vs seed 2: ~19 mm
        assert out[3, 12, 1] == 1


# -- recovery on the toy pelvis ---------------------------------------------------------------
@pytest.mark.parametrize("method", ["fast", "reference"])
def test_oracle_toy_pelvis(toy, method):
    gt, abbc, anatomy = toy
    result = recover_fragments(abbc, anatomy, SPACING, min_fragment_vox=200, method=method)
    assert isinstance(result, RecoveryResult)
    labels, fragments = result
    assert labels.dtype == np.uint8 and labels.shape == gt.shape
    assert sorted(f["label"] for f in fragments) == sorted(np.unique(gt[gt > 0]).tolist())
    assert fragment_iou(labels, gt) >= 0.99
    assert np.array_equal(labels > 0, gt > 0)  # no bone lost, none invented
    for f in fragments:
        assert f["voxels"] == int(np.count_nonzero(labels == f["label"]))
        assert f["bone"] == {1: "sacrum", 2: "left_hip", 3: "right_hip"}[f["bone_id"]]
    assert result.warnings == []


def test_fast_and_reference_agree(toy):
    gt, abbc, anatomy = toy
    fast = recover_fragments(abbc, anatomy, SPACING, min_fragment_vox=200).labels
    ref = recover_fragments(abbc, anatomy, SPACING, min_fragment_vox=200, method="reference").labels
    bone = abbc > 0
    assert np.mean(fast[bone] == ref[bone]) >= 0.995


def test_core_split_in_two_stays_one_fragment(toy):
    gt, abbc, anatomy = toy
    cut = abbc.copy()
    right = gt == 21
    # a boundary slab through the right hip's core: two seeds, no border between them
    slab = right & (np.arange(gt.shape[2])[None, None, :] == 18)
    cut[slab & (cut == ABBC_CORE)] = ABBC_BOUNDARY
    result = recover_fragments(cut, anatomy, SPACING, min_fragment_vox=200)
    right_labels = np.unique(result.labels[right])
    assert right_labels.tolist() == [21]
    assert [f["seeds"] for f in result.fragments if f["label"] == 21] == [2]
    assert fragment_iou(result.labels, gt) >= 0.99


def test_fragment_without_core_is_recovered(toy):
    gt, abbc, anatomy = toy
    no_core = abbc.copy()
    lost = gt == 12
    no_core[lost & (no_core == ABBC_CORE)] = ABBC_BOUNDARY
    result = recover_fragments(no_core, anatomy, SPACING, min_fragment_vox=200)
    best = np.bincount(result.labels[lost], minlength=31).argmax()
    iou = np.sum((result.labels == best) & lost) / np.sum((result.labels == best) | lost)
    assert best in range(11, 21) and iou > 0.8
    assert len(result.fragments) == len(np.unique(gt[gt > 0]))
    assert [f["seeds"] for f in result.fragments if f["label"] == best] == [0]


def test_spurious_core_specks_do_not_make_fragments(toy):
    gt, abbc, anatomy = toy
    rng = np.random.default_rng(3)
    noisy = abbc.copy()
    boundary = np.argwhere(noisy == ABBC_BOUNDARY)
    for z, y, x in boundary[rng.choice(len(boundary), 40, replace=False)]:
        noisy[z, y, x : x + 2] = np.where(noisy[z, y, x : x + 2] > 0, ABBC_CORE, 0)
    result = recover_fragments(noisy, anatomy, SPACING, min_fragment_vox=200)
    assert len(result.fragments) == len(np.unique(gt[gt > 0]))
    assert fragment_iou(result.labels, gt) >= 0.98


# -- edge cases ------------------------------------------------------------------------------
def test_no_core_gives_empty_result_with_warning(toy):
    gt, abbc, anatomy = toy
    flat = np.where(abbc == ABBC_CORE, ABBC_BOUNDARY, abbc).astype(np.uint8)
    result = recover_fragments(flat, anatomy, SPACING)
    assert not result.labels.any() and result.fragments == []
    assert any("no core" in w for w in result.warnings)


def test_empty_abbc_map():
    empty = np.zeros((10, 10, 10), dtype=np.uint8)
    result = recover_fragments(empty, empty, SPACING)
    assert not result.labels.any() and result.fragments == [] and result.warnings


def test_grids_that_differ_are_a_clear_error(toy):
    gt, abbc, anatomy = toy
    with pytest.raises(ValueError, match="same grid") as err:
        recover_fragments(abbc, anatomy[:, :, :-1], SPACING)
    assert not isinstance(err.value, InputError)  # an algorithm: the front ends name the file
    with pytest.raises(ValueError, match="0-3"):
        recover_fragments(abbc, anatomy * 4, SPACING)
    with pytest.raises(TypeError, match="integer"):
        recover_fragments(abbc.astype(np.float32), anatomy, SPACING)
    with pytest.raises(ValueError, match="spacing"):
        recover_fragments(abbc, anatomy, (1.0, 0.0, 1.0))


def test_bone_without_anatomy_takes_nearest_bone(toy):
    gt, abbc, anatomy = toy
    partial = anatomy.copy()
    partial[gt == 13] = 0  # the anatomy model missed one left-hip fragment
    result = recover_fragments(abbc, partial, SPACING, min_fragment_vox=200)
    assert fragment_iou(result.labels, gt) >= 0.99
    assert any("outside the" in w and "anatomy map" in w for w in result.warnings)
    none = recover_fragments(abbc, np.zeros_like(anatomy), SPACING, min_fragment_vox=200)
    assert len(none.fragments) == 6 and {f["bone"] for f in none.fragments} == {"sacrum"}
    assert any("anatomy map is empty" in w for w in none.warnings)


def test_instance_straddling_two_bones_is_split_by_anatomy(toy):
    gt, abbc, anatomy = toy
    # bridge the right hip and sacrum with boundary and delete the sacrum's cores:
    # the right hip's seed grows into the sacrum; anatomy must cut it back
    merged = abbc.copy()
    bridge = np.zeros_like(gt, dtype=bool)
    bridge[14:22, 24:32, 28:38] = True
    merged[bridge & (merged == 0)] = ABBC_BOUNDARY
    merged[(gt <= 10) & (gt > 0) & (merged == ABBC_CORE)] = ABBC_BOUNDARY
    merged[(gt <= 10) & (gt > 0) & (merged == ABBC_BORDER)] = ABBC_BOUNDARY
    anat = anatomy.copy()
    result = recover_fragments(merged, anat, SPACING, min_fragment_vox=200)
    sacrum = (gt > 0) & (gt <= 10)
    assert np.mean((result.labels[sacrum] >= 1) & (result.labels[sacrum] <= 10)) > 0.99
    assert np.mean(result.labels[gt == 21] == 21) > 0.99


def _two_blocks_and_a_neck(wall: bool) -> tuple[np.ndarray, np.ndarray]:
    """Two cored blocks of bone joined by a 2 x 2 voxel neck of boundary (x 26-34).

    ``wall=False``: one fragment with two cores, no border anywhere (a core split in two
    must stay one fragment). ``wall=True``: the blocks are two fragments of the bone
    that touch face to face, with a border wall two voxels a side and a 2 x 2 hole of
    boundary in it (a gap in a predicted wall). Returns (abbc, ground-truth labels)."""
    shape = (20, 20, 62)
    abbc = np.zeros(shape, dtype=np.uint8)
    gt = np.zeros(shape, dtype=np.uint8)
    if wall:
        gt[2:18, 2:18, 2:31] = 1
        gt[2:18, 2:18, 31:60] = 2
        abbc[gt > 0] = ABBC_BOUNDARY
        abbc[2:18, 2:18, 29:33] = ABBC_BORDER
        abbc[9:11, 9:11, 29:33] = ABBC_BOUNDARY  # the hole
    else:
        gt[2:18, 2:18, 2:26] = 1
        gt[2:18, 2:18, 34:60] = 1
        gt[9:11, 9:11, 26:34] = 1  # the neck
        abbc[gt > 0] = ABBC_BOUNDARY
    abbc[5:15, 5:15, 6:22] = ABBC_CORE
    abbc[5:15, 5:15, 40:56] = ABBC_CORE
    return abbc, gt


@pytest.mark.parametrize("wall", [False, True])
def test_two_cores_joined_without_border_are_one_fragment(wall):
    """Two seeds whose regions meet only in open bone (a 4-face neck, far less than the
    cross-section test asks) are one fragment; the same 4 open faces as a hole in a wall
    between two fragments keep them apart."""
    abbc, gt = _two_blocks_and_a_neck(wall)
    anatomy = (gt > 0).astype(np.uint8)
    result = recover_fragments(abbc, anatomy, (1.0, 1.0, 1.0), min_fragment_vox=1000)
    assert len(result.fragments) == (2 if wall else 1)
    assert fragment_iou(result.labels, gt) >= 0.99
    if not wall:
        assert [f["seeds"] for f in result.fragments] == [2]


def test_piece_taken_across_a_joint_joins_its_own_bone():
    """The sacrum's wave crosses a joint (no border between bones) and takes the near part
    of a hip fragment whose core lies far from the joint; anatomy splits that part off
    (more than 1000 voxels), and it rejoins the hip fragment it continues into without
    border instead of becoming a second hip fragment."""
    shape = (22, 22, 70)
    gt = np.zeros(shape, dtype=np.uint8)
    gt[2:20, 2:20, 2:30] = 1  # sacrum
    gt[2:20, 2:20, 30:68] = 21  # right hip, touching the sacrum at x = 30
    abbc = np.where(gt > 0, ABBC_BOUNDARY, 0).astype(np.uint8)
    abbc[5:17, 5:17, 5:27] = ABBC_CORE  # sacrum core up to the joint
    abbc[5:17, 5:17, 58:66] = ABBC_CORE  # hip core far from it
    anatomy = anatomy_from_fragments(gt)
    result = recover_fragments(abbc, anatomy, (1.0, 1.0, 1.0), min_fragment_vox=1000)
    assert sorted(f["label"] for f in result.fragments) == [1, 21]
    assert np.array_equal(result.labels, gt)


def _joint_crossed_with_stray_wall(open_share: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sacrum's wave crosses a joint into a hip whose core lies far from it, and a
    stray wall of fracture zone across the hip (x = 40-41) leaves ``open_share`` of its
    section open. Returns (ground truth, abbc, anatomy)."""
    shape = (22, 22, 70)
    gt = np.zeros(shape, dtype=np.uint8)
    gt[2:20, 2:20, 2:30] = 1  # sacrum
    gt[2:20, 2:20, 30:68] = 21  # right hip, intact
    abbc = np.where(gt > 0, ABBC_BOUNDARY, 0).astype(np.uint8)
    abbc[5:17, 5:17, 5:27] = ABBC_CORE
    abbc[5:17, 5:17, 58:66] = ABBC_CORE
    walled_rows = int(round(18 * (1 - open_share)))
    abbc[2 : 2 + walled_rows, 2:20, 40:42] = ABBC_BORDER
    return gt, abbc, anatomy_from_fragments(gt)


@pytest.mark.parametrize("open_share", [0.3, 0.6, 0.9])
def test_piece_across_a_joint_behind_a_part_wall_rejoins_its_bone(open_share):
    """The piece split off by anatomy (the hip's near part, which the sacrum's wave took)
    meets the hip fragment through a part-walled section. Lying inside the hip's anatomy,
    it rejoins the hip when at least half of that contact is open (the default
    ``anatomy_open_fraction``), and stays a fragment of its own behind a mostly closed
    wall; with ``anatomy_open_fraction=0.8`` it needs 80 % open, as any other piece."""
    gt, abbc, anatomy = _joint_crossed_with_stray_wall(open_share)
    labels = {aof: sorted(f["label"] for f in recover_fragments(
        abbc, anatomy, (1.0, 1.0, 1.0), min_fragment_vox=1000, anatomy_open_fraction=aof).fragments)
        for aof in (0.5, 0.8)}
    assert labels[0.5] == ([1, 21] if open_share >= 0.5 else [1, 21, 22])
    assert labels[0.8] == ([1, 21] if open_share >= 0.8 else [1, 21, 22])
    if open_share >= 0.5:
        result = recover_fragments(abbc, anatomy, (1.0, 1.0, 1.0), min_fragment_vox=1000)
        assert np.array_equal(result.labels, gt)


def test_piece_across_a_joint_mostly_outside_the_anatomy_needs_the_full_share():
    """The same part-walled piece, 60 % open, but the anatomy map leaves most of it
    unlabelled (as soft tissue beside a hip would be): it is not taken for that bone on the
    anatomy's word, so it needs ``merge_open_fraction`` and stays a fragment of its own."""
    gt, abbc, anatomy = _joint_crossed_with_stray_wall(0.6)
    anatomy[:, :, 32:40] = 0
    result = recover_fragments(abbc, anatomy, (1.0, 1.0, 1.0), min_fragment_vox=1000)
    assert sorted(f["label"] for f in result.fragments) == [1, 21, 22]


def test_anatomy_holes_on_the_far_side_of_a_joint_go_to_that_bone():
    """As in the test above, but the anatomy map (a coarse model's) leaves every fourth slab
    of the hip unlabelled: those voxels take the bone of their nearest labelled neighbour
    (the hip), not the majority of the instance that crossed the joint (the sacrum), so the
    hip is not dotted with sacrum islands."""
    shape = (22, 22, 70)
    gt = np.zeros(shape, dtype=np.uint8)
    gt[2:20, 2:20, 2:44] = 1  # sacrum, the larger part of the instance
    gt[2:20, 2:20, 44:68] = 21
    abbc = np.where(gt > 0, ABBC_BOUNDARY, 0).astype(np.uint8)
    abbc[5:17, 5:17, 5:40] = ABBC_CORE  # one core: the wave crosses the joint into the hip
    anatomy = anatomy_from_fragments(gt)
    holes = np.zeros(shape, dtype=bool)
    holes[:, :, 46:68:4] = True
    anatomy[holes & (gt == 21)] = 0
    result = recover_fragments(abbc, anatomy, (1.0, 1.0, 1.0), min_fragment_vox=1000)
    assert sorted(f["label"] for f in result.fragments) == [1, 21]
    assert np.array_equal(result.labels, gt)


def test_more_than_ten_fragments_in_one_bone_are_merged():
    shape = (20, 30, 150)
    gt = np.zeros(shape, dtype=np.uint8)
    gt[4:16, 5:25, 5:145] = 1
    for k in range(12):  # 12 slabs along x, each its own fragment of the sacrum
        gt[:, :, 5 + k * 12 : 5 + (k + 1) * 12 - (1 if k < 11 else 0)] *= k + 1
    gt[:, :, 5 + 140 :] = 0
    widths = [np.count_nonzero(gt == k) for k in range(1, 13)]
    assert min(widths) > 0
    abbc = simple_abbc(gt, (1.0, 1.0, 1.0), core_mm=2.0, border_mm=1.5)
    anatomy = (gt > 0).astype(np.uint8)
    result = recover_fragments(abbc, anatomy, (1.0, 1.0, 1.0), min_fragment_vox=100)
    assert [f["label"] for f in result.fragments] == list(range(1, 11))
    assert np.array_equal(result.labels > 0, gt > 0)
    assert any("more than 10" in w for w in result.warnings)
    sizes = [f["voxels"] for f in result.fragments]
    assert sizes == sorted(sizes, reverse=True)


def test_small_fragments_merge_into_neighbour(toy):
    gt, abbc, anatomy = toy
    result = recover_fragments(abbc, anatomy, SPACING, min_fragment_vox=np.count_nonzero(gt == 13) + 1)
    # fragment 13 (the smallest left-hip piece) joins a touching left-hip fragment
    owners = np.bincount(result.labels[gt == 13], minlength=31)
    assert 11 <= owners.argmax() <= 20 and owners.max() >= 0.99 * owners.sum()
    assert owners.argmax() != 13 and not np.any(result.labels == 13)
    assert len([f for f in result.fragments if f["bone"] == "left_hip"]) == 2


# -- command line ----------------------------------------------------------------------------
def test_cli_recover_writes_labels_in_input_geometry(toy, tmp_path):
    from pengwin_demo.__main__ import main
    from pengwin_demo.io import read_volume, write_volume
    from pengwin_demo.volume import Volume

    gt, abbc, anatomy = toy
    direction = np.diag([-1.0, -1.0, 1.0])
    grid = dict(spacing_zyx_mm=SPACING, origin_lps_mm=(10.0, -20.0, 30.0), direction=direction)
    write_volume(Volume(abbc, **grid), tmp_path / "abbc.nii.gz")
    write_volume(Volume(anatomy, **grid), tmp_path / "anatomy.mha")
    out = tmp_path / "out" / "fragments.nii.gz"
    rc = main(["recover", "--abbc", str(tmp_path / "abbc.nii.gz"), "--anatomy",
               str(tmp_path / "anatomy.mha"), "-o", str(out), "--min-fragment-vox", "200",
               "--table", str(tmp_path / "table.json")])
    assert rc == 0
    vol = read_volume(out, kind="label")
    assert vol.same_grid(Volume(abbc, **grid))
    assert fragment_iou(vol.array, gt) >= 0.99
    import json
    table = json.loads((tmp_path / "table.json").read_text())
    assert len(table["fragments"]) == 6

    # an anatomy map on another grid is refused with a message naming both files
    write_volume(Volume(anatomy, SPACING, (0.0, 0.0, 0.0)), tmp_path / "shifted.nii.gz")
    rc = main(["recover", "--abbc", str(tmp_path / "abbc.nii.gz"), "--anatomy",
               str(tmp_path / "shifted.nii.gz"), "-o", str(tmp_path / "x.nii.gz")])
    assert rc == 2 and not (tmp_path / "x.nii.gz").exists()


def test_cli_recover_fragment_labels_given_as_abbc_exit_2_with_one_line(toy, tmp_path, capsys):
    # recover_fragments would raise ValueError (a traceback); the command checks the files
    from pengwin_demo.__main__ import main
    from pengwin_demo.io import write_volume
    from pengwin_demo.volume import Volume

    gt, _, anatomy = toy
    write_volume(Volume(gt, SPACING), tmp_path / "fragments.nii.gz")
    write_volume(Volume(anatomy, SPACING), tmp_path / "anatomy.nii.gz")
    rc = main(["recover", "--abbc", str(tmp_path / "fragments.nii.gz"), "--anatomy",
               str(tmp_path / "anatomy.nii.gz"), "-o", str(tmp_path / "x.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and not (tmp_path / "x.nii.gz").exists()
    assert err.startswith("error: fragments.nii.gz: values up to ") and err.count("\n") == 1
