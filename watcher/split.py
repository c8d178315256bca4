"""Split a delivery holding several CT series into one job per series.

A folder or zip dropped in the inbox may hold two studies (two patients, two visits) or
several reconstructions of one study. The pipeline segments one series per run, so such a
delivery becomes one job per *candidate* series, and nothing is left out unseen:

- candidates are the series :func:`pengwin_demo.dicom.choose_series` would choose
  among, per study: the usable CT volumes, and of those only the axial
  ORIGINAL/PRIMARY ones when the study has any (reformats of the same data ride along);
- each candidate gets a group of files: its own, and, for the first candidate of its
  study, every other file of that study (localizers, dose reports, reformats), so those
  are listed in that job's report;
- a study without any candidate (an MR study, localizers only, a SEG object) is one group
  of its own, which fails with the reason -- kept in the failed area, never deleted;
- files that are not DICOM ride with the first group.

A delivery with one group is not split. The header reading is the loaders'
(:func:`pengwin_demo.dicom.scan_files`), so the split sees what ``load_ct`` sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pengwin_demo.dicom import SeriesInfo, UnpackedInput, assess, group_series, read_header, scan_files
from pengwin_demo.errors import InputError

__all__ = ["SeriesGroup", "plan_split"]

SPLIT_KINDS = ("folder", "zip", "files")
"""Job kinds that may hold several series (loose files are grouped per series on arrival,
so "files" is split only when its folder was mistaken for one)."""


@dataclass
class SeriesGroup:
    """Files that make one job, with what they hold (no identifiers).

    ``files`` are (source path, path relative to the delivery's root) pairs; the sources
    live in the job's input (folder) or in a temporary unpacked copy (zip).
    """

    description: str
    files: list[tuple[Path, Path]] = field(default_factory=list)


def _label(series: SeriesInfo) -> str:
    num = f"#{series.series_number}" if series.series_number is not None else "#?"
    return f"series {num} {series.modality or '?'} {series.orientation} {series.n_slices} slices"


def _candidates(series: list[SeriesInfo]) -> list[SeriesInfo]:
    """Per study: the preferred usable series, else the usable ones (choose_series' pool)."""
    out: list[SeriesInfo] = []
    for study in dict.fromkeys(s.study_uid for s in series):
        usable = [s for s in series if s.study_uid == study and s.usable]
        preferred = [s for s in usable if s.preferred]
        out.extend(preferred or usable)
    return out


def _study_of_file(path: Path, slice_study: dict[Path, str]) -> str | None:
    if path in slice_study:
        return slice_study[path]
    ds, _forced = read_header(path)
    if ds is None:
        return None
    return str(ds.get("StudyInstanceUID", "") or "")


def _groups(root: Path, files: list[Path]) -> list[SeriesGroup]:
    scan = scan_files(files)
    series = [assess(s) for s in group_series(scan.slices)]
    candidates = _candidates(series)
    slice_study = {s.path: info.study_uid for info in series for s in info.slices}
    slice_series = {s.path: s.series_uid for s in scan.slices}
    groups: dict[str, SeriesGroup] = {}  # candidate series uid or "study:<uid>" -> group
    first_of_study: dict[str, str] = {}
    for c in candidates:
        groups[c.series_uid] = SeriesGroup(_label(c))
        first_of_study.setdefault(c.study_uid, c.series_uid)
    junk: list[tuple[Path, Path]] = []
    for path in files:
        rel = path.relative_to(root)
        if path.name.upper() == "DICOMDIR":
            junk.append((path, rel))  # an index of the delivery, not a series
            continue
        uid = slice_series.get(path)
        if uid in groups:
            groups[uid].files.append((path, rel))
            continue
        study = _study_of_file(path, slice_study)
        if study is None:
            junk.append((path, rel))
            continue
        key = first_of_study.get(study, f"study:{study}")
        if key not in groups:
            groups[key] = SeriesGroup("a study without a usable CT series")
        groups[key].files.append((path, rel))
    out = list(groups.values())
    if out:
        out[0].files.extend(junk)
    return out


class SplitPlan:
    """Context manager: the groups of a delivery (the zip, if any, stays unpacked inside).

    ``groups`` has one entry for a delivery that needs no split.
    """

    def __init__(self, input_path: Path, kind: str):
        self.input_path = input_path
        self.kind = kind
        self.groups: list[SeriesGroup] = []
        self._unpacked: UnpackedInput | None = None

    def __enter__(self) -> "SplitPlan":
        if self.kind not in SPLIT_KINDS:
            return self
        self._unpacked = UnpackedInput(self.input_path)
        try:
            unpacked = self._unpacked.__enter__()
        except InputError:
            self._unpacked = None
            return self  # the job itself reports what is wrong with the archive
        root = unpacked.tmp if unpacked.tmp is not None else self.input_path
        self.groups = _groups(root, unpacked.files)
        return self

    def __exit__(self, *exc) -> None:
        if self._unpacked is not None:
            self._unpacked.__exit__(*exc)


def plan_split(input_path: Path, kind: str) -> SplitPlan:
    """The groups of one job's input (use as a context manager; see :class:`SplitPlan`)."""
    return SplitPlan(input_path, kind)
