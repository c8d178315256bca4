"""One entry point for every CT input: :func:`load_ct`.

Accepts a NIfTI / MHA / NRRD file, a DICOM folder (nested, with anything else mixed in), a
zip of one, or a single (multi-frame) DICOM file. For DICOM it lists every series, picks
the CT series to segment (or the one asked for by SeriesInstanceUID), validates and sorts
its slices, converts to HU and builds LPS geometry, resampling onto a regular orthogonal
grid when slices are missing, unevenly spaced or tilted (see
:mod:`pengwin_demo.dicom.geometry` for the rules). Whatever cannot be used raises
:class:`~pengwin_demo.errors.InputError` with a message that says what is wrong and what
to do. Patient names and IDs are removed from every message and name this module makes.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

from ..ct_intensity import check_ct_intensities
from ..errors import InputError
from ..io import read_volume, volume_suffix
from ..volume import Volume
from . import geometry as geom
from .files import UnpackedInput
from .pixels import decode_stack
from .series import (
    MIN_SLICES,
    SeriesInfo,
    SliceHeader,
    choose_series,
    group_series,
    orientation_name,
    quiet_pydicom,
    scan_files,
)

log = logging.getLogger(__name__)

__all__ = ["CTInput", "SeriesInfo", "describe", "load_ct", "MIN_SLICES"]


@dataclass
class CTInput:
    """A CT ready for the pipeline, with where it came from.

    Attributes
    ----------
    volume : Volume
        int16 HU, array (z, y, x), LPS geometry.
    source_kind : str
        "volume-file" or "dicom".
    series : SeriesInfo or None
        The series used (DICOM only); ``series.reason`` says why it was chosen.
    series_seen : list of SeriesInfo
        Every series in the input (DICOM only), with why each was or was not usable.
    dicom_headers : list of pydicom.Dataset or None
        The chosen series' headers without pixel data, sorted along the slice normal (one
        per file; a multi-frame file gives one), kept in memory for DICOM SEG export.
    warnings : list of str
        Everything that was repaired or is doubtful, free of patient identifiers.
    name : str
        Display name free of patient identifiers (safe for file names).
    """

    volume: Volume
    source_kind: str
    series: SeriesInfo | None = None
    series_seen: list[SeriesInfo] = field(default_factory=list)
    dicom_headers: list[pydicom.Dataset] | None = None
    warnings: list[str] = field(default_factory=list)
    name: str = "ct"


# --------------------------------------------------------------------------- privacy
class _Scrubber:
    """Removes patient names and IDs (as found in the headers) from text."""

    def __init__(self, datasets: list[pydicom.Dataset]):
        tokens: set[str] = set()
        seen: set[tuple] = set()
        for ds in datasets:
            ident = tuple(str(ds.get(k, "")) for k in ("PatientName", "PatientID", "AccessionNumber"))
            if ident in seen:
                continue
            seen.add(ident)
            for key in ("PatientName", "PatientID", "OtherPatientIDs", "PatientBirthName",
                        "PatientMotherBirthName", "OtherPatientNames", "AccessionNumber"):
                value = ds.get(key)
                if value in (None, ""):
                    continue
                values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
                for v in values:
                    text = str(v).strip()
                    if len(text) >= 2:
                        tokens.add(text)
                    for part in re.split(r"[\^=\s,]+", text):
                        if len(part) >= 2:
                            tokens.add(part)
        self.pattern = (
            re.compile(
                r"(?<![A-Za-z0-9])(?:"
                + "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
                + r")(?![A-Za-z0-9])",
                re.IGNORECASE,
            )
            if tokens else None
        )

    def __call__(self, text: str) -> str:
        return self.pattern.sub("[redacted]", text) if self.pattern else text


def _safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return name[:80] or "ct"


# --------------------------------------------------------------------------- stacks
def _split_stacks(slices: list[SliceHeader]) -> list[list[SliceHeader]]:
    """Split frames into stacks that share orientation, size and pixel spacing."""
    stacks: list[tuple[np.ndarray, tuple, list[SliceHeader]]] = []
    for s in slices:
        key = (s.rows, s.columns, tuple(np.round(s.pixel_spacing_rc_mm, 4)) if s.pixel_spacing_rc_mm else None)
        for ori, k, members in stacks:
            if k == key and float(np.dot(ori[:3], s.orientation[:3])) > 0.9999 and float(
                np.dot(ori[3:], s.orientation[3:])
            ) > 0.9999:
                members.append(s)
                break
        else:
            stacks.append((s.orientation, key, [s]))
    return [m for _, _, m in stacks]


def _pick_stack(series: SeriesInfo, min_slices: int, warnings: list[str]) -> list[SliceHeader]:
    slices = series.slices
    missing = [s for s in slices if s.position_lps_mm is None or s.orientation is None]
    if missing:
        if len(missing) == len(slices):
            raise InputError(
                "the chosen series has no ImagePositionPatient / ImageOrientationPatient, so its "
                "geometry is unknown. Export the original CT images (not screenshots or a "
                "derived object)."
            )
        warnings.append(f"{len(missing)} frame(s) without position/orientation were ignored")
        slices = [s for s in slices if s not in missing]
    no_spacing = [s for s in slices if s.pixel_spacing_rc_mm is None]
    if no_spacing:
        raise InputError(
            "the chosen series has no PixelSpacing, so voxel size is unknown. Export the "
            "original CT images from the scanner or PACS."
        )
    stacks = _split_stacks(slices)
    if len(stacks) > 1:
        def rank(st: list[SliceHeader]):
            return (orientation_name(st[0].orientation) == "axial", len(st))

        stacks.sort(key=rank, reverse=True)
        best = stacks[0]
        if len(stacks[1]) == len(best) and rank(stacks[1]) == rank(best):
            raise InputError(
                f"the series mixes {len(stacks)} stacks of different orientation or size, two of "
                f"them with {len(best)} slices; cannot tell which is the volume. Export one "
                "reconstruction per series, or pick another series."
            )
        dropped = sum(len(st) for st in stacks[1:])
        warnings.append(
            f"the series mixes {len(stacks)} orientations/slice sizes; used the "
            f"{orientation_name(best[0].orientation)} stack of {len(best)} slices and ignored "
            f"{dropped} other slice(s)"
        )
        slices = best
    if len(slices) < min_slices:
        raise InputError(
            f"the chosen series has only {len(slices)} usable slice(s); at least {min_slices} are "
            "needed for a CT volume. Send the full axial series."
        )
    return slices


def _samples_check(slices: list[SliceHeader]) -> None:
    ds = slices[0].dataset
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if spp != 1 or not photometric.startswith("MONOCHROME"):
        raise InputError(
            f"the chosen series holds colour images ({photometric}, {spp} samples per pixel); "
            "a CT series is grey-scale. This is probably a screen capture: send the CT images."
        )


# --------------------------------------------------------------------------- main entry
def load_ct(
    path: str | os.PathLike,
    series_uid: str | None = None,
    *,
    min_slices: int = MIN_SLICES,
    max_missing_slices: int = geom.MAX_MISSING_SLICES,
    allow_non_ct: bool = False,
) -> CTInput:
    """Load a CT for the pipeline from a volume file, a DICOM folder, a zip or a DICOM file.

    Parameters
    ----------
    path : path-like
        .nii/.nii.gz/.mha/.mhd/.nrrd/.nhdr file; a folder of DICOM files (searched
        recursively; non-DICOM files and DICOMDIR are ignored); a .zip of such a folder;
        or a single multi-frame DICOM file.
    series_uid : str, optional
        SeriesInstanceUID to use instead of the automatic choice.
    min_slices : int
        Fewest slices a usable CT series may have.
    max_missing_slices : int
        Widest run of consecutive missing slices that is filled by interpolation.
    allow_non_ct : bool
        Accept values that do not look like CT in HU (see :mod:`pengwin_demo.ct_intensity`;
        refused by default) with a warning.

    Returns
    -------
    CTInput
        ``volume`` is int16 HU, (z, y, x), spacing (z, y, x) mm, LPS origin and direction.

    Raises
    ------
    InputError
        Whatever makes the input unusable; the message says what to do.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path.name}: not found ({path}). Check the path and try again.")
    if path.is_file() and volume_suffix(path) is not None:
        if series_uid is not None:
            raise InputError(f"{path.name}: --series applies to DICOM input only; this is a volume file.")
        return _load_volume_file(path, allow_non_ct)
    with UnpackedInput(path) as unpacked:
        return _load_dicom(path, unpacked.files, series_uid, min_slices, max_missing_slices,
                           allow_non_ct)


