"""PENGWIN label map -> DICOM Segmentation (highdicom), one segment per fragment.

The SEG references the source CT series (its Study, Series, Frame of Reference and every
source image), so a PACS files it under the same study and a viewer overlays it on the CT.
Its frames are placed from the label map's own geometry (highdicom ``Volume`` with the
full index -> LPS affine), so the SEG lines up with the CT even when the loader had to
resample the series (missing slices, gantry tilt).

Segments are numbered 1..N in PENGWIN label order; each is labelled like
``"11 left hip fragment 1"``, coded as SNOMED CT Sacrum (54735007) or Hip (29836001) with
a Left/Right laterality modifier, and carries its palette colour.

Real series are not always complete: when a source header lacks SOP Class / SOP Instance
UID, they are taken from its file meta information; when the Study or Series Instance UID
is empty, a new one is made and a warning says the SEG will not link to the study.

highdicom quotes header values while it builds the SEG: a warning repeats a one-part
patient name, its log names every source data set by UID. None of that reaches a log or
the console: its log is held back below ERROR during the build, and pydicom's log and
Python warnings are silenced as while headers are read.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.uid import CTImageStorage, generate_uid

from .. import __version__
from ..dicom import quiet_pydicom
from ..errors import InputError
from ..labels import PALETTE_RGB, Anatomy, bone_name, bone_of_label, rank_in_bone
from ..volume import Volume
from .report import labels_present

__all__ = ["labels_to_seg", "write_dicom_seg", "segment_label"]

SEG_SERIES_NUMBER = 9100
"""Series number given to the SEG (high, so PACS lists it after the CT)."""

_HIP = hd.sr.CodedConcept("29836001", "SCT", "Hip")
_SACRUM = hd.sr.CodedConcept("54735007", "SCT", "Sacrum")
_LEFT = hd.sr.CodedConcept("7771000", "SCT", "Left")
_RIGHT = hd.sr.CodedConcept("24028007", "SCT", "Right")
_CATEGORY = hd.sr.CodedConcept("123037004", "SCT", "Anatomical Structure")


def segment_label(label: int) -> str:
    """Human-readable segment label, e.g. ``"21 right hip fragment 1"`` (at most 64 chars)."""
    name = bone_name(label).replace("_", " ")
    return f"{label:02d} {name} fragment {rank_in_bone(label)}"


def _fixed_sources(headers: list[pydicom.Dataset]) -> tuple[list[pydicom.Dataset], list[str]]:
    """Copies of the source headers with the UIDs highdicom needs filled in."""
    warnings: list[str] = []
    fixed = [copy.deepcopy(h) for h in headers]
    made: dict[str, str] = {}
    for ds in fixed:
        meta = getattr(ds, "file_meta", None)
        if not str(ds.get("SOPClassUID", "") or ""):
            ds.SOPClassUID = (meta.get("MediaStorageSOPClassUID") if meta is not None else None) or CTImageStorage
        if not str(ds.get("SOPInstanceUID", "") or ""):
            ds.SOPInstanceUID = (meta.get("MediaStorageSOPInstanceUID") if meta is not None else None) or generate_uid()
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if not str(ds.get(key, "") or ""):
                made.setdefault(key, generate_uid())
                setattr(ds, key, made[key])
        for key in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyID",
                    "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName"):
            if key not in ds:
                setattr(ds, key, "")
    if made:
        warnings.append(
            "the source series lacks " + ", ".join(sorted(made)) + "; the DICOM SEG got new "
            "ones and will not be linked to the original study or series in a PACS"
        )
    return fixed, warnings


def labels_to_seg(
    labels: Volume,
    source_headers: list[pydicom.Dataset],
    *,
    series_number: int = SEG_SERIES_NUMBER,
    series_description: str = "Pelvic fragments (pengwin_demo)",
    algorithm_name: str = "pengwin_demo ABBC + instance recovery",
) -> tuple[hd.seg.Segmentation, list[str]]:
    """Build a DICOM SEG from a PENGWIN label map on the CT grid.

    Parameters
    ----------
    labels : Volume
        PENGWIN label map (uint8 0-30), array (z, y, x), on the grid of the loaded CT.
    source_headers : list of pydicom.Dataset
        Headers (pixel data not needed) of the chosen source series, as
        :attr:`pengwin_demo.dicom.CTInput.dicom_headers`.
    series_number, series_description, algorithm_name
        Written into the SEG.

    Returns
    -------
    (highdicom.seg.Segmentation, list of str)
        The SEG dataset (BINARY, one segment per fragment, empty frames omitted) and
        warnings.

    Raises
    ------
    InputError
        No source headers or no fragments.
    """
    if not source_headers:
        raise InputError("DICOM SEG needs the source DICOM series; the input was not DICOM.")
    present = labels_present(labels.array)
    if not present:
        raise InputError("DICOM SEG needs at least one fragment; the label map is empty.")
    sources, warnings = _fixed_sources(list(source_headers))

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, family=codes.DCM.ArtificialIntelligence, version=__version__,
    )
    descriptions = []
    lut = np.zeros(256, dtype=np.uint8)
    for number, label in enumerate(present, start=1):
        lut[label] = number
        descriptions.append(_segment_description(number, label, algorithm))

    volume = hd.Volume(
        lut[labels.array],
        labels.index_to_world_matrix(),
        coordinate_system="PATIENT",
        frame_of_reference_uid=str(sources[0].FrameOfReferenceUID),
    )
    with _without_header_echo():
        seg = _segmentation(sources, volume, descriptions, series_number, series_description)
    return seg, warnings


def _segmentation(sources, volume, descriptions, series_number: int, series_description: str):
    """highdicom's SEG of ``volume`` (BINARY, empty frames omitted) on ``sources``."""
    return hd.seg.Segmentation(
        source_images=sources,  # the SEG copies patient and study from them: that is how PACS link it
        pixel_array=volume,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=int(series_number),
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="pengwin_demo",
        manufacturer_model_name="pengwin_demo",
        software_versions=__version__,
        device_serial_number="0",
        content_description="Pelvic bone fragments, PENGWIN labels",
        content_label="FRAGMENTS",
        series_description=series_description,
        omit_empty_frames=True,
        transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian,
    )


