"""Is this volume a CT in Hounsfield units? The check every CT input passes on loading.

The models were trained on CT in HU; anything else (MR, a CT whose rescale was never
applied, a normalised 0..1 image, a label map given by mistake) gives meaningless
fragments without any error, so such input is refused unless the user overrides the
check (``--allow-non-ct``, ``allow_non_ct=True``).

Rules, on a subsample of at most ~2 million voxels:

1. floating-point values all within 0..1: a normalised image, not HU;
2. whole numbers with at most :data:`LABEL_MAX_VALUES` distinct values in 0..255: a
   label map;
3. nothing below :data:`NO_AIR_HU` in the lowest 1 %: no air and no fat, as in MR or a CT
   stored without its rescale intercept -- except a *masked-bone CT* (everything outside
   the bone set to 0, as the public fracture training data are): at least
   :data:`MASKED_MIN_ZERO_FRACTION` of the voxels exactly 0 and the non-zero voxels
   reaching cortical bone (95th percentile at least :data:`MASKED_MIN_BONE_HU`);
4. all values within a span of 50: a constant image.

Very high or very low values (padding of -2048/-3024 outside the field of view, metal)
are common in real CT and only reported by the readers, not refused here.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

__all__ = ["intensity_problem", "check_ct_intensities", "OVERRIDE_HINT"]

NO_AIR_HU = -200.0
"""A CT of a body holds air (-1000 HU) or at least fat (-100 HU) in its lowest 1 %."""

MASKED_MIN_ZERO_FRACTION = 0.5
"""A masked-bone CT is mostly exact zeros (the real training data: 99 %)."""

MASKED_MIN_BONE_HU = 400.0
"""The non-zero voxels of a masked-bone CT reach cortical bone (real data: 650-1100)."""

LABEL_MAX_VALUES = 64
"""A CT has thousands of distinct values; a label map a few dozen at most."""

MIN_SPREAD = 50.0

_MAX_SAMPLE = 2_000_000

OVERRIDE_HINT = (
    "If this really is the CT you want segmented, run again with --allow-non-ct "
    "(watcher: allow_non_ct = true); the results may be meaningless."
)


def _sample(array: np.ndarray) -> np.ndarray:
    """A regular subsample (every k-th voxel along each axis), flattened."""
    if array.size <= _MAX_SAMPLE:
        return array.ravel()
    step = int(np.ceil((array.size / _MAX_SAMPLE) ** (1.0 / array.ndim)))
    return array[(slice(None, None, step),) * array.ndim].ravel()


def _is_masked_bone(sample: np.ndarray) -> bool:
    zero_fraction = float(np.mean(sample == 0))
    nonzero = sample[sample != 0]
    return (
        zero_fraction >= MASKED_MIN_ZERO_FRACTION
        and nonzero.size > 0
        and float(np.percentile(nonzero, 95)) >= MASKED_MIN_BONE_HU
    )


def intensity_problem(array: np.ndarray) -> str | None:
    """Why ``array`` (any shape, values as stored or in HU) does not look like CT in HU.

    Returns
    -------
    str or None
        A sentence naming what is wrong, or None for a plausible CT (masked-bone CTs
        included).
    """
    sample = _sample(np.asarray(array))
    if sample.size == 0:
        return "the image holds no voxels"
    floating = np.issubdtype(sample.dtype, np.floating)
    if floating and not np.all(np.isfinite(sample)):
        sample = sample[np.isfinite(sample)]
        if sample.size == 0:
            return "the image holds no finite values"
    lo, hi = float(sample.min()), float(sample.max())
    if floating and lo >= 0.0 and hi <= 1.0:
        return f"all values lie within 0..1 ({lo:.3g}..{hi:.3g}): a normalised image, not Hounsfield units"
    whole = not floating or np.array_equal(sample, np.round(sample))
    if whole and lo >= 0 and hi <= 255:
        distinct = np.unique(sample).size
        if distinct <= LABEL_MAX_VALUES:
            return f"it holds only {distinct} distinct whole values in {lo:.0f}..{hi:.0f}: a label map, not a CT"
    if hi - lo < MIN_SPREAD:
        return f"it is nearly constant ({lo:.0f}..{hi:.0f})"
    p1, p99 = (float(v) for v in np.percentile(sample, [1, 99]))
    if p1 > NO_AIR_HU and not _is_masked_bone(sample):
        return (
            f"it holds no air or fat (1st-99th percentile {p1:.0f}..{p99:.0f}; a CT in HU has "
            "air at about -1000 and fat at about -100): this looks like MR, or a CT whose "
            "rescale slope/intercept were not applied"
        )
    return None


def check_ct_intensities(array: np.ndarray, name: str, allow_non_ct: bool = False) -> list[str]:
    """Refuse a volume that does not look like CT in HU, unless overridden.

    Parameters
    ----------
    array : ndarray
        The image values (z, y, x), as read (before any conversion to int16).
    name : str
        File or series name for the message (free of patient identifiers).
    allow_non_ct : bool
        Accept it anyway; the problem is then returned as a warning.

    Returns
    -------
    list of str
        Warnings (empty for a plausible CT).

    Raises
    ------
    InputError
        The values do not look like CT and ``allow_non_ct`` is False.
    """
    problem = intensity_problem(array)
    if problem is None:
        return []
    if allow_non_ct:
        return [f"the image does not look like a CT in Hounsfield units ({problem}); "
                "processed anyway as asked (--allow-non-ct), results may be meaningless"]
    raise InputError(f"{name}: does not look like a CT in Hounsfield units: {problem}. {OVERRIDE_HINT}")
