"""Synthetic fractured-pelvis CT phantoms with exact PENGWIN fragment labels.

``make_phantom(seed, size)`` returns ``(ct, labels)``: an int16 HU CT and a uint8 PENGWIN
label map (0 background, 1-10 sacrum, 11-20 left hip, 21-30 right hip, largest fragment
first within a bone) on the same grid. The same seed gives the same case, bit for bit.

How a case is made
------------------
1. Anatomy (:mod:`pengwin_demo.phantom_anatomy`): signed distance fields of the sacrum,
   both hip bones, L5 and both femurs in a canonical patient frame (LPS mm), evaluated on
   a coarse canonical grid per bone.
2. Fractures (:mod:`pengwin_demo.phantom_fractures`): each labelled bone is cut by curved
   sheets and small balls into 1-10 pieces; some pieces move rigidly (1-8 mm, up to 10
   degrees), the others stay in contact along a barely visible line.
3. Grid: spacing, field of view and stored direction (LPS or RAS) are drawn; the patient
   is posed (scale, a few degrees of rotation, shift) in that grid.
4. Rendering, crop first: per bone and per moved fragment, the distance field is resampled
   (SimpleITK, linear) onto the CT voxels of its bounding box; voxels near the bone get
   their fragment from the cut surfaces evaluated at their exact position, a cortical shell
   and textured cancellous bone, and partial-volume coverage computed from the distances
   (bone surface and fracture line) across one voxel. Soft tissue comes from a coarse grid.
   Labels are the fragments whose bone contains the voxel centre.
5. Labels are cleaned to PENGWIN rules (one 26-connected component per fragment, ranked
   by size per bone); CT noise is added and the CT rounded to int16.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .io import write_volume
from .labels import MAX_FRAGMENTS_PER_BONE, first_label
from .phantom_anatomy import AnatomyParams, Structure, build_structures, sample_anatomy
from .phantom_fractures import (
    FRAGMENT_COUNT_PROBABILITIES,
    FracturePlan,
    Motion,
    plan_fractures,
    sample_fragment_counts,
)
from .phantom_sdf import Canvas, rotation_matrix
from .phantom_tissue import soft_tissue
from .volume import Volume

log = logging.getLogger(__name__)

__all__ = [
    "FRAGMENT_COUNT_PROBABILITIES",
    "Phantom",
    "SIZES",
    "generate_phantom",
    "make_phantom",
    "write_phantom_dataset",
]

BONE_KEYS = {"sacrum": 1, "left_hip": 2, "right_hip": 3, 1: 1, 2: 2, 3: 3}

PLAN_RES_MM = 2.0
"""Planning grid (canonical, mm) for fractures: the same for every size, so a seed breaks
the bones the same way at ``small`` and ``full``."""


@dataclass(frozen=True)
class SizeConfig:
    """Grid and rendering settings of one phantom size."""

    canon_res_mm: float  # canonical distance-field grid
    tissue_res_mm: float  # soft-tissue grid
    texture_res_mm: float  # cancellous texture grid
    inplane_mm: tuple[float, float]  # in-plane spacing range
    matrix: int | None  # fixed in-plane matrix (None: from the field of view)
    fov_mm: tuple[float, float]  # in-plane field of view range when matrix is None
    max_slices: int


SIZES: dict[str, SizeConfig] = {
    "small": SizeConfig(2.0, 5.0, 2.0, (1.7, 2.3), None, (330.0, 400.0), 200),
    "full": SizeConfig(1.0, 2.5, 1.5, (0.6, 1.0), 512, (0, 0), 480),
}


@dataclass
class Phantom:
    """A generated case: CT, labels and how they were made (for tests and reports)."""

    ct: Volume
    labels: Volume
    seed: int
    size: str
    requested_fragments: dict[int, int]
    fragments: dict[int, int]  # anatomy id -> fragments present in ``labels``
    displaced: dict[int, list[int]]  # anatomy id -> PENGWIN labels of moved fragments
    stored_as: str  # "LPS" or "RAS"
    anatomy: AnatomyParams | None = None
    plans: dict[int, FracturePlan] = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready description (no arrays)."""
        return {
            "seed": self.seed,
            "size": self.size,
            "shape_zyx": list(self.ct.shape),
            "spacing_zyx_mm": [round(s, 4) for s in self.ct.spacing_zyx_mm],
            "stored_as": self.stored_as,
            "fragments": {str(k): v for k, v in self.fragments.items()},
            "requested_fragments": {str(k): v for k, v in self.requested_fragments.items()},
            "displaced_labels": sorted(v for vs in self.displaced.values() for v in vs),
        }