def _load_volume_file(path: Path, allow_non_ct: bool) -> CTInput:
    volume = read_volume(path, kind="ct", allow_non_ct=allow_non_ct)
    warnings = check_ct_intensities(volume.array, path.name, allow_non_ct) if allow_non_ct else []
    stem = path.name[: -len(volume_suffix(path))]
    return CTInput(volume=volume, source_kind="volume-file", name=_safe_name(stem), warnings=warnings)


def _load_dicom(
    path: Path, files: list[Path], series_uid: str | None, min_slices: int, max_missing: int,
    allow_non_ct: bool,
) -> CTInput:
    label = path.name or str(path)
    if not files:
        raise InputError(f"{label}: contains no files. Put the DICOM series (or a zip of it) there.")
    scan = scan_files(files)
    if not scan.slices:
        volumes = [f for f in files if volume_suffix(f) in (".nii.gz", ".nii", ".mha", ".nrrd", ".mhd")]
        if len(volumes) == 1 and series_uid is None:  # a zipped (or foldered) NIfTI/MHA/NRRD
            return _load_volume_file(volumes[0], allow_non_ct)
        raise InputError(
            f"{label}: no DICOM images found among {scan.n_files} file(s) "
            f"({scan.skipped_not_dicom} not DICOM, {scan.skipped_dicomdir} DICOMDIR, "
            f"{scan.skipped_no_image} without pixel data). Give a NIfTI/MHA/NRRD volume, a "
            "folder of DICOM CT images, or a zip of one."
        )
    with quiet_pydicom():  # pydicom quotes invalid values (a patient name too) in its logs
        unique = {id(s.dataset): s.dataset for s in scan.slices}
        scrub = _Scrubber(list(unique.values()) + list(scan.non_image_series.values()))
        try:
            result = _build(scan, series_uid, min_slices, max_missing, scrub, allow_non_ct)
        except InputError as err:
            raise InputError(scrub(str(err))) from None
    for w in result.warnings:
        log.warning("%s", w)
    return result


