"""Is what Stage 1 found a pelvis? Checks between Stage 1 and Stage 2.

A model can mark "pelvis" in a scan that shows none (a head, a chest, vertebrae). Before
Stage 2 runs, the Stage-1 bones are measured: dense-bone volume per bone, their median HU,
and where they lie relative to each other in patient coordinates (LPS: +x the patient's
left, +y posterior, +z superior). Implausible anatomy either refuses the scan (no fragments,
one sentence that says why) or is reported as a warning.

Reference values, expert labels of five real fractured pelves: sacrum 159-241 mL
(103-155 mL at or above 150 HU), each hip 262-385 mL (198-313 mL), the two hips within 5 %
of each other; median HU 181-403; the sacrum 25-45 mm posterior to the hips' centroids and
between them from left to right.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .labels import BONES
from .volume import Volume

__all__ = ["AnatomyCheck", "check_anatomy", "keep_near_pelvis", "drop_pieces_without_cortex", "BONE_HU", "MIN_BONE_ML", "MIN_PART_ML",
           "MIN_MEDIAN_HU", "MAX_HIP_RATIO", "MAX_GAP_MM", "MIN_PEAK_HU",
           "MIN_JUDGED_PIECE_ML", "MIN_HIP_SEPARATION_MM", "MAX_HIPS_ACROSS_MIDLINE", "hips_across_midline"]

BONE_HU = 150.0
"""Stage-1 voxels count as bone for the volume checks only at or above this HU (cortical
bone 500-2000 HU, cancellous 150-400), so a model that marks soft tissue outside its
training domain does not start Stage 2."""

MIN_BONE_ML = 50.0
"""Less dense Stage-1 bone than this in all means "no pelvic bone found"."""

MIN_PART_ML = 20.0
"""A bone counts as present with at least this much dense bone; fewer than two present
bones is not a pelvis (real pelves hold 100-300 mL per bone)."""

MAX_GAP_MM = 30.0
"""Stage-1 bone farther than this from the largest connected piece of pelvis is dropped: a
rib or a lumbar vertebra taken for hip. Displaced fragments and a widened sacro-iliac joint
or symphysis stay within it. On the real upper-abdomen series (no pelvis) a model took
vertebrae and ribs for 56 mL of "pelvis" in pieces; what lies near the largest piece is
8 mL, under :data:`MIN_BONE_ML`, so the scan is refused."""

MIN_PEAK_HU = 500.0
"""A separate piece of Stage-1 bone whose brightest CT voxel is below this has no cortex:
it is contrast in bowel or vessels, not bone, and is dropped. Every one of the 36 expert
fragments of the real fractured pelves and sacrum peaks at 568 HU or more (most above 700);
the contrast-filled bowel loops a model took for sacrum and hips in a real planning CT peak
at 54-426 HU. Pieces under :data:`MIN_JUDGED_PIECE_ML` are not judged: a 0.4 mL detached
bit of an expert fragment (cancellous bone) peaks at 327 HU."""

MIN_JUDGED_PIECE_ML = 1.0
"""Smallest Stage-1 piece (mL) that :func:`drop_pieces_without_cortex` judges."""

MIN_HIP_SEPARATION_MM = 75.0
"""Two hips whose dense-bone centroids lie closer than this left to right are not a pelvis
(seven real adult pelves: 142-155 mm, and 90-100 mm for the lower third of the five expert
pelves alone, as a scan of the acetabula shows them; the skull of a real head CT, taken for
both hips by a model: 63 mm)."""

MAX_HIPS_ACROSS_MIDLINE = 0.05
"""Largest fraction of the two hips' dense bone that may lie across the mid-plane between
their centroids, on the other hip's side. A pelvis keeps its hips apart: expert labels of
five real fractured pelves 0-1.1 %, Stage 1 on two real intact pelves 0.1-0.3 %. On a real
upper-abdomen CT ending at L4/L5 a model took lumbar vertebrae, ribs and a sliver of iliac
crest for both hips, mixed left and right: 23 %."""

MIN_MEDIAN_HU = 100.0
"""Stage-1 voxels whose median is below this are soft tissue, not bone."""

MAX_HIP_RATIO = 2.0
"""A hip with more than this times the other's dense bone gets a warning (real pelves: 1.05)."""


