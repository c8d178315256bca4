"""Per-case report: what went in, what came out (fragments in LPS mm), warnings, timings.

The report is plain JSON (``report.json`` beside the outputs) so that people, the app and
the watcher read the same facts. It holds **no patient identifiers**: no names, IDs, birth
dates, study dates, accession numbers, institution or file names (a file name can carry a
patient's name). The series is described by technical attributes only (its Series Instance
UID is kept so that a run can be repeated on the same series; it identifies a series, not a
person).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .. import __version__
from ..labels import BONES, MAX_LABEL, PALETTE_RGB, bone_name, rank_in_bone
from ..volume import Volume

__all__ = [
    "REPORT_VERSION",
    "fragment_stats",
    "labels_present",
    "input_summary",
    "series_summary",
    "build_report",
    "write_report",
]

REPORT_VERSION = 1
"""Bumped whenever a field changes meaning or disappears."""

SERIES_FIELDS = {
    # attribute on SeriesInfo / DICOM keyword -> report key (technical, non-identifying)
    "SeriesInstanceUID": "series_instance_uid",
    "SeriesNumber": "series_number",
    "SeriesDescription": "series_description",
    "Modality": "modality",
    "Manufacturer": "manufacturer",
    "ManufacturerModelName": "model_name",
    "SliceThickness": "slice_thickness_mm",
    "ConvolutionKernel": "convolution_kernel",
    "KVP": "kvp",
    "BodyPartExamined": "body_part_examined",
    "ImageType": "image_type",
}
"""DICOM attributes copied into the report. Anything that identifies a person is absent."""


def _round(values: Iterable[float], ndigits: int = 3) -> list[float]:
    return [round(float(v), ndigits) for v in values]


def _world_bounds(vol: Volume, idx_zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """LPS min/max of the given voxel centres (N, 3 indices)."""
    if _axis_aligned(vol.direction):
        lo, hi = idx_zyx.min(axis=0), idx_zyx.max(axis=0)
        corners = vol.index_to_world(np.stack([lo, hi]))
        return corners.min(axis=0), corners.max(axis=0)
    pts = vol.index_to_world(idx_zyx)
    return pts.min(axis=0), pts.max(axis=0)


def _axis_aligned(direction: np.ndarray) -> bool:
    return bool(np.all(np.isclose(np.abs(direction), 0) | np.isclose(np.abs(direction), 1)))


def labels_present(array: np.ndarray) -> list[int]:
    """Nonzero labels in a uint8 label map, ascending (one pass; ``np.unique`` sorts, and
    ``np.bincount`` first copies the volume to int64: seconds on a 512 x 512 x 330 map)."""
    if not array.any():
        return []
    return [k + 1 for k, box in enumerate(ndimage.find_objects(array)) if box is not None]


def fragment_stats(labels: Volume) -> list[dict[str, Any]]:
    """Size and position of every fragment of a PENGWIN label map.

    Parameters
    ----------
    labels : Volume
        PENGWIN label map (z, y, x), uint8, 0 background, 1-30 fragments.

    Returns
    -------
    list of dict
        One entry per label present, ascending: ``label``, ``bone`` ("sacrum", "left_hip",
        "right_hip"), ``rank_in_bone`` (1 = largest), ``voxels``, ``volume_ml``,
        ``centroid_lps_mm`` (x, y, z), ``bbox_lps_mm`` (``{"min": [x, y, z], "max": [...]}``,
        the axis-aligned LPS box of the voxel *centres*; the surface lies half a voxel
        further out) and ``color_rgb`` (the shared palette).
    """
    array = labels.array
    max_label = int(array.max()) if array.size else 0
    if max_label == 0:
        return []
    if max_label > MAX_LABEL:
        raise ValueError(f"a PENGWIN label map holds 0-{MAX_LABEL}, found label {max_label}")
    boxes = ndimage.find_objects(array, max_label=max_label)
    present = [lab for lab in range(1, max_label + 1) if boxes[lab - 1] is not None]
    voxel_ml = labels.voxel_volume_mm3 / 1000.0
    aligned = _axis_aligned(labels.direction)
    out = []
    for lab in present:
        box = boxes[lab - 1]
        start = np.array([s.start for s in box])
        mask = array[box] == lab
        centre = np.empty(3)
        for axis in range(3):  # mean index from the mask's profile along each axis
            profile = mask.sum(axis=tuple(a for a in range(3) if a != axis))
            centre[axis] = start[axis] + profile @ np.arange(len(profile)) / profile.sum()
        if aligned:  # the extreme voxels are on the box faces
            idx = np.stack([start, np.array([s.stop - 1 for s in box])])
        else:  # the extreme world points are surface voxels
            surface = mask & ~ndimage.binary_erosion(mask)
            idx = np.argwhere(surface) + start
        centroid = labels.index_to_world(np.asarray(centre))[0]
        lo, hi = _world_bounds(labels, idx)
        n = int(profile.sum())
        out.append(
            {
                "label": lab,
                "bone": bone_name(lab),
                "rank_in_bone": rank_in_bone(lab),
                "voxels": n,
                "volume_ml": round(n * voxel_ml, 3),
                "centroid_lps_mm": _round(centroid),
                "bbox_lps_mm": {"min": _round(lo), "max": _round(hi)},
                "color_rgb": [int(c) for c in PALETTE_RGB[lab]],
            }
        )
    return out


def bone_summary(fragments: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per bone: number of fragments and total volume (mL)."""
    out = {}
    for name in BONES.values():
        mine = [f for f in fragments if f["bone"] == name]
        out[name] = {
            "fragments": len(mine),
            "volume_ml": round(sum(f["volume_ml"] for f in mine), 3),
        }
    return out


