"""nnU-Net v2 models: bundled demo models or your own, loaded once and applied to volumes.

A *model* is an nnU-Net v2 results folder (``dataset.json``, ``plans.json`` and
``fold_*/checkpoint_final.pth``) or a zip of one (``nnUNetv2_export_model_to_zip`` or
:func:`export_model_zip`). :func:`load_model` wraps nnU-Net's ``nnUNetPredictor`` around
it; the returned :class:`SegmentationModel` takes a :class:`~pengwin_demo.volume.Volume`
and returns a uint8 label map on the same grid, so the rest of the code never sees how
a network is built.

Orientation: nnU-Net works on the raw (z, y, x) array and ignores the direction matrix.
So that a CT stored in another orientation (e.g. a RAS NIfTI) is seen the way the training
data was, :meth:`SegmentationModel.predict` reorients the image to LPS (identity direction)
first and the prediction back afterwards; the bundled training data is written the same
way by :mod:`pengwin_demo.training`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import ModelError
from ..labels import ABBC_CLASSES, ANATOMY_CLASSES
from ..volume import Volume, resample_onto
from .devices import resolve_device

log = logging.getLogger(__name__)

MODEL_KINDS = ("anatomy", "abbc")

EXPECTED_LABELS: dict[str, dict[str, int]] = {"anatomy": ANATOMY_CLASSES, "abbc": ABBC_CLASSES}
"""The ``labels`` block a model's dataset.json must have to serve as each stage."""

CANONICAL_ORIENTATION = "LPS"
"""Array axes orientation the models see (SimpleITK DICOMOrient code; identity direction)."""

CHECKPOINT_NAME = "checkpoint_final.pth"


# ---------------------------------------------------------------------------------------
# locating models
# ---------------------------------------------------------------------------------------
def _fold_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("fold_*") if (p / CHECKPOINT_NAME).is_file())


def find_model_folder(root: str | os.PathLike) -> Path:
    """The nnU-Net results folder inside ``root`` (``root`` itself or one level below it).

    A results folder holds ``dataset.json``, ``plans.json`` and at least one
    ``fold_*/checkpoint_final.pth``. Raises :class:`ModelError` when none or several exist.
    """
    root = Path(root)
    candidates = [
        p.parent for p in sorted(root.rglob("plans.json"))
        if (p.parent / "dataset.json").is_file() and _fold_dirs(p.parent)
    ]
    if not candidates:
        found = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())[:12]
        raise ModelError(
            f"{root.name}: not a complete nnU-Net model: need dataset.json, plans.json and "
            f"fold_*/{CHECKPOINT_NAME} in one folder; found {found or 'no files'}. "
            "Point to the results folder of a finished training (nnUNet_results/DatasetXXX/"
            "Trainer__Plans__configuration) or to a zip made by nnUNetv2_export_model_to_zip."
        )
    if len(candidates) > 1:
        names = [str(c.relative_to(root)) for c in candidates]
        raise ModelError(
            f"{root.name}: holds {len(candidates)} nnU-Net models ({names}); point to one of them."
        )
    return candidates[0]


