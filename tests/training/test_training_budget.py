"""Real nnU-Net training on CPU with a time budget, then continued from its final checkpoint."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from pengwin_demo.phantom import write_phantom_dataset
from pengwin_demo.errors import ModelError
from pengwin_demo.training import (
    DemoConfig,
    NnunetDirs,
    init_from_run,
    plan_and_preprocess,
    prepare_datasets,
    preprocess_only,
    preprocessed_ready,
    train,
)

DATASET_ID = 621
TINY = DemoConfig((6.0, 6.0, 6.0), (32, 32, 32), (4, 8), batch_size=2, epochs=1000,
                  iterations_per_epoch=2, val_iterations_per_epoch=1, max_seconds=6.0)


def _epochs_and_rates(log: Path) -> tuple[list[int], list[float]]:
    text = log.read_text(errors="replace")
    epochs = [int(e) for e in re.findall(r"Epoch (\d+)\n", text)]
    rates = [float(r) for r in re.findall(r"Current learning rate: ([\d.e-]+)", text)]
    return epochs, rates


@pytest.mark.slow
def test_time_budget_then_extend(tmp_path):
    phantoms = tmp_path / "phantoms"
    write_phantom_dataset(phantoms, 2, seed=41, size="small")
    dirs = NnunetDirs.under(tmp_path)
    prepare_datasets(phantoms, dirs.raw, dataset_id=DATASET_ID - 1, num_workers=1, progress=False)
    # anatomy dataset = dataset_id + 1 = DATASET_ID
    assert not preprocessed_ready("anatomy", DATASET_ID - 1, dirs, TINY)
    plan_and_preprocess(DATASET_ID, dirs, TINY, 1, tmp_path / "plan.log", threads=1)
    assert preprocessed_ready("anatomy", DATASET_ID - 1, dirs, TINY)
    other = DemoConfig(**{**TINY.__dict__, "patch_size_vox": (48, 48, 48)})
    assert not preprocessed_ready("anatomy", DATASET_ID - 1, dirs, other)

    log = tmp_path / "train.log"
    results = train(DATASET_ID, dirs, TINY, "cpu", log, threads=1)
    final = results / "fold_all" / "checkpoint_final.pth"
    first = torch.load(final, map_location="cpu", weights_only=False)
    epochs, rates = _epochs_and_rates(log)
    # the budget, not the 1000-epoch cap, ended the run, with the rate decayed over it
    assert "time budget of 6 s spent" in log.read_text()
    assert 1 <= len(epochs) < 1000 and first["current_epoch"] == len(epochs)
    # the first epoch starts a moment into the budget, so its rate is already a hair below 0.01
    assert rates[0] == pytest.approx(0.01, rel=0.05) and (len(rates) == 1 or rates[-1] < rates[0])

    with pytest.raises(ValueError, match="time budget"):
        train(DATASET_ID, dirs, DemoConfig(**{**TINY.__dict__, "max_seconds": None}), "cpu", log, extend=True)
    train(DATASET_ID, dirs, TINY, "cpu", log, threads=1, extend=True)
    second = torch.load(final, map_location="cpu", weights_only=False)
    assert second["current_epoch"] > first["current_epoch"]
    changed = [k for k, v in second["network_weights"].items()
               if v.is_floating_point() and not torch.equal(v, first["network_weights"][k])]
    assert changed, "continuing training left the weights unchanged"

    # fine-tuning in another work folder, on other phantoms, from this run's final checkpoint
    work2 = tmp_path / "finetune"
    write_phantom_dataset(work2 / "phantoms", 2, seed=43, size="small")
    dirs2 = NnunetDirs.under(work2)
    prepare_datasets(work2 / "phantoms", dirs2.raw, dataset_id=DATASET_ID - 1, num_workers=1, progress=False)
    with pytest.raises(ModelError, match="no finished anatomy training"):
        init_from_run(tmp_path / "nowhere", "anatomy", DATASET_ID - 1, dirs2)
    init_from_run(tmp_path, "anatomy", DATASET_ID - 1, dirs2)
    preprocess_only(DATASET_ID, dirs2, 1, work2 / "plan.log", threads=1)
    assert preprocessed_ready("anatomy", DATASET_ID - 1, dirs2, TINY)
    # the source's plans (intensity normalisation, network), not a new fingerprint's
    import json
    plans_src = json.loads((results / "plans.json").read_text())
    name = results.parent.name
    plans_new = json.loads((dirs2.preprocessed / name / "nnUNetPlans.json").read_text())
    assert plans_new["foreground_intensity_properties_per_channel"] == plans_src["foreground_intensity_properties_per_channel"]
    results2 = train(DATASET_ID, dirs2, TINY, "cpu", work2 / "train.log", threads=1, extend=True)
    third = torch.load(results2 / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert third["current_epoch"] > second["current_epoch"]
    assert any(not torch.equal(v, second["network_weights"][k])
               for k, v in third["network_weights"].items() if v.is_floating_point())