def input_summary(ct: Volume, source_kind: str | None = None) -> dict[str, Any]:
    """Geometry and intensity range of the input CT (no names, no paths)."""
    try:
        orientation = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(
            tuple(ct.direction.ravel())
        )
    except RuntimeError:  # pragma: no cover - oblique directions still get a nearest code
        orientation = None
    sample = ct.array[:: max(1, ct.shape[0] // 32)]
    return {
        "source_kind": source_kind,
        "shape_zyx": [int(s) for s in ct.shape],
        "spacing_zyx_mm": _round(ct.spacing_zyx_mm, 4),
        "origin_lps_mm": _round(ct.origin_lps_mm),
        "direction": [_round(row, 6) for row in ct.direction],
        "orientation": orientation,
        "extent_zyx_mm": _round(np.asarray(ct.shape) * np.asarray(ct.spacing_zyx_mm), 1),
        "dtype": str(ct.array.dtype),
        "hu_range": [int(sample.min()), int(sample.max())] if sample.size else None,
    }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_jsonable(v) for v in value]
    try:  # pydicom DSfloat / IS / PersonName / UID ...
        if isinstance(value, float) or type(value).__name__ in ("DSfloat", "DSdecimal"):
            return float(value)
        if type(value).__name__ == "IS":
            return int(value)
    except (TypeError, ValueError):
        pass
    return str(value)


def unused_series(series_seen: list[Any], chosen: Any) -> list[dict[str, Any]]:
    """Every other series of the input, each with why it was not used (so none goes unseen).

    Parameters
    ----------
    series_seen : list of SeriesInfo
        All series found in the input (``CTInput.series_seen``).
    chosen : SeriesInfo or None
        The series that was segmented.
    """
    chosen_uid = getattr(chosen, "series_uid", None)
    return [
        {"series_instance_uid": s.series_uid, "series_number": s.series_number,
         "modality": s.modality or None, "series_description": s.description or None,
         "n_slices": s.n_slices, "reason": s.reason}
        for s in series_seen if s.series_uid != chosen_uid
    ]


def series_summary(series: Any = None, first_header: Any = None, n_slices: int | None = None
                   ) -> dict[str, Any] | None:
    """Technical description of the chosen DICOM series (no patient identifiers).

    Parameters
    ----------
    series : object, optional
        A ``SeriesInfo`` (or anything with attributes named like DICOM keywords or their
        snake_case report keys).
    first_header : pydicom.Dataset, optional
        A header of the series, to fill what ``series`` lacks.
    n_slices : int, optional
        Number of images in the series.
    """
    if series is None and first_header is None:
        return None
    out: dict[str, Any] = {}
    for keyword, key in SERIES_FIELDS.items():
        value = None
        for source in (series, first_header):
            if source is None:
                continue
            for name in (key, keyword, _snake(keyword), *_ALIASES.get(keyword, ())):
                value = getattr(source, name, None)
                if value not in (None, ""):
                    break
            if value not in (None, ""):
                break
        out[key] = _jsonable(value) if value not in ("",) else None
    if n_slices is None and series is not None:
        for name in ("n_slices", "num_slices", "n_images", "num_images", "n_files"):
            if isinstance(getattr(series, name, None), int):
                n_slices = getattr(series, name)
                break
    out["n_slices"] = n_slices
    for name in ("orientation", "reason"):  # SeriesInfo: plane and why it was chosen
        value = getattr(series, name, None) if series is not None else None
        if isinstance(value, str) and value:
            out["plane" if name == "orientation" else "chosen_because"] = value
    return out


_ALIASES = {"SeriesInstanceUID": ("series_uid",), "SeriesDescription": ("description",)}
"""Attribute names of :class:`pengwin_demo.dicom.SeriesInfo` that differ from the keywords."""


def _snake(keyword: str) -> str:
    out = []
    for i, ch in enumerate(keyword):
        if ch.isupper() and i and not keyword[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def build_report(
    *,
    ct: Volume,
    labels: Volume,
    source_kind: str | None = None,
    series: dict[str, Any] | None = None,
    fragments: list[dict[str, Any]] | None = None,
    warnings: list[str] | None = None,
    timings_s: dict[str, float] | None = None,
    models: dict[str, Any] | None = None,
    inference: dict[str, Any] | None = None,
    files: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the report dictionary (see ``docs/pipeline.md`` for every field).

    Parameters
    ----------
    ct : Volume
        The input CT (only its geometry and value range are reported).
    labels : Volume
        The PENGWIN label map on the input grid.
    source_kind : str, optional
        "nifti", "dicom", ... (how the input came in).
    series : dict, optional
        From :func:`series_summary` (DICOM input only).
    fragments : list of dict, optional
        From :func:`fragment_stats`; computed from ``labels`` when not given.
    warnings : list of str
        Messages for the user (thick slices, no pelvic bone, ...).
    timings_s : dict
        Seconds per stage.
    models : dict
        ``{"anatomy": {"name", "version", ...}, "fragments": {...}}``.
    inference : dict
        Device and the spacing the models ran at.
    files : dict
        Output file names relative to the output folder.
    """
    if fragments is None:
        fragments = fragment_stats(labels)
    return {
        "report_version": REPORT_VERSION,
        "software": {"name": "pengwin_demo", "version": __version__},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "disclaimer": "Research demo; not a medical device. Not for clinical use.",
        "input": input_summary(ct, source_kind),
        "series": series,
        "inference": inference or {},
        "models": models or {},
        "n_fragments": len(fragments),
        "bones": bone_summary(fragments),
        "fragments": fragments,
        "warnings": list(warnings or []),
        "timings_s": {k: round(float(v), 3) for k, v in (timings_s or {}).items()},
        "files": files or {},
    }


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``report`` as indented JSON (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)
    return path
