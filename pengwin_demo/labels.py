"""Label conventions shared by every module: PENGWIN fragment ids, anatomy, ABBC, colours.

PENGWIN map (uint8): 0 background; 1-10 sacrum; 11-20 left hip; 21-30 right hip (the
patient's left and right); within a bone the largest fragment has the lowest number.
Anatomy map (uint8): 0 background, 1 sacrum, 2 left hip, 3 right hip.
ABBC map (uint8): 0 background, 1 boundary, 2 core, 3 border (fracture zone).
"""

from __future__ import annotations

import colorsys
from enum import IntEnum

import numpy as np


class Anatomy(IntEnum):
    """Classes of the anatomy map (Stage 1); lower-case member names are the class names."""

    BACKGROUND = 0
    SACRUM = 1
    LEFT_HIP = 2  # the patient's left
    RIGHT_HIP = 3


class Abbc(IntEnum):
    """Classes of the ABBC map (Stage 2); lower-case member names are the class names."""

    BACKGROUND = 0
    BOUNDARY = 1
    CORE = 2
    BORDER = 3  # fracture zone


def class_ids(classes: type[IntEnum]) -> dict[str, int]:
    """``{"background": 0, ...}``: the ``labels`` block of an nnU-Net dataset.json."""
    return {c.name.lower(): int(c) for c in classes}


ANATOMY_CLASSES: dict[str, int] = class_ids(Anatomy)
ABBC_CLASSES: dict[str, int] = class_ids(Abbc)

BONES: dict[int, str] = {int(b): b.name.lower() for b in Anatomy if b != Anatomy.BACKGROUND}
"""Anatomy label -> bone name."""

MAX_FRAGMENTS_PER_BONE = 10

MAX_LABEL = len(BONES) * MAX_FRAGMENTS_PER_BONE
"""Highest PENGWIN label (30): a fragment map holds 0..MAX_LABEL."""

# plain ints: these go into numpy arrays and compiled extensions
ABBC_BACKGROUND, ABBC_BOUNDARY, ABBC_CORE, ABBC_BORDER = (int(c) for c in Abbc)
ABBC_NAMES: dict[int, str] = {v: k for k, v in ABBC_CLASSES.items()}


def bone_of_label(label: int) -> int:
    """Anatomy id (1 sacrum, 2 left hip, 3 right hip) of a PENGWIN label 1-30; 0 for 0."""
    label = int(label)
    if label == 0:
        return 0
    if not 1 <= label <= MAX_LABEL:
        raise ValueError(f"PENGWIN labels are 0-{MAX_LABEL}, got {label}")
    return int(bone_of_labels(label))


def bone_of_labels(values: np.ndarray) -> np.ndarray:
    """Anatomy id (1 sacrum, 2 left hip, 3 right hip) of PENGWIN labels 1-30 (vectorised,
    no range check)."""
    return (np.asarray(values, dtype=np.int64) - 1) // MAX_FRAGMENTS_PER_BONE + 1


def bone_name(label: int) -> str:
    """Bone name of a PENGWIN label ("sacrum", "left_hip", "right_hip")."""
    return BONES[bone_of_label(label)]


def rank_in_bone(label: int) -> int:
    """Size rank of a PENGWIN label 1-30 within its bone: 1 for the largest fragment (1, 11, 21)."""
    return int(label) - first_label(bone_of_label(label)) + 1


def first_label(bone: int) -> int:
    """PENGWIN label of the largest fragment of anatomy id ``bone`` (1, 11 or 21)."""
    if bone not in BONES:
        raise ValueError(f"bone must be 1, 2 or 3, got {bone}")
    return (bone - 1) * MAX_FRAGMENTS_PER_BONE + 1


def anatomy_from_fragments(fragments: np.ndarray) -> np.ndarray:
    """PENGWIN fragment map (0-30) -> anatomy map (0 bg, 1 sacrum, 2 left hip, 3 right hip)."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[1:MAX_LABEL + 1] = bone_of_labels(np.arange(1, MAX_LABEL + 1))
    return lut[fragments.astype(np.uint8, copy=False)]


def _palette() -> np.ndarray:
    """RGB (0-255) for labels 0-30: sacrum reds, left hip greens, right hip blues."""
    rgb = np.zeros((MAX_LABEL + 1, 3), dtype=np.uint8)
    hues = {Anatomy.SACRUM: 0.0, Anatomy.LEFT_HIP: 0.33, Anatomy.RIGHT_HIP: 0.60}
    for bone, hue in hues.items():
        for k in range(MAX_FRAGMENTS_PER_BONE):
            # alternate lightness so neighbouring fragment numbers contrast; shift hue a little
            h = (hue + (k % 5 - 2) * 0.025) % 1.0
            light = (0.42, 0.62, 0.30, 0.72, 0.52)[k % 5]
            sat = 0.85 if k < 5 else 0.55
            r, g, b = colorsys.hls_to_rgb(h, light, sat)
            rgb[first_label(bone) + k] = np.round(np.array([r, g, b]) * 255)
    return rgb


PALETTE_RGB: np.ndarray = _palette()
"""(31, 3) uint8 colours indexed by PENGWIN label; one palette for meshes, GLB and app."""