# -- canonical grids ----------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    array: np.ndarray  # (z, y, x) float32
    origin_mm: np.ndarray  # canonical (x, y, z) of voxel (0, 0, 0)
    res_mm: float

    def to_sitk(self) -> sitk.Image:
        img = sitk.GetImageFromArray(self.array)
        img.SetSpacing((self.res_mm,) * 3)
        img.SetOrigin(tuple(float(o) for o in self.origin_mm))
        return img

    def points(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) canonical (x, y, z) mm and (N, 3) (z, y, x) indices of ``mask`` voxels."""
        idx = np.argwhere(mask)
        pts = (self.origin_mm + self.res_mm * idx[:, ::-1]).astype(np.float32)
        return pts, idx


def _evaluate(structure: Structure, res_mm: float, clip_mm: np.ndarray | None = None) -> _Grid:
    """Distance field of ``structure`` on a canonical grid (box clipped to ``clip_mm``)."""
    box = np.array(structure.box_mm, float)
    if clip_mm is not None:
        box = np.array([np.maximum(box[0], clip_mm[0]), np.minimum(box[1], clip_mm[1])])
        box[1] = np.maximum(box[1], box[0] + res_mm)
    cv = Canvas(box, res_mm)
    structure.paint(cv)
    return _Grid(cv.array, cv.origin_mm, res_mm)


# -- pose and grid ------------------------------------------------------------------


def _sample_pose(rng: np.random.Generator) -> np.ndarray:
    """4 x 4 canonical -> world (LPS mm) matrix: size, asymmetric scale, tilt, shift."""
    scale = rng.uniform(0.9, 1.1) * rng.uniform(0.96, 1.04, size=3)
    rot = np.eye(3)
    for axis, limit in (([1, 0, 0], 5.0), ([0, 1, 0], 3.0), ([0, 0, 1], 4.0)):
        rot = rotation_matrix(axis, np.deg2rad(rng.uniform(-limit, limit))) @ rot
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag(scale)
    m[:3, 3] = rng.uniform([-15, -20, -10], [15, 20, 10])
    return m


def _transform_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:3, :3].T + m[:3, 3]


def _sample_grid(rng, cfg: SizeConfig, size: str, bone_lo: np.ndarray, bone_hi: np.ndarray):
    """Spacing, shape, origin and direction of the CT around the labelled bones (world mm)."""
    extent = bone_hi - bone_lo
    centre = (bone_lo + bone_hi) / 2
    if cfg.matrix:
        need = (max(extent[0], extent[1]) + 24) / cfg.matrix
        sxy = rng.uniform(max(cfg.inplane_mm[0], need), max(cfg.inplane_mm[1], need))
        nxy = cfg.matrix
        r = rng.random()
        sz = (rng.uniform(0.6, 1.0) if r < 0.5 else rng.uniform(1.0, 1.5) if r < 0.8
              else rng.uniform(2.0, 3.0) if r < 0.9 else rng.uniform(0.5, 0.6))
    else:
        sxy = rng.uniform(*cfg.inplane_mm)
        fov = max(rng.uniform(*cfg.fov_mm), max(extent[0], extent[1]) + 24)
        nxy = int(np.ceil(fov / sxy))
        sz = rng.uniform(1.5, 3.0)
    fov_xy = nxy * sxy
    slack = np.maximum((fov_xy - extent[:2] - 16) / 2, 0)
    cx, cy = centre[:2] + rng.uniform(-slack, slack)
    below, above = rng.uniform(6, 40), rng.uniform(6, 50)
    z_lo, z_hi = bone_lo[2] - below, bone_hi[2] + above
    nz = int(np.ceil((z_hi - z_lo) / sz)) + 1
    if nz > cfg.max_slices:  # thin slices: keep the bones, trim the margins
        nz = max(cfg.max_slices, int(np.ceil((extent[2] + 8) / sz)) + 1)
    cz = (z_lo + z_hi) / 2
    stored_as = "RAS" if rng.random() < 0.45 else "LPS"
    direction = np.diag([-1.0, -1.0, 1.0]) if stored_as == "RAS" else np.eye(3)
    spacing_xyz = np.array([sxy, sxy, sz])
    shape_xyz = np.array([nxy, nxy, nz])
    origin = np.array([cx, cy, cz]) - direction @ (spacing_xyz * (shape_xyz - 1) / 2)
    geom = Volume(np.zeros((1, 1, 1), np.uint8), (sz, sxy, sxy), tuple(origin), direction)
    return geom, (int(nz), int(nxy), int(nxy)), stored_as


# -- rendering ----------------------------------------------------------------------


def _resample(grid: _Grid, world_to_canon: np.ndarray, geom: Volume, start_zyx, shape_zyx,
              default: float) -> np.ndarray:
    """Linear resampling of a canonical grid onto a box of the CT grid (z, y, x, float32)."""
    ref = sitk.Image([int(s) for s in shape_zyx[::-1]], sitk.sitkFloat32)
    ref.SetSpacing(geom.spacing_zyx_mm[::-1])
    ref.SetOrigin(tuple(geom.index_to_world(np.array(start_zyx, float))[0]))
    ref.SetDirection(tuple(geom.direction.ravel()))
    tf = sitk.AffineTransform(3)
    tf.SetMatrix(tuple(world_to_canon[:3, :3].ravel()))
    tf.SetTranslation(tuple(world_to_canon[:3, 3]))
    out = sitk.Resample(grid.to_sitk(), ref, tf, sitk.sitkLinear, float(default), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def _box_in_grid(geom: Volume, shape_zyx, canon_to_world: np.ndarray, box_mm: np.ndarray,
                 margin_vox: int = 2):
    """Index box (start, stop) on the CT grid covering a canonical box after ``canon_to_world``."""
    lo, hi = box_mm
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    idx = geom.world_to_index(_transform_points(canon_to_world, corners))
    start = np.maximum(np.floor(idx.min(axis=0)).astype(int) - margin_vox, 0)
    stop = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1 + margin_vox, shape_zyx)
    if np.any(stop <= start):
        return None
    return start, stop


@dataclass
class _Group:
    structure: Structure
    grid: _Grid
    plan: FracturePlan | None
    members: tuple[int, ...]  # fragment indices drawn by this group
    motion: np.ndarray  # 4 x 4 canonical motion of those fragments
    box_mm: np.ndarray  # canonical box (before motion)
    start: np.ndarray | None = None
    stop: np.ndarray | None = None


def _texture(rng, box_mm, res_mm) -> _Grid:
    lo, hi = np.asarray(box_mm, float)
    n = np.ceil((hi - lo) / res_mm).astype(int) + 1
    noise = rng.standard_normal((n[2], n[1], n[0]), dtype=np.float32)
    fine = ndimage.gaussian_filter(noise, 0.8)
    coarse = ndimage.gaussian_filter(noise, 3.0)
    tex = fine / max(float(fine[::4, ::4, ::4].std()), 1e-6) + 0.6 * coarse / max(
        float(coarse[::4, ::4, ::4].std()), 1e-6)
    return _Grid(tex.astype(np.float32), lo, res_mm)


def _coverages(sdf: np.ndarray, w: float, cortex_mm: float):
    """Bone coverage and cortical coverage of a voxel ``w`` mm wide across the surface."""
    w = np.float32(w)
    alpha = np.clip(np.float32(0.5) - sdf / w, 0, 1)
    cortex = np.clip(np.minimum(sdf + w / 2, 0) - np.maximum(sdf - w / 2, -np.float32(cortex_mm)), 0, None) / w
    return alpha, np.minimum(cortex, alpha)


def _render_group(g: _Group, geom: Volume, world_to_canon: np.ndarray, texture: _Grid,
                  w: float, tex_hu: float, acc_a, acc_h, labels, ustart, provisional):
    shape = tuple(int(s) for s in (g.stop - g.start))
    to_source = np.linalg.inv(g.motion) @ world_to_canon  # world -> un-moved canonical
    sdf = _resample(g.grid, to_source, geom, g.start, shape, default=1e3)
    idx = np.argwhere(sdf < np.float32(w / 2))
    if idx.size == 0:
        return
    d_bone = sdf[tuple(idx.T)]
    gidx = idx + g.start
    idx_to_q = to_source @ geom.index_to_world_matrix()
    q = (gidx @ idx_to_q[:3, :3].T.astype(np.float32) + idx_to_q[:3, 3].astype(np.float32)).astype(np.float32)
    cov = np.ones(len(q), dtype=np.float32)
    frag = None
    if g.plan is not None and g.plan.n_fragments > 1:
        frag, dist, nearest = g.plan.assign(q)
        members = np.array(g.members)
        own = np.isin(frag, members)
        gaps = np.array([sp.gap_mm for sp in g.plan.splits], dtype=np.float32)
        cov = np.where(own, np.clip(np.float32(0.5) + dist / np.float32(w), 0, 1), np.float32(0))
        near = np.flatnonzero((nearest >= 0) & (dist < np.float32(w)))
        if near.size:
            flip = np.full(len(q), -1, dtype=np.int16)
            flip[near] = nearest[near]
            other, _, _ = g.plan.assign(q[near], flip[near])
            nb = np.isin(other, members)
            cov[near] += np.where(
                nb, np.clip(np.float32(0.5) - (dist[near] + gaps[nearest[near]]) / np.float32(w), 0, 1), 0
            ).astype(np.float32)
    s = g.structure
    alpha, cortex = _coverages(d_bone, w, s.cortex_mm)
    tcoords = ((q - texture.origin_mm.astype(np.float32)) / np.float32(texture.res_mm))[:, ::-1].T
    tex = ndimage.map_coordinates(texture.array, tcoords, order=1, mode="nearest")
    canc = np.float32(s.cancellous_hu) + np.float32(tex_hu) * tex
    hu = np.float32(s.cortex_hu) * cortex + canc * (alpha - cortex)
    keep = cov > 0
    loc = tuple((gidx[keep] - ustart).T)
    acc_a[loc] += (alpha * cov)[keep]
    acc_h[loc] += (hu * cov)[keep]
    if s.bone and frag is not None:
        inside = (d_bone < 0) & np.isin(frag, np.array(g.members))
        labels[tuple((gidx[inside] - ustart).T)] = provisional[frag[inside]]
    elif s.bone:
        inside = d_bone < 0
        labels[tuple((gidx[inside] - ustart).T)] = provisional[0]


# -- labels -------------------------------------------------------------------------


def _clean_labels(labels: np.ndarray) -> None:
    """In place: one 26-connected component per label; stray pieces join the fragment of the
    same bone they touch most, or become background."""
    stats = cc3d.statistics(labels)
    boxes = stats["bounding_boxes"]
    for lab in range(1, len(boxes)):
        if lab >= len(stats["voxel_counts"]) or stats["voxel_counts"][lab] == 0:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in boxes[lab])
        sub = labels[box]
        cc, n = cc3d.connected_components(sub == lab, connectivity=26, return_N=True)
        if n <= 1:
            continue
        counts = np.bincount(cc.ravel())
        counts[0] = 0
        keep = int(np.argmax(counts))
        bone = (lab - 1) // 10
        for c in range(1, n + 1):
            if c == keep:
                continue
            piece = cc == c
            ring = ndimage.binary_dilation(piece, np.ones((3, 3, 3), bool)) & ~piece
            nb = sub[ring]
            nb = nb[(nb > 0) & (nb != lab) & ((nb.astype(int) - 1) // 10 == bone)]
            sub[piece] = np.bincount(nb).argmax() if nb.size else 0


def _rank_labels(labels: np.ndarray) -> dict[int, dict[int, int]]:
    """In place: renumber provisional labels to PENGWIN ids, largest first per bone.

    Provisional labels are ``(bone - 1) * 10 + fragment + 1``. Returns
    {bone: {provisional: final}}.
    """
    counts = np.bincount(labels.ravel(), minlength=31)
    lut = np.zeros(256, dtype=np.uint8)
    mapping: dict[int, dict[int, int]] = {}
    for bone in (1, 2, 3):
        base = first_label(bone)
        present = [lab for lab in range(base, base + MAX_FRAGMENTS_PER_BONE) if counts[lab] > 0]
        present.sort(key=lambda lab: (-counts[lab], lab))
        mapping[bone] = {lab: base + rank for rank, lab in enumerate(present)}
        for lab, new in mapping[bone].items():
            lut[lab] = new
    labels[...] = lut[labels]
    return mapping


# -- public API ---------------------------------------------------------------------


def _requested_counts(n_fragments, rng) -> dict[int, int]:
    counts = sample_fragment_counts(rng)
    if n_fragments is None:
        return counts
    for key, value in dict(n_fragments).items():
        if key not in BONE_KEYS:
            raise ValueError(
                f"n_fragments keys must be 'sacrum', 'left_hip', 'right_hip' or 1/2/3, got {key!r}"
            )
        if not 1 <= int(value) <= MAX_FRAGMENTS_PER_BONE:
            raise ValueError(f"n_fragments[{key!r}] must be 1-{MAX_FRAGMENTS_PER_BONE}, got {value}")
        counts[BONE_KEYS[key]] = int(value)
    return counts


def generate_phantom(
    seed: int,
    size: str = "small",
    n_fragments: dict | None = None,
    displaced_fraction: float | None = None,
) -> Phantom:
    """Generate one case with its provenance (see :func:`make_phantom`).

    Parameters
    ----------
    seed : int
        Any non-negative integer; the same seed gives identical arrays.
    size : {"small", "full"}
        ``small``: about 2 mm voxels; ``full``: 512 x 512 in-plane at 0.6-1.0 mm.
    n_fragments : dict, optional
        Fragments per bone, keys "sacrum"/"left_hip"/"right_hip" (or 1/2/3), values 1-10.
        Missing bones are drawn from :data:`FRAGMENT_COUNT_PROBABILITIES`.
    displaced_fraction : float, optional
        Probability that a non-largest fragment moves; drawn per case when None (about a
        third of the cases keep every fragment in place).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    cfg = SIZES[size]
    r_anat, r_frac, r_grid, r_tissue, r_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence(int(seed)).spawn(5)
    )
    anat = sample_anatomy(r_anat)
    canon_to_world = _sample_pose(r_anat)
    world_to_canon = np.linalg.inv(canon_to_world)
    structures = build_structures(anat)
    counts = _requested_counts(n_fragments, r_frac)
    if displaced_fraction is None:
        displaced_fraction = 0.0 if r_frac.random() < 0.3 else r_frac.uniform(0.4, 0.9)

    # fractures, planned on a fixed grid so that sizes agree
    plans: dict[int, FracturePlan] = {}
    grids: dict[str, _Grid] = {}
    bone_pts = []
    for s in structures:
        if not s.bone:
            continue
        plan_grid = _evaluate(s, PLAN_RES_MM)
        pts, idx = plan_grid.points(plan_grid.array < 0)
        plans[s.bone] = plan_fractures(
            r_frac, s.bone, counts[s.bone], pts, idx, PLAN_RES_MM**3, displaced_fraction
        )
        bone_pts.append(pts)
        if cfg.canon_res_mm == PLAN_RES_MM:
            grids[s.name] = plan_grid
    world_pts = _transform_points(canon_to_world, np.concatenate(bone_pts).astype(np.float64))
    margin = 10.0  # moved fragments
    geom, shape, stored_as = _sample_grid(r_grid, cfg, size, world_pts.min(0) - margin,
                                          world_pts.max(0) + margin)

    # soft tissue over the whole field of view
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)], float)
    fov_canon = _transform_points(world_to_canon, geom.index_to_world(corners))
    tissue_box = np.array([fov_canon.min(0) - 4, fov_canon.max(0) + 4])
    hu, origin = soft_tissue(r_tissue, tissue_box, cfg.tissue_res_mm)
    ct = _resample(_Grid(hu, origin, cfg.tissue_res_mm), world_to_canon, geom, (0, 0, 0), shape, -1000.0)

    # bones, crop first
    groups: list[_Group] = []
    for s in structures:
        grid = grids.get(s.name) or _evaluate(s, cfg.canon_res_mm, tissue_box)
        plan = plans.get(s.bone) if s.bone else None
        if plan is None:
            groups.append(_Group(s, grid, None, (0,), np.eye(4), s.box_mm))
            continue
        still = tuple(k for k in range(plan.n_fragments) if k not in plan.motions)
        box = np.array([np.min([plan.boxes_mm[k][0] for k in still], 0) - 6,
                        np.max([plan.boxes_mm[k][1] for k in still], 0) + 6])
        groups.append(_Group(s, grid, plan, still, np.eye(4), box))
        for k, motion in sorted(plan.motions.items()):
            b = plan.boxes_mm[k]
            groups.append(_Group(s, grid, plan, (k,), motion.matrix(), np.array([b[0] - 6, b[1] + 6])))
    kept = []
    for g in groups:
        box = _box_in_grid(geom, shape, canon_to_world @ g.motion, g.box_mm)
        if box is not None:
            g.start, g.stop = box
            kept.append(g)
    ustart = np.min([g.start for g in kept], 0)
    ustop = np.max([g.stop for g in kept], 0)
    ushape = tuple(int(v) for v in ustop - ustart)
    acc_a = np.zeros(ushape, np.float32)
    acc_h = np.zeros(ushape, np.float32)
    labels_u = np.zeros(ushape, np.uint8)
    tex_box = np.array([np.min([g.structure.box_mm[0] for g in kept], 0),
                        np.max([g.structure.box_mm[1] for g in kept], 0)])
    tex_box = np.array([np.maximum(tex_box[0], tissue_box[0] - 12), np.minimum(tex_box[1], tissue_box[1] + 12)])
    texture = _texture(r_tissue, tex_box, cfg.texture_res_mm)
    w = float(np.prod(geom.spacing_zyx_mm) ** (1 / 3))
    tex_hu = float(r_tissue.uniform(40, 90))
    # unlabelled bone first, so fragments win the (rare) voxels both claim
    kept.sort(key=lambda g: (g.structure.bone != 0, g.motion is not None and not np.allclose(g.motion, np.eye(4))))
    for g in kept:
        bone = g.structure.bone
        provisional = np.arange(MAX_FRAGMENTS_PER_BONE, dtype=np.uint8) + (first_label(bone) if bone else 0)
        _render_group(g, geom, world_to_canon, texture, w, tex_hu, acc_a, acc_h, labels_u,
                      ustart, provisional)
    usl = tuple(slice(int(a), int(b)) for a, b in zip(ustart, ustop))
    a = np.minimum(acc_a, 1)
    bone_mean = acc_h / np.maximum(acc_a, np.float32(1e-6))
    ct[usl] = ct[usl] * (1 - a) + bone_mean * a
    del acc_a, acc_h, a, bone_mean

    # CT noise
    sigma = r_noise.uniform(8.0, 28.0)
    ct += r_noise.standard_normal(ct.shape, dtype=np.float32) * np.float32(sigma)
    ct_i16 = np.clip(np.rint(ct), -1024, 3071).astype(np.int16)
    del ct

    _clean_labels(labels_u)
    mapping = _rank_labels(labels_u)
    labels = np.zeros(shape, np.uint8)
    labels[usl] = labels_u
    present = {bone: len(m) for bone, m in mapping.items()}
    displaced = {
        bone: sorted(mapping[bone][first_label(bone) + k] for k in plans[bone].motions
                     if first_label(bone) + k in mapping[bone])
        for bone in (1, 2, 3)
    }
    ct_vol = Volume(ct_i16, geom.spacing_zyx_mm, geom.origin_lps_mm, geom.direction)
    lab_vol = ct_vol.with_array(labels)
    return Phantom(ct_vol, lab_vol, int(seed), size, counts, present, displaced, stored_as, anat, plans)


