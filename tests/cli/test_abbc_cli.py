"""``python -m pengwin_demo abbc``: file -> file on the same grid, folder -> folder."""

from __future__ import annotations

import numpy as np
import pytest

from pengwin_demo.__main__ import main
from pengwin_demo.recovery import abbc_targets
from pengwin_demo.io import read_volume, write_volume
from pengwin_demo.volume import Volume

SPACING = (1.5, 0.8, 0.9)
ORIGIN = (-120.0, 35.5, 410.0)
DIRECTION = np.array([[-1.0, 0, 0], [0, -1.0, 0], [0, 0, 1.0]])


def label_volume(shift: int = 0) -> Volume:
    labels = np.zeros((20, 30, 40), dtype=np.uint8)
    labels[3:17, 5:25, 4 + shift : 20 + shift] = 11
    labels[3:17, 5:25, 20 + shift : 34] = 12
    labels[8:12, 12:16, 34:37] = 21
    return Volume(labels, SPACING, ORIGIN, DIRECTION)


def test_file_to_file_keeps_the_grid(tmp_path, capsys):
    src, dst = tmp_path / "case_000.nii.gz", tmp_path / "abbc.mha"
    vol = label_volume()
    write_volume(vol, src)
    assert main(["abbc", str(src), str(dst)]) == 0
    out = read_volume(dst, kind="label")
    assert out.same_grid(vol)
    assert np.array_equal(out.array, abbc_targets(vol.array, SPACING))
    assert "border" in capsys.readouterr().out


def test_options_reach_the_algorithm(tmp_path):
    src, dst = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    vol = label_volume()
    write_volume(vol, src)
    args = ["abbc", str(src), str(dst), "--border-mm", "4", "--border-radius-fraction", "0"]
    assert main(args) == 0
    expected = abbc_targets(vol.array, SPACING, border_mm=4.0, border_radius_fraction=None)
    assert np.array_equal(read_volume(dst, kind="label").array, expected)
    assert not np.array_equal(expected, abbc_targets(vol.array, SPACING))


def test_folder_to_folder(tmp_path):
    src = tmp_path / "labels"
    src.mkdir()
    vols = {f"case_{k:03d}.nii.gz": label_volume(shift=k) for k in range(3)}
    for name, vol in vols.items():
        write_volume(vol, src / name)
    (src / "notes.txt").write_text("not a volume")
    dst = tmp_path / "abbc"
    assert main(["abbc", str(src), str(dst), "-j", "2"]) == 0
    assert sorted(p.name for p in dst.iterdir()) == sorted(vols)
    for name, vol in vols.items():
        out = read_volume(dst / name, kind="label")
        assert out.same_grid(vol)
        assert np.array_equal(out.array, abbc_targets(vol.array, SPACING))


def test_folder_with_a_bad_file_reports_it_and_converts_the_rest(tmp_path, capsys):
    src = tmp_path / "labels"
    src.mkdir()
    write_volume(label_volume(), src / "good.nii.gz")
    bad = label_volume()
    write_volume(bad.with_array(np.full(bad.shape, 40, dtype=np.uint8)), src / "bad.nii.gz")
    assert main(["abbc", str(src), str(tmp_path / "out"), "-j", "1"]) == 1
    captured = capsys.readouterr()
    assert "bad.nii.gz" in captured.out + captured.err and "0-30" in captured.out + captured.err
    assert (tmp_path / "out" / "good.nii.gz").exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.nii.gz", "not found"),
        (lambda p: p / "empty_dir", "no .nii"),
    ],
)
def test_bad_inputs_exit_2_with_a_message(tmp_path, capsys, make, message):
    src = make(tmp_path)
    if src.name == "empty_dir":
        src.mkdir()
    assert main(["abbc", str(src), str(tmp_path / "out.nii.gz")]) == 2
    assert message in capsys.readouterr().err


def test_file_beyond_pengwin_labels_exits_2_with_one_line_naming_it(tmp_path, capsys):
    src = tmp_path / "case_bad.nii.gz"
    vol = label_volume()
    write_volume(vol.with_array(np.full(vol.shape, 40, dtype=np.uint8)), src)
    assert main(["abbc", str(src), str(tmp_path / "out.nii.gz")]) == 2
    assert capsys.readouterr().err == (
        "error: case_bad.nii.gz: label values up to 40; PENGWIN fragment labels are 0-30. "
        "Convert the map to PENGWIN labels first.\n"
    )
    assert not (tmp_path / "out.nii.gz").exists()


def test_bad_option_exits_2_with_one_line(tmp_path, capsys):
    src = tmp_path / "a.nii.gz"
    write_volume(label_volume(), src)
    assert main(["abbc", str(src), str(tmp_path / "out.nii.gz"), "--core-mm", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--core-mm > 0" in err and err.count("\n") == 1


def test_output_needs_a_volume_suffix(tmp_path, capsys):
    src = tmp_path / "a.nii.gz"
    write_volume(label_volume(), src)
    assert main(["abbc", str(src), str(tmp_path / "out.txt")]) == 2
    assert ".nii.gz" in capsys.readouterr().err
