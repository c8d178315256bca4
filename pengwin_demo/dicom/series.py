"""Read DICOM headers, group them into series and choose the CT series to segment.

Every image frame becomes one :class:`SliceHeader` (a classic single-frame file is one
frame; an enhanced multi-frame file gives one per frame), read without pixel data.
Files that are not DICOM, DICOMDIR indexes, structured reports and other objects without
an image are skipped and counted. Headers are read by :func:`.read.read_header`, the policy
the watcher shares (files without preamble are force-read and checked).

Choice rules (:func:`choose_series`): a usable series is Modality CT, not a localizer or
scout, not a secondary capture or dose screen, with at least ``min_slices`` frames. Among
usable series, axial ORIGINAL/PRIMARY ones are preferred; then the most slices wins, then
the thinnest slices, then the lowest series number.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ..errors import InputError
from .read import quiet_pydicom, read_header

__all__ = ["quiet_pydicom", "scan_files", "group_series", "choose_series"]


MIN_SLICES = 10
"""A series with fewer slices is not a volume we can segment (scout, key images, test)."""

AXIAL_MIN_COS = 0.8
"""A slice normal within ~37 degrees of the patient's head-foot axis counts as axial
(a gantry tilt up to 30 degrees stays axial)."""

SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88"
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
ENHANCED_CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2.1"
_SCOUT_WORDS = ("LOCALIZER", "SCOUT", "TOPOGRAM", "SCANOGRAM", "SURVIEW", "PILOT")
_DOSE_WORDS = ("DOSE REPORT", "DOSE INFO", "DOSE SUMMARY", "PATIENT PROTOCOL", "SCREEN SAVE", "SCREENSAVE")
"""Phrases of dose screens and protocol pages (a plain "Low Dose Pelvis" CT is not one)."""


@dataclass
class SliceHeader:
    """One image frame: where it lies and how to turn its stored values into HU.

    Vectors are LPS, mm. ``pixel_spacing_rc_mm`` is DICOM order: (between rows = y,
    between columns = x).
    """

    path: Path
    frame: int | None  # frame index in a multi-frame file, None for a single-frame file
    dataset: Dataset  # header without pixel data (shared by the frames of one file)
    series_uid: str
    sop_uid: str
    instance_number: int
    position_lps_mm: np.ndarray | None  # (3,)
    orientation: np.ndarray | None  # (6,): row direction (x index), column direction (y index)
    pixel_spacing_rc_mm: tuple[float, float] | None
    rows: int
    columns: int
    slope: float
    intercept: float
    slice_thickness_mm: float | None
    forced: bool = False


@dataclass
class SeriesInfo:
    """What a series is and whether it can be (or was) used.

    ``reason`` says why it was chosen (for the chosen series) or why not (for the others).
    """

    series_uid: str
    description: str
    modality: str
    n_slices: int
    slice_thickness_mm: float | None
    reason: str = ""
    series_number: int | None = None
    image_type: tuple[str, ...] = ()
    orientation: str = "unknown"  # axial, coronal, sagittal, oblique, mixed, unknown
    rows: int = 0
    columns: int = 0
    usable: bool = False
    preferred: bool = False
    study_uid: str = ""
    slices: list[SliceHeader] = field(default_factory=list, repr=False, compare=False)

    def summary(self) -> str:
        """One line for listings (no patient data)."""
        thick = f"{self.slice_thickness_mm:g} mm" if self.slice_thickness_mm else "? mm"
        num = f"#{self.series_number}" if self.series_number is not None else "#?"
        return (
            f"{num} {self.modality or '?'} {self.orientation} {self.n_slices} slices {thick} "
            f"{self.rows}x{self.columns} '{self.description}' [{','.join(self.image_type)}] "
            f"uid {self.series_uid or '(empty)'}"
        )


@dataclass
class ScanResult:
    """Outcome of reading every file's header."""

    slices: list[SliceHeader]
    n_files: int
    skipped_not_dicom: int = 0
    skipped_dicomdir: int = 0
    skipped_no_image: int = 0
    skipped_copies: int = 0
    skipped_damaged: int = 0
    forced: int = 0
    non_image_series: dict[str, Dataset] = field(default_factory=dict)


# --------------------------------------------------------------------------- reading
def sop_class_of(ds: Dataset) -> str:
    """SOPClassUID, falling back to the file meta's MediaStorageSOPClassUID when empty."""
    uid = str(ds.get("SOPClassUID", "") or "")
    if not uid and hasattr(ds, "file_meta"):
        uid = str(ds.file_meta.get("MediaStorageSOPClassUID", "") or "")
    return uid