def make_phantom(seed: int, size: str = "small", n_fragments: dict | None = None) -> tuple[Volume, Volume]:
    """A synthetic fractured pelvis CT and its PENGWIN fragment labels.

    Parameters
    ----------
    seed : int
        Same seed, same case (bit for bit).
    size : {"small", "full"}
        ``small``: about 2 mm voxels (about 180 x 180 x 110), for tests and training;
        ``full``: 512 x 512 in-plane at 0.6-1.0 mm, slices 0.5-3 mm, for benchmarks.
    n_fragments : dict, optional
        Fragments per bone, e.g. ``{"sacrum": 1, "left_hip": 3, "right_hip": 2}`` (keys may
        also be anatomy ids 1/2/3); missing bones are drawn at random.

    Returns
    -------
    ct : Volume
        int16 HU, array (z, y, x), spacing (z, y, x) mm, LPS origin and direction (stored
        either LPS or RAS; the patient's left hip is always at +x in world LPS).
    labels : Volume
        uint8 PENGWIN labels on the same grid: 0 background, 1-10 sacrum, 11-20 left hip,
        21-30 right hip, the largest fragment of each bone first.
    """
    ph = generate_phantom(seed, size, n_fragments)
    return ph.ct, ph.labels


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a dataset made with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def write_phantom_dataset(
    out_dir: str | os.PathLike,
    cases: int,
    seed: int,
    size: str = "small",
    fmt: str = "mha",
    progress: bool = False,
) -> list[str]:
    """Write ``cases`` phantoms in the PENGWIN layout and return their case names.

    ``OUT/images/<case>.<ext>`` (int16 HU) and ``OUT/labels/<case>.<ext>`` (uint8), with
    ext ``mha`` or ``nii.gz``; ``fmt="dicom"`` writes ``OUT/dicom/<case>/`` CT series (and
    the labels as .mha). ``OUT/phantoms.json`` records each case's seed and fragments.
    """
    if fmt not in ("mha", "nii.gz", "dicom"):
        raise ValueError(f"fmt must be 'mha', 'nii.gz' or 'dicom', got {fmt!r}")
    out = Path(out_dir)
    names: list[str] = []
    records = []
    iterator = range(int(cases))
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="phantoms", unit="case")
    for i in iterator:
        cs = case_seed(seed, i)
        name = f"phantom_{int(seed)}_{i:03d}"
        ph = generate_phantom(cs, size)
        ext = "mha" if fmt == "dicom" else fmt
        if fmt == "dicom":
            from .phantom_dicom import write_dicom_series

            write_dicom_series(ph.ct, out / "dicom" / name, series_number=i + 1, patient_index=i)
        else:
            write_volume(ph.ct, out / "images" / f"{name}.{ext}")
        write_volume(ph.labels, out / "labels" / f"{name}.{ext}")
        names.append(name)
        records.append({"case": name, "case_seed": cs, **ph.summary()})
    out.mkdir(parents=True, exist_ok=True)
    (out / "phantoms.json").write_text(json.dumps({"seed": int(seed), "size": size, "cases": records}, indent=1))
    return names