@dataclass
class AnatomyCheck:
    """Outcome of :func:`check_anatomy`.

    Attributes
    ----------
    refusal : str or None
        One sentence for the user when the scan shows no pelvis (Stage 2 must not run).
    warnings : list of str
        Plausibility warnings (Stage 2 runs).
    bones : dict
        Per bone name: ``dense_ml``, ``median_hu``, ``centroid_lps_mm`` (None when absent).
    dense_ml : float
        Dense bone of all three, mL.
    """

    refusal: str | None
    warnings: list[str] = field(default_factory=list)
    bones: dict[str, dict] = field(default_factory=dict)
    dense_ml: float = 0.0


def _bone_stats(anatomy: Volume, ct: np.ndarray) -> dict[str, dict]:
    ml = anatomy.voxel_volume_mm3 / 1000.0
    out = {}
    for bone, name in BONES.items():
        mask = anatomy.array == bone
        dense = mask & (ct >= BONE_HU)
        n = int(np.count_nonzero(dense))
        centroid = anatomy.index_to_world(np.argwhere(dense).mean(axis=0)[None])[0] if n else None
        out[name] = {
            "dense_ml": round(n * ml, 2),
            "median_hu": float(np.median(ct[mask])) if mask.any() else None,
            "centroid_lps_mm": None if centroid is None else [round(float(c), 1) for c in centroid],
        }
    return out


def keep_near_pelvis(anatomy: Volume, max_gap_mm: float = MAX_GAP_MM,
                     min_link_ml: float = 1.0) -> tuple[Volume, float]:
    """Drop Stage-1 bone that lies apart from the pelvis.

    The pelvis grows from the largest 26-connected piece of the three bones together (the
    ring of sacrum and hips, or its largest part when fractured): any piece within
    ``max_gap_mm`` of what is kept joins it, so a chain of displaced fragments stays. Only
    pieces of at least ``min_link_ml`` extend the reach: specks do not bridge the way to a
    rib. The pieces left over are set to background.

    Parameters
    ----------
    anatomy : Volume
        Stage-1 map (0 background, 1 sacrum, 2 left hip, 3 right hip).
    max_gap_mm : float
        Largest distance (mm) between the pelvis and a piece that is kept.
    min_link_ml : float
        Smallest kept piece (mL) from which the distance to further pieces is measured.

    Returns
    -------
    (Volume, float)
        The cleaned map and the volume dropped, mL.
    """
    import cc3d
    import edt

    pieces, n = cc3d.connected_components(anatomy.array > 0, connectivity=26, return_N=True)
    if n < 2:
        return anatomy, 0.0
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    link = sizes * anatomy.voxel_volume_mm3 / 1000 >= min_link_ml
    kept = np.zeros(n + 1, bool)
    kept[int(np.argmax(sizes))] = True
    anchors = kept.copy()
    while True:
        distance_mm = edt.edt(~anchors[pieces] | (pieces == 0), anisotropy=anatomy.spacing_zyx_mm)
        nearest = np.full(n + 1, np.inf)
        np.minimum.at(nearest, pieces, distance_mm)
        joining = ~kept & (nearest <= max_gap_mm)
        joining[0] = False
        kept |= joining
        if not (joining & link).any():
            break
        anchors |= joining & link
    kept[0] = True  # background stays background
    return _without_pieces(anatomy, pieces, kept)