def _cache_dir() -> Path:
    base = os.environ.get("PENGWIN_MODEL_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "pengwin_demo" / "models"


def extract_model_zip(zip_path: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
    """Unpack a model zip (ours or nnU-Net's export) and return its results folder.

    Without ``dest`` the zip goes to a cache folder named after its content hash
    (``$PENGWIN_MODEL_CACHE`` or ``~/.cache/pengwin_demo/models``), so unpacking happens once.
    """
    zip_path = Path(zip_path)
    if not zip_path.is_file():
        raise ModelError(f"{zip_path.name}: model zip not found ({zip_path}).")
    digest = hashlib.sha256()
    with open(zip_path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    target = Path(dest) if dest is not None else _cache_dir() / digest.hexdigest()[:16]
    if target.is_dir() and any(target.iterdir()):
        return find_model_folder(target)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
            for name in names:
                if name.startswith(("/", "\\")) or ".." in Path(name).parts:
                    raise ModelError(f"{zip_path.name}: unsafe path {name!r} in the zip; refusing it.")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
            try:
                zf.extractall(tmp)
                find_model_folder(tmp)  # validate before publishing
                if target.exists():
                    shutil.rmtree(target)
                os.replace(tmp, target)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
    except zipfile.BadZipFile:
        raise ModelError(f"{zip_path.name}: not a valid zip file (truncated download?).") from None
    return find_model_folder(target)


def export_model_zip(model_folder: str | os.PathLike, zip_path: str | os.PathLike) -> Path:
    """Zip the inference files of a results folder (json files and final checkpoints).

    The zip holds one top folder named after the results folder; :func:`load_model` and
    :func:`extract_model_zip` accept it, and so does ``nnUNetv2_install_pretrained_model_from_zip``
    when the folder sits in the usual DatasetXXX/Trainer__Plans__config layout.
    """
    folder = find_model_folder(model_folder)
    zip_path = Path(zip_path)
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    top = folder.name
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in ("dataset.json", "plans.json", "dataset_fingerprint.json", "MODEL_CARD.md"):
            if (folder / name).is_file():
                zf.write(folder / name, f"{top}/{name}")
        for fold in _fold_dirs(folder):
            zf.write(fold / CHECKPOINT_NAME, f"{top}/{fold.name}/{CHECKPOINT_NAME}")
    return zip_path


# ---------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------
@dataclass
class SegmentationModel:
    """An nnU-Net v2 predictor loaded once, applied to :class:`Volume` objects.

    Use :func:`load_model` to make one. ``labels`` maps class names to ids (from the
    model's dataset.json); ``predict`` returns uint8 maps with those ids.
    """

    folder: Path
    device: object  # torch.device
    labels: dict[str, int]
    configuration: str
    target_spacing_zyx_mm: tuple[float, float, float]
    predictor: object = field(repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def predict(self, volume: Volume) -> np.ndarray:
        """Segment a CT volume.

        Parameters
        ----------
        volume : Volume
            CT in HU, array (z, y, x), any orientation and spacing (mm).

        Returns
        -------
        ndarray of uint8, shape (Z, Y, X)
            Class ids on exactly the input grid.
        """
        return self._run(volume, False)[0]

    def predict_with_foreground(self, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
        """Segment a CT volume; also return the network's foreground probability.

        Returns
        -------
        labels : ndarray of uint8, shape (Z, Y, X)
            As :meth:`predict`.
        foreground : ndarray of float32, shape (Z, Y, X)
            1 minus the softmax probability of class 0 (background), on the input grid:
            its 0.5 level places the bone surface between voxel centres
            (:func:`pengwin_demo.recovery.smooth_labels_onto` uses it).
        """
        return self._run(volume, True)

    def _run(self, volume: Volume, with_foreground: bool) -> tuple[np.ndarray, np.ndarray | None]:
        if volume.array.ndim != 3 or min(volume.shape) < 1:
            raise ValueError(f"the model needs a 3D CT, got an array of shape {volume.shape}")
        image = volume.to_sitk()
        oriented = sitk.DICOMOrient(image, CANONICAL_ORIENTATION)
        array = sitk.GetArrayFromImage(oriented).astype(np.float32, copy=False)[None]
        spacing_zyx = [float(s) for s in oriented.GetSpacing()[::-1]]
        with self._lock:  # nnU-Net predictors are not thread safe
            out = self.predictor.predict_single_npy_array(array, {"spacing": spacing_zyx}, None, None,
                                                          with_foreground)
        seg, probabilities = out if with_foreground else (out, None)
        code = _orientation_code(image)

        def back_onto_input(arr: np.ndarray, interpolation: str) -> np.ndarray:
            img = sitk.GetImageFromArray(arr)
            img.CopyInformation(oriented)
            back = Volume.from_sitk(sitk.DICOMOrient(img, code))
            if not back.same_grid(volume, tol_mm=1e-3):
                back = resample_onto(back, volume, interpolation)
            return np.ascontiguousarray(back.array)

        labels = back_onto_input(np.asarray(seg).astype(np.uint8, copy=False), "nearest").astype(np.uint8, copy=False)
        if probabilities is None:
            return labels, None
        fg = 1.0 - np.asarray(probabilities[0], dtype=np.float32)
        return labels, back_onto_input(fg.astype(np.float32, copy=False), "linear").astype(np.float32, copy=False)

    __call__ = predict


def _orientation_code(image: sitk.Image) -> str:
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())


_CACHE: dict[tuple, SegmentationModel] = {}
_CACHE_LOCK = threading.Lock()


def load_model(
    path_or_zip: str | os.PathLike,
    device: str = "auto",
    *,
    expected: str | None = None,
    use_mirroring: bool = False,
    tile_step_size: float = 0.5,
) -> SegmentationModel:
    """Load an nnU-Net v2 model once (later calls with the same arguments reuse it).

    Parameters
    ----------
    path_or_zip : path-like
        An nnU-Net results folder (or a folder holding exactly one), or a zip of one.
    device : str
        "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N".
    expected : {"anatomy", "abbc"}, optional
        Check that the model's classes are those of this stage (see ``EXPECTED_LABELS``).
    use_mirroring : bool
        Mirror test-time augmentation (up to 8x slower; off by default, as the PENGWIN
        winners ran).
    tile_step_size : float
        Sliding-window step as a fraction of the patch size (0.5 = nnU-Net default).

    Raises
    ------
    ModelError
        Missing, incomplete (no checkpoint, unreadable JSON) or incompatible model (wrong
        number of input channels, other classes than ``expected``, unknown trainer class).
    """
    path = Path(path_or_zip)
    if not path.exists():
        raise ModelError(
            f"model not found: {path}. Give an nnU-Net results folder or a model zip "
            "(or use the bundled demo models)."
        )
    folder = extract_model_zip(path) if path.is_file() else find_model_folder(path)
    torch_device = resolve_device(device)
    checkpoints = [f / CHECKPOINT_NAME for f in _fold_dirs(folder)]
    key = (
        str(folder.resolve()), tuple(c.stat().st_mtime_ns for c in checkpoints), str(torch_device),
        expected, use_mirroring, float(tile_step_size),
    )
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        model = _build(folder, torch_device, expected, use_mirroring, tile_step_size)
        _CACHE[key] = model
        return model


def clear_model_cache() -> None:
    """Forget all loaded models (frees their memory once no one else holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _read_json(path: Path, folder: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ModelError(f"{folder.name}: {path.name} is unreadable ({err}); the model is incomplete.") from None


def _check_labels(name: str, labels: dict[str, int], expected: str) -> None:
    """Raise ModelError when a model's classes cannot serve as stage ``expected``."""
    want = EXPECTED_LABELS[expected]
    have = {k.lower(): v for k, v in labels.items()}
    if sorted(have.values()) != sorted(want.values()):
        raise ModelError(
            f"{name}: has classes {labels}, but the {expected} stage needs {want}. Give an {expected} model."
        )
    for other, other_labels in EXPECTED_LABELS.items():
        if other != expected and have == other_labels:
            raise ModelError(f"{name}: is an {other} model ({labels}); the {expected} stage needs {want}.")
    if have != want:
        log.warning("%s: class names %s differ from the expected %s; assuming the same ids mean the same",
                    name, labels, want)


def _build(folder: Path, device, expected: str | None, use_mirroring: bool, tile_step_size: float):
    dataset = _read_json(folder / "dataset.json", folder)
    plans = _read_json(folder / "plans.json", folder)
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    if len(channels) != 1:
        raise ModelError(
            f"{folder.name}: the model expects {len(channels)} input channels ({channels}); "
            "this pipeline feeds one CT channel. Use a single-channel CT model."
        )
    # nnU-Net's "ignore" label marks training voxels left out of the loss; the network has no output for it
    labels = {str(k): int(v) for k, v in (dataset.get("labels") or {}).items()
              if not isinstance(v, list) and str(k).lower() != "ignore"}
    if expected is not None:
        _check_labels(folder.name, labels, expected)
    import contextlib
    import io as _io

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    with contextlib.redirect_stdout(_io.StringIO()):  # it prints a CPU notice
        predictor = nnUNetPredictor(
            tile_step_size=tile_step_size,
            use_gaussian=True,
            use_mirroring=use_mirroring,
            perform_everything_on_device=device.type == "cuda",
            device=device,
            verbose=False,
            verbose_preprocessing=False,
            allow_tqdm=False,
        )
    folds = [p.name[len("fold_"):] for p in _fold_dirs(folder)]
    parameters = []
    try:
        for i, fold in enumerate(folds):
            ckpt = torch.load(folder / f"fold_{fold}" / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
            if i == 0:
                trainer_name = ckpt["trainer_name"]
                configuration = ckpt["init_args"]["configuration"]
                mirror_axes = ckpt.get("inference_allowed_mirroring_axes")
            parameters.append(ckpt["network_weights"])
        plans_manager = PlansManager(plans)
        configuration_manager = plans_manager.get_configuration(configuration)
        trainer_class = _trainer_class(trainer_name)
        network = trainer_class.build_network_architecture(
            plans_manager, configuration_manager,
            determine_num_input_channels(plans_manager, configuration_manager, dataset),
            plans_manager.get_label_manager(dataset).num_segmentation_heads,
            enable_deep_supervision=False,
        )
        network.load_state_dict(parameters[0])
        predictor.manual_initialization(
            network, plans_manager, configuration_manager, parameters, dataset, trainer_name, mirror_axes
        )
    except ModelError:
        raise
    except (KeyError, RuntimeError, AttributeError, TypeError, ValueError, EOFError, OSError) as err:
        text = str(err).splitlines()[0][:300] if str(err) else ""
        raise ModelError(
            f"{folder.name}: cannot load the nnU-Net model ({type(err).__name__}: {text}). The "
            "checkpoint may be truncated or come from another nnU-Net version or configuration."
        ) from err
    network.to(device)
    network.eval()
    spacing = tuple(float(s) for s in configuration_manager.spacing)
    log.info("loaded model %s (%s, folds %s) on %s", folder.name, configuration, folds, device)
    return SegmentationModel(folder, device, labels, configuration, spacing, predictor)


_OWN_TRAINERS = {"nnUNetTrainerDemo": "nnUNetTrainer"}
"""Trainers of this package's training runs (:mod:`pengwin_demo.training`), built when a run
starts, and the nnU-Net trainer that builds the same network: all inference asks of them.
A checkpoint in a training work folder names them; exported models name the base one."""

_TRAINER_MODULES = (
    "nnunetv2.training.nnUNetTrainer.nnUNetTrainer",
    "nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring",
    "nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs",
    "nnunetv2.training.nnUNetTrainer.variants.training_length.nnUNetTrainer_Xepochs_NoMirroring",
)


def _trainer_class(name: str):
    """The trainer class a checkpoint names (it builds the network from the plans).

    The usual places are tried first: nnU-Net's own recursive search imports every trainer
    module, and one broken optional dependency (e.g. timm/torchvision for Primus) breaks it.
    """
    import importlib

    name = _OWN_TRAINERS.get(name, name)
    for module_name in _TRAINER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, name):
            return getattr(module, name)
    try:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

        found = recursive_find_trainer_class_by_name(name)
    except Exception as err:  # any import error inside nnU-Net's search
        raise ModelError(
            f"the model needs trainer class {name!r}, and searching nnU-Net for it failed "
            f"({type(err).__name__}: {str(err)[:200]}). Install the package defining it."
        ) from err
    if found is None:
        raise ModelError(f"the model needs trainer class {name!r}, which is not installed.")
    return found
