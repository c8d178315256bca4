"""Bone-masked data sets (per-bone and single-bone layouts) -> PENGWIN-layout cases."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _helpers.paths import REPO
from pengwin_demo.errors import InputError
from pengwin_demo.io import read_volume, write_volume
from pengwin_demo.masked_cases import (find_masked_cases, is_masked_layout, masked_to_pengwin,
                                       ranked_bone_labels, read_masked_case)
from pengwin_demo.volume import Volume


def _grid(shape=(6, 8, 10), spacing=(1.0, 0.8, 0.8)) -> Volume:
    return Volume(np.zeros(shape, np.int16), spacing, (0.0, 0.0, 0.0))


def _write_case(folder: Path, grid: Volume, boxes: dict[str, list[tuple]]) -> None:
    """A synthetic per-bone masked case: each bone's fragments are boxes of 500 + 100*id HU."""
    for prefix, frag_boxes in boxes.items():
        frags = np.zeros(grid.shape, np.uint8)
        for k, box in enumerate(frag_boxes, start=1):
            frags[box] = k
        image = np.where(frags > 0, 500 + 100 * frags.astype(np.int16), 0).astype(np.int16)
        write_volume(grid.with_array(image), folder / f"{prefix}_image.nii.gz")
        write_volume(grid.with_array(frags), folder / f"{prefix}_fragments.nii.gz")


S = np.s_
BOXES = {"SA": [S[0:2, 0:2, 0:2]], "LI": [S[3:4, 0:2, 0:2], S[3:6, 4:8, 4:10]], "RI": [S[0:2, 5:8, 0:3]]}


def test_ranked_bone_labels_put_the_largest_fragment_first():
    ids = np.array([0, 5, 5, 2, 2, 2, 7], np.uint8)
    assert ranked_bone_labels(ids, 2).tolist() == [0, 12, 12, 11, 11, 11, 13]
    assert ranked_bone_labels(ids, 1).max() == 3
    with pytest.raises(ValueError, match="11 fragments"):
        ranked_bone_labels(np.arange(12), 1)


def test_per_bone_case_becomes_one_pelvis_with_pengwin_labels(tmp_path):
    _write_case(tmp_path / "case_a", _grid(), BOXES)
    assert is_masked_layout(tmp_path) and is_masked_layout(tmp_path / "case_a")
    (case,) = find_masked_cases(tmp_path)
    ct, labels = read_masked_case(case)
    # left hip: the second (larger, 3*4*6 voxels) fragment comes first as 11
    assert np.count_nonzero(labels.array == 11) == 72 and np.count_nonzero(labels.array == 12) == 4
    assert sorted(np.unique(labels.array).tolist()) == [0, 1, 11, 12, 21]
    assert ct.array[labels.array == 11].tolist() == [700] * 72  # source fragment 2: 500 + 200
    assert not ct.array[labels.array == 0].any()  # the sum of masked images is 0 off the bones


def test_grids_that_disagree_are_refused_naming_the_file(tmp_path):
    _write_case(tmp_path / "c", _grid(), BOXES)
    image = read_volume(tmp_path / "c" / "RI_image.nii.gz")
    write_volume(Volume(image.array, (1.0, 0.9, 0.9), image.origin_lps_mm), tmp_path / "c" / "RI_image.nii.gz")
    with pytest.raises(InputError, match="RI_fragments.nii.gz: grid .* does not match RI_image"):
        read_masked_case(find_masked_cases(tmp_path)[0])


def test_overlapping_bone_masks_are_refused(tmp_path):
    overlapping = dict(BOXES, RI=[S[0:1, 0:1, 0:1]])  # inside the sacrum's box
    _write_case(tmp_path / "c", _grid(), overlapping)
    with pytest.raises(InputError, match="RI_fragments.nii.gz overlaps another bone's fragments in 1 voxels"):
        read_masked_case(find_masked_cases(tmp_path)[0])


def test_a_missing_bone_file_is_named(tmp_path):
    _write_case(tmp_path / "c", _grid(), BOXES)
    (tmp_path / "c" / "LI_fragments.nii.gz").unlink()
    with pytest.raises(InputError, match="LI_fragments is missing"):
        find_masked_cases(tmp_path)


