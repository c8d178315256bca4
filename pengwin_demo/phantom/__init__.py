"""Synthetic fractured-pelvis CT phantoms with exact PENGWIN fragment labels.

:func:`make_phantom` gives ``(ct, labels)``; :func:`generate_phantom` the whole
:class:`Phantom` (with what was drawn); :func:`write_phantom_dataset` a folder of cases for
training and tests; :func:`write_dicom_series` any CT as a DICOM series. The same seed
gives the same case, bit for bit. Names load with their module on first use.

- :mod:`.generate`: the recipe, from a seed to a case, and the data set writer.
- :mod:`.anatomy`: bones as signed distance fields in a canonical patient frame.
- :mod:`.fractures`: fracture plans: the cuts that break a bone into fragments, which move.
- :mod:`.render`: distance fields -> CT voxels (cortex, cancellous texture, partial volume)
  and fragment labels.
- :mod:`.tissue`: soft tissue, air, bowel gas and the scanner table on a coarse grid.
- :mod:`.sdf`: signed distance primitives and canvases.
- :mod:`.dicom_export`: a CT as a DICOM CT Image Storage series.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "generate": [
            "FRAGMENT_COUNT_PROBABILITIES", "SIZES", "Phantom", "case_seed", "generate_phantom",
            "make_phantom", "write_phantom_dataset",
        ],
        "dicom_export": ["write_dicom_series"],
    },
)
