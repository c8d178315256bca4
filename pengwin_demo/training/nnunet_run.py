"""nnU-Net planning, preprocessing and training, run in child processes, and the export.

Training uses nnU-Net's own planner, preprocessor and trainer, run in a child process whose
environment holds ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` (nnU-Net reads
them at import time). The full-size recipe is nnU-Net's (see docs/models.md); the demo recipe
adds a small configuration ``3d_demo`` that inherits from ``3d_fullres`` (coarse spacing,
narrow network, small patch) and trains it with :class:`nnUNetTrainerDemo` (short epochs,
no mirroring: left and right hip must not be swapped by augmentation).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path


from ..errors import ModelError
from .datasets import DEMO_CONFIGURATION, INFERENCE_TRAINER_NAME, dataset_folder_name

log = logging.getLogger(__name__)


THICK_SLICE_SCALE = (0.3, 0.75)
"""Range of the slice-density factor of the thick-slice augmentation: at a 1.5 mm model
spacing, 2 mm (0.75) to 5 mm (0.3) slices."""


@dataclass
class DemoConfig:
    """The small demo configuration (inherits everything else from ``3d_fullres``).

    spacing_zyx_mm : target spacing (z, y, x), mm. patch_size_vox : (z, y, x) voxels.
    features_per_stage : channels per encoder stage (one stride-2 stage after the first).
    """

    spacing_zyx_mm: tuple[float, float, float] = (2.5, 2.5, 2.5)
    patch_size_vox: tuple[int, int, int] = (64, 64, 64)
    features_per_stage: tuple[int, ...] = (8, 16, 32, 64)
    batch_size: int = 2
    epochs: int = 20
    iterations_per_epoch: int = 50
    val_iterations_per_epoch: int = 4
    initial_lr: float = 0.01
    max_seconds: float | None = None
    """Training time budget, s (after start-up). When set, training stops at the first epoch
    end past it and the poly learning-rate schedule runs on elapsed time instead of epochs,
    so a run of unknown speed still ends with a fully decayed rate."""
    mirror: bool = False
    """Mirror training patches along every axis (data augmentation). Right for the ABBC
    classes, which mean the same on either side; wrong for the anatomy model, whose left
    and right hip would swap. Inference never mirrors."""
    init_weights: str | None = None
    """Checkpoint whose network weights start a new training (every tensor of the same name
    and shape, the output layers included); e.g. a bundled model to fine-tune on real data."""
    thick_slice_probability: float = 0.0
    """Share of training patches whose slices (array axis 0, z) are taken
    :data:`THICK_SLICE_SCALE` times as dense and interpolated back, the look of a CT
    reconstructed with 2-5 mm slices once resampled to the model's spacing, so that the blur
    between thick slices is not read as a fracture gap. Off in the real-data recipe: trained
    with 0.3 on three patients, the ABBC model scored no better on the held-out patients
    (native or at 3 mm slices) and split intact real 3 mm pelves no less (docs/real_data.md)."""


@dataclass
class NnunetDirs:
    """The three nnU-Net folders (raw, preprocessed, results)."""

    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def under(cls, root: str | os.PathLike) -> "NnunetDirs":
        root = Path(root)
        return cls(root / "nnUNet_raw", root / "nnUNet_preprocessed", root / "nnUNet_results")

    def env(self, threads: int = 2, n_proc_da: int = 1) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
            "nnUNet_results": str(self.results),
            "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA", str(n_proc_da)),
            "nnUNet_compile": "f", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "PENGWIN_TORCH_THREADS": str(threads),
        })
        package_root = str(Path(__file__).resolve().parents[2])  # the folder holding pengwin_demo/
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        return env


def demo_plans_entry(base: dict, cfg: DemoConfig) -> dict:
    """The ``3d_demo`` configuration added to an nnU-Net plans file (given its 3d_fullres)."""
    n = len(cfg.features_per_stage)
    arch = json.loads(json.dumps(base["architecture"]))
    kwargs = arch["arch_kwargs"]
    kwargs.update({
        "n_stages": n,
        "features_per_stage": list(cfg.features_per_stage),
        "kernel_sizes": [[3, 3, 3]] * n,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
    })
    for key, per_stage in (("n_conv_per_stage", n), ("n_blocks_per_stage", n)):
        if key in kwargs:
            kwargs[key] = [min(2, int(kwargs[key][0]))] * per_stage
    if "n_conv_per_stage_decoder" in kwargs:
        kwargs["n_conv_per_stage_decoder"] = [min(2, int(kwargs["n_conv_per_stage_decoder"][0]))] * (n - 1)
    return {
        "inherits_from": "3d_fullres",
        "data_identifier": f"nnUNetPlans_{DEMO_CONFIGURATION}",
        "spacing": [float(s) for s in cfg.spacing_zyx_mm],
        "patch_size": [int(p) for p in cfg.patch_size_vox],
        "batch_size": int(cfg.batch_size),
        "architecture": arch,
    }


def _run_child(args: list[str], dirs: NnunetDirs, threads: int, log_file: Path | None) -> None:
    cmd = [sys.executable, "-m", "pengwin_demo.training", *args]
    log.info("running %s", " ".join(cmd))
    stdout = open(log_file, "a") if log_file else None
    try:
        proc = subprocess.run(cmd, env=dirs.env(threads), stdout=stdout, stderr=subprocess.STDOUT if stdout else None)
    finally:
        if stdout:
            stdout.close()
    if proc.returncode != 0:
        raise ModelError(f"nnU-Net step {' '.join(args[:2])} failed (exit {proc.returncode})"
                         + (f"; see {log_file}" if log_file else ""))


def plan_and_preprocess(dataset_number: int, dirs: NnunetDirs, cfg: DemoConfig, num_workers: int = 1,
                        log_file: Path | None = None, threads: int = 2) -> None:
    """Fingerprint (with integrity check), nnU-Net planner, add ``3d_demo``, preprocess it."""
    _run_child(["_plan", str(dataset_number), json.dumps(asdict(cfg)), str(num_workers)], dirs, threads, log_file)


def preprocess_only(dataset_number: int, dirs: NnunetDirs, num_workers: int = 1,
                    log_file: Path | None = None, threads: int = 2) -> None:
    """Preprocess ``3d_demo`` with the plans already in ``dirs.preprocessed`` (see :func:`init_from_run`)."""
    _run_child(["_preprocess", str(dataset_number), str(num_workers)], dirs, threads, log_file)


TRAINING_FOLDER = f"nnUNetTrainerDemo__nnUNetPlans__{DEMO_CONFIGURATION}"


def init_from_run(source_work_dir: str | os.PathLike, kind: str, dataset_id: int, dirs: NnunetDirs) -> None:
    """Start this work folder's ``kind`` training from another run's final checkpoint.

    Fine-tuning on other phantoms (e.g. full-size ones): the source run's plans (so the
    intensity normalisation and the network are the same) and its full final checkpoint
    (weights, optimizer state, epoch) are copied in; preprocess with
    :func:`preprocess_only`, then :func:`train` with ``extend=True``. Does nothing when this
    work folder already has a checkpoint for ``kind``.

    Raises
    ------
    ModelError
        The source is not a finished ``train-demo-models`` work folder for ``kind``.
    """
    name = dataset_folder_name(kind, dataset_id)
    out = dirs.results / name / TRAINING_FOLDER / "fold_all"
    if any(out.glob("checkpoint_*.pth")):
        return
    task = name.split("_", 1)[1]  # the source run may use another dataset id
    src = sorted((Path(source_work_dir) / "nnUNet_results").glob(f"Dataset*_{task}/{TRAINING_FOLDER}"))
    ckpt = src[0] / "fold_all" / "checkpoint_final.pth" if src else None
    if ckpt is None or not ckpt.is_file() or not (src[0] / "plans.json").is_file():
        raise ModelError(
            f"{source_work_dir} holds no finished {kind} training ({task}, "
            f"{TRAINING_FOLDER}/fold_all/checkpoint_final.pth): give the --work-dir of a "
            "finished train-demo-models run"
        )
    pre = dirs.preprocessed / name
    pre.mkdir(parents=True, exist_ok=True)
    plans = json.loads((src[0] / "plans.json").read_text())
    plans["dataset_name"] = name
    (pre / "nnUNetPlans.json").write_text(json.dumps(plans, indent=2))
    shutil.copy(src[0] / "dataset_fingerprint.json", pre / "dataset_fingerprint.json")
    shutil.copy(dirs.raw / name / "dataset.json", pre / "dataset.json")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(ckpt, out / "checkpoint_final.pth")
    log.info("%s: starting from %s", kind, ckpt)


def train(dataset_number: int, dirs: NnunetDirs, cfg: DemoConfig, device: str = "cpu",
          log_file: Path | None = None, threads: int = 2, extend: bool = False) -> Path:
    """Train ``3d_demo`` on all cases (fold "all"); returns the nnU-Net results folder.

    An interrupted run resumes from its latest checkpoint. With ``extend``, a finished run
    continues from its final checkpoint for ``cfg.epochs`` more epochs; that needs
    ``cfg.max_seconds`` (the learning rate restarts and decays over the time budget).
    """
    if extend and not cfg.max_seconds:
        raise ValueError("continuing a finished training needs a time budget (max_seconds)")
    _run_child(["_train", str(dataset_number), json.dumps(asdict(cfg)), device] + (["extend"] if extend else []),
               dirs, threads, log_file)
    matches = sorted(dirs.results.glob(f"Dataset{dataset_number:03d}_*/{TRAINING_FOLDER}"))
    if not matches:
        raise ModelError(f"training of dataset {dataset_number} left no results folder in {dirs.results}")
    return matches[0]


def strip_model(results_folder: str | os.PathLike, out_dir: str | os.PathLike, half: bool = True,
                keep_configurations: tuple[str, ...] = ("3d_fullres", DEMO_CONFIGURATION)) -> Path:
    """Copy only what inference needs into ``out_dir``; returns ``out_dir``.

    Keeps dataset.json, plans.json (only ``keep_configurations``), dataset_fingerprint.json
    and ``fold_*/checkpoint_final.pth`` with the network weights (float16 when ``half``;
    nnU-Net loads them into its float32 network) but without optimizer state. The trainer
    name becomes the stock :data:`INFERENCE_TRAINER_NAME` so that loading needs nothing
    beyond nnU-Net itself.
    """
    import torch

    src, out = Path(results_folder), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "dataset.json", out / "dataset.json")
    if (src / "dataset_fingerprint.json").is_file():
        shutil.copyfile(src / "dataset_fingerprint.json", out / "dataset_fingerprint.json")
    plans = json.loads((src / "plans.json").read_text())
    plans["configurations"] = {k: v for k, v in plans["configurations"].items() if k in keep_configurations}
    (out / "plans.json").write_text(json.dumps(plans, indent=2))
    for fold in sorted(src.glob("fold_*")):
        # a finished run has checkpoint_final; an interrupted one is exported from its latest
        ckpt_path = next((fold / n for n in ("checkpoint_final.pth", "checkpoint_latest.pth")
                          if (fold / n).is_file()), None)
        if ckpt_path is None:
            continue
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        weights = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ckpt["network_weights"].items()}
        slim = {
            "network_weights": weights,
            "trainer_name": INFERENCE_TRAINER_NAME,
            "trained_with": ckpt.get("trainer_name"),
            "init_args": {k: v for k, v in ckpt["init_args"].items() if k in ("configuration", "fold")},
            "inference_allowed_mirroring_axes": None,
            "current_epoch": ckpt.get("current_epoch"),
        }
        (out / fold.name).mkdir(exist_ok=True)
        torch.save(slim, out / fold.name / "checkpoint_final.pth")
    return out


def preprocessed_ready(kind: str, dataset_id: int, dirs: NnunetDirs, cfg: DemoConfig) -> bool:
    """Whether ``dirs.preprocessed`` already holds this dataset's ``3d_demo`` data for ``cfg``.

    True when the plans' ``3d_demo`` entry has ``cfg``'s spacing, patch, batch and features
    and every training case of the raw dataset has its preprocessed image and segmentation.
    """
    name = dataset_folder_name(kind, dataset_id)
    base = dirs.preprocessed / name
    try:
        plans = json.loads((base / "nnUNetPlans.json").read_text())
        n_cases = int(json.loads((dirs.raw / name / "dataset.json").read_text())["numTraining"])
    except (OSError, ValueError, KeyError):
        return False
    entry = plans.get("configurations", {}).get(DEMO_CONFIGURATION)
    if not entry:
        return False
    same = (entry.get("spacing") == [float(v) for v in cfg.spacing_zyx_mm]
            and entry.get("patch_size") == [int(v) for v in cfg.patch_size_vox]
            and entry.get("batch_size") == int(cfg.batch_size)
            and entry["architecture"]["arch_kwargs"].get("features_per_stage") == list(cfg.features_per_stage))
    data = base / entry.get("data_identifier", f"nnUNetPlans_{DEMO_CONFIGURATION}")
    return same and len(list(data.glob("*_seg.b2nd"))) == n_cases


def train_and_export(work_dir: str | os.PathLike, out_dir: str | os.PathLike, kind: str, dataset_number: int,
                     cfg: DemoConfig, device: str = "cpu", threads: int = 2) -> Path:
    """Plan and preprocess a raw dataset under ``work_dir`` (unless done), train, export.

    The inference-only model replaces ``out_dir``; logs go to ``work_dir/logs``
    (``plan_<kind>.log``, ``train_<kind>.log``). Returns the training log's path.
    """
    dirs = NnunetDirs.under(work_dir)
    log_dir = Path(work_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    if not preprocessed_ready(kind, dataset_number, dirs, cfg):
        plan_and_preprocess(dataset_number, dirs, cfg, 1, log_dir / f"plan_{kind}.log", threads)
    train_log = log_dir / f"train_{kind}.log"
    results = train(dataset_number, dirs, cfg, device, train_log, threads)
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    strip_model(results, out)
    return train_log
