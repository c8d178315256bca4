"""Meshes: world geometry (LPS, RAS-stored, oblique), outward normals, surface fidelity,
binary STL and the coloured GLB scene."""

import json
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import trimesh
from scipy.spatial import cKDTree

from pengwin_demo.io import read_volume, write_volume
from pengwin_demo.labels import PALETTE_RGB
from pengwin_demo.outputs import (
    MeshDetail,
    fragment_meshes,
    lps_to_gltf_matrix,
    mask_mesh,
    scene_glb,
    stl_name,
    write_scene_glb,
    write_stls,
)
from pengwin_demo.volume import Volume

SPACING = (1.5, 0.8, 0.7)  # z, y, x mm
ORIGIN = (-40.0, 25.0, -300.0)  # LPS mm


def _phantom_labels() -> np.ndarray:
    """Three fragments: an ellipsoid (sacrum 1), a box (left hip 11), a ball (right hip 21)."""
    z, y, x = np.mgrid[:40, :60, :70]
    a = np.zeros((40, 60, 70), np.uint8)
    a[((z - 20) / 12.0) ** 2 + ((y - 30) / 20.0) ** 2 + ((x - 20) / 12.0) ** 2 < 1] = 1
    a[5:15, 8:30, 40:62] = 11
    a[((z - 28) / 6.0) ** 2 + ((y - 45) / 10.0) ** 2 + ((x - 52) / 10.0) ** 2 < 1] = 21
    return a


def _oblique_direction() -> np.ndarray:
    rot = sitk.VersorTransform((0.3, -0.5, 0.8), np.deg2rad(25))
    return np.array(rot.GetMatrix()).reshape(3, 3)


def _voxel_centre_bounds(vol: Volume, label: int) -> np.ndarray:
    """(2, 3) LPS min/max of the centres of the voxels holding ``label``."""
    idx = np.argwhere(vol.array == label)
    pts = vol.index_to_world(idx)
    return np.stack([pts.min(axis=0), pts.max(axis=0)])