def test_single_bone_layout_needs_the_bone(tmp_path):
    src = tmp_path / "bone"
    grid = _grid()
    frags = np.zeros(grid.shape, np.uint8)
    frags[0:2, 0:2, 0:2], frags[3:6, 3:8, 3:8] = 4, 9
    write_volume(grid.with_array(np.where(frags > 0, 600, 0).astype(np.int16)), src / "image.nii.gz")
    write_volume(grid.with_array(frags), src / "fragments.nii.gz")
    assert masked_to_pengwin(src, tmp_path / "out", bone="right_hip") == ["bone"]
    labels = read_volume(tmp_path / "out" / "labels" / "bone.nii.gz", "label")
    assert sorted(np.unique(labels.array).tolist()) == [0, 21, 22]
    assert np.count_nonzero(labels.array == 21) == 75
    with pytest.raises(InputError, match="bone must be one of"):
        masked_to_pengwin(src, tmp_path / "out2", bone="femur")


def test_real_case_sums_the_bones_and_keeps_every_expert_voxel(real_pelves_dir, real_pelves):
    case = next(c for c in find_masked_cases(real_pelves_dir) if c.name == "case_001")
    ct, labels = next((ct, labels) for name, ct, labels in real_pelves if name == "case_001")
    # case_001: intact sacrum and right hip; left hip in two pieces with source ids 1 and 3
    counts = {int(v): int(n) for v, n in zip(*np.unique(labels.array, return_counts=True))}
    assert counts == {0: counts[0], 1: 288871, 11: 298565, 12: 108672, 21: 424031}
    left = read_volume(case.images[2], "ct")
    assert np.array_equal(ct.array[labels.array == 12], left.array[labels.array == 12])
    assert ct.same_grid(left)


@pytest.mark.slow
def test_prepare_dataset_cli_reads_the_real_per_bone_layout(tmp_path, real_pelves_dir):
    src = tmp_path / "src"
    src.mkdir()
    (src / "case_003").symlink_to(real_pelves_dir / "case_003")
    out = subprocess.run(
        [sys.executable, "-m", "pengwin_demo", "prepare-dataset", str(src), str(tmp_path / "raw"),
         "--pengwin-out", str(tmp_path / "pengwin"), "--workers", "1"],
        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    labels = read_volume(tmp_path / "pengwin" / "labels" / "case_003.nii.gz", "label")
    # case_003: sacrum and left hip in two pieces each, right hip intact
    assert sorted(np.unique(labels.array).tolist()) == [0, 1, 2, 11, 12, 21]
    abbc = read_volume(tmp_path / "raw" / "Dataset501_PengwinABBC" / "labelsTr" / "case_003.nii.gz", "label")
    assert set(np.unique(abbc.array).tolist()) == {0, 1, 2, 3}
    assert np.count_nonzero(abbc.array) == np.count_nonzero(labels.array)


def test_prepare_dataset_cli_asks_where_masked_cases_go(tmp_path):
    _write_case(tmp_path / "src" / "c", _grid(), BOXES)
    out = subprocess.run([sys.executable, "-m", "pengwin_demo", "prepare-dataset", str(tmp_path / "src"),
                          str(tmp_path / "raw")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2 and "--pengwin-out" in out.stderr and "Traceback" not in out.stderr


def test_real_single_sacrum_reads_as_sacrum_labels(tmp_path, real_sacrum_dir):
    src = tmp_path / "sacrum"
    src.mkdir()
    for name in ("image.nii.gz", "fragments.nii.gz"):
        (src / name).symlink_to(real_sacrum_dir / name)
    masked_to_pengwin(src, tmp_path / "out", bone="SA")
    labels = read_volume(tmp_path / "out" / "labels" / "sacrum.nii.gz", "label")
    values, counts = np.unique(labels.array, return_counts=True)
    assert values[0] == 0 and values[1:].tolist() == list(range(1, len(values)))
    assert counts[1] == 275265 and np.all(np.diff(counts[1:]) <= 0)  # largest first