def _float_list(value, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        return None
    return arr


def _num(value, default: float | None) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if np.isfinite(v) else default


def _optional_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _int(value, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _functional(ds: Dataset, frame: int, seq: str, attr: str):
    """``attr`` from the per-frame functional group ``seq`` of ``frame``, else the shared one."""
    for groups_name, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(groups_name)
        if not groups or index >= len(groups):
            continue
        item = groups[index].get(seq)
        if item and attr in item[0]:
            return item[0][attr].value
    return None


def slices_from_header(path: Path, ds: Dataset, forced: bool) -> list[SliceHeader]:
    """One :class:`SliceHeader` per frame of ``ds`` (the file at ``path``)."""
    series_uid = str(ds.get("SeriesInstanceUID", "") or "")
    sop_uid = str(ds.get("SOPInstanceUID", "") or "")
    rows, cols = _int(ds.get("Rows"), 0), _int(ds.get("Columns"), 0)
    inst = _int(ds.get("InstanceNumber"), 0)
    n_frames = _int(ds.get("NumberOfFrames"), 1)
    if n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        out = []
        for f in range(n_frames):
            pos = _functional(ds, f, "PlanePositionSequence", "ImagePositionPatient")
            ori = _functional(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient")
            ps = _functional(ds, f, "PixelMeasuresSequence", "PixelSpacing")
            th = _functional(ds, f, "PixelMeasuresSequence", "SliceThickness")
            slope = _functional(ds, f, "PixelValueTransformationSequence", "RescaleSlope")
            icpt = _functional(ds, f, "PixelValueTransformationSequence", "RescaleIntercept")
            if pos is None and "ImagePositionPatient" in ds and n_frames == 1:
                pos = ds.ImagePositionPatient
            ori = ori if ori is not None else ds.get("ImageOrientationPatient")
            ps = ps if ps is not None else ds.get("PixelSpacing")
            spacing = _float_list(ps, 2) if ps is not None else None
            out.append(SliceHeader(
                path=path, frame=f, dataset=ds, series_uid=series_uid, sop_uid=f"{sop_uid}#{f}",
                instance_number=inst * 100000 + f,
                position_lps_mm=_float_list(pos, 3) if pos is not None else None,
                orientation=_float_list(ori, 6) if ori is not None else None,
                pixel_spacing_rc_mm=tuple(spacing) if spacing is not None else None,
                rows=rows, columns=cols,
                slope=_num(slope if slope is not None else ds.get("RescaleSlope"), 1.0) or 1.0,
                intercept=_num(icpt if icpt is not None else ds.get("RescaleIntercept"), 0.0) or 0.0,
                slice_thickness_mm=_num(th if th is not None else ds.get("SliceThickness"), None),
                forced=forced,
            ))
        return out
    pos = ds.get("ImagePositionPatient")
    ori = ds.get("ImageOrientationPatient")
    ps = ds.get("PixelSpacing")
    spacing = _float_list(ps, 2) if ps is not None else None
    return [SliceHeader(
        path=path, frame=None, dataset=ds, series_uid=series_uid, sop_uid=sop_uid,
        instance_number=inst,
        position_lps_mm=_float_list(pos, 3) if pos is not None else None,
        orientation=_float_list(ori, 6) if ori is not None else None,
        pixel_spacing_rc_mm=tuple(spacing) if spacing is not None else None,
        rows=rows, columns=cols,
        slope=_num(ds.get("RescaleSlope"), 1.0) or 1.0,
        intercept=_num(ds.get("RescaleIntercept"), 0.0) or 0.0,
        slice_thickness_mm=_num(ds.get("SliceThickness"), None),
        forced=forced,
    )]


def scan_files(files: list[Path]) -> ScanResult:
    """Read the header of every file; keep image frames, count and skip the rest."""
    with quiet_pydicom():
        return _scan_files(files)


def _scan_files(files: list[Path]) -> ScanResult:
    result = ScanResult(slices=[], n_files=len(files))
    seen_sop: set[str] = set()
    for path in files:
        if path.name.upper() == "DICOMDIR":
            result.skipped_dicomdir += 1
            continue
        ds, forced = read_header(path)
        if ds is None:
            result.skipped_not_dicom += 1
            continue
        media_class = str(ds.file_meta.get("MediaStorageSOPClassUID", "")) if hasattr(ds, "file_meta") else ""
        if media_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
            result.skipped_dicomdir += 1
            continue
        if "Rows" not in ds or "Columns" not in ds:
            result.skipped_no_image += 1
            uid = str(ds.get("SeriesInstanceUID", "") or "")
            if uid:
                result.non_image_series.setdefault(uid, ds)
            continue
        sop = str(ds.get("SOPInstanceUID", "") or "")
        if sop and sop in seen_sop:
            result.skipped_copies += 1  # a second copy of an instance already read
            continue
        if sop:
            seen_sop.add(sop)
        try:
            frames = slices_from_header(path, ds, forced)
        except Exception:  # noqa: BLE001 - values pydicom cannot convert
            result.skipped_damaged += 1
            continue
        result.forced += int(forced)
        result.slices.extend(frames)
    return result


# --------------------------------------------------------------------------- series
def normal_of(orientation: np.ndarray) -> np.ndarray:
    """Unit slice normal (LPS) = row direction x column direction."""
    n = np.cross(orientation[:3], orientation[3:])
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else n


def orientation_name(orientation: np.ndarray | None) -> str:
    if orientation is None:
        return "unknown"
    n = np.abs(normal_of(orientation))
    if n[2] >= AXIAL_MIN_COS:
        return "axial"
    if n[1] >= AXIAL_MIN_COS:
        return "coronal"
    if n[0] >= AXIAL_MIN_COS:
        return "sagittal"
    return "oblique"


def _orientation_key(s: SliceHeader) -> tuple:
    o = s.orientation
    return tuple(np.round(o, 3)) if o is not None else ()


def _upper_words(values) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        values = values.split("\\")
    return tuple(str(v).strip().upper() for v in values)


def group_series(slices: list[SliceHeader]) -> list[SeriesInfo]:
    """Group frames by SeriesInstanceUID and describe each series (no choice made)."""
    groups: dict[str, list[SliceHeader]] = {}
    for s in slices:
        groups.setdefault(s.series_uid, []).append(s)
    out = []
    for uid, members in groups.items():
        members.sort(key=lambda s: (s.instance_number, str(s.path)))
        ds = members[0].dataset
        counts: dict[tuple, int] = {}
        for s in members:
            counts[_orientation_key(s)] = counts.get(_orientation_key(s), 0) + 1
        if len(counts) > 1:  # name the orientation of the majority, flagged mixed
            major = max(counts, key=counts.get)
            rep = next(s for s in members if _orientation_key(s) == major)
            orient = f"mixed ({orientation_name(rep.orientation)} majority)"
        else:
            orient = orientation_name(members[0].orientation)
        thick = [s.slice_thickness_mm for s in members if s.slice_thickness_mm]
        out.append(SeriesInfo(
            series_uid=uid,
            description=str(ds.get("SeriesDescription", "") or "").strip(),
            modality=str(ds.get("Modality", "") or "").strip().upper(),
            n_slices=len(members),
            slice_thickness_mm=float(np.median(thick)) if thick else None,
            series_number=_optional_int(ds.get("SeriesNumber")),
            image_type=_upper_words(ds.get("ImageType")),
            orientation=orient,
            rows=members[0].rows,
            columns=members[0].columns,
            study_uid=str(ds.get("StudyInstanceUID", "") or ""),
            slices=members,
        ))
    out.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30, s.series_uid))
    return out


def assess(series: SeriesInfo, min_slices: int = MIN_SLICES) -> SeriesInfo:
    """Fill ``usable``, ``preferred`` and ``reason`` (why it cannot or should not be used)."""
    ds = series.slices[0].dataset if series.slices else Dataset()
    sop = sop_class_of(ds)
    words = series.image_type
    desc = series.description.upper()
    problems = []
    if series.modality != "CT":
        problems.append(f"modality {series.modality or 'missing'}, not CT")
    if any(w in words for w in _SCOUT_WORDS) or any(w in desc for w in _SCOUT_WORDS):
        problems.append("localizer/scout")
    if sop.startswith(SECONDARY_CAPTURE_PREFIX) or "SECONDARY" in words[:1]:
        problems.append("secondary capture")
    if sop.startswith(SR_PREFIX) or any(w in desc or w in " ".join(words) for w in _DOSE_WORDS):
        problems.append("dose report / screen capture")
    if series.orientation == "unknown":
        problems.append("no slice position/orientation")
    if series.n_slices < min_slices:
        problems.append(f"{series.n_slices} slice(s), fewer than the minimum of {min_slices}")
    series.usable = not problems
    soft = []
    if not series.orientation.startswith("axial") and "axial majority" not in series.orientation:
        soft.append(f"{series.orientation}, not axial")
    if words[:2] != ("ORIGINAL", "PRIMARY"):
        soft.append("not ORIGINAL/PRIMARY" if words else "no ImageType")
    series.preferred = series.usable and not soft
    series.reason = "; ".join(problems or soft)
    return series


def choose_series(
    series: list[SeriesInfo], series_uid: str | None = None, min_slices: int = MIN_SLICES
) -> tuple[SeriesInfo, list[str]]:
    """Pick the series to convert; return it (with ``reason`` set) and any warnings.

    Raises
    ------
    InputError
        No usable CT series, or ``series_uid`` absent or unusable.
    """
    warnings: list[str] = []
    for s in series:
        assess(s, min_slices)
    listing = "\n".join(f"  - {s.summary()}" + (f" -> {s.reason}" if s.reason else "") for s in series)
    if series_uid is not None:
        return _requested_series(series, series_uid, min_slices, listing, warnings), warnings
    usable = [s for s in series if s.usable]
    if not usable:
        _refuse_no_usable(series, min_slices, listing)
    _refuse_several_studies(usable, listing)
    preferred = [s for s in usable if s.preferred]
    pool = preferred or usable
    pool.sort(key=_series_rank)
    chosen = pool[0]
    if not chosen.preferred:
        warnings.append(f"no axial ORIGINAL/PRIMARY CT series; using a {chosen.reason} one")
    _explain_choice(chosen, pool[1:])
    return chosen, warnings


def _requested_series(series, series_uid: str, min_slices: int, listing: str, warnings: list[str]) -> SeriesInfo:
    """The series asked for by SeriesInstanceUID, if present and usable."""
    match = [s for s in series if s.series_uid == series_uid.strip()]
    if not match:
        raise InputError(
            f"series {series_uid} is not in this input. Series found:\n{listing or '  (none)'}\n"
            "Give one of the UIDs listed, or leave out --series to choose automatically."
        )
    chosen = match[0]
    if not chosen.usable:
        raise InputError(
            f"series {series_uid} cannot be used: {chosen.reason}. A CT volume of at least "
            f"{min_slices} slices is needed (MR, localizers, screen captures and dose "
            f"reports are refused). Series found:\n{listing}"
        )
    if not chosen.preferred:
        warnings.append(f"the requested series is {chosen.reason}; using it as asked")
    chosen.reason = "chosen explicitly by SeriesInstanceUID"
    return chosen


def _refuse_no_usable(series: list[SeriesInfo], min_slices: int, listing: str) -> None:
    only_mr = series and all(s.modality == "MR" for s in series)
    hint = (
        "This is an MR study; the models segment CT only. Send the pelvic CT."
        if only_mr else
        f"Send the axial CT reconstruction of the pelvis (at least {min_slices} slices); "
        "localizers, screen captures, dose reports and non-CT series are not used."
    )
    raise InputError(
        f"no usable CT series found among {len(series)} series.\n{listing or '  (no image files)'}\n{hint}"
    )


def _series_rank(s: SeriesInfo):
    """Sort key among candidates: most slices, then thinnest, lowest number, UID."""
    thick = s.slice_thickness_mm if s.slice_thickness_mm else 1e9
    num = s.series_number if s.series_number is not None else 1 << 30
    return (-s.n_slices, thick, num, s.series_uid)


def _explain_choice(chosen: SeriesInfo, others: list[SeriesInfo]) -> None:
    """Set ``reason`` of the chosen series and of the other candidates (ranked after it)."""
    why = ["CT", "axial ORIGINAL/PRIMARY" if chosen.preferred else f"best available ({chosen.reason})"]
    if others:
        runner = others[0]
        if runner.n_slices < chosen.n_slices:
            why.append(f"most slices ({chosen.n_slices} vs {runner.n_slices})")
        elif _series_rank(runner)[1] != _series_rank(chosen)[1]:
            why.append(
                f"same slice count as another candidate, thinnest slices "
                f"({chosen.slice_thickness_mm} mm vs {runner.slice_thickness_mm} mm)"
            )
        else:
            why.append(
                "same slice count and thickness as another candidate, lowest series number "
                f"({_number_text(chosen)} vs {_number_text(runner)})"
            )
    else:
        why.append(f"the only candidate, {chosen.n_slices} slices")
    chosen.reason = ", ".join(why)
    for s in others:
        if s.n_slices < chosen.n_slices:
            s.reason = f"usable; fewer slices ({s.n_slices})"
        elif s.slice_thickness_mm != chosen.slice_thickness_mm:
            s.reason = f"usable; thicker slices ({s.slice_thickness_mm} mm)"
        else:
            s.reason = "usable; same slice count and thickness, higher series number"


def _refuse_several_studies(usable: list[SeriesInfo], listing: str) -> None:
    """Two studies in one input are two patients or two visits: never pick one silently."""
    studies = {s.study_uid for s in usable if s.study_uid}
    if len(studies) > 1:
        raise InputError(
            f"the input holds usable CT series of {len(studies)} different studies; choosing "
            f"one would silently leave the others out. Series found:\n{listing}\n"
            "Give one study per folder or zip, or name the series with --series (the inbox "
            "watcher splits such a delivery into one job per series by itself)."
        )


def _number_text(series: SeriesInfo) -> str:
    return f"#{series.series_number}" if series.series_number is not None else "none"


def with_slices(series: SeriesInfo, slices: list[SliceHeader]) -> SeriesInfo:
    """A copy of ``series`` describing only ``slices`` (after cleaning)."""
    return replace(series, slices=slices, n_slices=len(slices))
