"""PENGWIN-format data -> nnU-Net v2 datasets (ABBC and anatomy), demo plans, training, export.

A PENGWIN-layout folder holds ``images/<case>.mha`` (CT, HU) and ``labels/<case>.mha``
(fragment labels 0-30); the challenge zips and :func:`pengwin_demo.phantom.write_phantom_dataset`
both produce it. :func:`prepare_datasets` turns it into two nnU-Net raw datasets:

* ``Dataset<N>_PengwinABBC``: the 4 ABBC classes (background, boundary, core, border),
  computed with :func:`pengwin_demo.recovery.abbc_targets`;
* ``Dataset<N+1>_PengwinAnatomy``: background, sacrum, left hip, right hip.

Images and labels are reoriented to LPS (identity direction) on the way, as
:meth:`pengwin_demo.models.SegmentationModel.predict` does at inference.

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
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError, ModelError
from .io import VOLUME_SUFFIXES, read_volume, volume_suffix, write_volume
from .labels import ABBC_CLASSES, ANATOMY_CLASSES, anatomy_from_fragments
from .volume import Volume

log = logging.getLogger(__name__)

ABBC_LABELS = ABBC_CLASSES
ANATOMY_LABELS = ANATOMY_CLASSES
DATASET_NAMES = {"abbc": "PengwinABBC", "anatomy": "PengwinAnatomy"}
FILE_ENDING = ".nii.gz"
DEMO_CONFIGURATION = "3d_demo"
INFERENCE_TRAINER_NAME = "nnUNetTrainerNoMirroring"
"""Stock nnU-Net trainer name written into exported checkpoints (same network, no mirroring)."""


# ---------------------------------------------------------------------------------------
# dataset conversion
# ---------------------------------------------------------------------------------------
def dataset_folder_name(kind: str, dataset_id: int) -> str:
    """nnU-Net folder name, e.g. ``Dataset501_PengwinABBC`` (anatomy gets ``dataset_id + 1``)."""
    if kind not in DATASET_NAMES:
        raise ValueError(f"kind must be 'abbc' or 'anatomy', got {kind!r}")
    number = dataset_id + (1 if kind == "anatomy" else 0)
    if not 1 <= number <= 999:
        raise InputError(f"nnU-Net dataset ids are 1-999; got {number}.")
    return f"Dataset{number:03d}_{DATASET_NAMES[kind]}"


def find_cases(src: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(case id, image path, label path) for every image in ``src/images`` with a label.

    Raises InputError when the layout is wrong or an image has no label file.
    """
    src = Path(src)
    images_dir, labels_dir = src / "images", src / "labels"
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise InputError(
            f"{src}: expected a PENGWIN-layout folder with images/ and labels/ subfolders "
            "(e.g. images/001.mha, labels/001.mha)."
        )
    labels = {}
    for p in labels_dir.iterdir():
        suffix = volume_suffix(p)
        if suffix:
            labels[p.name[: -len(suffix)]] = p
    cases = []
    for p in sorted(images_dir.iterdir()):
        suffix = volume_suffix(p)
        if not suffix:
            continue
        case = p.name[: -len(suffix)]
        if case not in labels:
            raise InputError(f"{p.name}: no label file for this image in {labels_dir} (same name expected).")
        cases.append((case, p, labels[case]))
    if not cases:
        raise InputError(f"{images_dir}: no images ({', '.join(VOLUME_SUFFIXES)}) found.")
    return cases


def to_canonical(volume: Volume) -> Volume:
    """The same voxels with axes permuted/flipped to LPS (identity direction)."""
    return Volume.from_sitk(sitk.DICOMOrient(volume.to_sitk(), "LPS"))


