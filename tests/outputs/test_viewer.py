"""Slice viewer arrays: orientation conventions, square pixels, windows and overlay colours."""

import numpy as np
import pytest

from pengwin_demo.labels import PALETTE_RGB
from pengwin_demo.outputs import (extract_slice, overlay_labels, render_slice, to_lps_orientation,
                                  window_to_uint8)
from pengwin_demo.volume import Volume


def test_ras_stored_volume_is_reoriented_to_lps_without_moving_anatomy():
    arr = np.zeros((10, 12, 14), np.int16)
    arr[9, 0, 0] = 1000  # RAS storage: index x=0 is the patient's LEFT-most column
    vol = Volume(arr, (2.0, 1.0, 1.0), (5.0, 7.0, 0.0), np.diag([-1.0, -1.0, 1.0]))
    lps = to_lps_orientation(vol)
    np.testing.assert_allclose(lps.direction, np.eye(3), atol=1e-9)
    k = np.argwhere(lps.array == 1000)[0]
    np.testing.assert_allclose(lps.index_to_world(k), vol.index_to_world([9, 0, 0]), atol=1e-9)
    assert tuple(k) == (9, 11, 13)  # left-most and posterior-most in LPS storage


def test_axial_is_radiological_and_coronal_superior_up():
    arr = np.zeros((10, 12, 14), np.int16)
    arr[9, 2, 13] = 1  # superior slice, anterior-ish row, patient's far left
    ax = extract_slice(arr, (1.0, 1.0, 1.0), "axial", 9)
    assert np.argwhere(ax)[0].tolist() == [2, 13]  # patient's left on the image right
    cor = extract_slice(arr, (1.0, 1.0, 1.0), "coronal", 2)
    assert np.argwhere(cor)[0].tolist() == [0, 13]  # superior at the top
    sag = extract_slice(arr, (1.0, 1.0, 1.0), "sagittal", 13)
    assert np.argwhere(sag)[0].tolist() == [0, 2]  # anterior on the left


def test_anisotropic_slices_get_square_pixels():
    arr = np.zeros((10, 12, 14), np.int16)
    cor = extract_slice(arr, (3.0, 0.5, 0.5), "coronal", 0)
    assert cor.shape == (60, 14)  # 10 slices * 3 mm / 0.5 mm
    with pytest.raises(ValueError, match="axis"):
        extract_slice(arr, (1, 1, 1), "oblique", 0)


def test_window_maps_range():
    hu = np.array([[-2000, 400 - 900, 400, 400 + 900, 5000]], np.int16)
    out = window_to_uint8(hu, 400, 1800)
    assert out.tolist() == [[0, 0, 127, 255, 255]]


def test_overlay_uses_the_shared_palette():
    grey = np.full((4, 4), 100, np.uint8)
    lab = np.zeros((4, 4), np.uint8)
    lab[1, 1], lab[2, 2] = 1, 21
    rgb = overlay_labels(grey, lab, alpha=1.0)
    assert rgb[1, 1].tolist() == PALETTE_RGB[1].tolist()
    assert rgb[2, 2].tolist() == PALETTE_RGB[21].tolist()
    assert rgb[0, 0].tolist() == [100, 100, 100]
    # sacrum is red-dominant, left hip green, right hip blue
    assert np.argmax(PALETTE_RGB[1]) == 0 and np.argmax(PALETTE_RGB[11]) == 1
    assert np.argmax(PALETTE_RGB[21]) == 2


def test_render_slice_shape():
    ct = np.full((5, 6, 7), 40, np.int16)
    lab = np.zeros_like(ct, dtype=np.uint8)
    img = render_slice(ct, lab, (1, 1, 1), "sagittal", 3, window="soft tissue")
    assert img.shape == (5, 6, 3) and img.dtype == np.uint8
