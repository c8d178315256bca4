"""Real whole CTs with bone masks as anatomy training cases.

The composites (:mod:`pengwin_demo.training.composite`) place real pelvic bone in synthetic
bodies, so the model never sees real surroundings: the lowest lumbar vertebra resting on
the sacrum across a real disc and real facet joints, real muscle, bowel and vessels. A
whole CT whose sacrum and hip bones are masked teaches those; every voxel outside the
masks (the lumbar spine and femurs included) is background.

A case is a folder as the TotalSegmentator data set lays them out:
``CASE/ct.nii.gz`` and ``CASE/segmentations/{sacrum,hip_left,hip_right}.nii.gz``. The
folder name names the case in ``--holdout``, the logs and the model card: a neutral case
name, never a patient's name or ID.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import numpy as np

from ..anatomy_map import BONE_MASK_FILES, read_bone_masks
from ..errors import InputError
from ..io import read_volume, write_volume
from ..labels import ANATOMY_CLASSES, Anatomy, first_label
from ..masked_cases import write_pengwin_cases
from ..volume import Volume
from .composite import mirror_case, pelvis_box_crop, pelvis_free_crop
from .datasets import FILE_ENDING, to_canonical

log = logging.getLogger(__name__)

__all__ = ["WHOLE_CT_IMAGE", "WHOLE_CT_MASKS", "FILLED_CANAL_BELOW_HU", "IGNORE_LABEL", "find_whole_ct_cases",
           "read_whole_ct_case", "scan_digest", "whole_ct_variant", "write_whole_ct_cases", "filled_canal_voxels",
           "ignore_filled_canal"]

WHOLE_CT_IMAGE = "ct.nii.gz"
WHOLE_CT_MASKS = "segmentations"

CONTEXT_BELOW_MM = (20.0, 120.0)
"""Range of the scan kept below the pelvic bones in a variant, mm (the femurs)."""
CONTEXT_ABOVE_MM = (40.0, 250.0)
"""Range of the scan kept above the pelvic bones in a variant, mm (the lumbar spine, belly)."""
FILLED_CANAL_BELOW_HU = 100.0
"""Sacrum voxels of a filled-canal mask under this value are left out of the loss: the
sacral canal and foramina (fat, nerve, CSF: -100 to 50 HU) and fatty marrow, which HU
cannot tell apart."""
IGNORE_LABEL = max(ANATOMY_CLASSES.values()) + 1
"""nnU-Net's ignore label in the anatomy data set (it must follow the highest class): no
loss there, no output class."""


def _is_case(folder: Path) -> bool:
    return (folder / WHOLE_CT_IMAGE).is_file() and (folder / WHOLE_CT_MASKS).is_dir()


def find_whole_ct_cases(root: str | os.PathLike) -> list[Path]:
    """Case folders under ``root`` (``root`` itself when it is one), sorted by name.

    Raises
    ------
    InputError
        ``root`` is not a folder, or holds no case.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder of whole CTs with bone masks")
    found = [root] if _is_case(root) else sorted(p for p in root.iterdir() if p.is_dir() and _is_case(p))
    if not found:
        raise InputError(
            f"{root}: no whole-CT case found; each needs {WHOLE_CT_IMAGE} and {WHOLE_CT_MASKS}/ with "
            + ", ".join(f"{s}.nii.gz" for s in BONE_MASK_FILES.values()))
    return found


def read_whole_ct_case(folder: str | os.PathLike) -> tuple[Volume, Volume]:
    """A case folder -> (CT, PENGWIN label map: 1 sacrum, 11 left hip, 21 right hip), both
    reoriented to LPS with an identity direction (so that :func:`mirror_case` applies).

    Raises
    ------
    InputError
        Unreadable files, masks missing or off the CT, an oblique scan, or a bone without voxels.
    """
    folder = Path(folder)
    ct = _to_lps(read_volume(folder / WHOLE_CT_IMAGE), folder / WHOLE_CT_IMAGE)
    anatomy = read_bone_masks(folder / WHOLE_CT_MASKS, ct).array
    missing = [BONE_MASK_FILES[b] for b in BONE_MASK_FILES if not (anatomy == b).any()]
    if missing:
        raise InputError(f"{folder}: the mask(s) {missing} hold no voxel on the CT; a training case needs "
                         "all three pelvic bones")
    to_fragment_label = np.array([0, *(first_label(b) for b in BONE_MASK_FILES)], np.uint8)
    return ct, ct.with_array(to_fragment_label[anatomy])


def scan_digest(ct: Volume) -> str:
    """SHA-256 of a scan's values (rounded to whole HU) and voxel spacing on its LPS grid.

    Recorded for every whole CT a model is trained with, so that a benchmark can tell a
    training scan from a new one, whatever its file is called.
    """
    ct = _to_lps(ct, Path("scan"))
    digest = hashlib.sha256(np.round(ct.array).astype(np.int16).tobytes())
    digest.update(np.round(np.asarray(ct.spacing_zyx_mm, float), 3).tobytes())
    return digest.hexdigest()


def _to_lps(volume: Volume, path: Path) -> Volume:
    """The volume with axes permuted and flipped to an identity (LPS) direction."""
    if np.allclose(volume.direction, np.eye(3)):
        return volume
    oriented = to_canonical(volume)
    if not np.allclose(oriented.direction, np.eye(3), atol=1e-4):
        raise InputError(f"{path}: an oblique scan (direction {np.round(volume.direction, 3).tolist()}); "
                         "resample it onto axis-aligned voxels first")
    return oriented


