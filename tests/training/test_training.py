"""Dataset conversion (PENGWIN layout -> nnU-Net raw datasets), demo plans, model stripping."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from pengwin_demo.recovery import abbc_targets
from pengwin_demo.errors import InputError
from pengwin_demo.io import read_volume
from pengwin_demo.labels import anatomy_from_fragments
from pengwin_demo.phantom import write_phantom_dataset
from pengwin_demo.training import (
    DEMO_CONFIGURATION,
    DemoConfig,
    dataset_folder_name,
    demo_plans_entry,
    find_cases,
    prepare_datasets,
    strip_model,
    to_canonical,
)


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    write_phantom_dataset(out, 2, seed=31, size="small")
    return out


@pytest.mark.slow
def test_prepare_datasets_on_phantoms(phantom_dir, tmp_path):
    raw = tmp_path / "nnUNet_raw"
    out = prepare_datasets(phantom_dir, raw, dataset_id=611, num_workers=2, verify=True, progress=False)
    assert out["abbc"].name == "Dataset611_PengwinABBC"
    assert out["anatomy"].name == "Dataset612_PengwinAnatomy"
    for kind, labels in (("abbc", {"background": 0, "boundary": 1, "core": 2, "border": 3}),
                         ("anatomy", {"background": 0, "sacrum": 1, "left_hip": 2, "right_hip": 3})):
        meta = json.loads((out[kind] / "dataset.json").read_text())
        assert meta["labels"] == labels and meta["numTraining"] == 2 and meta["channel_names"] == {"0": "CT"}
    for case, image_path, label_path in find_cases(phantom_dir):
        gt = to_canonical(read_volume(label_path, "label"))
        ct = to_canonical(read_volume(image_path, "ct"))
        img = read_volume(out["abbc"] / "imagesTr" / f"{case}_0000.nii.gz")
        assert img.same_grid(ct, tol_mm=1e-3) and np.array_equal(img.array, ct.array)
        assert np.allclose(img.direction, np.eye(3))  # canonical LPS storage
        anat = read_volume(out["anatomy"] / "labelsTr" / f"{case}.nii.gz", "label")
        assert np.array_equal(anat.array, anatomy_from_fragments(gt.array))
        abbc = read_volume(out["abbc"] / "labelsTr" / f"{case}.nii.gz", "label")
        assert np.array_equal(abbc.array, abbc_targets(gt.array, gt.spacing_zyx_mm))
        assert {0, 1, 2} <= set(np.unique(abbc.array).tolist()) <= {0, 1, 2, 3}
        # same voxels of bone in both datasets
        assert np.array_equal(abbc.array > 0, anat.array > 0)


def test_canonical_orientation_keeps_world_positions():
    arr = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    from pengwin_demo.volume import Volume

    ras = Volume(arr, (2.0, 1.0, 0.5), (10.0, 20.0, 30.0), np.diag([-1.0, -1.0, 1.0]))
    lps = to_canonical(ras)
    assert np.allclose(lps.direction, np.eye(3))
    # voxel (z, y, x) = (1, 2, 3) of the RAS copy sits at the same world point in the LPS copy
    world = ras.index_to_world(np.array([[1, 2, 3]]))
    idx = np.rint(lps.world_to_index(world)).astype(int)[0]
    assert lps.array[tuple(idx)] == ras.array[1, 2, 3]


def test_find_cases_errors(tmp_path):
    with pytest.raises(InputError, match="images/ and labels/"):
        find_cases(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(InputError, match="no images"):
        find_cases(tmp_path)
    img = sitk.Image(4, 4, 4, sitk.sitkInt16)
    sitk.WriteImage(img, str(tmp_path / "images" / "001.mha"))
    with pytest.raises(InputError, match="001.mha: no label file"):
        find_cases(tmp_path)
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt8), str(tmp_path / "labels" / "001.mha"))
    assert [c for c, _, _ in find_cases(tmp_path)] == ["001"]


def test_prepare_refuses_to_overwrite(tmp_path):
    (tmp_path / "src" / "images").mkdir(parents=True)
    (tmp_path / "src" / "labels").mkdir(parents=True)
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkInt16), str(tmp_path / "src" / "images" / "a.mha"))
    sitk.WriteImage(sitk.Image(4, 4, 4, sitk.sitkUInt8), str(tmp_path / "src" / "labels" / "a.mha"))
    (tmp_path / "raw" / dataset_folder_name("abbc", 700)).mkdir(parents=True)
    with pytest.raises(InputError, match="already exists"):
        prepare_datasets(tmp_path / "src", tmp_path / "raw", 700, num_workers=1, progress=False)


def test_prepare_takes_a_crop_without_air_only_when_allowed(tmp_path, phantom_dir):
    """A case cut tight around the bone holds no air: refused as not CT unless allowed."""
    from pengwin_demo.io import write_volume

    labels = read_volume(phantom_dir / "labels" / "phantom_31_000.mha", "label")
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(labels.array))
    labels = labels.crop(box)
    ct = labels.with_array(np.where(labels.array > 0, 500, 40).astype(np.int16))  # bone and muscle only
    write_volume(ct, tmp_path / "src" / "images" / "tight.nii.gz")
    write_volume(labels, tmp_path / "src" / "labels" / "tight.nii.gz")
    with pytest.raises(InputError, match="does not look like a CT in Hounsfield units"):
        prepare_datasets(tmp_path / "src", tmp_path / "raw", 700, num_workers=1, verify=False, progress=False)
    out = prepare_datasets(tmp_path / "src", tmp_path / "raw", 700, num_workers=1, verify=False, progress=False,
                           overwrite=True, allow_non_ct=True)
    image = read_volume(out["anatomy"] / "imagesTr" / "tight_0000.nii.gz", allow_non_ct=True)
    np.testing.assert_array_equal(image.array, to_canonical(ct).array)


def test_dataset_names():
    assert dataset_folder_name("abbc", 501) == "Dataset501_PengwinABBC"
    assert dataset_folder_name("anatomy", 501) == "Dataset502_PengwinAnatomy"
    with pytest.raises(InputError):
        dataset_folder_name("anatomy", 999)


def test_demo_plans_entry_inherits_fullres():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    fullres = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": [128, 128, 128], "median_image_size_in_voxels": [200, 200, 200],
        "spacing": [1.0, 0.8, 0.8], "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape", "resampling_fn_probabilities_kwargs": {},
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": {"n_stages": 6, "features_per_stage": [32, 64, 128, 256, 320, 320],
                                         "kernel_sizes": [[3, 3, 3]] * 6, "strides": [[1, 1, 1]] + [[2, 2, 2]] * 5,
                                         "n_conv_per_stage": [2] * 6, "n_conv_per_stage_decoder": [2] * 5},
                         "_kw_requires_import": []},
        "batch_dice": False,
    }
    cfg = DemoConfig((2.5, 2.5, 2.5), (64, 64, 64), (8, 16, 32, 64))
    plans = {"dataset_name": "x", "plans_name": "nnUNetPlans", "configurations": {
        "3d_fullres": fullres, DEMO_CONFIGURATION: demo_plans_entry(fullres, cfg)}}
    conf = PlansManager(plans).get_configuration(DEMO_CONFIGURATION)
    assert list(conf.spacing) == [2.5, 2.5, 2.5]
    assert list(conf.patch_size) == [64, 64, 64]
    kw = conf.network_arch_init_kwargs
    assert kw["n_stages"] == 4 and list(kw["features_per_stage"]) == [8, 16, 32, 64]
    assert len(kw["strides"]) == 4 and len(kw["n_conv_per_stage_decoder"]) == 3
    assert conf.normalization_schemes == ["CTNormalization"]  # inherited
    assert fullres["architecture"]["arch_kwargs"]["n_stages"] == 6  # base left alone


def test_strip_model_keeps_only_inference(tmp_path):
    import torch

    from pengwin_demo.models import bundled_model_path

    src = tmp_path / "results"
    shutil.copytree(bundled_model_path("anatomy"), src)
    ckpt_path = src / "fold_all" / "checkpoint_final.pth"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    full = dict(ckpt)
    full["network_weights"] = {k: v.float() for k, v in ckpt["network_weights"].items()}
    full["optimizer_state"] = {"huge": torch.zeros(1000)}
    full["trainer_name"] = "SomeCustomTrainer"
    torch.save(full, ckpt_path)
    out = strip_model(src, tmp_path / "stripped")
    slim = torch.load(out / "fold_all" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert "optimizer_state" not in slim
    assert slim["trainer_name"] == "nnUNetTrainerNoMirroring" and slim["trained_with"] == "SomeCustomTrainer"
    assert all(v.dtype == torch.float16 for v in slim["network_weights"].values() if v.is_floating_point())
    assert (out / "plans.json").is_file() and (out / "dataset.json").is_file()


def test_training_children_import_this_package_without_an_install(tmp_path):
    """The nnU-Net steps run as ``python -m pengwin_demo.training`` in a child process; its
    PYTHONPATH starts with the folder holding this very package, installed or not."""
    import os
    from pathlib import Path

    import pengwin_demo
    from pengwin_demo.training.nnunet_run import NnunetDirs

    first = NnunetDirs.under(tmp_path).env()["PYTHONPATH"].split(os.pathsep)[0]
    assert (Path(first) / "pengwin_demo" / "__init__.py").resolve() == Path(pengwin_demo.__file__).resolve()
