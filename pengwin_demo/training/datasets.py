"""PENGWIN-format data -> the two nnU-Net v2 raw datasets (ABBC and anatomy).

A PENGWIN-layout folder holds ``images/<case>.mha`` (CT, HU) and ``labels/<case>.mha``
(fragment labels 0-30); the challenge zips and :func:`pengwin_demo.phantom.write_phantom_dataset`
both produce it. :func:`prepare_datasets` turns it into two nnU-Net raw datasets:

* ``Dataset<N>_PengwinABBC``: the 4 ABBC classes (background, boundary, core, border),
  computed with :func:`pengwin_demo.recovery.abbc_targets`;
* ``Dataset<N+1>_PengwinAnatomy``: background, sacrum, left hip, right hip.

Images and labels are reoriented to LPS (identity direction) on the way, as
:meth:`pengwin_demo.models.SegmentationModel.predict` does at inference.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io import VOLUME_SUFFIXES, read_volume, volume_suffix, write_volume
from ..labels import ABBC_CLASSES, ANATOMY_CLASSES, anatomy_from_fragments
from ..volume import Volume

log = logging.getLogger(__name__)


ABBC_LABELS = ABBC_CLASSES
ANATOMY_LABELS = ANATOMY_CLASSES
DATASET_NAMES = {"abbc": "PengwinABBC", "anatomy": "PengwinAnatomy"}
FILE_ENDING = ".nii.gz"
DEMO_CONFIGURATION = "3d_demo"
INFERENCE_TRAINER_NAME = "nnUNetTrainerNoMirroring"
"""Stock nnU-Net trainer name written into exported checkpoints (same network, no mirroring)."""


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
    abbc_kwargs: dict | None = None, allow_non_ct: bool = False,
) -> dict:
    """Write one case into both raw datasets; returns its label voxel counts."""
    from ..recovery import abbc_targets

    ct = to_canonical(read_volume(image_path, "ct", allow_non_ct=allow_non_ct))
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
    allow_non_ct: bool = False,
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
    allow_non_ct : bool
        Take images whose values do not look like a whole CT in HU (e.g. crops without air;
        see :func:`pengwin_demo.io.read_volume`).

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
    args = [(c, i, l, out["abbc"], out["anatomy"], abbc_kwargs, allow_non_ct) for c, i, l in cases]
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