def _write_ras_nifti(vol: Volume, path: Path) -> Path:
    """Store an axis-aligned LPS volume the RAS way (x and y flipped, positive affine)."""
    assert np.allclose(vol.direction, np.eye(3))
    data_xyz = np.transpose(vol.array, (2, 1, 0))[::-1, ::-1, :]
    nx, ny, _ = data_xyz.shape
    sz, sy, sx = vol.spacing_zyx_mm
    ox, oy, oz = vol.origin_lps_mm
    # voxel (0,0,0) of the flipped array is LPS index (nx-1, ny-1, 0)
    corner_lps = np.array([ox + (nx - 1) * sx, oy + (ny - 1) * sy, oz])
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = [-corner_lps[0], -corner_lps[1], corner_lps[2]]  # LPS -> RAS
    img = nib.Nifti1Image(np.ascontiguousarray(data_xyz), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def _sampled_distance(surface: trimesh.Trimesh, points: np.ndarray, n: int = 300_000) -> np.ndarray:
    """Distance (mm) from points to a dense sample of ``surface`` (accurate to ~0.05 mm)."""
    sample, _ = trimesh.sample.sample_surface(surface, n, seed=0)
    return cKDTree(sample).query(points)[0]


@pytest.fixture(scope="module")
def lps_volume() -> Volume:
    return Volume(_phantom_labels(), SPACING, ORIGIN)


@pytest.mark.parametrize("storage", ["lps", "ras", "oblique"])
def test_mesh_bounds_match_label_bbox_in_lps(tmp_path, lps_volume, storage):
    if storage == "lps":
        path = write_volume(lps_volume, tmp_path / "labels.nii.gz")
    elif storage == "ras":
        path = _write_ras_nifti(lps_volume, tmp_path / "labels_ras.nii.gz")
    else:
        oblique = Volume(lps_volume.array, SPACING, ORIGIN, _oblique_direction())
        path = write_volume(oblique, tmp_path / "labels_oblique.nii.gz")
    vol = read_volume(path, kind="label")
    if storage == "ras":  # really stored flipped: SimpleITK reports the flip in the direction
        assert np.allclose(np.diag(vol.direction), [-1, -1, 1])
    meshes = fragment_meshes(vol)
    assert sorted(meshes) == [1, 11, 21]
    one_voxel = max(SPACING)
    for label, mesh in meshes.items():
        centres = _voxel_centre_bounds(vol, label)
        # the surface lies about half a voxel outside the outermost voxel centres
        assert np.all(mesh.bounds[0] <= centres[0] + 0.1), (label, mesh.bounds, centres)
        assert np.all(mesh.bounds[1] >= centres[1] - 0.1), (label, mesh.bounds, centres)
        np.testing.assert_allclose(mesh.bounds, centres, atol=one_voxel)


def test_lps_and_ras_storage_give_the_same_mesh(tmp_path, lps_volume):
    lps = read_volume(write_volume(lps_volume, tmp_path / "a.nii.gz"), kind="label")
    ras = read_volume(_write_ras_nifti(lps_volume, tmp_path / "b.nii.gz"), kind="label")
    detail = MeshDetail(smooth_iterations=0, target_reduction=0.0)
    m_lps, m_ras = fragment_meshes(lps, detail), fragment_meshes(ras, detail)
    for label in m_lps:
        np.testing.assert_allclose(m_lps[label].bounds, m_ras[label].bounds, atol=1e-3)
        assert m_lps[label].volume == pytest.approx(m_ras[label].volume, rel=1e-6)


@pytest.mark.parametrize("direction", ["identity", "ras", "oblique"])
def test_meshes_closed_outward_and_volume_right(lps_volume, direction):
    d = {"identity": np.eye(3), "ras": np.diag([-1.0, -1.0, 1.0]), "oblique": _oblique_direction()}
    vol = Volume(lps_volume.array, SPACING, ORIGIN, d[direction])
    for label, mesh in fragment_meshes(vol).items():
        voxel_ml = np.count_nonzero(vol.array == label) * vol.voxel_volume_mm3
        assert mesh.is_watertight, label
        assert mesh.volume > 0, f"label {label}: normals point inwards"
        assert mesh.volume == pytest.approx(voxel_ml, rel=0.04), label
        # outward: face normals point away from the fragment's centre on average
        centre = mesh.vertices.mean(axis=0)
        outward = np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center - centre)
        assert np.mean(outward > 0) > 0.9, label


@pytest.mark.parametrize("detail", ["fine", "normal", "coarse"])
def test_smoothing_and_decimation_move_the_surface_less_than_half_a_voxel(lps_volume, detail):
    half_voxel = 0.5 * max(SPACING)
    affine = lps_volume.index_to_world_matrix()
    for label in (1, 21):
        mask = lps_volume.array == label
        raw = mask_mesh(mask, affine, MeshDetail(smooth_iterations=0, target_reduction=0.0))
        final = mask_mesh(mask, affine, detail)
        assert len(final.faces) < len(raw.faces)
        away = _sampled_distance(raw, final.vertices)  # final surface off the raw one
        lost = _sampled_distance(final, raw.vertices)  # raw surface no longer covered
        assert away.max() < half_voxel, (label, away.max())
        assert np.percentile(lost, 99) < half_voxel, (label, np.percentile(lost, 99))


def test_empty_and_tiny_labels():
    vol = Volume(np.zeros((5, 6, 7), np.uint8), (1.0, 1.0, 1.0))
    assert fragment_meshes(vol) == {}
    a = np.zeros((5, 6, 7), np.uint8)
    a[2, 3, 4] = 5  # a single voxel still gives a closed little mesh
    mesh = fragment_meshes(Volume(a, (2.0, 1.0, 1.0)))[5]
    assert mesh.is_watertight and mesh.volume > 0
    assert mask_mesh(np.zeros((3, 3, 3), bool), np.eye(4)).faces.shape[0] == 0


