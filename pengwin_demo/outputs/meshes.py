"""Label map -> one surface mesh per fragment (LPS mm), binary STL files and a coloured GLB.

How a mesh is made
------------------
For each label, on its own bounding box (plus a one-voxel zero border so every surface
closes): marching cubes at level 0.5 in *index* space (z, y, x), then the full
index -> LPS affine of the volume (:meth:`Volume.index_to_world_matrix`: spacing, direction
and origin), so the vertices land on the bone in patient coordinates whatever the storage
orientation (LPS, RAS, oblique). Faces are wound so that normals point out of the bone
(positive signed volume). Taubin smoothing (no shrinkage) removes the voxel staircase, and
quadric decimation (fast-simplification) removes most of the faces; both run in mm, and
together they move the surface by less than about half a voxel (see
``tests/outputs/test_meshes.py`` and ``docs/pipeline.md`` for the measured deviation).

STL files keep LPS mm (3D Slicer's default for mesh files). Only the GLB copy, made for the
web viewer, is rotated into glTF's Y-up frame (see :func:`lps_to_gltf_matrix`).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from scipy import ndimage
from skimage.measure import marching_cubes

from ..labels import PALETTE_RGB, bone_name
from ..volume import Volume

__all__ = [
    "MeshDetail",
    "MESH_DETAILS",
    "mask_mesh",
    "fragment_meshes",
    "stl_name",
    "write_stls",
    "lps_to_gltf_matrix",
    "scene_glb",
    "write_scene_glb",
]


@dataclass(frozen=True)
class MeshDetail:
    """How much to smooth and decimate a marching-cubes surface.

    Attributes
    ----------
    smooth_iterations : int
        Taubin passes (lambda 0.5, mu -0.52; even counts avoid a net shrink or swell).
    target_reduction : float
        Fraction of faces that quadric decimation tries to remove (0 keeps all).
    min_faces : int
        Meshes with fewer faces than this are not decimated (tiny fragments keep detail).
    """

    smooth_iterations: int = 10
    target_reduction: float = 0.8
    min_faces: int = 2000


MESH_DETAILS: dict[str, MeshDetail] = {
    "fine": MeshDetail(smooth_iterations=10, target_reduction=0.5),
    "normal": MeshDetail(smooth_iterations=10, target_reduction=0.8),
    "coarse": MeshDetail(smooth_iterations=10, target_reduction=0.92),
}
"""Named presets for ``mesh_detail`` (pipeline, CLI, app)."""

_DECIMATE_LOCK = threading.Lock()

TAUBIN_LAMBDA = 0.5
TAUBIN_NU = 0.52  # 0 < 1/lambda - 1/nu < 0.1: Taubin's no-shrink condition


def _detail(detail: str | MeshDetail) -> MeshDetail:
    if isinstance(detail, MeshDetail):
        return detail
    try:
        return MESH_DETAILS[detail]
    except KeyError:
        raise ValueError(
            f"mesh detail must be one of {sorted(MESH_DETAILS)}, got {detail!r}"
        ) from None


def _signed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    tri = vertices[faces]
    return float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6.0)


def mask_mesh(
    mask_zyx: np.ndarray,
    index_to_world: np.ndarray,
    detail: str | MeshDetail = "normal",
    offset_zyx_vox: tuple[int, int, int] = (0, 0, 0),
) -> trimesh.Trimesh:
    """Surface of a binary mask as a closed, outward-facing mesh in world coordinates.

    Parameters
    ----------
    mask_zyx : ndarray of bool, shape (Z, Y, X)
        The object (true inside), typically cropped to its bounding box.
    index_to_world : ndarray, shape (4, 4)
        Maps homogeneous (z, y, x, 1) indices of the *full* volume to (x, y, z, 1) LPS mm
        (:meth:`Volume.index_to_world_matrix`).
    detail : str or MeshDetail
        ``"fine"``, ``"normal"``, ``"coarse"`` or explicit settings.
    offset_zyx_vox : tuple of 3 int
        Index (z, y, x) of ``mask_zyx[0, 0, 0]`` in the full volume (the crop start).

    Returns
    -------
    trimesh.Trimesh
        Vertices in LPS mm; faces wound so that normals point outwards (positive volume).
        Empty when the mask is empty.
    """
    settings = _detail(detail)
    if not mask_zyx.any():
        return trimesh.Trimesh()
    padded = np.pad(mask_zyx.astype(np.float32, copy=False), 1)
    verts, faces, _, _ = marching_cubes(padded, level=0.5, allow_degenerate=False)
    index = verts + (np.asarray(offset_zyx_vox, dtype=np.float64) - 1.0)
    affine = np.asarray(index_to_world, dtype=np.float64)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    faces = faces.astype(np.int64)
    if _signed_volume(world, faces) < 0:
        faces = faces[:, ::-1]
    mesh = trimesh.Trimesh(world, faces, process=False)
    if settings.smooth_iterations > 0 and len(faces) > 0:
        trimesh.smoothing.filter_taubin(
            mesh, lamb=TAUBIN_LAMBDA, nu=TAUBIN_NU, iterations=settings.smooth_iterations
        )
    if settings.target_reduction > 0 and len(mesh.faces) >= settings.min_faces:
        import fast_simplification

        with _DECIMATE_LOCK:  # the C++ simplifier keeps its mesh in globals: not thread safe
            points, tris = fast_simplification.simplify(
                np.asarray(mesh.vertices, dtype=np.float64),
                np.asarray(mesh.faces, dtype=np.int32),
                target_reduction=settings.target_reduction,
            )
        mesh = trimesh.Trimesh(points, tris, process=False)
    mesh.remove_unreferenced_vertices()
    if len(mesh.faces) and _signed_volume(mesh.vertices, mesh.faces) < 0:
        mesh.invert()
    return mesh


def fragment_meshes(
    labels: Volume,
    detail: str | MeshDetail = "normal",
    label_ids: list[int] | None = None,
    workers: int = 1,
) -> dict[int, trimesh.Trimesh]:
    """One mesh per label of a label map, in LPS mm.

    Parameters
    ----------
    labels : Volume
        Label map (z, y, x), uint8 (PENGWIN 0-30, or any positive labels).
    detail : str or MeshDetail
        Smoothing/decimation preset (see :data:`MESH_DETAILS`).
    label_ids : list of int, optional
        Only these labels (default: every nonzero label present).
    workers : int
        Threads. Default 1: marching cubes and Taubin mostly hold the GIL and the
        decimator is not thread safe (serialized), so threads gained nothing on 2 cores.

    Returns
    -------
    dict
        ``{label: trimesh.Trimesh}`` in ascending label order; labels with no voxels are left out.
    """
    array = labels.array
    max_label = int(array.max()) if array.size else 0
    if max_label == 0:
        return {}
    boxes = ndimage.find_objects(array, max_label=max_label)
    wanted = sorted(label_ids) if label_ids is not None else range(1, max_label + 1)
    jobs = [(lab, boxes[lab - 1]) for lab in wanted if 0 < lab <= max_label and boxes[lab - 1]]
    affine = labels.index_to_world_matrix()

    def one(job):
        lab, box = job
        mask = array[box] == lab
        offset = tuple(s.start for s in box)
        return lab, mask_mesh(mask, affine, detail, offset)

    n_workers = max(1, int(workers))
    # largest first so the pool stays busy
    jobs.sort(key=lambda j: -np.prod([s.stop - s.start for s in j[1]]))
    if n_workers > 1 and len(jobs) > 1:
        with ThreadPoolExecutor(n_workers) as pool:
            results = dict(pool.map(one, jobs))
    else:
        results = dict(map(one, jobs))
    return {lab: results[lab] for lab in sorted(results)}


def stl_name(label: int) -> str:
    """File name of a fragment's STL: ``"<label:02d>_<bone>.stl"``, e.g. ``"11_left_hip.stl"``."""
    return f"{int(label):02d}_{bone_name(label)}.stl"