def whole_ct_variant(ct: Volume, labels: Volume, rng: np.random.Generator) -> tuple[Volume, Volume]:
    """The scan cut to its pelvic bones' slices plus a random stretch above and below.

    Varies how much spine, belly and thigh the model sees around the pelvis, as scans
    from pelvis-only to chest-to-knees do.
    """
    z_bone = np.nonzero(labels.array.any(axis=(1, 2)))[0]
    dz = ct.spacing_zyx_mm[0]
    lo = max(0, int(z_bone.min()) - int(round(rng.uniform(*CONTEXT_BELOW_MM) / dz)))
    hi = min(ct.shape[0], int(z_bone.max()) + 1 + int(round(rng.uniform(*CONTEXT_ABOVE_MM) / dz)))
    box = (slice(lo, hi), slice(0, ct.shape[1]), slice(0, ct.shape[2]))
    return ct.crop(box), labels.crop(box)


def _variant_name(scan: str, k: int) -> str:
    return f"{scan}_scan{k:02d}"


def _above_name(scan: str) -> str:
    return f"{scan}_above"


def _is_scan_case(case: str, scan: str) -> bool:
    """Whether training case ``case`` was cut from whole CT ``scan`` (not a composite
    whose patient name shares its start)."""
    return case == _above_name(scan) or re.fullmatch(re.escape(scan) + r"_scan\d+", case) is not None


def write_whole_ct_cases(roots: list[str | os.PathLike], out_dir: str | os.PathLike, *,
                         holdout: tuple[str, ...] = (), per_case: int = 8, seed: int = 0,
                         box_view: bool = False) -> dict[str, str]:
    """Write variants of every whole-CT case but ``holdout`` in PENGWIN layout.

    Parameters
    ----------
    per_case : int
        Variants per scan (:func:`whole_ct_variant`); every second one is mirrored with the
        hip labels swapped. Unless ``box_view``, the scan's part above the pelvis is added
        once as a negative (no pelvic bone, the lumbar spine in view).
    seed : int
        Seed of the variants.
    box_view : bool
        Cut each variant to its pelvic bones' box plus random margins (the refining model's view).

    Returns
    -------
    dict of str to str
        The case (patient) names used, each with its :func:`scan_digest`.
    """
    used = {}
    for i, folder in enumerate(f for root in roots for f in find_whole_ct_cases(root)):
        if folder.name in holdout:
            continue
        ct, labels = read_whole_ct_case(folder)
        written = []
        for k in range(per_case):
            rng = np.random.default_rng([seed, 7919, i, k])
            v_ct, v_lab = whole_ct_variant(ct, labels, rng)
            if k % 2:
                v_ct, v_lab = mirror_case(v_ct, v_lab)
            if box_view:
                v_ct, v_lab = pelvis_box_crop(v_ct, v_lab, rng)
            written.append((_variant_name(folder.name, k), v_ct, v_lab))
        above = None if box_view else pelvis_free_crop(ct, labels)
        if above is not None:
            written.append((_above_name(folder.name), *above))
        write_pengwin_cases(written, out_dir)
        log.info("whole CT %s: %d training cases written", folder.name, len(written))
        used[folder.name] = scan_digest(ct)
    return used


def filled_canal_voxels(sacrum_zyx: np.ndarray, ct_hu_zyx: np.ndarray,
                        below_hu: float = FILLED_CANAL_BELOW_HU) -> np.ndarray:
    """The sacrum voxels whose class a filled-canal mask leaves uncertain.

    Manual outlines often draw the sacrum filled, its canal and foramina included; PENGWIN's
    labels and TotalSegmentator's masks hold bone only. Inside such a mask, the canal's
    soft tissue and fatty marrow have the same HU, so neither may be trusted as sacrum.

    Parameters
    ----------
    sacrum_zyx : ndarray of bool, (z, y, x)
        The sacrum mask.
    ct_hu_zyx : ndarray, (z, y, x)
        The CT in HU, on the mask's grid.
    below_hu : float
        Voxels of the mask under this value are returned.

    Returns
    -------
    ndarray of bool, (z, y, x)
    """
    return np.asarray(sacrum_zyx, dtype=bool) & (np.asarray(ct_hu_zyx) < below_hu)


def ignore_filled_canal(anatomy_raw: str | os.PathLike, scans: list[str],
                        below_hu: float = FILLED_CANAL_BELOW_HU) -> float:
    """Mark :func:`filled_canal_voxels` with :data:`IGNORE_LABEL` in an nnU-Net anatomy raw set.

    Only the training cases cut from the whole CTs named ``scans``
    (:func:`write_whole_ct_cases`) change; the set's dataset.json gains the ``ignore`` label.

    Returns
    -------
    float
        The volume marked, mL, over all changed cases.
    """
    raw = Path(anatomy_raw)
    marked_ml = 0.0
    for label_path in sorted((raw / "labelsTr").glob(f"*{FILE_ENDING}")):
        case = label_path.name[: -len(FILE_ENDING)]
        if not any(_is_scan_case(case, scan) for scan in scans):
            continue
        labels = read_volume(label_path, kind="label")
        ct = read_volume(raw / "imagesTr" / f"{case}_0000{FILE_ENDING}")
        uncertain = filled_canal_voxels(labels.array == Anatomy.SACRUM, ct.array, below_hu)
        if uncertain.any():
            marked = labels.array.copy()
            marked[uncertain] = IGNORE_LABEL
            write_volume(labels.with_array(marked), label_path)
            marked_ml += float(uncertain.sum()) * float(np.prod(labels.spacing_zyx_mm)) / 1000.0
    meta_path = raw / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta["labels"] = {**meta["labels"], "ignore": IGNORE_LABEL}
    meta_path.write_text(json.dumps(meta, indent=2))
    return marked_ml