def test_write_stls_binary_in_lps(tmp_path, lps_volume):
    meshes = fragment_meshes(lps_volume)
    paths = write_stls(meshes, tmp_path / "fragments")
    assert [p.name for p in paths] == ["01_sacrum.stl", "11_left_hip.stl", "21_right_hip.stl"]
    assert stl_name(21) == "21_right_hip.stl"
    for path, (label, mesh) in zip(paths, sorted(meshes.items())):
        raw = path.read_bytes()
        n_faces = struct.unpack("<I", raw[80:84])[0]
        assert n_faces == len(mesh.faces)
        assert len(raw) == 84 + 50 * n_faces  # binary STL, not ASCII
        back = trimesh.load(path)
        np.testing.assert_allclose(back.bounds, mesh.bounds, atol=1e-3)  # float32 in the file
        assert back.volume > 0


def _glb_json(data: bytes) -> dict:
    magic, _, _ = struct.unpack("<4sII", data[:12])
    assert magic == b"glTF"
    length, kind = struct.unpack("<I4s", data[12:20])
    assert kind == b"JSON"
    return json.loads(data[20 : 20 + length])


def test_scene_glb_colours_normals_and_viewing_frame(tmp_path, lps_volume):
    meshes = fragment_meshes(lps_volume)
    path = write_scene_glb(meshes, tmp_path / "scene.glb")
    doc = _glb_json(path.read_bytes())
    assert all("NORMAL" in p["attributes"] for m in doc["meshes"] for p in m["primitives"])
    colours = {m["name"]: m["pbrMetallicRoughness"]["baseColorFactor"] for m in doc["materials"]}
    for label in meshes:
        expected = PALETTE_RGB[label] / 255.0
        np.testing.assert_allclose(colours[stl_name(label)[:-4]][:3], expected, atol=1e-3)

    scene = trimesh.load(path)
    centres = {name: g.bounds.mean(axis=0) for name, g in scene.geometry.items()}
    world = {stl_name(k)[:-4]: m.bounds.mean(axis=0) for k, m in meshes.items()}
    # relative positions survive the rotation: LPS x (left) -> +X, z (superior) -> +Y,
    # y (posterior) -> -Z (anterior towards the viewer)
    a, b = "01_sacrum", "21_right_hip"
    d_world, d_view = world[b] - world[a], centres[b] - centres[a]
    np.testing.assert_allclose(d_view, [d_world[0], d_world[2], -d_world[1]], atol=1e-3)
    assert np.linalg.det(lps_to_gltf_matrix()[:3, :3]) == pytest.approx(1.0)
    assert all(g.volume > 0 for g in scene.geometry.values())


def test_scene_glb_empty_scene_is_valid():
    data = scene_glb({})
    assert data[:4] == b"glTF"


def test_real_sacrum_fragments_mesh_onto_their_voxels(real_sacrum_dir):
    full = read_volume(real_sacrum_dir / "fragments.nii.gz", kind="label")
    nz = np.argwhere(full.array)
    lo, hi = nz.min(axis=0), nz.max(axis=0) + 1
    vol = full.crop(tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)))
    meshes = fragment_meshes(vol)
    assert sorted(meshes) == sorted(int(v) for v in np.unique(vol.array) if v)
    one_voxel = max(vol.spacing_zyx_mm)
    for label, mesh in meshes.items():
        centres = _voxel_centre_bounds(vol, label)
        np.testing.assert_allclose(mesh.bounds, centres, atol=one_voxel)
        assert mesh.volume > 0
        n = np.count_nonzero(vol.array == label)
        if n > 5000:  # big pieces: mesh volume close to the voxel volume
            assert mesh.volume == pytest.approx(n * vol.voxel_volume_mm3, rel=0.05), label


def test_threaded_meshing_matches_serial(lps_volume):
    """The decimator keeps state in C++ globals; threads must not mix fragments up."""
    many = lps_volume.array.copy()
    many[30:38, 40:55, 5:15] = 2
    many[30:38, 5:20, 25:35] = 12
    vol = lps_volume.with_array(many)
    serial = fragment_meshes(vol, workers=1)
    for _ in range(3):
        threaded = fragment_meshes(vol, workers=2)
        assert sorted(threaded) == sorted(serial)
        for label in serial:
            assert len(threaded[label].faces) == len(serial[label].faces), label
            np.testing.assert_allclose(threaded[label].bounds, serial[label].bounds, atol=1e-9)
