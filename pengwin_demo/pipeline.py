"""The one pipeline behind the CLI, the app and the watcher.

load -> Stage 1 (anatomy) -> Stage 2 (ABBC) -> instance recovery -> outputs::

    from pengwin_demo.pipeline import Pipeline
    result = Pipeline(device="auto").run("ct.nii.gz", "out/", progress=print)
    result.paths["stl"], result.report["fragments"], result.warnings

Outputs in ``out_dir``: ``labels.nii.gz`` (PENGWIN 0-30 on the input's exact grid),
``fragments/<label>_<bone>.stl`` (binary STL, LPS mm), ``scene.glb`` (coloured, for
viewing), ``report.json`` and, on request for DICOM input, ``segmentation.dcm``.

Models are loaded lazily, once per process (:func:`pengwin_demo.models.load_model` caches
them, and a :class:`Pipeline` keeps its own), and every run holds one process-wide lock,
so the app and the inbox watcher in one process take turns instead of doubling memory.

Resolution: each model runs on the CT resampled (linear) to the model's own spacing;
on the CPU a grid larger than ``cpu_max_voxels`` is coarsened further (a warning says
so). Recovery runs on the ABBC model's grid and the label map goes back onto the input
grid exactly (nearest neighbour), so ``labels.nii.gz`` overlays the input voxel for voxel.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .bone_region import (STAGE2_MARGIN_MM, STAGE2_MASK_DILATION_MM, anatomy_onto, bone_box_on,
                          mask_outside_bones)
from .errors import InputError, ModelError
from .plausibility import (MAX_GAP_MM, MIN_BONE_ML, MIN_PEAK_HU, AnatomyCheck, check_anatomy,
                           drop_pieces_without_cortex, keep_near_pelvis)
from .recovery import (MARROW_CLOSE_MM, MAX_CRUMB_ML, MIN_FRAGMENT_MEDIAN_HU, cut_vertebra_off_sacrum,
                       drop_isolated_crumbs, drop_soft_tissue_fragments, fill_bone_cavities, fill_marrow,
                       nearest_onto, smooth_labels_onto)
from .volume import Volume, resample_to_spacing

log = logging.getLogger(__name__)

__all__ = [
    "Pipeline",
    "PipelineResult",
    "STAGES",
    "get_pipeline",
    "THICK_SLICE_MM",
    "MIN_BONE_ML",
]

ProgressFn = Callable[[str, float], None]

STAGES: dict[str, str] = {
    "load": "Reading the CT",
    "models": "Loading the models",
    "anatomy": "Stage 1: finding sacrum and hip bones",
    "abbc": "Stage 2: fragment cores, boundaries and fracture zones",
    "recovery": "Separating fragments",
    "labels": "Writing the label map",
    "meshes": "Building 3D meshes",
    "dicom_seg": "Writing DICOM SEG",
    "report": "Writing the report",
    "done": "Done",
}
"""Stage keys passed to ``progress(stage, fraction)``, with a title for display."""

_STAGE_START = {
    "load": 0.0, "models": 0.06, "anatomy": 0.08, "abbc": 0.35, "recovery": 0.65, "labels": 0.78,
    "meshes": 0.82, "dicom_seg": 0.93, "report": 0.97, "done": 1.0,
}

THICK_SLICE_MM = 2.5
"""Slices thicker than this get a warning: thin fracture lines may be missed."""

DEFAULT_CPU_MAX_VOXELS = 6_000_000
"""On the CPU, a model's input grid is coarsened until it holds at most this many voxels.

