"""The learned stages: nnU-Net v2 models (bundled demo models or your own) and TotalSegmentator.

Stage 1 (anatomy: 0 background, 1 sacrum, 2 left hip, 3 right hip) is the bundled anatomy
model, any nnU-Net anatomy model, or TotalSegmentator; :func:`anatomy_model` picks the
backend and falls back to the bundled anatomy model with a warning when TotalSegmentator's
weights are not installed. Stage 2 (ABBC: 0 background, 1 boundary, 2 core, 3 border) is
:func:`abbc_model`.

- :mod:`.nnunet`: loading nnU-Net results folders and zips (:func:`load_model`).
- :mod:`.totalsegmentator`: the TotalSegmentator backend.
- :mod:`.devices`: "auto"/"cpu"/"cuda" -> ``torch.device``.
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

from ..errors import ModelError
from .devices import resolve_device
from .nnunet import (
    EXPECTED_LABELS,
    MODEL_KINDS,
    SegmentationModel,
    clear_model_cache,
    export_model_zip,
    extract_model_zip,
    find_model_folder,
    load_model,
)
from .totalsegmentator import (
    TotalSegmentatorAnatomy,
    totalsegmentator_missing_weights,
    totalsegmentator_weights_dir,
)

__all__ = [
    "EXPECTED_LABELS", "MODEL_KINDS", "SegmentationModel", "TotalSegmentatorAnatomy",
    "abbc_model", "anatomy_model", "bundled_model_path", "bundled_models_dir", "bundled_refine_path",
    "clear_model_cache", "export_model_zip", "extract_model_zip", "find_model_folder", "load_model", "resolve_device",
    "totalsegmentator_missing_weights", "totalsegmentator_weights_dir",
]

log = logging.getLogger(__name__)


def bundled_models_dir() -> Path:
    """Folder of the bundled demo models: package data, one nnU-Net results folder per kind.

    Found through :mod:`importlib.resources`, so it is the same in a source checkout, an
    editable install and an installed wheel.
    """
    root = resources.files(__name__).joinpath("bundled")
    if not isinstance(root, Path):  # nnU-Net and torch read checkpoints from real files
        raise ModelError(
            f"the bundled models are inside an archive ({root}); install the package "
            "as files (`pip install .` from the project folder), not as a zipped package."
        )
    return root


def bundled_model_path(kind: str) -> Path:
    """Folder of the bundled demo model for ``kind`` ("anatomy" or "abbc").

    The demo models were trained on synthetic phantoms only (see their MODEL_CARD.md);
    they are not for clinical use.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {MODEL_KINDS}, got {kind!r}")
    path = bundled_models_dir() / kind
    if not (path / "plans.json").is_file():
        raise ModelError(
            f"the bundled {kind} model is missing ({path}). Reinstall the project, or rebuild "
            "it with `python -m pengwin_demo train-demo-models`."
        )
    return path


REFINE_FOLDER = "anatomy_refine"
"""Bundled folder of the refining anatomy model (an anatomy model run finer on the pelvis
box; see :class:`pengwin_demo.pipeline.Pipeline`)."""


def bundled_refine_path() -> Path | None:
    """Folder of the bundled refining anatomy model, or None when none is bundled."""
    path = bundled_models_dir() / REFINE_FOLDER
    return path if (path / "plans.json").is_file() else None


def _totalsegmentator_ready() -> bool:
    """Whether TotalSegmentator is installed with the weights the anatomy backend needs."""
    try:
        return not totalsegmentator_missing_weights()
    except (ModelError, ImportError, KeyError):
        return False


def anatomy_model(backend: str = "auto", device: str = "auto"):
    """Stage 1 model and the warnings a user should see.

    Parameters
    ----------
    backend : str
        "auto" (TotalSegmentator where its weights are installed, else the bundled model,
        without a warning), "bundled" (the demo model), "totalsegmentator" (falls back to
        the bundled model with a warning), or a path to an nnU-Net anatomy model folder / zip.
    device : str
        See :func:`resolve_device`.

    Returns
    -------
    (model, warnings)
        ``model.predict(volume) -> uint8 anatomy map``; ``warnings`` is a list of strings
        (e.g. TotalSegmentator unavailable, fell back to the bundled model).
    """
    warnings: list[str] = []
    if backend == "auto":
        backend = "totalsegmentator" if _totalsegmentator_ready() else "bundled"
    if backend == "totalsegmentator":
        try:
            return TotalSegmentatorAnatomy(device=device), warnings
        except ModelError as err:
            msg = f"TotalSegmentator unavailable, using the bundled demo anatomy model instead: {err}"
            log.warning(msg)
            warnings.append(msg)
            backend = "bundled"
    if backend == "bundled":
        return load_model(bundled_model_path("anatomy"), device, expected="anatomy"), warnings
    return load_model(backend, device, expected="anatomy"), warnings


def abbc_model(path: str | os.PathLike | None = None, device: str = "auto") -> SegmentationModel:
    """Stage 2 model: the bundled demo ABBC model, or the nnU-Net ABBC model at ``path``."""
    return load_model(path if path is not None else bundled_model_path("abbc"), device, expected="abbc")