def convert_case(
    case: str, image_path: Path, label_path: Path, abbc_dir: Path, anatomy_dir: Path,
    abbc_kwargs: dict | None = None,
) -> dict:
    """Write one case into both raw datasets; returns its label voxel counts."""
    from .recovery import abbc_targets

    ct = to_canonical(read_volume(image_path, "ct"))
    labels = to_canonical(read_volume(label_path, "label"))
    if not labels.same_grid(ct, tol_mm=1e-3):
        raise InputError(
            f"{label_path.name}: label grid {labels.shape} @ {labels.spacing_zyx_mm} mm differs from "
            f"its image {ct.shape} @ {ct.spacing_zyx_mm} mm; give labels on the image grid."
        )
    if labels.array.max() > 30:
        raise InputError(f"{label_path.name}: label values up to {labels.array.max()}; PENGWIN uses 0-30.")
    abbc = abbc_targets(labels.array, labels.spacing_zyx_mm, **(abbc_kwargs or {}))
    anatomy = anatomy_from_fragments(labels.array)
    image_name = f"{case}_0000{FILE_ENDING}"
    write_volume(ct, abbc_dir / "imagesTr" / image_name)
    shutil.copyfile(abbc_dir / "imagesTr" / image_name, anatomy_dir / "imagesTr" / image_name)
    write_volume(ct.with_array(np.asarray(abbc, dtype=np.uint8)), abbc_dir / "labelsTr" / f"{case}{FILE_ENDING}")
    write_volume(ct.with_array(anatomy), anatomy_dir / "labelsTr" / f"{case}{FILE_ENDING}")
    return {
        "case": case,
        "abbc": np.bincount(np.asarray(abbc).ravel(), minlength=4)[:4].tolist(),
        "anatomy": np.bincount(anatomy.ravel(), minlength=4)[:4].tolist(),
    }


def _dataset_json(labels: dict[str, int], n: int, description: str) -> dict:
    return {
        "channel_names": {"0": "CT"},
        "labels": labels,
        "numTraining": n,
        "file_ending": FILE_ENDING,
        "name": description,
        "licence": "synthetic phantoms: CC0; PENGWIN data: CC BY-NC-SA 4.0",
    }


def prepare_datasets(
    src: str | os.PathLike,
    nnunet_raw: str | os.PathLike,
    dataset_id: int = 501,
    num_workers: int = 2,
    verify: bool = True,
    progress: bool = True,
    overwrite: bool = False,
    abbc_kwargs: dict | None = None,
) -> dict[str, Path]:
    """Convert a PENGWIN-layout folder into the ABBC and anatomy nnU-Net raw datasets.

    Parameters
    ----------
    src : path-like
        Folder with ``images/`` and ``labels/`` (same file names).
    nnunet_raw : path-like
        nnU-Net raw folder; ``Dataset<id>_PengwinABBC`` and ``Dataset<id+1>_PengwinAnatomy``
        are created in it.
    dataset_id : int
        Id of the ABBC dataset; the anatomy dataset gets ``dataset_id + 1``.
    num_workers : int
        Cases converted in parallel (processes).
    verify : bool
        Run nnU-Net's ``verify_dataset_integrity`` on both datasets afterwards.
    overwrite : bool
        Replace existing dataset folders (otherwise an existing folder is an error).

    Returns
    -------
    dict
        {"abbc": folder, "anatomy": folder}.
    """
    cases = find_cases(src)
    raw = Path(nnunet_raw)
    out = {kind: raw / dataset_folder_name(kind, dataset_id) for kind in ("abbc", "anatomy")}
    for folder in out.values():
        if folder.exists():
            if not overwrite:
                raise InputError(f"{folder} already exists; remove it or pass --overwrite.")
            shutil.rmtree(folder)
        (folder / "imagesTr").mkdir(parents=True)
        (folder / "labelsTr").mkdir(parents=True)
    stats = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cases), desc="converting cases", unit="case")
    args = [(c, i, l, out["abbc"], out["anatomy"], abbc_kwargs) for c, i, l in cases]
    if num_workers <= 1:
        for a in args:
            stats.append(convert_case(*a))
            bar and bar.update(1)
    else:
        with ProcessPoolExecutor(max_workers=num_workers) as pool:
            futures = [pool.submit(convert_case, *a) for a in args]
            for fut in as_completed(futures):
                stats.append(fut.result())
                bar and bar.update(1)
    if bar is not None:
        bar.close()
    n = len(cases)
    (out["abbc"] / "dataset.json").write_text(json.dumps(
        _dataset_json(ABBC_LABELS, n, "PENGWIN fragments as ABBC classes"), indent=2))
    (out["anatomy"] / "dataset.json").write_text(json.dumps(
        _dataset_json(ANATOMY_LABELS, n, "PENGWIN anatomy (sacrum, left hip, right hip)"), indent=2))
    for kind, folder in out.items():
        missing = [s["case"] for s in stats if s[kind][1] == 0 and s[kind][2] == 0]
        if missing:
            log.warning("%s: %d case(s) without foreground: %s", folder.name, len(missing), missing[:5])
    if verify:
        verify_raw_dataset(out["abbc"], num_workers)
        verify_raw_dataset(out["anatomy"], num_workers)
    return out


