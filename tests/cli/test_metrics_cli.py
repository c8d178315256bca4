"""``python -m pengwin_demo evaluate``: case pairing, table, JSON/CSV, errors; real data."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from pengwin_demo.__main__ import main
from pengwin_demo.errors import InputError
from pengwin_demo.io import read_volume, write_volume
from pengwin_demo.metrics import METRIC_KEYS, evaluate_case, evaluate_folders, pair_cases
from pengwin_demo.volume import Volume, bounding_box

SPACING = (2.0, 0.8, 0.8)


def _gt() -> np.ndarray:
    gt = np.zeros((24, 32, 48), np.uint8)
    gt[4:20, 4:28, 4:16] = 21
    gt[4:20, 4:28, 18:30] = 1
    gt[4:20, 4:28, 32:44] = 11
    return gt


def _write(folder: Path, name: str, array: np.ndarray, spacing=SPACING, origin=(0.0, 0.0, 0.0)):
    return write_volume(Volume(array, spacing, origin), folder / name)


@pytest.fixture
def folders(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt = _gt()
    split = gt.copy()
    split[12:20, 4:28, 18:30] = 2
    _write(gt_dir, "case_a.nii.gz", gt)
    _write(gt_dir, "case_b.mha", gt)
    _write(pred_dir, "case_a.mha", gt)  # perfect, other format
    _write(pred_dir, "case_b.nii.gz", split)  # sacrum split in two
    (pred_dir / "notes.txt").write_text("not a volume, ignored")
    return pred_dir, gt_dir


def test_cli_writes_table_json_and_csv(folders, tmp_path, capsys):
    pred_dir, gt_dir = folders
    out_json, out_csv = tmp_path / "out" / "m.json", tmp_path / "out" / "m.csv"
    rc = main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir),
               "--json", str(out_json), "--csv", str(out_csv)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "case_a" in text and "case_b" in text and "median" in text and "official" in text

    report = json.loads(out_json.read_text())
    assert set(report["cases"]) == {"case_a", "case_b"}
    a, b = report["cases"]["case_a"], report["cases"]["case_b"]
    assert a["iou_f"] == 1.0 and a["hd95_f"] == 0.0
    assert b["iou_f"] == pytest.approx((0.5 + 1 + 1) / 3)  # split: IoU 0.5 for the sacrum
    assert b["dice_f"] == pytest.approx((2 / 3 + 1 + 1) / 3)
    for key in METRIC_KEYS:
        assert set(report["summary"][key]) == {"mean", "median", "std"}
    iou = report["summary"]["iou_f"]
    assert iou["mean"] == pytest.approx((1 + b["iou_f"]) / 2)
    assert iou["median"] == pytest.approx(iou["mean"])
    assert iou["std"] == pytest.approx((1 - b["iou_f"]) / 2)
    assert report["settings"] == {"mode": "official", "seed": 2024, "sample_size": 10000}

    rows = list(csv.DictReader(out_csv.open()))
    assert [r["case"] for r in rows] == ["case_a", "case_b", "mean", "median", "std"]
    assert float(rows[1]["iou_f"]) == pytest.approx(b["iou_f"])
    assert rows[1]["n_pred_fragments"] == "4"


def test_cli_strict_mode_penalises_the_extra_fragment(folders, tmp_path):
    pred_dir, gt_dir = folders
    out_json = tmp_path / "s.json"
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir), "--strict",
                 "--json", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    assert report["settings"]["mode"] == "strict"
    assert report["cases"]["case_b"]["iou_f"] == pytest.approx((0.5 + 1 + 1 + 0) / 4)


def test_json_writes_infinite_distances_as_null_and_csv_as_inf(tmp_path):
    gt = np.zeros((10, 26, 26), np.uint8)
    gt[4:6, 3:23, 3:23] = 1  # sacrum only: the hips are absent, HD95_a is infinite
    _write(tmp_path, "gt.nii.gz", gt)
    _write(tmp_path, "pred.nii.gz", gt)
    out_json, out_csv = tmp_path / "m.json", tmp_path / "m.csv"
    assert main(["evaluate", "--pred", str(tmp_path / "pred.nii.gz"), "--gt",
                 str(tmp_path / "gt.nii.gz"), "--json", str(out_json), "--csv", str(out_csv)]) == 0
    case = json.loads(out_json.read_text())["cases"]["gt"]  # one pair of files: named after GT
    assert case["hd95_a"] is None and case["iou_a"] == pytest.approx(1 / 3)
    assert any("absent from the ground truth" in n for n in case["details"]["notes"])
    rows = list(csv.DictReader(out_csv.open()))
    assert rows[0]["hd95_a"] == "inf"


def test_unmatched_cases_are_listed(folders, capsys):
    pred_dir, gt_dir = folders
    (pred_dir / "case_b.nii.gz").rename(pred_dir / "case_c.nii.gz")
    with pytest.raises(InputError) as err:
        pair_cases(pred_dir, gt_dir)
    assert "case_c" in str(err.value) and "case_b" in str(err.value)
    assert main(["evaluate", "--pred", str(pred_dir), "--gt", str(gt_dir)]) == 2
    assert "no partner" in capsys.readouterr().err


def test_file_against_folder_and_missing_paths_are_refused(folders, tmp_path):
    pred_dir, gt_dir = folders
    with pytest.raises(InputError, match="two files or two folders"):
        pair_cases(pred_dir / "case_a.mha", gt_dir)
    with pytest.raises(InputError, match="not found"):
        pair_cases(tmp_path / "nowhere", gt_dir)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no label files"):
        pair_cases(empty, gt_dir)
    _write(gt_dir, "case_a.nrrd", _gt())
    with pytest.raises(InputError, match="two files"):
        pair_cases(pred_dir, gt_dir)


def test_prediction_on_another_grid_is_refused(tmp_path):
    gt = _gt()
    _write(tmp_path / "g", "c.nii.gz", gt)
    _write(tmp_path / "p", "c.nii.gz", gt, origin=(5.0, 0.0, 0.0))
    with pytest.raises(InputError, match="grid"):
        evaluate_folders(tmp_path / "p", tmp_path / "g")
    _write(tmp_path / "p", "c.nii.gz", gt[:, :, :40])
    with pytest.raises(InputError, match="shape"):
        evaluate_folders(tmp_path / "p", tmp_path / "g")


def test_cli_prediction_of_another_shape_exits_2_with_one_line_naming_it(tmp_path, capsys):
    # evaluate_case would raise ValueError (a traceback); the command checks the files first
    _write(tmp_path / "g", "c.nii.gz", _gt())
    _write(tmp_path / "p", "c.nii.gz", _gt()[:, :, :40])
    assert main(["evaluate", "--pred", str(tmp_path / "p" / "c.nii.gz"),
                 "--gt", str(tmp_path / "g" / "c.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: c.nii.gz: shape (24, 32, 40)") and err.count("\n") == 1


# ------------------------------------------------------------------ real fracture data
@pytest.fixture(scope="module")
def real_sacrum(real_sacrum_dir):
    return read_volume(real_sacrum_dir / "fragments.nii.gz", kind="label")


def test_real_sacrum_agrees_with_the_official_template(real_sacrum):
    """Prediction = ground truth shifted one voxel along x, fragments 1 and 2 merged.

    Expected values were computed by running the organisers' evaluation_CT_core.py
    (YzzLiu/PENGWIN-example-algorithm, commit febe04f) on this exact pair, once, outside
    the test suite (it takes 80 s); IoU must agree exactly, distances within 0.1 mm (the
    surfaces are subsampled). The hips are absent, so the anatomical distances are inf.
    """
    gt = real_sacrum.array
    pred = np.roll(gt, 1, axis=2)
    pred[pred == 2] = 1
    r = evaluate_case(pred, gt, real_sacrum.spacing_zyx_mm)
    assert r["iou_f"] == pytest.approx(0.6788399330245233, abs=1e-12)
    assert r["hd95_f"] == pytest.approx(8.460816, abs=1e-3)
    assert r["assd_f"] == pytest.approx(1.699866, abs=1e-3)
    assert r["iou_a"] == pytest.approx(0.3042400811532115, abs=1e-12)
    assert math.isinf(r["hd95_a"]) and math.isinf(r["assd_a"])
    assert r["n_gt_fragments"] == 10 and r["n_pred_fragments"] == 9
    # GT 2 is swallowed by predicted 1: both GT 1 and GT 2 match predicted 1
    pairs = {f["gt"]: f["pred"] for f in r["details"]["fragments"]}
    assert pairs[1] == pairs[2] == 1


def test_real_sacrum_perfect_and_strict_on_a_crop(real_sacrum):
    box = bounding_box(real_sacrum.array > 0, margin_vox=2)
    gt = np.ascontiguousarray(real_sacrum.array[box])
    perfect = evaluate_case(gt, gt, real_sacrum.spacing_zyx_mm)
    assert perfect["iou_f"] == 1.0 and perfect["hd95_f"] == 0.0
    assert perfect["details"]["bones"]["sacrum"]["iou"] == 1.0
    pred = gt.copy()
    pred[pred == 2] = 1  # merge the two largest fragments
    strict = evaluate_case(pred, gt, real_sacrum.spacing_zyx_mm, strict=True)
    n1, n2 = int((gt == 1).sum()), int((gt == 2).sum())
    # one of GT 1 / GT 2 keeps the merged fragment, the other is a miss (IoU 0)
    best = max(n1, n2) / (n1 + n2)
    assert strict["iou_f"] == pytest.approx((best + 0 + 8) / 10, abs=1e-12)
