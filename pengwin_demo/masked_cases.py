"""Bone-masked fracture data sets -> PENGWIN-layout cases.

Two layouts are read, as FracSegNet / PENGWIN and InstanceSegFrac publish them:

* **per-bone masked** (one folder per patient): ``SA_image``, ``LI_image``, ``RI_image``
  (the CT with everything but that bone set to 0) and ``SA_fragments``, ``LI_fragments``,
  ``RI_fragments`` (fragment labels 1..k of that bone), any of the volume suffixes of
  :mod:`pengwin_demo.io`. SA is the sacrum, LI the left and RI the right hip (ilium).
* **single bone**: one ``image`` and one ``fragments`` file of a bone the user names.

A case becomes one CT (the sum of the masked bone images: the whole pelvis with the soft
tissue masked, as the files share one grid) and one PENGWIN label map (1-10 sacrum, 11-20
left hip, 21-30 right hip, the largest fragment of a bone first), written as
``images/<case>.nii.gz`` and ``labels/<case>.nii.gz`` for :func:`pengwin_demo.training.prepare_datasets`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError
from .io import VOLUME_SUFFIXES, read_volume, write_volume
from .labels import BONES, MAX_FRAGMENTS_PER_BONE, first_label
from .volume import Volume

__all__ = [
    "BONE_FILE_PREFIX",
    "MaskedCase",
    "find_masked_cases",
    "is_masked_layout",
    "read_masked_case",
    "read_single_bone",
    "ranked_bone_labels",
    "write_pengwin_cases",
    "masked_to_pengwin",
]

BONE_FILE_PREFIX: dict[int, str] = {1: "SA", 2: "LI", 3: "RI"}
"""Anatomy id -> file prefix of the per-bone masked layout (sacrum, left, right ilium)."""

BONE_BY_NAME: dict[str, int] = {**{name: k for k, name in BONES.items()},
                                **{p.lower(): k for k, p in BONE_FILE_PREFIX.items()}}


@dataclass(frozen=True)
class MaskedCase:
    """One case of a masked layout: its name and its bone files (anatomy id -> paths)."""

    name: str
    images: dict[int, Path]
    fragments: dict[int, Path]


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in VOLUME_SUFFIXES:
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def is_masked_layout(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is one per-bone masked case or holds such case folders."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    candidates = [folder] + [p for p in folder.iterdir() if p.is_dir()]
    return any(_find(c, f"{p}_image") for c in candidates for p in BONE_FILE_PREFIX.values())


def _case_of(folder: Path) -> MaskedCase | None:
    images = {b: _find(folder, f"{p}_image") for b, p in BONE_FILE_PREFIX.items()}
    fragments = {b: _find(folder, f"{p}_fragments") for b, p in BONE_FILE_PREFIX.items()}
    if not any(images.values()) and not any(fragments.values()):
        return None
    for bone, prefix in BONE_FILE_PREFIX.items():
        for kind, found in (("image", images[bone]), ("fragments", fragments[bone])):
            if found is None:
                raise InputError(
                    f"{folder}: {prefix}_{kind} is missing (a per-bone masked case needs "
                    f"SA/LI/RI _image and _fragments files, {', '.join(VOLUME_SUFFIXES)}); "
                    "add the file or remove the folder."
                )
    return MaskedCase(folder.name, images, fragments)  # type: ignore[arg-type]


def find_masked_cases(folder: str | os.PathLike) -> list[MaskedCase]:
    """The per-bone masked cases in ``folder`` (itself one case, or one case per subfolder).

    Raises
    ------
    InputError
        No case found, or a case folder lacks one of its six files.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder; give the folder of the masked cases.")
    own = _case_of(folder)
    if own is not None:
        return [own]
    cases = [c for c in (_case_of(p) for p in sorted(folder.iterdir()) if p.is_dir()) if c]
    if not cases:
        raise InputError(
            f"{folder}: no per-bone masked case found (expected case folders holding "
            "SA_image / LI_image / RI_image and SA_fragments / LI_fragments / RI_fragments)."
        )
    return cases


def ranked_bone_labels(fragments: np.ndarray, bone: int) -> np.ndarray:
    """One bone's fragment ids 1..k -> PENGWIN labels of that bone, largest fragment first.

    Parameters
    ----------
    fragments : ndarray of int
        Fragment ids of one bone (0 background; ids need not be consecutive).
    bone : {1, 2, 3}
        Anatomy id (1 sacrum, 2 left hip, 3 right hip).

    Returns
    -------
    ndarray of uint8
        Same shape; the largest fragment gets ``first_label(bone)``, the next one more...

    Raises
    ------
    ValueError
        More than :data:`MAX_FRAGMENTS_PER_BONE` fragments, or negative ids.
    """
    ids = np.asarray(fragments)
    if ids.size and ids.min() < 0:
        raise ValueError("fragment ids must be non-negative")
    counts = np.bincount(ids.ravel().astype(np.int64))
    present = np.flatnonzero(counts[1:]) + 1
    if len(present) > MAX_FRAGMENTS_PER_BONE:
        raise ValueError(f"{len(present)} fragments in one bone; PENGWIN allows {MAX_FRAGMENTS_PER_BONE}")
    # largest first; equal sizes keep the source's order (stable sort)
    order = present[np.argsort(-counts[present], kind="stable")]
    lut = np.zeros(len(counts), dtype=np.uint8)
    lut[order] = first_label(bone) + np.arange(len(order))
    return lut[ids]


