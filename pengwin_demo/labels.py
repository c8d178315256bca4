"""Label conventions shared by every module: PENGWIN fragment ids, anatomy, ABBC, colours.

PENGWIN map (uint8): 0 background; 1-10 sacrum; 11-20 left hip; 21-30 right hip (the
patient's left and right); within a bone the largest fragment has the lowest number.
Anatomy map (uint8): 0 background, 1 sacrum, 2 left hip, 3 right hip.
ABBC map (uint8): 0 background, 1 boundary, 2 core, 3 border (fracture zone).
"""

from __future__ import annotations

import colorsys

import numpy as np

BONES: dict[int, str] = {1: "sacrum", 2: "left_hip", 3: "right_hip"}
"""Anatomy label -> bone name."""

MAX_FRAGMENTS_PER_BONE = 10

ABBC_BACKGROUND, ABBC_BOUNDARY, ABBC_CORE, ABBC_BORDER = 0, 1, 2, 3
ABBC_NAMES = {0: "background", 1: "boundary", 2: "core", 3: "border"}


def bone_of_label(label: int) -> int:
    """Anatomy id (1 sacrum, 2 left hip, 3 right hip) of a PENGWIN label 1-30; 0 for 0."""
    label = int(label)
    if label == 0:
        return 0
    if not 1 <= label <= 30:
        raise ValueError(f"PENGWIN labels are 0-30, got {label}")
    return (label - 1) // 10 + 1


def bone_name(label: int) -> str:
    """Bone name of a PENGWIN label ("sacrum", "left_hip", "right_hip")."""
    return BONES[bone_of_label(label)]


def first_label(bone: int) -> int:
    """PENGWIN label of the largest fragment of anatomy id ``bone`` (1, 11 or 21)."""
    if bone not in BONES:
        raise ValueError(f"bone must be 1, 2 or 3, got {bone}")
    return (bone - 1) * 10 + 1


def anatomy_from_fragments(fragments: np.ndarray) -> np.ndarray:
    """PENGWIN fragment map (0-30) -> anatomy map (0 bg, 1 sacrum, 2 left hip, 3 right hip)."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[1:31] = (np.arange(1, 31) - 1) // 10 + 1
    return lut[fragments.astype(np.uint8, copy=False)]


def _palette() -> np.ndarray:
    """RGB (0-255) for labels 0-30: sacrum reds, left hip greens, right hip blues."""
    rgb = np.zeros((31, 3), dtype=np.uint8)
    hues = {1: 0.0, 2: 0.33, 3: 0.60}
    for bone, hue in hues.items():
        for k in range(10):
            # alternate lightness so neighbouring fragment numbers contrast; shift hue a little
            h = (hue + (k % 5 - 2) * 0.025) % 1.0
            light = (0.42, 0.62, 0.30, 0.72, 0.52)[k % 5]
            sat = 0.85 if k < 5 else 0.55
            r, g, b = colorsys.hls_to_rgb(h, light, sat)
            rgb[first_label(bone) + k] = np.round(np.array([r, g, b]) * 255)
    return rgb


PALETTE_RGB: np.ndarray = _palette()
"""(31, 3) uint8 colours indexed by PENGWIN label; one palette for meshes, GLB and app."""
