"""Fragments whose CT values are soft tissue or uniform contrast are dropped; bone fragments,
however pale, stay."""

from __future__ import annotations

import numpy as np
import pytest

from pengwin_demo.recovery import MIN_FRAGMENT_MEDIAN_HU, MIN_FRAGMENT_SPREAD_HU, drop_soft_tissue_fragments


def _textured(shape, median_hu: float, sd_hu: float, seed: int = 0) -> np.ndarray:
    return np.rint(np.random.default_rng(seed).normal(median_hu, sd_hu, shape)).astype(np.int16)


def _hip_with_muscle():
    """A left hip (bone 11 and 13: cortex and trabeculae make their values spread), a muscle
    piece 12 against it (uniform 55 HU), a pale sacrum 1."""
    labels = np.zeros((10, 10, 40), np.uint8)
    hu = np.full(labels.shape, -50, np.int16)
    labels[:, :, 0:15], hu[:, :, 0:15] = 11, _textured((10, 10, 15), 400, 150)
    labels[:, :, 15:19], hu[:, :, 15:19] = 12, 55      # muscle lying against the bone
    labels[:, :, 19:24], hu[:, :, 19:24] = 13, _textured((10, 10, 5), 250, 120, seed=1)
    labels[:, :, 30:38], hu[:, :, 30:38] = 1, 40       # the only sacrum fragment: kept
    return labels, hu


def test_soft_tissue_fragment_dropped_and_numbers_closed_up():
    labels, hu = _hip_with_muscle()
    out, dropped = drop_soft_tissue_fragments(labels, hu)
    assert dropped == [12]
    assert not out[:, :, 15:19].any()
    assert np.all(out[:, :, 19:24] == 12), "the dense fragment after it takes its number"
    assert np.all(out[:, :, 0:15] == 11) and np.all(out[:, :, 30:38] == 1)
    assert out.dtype == labels.dtype


def test_uniform_contrast_fragment_dropped():
    """Contrast-filled bowel against the bone: dense (median 180 HU) but uniform."""
    labels, hu = _hip_with_muscle()
    hu[:, :, 15:19] = _textured((10, 10, 4), 180, 15, seed=2)  # 90th percentile ~19 HU above
    out, dropped = drop_soft_tissue_fragments(labels, hu)
    assert dropped == [12] and not out[:, :, 15:19].any()
    kept, none = drop_soft_tissue_fragments(labels, hu, min_spread_hu=0)
    assert none == [] and np.array_equal(kept, labels)
    hu[:, :, 15:19] = _textured((10, 10, 4), 180, 15 * MIN_FRAGMENT_SPREAD_HU / 19 * 1.2, seed=2)
    assert drop_soft_tissue_fragments(labels, hu)[1] == [], "a spread above the threshold: bone"


def test_nothing_to_drop_leaves_the_labels_as_they_are():
    labels, hu = _hip_with_muscle()
    hu[:, :, 15:19] = _textured((10, 10, 4), MIN_FRAGMENT_MEDIAN_HU + 20, 100, seed=3)  # pale bone
    out, dropped = drop_soft_tissue_fragments(labels, hu)
    assert dropped == [] and np.array_equal(out, labels)
    empty = np.zeros((3, 3, 3), np.uint8)
    assert drop_soft_tissue_fragments(empty, np.zeros((3, 3, 3)))[1] == []


def test_bad_input_refused():
    with pytest.raises(ValueError, match="shape"):
        drop_soft_tissue_fragments(np.zeros((3, 3, 3), np.uint8), np.zeros((3, 3, 4)))
    with pytest.raises(ValueError, match="labels"):
        drop_soft_tissue_fragments(np.full((3, 3, 3), 31, np.uint8), np.zeros((3, 3, 3)))


@pytest.mark.slow
def test_every_real_expert_fragment_is_kept(real_expert_cases):
    for name, ct, labels in real_expert_cases:
        out, dropped = drop_soft_tissue_fragments(labels.array, ct.array)
        assert dropped == [], name
        assert np.array_equal(out, labels.array)
