"""File I/O: formats, exact geometry round trips, LPS vs RAS storage, and bad input."""

import logging

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from pengwin_demo.errors import InputError
from pengwin_demo.io import read_volume, write_like, write_volume
from pengwin_demo.volume import Volume

SUFFIXES = [".nii", ".nii.gz", ".mha", ".mhd", ".nrrd"]


def _ct(direction=np.eye(3), spacing=(2.5, 0.75, 0.8), origin=(-101.3, 12.7, -305.25)):
    rng = np.random.default_rng(1)
    arr = rng.integers(-1000, 1500, size=(12, 20, 18)).astype(np.int16)
    return Volume(arr, spacing, origin, direction)


def _oblique():
    a = np.deg2rad(15)
    return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_every_format_round_trips(tmp_path, suffix):
    vol = _ct(_oblique())
    path = write_volume(vol, tmp_path / f"ct{suffix}")
    back = read_volume(path)
    assert back.same_grid(vol)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, vol.array)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), _oblique()],
                         ids=["lps", "ras", "oblique"])
def test_nifti_mha_nifti_keeps_geometry(tmp_path, direction):
    vol = _ct(direction)
    a = read_volume(write_volume(vol, tmp_path / "a.nii.gz"))
    b = read_volume(write_volume(a, tmp_path / "b.mha"))
    c = read_volume(write_volume(b, tmp_path / "c.nii.gz"))
    for v in (a, b, c):
        np.testing.assert_allclose(v.origin_lps_mm, vol.origin_lps_mm, atol=1e-4)
        np.testing.assert_allclose(v.spacing_zyx_mm, vol.spacing_zyx_mm, atol=1e-4)
        np.testing.assert_allclose(v.direction, vol.direction, atol=1e-4)
        np.testing.assert_array_equal(v.array, vol.array)


def _write_nifti_with_nibabel(path, data_xyz, affine_ras):
    img = nib.Nifti1Image(data_xyz, affine_ras)
    img.set_qform(affine_ras, code=1)
    img.set_sform(affine_ras, code=1)
    nib.save(img, str(path))


def test_label_lands_on_same_anatomy_for_lps_and_ras_stored_inputs(tmp_path):
    """The same patient stored two ways; a label at one anatomical point must match."""
    nx, ny, nz = 16, 14, 10
    data = np.zeros((nx, ny, nz), np.int16) - 1000
    data[3, 4, 5] = 1500  # a bright "landmark" voxel
    # RAS-stored: voxel axes along +R, +A, +S (nibabel affine is RAS)
    aff_ras = np.diag([0.8, 0.9, 2.0, 1.0])
    aff_ras[:3, 3] = [-6.0, -6.3, 40.0]
    _write_nifti_with_nibabel(tmp_path / "ras.nii.gz", data, aff_ras)
    # LPS-stored: flip x and y storage order, axes along +L, +P
    data_lps = data[::-1, ::-1, :].copy()
    aff_lps = aff_ras.copy()
    aff_lps[0, 0] = -0.8
    aff_lps[1, 1] = -0.9
    aff_lps[0, 3] = aff_ras[0, 3] + 0.8 * (nx - 1)
    aff_lps[1, 3] = aff_ras[1, 3] + 0.9 * (ny - 1)
    _write_nifti_with_nibabel(tmp_path / "lps.nii.gz", data_lps, aff_lps)

    world_points = []
    for name in ("ras", "lps"):
        ct = read_volume(tmp_path / f"{name}.nii.gz")
        labels = (ct.array > 1000).astype(np.uint8)  # "segment" the landmark
        out = write_like(labels, ct, tmp_path / f"{name}_label.nii.gz")
        # read the written label with nibabel (independent reader) and locate it in RAS mm
        img = nib.load(str(out))
        ijk = np.argwhere(np.asarray(img.dataobj) > 0)
        assert len(ijk) == 1
        world_points.append(nib.affines.apply_affine(img.affine, ijk[0]))
    np.testing.assert_allclose(world_points[0], world_points[1], atol=1e-4)
    # and that point is where the landmark was written
    np.testing.assert_allclose(world_points[0], nib.affines.apply_affine(aff_ras, [3, 4, 5]), atol=1e-4)


def test_label_read_is_uint8_and_rejects_fractions(tmp_path):
    lab = Volume(np.arange(24, dtype=np.int32).reshape(2, 3, 4) % 31, (1, 1, 1))
    back = read_volume(write_volume(lab, tmp_path / "l.mha"), kind="label")
    assert back.array.dtype == np.uint8
    frac = Volume(np.full((3, 3, 3), 0.5, np.float32), (1, 1, 1))
    with pytest.raises(InputError, match="whole numbers"):
        read_volume(write_volume(frac, tmp_path / "f.mha"), kind="label")


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(InputError, match=r"nothere\.nii\.gz: file not found"):
        read_volume(tmp_path / "nothere.nii.gz")


