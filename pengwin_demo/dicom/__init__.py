"""CT input: a volume file, a DICOM folder, a zip of one or a single DICOM file -> :class:`CTInput`.

:func:`load_ct` is the one entry point; :func:`describe` summarises what it loaded. The
watcher shares the header reading policy (:func:`read_header`, :func:`series_key`) and the
series grouping (:func:`scan_files`, :func:`group_series`, :func:`assess`), so it splits a
delivery the way ``load_ct`` reads it. Names load with their module on first use.

- :mod:`.load`: :func:`load_ct`, :class:`CTInput`, privacy scrubbing, orchestration.
- :mod:`.files`: folder walk, safe zip extraction.
- :mod:`.read`: the header reading policy.
- :mod:`.series`: header scanning, grouping, the choice of the series to segment.
- :mod:`.geometry`: pure slice geometry: sorting, grid planning, resampling.
- :mod:`.pixels`: pixel data -> int16 HU.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "load": ["CTInput", "describe", "load_ct"],
        "files": ["UnpackedInput", "extract_zip"],
        "read": ["quiet_pydicom", "read_header", "series_key"],
        "series": ["MIN_SLICES", "SeriesInfo", "assess", "choose_series", "group_series", "scan_files"],
        "geometry": ["FILL_HU"],
    },
)
