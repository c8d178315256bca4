"""Fragments from geometry: ABBC training targets and the instance recovery that inverts them.

The ABBC model predicts four classes (0 background, 1 boundary, 2 core, 3 border) that mean
the same in every patient; classical steps turn a prediction back into numbered fragments.
:func:`abbc_targets` makes the classes from fragment labels (training),
:func:`recover_fragments` the fragments from the classes (inference), and
:func:`smooth_labels_onto` takes them from the model's grid to the CT's. Names load with
their module on first use.

- :mod:`.targets`: fragment labels -> ABBC targets.
- :mod:`.instances`: ABBC prediction + anatomy map -> PENGWIN fragment labels.
- :mod:`.geodesic`: geodesic Voronoi growth from seeds (fast path and reference).
- :mod:`.upsample`: fragment labels from a coarse grid onto a finer one.
- :mod:`.cavities`: background enclosed by a bone (also once closed over fatty marrow) given
  to its fragments.
- :mod:`.soft_tissue`: fragments whose CT values are soft tissue or contrast, not bone, dropped.
- :mod:`.isolated`: small fragments apart from every other fragment dropped as stray pieces.
- :mod:`.vertebra`: the part of the L5 vertebra that Stage 1 took for sacrum cut off it.
- :mod:`.noise`: deliberately imperfect ABBC maps, for tests and benchmarks.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "targets": ["abbc_targets"],
        "instances": ["RecoveryResult", "recover_fragments"],
        "geodesic": ["grow_labels"],
        "upsample": ["nearest_onto", "smooth_labels_onto"],
        "cavities": ["MARROW_CLOSE_MM", "fill_bone_cavities", "fill_marrow"],
        "soft_tissue": ["MIN_FRAGMENT_MEDIAN_HU", "MIN_FRAGMENT_SPREAD_HU", "drop_soft_tissue_fragments"],
        "isolated": ["MAX_CRUMB_ML", "MIN_CRUMB_GAP_MM", "drop_isolated_crumbs"],
        "vertebra": ["MAX_MIDLINE_OFFSET_MM", "MIN_BONE_HU", "MIN_VERTEBRA_ML", "cut_vertebra_off_sacrum"],
    },
)