def test_empty_and_truncated_files(tmp_path):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        read_volume(tmp_path / "empty.nii.gz")
    path = write_volume(_ct(), tmp_path / "full.nii")
    data = path.read_bytes()
    (tmp_path / "cut.nii").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"cut\.nii: cannot be read.*truncated"):
        read_volume(tmp_path / "cut.nii")
    (tmp_path / "junk.mha").write_bytes(b"this is not an image\n" * 10)
    with pytest.raises(InputError, match=r"junk\.mha: cannot be read"):
        read_volume(tmp_path / "junk.mha")


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
def test_detached_header_without_its_data_file_names_that_file(tmp_path, suffix):
    image = _ct().to_sitk()
    sitk.WriteImage(image, str(tmp_path / f"scan{suffix}"))
    data = [p for p in tmp_path.iterdir() if p.suffix != suffix]
    assert len(data) == 1  # the separate pixel data file ITK wrote beside the header
    assert read_volume(tmp_path / f"scan{suffix}").same_grid(_ct())
    data[0].rename(tmp_path / "elsewhere.bin")
    with pytest.raises(InputError, match=rf"scan\{suffix}: its pixel data are in a separate file, "
                                         rf"'{data[0].name}', which is not beside it"):
        read_volume(tmp_path / f"scan{suffix}")


def test_unknown_suffix_and_folder(tmp_path):
    (tmp_path / "scan.txt").write_text("x")
    with pytest.raises(InputError, match="unknown file type"):
        read_volume(tmp_path / "scan.txt")
    with pytest.raises(InputError, match="is a folder"):
        read_volume(tmp_path)


def test_2d_image_is_refused(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((20, 20), np.int16))
    sitk.WriteImage(img, str(tmp_path / "slice.mha"))
    with pytest.raises(InputError, match=r"slice\.mha: is a 2D image.*whole series"):
        read_volume(tmp_path / "slice.mha")
    one = Volume(np.zeros((1, 20, 20), np.int16), (1, 1, 1))
    write_volume(one, tmp_path / "one.nii.gz")
    with pytest.raises(InputError, match="2D image"):
        read_volume(tmp_path / "one.nii.gz")


def test_4d_image_is_refused(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((3, 4, 5, 6), np.int16), isVector=False)
    sitk.WriteImage(img, str(tmp_path / "series4d.nii.gz"))
    with pytest.raises(InputError, match=r"series4d\.nii\.gz: is a 4D image"):
        read_volume(tmp_path / "series4d.nii.gz")


def test_colour_image_is_refused(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True)
    sitk.WriteImage(img, str(tmp_path / "rgb.mha"))
    with pytest.raises(InputError, match="values per voxel"):
        read_volume(tmp_path / "rgb.mha")


@pytest.mark.parametrize("spacing", [(1e-6, 1, 1), (1, 1, 400.0)])
def test_absurd_spacing_is_refused(tmp_path, spacing):
    img = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.int16))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(tmp_path / "bad.mha"))
    with pytest.raises(InputError, match=r"bad\.mha: voxel spacing .* outside"):
        read_volume(tmp_path / "bad.mha")


def test_zero_spacing_in_header_is_refused(tmp_path):
    path = write_volume(_ct(), tmp_path / "zero.mha", compress=False)
    text = path.read_bytes().replace(b"ElementSpacing = 0.80000000000000004 0.75 2.5",
                                     b"ElementSpacing = 0 0.75 2.5")
    if text == path.read_bytes():  # header formatting differs: patch generically
        head, _, rest = path.read_bytes().partition(b"ElementSpacing = ")
        line, _, tail = rest.partition(b"\n")
        text = head + b"ElementSpacing = 0 0 0\n" + tail
    path.write_bytes(text)
    with pytest.raises(InputError, match="zero.mha"):
        read_volume(path)


def test_non_ct_intensities_are_refused_unless_allowed(tmp_path, caplog):
    mr = Volume(np.random.default_rng(0).integers(0, 400, (8, 8, 8)).astype(np.int16), (1, 1, 1))
    path = write_volume(mr, tmp_path / "mr_like.nii.gz")
    with pytest.raises(InputError, match=r"mr_like.nii.gz: does not look like a CT.*--allow-non-ct"):
        read_volume(path)
    with caplog.at_level(logging.WARNING):
        vol = read_volume(path, allow_non_ct=True)
    assert vol.shape == (8, 8, 8)
    assert "mr_like.nii.gz" in caplog.text and "Hounsfield" in caplog.text


def test_float_ct_is_rounded_to_int16(tmp_path):
    arr = np.array([[[-1000.4, 40.6], [2000.2, 3.5]]] * 3, np.float32)
    path = write_volume(Volume(arr, (1, 1, 1)), tmp_path / "float.nrrd")
    vol = read_volume(path)
    assert vol.array.dtype == np.int16
    assert vol.array[0, 0, 0] == -1000 and vol.array[0, 0, 1] == 41


def test_write_is_atomic_no_temp_left(tmp_path):
    write_volume(_ct(), tmp_path / "x.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.nii.gz"]