def drop_pieces_without_cortex(anatomy: Volume, ct: Volume, min_peak_hu: float = MIN_PEAK_HU,
                               min_piece_ml: float = MIN_JUDGED_PIECE_ML) -> tuple[Volume, float]:
    """Drop the 26-connected pieces of Stage-1 bone of at least ``min_piece_ml`` whose
    brightest CT voxel is below ``min_peak_hu``.

    Parameters
    ----------
    anatomy : Volume
        Stage-1 map (0 background, 1 sacrum, 2 left hip, 3 right hip) on any grid.
    ct : Volume
        The CT in HU at its own resolution: the peak is taken there (within the bone box),
        since resampling to a coarse model grid averages a thin cortex away.
    min_peak_hu : float
        Brightest voxel (HU) a piece needs to stay.
    min_piece_ml : float
        Smaller pieces are kept whatever their peak (left to :func:`keep_near_pelvis`).

    Returns
    -------
    (Volume, float)
        The cleaned map and the volume dropped, mL.
    """
    import cc3d
    from scipy import ndimage

    from .bone_region import bone_box_on
    from .volume import resample_onto

    pieces, n = cc3d.connected_components(anatomy.array > 0, connectivity=26, return_N=True)
    box = bone_box_on(anatomy, ct, margin_mm=0.0)
    if n == 0 or box is None:
        return anatomy, 0.0
    hu = ct.crop(box)
    on_ct = resample_onto(anatomy.with_array(pieces.astype(np.int32)), hu, "nearest").array
    # a piece of min_piece_ml always holds voxels of the CT grid; a smaller one that holds
    # none peaks at 0 here and is kept as small anyway
    peak = np.asarray(ndimage.maximum(hu.array, on_ct, np.arange(1, n + 1)), dtype=np.float64)
    small = np.bincount(pieces.ravel(), minlength=n + 1)[1:] * anatomy.voxel_volume_mm3 / 1000 < min_piece_ml
    return _without_pieces(anatomy, pieces, np.concatenate([[True], (peak >= min_peak_hu) | small]))


def _without_pieces(anatomy: Volume, pieces: np.ndarray, keep: np.ndarray) -> tuple[Volume, float]:
    """``anatomy`` with the pieces whose ``keep`` entry is False set to background, and the
    volume dropped (mL)."""
    drop = ~keep[pieces]
    if not drop.any():
        return anatomy, 0.0
    cleaned = np.where(drop, 0, anatomy.array).astype(anatomy.array.dtype)
    return anatomy.with_array(cleaned), round(float(np.count_nonzero(drop)) * anatomy.voxel_volume_mm3 / 1000, 2)


def check_anatomy(anatomy: Volume, ct: np.ndarray, *, min_bone_ml: float = MIN_BONE_ML,
                  min_bones: int = 2) -> AnatomyCheck:
    """Measure the Stage-1 bones and decide whether they make a pelvis.

    Parameters
    ----------
    anatomy : Volume
        Stage-1 map (0 background, 1 sacrum, 2 left hip, 3 right hip).
    ct : ndarray, shape ``anatomy.shape``
        The CT in HU on the same grid.
    min_bone_ml : float
        Less dense bone than this in all refuses the scan; 0 switches every refusal off.
    min_bones : int
        Fewer bones than this with :data:`MIN_PART_ML` of dense bone each refuse the scan
        (2 for a pelvis; 1 where the user says which bones there are, e.g. a single bone).
        With 2 or more, hips closer than :data:`MIN_HIP_SEPARATION_MM` left to right or
        mixed across the mid-line (:data:`MAX_HIPS_ACROSS_MIDLINE`) refuse it too.

    Returns
    -------
    AnatomyCheck
    """
    if ct.shape != anatomy.shape:
        raise ValueError(f"ct shape {ct.shape} differs from anatomy shape {anatomy.shape}")
    bones = _bone_stats(anatomy, ct)
    total = float(sum(b["dense_ml"] for b in bones.values()))
    check = AnatomyCheck(None, [], bones, round(total, 2))
    present = [name for name, b in bones.items() if b["dense_ml"] >= MIN_PART_ML]
    labelled = anatomy.array > 0
    median = float(np.median(ct[labelled])) if labelled.any() else None
    if min_bone_ml <= 0:
        pass  # bone-density gates off (e.g. synthetic intensities): nothing to refuse on
    elif total < min_bone_ml:
        check.refusal = (f"no pelvic bone found (Stage 1 found {total:.1f} mL of sacrum/hip bone, less "
                         f"than {min_bone_ml:g} mL); check that the scan covers the pelvis. "
                         "No fragments were produced.")
    elif median is not None and median < MIN_MEDIAN_HU:
        check.refusal = (f"no pelvic bone found: what Stage 1 marked as pelvis has a median of {median:.0f} HU, "
                         "soft tissue rather than bone (is this a CT of the pelvis?). No fragments were produced.")
    elif len(present) < min_bones:
        found = ", ".join(f"{n} {bones[n]['dense_ml']:.0f} mL" for n in present) or "none"
        check.refusal = (f"no pelvis found: Stage 1 found fewer than {min_bones} of sacrum, left and right "
                         f"hip with at least {MIN_PART_ML:g} mL of bone each ({found}); a pelvic CT shows "
                         "at least two. No fragments were produced.")
    both_hips = min(bones["left_hip"]["dense_ml"], bones["right_hip"]["dense_ml"]) >= MIN_PART_ML
    if check.refusal is None and min_bone_ml > 0 and min_bones >= 2 and both_hips:
        check.refusal = _narrow_hips(bones) or _mixed_hips(anatomy, ct)
    if check.refusal is None:
        check.warnings.extend(_layout_warnings(bones))
    return check


