"""train-anatomy: composites of real masked pelves, held-out patients kept out, real nnU-Net training."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from _helpers.masked import write_masked_case

from pengwin_demo.training import CompositeOptions
from pengwin_demo.training import (REAL_ANATOMY_CONFIG, AnatomyView, train_real_anatomy,
                                   write_composite_cases)
from pengwin_demo.errors import InputError
from pengwin_demo.io import read_volume
from pengwin_demo.models import bundled_model_path


SMALL_BODIES = CompositeOptions(inplane_mm=(3.0, 3.0), slice_mm=(3.0, 3.0), below_mm=(20.0, 40.0),
                                above_mm=(20.0, 40.0), fov_mm=(200.0, 220.0))
"""Bodies a few times smaller than the default ones: the same code, test-sized."""


def test_composite_cases_keep_held_out_patients_out(tmp_path):
    for i, name in enumerate(("p1", "p2")):
        write_masked_case(tmp_path / "src" / name, i)
    used = write_composite_cases([tmp_path / "src"], tmp_path / "out", holdout=("p2",), per_case=2,
                                 options=SMALL_BODIES)
    assert used == ["p1"]
    names = sorted(p.name for p in (tmp_path / "out" / "images").iterdir())
    assert [n for n in names if not n.startswith("p1_body")] == []
    assert {"p1_body00.nii.gz", "p1_body01.nii.gz"} <= set(names)
    # body 1 is mirrored: the left hip (11-20) lies at larger LPS x than the right hip
    for name in ("p1_body00.nii.gz", "p1_body01.nii.gz"):
        lab = read_volume(tmp_path / "out" / "labels" / name, "label")
        x = {b: lab.index_to_world(np.argwhere((lab.array - 1) // 10 == b - 1).mean(0, keepdims=True))[0, 0]
             for b in (2, 3)}
        assert x[2] > x[3]
    with pytest.raises(InputError, match=r"held-out case\(s\) \['p9'\]"):
        write_composite_cases([tmp_path / "src"], tmp_path / "x", holdout=("p9",))


def test_pelvis_box_view_cuts_every_case_to_its_bones(tmp_path):
    write_masked_case(tmp_path / "src" / "p1", 0)
    kwargs = dict(per_case=2, phantoms=1, seed=5, options=SMALL_BODIES)
    write_composite_cases([tmp_path / "src"], tmp_path / "whole", **kwargs)
    write_composite_cases([tmp_path / "src"], tmp_path / "box", view=AnatomyView.PELVIS_BOX, **kwargs)
    whole = sorted(p.name for p in (tmp_path / "whole" / "images").iterdir())
    box = sorted(p.name for p in (tmp_path / "box" / "images").iterdir())
    assert box == [n for n in whole if "_above" not in n]
    assert box == ["p1_body00.nii.gz", "p1_body01.nii.gz", "phantom_6_000.nii.gz"]
    for name in box:  # the same bodies and phantoms, cut around all of their bone
        w_lab, b_lab = (read_volume(tmp_path / v / "labels" / name, "label") for v in ("whole", "box"))
        assert np.prod(b_lab.shape) < 0.8 * np.prod(w_lab.shape), name
        for label in np.unique(w_lab.array[w_lab.array > 0]):
            assert np.count_nonzero(b_lab.array == label) == np.count_nonzero(w_lab.array == label), name


def test_resumed_work_folder_of_another_view_is_refused(tmp_path):
    from pengwin_demo.training.real_anatomy import _check_resumed

    record = tmp_path / "cases.json"
    record.write_text(json.dumps({"training": ["p1"], "seed": 0, "view": "pelvis-box"}))
    _check_resumed(record, 0, CompositeOptions(), AnatomyView.PELVIS_BOX)
    with pytest.raises(InputError, match="pelvis-box view, not whole-body"):
        _check_resumed(record, 0, CompositeOptions(), AnatomyView.WHOLE_BODY)


def test_train_anatomy_refuses_a_share_outside_0_1(tmp_path, capsys):
    from pengwin_demo.__main__ import main

    write_masked_case(tmp_path / "src" / "p1", 0)
    code = main(["train-anatomy", str(tmp_path / "src"), "--work-dir", str(tmp_path / "work"),
                 "--out", str(tmp_path / "model"), "--max-minutes", "1", "--fatty-marrow", "1.5"])
    assert code == 2 and "--fatty-marrow must lie between 0 and 1" in capsys.readouterr().err
    assert not (tmp_path / "work").exists() and not (tmp_path / "model").exists()


def test_resumed_work_folder_with_other_bodies_is_said(tmp_path, caplog):
    from pengwin_demo.training.real_anatomy import _warn_if_other_bodies

    record = tmp_path / "cases.json"
    record.write_text(json.dumps({"training": ["p1"], "seed": 3, "fatty_marrow_probability": 0.0}))
    with caplog.at_level("WARNING"):
        _warn_if_other_bodies(record, 3, CompositeOptions(fatty_marrow_probability=0.0))
        assert not caplog.records
        _warn_if_other_bodies(record, 4, CompositeOptions(fatty_marrow_probability=0.0))
    assert "holds composites of seed 3" in caplog.text and "seed 4" in caplog.text


@pytest.mark.slow
def test_train_anatomy_starts_from_the_given_weights(tmp_path):
    for i, name in enumerate(("p1", "p2", "p3")):
        write_masked_case(tmp_path / "src" / name, i)
    cfg = replace(REAL_ANATOMY_CONFIG, iterations_per_epoch=2, val_iterations_per_epoch=1)
    start = bundled_model_path("anatomy")
    out = train_real_anatomy(tmp_path / "work", tmp_path / "model", [tmp_path / "src"], holdout=("p3",),
                             per_case=2, phantoms=1, seed=3, options=CompositeOptions(fatty_marrow_probability=0.0),
                             init_weights=start, max_seconds=3.0, config=cfg, threads=1)
    raw = tmp_path / "work" / "nnUNet_raw" / "Dataset522_PengwinAnatomy" / "imagesTr"
    names = sorted(p.name for p in raw.iterdir())
    assert not [n for n in names if n.startswith("p3")] and any(n.startswith("phantom_") for n in names)
    info = json.loads((out / "training.json").read_text())
    assert info["kind"] == "anatomy" and info["training_cases"] == ["p1", "p2"] and info["holdout_cases"] == ["p3"]
    assert info["seed"] == 3 and info["fatty_marrow_probability"] == 0.0
    card = (out / "MODEL_CARD.md").read_text()
    assert "CC BY-NC-SA 4.0" in card and "--seed 3 --fatty-marrow 0.0" in card
    log = (tmp_path / "work" / "logs" / "train_anatomy.log").read_text()
    assert f"network weights initialised from {(start / 'fold_all' / 'checkpoint_final.pth').resolve()}" in log
    assert (out / "fold_all" / "checkpoint_final.pth").is_file()
