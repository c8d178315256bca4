"""Fragment labels from a coarse model grid onto the CT grid: smooth against nearest."""

import numpy as np
import pytest

from pengwin_demo.recovery import nearest_onto, smooth_labels_onto
from pengwin_demo.volume import Volume, resample_to_spacing


def _iou(a, b):
    return np.count_nonzero(a & b) / np.count_nonzero(a | b)


def _split_ball(shape=(60, 70, 100), spacing=(0.9, 0.8, 0.7), radius_mm=18.0, direction=None):
    """A ball cut by an oblique plane into labels 1 and 2, a small ball 3 beside it (mm grid)."""
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    c = [n * s / 2 for n, s in zip(shape, spacing)]
    r = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2)
    lab = np.zeros(shape, np.uint8)
    ball = r <= radius_mm
    side = (0.3 * (z - c[0]) + 0.5 * (y - c[1]) + 0.8 * (x - c[2])) > 2.0
    lab[ball & ~side] = 1
    lab[ball & side] = 2
    small = np.sqrt((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2] - radius_mm - 8) ** 2) <= 6.0
    lab[small] = 3
    kw = {} if direction is None else {"direction": direction}
    return Volume(lab, spacing, (10.0, -20.0, 5.0), **kw)


@pytest.mark.parametrize("direction", [None, np.diag([-1.0, -1.0, 1.0])])
def test_smooth_upsampling_is_closer_to_the_truth_than_nearest(direction):
    truth = _split_ball(direction=direction)
    coarse = resample_to_spacing(truth, (2.5, 2.5, 2.5), "nearest")
    smooth = smooth_labels_onto(coarse, truth)
    nearest = nearest_onto(coarse, truth)
    assert smooth.dtype == np.uint8 and smooth.shape == truth.shape
    for k in (1, 2, 3):
        iou_s, iou_n = _iou(smooth == k, truth.array == k), _iou(nearest == k, truth.array == k)
        assert iou_s > iou_n, (k, iou_s, iou_n)
        assert iou_s > {1: 0.9, 2: 0.88, 3: 0.78}[k], (k, iou_s)
    # the union's surface: within about half a fine voxel of the true sphere on average
    assert _iou(smooth > 0, truth.array > 0) > 0.9


def test_same_grid_and_empty_inputs():
    truth = _split_ball(shape=(30, 30, 30), radius_mm=8.0)
    coarse = resample_to_spacing(truth, (2.0, 2.0, 2.0), "nearest")
    # on its own grid the smooth resampling gives the labels back unchanged
    np.testing.assert_array_equal(smooth_labels_onto(coarse, coarse), coarse.array)
    empty = coarse.with_array(np.zeros_like(coarse.array))
    out = smooth_labels_onto(empty, truth)
    assert out.shape == truth.shape and not out.any()


def test_a_one_voxel_label_is_kept():
    lab = np.zeros((10, 10, 10), np.uint8)
    lab[2:8, 2:8, 2:8] = 1
    lab[5, 5, 8] = 2  # a one-voxel sliver on the face of label 1
    coarse = Volume(lab, (2.0, 2.0, 2.0))
    fine = Volume(np.zeros((40, 40, 40), np.uint8), (0.5, 0.5, 0.5))
    out = smooth_labels_onto(coarse, fine)
    assert set(np.unique(out)) == {0, 1, 2}
    assert np.count_nonzero(out == 2) >= 1


def test_a_foreground_field_moves_the_surface_to_where_it_lies():
    """With the fraction of each coarse voxel that is bone (what a network's foreground
    probability estimates), the surface lands between voxel centres where it belongs."""
    from scipy import ndimage

    from pengwin_demo.volume import resample_onto

    truth = _split_ball()
    coarse = resample_to_spacing(truth, (2.5, 2.5, 2.5), "nearest")
    sigma = [2.5 / s / 2.355 for s in truth.spacing_zyx_mm]  # about a 2.5 mm box average
    fraction = ndimage.gaussian_filter((truth.array > 0).astype(np.float32), sigma)
    fg = resample_onto(truth.with_array(fraction), coarse, "linear").array
    plain = smooth_labels_onto(coarse, truth)
    guided = smooth_labels_onto(coarse, truth, foreground=fg)
    bone = truth.array > 0
    assert _iou(guided > 0, bone) > _iou(plain > 0, bone) + 0.02
    for k in (1, 2):  # labels still come from the label map
        assert _iou(guided == k, truth.array == k) >= _iou(plain == k, truth.array == k)
    with pytest.raises(ValueError, match="foreground shape"):
        smooth_labels_onto(coarse, truth, foreground=fg[:-1])
