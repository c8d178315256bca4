"""Fragment labels from a model's coarse grid onto the (finer) input grid, smoothly.

The learned stages run at the model's spacing (the demo ABBC model at 2 mm), and instance
recovery labels fragments on that grid. Taken back to the CT's grid by nearest neighbour,
every fragment is a stack of 2 mm blocks: on held-out full-size phantoms the ground truth
itself, taken to 2 mm and back that way, keeps only IoU-A 0.89-0.91. Here the bone surface
is instead the 0.5 level of a linearly interpolated foreground field (the network's
foreground probability, or the labels' indicator), as nnU-Net resamples probabilities to
take its predictions back to the input grid: IoU-A 0.93 for the same round trip with the
indicator, 0.98 with a partial-volume foreground (see ``docs/pipeline.md``).

Arrays are indexed (z, y, x); grids are :class:`pengwin_demo.volume.Volume`.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..volume import Box, Volume, bounding_box, box_onto, resample_onto


def _grow(box: Box) -> Box:
    """``box`` grown by one voxel a side (slices past the end are clipped by numpy)."""
    return tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)  # type: ignore[return-value]


def _linear_onto(indicator: Volume, reference: Volume) -> np.ndarray:
    """Linear interpolation of a 0/1 indicator (or a [0, 1] field) onto ``reference``'s grid (float32, 0 outside)."""
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference.to_sitk())
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetDefaultPixelValue(0.0)
    image = sitk.Cast(indicator.to_sitk(), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampler.Execute(image))


def smooth_labels_onto(source: Volume, target: Volume, *, foreground: np.ndarray | None = None,
                       level: float = 0.5) -> np.ndarray:
    """Resample a label map onto ``target``'s grid with smooth label surfaces.

    A target voxel is labelled where the linearly interpolated foreground field reaches
    ``level``; it takes the label whose own interpolated indicator is largest there (so
    no voxel farther than one source voxel from a label gets it). Each label is
    interpolated over its own bounding box only.

    Parameters
    ----------
    source : Volume
        uint8 label map (z, y, x), e.g. fragments on the model grid.
    target : Volume
        The grid to label (e.g. the CT); only its geometry is used.
    foreground : ndarray of float, shape ``source.shape``, optional
        The foreground field on the source grid, e.g. a network's foreground probability
        (:meth:`pengwin_demo.models.SegmentationModel.predict_with_foreground`): it carries
        where between two voxel centres the surface lies, which the labels cannot. Default:
        the indicator ``source > 0`` (the surface then lies halfway between labelled and
        unlabelled voxel centres).
    level : float
        Level of the interpolated foreground field that is the surface.

    Returns
    -------
    ndarray of uint8, shape ``target.shape``
        Labels on the target grid. Every label of ``source`` that covers at least one
        target voxel centre by nearest neighbour is kept: a label that would lose all its
        voxels to its neighbours (a one-voxel sliver) keeps its nearest-neighbour voxels.
    """
    out = np.zeros(target.shape, dtype=np.uint8)
    labels = source.array
    box = bounding_box(labels > 0)
    if box is None:
        return out
    union = box_onto(source, box, target, margin_vox=1)
    if union is None:
        return out
    sub = target.crop(union)
    grown = _grow(box)
    if foreground is None:
        field = (labels[grown] > 0).astype(np.uint8)
    else:
        if foreground.shape != labels.shape:
            raise ValueError(f"foreground shape {foreground.shape} differs from the labels' {labels.shape}")
        field = np.ascontiguousarray(foreground[grown], dtype=np.float32)
    p_fg = _linear_onto(source.crop(grown).with_array(field), sub)
    best = np.zeros(sub.shape, dtype=np.float32)
    lab = np.zeros(sub.shape, dtype=np.uint8)
    boxes = ndimage.find_objects(labels)  # one pass: the box of each label value
    present = [k for k in range(1, len(boxes) + 1) if boxes[k - 1] is not None]
    for k in present:
        kbox = boxes[k - 1]
        kgrown = _grow(kbox)
        tbox = box_onto(source, kbox, sub, margin_vox=1)
        if tbox is None:
            continue
        p = _linear_onto(source.crop(kgrown).with_array((labels[kgrown] == k).astype(np.uint8)),
                         sub.crop(tbox))
        b, lb = best[tbox], lab[tbox]
        win = p > b
        b[win] = p[win]
        lb[win] = k
    lab[p_fg < np.float32(level)] = 0
    out[union] = lab
    missing = set(present) - set(np.unique(lab).tolist())
    if missing:
        nearest = nearest_onto(source, target)
        for k in missing:
            out[nearest == k] = k
    return out


def nearest_onto(source: Volume, target: Volume) -> np.ndarray:
    """``source`` resampled onto ``target``'s grid, nearest neighbour, as a (z, y, x) array.

    When both grids share origin and direction (a model grid made by
    :func:`resample_to_spacing` from the target), the lookup is separable per axis and
    done by indexing (2-4x faster than SimpleITK on a 512 x 512 x 330 grid); it then
    gives what :func:`resample_onto` gives: the voxel whose centre is nearest, and 0 past
    the source's far edge (a fine centre exactly halfway between two coarse ones may go
    either way, as in SimpleITK). Other grids go through :func:`resample_onto`.
    """
    if source.same_grid(target, tol_mm=1e-4):
        return source.array
    same_frame = (np.allclose(source.origin_lps_mm, target.origin_lps_mm, atol=1e-4)
                  and np.allclose(source.direction, target.direction, atol=1e-6))
    if not same_frame:
        return resample_onto(source, target, "nearest").array
    index = []
    for n_out, s_out, n_in, s_in in zip(target.shape, target.spacing_zyx_mm,
                                        source.shape, source.spacing_zyx_mm):
        c = np.floor(np.arange(n_out) * (s_out / s_in) + 0.5).astype(np.int64)
        index.append(c)
    inside = [c < n for c, n in zip(index, source.shape)]
    clipped = [np.minimum(c, n - 1) for c, n in zip(index, source.shape)]
    iz, iy, ix = clipped
    out = source.array[iz][:, iy][:, :, ix]  # axis by axis: faster than one np.ix_ gather
    for axis, ok in enumerate(inside):
        if not ok.all():
            sl = [slice(None)] * 3
            sl[axis] = ~ok
            out[tuple(sl)] = 0
    return out