_held_lock = threading.Lock()
_held_builds = 0
_saved_level = logging.NOTSET


@contextmanager
def _without_header_echo():
    """Build a SEG without highdicom or pydicom echoing header values (see the module
    docstring): pydicom and Python warnings quiet as while headers are read
    (:func:`~pengwin_demo.dicom.quiet_pydicom`), and highdicom's logger (the level its child
    loggers inherit) held at ERROR while any build runs."""
    global _held_builds, _saved_level
    hd_log = logging.getLogger("highdicom")
    with _held_lock:
        if _held_builds == 0:
            _saved_level = hd_log.level
            hd_log.setLevel(logging.ERROR)
        _held_builds += 1
    try:
        with quiet_pydicom():
            yield
    finally:
        with _held_lock:
            _held_builds -= 1
            if _held_builds == 0:
                hd_log.setLevel(_saved_level)


def _segment_description(number: int, label: int, algorithm) -> hd.seg.SegmentDescription:
    """Segment ``number`` of PENGWIN ``label``: SNOMED CT Sacrum or Hip with its laterality,
    the palette colour, a tracking id."""
    bone = bone_of_label(label)
    desc = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=segment_label(label),
        segmented_property_category=_CATEGORY,
        segmented_property_type=_SACRUM if bone == Anatomy.SACRUM else _HIP,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_id=f"fragment {label:02d}",
        tracking_uid=generate_uid(),
        display_color=hd.color.CIELabColor.from_rgb(*[int(c) for c in PALETTE_RGB[label]]),
    )
    if bone != Anatomy.SACRUM:
        desc.SegmentedPropertyTypeModifierCodeSequence = [_LEFT if bone == Anatomy.LEFT_HIP else _RIGHT]
    return desc


def write_dicom_seg(
    labels: Volume, source_headers: list[pydicom.Dataset], path: str | os.PathLike, **kwargs
) -> tuple[Path, list[str]]:
    """Write :func:`labels_to_seg` to ``path`` (atomically); return (path, warnings)."""
    seg, warnings = labels_to_seg(labels, source_headers, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    seg.save_as(tmp)
    os.replace(tmp, path)
    return path, warnings