def _build(scan, series_uid, min_slices, max_missing, scrub, allow_non_ct) -> CTInput:
    warnings: list[str] = []
    chosen, series_seen = _series_listing(scan, series_uid, min_slices, scrub, warnings)
    slices = _pick_stack(chosen, min_slices, warnings)
    _samples_check(slices)
    slices, positions, stack = _sorted_stack(slices, min_slices, warnings)
    plan = geom.plan_grid(
        positions, slices[0].orientation, slices[0].pixel_spacing_rc_mm, slices[0].rows,
        slices[0].columns, max_missing=max_missing,
        gantry_tilt_header_deg=_header_tilt_deg(slices[0].dataset),
    )
    warnings.extend(plan.warnings)
    array = geom.apply_plan(stack, plan)
    volume = Volume(np.ascontiguousarray(array), plan.spacing_zyx_mm, tuple(plan.origin_lps_mm), plan.direction)
    series_name = f"series #{chosen.series_number}" if chosen.series_number is not None else "the series"
    warnings.extend(check_ct_intensities(array, series_name, allow_non_ct))

    info = chosen
    info.n_slices = len(slices)
    info.slices = slices
    num = f"series{info.series_number}" if info.series_number is not None else "series"
    name = _safe_name(scrub(f"{info.modality or 'CT'}_{num}_{info.description}"))
    return CTInput(
        volume=volume, source_kind="dicom", series=info, series_seen=series_seen,
        dicom_headers=_one_header_per_file(slices), warnings=[scrub(w) for w in warnings], name=name,
    )