def verify_raw_dataset(folder: str | os.PathLike, num_workers: int = 1) -> None:
    """nnU-Net's own ``verify_dataset_integrity`` on a raw dataset folder (raises on failure)."""
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    try:
        verify_dataset_integrity(str(folder), num_workers)
    except (AssertionError, RuntimeError) as err:
        raise InputError(f"{Path(folder).name}: nnU-Net dataset integrity check failed: {err}") from err


# ---------------------------------------------------------------------------------------
# planning and training (child processes with nnU-Net's environment)
# ---------------------------------------------------------------------------------------
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
        package_root = str(Path(__file__).resolve().parents[1])
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


# ---------------------------------------------------------------------------------------
# child-process entry points (nnU-Net environment already set)
# ---------------------------------------------------------------------------------------
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

    return nnUNetTrainerDemo


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


def _main(argv: list[str]) -> int:
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


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))


# ---------------------------------------------------------------------------------------
# the bundled demo models, end to end
# ---------------------------------------------------------------------------------------
DEMO_DATASET_ID = 501
TRAIN_SEED = 1
"""Phantom seed of the demo training set (held-out evaluation uses other seeds)."""

DEMO_CONFIGS: dict[str, dict[str, DemoConfig]] = {
    "bootstrap": {
        "anatomy": DemoConfig((3.0, 3.0, 3.0), (64, 64, 64), (8, 16, 32, 64), 2, 6, 25, 2),
        "abbc": DemoConfig((2.5, 2.5, 2.5), (64, 64, 64), (8, 16, 32, 64), 2, 6, 25, 2),
    },
    "demo": {
        "anatomy": DemoConfig((4.0, 4.0, 4.0), (64, 64, 64), (8, 16, 32, 64), 2, 60, 25, 2),
        "abbc": DemoConfig((2.0, 2.0, 2.0), (64, 64, 64), (8, 16, 32, 64, 128), 2, 50, 25, 2),
    },
}
"""Named recipes: a few-minute ``bootstrap`` pair and the bundled ``demo`` pair."""


