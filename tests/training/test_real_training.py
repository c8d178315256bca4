"""train-abbc: real nnU-Net training on masked cases, held-out patients kept out, initial weights."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from _helpers.masked import write_masked_case

from pengwin_demo.errors import InputError
from pengwin_demo.models import bundled_model_path
from pengwin_demo.training import REAL_ABBC_CONFIG, train_real_abbc, write_training_cases


def test_held_out_names_must_exist(tmp_path):
    write_masked_case(tmp_path / "src" / "p1", 1)
    with pytest.raises(InputError, match=r"held-out case\(s\) \['p9'\]"):
        write_training_cases([tmp_path / "src"], tmp_path / "out", holdout=("p9",))
    with pytest.raises(InputError, match="no training case left"):
        write_training_cases([tmp_path / "src"], tmp_path / "out", holdout=("p1",))


@pytest.mark.slow
def test_train_abbc_keeps_held_out_patients_out_and_starts_from_the_given_weights(tmp_path):
    for i, name in enumerate(("p1", "p2", "p3")):
        write_masked_case(tmp_path / "src" / name, i)
    cfg = replace(REAL_ABBC_CONFIG, iterations_per_epoch=2, val_iterations_per_epoch=1)
    start = bundled_model_path("abbc")
    out = train_real_abbc(tmp_path / "work", tmp_path / "model", [tmp_path / "src"], holdout=("p2",),
                          init_weights=start, max_seconds=3.0, config=cfg, threads=1)

    raw = tmp_path / "work" / "nnUNet_raw" / "Dataset511_PengwinABBC" / "imagesTr"
    assert sorted(p.name for p in raw.iterdir()) == ["p1_0000.nii.gz", "p3_0000.nii.gz"]
    info = json.loads((out / "training.json").read_text())
    assert info["training_cases"] == ["p1", "p3"] and info["holdout_cases"] == ["p2"]
    assert "CC BY-NC-SA 4.0" in (out / "MODEL_CARD.md").read_text()
    log = (tmp_path / "work" / "logs" / "train_abbc.log").read_text()
    assert f"network weights initialised from {(start / 'fold_all' / 'checkpoint_final.pth').resolve()}" in log

    def weights(folder: Path) -> dict:
        return torch.load(folder / "fold_all" / "checkpoint_final.pth", map_location="cpu",
                          weights_only=False)["network_weights"]

    before, after = weights(start), weights(out)
    assert before.keys() == after.keys()
    # a couple of SGD steps move the bundled weights a little; a random start would be far off
    key = next(k for k in before if k.endswith("conv.weight"))
    b, a = before[key].float().ravel(), after[key].float().ravel()
    assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.95