Measured with the bundled demo network on 2 shared cores: about 11 s per million voxels
(nnU-Net sliding window, step 0.5), so two models stay well inside the 90 s budget."""

ANATOMY_REFINE_MARGIN_MM = 30.0
"""Margin around the first anatomy model's bone box in which the refining anatomy model
runs, mm: room for bone the coarse map missed at its edge, and context (the lowest lumbar
vertebra, the femoral heads) for the refining model to tell the pelvis from."""

_RUN_LOCK = threading.Lock()  # one run at a time per process (memory, CPU)


@dataclass
class PipelineResult:
    """What :meth:`Pipeline.run` produced.

    Attributes
    ----------
    out_dir : Path
        Folder holding every output.
    labels : Volume
        PENGWIN label map (uint8 0-30) on the input's exact grid.
    report : dict
        The content of ``report.json``.
    paths : dict
        ``labels`` (Path), ``stl`` (list of Path), ``glb`` (Path or None when there are no
        fragments), ``report`` (Path), ``seg`` (Path or None).
    timings : dict
        Seconds per stage, and ``total``.
    warnings : list of str
        Messages for the user (also in the report).
    ct : Volume
        The input CT as loaded (int16 HU), on the same grid as ``labels``.
    """

    out_dir: Path
    labels: Volume
    report: dict[str, Any]
    paths: dict[str, Any]
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    ct: Volume | None = None
    """The input CT as loaded (int16 HU, the grid ``labels`` lies on)."""
    anatomy: Volume | None = None
    """Stage 1's bone map (0 background, 1 sacrum, 2 left hip, 3 right hip) on the grid it
    was made on (the anatomy model's, or the refining model's on the pelvis box)."""

    @property
    def fragments(self) -> list[dict[str, Any]]:
        """Per-fragment rows of the report (label, bone, volume_ml, centroid, bbox...)."""
        return self.report.get("fragments", [])


class _Stopwatch:
    def __init__(self, progress: ProgressFn | None):
        self.progress = progress
        self.timings: dict[str, float] = {}
        self._t0 = time.perf_counter()
        self._stage: str | None = None
        self._start = 0.0

    def stage(self, name: str) -> None:
        self._close()
        self._stage, self._start = name, time.perf_counter()
        log.debug("%s", STAGES.get(name, name))
        if self.progress is not None:
            self.progress(name, _STAGE_START.get(name, 0.0))

    def _close(self) -> None:
        if self._stage is not None:
            self.timings[self._stage] = self.timings.get(self._stage, 0.0) + (
                time.perf_counter() - self._start
            )
            self._stage = None

    def finish(self) -> dict[str, float]:
        self._close()
        self.timings["total"] = time.perf_counter() - self._t0
        if self.progress is not None:
            self.progress("done", 1.0)
        return self.timings


def _model_info(model: Any, role: str, backend: str) -> dict[str, Any]:
    info: dict[str, Any] = {"role": role, "backend": backend, "class": type(model).__name__}
    folder = getattr(model, "folder", None)
    if folder is not None:
        folder = Path(folder)
        info["name"] = folder.name
        info["configuration"] = getattr(model, "configuration", None)
        spacing = getattr(model, "target_spacing_zyx_mm", None)
        info["target_spacing_zyx_mm"] = [float(s) for s in spacing] if spacing else None
        info["version"] = _folder_version(folder)
    elif backend == "totalsegmentator":
        try:
            from importlib.metadata import version

            info["name"] = "TotalSegmentator total (sacrum, hip_left, hip_right)"
            info["version"] = version("TotalSegmentator")
        except Exception:  # pragma: no cover - metadata missing
            info["version"] = None
    else:
        info["name"] = getattr(model, "name", type(model).__name__)
        info["version"] = getattr(model, "version", None)
    return info


def _finer(model: Any, than: Any) -> bool:
    """Whether ``model`` runs at a finer spacing than ``than`` (False where either has none,
    e.g. TotalSegmentator, which resamples by itself)."""
    mine, theirs = (getattr(m, "target_spacing_zyx_mm", None) for m in (model, than))
    return mine is not None and theirs is not None and float(np.prod(mine)) < float(np.prod(theirs))


def _folder_version(folder: Path) -> str | None:
    """A model's version: ``version`` from dataset.json / MODEL_CARD, else checkpoint date."""
    import json

    try:
        meta = json.loads((folder / "dataset.json").read_text())
        if meta.get("version"):
            return str(meta["version"])
    except (OSError, ValueError):
        pass
    recipe = ""
    try:  # bundled demo models record how they were trained
        train = json.loads((folder / "training.json").read_text())
        if train.get("recipe"):
            recipe = f"{train['recipe']} recipe, {train.get('epochs', '?')} epochs, "
    except (OSError, ValueError):
        pass
    ckpts = sorted(folder.glob("fold_*/checkpoint_final.pth"))
    if ckpts:
        stamp = time.gmtime(ckpts[0].stat().st_mtime)
        return recipe + "checkpoint " + time.strftime("%Y-%m-%dT%H:%MZ", stamp)
    return recipe.rstrip(", ") or None


@dataclass
class _Loaded:
    """Stand-in for dicom.CTInput when a model object is fed a Volume directly."""

    volume: Volume
    source_kind: str = "volume"
    series: Any = None
    dicom_headers: Any = None
    warnings: list[str] = field(default_factory=list)
    name: str = "ct"


@dataclass
class _Stage1:
    """What Stage 1 gives the rest of a run."""

    anatomy: Volume
    """0 background, 1 sacrum, 2 left hip, 3 right hip, on ``grid``."""
    grid: Volume
    """The CT on the grid Stage 1 ran on."""
    info: dict[str, Any]
    """The report's ``models.anatomy`` entry."""
    dropped_ml: float
    """Bone dropped as far from the pelvis, mL."""
    dropped_no_cortex_ml: float
    """Stage-1 pieces dropped for want of a cortex (contrast, not bone), mL."""
    plausible: AnatomyCheck
    """:func:`pengwin_demo.plausibility.check_anatomy`'s verdict."""
    voxels: int
    """Bone voxels of ``anatomy``."""
    foreground: np.ndarray | None = None
    """The anatomy model's foreground probability on ``grid``, or None (a user's map, or a
    model that offers none)."""


@dataclass
class _Found:
    """The fragments of a run, before they go back onto the input grid."""

    labels: Volume
    """PENGWIN labels on the ABBC grid (all 0 on the CT grid when Stage 1 refused the scan)."""
    abbc_grid: Volume | None
    """The (masked) CT on the ABBC model's grid; None when Stage 2 did not run."""
    abbc_foreground: np.ndarray | None
    """The ABBC model's foreground probability on ``abbc_grid``, or None."""
    no_fragments: str | None
    """Why there are no fragments (the sentence shown to the user), or None."""