def write_stls(meshes: dict[int, trimesh.Trimesh], out_dir: str | os.PathLike) -> list[Path]:
    """Write each mesh as a binary STL (LPS mm) named by :func:`stl_name`; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for lab, mesh in sorted(meshes.items()):
        if len(mesh.faces) == 0:
            continue
        path = out_dir / stl_name(lab)
        tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
        tmp.write_bytes(trimesh.exchange.stl.export_stl(mesh))
        os.replace(tmp, path)
        paths.append(path)
    return paths


def lps_to_gltf_matrix() -> np.ndarray:
    """4 x 4 rotation from LPS (x left, y posterior, z superior) to glTF's viewing frame.

    glTF is Y-up with the viewer looking down -Z: superior becomes +Y (up), anterior
    becomes +Z (towards the viewer), and the patient's left becomes +X (the viewer's right,
    as when facing the patient). A proper rotation (determinant +1), so normals stay outward.
    """
    m = np.eye(4)
    m[:3, :3] = [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]
    return m


def scene_glb(
    meshes: dict[int, trimesh.Trimesh],
    palette: np.ndarray = PALETTE_RGB,
    center: bool = True,
) -> bytes:
    """All fragments in one binary glTF, one PBR colour per fragment, with vertex normals.

    Parameters
    ----------
    meshes : dict
        ``{PENGWIN label: mesh in LPS mm}`` (from :func:`fragment_meshes`).
    palette : ndarray, shape (31, 3), uint8
        Colour per label (default: the shared :data:`pengwin_demo.labels.PALETTE_RGB`).
    center : bool
        Move the scene's centre to the origin (viewing only) so viewers frame it well.

    Returns
    -------
    bytes
        The .glb file content, rotated by :func:`lps_to_gltf_matrix` (viewing only; the
        STLs stay in LPS).
    """
    scene = trimesh.Scene()
    rotation = lps_to_gltf_matrix()
    present = {lab: m for lab, m in meshes.items() if len(m.faces)}
    shift = np.zeros(3)
    if center and present:
        lo = np.min([m.bounds[0] for m in present.values()], axis=0)
        hi = np.max([m.bounds[1] for m in present.values()], axis=0)
        shift = -(lo + hi) / 2.0
    for lab, mesh in sorted(present.items()):
        view = trimesh.Trimesh(mesh.vertices + shift, mesh.faces, process=False)
        view.apply_transform(rotation)
        rgb = [int(c) for c in palette[lab]]
        name = stl_name(lab)[:-4]
        view.visual = trimesh.visual.TextureVisuals(
            material=trimesh.visual.material.PBRMaterial(
                name=name,
                baseColorFactor=[*rgb, 255],
                metallicFactor=0.0,
                roughnessFactor=0.6,
                doubleSided=False,
            )
        )
        _ = view.vertex_normals  # computed now so the exporter writes them
        scene.add_geometry(view, node_name=name, geom_name=name)
    return trimesh.exchange.gltf.export_glb(scene, include_normals=True)


def write_scene_glb(
    meshes: dict[int, trimesh.Trimesh], path: str | os.PathLike, palette: np.ndarray = PALETTE_RGB
) -> Path:
    """Write :func:`scene_glb` to ``path`` (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_bytes(scene_glb(meshes, palette))
    os.replace(tmp, path)
    return path
