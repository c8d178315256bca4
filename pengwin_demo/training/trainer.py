"""The child-process side: nnU-Net steps with its environment set, and the demo trainer.

Run as ``python -m pengwin_demo.training STEP ...`` by :mod:`.nnunet_run`."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path


from ..errors import ModelError
from .datasets import DEMO_CONFIGURATION
from .nnunet_run import THICK_SLICE_SCALE, DemoConfig, demo_plans_entry

log = logging.getLogger(__name__)


def _child_plan(dataset_number: int, cfg: DemoConfig, num_workers: int) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints, plan_experiments, preprocess)
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    extract_fingerprints([dataset_number], num_processes=num_workers, check_dataset_integrity=True, clean=True)
    plan_experiments([dataset_number])
    name = maybe_convert_to_dataset_name(dataset_number)
    plans_file = Path(nnUNet_preprocessed) / name / "nnUNetPlans.json"
    plans = json.loads(plans_file.read_text())
    plans["configurations"][DEMO_CONFIGURATION] = demo_plans_entry(plans["configurations"]["3d_fullres"], cfg)
    plans_file.write_text(json.dumps(plans, indent=2))
    preprocess([dataset_number], configurations=(DEMO_CONFIGURATION,), num_processes=(num_workers,))


def _child_preprocess(dataset_number: int, num_workers: int) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess

    preprocess([dataset_number], configurations=(DEMO_CONFIGURATION,), num_processes=(num_workers,))


class _BudgetSpent(Exception):
    """Raised at an epoch end once the training time budget is spent."""


def _demo_trainer_class():
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class nnUNetTrainerDemo(nnUNetTrainer):
        """Short schedule from $PENGWIN_DEMO_CFG, no mirroring, no final validation export."""

        def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            cfg = json.loads(os.environ.get("PENGWIN_DEMO_CFG", "{}"))
            self.num_epochs = int(cfg.get("epochs", 20))
            self.num_iterations_per_epoch = int(cfg.get("iterations_per_epoch", 50))
            self.num_val_iterations_per_epoch = int(cfg.get("val_iterations_per_epoch", 4))
            self.initial_lr = float(cfg.get("initial_lr", 0.01))
            self.save_every = 5
            self.max_seconds = cfg.get("max_seconds")
            self.mirror = bool(cfg.get("mirror", False))
            self.init_weights = cfg.get("init_weights")
            self.thick_slice_probability = float(cfg.get("thick_slice_probability", 0.0))
            self._started = None

        def on_train_start(self):
            super().on_train_start()
            if self.current_epoch == 0 and self.init_weights:
                _load_initial_weights(self.network, self.init_weights)
                self.print_to_log_file(f"network weights initialised from {self.init_weights}")
            self._started = time.monotonic()

        def _spent_fraction(self) -> float:
            if self._started is None:
                return 0.0
            return (time.monotonic() - self._started) / float(self.max_seconds)

        def configure_optimizers(self):
            optimizer, scheduler = super().configure_optimizers()
            if self.max_seconds:
                # nnU-Net's poly schedule over per-mille steps of the time budget spent
                from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

                scheduler = PolyLRScheduler(optimizer, self.initial_lr, 1000)
                poly_step = scheduler.step
                scheduler.step = lambda current_step=None: poly_step(min(int(self._spent_fraction() * 1000), 999))
            return optimizer, scheduler

        def on_epoch_end(self):
            super().on_epoch_end()
            if self.max_seconds and self._spent_fraction() >= 1.0:
                self.print_to_log_file(f"time budget of {self.max_seconds:.0f} s spent after "
                                       f"{self.current_epoch} epochs")
                raise _BudgetSpent

        def run_training(self):
            try:
                super().run_training()
            except _BudgetSpent:
                self.on_train_end()

        def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
            rot, dummy2d, initial, mirror = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
            self.inference_allowed_mirroring_axes = None
            return rot, dummy2d, initial, (mirror if self.mirror else None)

        def get_training_transforms(self, *args, **kwargs):
            composed = super().get_training_transforms(*args, **kwargs)
            if self.thick_slice_probability > 0:
                _add_thick_slice_transform(composed.transforms, self.thick_slice_probability)
            return composed

    return nnUNetTrainerDemo


def _add_thick_slice_transform(transforms: list, probability: float) -> None:
    """Insert the thick-slice augmentation (see ``DemoConfig.thick_slice_probability``)
    right after nnU-Net's own low-resolution simulation, which scales all axes alike."""
    from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
    from batchgeneratorsv2.transforms.utils.random import RandomTransform

    at = next((i for i, t in enumerate(transforms)
               if isinstance(getattr(t, "transform", None), SimulateLowResolutionTransform)), None)
    if at is None:
        raise ModelError("this nnU-Net version's training transforms have no low-resolution "
                         "simulation to put the thick-slice augmentation after")
    thick = SimulateLowResolutionTransform(scale=THICK_SLICE_SCALE, synchronize_channels=True,
                                           synchronize_axes=False, ignore_axes=(1, 2))
    transforms.insert(at + 1, RandomTransform(thick, apply_probability=probability))


def _load_initial_weights(network, checkpoint: str | os.PathLike) -> None:
    """Copy the checkpoint's network weights into ``network`` (names and shapes must agree)."""
    import torch

    weights = torch.load(checkpoint, map_location="cpu", weights_only=False)["network_weights"]
    own = network.state_dict()
    wrong = [k for k in own if k not in weights or weights[k].shape != own[k].shape]
    if wrong:
        raise ModelError(f"{checkpoint}: its network differs from this configuration's "
                         f"({len(wrong)} tensors missing or of another shape, e.g. {wrong[0]})")
    network.load_state_dict({k: weights[k].to(own[k].dtype) for k in own})


def _child_train(dataset_number: int, cfg: DemoConfig, device: str, extend: bool = False) -> None:
    import torch
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    torch.set_num_threads(int(os.environ.get("PENGWIN_TORCH_THREADS", "2")))
    os.environ["PENGWIN_DEMO_CFG"] = json.dumps(asdict(cfg))
    name = maybe_convert_to_dataset_name(dataset_number)
    base = Path(nnUNet_preprocessed) / name
    plans = json.loads((base / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((base / "dataset.json").read_text())
    trainer_cls = _demo_trainer_class()
    plans["continue_training"] = False
    trainer = trainer_cls(plans, DEMO_CONFIGURATION, "all", dataset_json, torch.device(device))
    out = Path(trainer.output_folder)
    if (out / "checkpoint_latest.pth").is_file():  # resume an interrupted run
        trainer.load_checkpoint(str(out / "checkpoint_latest.pth"))
    elif extend and (out / "checkpoint_final.pth").is_file():
        # continue a finished run for cfg.epochs more epochs (learning rate over the time budget)
        trainer.load_checkpoint(str(out / "checkpoint_final.pth"))
        trainer.num_epochs = trainer.current_epoch + int(cfg.epochs)
    trainer.run_training()


def run_step(argv: list[str]) -> int:
    """Run one child step: ``_plan``, ``_preprocess`` or ``_train`` with its arguments."""
    cmd = argv[0]
    if cmd == "_plan":
        _child_plan(int(argv[1]), DemoConfig(**json.loads(argv[2])), int(argv[3]))
    elif cmd == "_preprocess":
        _child_preprocess(int(argv[1]), int(argv[2]))
    elif cmd == "_train":
        _child_train(int(argv[1]), DemoConfig(**json.loads(argv[2])), argv[3], argv[4:5] == ["extend"])
    else:
        raise SystemExit(f"unknown step {cmd}")
    return 0