class Pipeline:
    """CT -> PENGWIN fragments, meshes, report (and DICOM SEG).

    Parameters
    ----------
    device : str
        "auto" (CUDA when available, else CPU), "cpu", "cuda" or "cuda:N".
    anatomy : str or model
        Stage 1: "auto" (default: TotalSegmentator where its weights are installed, else the
        bundled model; the report says which ran), "bundled" (demo model),
        "totalsegmentator" (falls back to the bundled model with a warning when its weights
        are missing), a path to an nnU-Net anatomy model folder or zip, or any object with
        ``predict(Volume) -> uint8 array`` on that grid.
    fragments : str or model
        Stage 2 (ABBC): "bundled", a path to an nnU-Net ABBC model, or an object as above.
    cpu_max_voxels : int or None
        On the CPU, coarsen a model's input grid to at most this many voxels (None: never).
    min_bone_ml : float
        Less Stage-1 bone than this means "no pelvic bone found"; 0 turns off every check
        that relies on HU (for synthetic intensities), the drop of pieces without a cortex
        and of soft-tissue fragments (:func:`pengwin_demo.recovery.drop_soft_tissue_fragments`)
        included.
    recovery_kwargs : dict, optional
        Passed to :func:`pengwin_demo.recovery.recover_fragments`.
    smooth_labels : bool
        Take the fragments from the model grid to the CT grid with smooth surfaces
        (:func:`pengwin_demo.recovery.smooth_labels_onto`, default) rather than nearest
        neighbour (2 mm blocks with the demo model); the Stage-1 map onto Stage 2's grid too
        (:func:`pengwin_demo.bone_region.anatomy_onto`).
    stage2_margin_mm : float
        Stage 2 runs on the CT cropped to the Stage-1 bone box plus this margin, mm
        (:data:`pengwin_demo.bone_region.STAGE2_MARGIN_MM`).
    stage2_mask_dilation_mm : float or None
        Before Stage 2, voxels farther than this from Stage-1 bone are set to 0 HU, as in
        the bone-masked training data (:mod:`pengwin_demo.bone_region`); None: no masking.
    fill_cavities : bool
        Give background enclosed by a bone to its nearest fragment
        (:func:`pengwin_demo.recovery.fill_bone_cavities`), as bones are solid in expert labels;
        also the fatty marrow a bone encloses once closed with a ball of ``marrow_close_mm``
        where Stage 1 marks that bone (:func:`pengwin_demo.recovery.fill_marrow`).
    marrow_close_mm : float
        Radius of that closing, mm (:data:`pengwin_demo.recovery.MARROW_CLOSE_MM`; 0: only
        3D cavities are filled).
    drop_crumbs : bool
        Drop fragments of at most 2 mL lying more than 3 mm from every other fragment
        (:func:`pengwin_demo.recovery.drop_isolated_crumbs`): stray pieces, not fragments.
    cut_vertebra : bool
        Cut off a sacrum fragment the lumbar vertebral body that rests on it across a disc
        (:func:`pengwin_demo.recovery.cut_vertebra_off_sacrum`; HU evidence, so not with
        ``min_bone_ml`` 0).
    require_pelvis : bool
        Refuse a scan in which the anatomy model finds fewer than two of the three bones
        (:func:`pengwin_demo.plausibility.check_anatomy`); False lets a single bone through.
        A user's anatomy map is trusted to say which bones there are.
    refine_anatomy : str or model
        A second anatomy model run on the box of the bones the first one found (plus
        :data:`ANATOMY_REFINE_MARGIN_MM`), whose map replaces the first one's: "auto" (the
        bundled refining model, where one is bundled and runs finer than the anatomy
        model; TotalSegmentator is not refined), "none", a path to an nnU-Net anatomy
        model folder, or an object with ``predict``. Not run on a user's anatomy map or a
        refused scan.

    Notes
    -----
    Nothing is loaded until the first :meth:`run` (or :meth:`load_models`); a missing
    bundled model raises :class:`~pengwin_demo.errors.ModelError` then, with what to do.
    """

    def __init__(
        self,
        device: str = "auto",
        anatomy: Any = "auto",
        fragments: Any = "bundled",
        *,
        refine_anatomy: Any = "auto",
        cpu_max_voxels: int | None = DEFAULT_CPU_MAX_VOXELS,
        min_bone_ml: float = MIN_BONE_ML,
        recovery_kwargs: dict[str, Any] | None = None,
        smooth_labels: bool = True,
        stage2_margin_mm: float = STAGE2_MARGIN_MM,
        stage2_mask_dilation_mm: float | None = STAGE2_MASK_DILATION_MM,
        fill_cavities: bool = True,
        marrow_close_mm: float = MARROW_CLOSE_MM,
        drop_crumbs: bool = True,
        cut_vertebra: bool = True,
        require_pelvis: bool = True,
    ):
        if stage2_margin_mm < 0 or (stage2_mask_dilation_mm is not None and stage2_mask_dilation_mm < 0):
            raise ValueError("stage2_margin_mm and stage2_mask_dilation_mm must be >= 0")
        self.device = device
        self.anatomy = anatomy
        self.fragments = fragments
        self.refine_anatomy = refine_anatomy
        self.cpu_max_voxels = cpu_max_voxels
        self.min_bone_ml = float(min_bone_ml)
        self.recovery_kwargs = dict(recovery_kwargs or {})
        self.smooth_labels = bool(smooth_labels)
        self.stage2_margin_mm = float(stage2_margin_mm)
        self.stage2_mask_dilation_mm = stage2_mask_dilation_mm
        self.fill_cavities = bool(fill_cavities)
        if marrow_close_mm < 0:
            raise ValueError(f"marrow_close_mm must be >= 0, got {marrow_close_mm}")
        self.marrow_close_mm = float(marrow_close_mm)
        self.drop_crumbs = bool(drop_crumbs)
        self.cut_vertebra = bool(cut_vertebra)
        self.require_pelvis = bool(require_pelvis)
        self._models: dict[str, Any] = {}
        self._info: dict[str, Any] = {}
        self._model_warnings: list[str] = []
        self._load_lock = threading.Lock()

    # -- models -----------------------------------------------------------------------
    def load_models(self, kinds: tuple[str, ...] = ("anatomy", "anatomy_refine", "abbc")) -> dict[str, Any]:
        """Load (once each) and return ``{"anatomy": model, "anatomy_refine": model or None,
        "abbc": model}`` (those of ``kinds``; the refining model needs the anatomy model, which
        is loaded with it).

        Raises
        ------
        ModelError
            A model is missing, incomplete or of the wrong kind.
        """
        loaders = {"anatomy": self._load_anatomy, "anatomy_refine": self._load_refine}
        with self._load_lock:
            for kind in (("anatomy",) if "anatomy_refine" in kinds else ()) + tuple(kinds):
                if kind not in self._models:
                    self._models[kind] = loaders.get(kind, self._load_abbc)()
            return {k: self._models[k] for k in kinds}

    def _load_anatomy(self):
        from . import models as M

        if hasattr(self.anatomy, "predict"):
            anatomy, backend, warnings = self.anatomy, "custom", []
        else:
            anatomy, warnings = M.anatomy_model(str(self.anatomy), self.device)
            backend = "totalsegmentator" if isinstance(anatomy, M.TotalSegmentatorAnatomy) else (
                "bundled" if str(self.anatomy) in ("auto", "bundled", "totalsegmentator") else "nnunet"
            )
        self._model_warnings = list(warnings)
        self._info["anatomy"] = _model_info(anatomy, "anatomy", backend)
        return anatomy

    def _load_refine(self):
        """The refining anatomy model (see ``refine_anatomy``), or None."""
        from . import models as M

        choice = self.refine_anatomy
        if hasattr(choice, "predict"):
            model, backend = choice, "custom"
        elif choice is None or str(choice) == "none":
            return None
        elif str(choice) == "auto":
            path = M.bundled_refine_path()
            if path is None:
                return None
            model, backend = M.load_model(path, self.device, expected="anatomy"), "bundled"
            if not _finer(model, self._models["anatomy"]):
                return None
        else:
            model, backend = M.load_model(choice, self.device, expected="anatomy"), "nnunet"
        self._info["anatomy_refine"] = _model_info(model, "anatomy", backend)
        return model

    def _load_abbc(self):
        from . import models as M

        if hasattr(self.fragments, "predict"):
            abbc, backend = self.fragments, "custom"
        else:
            path = None if str(self.fragments) == "bundled" else self.fragments
            abbc = M.abbc_model(path, self.device)
            backend = "bundled" if path is None else "nnunet"
        self._info["fragments"] = _model_info(abbc, "abbc", backend)
        return abbc

    @property
    def model_info(self) -> dict[str, Any]:
        """Names, backends, versions and spacings of the loaded models (loads them)."""
        self.load_models()
        return dict(self._info)

    @property
    def model_warnings(self) -> list[str]:
        """Warnings from loading the models (e.g. TotalSegmentator fell back to bundled)."""
        self.load_models()
        return list(self._model_warnings)

    def device_name(self) -> str:
        """The resolved device ("cpu", "cuda", "cuda:0"...)."""
        try:
            from .models import resolve_device

            return str(resolve_device(self.device))
        except ModelError:
            raise
        except Exception:  # pragma: no cover - torch missing
            return str(self.device)

    # -- the run ----------------------------------------------------------------------
    def run(
        self,
        input_path: str | os.PathLike | Volume,
        out_dir: str | os.PathLike,
        *,
        progress: ProgressFn | None = None,
        series_uid: str | None = None,
        dicom_seg: bool = False,
        mesh_detail: str = "normal",
        anatomy_map: str | os.PathLike | Volume | None = None,
        allow_non_ct: bool = False,
    ) -> PipelineResult:
        """Segment one CT and write every output into ``out_dir``.

        Parameters
        ----------
        input_path : path-like or Volume
            Anything :func:`pengwin_demo.dicom.load_ct` accepts (NIfTI/MHA/NRRD file,
            DICOM folder, zip, multi-frame DICOM file), or a CT :class:`Volume` (int16 HU).
        out_dir : path-like
            Output folder (created; existing outputs of the same names are replaced).
        progress : callable, optional
            ``progress(stage, fraction)`` at the start of every stage (keys of
            :data:`STAGES`; ``fraction`` of the whole run, 0-1) and ``("done", 1.0)``.
        series_uid : str, optional
            DICOM SeriesInstanceUID to use instead of the automatic choice.
        dicom_seg : bool
            Also write ``segmentation.dcm`` when possible: DICOM input with at least one
            fragment (otherwise ``paths["seg"]`` is None, without a warning).
        mesh_detail : {"fine", "normal", "coarse"}
            Mesh smoothing/decimation preset (see :mod:`pengwin_demo.outputs.meshes`).
        anatomy_map : path-like or Volume, optional
            Stage 1 from this map instead of the anatomy model: 0 background, 1 sacrum,
            2 left hip, 3 right hip, on any grid covering the CT (resampled nearest); see
            :func:`pengwin_demo.anatomy_map.read_anatomy_map`.
        allow_non_ct : bool
            Segment an input whose values do not look like CT in HU (refused by default,
            see :mod:`pengwin_demo.ct_intensity`); a warning says so.

        Returns
        -------
        PipelineResult

        Raises
        ------
        InputError
            The input cannot be used (message says why and what to do).
        ModelError
            A model is missing or unusable.
        """
        from .outputs import MESH_DETAILS

        if mesh_detail not in MESH_DETAILS:
            raise InputError(f"mesh detail must be one of {sorted(MESH_DETAILS)}, got {mesh_detail!r}")
        out_dir = Path(out_dir)
        with _RUN_LOCK:
            return self._run(input_path, out_dir, progress, series_uid, dicom_seg, mesh_detail,
                             anatomy_map=anatomy_map, allow_non_ct=allow_non_ct)

    def _run(self, input_path, out_dir, progress, series_uid, dicom_seg, mesh_detail, *,
             anatomy_map=None, allow_non_ct=False) -> PipelineResult:
        clock = _Stopwatch(progress)
        warnings: list[str] = []
        clock.stage("load")
        ct_input = self._load_input(input_path, series_uid, allow_non_ct)
        ct: Volume = ct_input.volume
        warnings.extend(ct_input.warnings or [])
        thick = _slice_thickness_mm(ct, ct_input)
        if thick > THICK_SLICE_MM:
            warnings.append(
                f"slices are {thick:.1f} mm thick (more than {THICK_SLICE_MM} mm): thin "
                "fracture lines may be missed and small fragments merged; a reconstruction "
                "with thinner slices (1 mm or less) gives better results"
            )
        clock.stage("models")
        # a user's anatomy map replaces the anatomy model: not even loaded then
        models = self.load_models(("abbc",) if anatomy_map is not None else ("anatomy", "anatomy_refine", "abbc"))
        if anatomy_map is None:
            warnings.extend(self._model_warnings)
        device = self.device_name()

        clock.stage("anatomy")
        stage1 = self._stage1(models.get("anatomy"), ct, anatomy_map, device, warnings)
        if models.get("anatomy_refine") is not None and stage1.plausible.refusal is None:
            stage1 = self._refine(models["anatomy_refine"], ct, stage1, device, warnings)
        found = self._stage2_and_recovery(models["abbc"], ct, stage1, device, warnings, clock)
        clock.stage("labels")
        labels, label_figures = self._labels_on_input(found, ct, stage1)
        paths = self._write_outputs(ct_input, labels, out_dir, dicom_seg, mesh_detail, warnings, clock)
        clock.stage("report")
        inference = self._report_inference(device, stage1, found, mesh_detail, label_figures)
        report, timings = self._write_report(ct_input, labels, paths, out_dir, thick, stage1,
                                             inference, warnings, clock)
        for w in warnings:
            log.debug("warning: %s", w)  # front ends show result.warnings themselves
        return PipelineResult(out_dir, labels, report, paths, timings, warnings, ct, stage1.anatomy)

    # -- steps of a run -------------------------------------------------------------------
    def _stage1(self, model, ct: Volume, anatomy_map, device: str, warnings: list[str]) -> _Stage1:
        """Sacrum and hips: the anatomy model (bone far from the pelvis dropped) or the user's
        map, then the plausibility check (its refusal or warnings go to ``warnings``)."""
        if anatomy_map is None:
            anatomy, grid, foreground, no_cortex_ml, dropped_ml = self._model_anatomy(model, ct, device, warnings)
            info = self._info["anatomy"]
        else:
            anatomy, info = self._given_anatomy(anatomy_map, ct)
            grid, foreground, no_cortex_ml, dropped_ml = ct, None, 0.0, 0.0
        plausible = check_anatomy(anatomy, grid.array, min_bone_ml=self.min_bone_ml,
                                  min_bones=2 if self.require_pelvis and anatomy_map is None else 1)
        if plausible.refusal is not None:
            warnings.append(plausible.refusal)
        else:
            warnings.extend(plausible.warnings)
        return _Stage1(anatomy, grid, info, dropped_ml, no_cortex_ml, plausible,
                       int(np.count_nonzero(anatomy.array)), foreground)

    def _model_anatomy(self, model, ct: Volume, device: str, warnings: list[str], what: str = "anatomy"):
        """An anatomy model's map of ``ct`` without pieces lacking a cortex or far from the
        pelvis: (map, the CT on the model grid, foreground or None, mL dropped for want of a
        cortex, mL dropped as far away)."""
        anatomy, grid, foreground = self._predict(model, ct, device, what, warnings,
                                                  with_foreground=self.smooth_labels)
        no_cortex_ml = 0.0
        if self.min_bone_ml > 0:  # 0: synthetic intensities, no HU evidence to judge by
            anatomy, no_cortex_ml = drop_pieces_without_cortex(anatomy, ct)
        if no_cortex_ml:
            log.info("%s: %.1f mL in pieces peaking under %g HU dropped", what, no_cortex_ml, MIN_PEAK_HU)
        anatomy, dropped_ml = keep_near_pelvis(anatomy)
        if dropped_ml:
            log.info("%s: %.1f mL of bone more than %g mm from the pelvis dropped", what, dropped_ml, MAX_GAP_MM)
        return anatomy, grid, foreground, no_cortex_ml, dropped_ml

    def _refine(self, model, ct: Volume, stage1: _Stage1, device: str, warnings: list[str]) -> _Stage1:
        """Stage 1 again with the refining model, on the CT cropped to the first map's bone
        box; its map replaces the first one unless it lost a bone the first one found."""
        box = bone_box_on(stage1.anatomy, ct, ANATOMY_REFINE_MARGIN_MM)
        if box is None:
            return stage1
        anatomy, grid, foreground, no_cortex_ml, dropped_ml = self._model_anatomy(
            model, ct.crop(box), device, warnings, "refining anatomy")
        lost = sorted(set(np.unique(stage1.anatomy.array)) - set(np.unique(anatomy.array)))
        if lost:
            log.info("refining anatomy: bone(s) %s lost; the first anatomy map is kept", lost)
            return stage1
        info = {**stage1.info, "refined_by": self._info["anatomy_refine"]}
        return replace(stage1, anatomy=anatomy, grid=grid, foreground=foreground, info=info,
                       dropped_ml=stage1.dropped_ml + dropped_ml,
                       dropped_no_cortex_ml=stage1.dropped_no_cortex_ml + no_cortex_ml,
                       voxels=int(np.count_nonzero(anatomy.array)))

    def _stage2_and_recovery(self, model, ct: Volume, stage1: _Stage1, device: str,
                             warnings: list[str], clock: _Stopwatch) -> _Found:
        """ABBC classes on the Stage-1 bone region and the fragments recovered from them
        (none, on the CT grid, when Stage 1 refused the scan)."""
        if stage1.plausible.refusal is not None:
            return _Found(ct.with_array(np.zeros(ct.shape, np.uint8)), None, None, stage1.plausible.refusal)
        clock.stage("abbc")
        abbc_vol, abbc_grid, foreground, anatomy_vol = self._stage2(model, ct, stage1, device, warnings)
        clock.stage("recovery")
        from .recovery import recover_fragments

        rec = recover_fragments(abbc_vol.array, anatomy_vol.array, abbc_vol.spacing_zyx_mm,
                                **self.recovery_kwargs)
        labels_grid = abbc_vol.with_array(np.ascontiguousarray(rec.labels, dtype=np.uint8))
        if labels_grid.array.any():
            warnings.extend(rec.warnings)
            return _Found(labels_grid, abbc_grid, foreground, None)
        # Stage 1 saw bone but Stage 2 found no fragment in it: for the user this is "no
        # pelvic bone" (e.g. a vertebra taken for sacrum); recovery's technical messages go
        # to the log only
        for w in rec.warnings:
            log.info("recovery: %s", w)
        no_fragments = (
            f"no pelvic bone found: Stage 1 marked {stage1.plausible.dense_ml:.1f} mL as sacrum/hip "
            "bone, but Stage 2 found no bone fragment in the scan; check that the scan covers "
            "the pelvis. No fragments were produced."
        )
        warnings.append(no_fragments)
        return _Found(labels_grid, abbc_grid, foreground, no_fragments)

    def _labels_on_input(self, found: _Found, ct: Volume, stage1: _Stage1) -> tuple[Volume, dict[str, float]]:
        """The fragment labels on the input CT grid (smooth surfaces when asked and possible),
        cleaned by :meth:`_clean_labels`; with the report's figures of the cleaning (mL)."""
        if self.smooth_labels and not found.labels.same_grid(ct, tol_mm=1e-4):
            labels = smooth_labels_onto(found.labels, ct, foreground=found.abbc_foreground)
        else:
            labels = nearest_onto(found.labels, ct)
        labels, figures = self._clean_labels(labels, ct, stage1)
        return ct.with_array(labels), figures

    def _clean_labels(self, labels: np.ndarray, ct: Volume, stage1: _Stage1) -> tuple[np.ndarray, dict[str, float]]:
        """Vertebra cut off the sacrum, fragments that are soft tissue or contrast and isolated
        crumbs dropped (the first two on HU evidence), then cavities and fatty marrow given to
        the bones; the volume each step removed or added (mL), for the report."""
        voxel_ml = ct.voxel_volume_mm3 / 1000
        hu_evidence = self.min_bone_ml > 0  # as for Stage 1's checks
        steps = (
            ("cut_vertebra_ml", hu_evidence and self.cut_vertebra, self._cut_vertebra),
            ("dropped_soft_tissue_fragments_ml", hu_evidence, self._drop_soft_tissue),
            ("dropped_isolated_crumbs_ml", self.drop_crumbs, self._drop_crumbs),
            ("marrow_filled_ml", self.fill_cavities, self._fill_bones),
        )
        figures = {}
        for name, enabled, step in steps:
            before = np.count_nonzero(labels)
            if enabled and before:
                labels = step(labels, ct, stage1)
            figures[name] = round(abs(np.count_nonzero(labels) - before) * voxel_ml, 2)
        return labels, figures

    @staticmethod
    def _cut_vertebra(labels: np.ndarray, ct: Volume, stage1: _Stage1) -> np.ndarray:
        labels, n_cut = cut_vertebra_off_sacrum(labels, ct.array, ct.index_to_world_matrix()[:3, :3])
        if n_cut:
            log.info("%.1f mL of a lumbar vertebra cut off the sacrum", n_cut * ct.voxel_volume_mm3 / 1000)
        return labels

    @staticmethod
    def _drop_soft_tissue(labels: np.ndarray, ct: Volume, stage1: _Stage1) -> np.ndarray:
        labels, dropped = drop_soft_tissue_fragments(labels, ct.array)
        if dropped:
            log.info("%d fragment(s) with a median under %g HU or uniform values dropped as soft "
                     "tissue or contrast", len(dropped), MIN_FRAGMENT_MEDIAN_HU)
        return labels

    @staticmethod
    def _drop_crumbs(labels: np.ndarray, ct: Volume, stage1: _Stage1) -> np.ndarray:
        labels, crumbs = drop_isolated_crumbs(labels, ct.spacing_zyx_mm)
        if crumbs:
            log.info("%d fragment(s) of at most %g mL lying apart from every other fragment dropped",
                     len(crumbs), MAX_CRUMB_ML)
        return labels

    def _fill_bones(self, labels: np.ndarray, ct: Volume, stage1: _Stage1) -> np.ndarray:
        if self.marrow_close_mm:
            anatomy = anatomy_onto(stage1.anatomy, ct, foreground=stage1.foreground, smooth=self.smooth_labels)
            labels = fill_marrow(labels, anatomy, ct.spacing_zyx_mm, self.marrow_close_mm)
        return fill_bone_cavities(labels)

    def _write_outputs(self, ct_input, labels: Volume, out_dir: Path, dicom_seg: bool,
                       mesh_detail: str, warnings: list[str], clock: _Stopwatch) -> dict[str, Any]:
        """Write labels.nii.gz, the STL meshes and scene.glb, and the DICOM SEG when asked;
        outputs of an earlier run that this one does not make are removed."""
        from .io import write_like
        from .outputs import fragment_meshes, labels_present, write_scene_glb, write_stls

        out_dir.mkdir(parents=True, exist_ok=True)
        paths: dict[str, Any] = {"labels": write_like(labels.array, ct_input.volume, out_dir / "labels.nii.gz")}
        clock.stage("meshes")
        frag_dir = out_dir / "fragments"
        _clear_old_stls(frag_dir)
        meshes = fragment_meshes(labels, mesh_detail) if labels_present(labels.array) else {}
        paths["stl"] = write_stls(meshes, frag_dir) if meshes else []
        paths["glb"] = write_scene_glb(meshes, out_dir / "scene.glb") if meshes else None
        if not meshes and (out_dir / "scene.glb").exists():
            (out_dir / "scene.glb").unlink()
        paths["seg"] = None
        if dicom_seg:
            clock.stage("dicom_seg")
            paths["seg"] = self._write_seg(ct_input, labels, out_dir, warnings)
        if paths["seg"] is None and (out_dir / "segmentation.dcm").exists():
            (out_dir / "segmentation.dcm").unlink()  # stale, from an earlier run
        return paths

    def _report_inference(self, device: str, stage1: _Stage1, found: _Found,
                          mesh_detail: str, label_figures: dict[str, float]) -> dict[str, Any]:
        """The report's ``inference`` entry: grids, settings and Stage-1 figures of the run."""
        abbc_grid = found.abbc_grid
        return {
            "device": device,
            "anatomy_spacing_zyx_mm": _grid_spacing(stage1.grid),
            "abbc_spacing_zyx_mm": _grid_spacing(abbc_grid),
            "abbc_grid_shape_zyx": list(abbc_grid.shape) if abbc_grid is not None else None,
            "stage2_margin_mm": self.stage2_margin_mm,
            "stage2_mask_dilation_mm": self.stage2_mask_dilation_mm,
            "mesh_detail": mesh_detail,
            "bone_ml_stage1": round(float(stage1.plausible.dense_ml), 2),
            "stage1_voxels": stage1.voxels,
            "stage1_dropped_far_ml": stage1.dropped_ml,
            "stage1_dropped_no_cortex_ml": stage1.dropped_no_cortex_ml,
            "stage1_bones": stage1.plausible.bones,
            "marrow_close_mm": self.marrow_close_mm if self.fill_cavities else None,
            **label_figures,
            "no_fragments_reason": found.no_fragments,
        }

    def _write_report(self, ct_input, labels: Volume, paths: dict[str, Any], out_dir: Path,
                      thick_mm: float, stage1: _Stage1, inference: dict[str, Any],
                      warnings: list[str], clock: _Stopwatch) -> tuple[dict, dict[str, float]]:
        """Build and write report.json (again once the report stage is timed); returns the
        report and the timings."""
        from .outputs import build_report, fragment_stats, stl_name, write_report

        fragments = fragment_stats(labels)
        stl_rel = {p.name: str(p.relative_to(out_dir)) for p in paths["stl"]}
        for f in fragments:
            f["stl"] = stl_rel.get(stl_name(f["label"]))
        files = {
            "labels": "labels.nii.gz",
            "stl": [str(p.relative_to(out_dir)) for p in paths["stl"]],
            "glb": "scene.glb" if paths["glb"] else None,
            "report": "report.json",
            "seg": paths["seg"].name if paths["seg"] else None,
        }
        report = build_report(
            ct=ct_input.volume, labels=labels, source_kind=ct_input.source_kind,
            series=_series_entry(ct_input, thick_mm), fragments=fragments, warnings=warnings,
            timings_s=dict(clock.timings),
            models={"fragments": self._info["fragments"], "anatomy": stage1.info},
            inference=inference, files=files,
        )
        paths["report"] = out_dir / "report.json"
        write_report(report, paths["report"])
        timings = clock.finish()
        report["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
        write_report(report, paths["report"])  # with the report stage and total
        return report, timings

    # -- helpers ------------------------------------------------------------------------
    @staticmethod
    def _load_input(input_path, series_uid, allow_non_ct=False):
        if isinstance(input_path, Volume):
            return _Loaded(input_path)
        from .dicom import load_ct

        return load_ct(input_path, series_uid=series_uid, allow_non_ct=allow_non_ct)

    @staticmethod
    def _given_anatomy(anatomy_map, ct: Volume) -> tuple[Volume, dict[str, Any]]:
        """Stage 1 from a user's map (file or Volume) on the CT grid, and its report entry."""
        from .anatomy_map import anatomy_map_onto, read_anatomy_map

        if isinstance(anatomy_map, Volume):
            vol, name = anatomy_map_onto(anatomy_map, ct), "anatomy map (array)"
        else:
            vol, name = read_anatomy_map(anatomy_map, ct), Path(anatomy_map).name
        return vol, {"role": "anatomy", "backend": "anatomy-map", "name": name, "version": None}

    def _stage2(self, model, ct: Volume, stage1: _Stage1, device: str, warnings: list[str]):
        """ABBC on the CT cropped to the Stage-1 bone box and masked outside the bones.

        Returns (ABBC labels, the masked CT on the model grid, foreground probability or
        None, the anatomy map on the model grid); see :mod:`pengwin_demo.bone_region`.
        """
        box = bone_box_on(stage1.anatomy, ct, self.stage2_margin_mm)
        region = ct.crop(box) if box is not None else ct
        abbc_grid = self._model_grid(model, region, device, warnings)
        anatomy_on_grid = abbc_grid.with_array(anatomy_onto(stage1.anatomy, abbc_grid, foreground=stage1.foreground,
                                                            smooth=self.smooth_labels))
        if self.stage2_mask_dilation_mm is not None:
            abbc_grid = abbc_grid.with_array(mask_outside_bones(
                abbc_grid.array, anatomy_on_grid.array, abbc_grid.spacing_zyx_mm,
                self.stage2_mask_dilation_mm))
        labels, foreground = self._predict_on(model, abbc_grid, "ABBC", with_foreground=self.smooth_labels)
        return labels, abbc_grid, foreground, anatomy_on_grid

    def _inference_spacing(self, model, ct: Volume, device: str,
                           warnings: list[str]) -> tuple[float, float, float] | None:
        target = getattr(model, "target_spacing_zyx_mm", None)
        if target is None:
            return None  # the backend (e.g. TotalSegmentator) resamples by itself
        spacing = np.asarray(target, dtype=np.float64)
        extent = np.asarray(ct.shape) * np.asarray(ct.spacing_zyx_mm)
        n_vox = float(np.prod(np.maximum(np.round(extent / spacing), 1)))
        limit = self.cpu_max_voxels
        if device.startswith("cpu") and limit and n_vox > limit:
            factor = (n_vox / limit) ** (1.0 / 3.0)
            coarse = spacing * factor
            message = (
                f"reduced-resolution CPU run: the models ran at "
                f"{'x'.join(f'{s:.2f}' for s in coarse)} mm instead of their "
                f"{'x'.join(f'{s:.2f}' for s in spacing)} mm to keep the CPU time bounded; "
                "small fragments and thin fracture gaps may be lost. Run on a GPU "
                "(--device cuda) for full resolution."
            )
            if not any(w.startswith("reduced-resolution CPU run") for w in warnings):
                warnings.append(message)  # once per run, for whichever model first
            spacing = coarse
        return tuple(float(s) for s in spacing)

    def _predict(self, model, ct: Volume, device: str, what: str, warnings: list[str],
                 with_foreground: bool = False):
        """Run a model on its own grid; return (label Volume on that grid, the CT on that grid,
        the model's foreground probability there or None).

        The probability is asked for only ``with_foreground`` and from models that offer it
        (:meth:`pengwin_demo.models.SegmentationModel.predict_with_foreground`)."""
        grid = self._model_grid(model, ct, device, warnings)
        labels, foreground = self._predict_on(model, grid, what, with_foreground)
        return labels, grid, foreground

    def _model_grid(self, model, ct: Volume, device: str, warnings: list[str]) -> Volume:
        """The CT resampled (linear) to the spacing the model runs at (see _inference_spacing)."""
        spacing = self._inference_spacing(model, ct, device, warnings)
        if spacing is None or np.allclose(spacing, ct.spacing_zyx_mm, rtol=1e-3):
            return ct
        return resample_to_spacing(ct, spacing, "linear")

    @staticmethod
    def _predict_on(model, grid: Volume, what: str, with_foreground: bool = False):
        """Run a model on ``grid`` as it is; (label Volume on it, foreground or None)."""
        foreground = None
        if with_foreground and hasattr(model, "predict_with_foreground"):
            pred, foreground = model.predict_with_foreground(grid)
        else:
            pred = model.predict(grid)
        pred = np.asarray(pred)
        if pred.shape != grid.shape or (foreground is not None and foreground.shape != grid.shape):
            raise ModelError(
                f"the {what} model returned shape {pred.shape} for an input of shape {grid.shape}"
            )
        return grid.with_array(pred.astype(np.uint8, copy=False)), foreground

    @staticmethod
    def _write_seg(ct_input, labels: Volume, out_dir: Path, warnings: list[str]) -> Path | None:
        headers = ct_input.dicom_headers or []
        if not headers:  # "if possible": the app always asks; not worth a warning
            log.info("DICOM SEG not written: the input is not a DICOM series")
            return None
        if not labels.array.any():
            log.info("DICOM SEG not written: there are no fragments to store")
            return None
        from .outputs import write_dicom_seg

        seg_path, seg_warnings = write_dicom_seg(labels, headers, out_dir / "segmentation.dcm")
        warnings.extend(seg_warnings)
        return seg_path


def _series_entry(ct_input, thick_mm: float) -> dict[str, Any] | None:
    """The report's ``series`` entry for a DICOM input (None for a volume file)."""
    from .outputs import series_summary, unused_series

    headers = ct_input.dicom_headers or []
    if ct_input.series is None and not headers:
        return None
    n_slices = getattr(ct_input.series, "n_slices", None) or len(headers) or None
    series = series_summary(ct_input.series, headers[0] if headers else None, n_slices=n_slices)
    if series is not None and thick_mm:
        series["slice_thickness_mm"] = series.get("slice_thickness_mm") or round(thick_mm, 3)
    if series is not None:
        series["not_used"] = unused_series(getattr(ct_input, "series_seen", None) or [], ct_input.series)
    return series


def _grid_spacing(grid: Volume | None) -> list[float] | None:
    return None if grid is None else [round(float(s), 4) for s in grid.spacing_zyx_mm]


def _slice_thickness_mm(ct: Volume, ct_input) -> float:
    """The thickest of: the largest voxel spacing and the DICOM SliceThickness."""
    thick = max(ct.spacing_zyx_mm)
    series = getattr(ct_input, "series", None)
    candidates = [getattr(series, "slice_thickness_mm", None)]
    headers = getattr(ct_input, "dicom_headers", None) or []
    if headers:
        candidates.append(headers[0].get("SliceThickness", None))
    for c in candidates:
        try:
            if c not in (None, "") and float(c) > 0:
                thick = max(thick, float(c))
        except (TypeError, ValueError):
            pass
    return float(thick)


def _clear_old_stls(frag_dir: Path) -> None:
    if frag_dir.is_dir():
        for p in frag_dir.glob("*.stl"):
            p.unlink()


_SHARED: dict[tuple, Pipeline] = {}
_SHARED_LOCK = threading.Lock()


def get_pipeline(device: str = "auto", anatomy: str = "auto", fragments: str = "bundled") -> Pipeline:
    """A process-wide :class:`Pipeline` per configuration (the app and watcher share it)."""
    key = (str(device), str(anatomy), str(fragments))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = Pipeline(device=device, anatomy=anatomy, fragments=fragments)
        return _SHARED[key]