def _read_pair(image_path: Path, fragments_path: Path) -> tuple[Volume, Volume]:
    image = read_volume(image_path, "ct")
    fragments = read_volume(fragments_path, "label")
    if not fragments.same_grid(image, tol_mm=1e-3):
        raise InputError(
            f"{fragments_path.name}: grid {fragments.shape} @ {fragments.spacing_zyx_mm} mm "
            f"does not match {image_path.name} ({image.shape} @ {image.spacing_zyx_mm} mm); "
            "the fragments must lie on their image's grid."
        )
    return image, fragments


def read_masked_case(case: MaskedCase) -> tuple[Volume, Volume]:
    """One per-bone masked case -> (whole-pelvis CT, PENGWIN label map) on the files' grid.

    The CT is the sum of the three masked bone images (int16 HU, 0 outside the bones);
    the labels are 1-10 sacrum, 11-20 left hip, 21-30 right hip, largest first.

    Raises
    ------
    InputError
        Unreadable file, grids that disagree, or bone masks that overlap.
    """
    ct_sum: np.ndarray | None = None
    labels: np.ndarray | None = None
    grid: Volume | None = None
    for bone in BONE_FILE_PREFIX:
        image, fragments = _read_pair(case.images[bone], case.fragments[bone])
        if grid is None:
            grid = image
            ct_sum = np.zeros(image.shape, np.int32)
            labels = np.zeros(image.shape, np.uint8)
        elif not image.same_grid(grid, tol_mm=1e-3):
            raise InputError(
                f"{case.name}: {case.images[bone].name} has grid {image.shape} @ "
                f"{image.spacing_zyx_mm} mm, other bones {grid.shape} @ {grid.spacing_zyx_mm} mm; "
                "all bone files of a case must share one grid."
            )
        ranked = ranked_bone_labels(fragments.array, bone)
        overlap = np.count_nonzero((ranked > 0) & (labels > 0))
        if overlap:
            raise InputError(
                f"{case.name}: {case.fragments[bone].name} overlaps another bone's fragments "
                f"in {overlap} voxels; each voxel may belong to one bone only."
            )
        labels[ranked > 0] = ranked[ranked > 0]
        ct_sum += image.array
    np.clip(ct_sum, -32768, 32767, out=ct_sum)
    return grid.with_array(ct_sum.astype(np.int16)), grid.with_array(labels)


def read_single_bone(image_path: str | os.PathLike, fragments_path: str | os.PathLike,
                     bone: str | int) -> tuple[Volume, Volume]:
    """A single masked bone -> (CT, PENGWIN label map of that bone, largest first).

    ``bone`` is "sacrum", "left_hip", "right_hip" (or "SA", "LI", "RI", or 1, 2, 3).
    """
    bone_id = bone if isinstance(bone, int) else BONE_BY_NAME.get(str(bone).lower())
    if bone_id not in BONES:
        raise InputError(f"bone must be one of {sorted(BONE_BY_NAME)}, got {bone!r}")
    image, fragments = _read_pair(Path(image_path), Path(fragments_path))
    return image, fragments.with_array(ranked_bone_labels(fragments.array, bone_id))


def write_pengwin_cases(cases: list[tuple[str, Volume, Volume]], out_dir: str | os.PathLike) -> Path:
    """Write (name, CT, labels) cases as ``out_dir/images/<name>.nii.gz`` + ``labels/``."""
    out = Path(out_dir)
    for sub in ("images", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name, ct, labels in cases:
        write_volume(ct, out / "images" / f"{name}.nii.gz")
        write_volume(labels, out / "labels" / f"{name}.nii.gz")
    return out


def _single_bone_folders(folder: Path) -> list[Path]:
    candidates = [folder] + sorted(p for p in folder.iterdir() if p.is_dir())
    return [c for c in candidates if _find(c, "image") and _find(c, "fragments")]


def masked_to_pengwin(src: str | os.PathLike, out_dir: str | os.PathLike,
                      bone: str | None = None) -> list[str]:
    """Convert a masked data set into PENGWIN layout in ``out_dir``; returns the case names.

    Parameters
    ----------
    src : path-like
        Per-bone masked cases (one case folder, or a folder of them), or with ``bone``
        single-bone folders holding ``image`` and ``fragments`` files (one, or a folder of them).
    out_dir : path-like
        Receives ``images/<case>.nii.gz`` and ``labels/<case>.nii.gz``.
    bone : str, optional
        For the single-bone layout: "sacrum", "left_hip", "right_hip" (or SA, LI, RI).

    Raises
    ------
    InputError
        Nothing of the expected layout found, or a case that cannot be read (see
        :func:`read_masked_case`).
    """
    src = Path(src)
    if not src.is_dir():
        raise InputError(f"{src}: not a folder; give the folder of the masked cases.")
    if bone is None:
        cases = find_masked_cases(src)
        for case in cases:
            ct, labels = read_masked_case(case)
            write_pengwin_cases([(case.name, ct, labels)], out_dir)
        return [c.name for c in cases]
    folders = _single_bone_folders(src)
    if not folders:
        raise InputError(
            f"{src}: no single-bone case found (a folder with an 'image' and a 'fragments' "
            f"file, {', '.join(VOLUME_SUFFIXES)})."
        )
    for folder in folders:
        ct, labels = read_single_bone(_find(folder, "image"), _find(folder, "fragments"), bone)
        write_pengwin_cases([(folder.name, ct, labels)], out_dir)
    return [f.name for f in folders]