def train_demo_models(
    work_dir: str | os.PathLike,
    models_dir: str | os.PathLike,
    recipe: str = "demo",
    cases: int = 24,
    seed: int = TRAIN_SEED,
    size: str = "small",
    device: str = "cpu",
    threads: int = 2,
    parallel: bool = True,
    epochs: int | None = None,
    kinds: tuple[str, ...] = ("anatomy", "abbc"),
    max_seconds: float | None = None,
    iterations_per_epoch: int | None = None,
    extend: bool = False,
    init_from: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Phantoms -> nnU-Net datasets -> plans -> training -> stripped models in ``models_dir``.

    Parameters
    ----------
    work_dir : path-like
        Scratch folder (phantoms, nnU-Net raw/preprocessed/results, logs); reused when
        present, so an interrupted run resumes.
    models_dir : path-like
        Where ``anatomy/`` and ``abbc/`` (inference-only model folders) are written.
    recipe : {"bootstrap", "demo"}
        Configuration set from :data:`DEMO_CONFIGS`.
    cases, seed, size : phantom training set (:func:`pengwin_demo.phantom.write_phantom_dataset`).
    device : str
        "cpu" or "cuda".
    threads : int
        Torch threads per training process.
    parallel : bool
        Train both models at the same time (each with ``threads`` threads).
    epochs : int, optional
        Override the recipe's epoch count.
    max_seconds : float, optional
        Training time budget per model, s (see :attr:`DemoConfig.max_seconds`); ``epochs``
        then only caps the run.
    iterations_per_epoch : int, optional
        Override the recipe's iterations per epoch.
    extend : bool
        Continue finished trainings in ``work_dir`` (needs ``max_seconds``), see :func:`train`.
    init_from : path-like, optional
        Work folder of a finished run whose models this run continues on its own phantoms
        (fine-tuning, :func:`init_from_run`); implies ``extend``.
    """
    if init_from is not None:
        extend = True
    from concurrent.futures import ThreadPoolExecutor

    work, out = Path(work_dir), Path(models_dir)
    work.mkdir(parents=True, exist_ok=True)
    log_dir = work / "logs"
    log_dir.mkdir(exist_ok=True)
    phantoms = work / f"phantoms_{size}_{seed}_{cases}"
    if not (phantoms / "phantoms.json").is_file():
        from .phantom import write_phantom_dataset

        log.info("writing %d %s phantoms (seed %d) to %s", cases, size, seed, phantoms)
        write_phantom_dataset(phantoms, cases, seed, size, progress=True)
    dirs = NnunetDirs.under(work)
    numbers = {"abbc": DEMO_DATASET_ID, "anatomy": DEMO_DATASET_ID + 1}
    if not all((dirs.raw / dataset_folder_name(k, DEMO_DATASET_ID) / "dataset.json").is_file() for k in kinds):
        prepare_datasets(phantoms, dirs.raw, DEMO_DATASET_ID, num_workers=max(1, threads), overwrite=True)
    overrides = {name: cast(value) for name, cast, value in (
        ("epochs", int, epochs), ("max_seconds", float, max_seconds),
        ("iterations_per_epoch", int, iterations_per_epoch)) if value is not None}
    configs = {k: replace(DEMO_CONFIGS[recipe][k], **overrides) for k in kinds}
    for kind in kinds:
        if init_from is not None:
            init_from_run(init_from, kind, DEMO_DATASET_ID, dirs)
        if preprocessed_ready(kind, DEMO_DATASET_ID, dirs, configs[kind]):
            log.info("%s: reusing the preprocessed %s data in %s", kind, DEMO_CONFIGURATION, dirs.preprocessed)
            continue
        if init_from is not None:
            preprocess_only(numbers[kind], dirs, 1, log_dir / f"plan_{kind}.log", threads)
        else:
            plan_and_preprocess(numbers[kind], dirs, configs[kind], 1, log_dir / f"plan_{kind}.log", threads)

    def one(kind: str) -> Path:
        results = train(numbers[kind], dirs, configs[kind], device, log_dir / f"train_{kind}.log", threads,
                        extend=extend)
        target = out / kind
        if target.exists():
            shutil.rmtree(target)
        strip_model(results, target)
        write_model_card(target, kind, configs[kind], recipe=recipe, cases=cases, seed=seed, size=size,
                         device=device, train_log=log_dir / f"train_{kind}.log")
        return target

    if parallel and len(kinds) > 1:
        with ThreadPoolExecutor(len(kinds)) as pool:
            done = dict(zip(kinds, pool.map(one, kinds)))
    else:
        done = {k: one(k) for k in kinds}
    return done


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


def training_summary(train_log: Path | None) -> dict:
    """Epochs run, seconds per epoch and last pseudo-Dice from an nnU-Net training log."""
    import re

    if train_log is None or not Path(train_log).is_file():
        return {}
    text = Path(train_log).read_text(errors="replace")
    epochs = re.findall(r"Epoch (\d+)\n", text)
    times = [float(t) for t in re.findall(r"Epoch time: ([\d.]+) s", text)]
    dice = re.findall(r"Pseudo dice \[(.*?)\]", text)
    last = [float(x) for x in re.findall(r"([\d.]+)\)", dice[-1])] if dice else []
    return {
        "epochs": int(epochs[-1]) + 1 if epochs else None,
        "seconds_per_epoch": round(float(np.median(times)), 1) if times else None,
        "last_pseudo_dice": last,
    }


TARGET_IOU_A = 0.95
TARGET_IOU_F = 0.85
"""The project's quality targets on held-out full-size phantoms (end to end)."""


def write_model_card(model_dir: Path, kind: str, cfg: DemoConfig, *, recipe: str, cases: int, seed: int,
                     size: str, device: str, train_log: Path | None = None,
                     quality: dict | None = None) -> Path:
    """Write ``MODEL_CARD.md`` (and ``training.json``) next to a bundled model."""
    model_dir = Path(model_dir)
    summary = training_summary(train_log)
    if not summary and (model_dir / "training.json").is_file():
        old = json.loads((model_dir / "training.json").read_text())
        summary = {k: old.get(k) for k in ("epochs", "seconds_per_epoch", "last_pseudo_dice")}
    info = {"kind": kind, "recipe": recipe, "config": asdict(cfg), "cases": cases, "seed": seed,
            "size": size, "device": device, **summary}
    if quality:
        info["quality"] = quality
    elif (model_dir / "training.json").is_file():
        info["quality"] = json.loads((model_dir / "training.json").read_text()).get("quality")
    if (model_dir / "training.json").is_file():  # hand-written notes survive a rewrite
        notes = json.loads((model_dir / "training.json").read_text()).get("notes")
        if notes:
            info["notes"] = notes
    (model_dir / "training.json").write_text(json.dumps(info, indent=2))
    classes = ", ".join(f"{v} {k}" for k, v in (ANATOMY_LABELS if kind == "anatomy" else ABBC_LABELS).items())
    weights = sum(p.stat().st_size for p in model_dir.rglob("*.pth"))
    q = info.get("quality")
    extended = ("" if not cfg.max_seconds else
                f", then continued with `train-demo-models --recipe {recipe} --only {kind} --extend "
                f"--epochs {cfg.epochs} --max-minutes {cfg.max_seconds / 60:g}` (learning rate restarted "
                f"and decayed over that time budget)")
    quality_text = "not measured yet." if not q else "\n".join(f"- {k}: {v}" for k, v in q.items())
    if q and "anatomy IoU-A (end to end, official)" in q:
        met = (q["anatomy IoU-A (end to end, official)"] >= TARGET_IOU_A
               and q["fragment IoU-F (end to end, official)"] >= TARGET_IOU_F)
        quality_text += (f"\n\nThe project's targets (IoU-A >= {TARGET_IOU_A}, IoU-F >= {TARGET_IOU_F} on "
                         f"held-out full-size phantoms) are {'met' if met else '**NOT met**'}.")
    if info.get("notes"):
        quality_text += "\n\n" + "\n\n".join(info["notes"])
    bootstrap = ("\n**Bootstrap model**: a few minutes of training so that the pipeline runs; "
                 "expect poor quality. Replaced by the full demo recipe.\n" if recipe == "bootstrap" else "")
    text = f"""# {kind} demo model (nnU-Net v2, `{DEMO_CONFIGURATION}`)

**Synthetic data only, not for clinical use.** Trained on computer-generated pelvis
phantoms; it has never seen a real CT and says nothing about real patients.
{bootstrap}
- Task: {"Stage 1, anatomy" if kind == "anatomy" else "Stage 2, ABBC classes"} ({classes}).
- Data: {cases} `{size}` phantoms, `pengwin_demo.phantom.write_phantom_dataset(seed={seed})`;
  evaluation uses other seeds.
- Configuration `{DEMO_CONFIGURATION}` (inherits nnU-Net's `3d_fullres` plans): spacing
  {tuple(cfg.spacing_zyx_mm)} mm (z, y, x), patch {tuple(cfg.patch_size_vox)} voxels, features per
  stage {tuple(cfg.features_per_stage)}, batch {cfg.batch_size}.
- Training: recipe `{recipe}`, {summary.get("epochs", cfg.epochs)} epochs x {cfg.iterations_per_epoch}
  iterations, fold `all`, no mirroring, on `{device}`
  ({summary.get("seconds_per_epoch", "?")} s per epoch); last training pseudo-Dice per class
  {summary.get("last_pseudo_dice", "?")}.
- Files: inference only (dataset.json, plans.json, fingerprint, `fold_all/checkpoint_final.pth`
  with float16 weights and no optimizer state), {weights / 1e6:.2f} MB of weights. The trainer
  name in the checkpoint is nnU-Net's stock `{INFERENCE_TRAINER_NAME}` (same network).
- Reproduce: `python -m pengwin_demo train-demo-models --recipe {recipe}`{extended}.

## Measured quality

{quality_text}
"""
    path = model_dir / "MODEL_CARD.md"
    path.write_text(text)
    return path


def add_quality_to_cards(models_dir: str | os.PathLike, quality: dict) -> None:
    """Put held-out results (from :func:`pengwin_demo.model_quality.evaluate_models`) in both cards."""
    models_dir = Path(models_dir)
    mean = quality["mean"]
    summary = {
        "held-out phantoms": f"{len(quality['seeds'])} `{quality['size']}` phantoms, seeds {quality['seeds']}, "
                             f"whole pipeline on {quality['device']}",
        "Stage-1 anatomy IoU (model alone, mean over bones)": mean["stage1_iou"],
        "anatomy IoU-A (end to end, official)": mean["iou_a"],
        "fragment IoU-F (end to end, official)": mean["iou_f"],
        "fragment HD95 (mm)": mean["hd95_f_mm"],
        "pipeline seconds per case": mean["pipeline_s"],
    }
    for kind in ("anatomy", "abbc"):
        folder = models_dir / kind
        info = json.loads((folder / "training.json").read_text())
        cfg = DemoConfig(**info["config"])
        info["quality"] = summary
        (folder / "training.json").write_text(json.dumps(info, indent=2))
        write_model_card(folder, kind, cfg, recipe=info["recipe"], cases=info["cases"], seed=info["seed"],
                         size=info["size"], device=info["device"], quality=summary,
                         train_log=None)
