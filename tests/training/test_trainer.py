"""The demo trainer's thick-slice augmentation, on nnU-Net's own training transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pengwin_demo.training.trainer import _add_thick_slice_transform


def _nnunet_transforms() -> list:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    composed = nnUNetTrainer.get_training_transforms(
        (32, 32, 32), (0.0, 0.0), None, (0, 1, 2), False, use_mask_for_norm=[False])
    return composed.transforms


def _thick(probability: float = 1.0):
    transforms = _nnunet_transforms()
    n = len(transforms)
    _add_thick_slice_transform(transforms, probability)
    assert len(transforms) == n + 1
    added = [i for i, t in enumerate(transforms)
             if type(getattr(t, "transform", None)).__name__ == "SimulateLowResolutionTransform"]
    assert added[1] == added[0] + 1, "the thick-slice step follows nnU-Net's low-resolution step"
    return transforms[added[1]]


def test_thick_slices_blur_z_only():
    thick = _thick()
    torch.manual_seed(0)
    # thin structures along z (alternating slices) are blurred ...
    z_lines = torch.zeros((1, 32, 32, 32))
    z_lines[:, ::2] = 1000.0
    out = thick(image=z_lines.clone())["image"]
    assert float((out - z_lines).abs().mean()) > 100.0
    # ... but every slice stays a plane: nothing moves within a slice
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))
    # structures that vary only within the slices come through unchanged
    x_lines = torch.zeros((1, 32, 32, 32))
    x_lines[..., ::2] = 1000.0
    assert torch.allclose(thick(image=x_lines.clone())["image"], x_lines)


def test_thick_slice_probability_is_honoured():
    thick = _thick(probability=0.3)
    torch.manual_seed(1)
    z_lines = torch.zeros((1, 16, 8, 8))
    z_lines[:, ::2] = 1.0
    changed = [not torch.equal(thick(image=z_lines.clone())["image"], z_lines) for _ in range(400)]
    assert np.mean(changed) == pytest.approx(0.3, abs=0.07)