def _narrow_hips(bones: dict[str, dict]) -> str | None:
    """The refusal for two hips (both present) too close together left to right to be a
    pelvis, or None."""
    left, right = bones["left_hip"], bones["right_hip"]
    apart_mm = abs(left["centroid_lps_mm"][0] - right["centroid_lps_mm"][0])
    if apart_mm >= MIN_HIP_SEPARATION_MM:
        return None
    return (f"no pelvis found: the two hip bones Stage 1 found lie only {apart_mm:.0f} mm apart from left to "
            f"right (an adult pelvis: about 140-155 mm); is this a CT of the pelvis? No fragments were produced.")


def hips_across_midline(anatomy: Volume, ct: np.ndarray) -> float | None:
    """Fraction of the two hips' dense bone (at or above :data:`BONE_HU`) lying across the
    sagittal mid-plane between their centroids, on the other hip's side.

    The plane is perpendicular to the patient's left-right (LPS x) axis, so the measure is
    the same whichever side each hip was found on. None when a hip has no dense bone.
    """
    x_mm = {}
    for bone in (2, 3):
        dense = np.argwhere((anatomy.array == bone) & (ct >= BONE_HU))
        if not len(dense):
            return None
        x_mm[bone] = anatomy.index_to_world(dense)[:, 0]
    left, right = x_mm[2], x_mm[3]
    mid = 0.5 * (left.mean() + right.mean())
    left_side = 1.0 if left.mean() >= mid else -1.0  # the side the left hip was found on
    across = np.count_nonzero((left - mid) * left_side < 0) + np.count_nonzero((right - mid) * left_side > 0)
    return across / (left.size + right.size)


def _mixed_hips(anatomy: Volume, ct: np.ndarray) -> str | None:
    """The refusal for two hips (both present) mixed across the mid-line (vertebrae and ribs
    taken for hips), or None."""
    across = hips_across_midline(anatomy, ct)
    if across is None or across <= MAX_HIPS_ACROSS_MIDLINE:
        return None
    return (f"no pelvis found: the bone Stage 1 found as left and right hip is mixed across the body's "
            f"mid-line ({100 * across:.0f} % of it on the other hip's side; a pelvis: under "
            f"{100 * MAX_HIPS_ACROSS_MIDLINE:.0f} %); is this a CT of the pelvis? No fragments were produced.")


def _layout_warnings(bones: dict[str, dict]) -> list[str]:
    """Warnings about the relative size and position of the bones found."""
    out = []
    left, right, sacrum = bones["left_hip"], bones["right_hip"], bones["sacrum"]
    if left["centroid_lps_mm"] and right["centroid_lps_mm"]:
        big, small = max(left["dense_ml"], right["dense_ml"]), min(left["dense_ml"], right["dense_ml"])
        if small > 0 and big / small > MAX_HIP_RATIO:
            out.append(f"the hips differ in size ({left['dense_ml']:.0f} mL left, {right['dense_ml']:.0f} mL "
                       "right): one may lie partly outside the scan or be partly missed by Stage 1")
        if left["centroid_lps_mm"][0] < right["centroid_lps_mm"][0]:
            out.append("the bone found as the left hip lies on the patient's right: the image "
                       "orientation (header) may be wrong, and so may the sides of the fragments")
        elif sacrum["centroid_lps_mm"] and not (
                right["centroid_lps_mm"][0] < sacrum["centroid_lps_mm"][0] < left["centroid_lps_mm"][0]):
            out.append("the bone found as the sacrum does not lie between the hips; check the Stage-1 result")
    return out