def _series_listing(scan, series_uid, min_slices, scrub, warnings) -> tuple[SeriesInfo, list[SeriesInfo]]:
    """The series to segment and every series seen (objects without images too), described
    without identifiers; only the chosen one keeps its slice headers."""
    if scan.skipped_not_dicom or scan.skipped_dicomdir:
        log.info("ignored %d non-DICOM file(s) and %d DICOMDIR index(es)", scan.skipped_not_dicom,
                 scan.skipped_dicomdir)
    if scan.skipped_damaged:
        warnings.append(f"{scan.skipped_damaged} DICOM file(s) with unreadable header values were ignored")
    if scan.forced:
        warnings.append(f"{scan.forced} file(s) lacked the DICOM preamble and were force-read")
    series_seen = group_series(scan.slices)
    chosen, notes = choose_series(series_seen, series_uid, min_slices)
    warnings.extend(notes)
    for uid, ds in scan.non_image_series.items():
        desc = str(ds.get("SeriesDescription", "") or "")
        series_seen.append(SeriesInfo(
            series_uid=uid, description=desc, modality=str(ds.get("Modality", "") or ""),
            n_slices=0, slice_thickness_mm=None, reason="no image (report or other object)",
        ))
    for s in series_seen:
        s.description = scrub(s.description)
        if s is not chosen:
            s.slices = []  # keep only the chosen series' headers in memory
    log.debug("series chosen: %s (%s)", chosen.series_uid, chosen.reason)
    return chosen, series_seen


def _sorted_stack(slices: list[SliceHeader], min_slices: int, warnings: list[str]):
    """Slices sorted along the normal, duplicates (same position, same pixels) dropped.

    Returns the slices, their positions (N, 3; LPS mm) and their pixels (N, rows, columns;
    int16 HU). Raises :class:`InputError` when one position holds different images or too
    few positions remain.
    """
    axes = geom.orthonormal_axes(slices[0].orientation)
    positions = np.stack([s.position_lps_mm for s in slices])
    order, sorted_pos = geom.sort_along_normal(positions, axes[:, 2])
    slices = [slices[i] for i in order]
    positions = positions[order]
    groups = geom.duplicate_groups(sorted_pos)
    stack = decode_stack(slices)
    if not groups:
        return slices, positions, stack
    drop: set[int] = set()
    for g in groups:
        first = min(g, key=lambda i: (slices[i].instance_number, str(slices[i].path)))
        for i in g:
            if i == first:
                continue
            if not np.array_equal(stack[i], stack[first]):
                raise InputError(
                    f"{len(groups)} slice position(s) hold two or more different images (first at "
                    f"{sorted_pos[g[0]]:.2f} mm along the normal): the series mixes acquisitions or "
                    "reconstructions and the volume is ambiguous. Export one reconstruction per "
                    "series, or choose another series with --series."
                )
            drop.add(i)
    keep = [i for i in range(len(slices)) if i not in drop]
    warnings.append(
        f"{len(drop)} duplicate slice(s) (same position, identical pixels) were dropped"
    )
    if len(keep) < min_slices:
        raise InputError(
            f"only {len(keep)} distinct slice positions remain after removing duplicates; at "
            f"least {min_slices} are needed. Send the full axial series."
        )
    return [slices[i] for i in keep], positions[keep], stack[keep]


def _header_tilt_deg(ds: pydicom.Dataset) -> float | None:
    """GantryDetectorTilt of the header in degrees; None when absent or unreadable."""
    tilt = ds.get("GantryDetectorTilt")
    try:
        return float(tilt) if tilt not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _one_header_per_file(slices: list[SliceHeader]) -> list[pydicom.Dataset]:
    """The slices' headers, one per file (a multi-frame file gives one), in slice order."""
    headers: list[pydicom.Dataset] = []
    seen_files: set[Path] = set()
    for s in slices:
        if s.path not in seen_files:
            seen_files.add(s.path)
            headers.append(s.dataset)
    return headers


def describe(ct: CTInput) -> str:
    """A multi-line, identifier-free summary of what was loaded (for CLI and logs)."""
    lines = []
    if ct.source_kind == "dicom":
        lines.append(f"series seen ({len(ct.series_seen)}):")
        for s in ct.series_seen:
            mark = "*" if ct.series is not None and s.series_uid == ct.series.series_uid else " "
            why = "" if mark == "*" else (f" -> {s.reason}" if s.reason else "")
            lines.append(f" {mark} {s.summary()}{why}")
        lines.append(f"chosen: {ct.series.series_uid} because: {ct.series.reason}")
    v = ct.volume
    lines.append(f"volume (z, y, x): {v.shape}, spacing (z, y, x) mm: "
                 f"{tuple(round(x, 4) for x in v.spacing_zyx_mm)}, origin LPS mm: "
                 f"{tuple(round(x, 2) for x in v.origin_lps_mm)}")
    for w in ct.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)

