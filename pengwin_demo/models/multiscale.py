"""One model run at several spacings, its class probabilities averaged (test-time scales).

A network trained at one spacing draws each boundary only as finely as that grid allows: the
bundled 4 mm anatomy model gives the L5 vertebra's lower end and the sacrum's rim to
whichever bone the coarse voxel mostly holds. Run again on finer grids of the same scan,
it draws those boundaries a little differently each time; the mean of the softmax
probabilities settles them better than any one grid. The finer runs cost more, so they
only cover the box of the bones the first run found, plus a margin.
"""

from __future__ import annotations

import logging
from typing import Protocol, Sequence

import numpy as np

from ..bone_region import bone_box_on
from ..volume import Volume, resample_onto, resample_to_spacing

__all__ = ["ProbabilityModel", "predict_at_spacings"]

log = logging.getLogger(__name__)

Spacing = tuple[float, float, float]


class ProbabilityModel(Protocol):
    """What :func:`predict_at_spacings` needs of a model
    (:class:`~pengwin_demo.models.SegmentationModel` is one)."""

    labels: dict[str, int]

    def predict_probabilities(self, volume: Volume) -> np.ndarray: ...


def _on_spacing(ct: Volume, spacing_zyx_mm: Spacing) -> Volume:
    if np.allclose(spacing_zyx_mm, ct.spacing_zyx_mm, rtol=1e-3):
        return ct
    return resample_to_spacing(ct, spacing_zyx_mm, "linear")


def _voxels_at(volume: Volume, spacing_zyx_mm: Spacing) -> float:
    extent = np.asarray(volume.shape) * np.asarray(volume.spacing_zyx_mm)
    return float(np.prod(np.maximum(np.round(extent / np.asarray(spacing_zyx_mm)), 1)))


def predict_at_spacings(model: ProbabilityModel, ct: Volume, spacings_zyx_mm: Sequence[Spacing], *,
                        box_margin_mm: float, max_voxels: float | None = None,
                        ) -> tuple[Volume, Volume, np.ndarray, list[Spacing]]:
    """Labels from a model's class probabilities averaged over several grids of one CT.

    The first spacing runs on the whole CT and gives the output grid. Each further spacing
    runs on the CT cropped to the box of the classes (other than background) the first run
    found, plus ``box_margin_mm`` on every side; its probabilities are interpolated onto
    that box of the output grid. Inside the box every voxel takes the mean over all runs,
    outside it the first run's probabilities.

    Parameters
    ----------
    model : ProbabilityModel
        ``predict_probabilities(volume)`` -> float array (C, Z, Y, X) on the volume's grid,
        channel c the class with the c-th smallest id of ``model.labels`` (0: background).
    ct : Volume
        The CT (HU), any grid.
    spacings_zyx_mm : sequence of (float, float, float)
        Grid spacings to run at, mm, (z, y, x); the first is the output grid.
    box_margin_mm : float
        Margin around the first run's box for the further runs, mm.
    max_voxels : float or None
        A further run whose cropped grid would have more voxels than this is skipped (CPU
        time); None: no limit.

    Returns
    -------
    labels : Volume
        uint8 class ids on the first spacing's grid.
    grid : Volume
        The CT on that grid.
    foreground : ndarray of float32, shape of ``grid``
        1 minus the mean background probability.
    used : list of (float, float, float)
        The spacings of the further runs that ran.
    """
    if not spacings_zyx_mm:
        raise ValueError("at least one spacing is needed")
    ids = np.array(sorted(model.labels.values()), dtype=np.uint8)
    grid = _on_spacing(ct, tuple(spacings_zyx_mm[0]))
    mean = np.asarray(model.predict_probabilities(grid), dtype=np.float32)
    first = grid.with_array(ids[np.argmax(mean, axis=0)])
    box_grid = bone_box_on(first, grid, box_margin_mm)
    box_ct = bone_box_on(first, ct, box_margin_mm)
    used: list[Spacing] = []
    if box_grid is not None and box_ct is not None:
        in_box = mean[(slice(None), *box_grid)]  # a view: the sums land in ``mean``
        target = grid.crop(box_grid)
        for spacing in spacings_zyx_mm[1:]:
            crop = ct.crop(box_ct)
            if max_voxels and _voxels_at(crop, spacing) > max_voxels:
                log.info("a run at %s mm skipped: more than %d voxels", spacing, max_voxels)
                continue
            fine = _on_spacing(crop, tuple(spacing))
            for c, p in enumerate(model.predict_probabilities(fine)):
                # outside the finer grid's cover (its rounded edge) count it as background
                in_box[c] += resample_onto(fine.with_array(np.asarray(p, np.float32)), target, "linear",
                                           default_value=1.0 if c == 0 else 0.0).array
            used.append(tuple(float(s) for s in spacing))
        in_box /= 1 + len(used)
    labels = grid.with_array(ids[np.argmax(mean, axis=0)])
    return labels, grid, 1.0 - mean[0], used
