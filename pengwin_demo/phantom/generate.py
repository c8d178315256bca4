"""Synthetic fractured-pelvis CT phantoms with exact PENGWIN fragment labels.

``make_phantom(seed, size)`` returns ``(ct, labels)``: an int16 HU CT and a uint8 PENGWIN
label map (0 background, 1-10 sacrum, 11-20 left hip, 21-30 right hip, largest fragment
first within a bone) on the same grid. The same seed gives the same case, bit for bit.

How a case is made
------------------
1. Anatomy (:mod:`pengwin_demo.phantom.anatomy`): signed distance fields of the sacrum,
   both hip bones, L5 and both femurs in a canonical patient frame (LPS mm), evaluated on
   a coarse canonical grid per bone.
2. Fractures (:mod:`pengwin_demo.phantom.fractures`): each labelled bone is cut by curved
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
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..io import write_volume
from ..labels import BONES, MAX_FRAGMENTS_PER_BONE, first_label
from ..volume import Volume
from .anatomy import AnatomyParams, build_structures, sample_anatomy
from .fractures import (
    FRAGMENT_COUNT_PROBABILITIES,
    FracturePlan,
    plan_fractures,
    sample_fragment_counts,
)
from .render import (
    Grid,
    Group,
    box_in_grid,
    clean_labels,
    evaluate,
    make_texture,
    rank_labels,
    render_group,
    resample_to_ct,
)
from .sdf import rotation_matrix
from .tissue import soft_tissue

__all__ = [
    "FRAGMENT_COUNT_PROBABILITIES",
    "Phantom",
    "SIZES",
    "generate_phantom",
    "make_phantom",
    "write_phantom_dataset",
]

BONE_KEYS: dict[str | int, int] = {**{name: bone for bone, name in BONES.items()},
                                   **{bone: bone for bone in BONES}}
"""``n_fragments`` keys: bone name or anatomy id -> anatomy id."""

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


def _sample_grid(rng, cfg: SizeConfig, bone_lo: np.ndarray, bone_hi: np.ndarray):
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
    slack = np.minimum(np.maximum((fov_xy - extent[:2] - 16) / 2, 0), 25.0)  # patient near the centre
    cx, cy = centre[:2] + rng.uniform(-slack, slack)
    below, above = rng.uniform(6, 40), rng.uniform(6, 50)
    z_lo, z_hi = bone_lo[2] - below, bone_hi[2] + above
    nz = int(np.ceil((z_hi - z_lo) / sz)) + 1
    cz = (z_lo + z_hi) / 2
    if nz > cfg.max_slices:  # thin slices: keep the bones, trim the margins
        nz = max(cfg.max_slices, int(np.ceil((extent[2] + 8) / sz)) + 1)
        cz = centre[2]
    stored_as = "RAS" if rng.random() < 0.45 else "LPS"
    direction = np.diag([-1.0, -1.0, 1.0]) if stored_as == "RAS" else np.eye(3)
    spacing_xyz = np.array([sxy, sxy, sz])
    shape_xyz = np.array([nxy, nxy, nz])
    origin = np.array([cx, cy, cz]) - direction @ (spacing_xyz * (shape_xyz - 1) / 2)
    geom = Volume(np.zeros((1, 1, 1), np.uint8), (sz, sxy, sxy), tuple(origin), direction)
    return geom, (int(nz), int(nxy), int(nxy)), stored_as


# -- public API ---------------------------------------------------------------------


def _requested_counts(n_fragments, rng, probabilities=None) -> dict[int, int]:
    counts = sample_fragment_counts(rng, probabilities)
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
    *,
    fragment_probabilities: dict[int, float] | None = None,
    dense_reference: bool = False,
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
        third of the cases keep every fragment in place). Changing it alone changes only
        the motions, not the anatomy, the cuts or the grid.
    fragment_probabilities : dict, optional
        {count: weight} for bones not fixed by ``n_fragments`` (default
        :data:`FRAGMENT_COUNT_PROBABILITIES`), e.g. ``{1: 0.2, 5: 0.4, 10: 0.4}`` for a
        comminuted data set.
    dense_reference : bool
        Resample every bone onto the whole CT instead of its bounding box: the slow
        reference that ``benchmarks/bench_phantom.py`` compares against (same output).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    cfg = SIZES[size]
    streams = np.random.SeedSequence(int(seed)).spawn(6)
    r_anat, r_frac, r_grid, r_tissue, r_noise, r_motion = (np.random.default_rng(s) for s in streams)
    anat = sample_anatomy(r_anat)
    canon_to_world = _sample_pose(r_anat)
    world_to_canon = np.linalg.inv(canon_to_world)
    structures = build_structures(anat)
    counts = _requested_counts(n_fragments, r_frac, fragment_probabilities)
    style = r_frac.random()
    if displaced_fraction is None:
        displaced_fraction = 0.0 if style < 0.3 else 0.4 + 0.5 * (style - 0.3) / 0.7

    # fractures, planned on a fixed grid so that both sizes break the same way
    plans, grids, bone_pts = _plan_fractures(structures, counts, displaced_fraction, cfg, r_frac, r_motion)
    world_pts = _transform_points(canon_to_world, np.concatenate(bone_pts).astype(np.float64))
    margin = 10.0  # room for moved fragments
    geom, shape, stored_as = _sample_grid(r_grid, cfg, world_pts.min(0) - margin, world_pts.max(0) + margin)

    # soft tissue over the whole field of view, then the bones, crop first
    ct, fov_box = _soft_tissue_ct(r_tissue, cfg, geom, shape, world_to_canon)
    groups = _bone_groups(structures, plans, grids, cfg, fov_box)
    labels, usl = _render_bones(ct, groups, geom, shape, canon_to_world, world_to_canon, fov_box, cfg,
                                r_tissue, crop=not dense_reference)

    _add_noise(ct, r_noise)
    present, displaced = _rank_fragments(labels[usl], plans)
    ct_vol = Volume(ct, geom.spacing_zyx_mm, geom.origin_lps_mm, geom.direction)
    return Phantom(ct_vol, ct_vol.with_array(labels), int(seed), size, counts, present,
                   displaced, stored_as, anat, plans)


def _plan_fractures(structures, counts, displaced_fraction, cfg, r_frac, r_motion):
    """Fracture plan of every labelled bone, on the canonical planning grid.

    Returns the plans by anatomy id, the planning grids by structure name where the
    rendering can reuse them (same resolution), and each bone's canonical points (mm).
    """
    plans: dict[int, FracturePlan] = {}
    grids: dict[str, Grid] = {}
    bone_pts = []
    for s in structures:
        if not s.bone:
            continue
        plan_grid = evaluate(s, PLAN_RES_MM)
        pts, idx = plan_grid.points(plan_grid.array < 0)
        plans[s.bone] = plan_fractures(
            r_frac, s.bone, counts[s.bone], pts, idx, PLAN_RES_MM**3, displaced_fraction,
            motion_rng=r_motion,
        )
        bone_pts.append(pts)
        if cfg.canon_res_mm == PLAN_RES_MM:
            grids[s.name] = plan_grid
    return plans, grids, bone_pts


def _soft_tissue_ct(rng, cfg: SizeConfig, geom: Volume, shape, world_to_canon):
    """The CT (int16 HU, ``shape``) filled with soft tissue, and the field of view as a
    canonical box (2, 3) in mm, 4 mm wider than the CT."""
    corners = np.array([[i, j, k] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)], float)
    fov_canon = _transform_points(world_to_canon, geom.index_to_world(corners))
    fov_box = np.array([fov_canon.min(0) - 4, fov_canon.max(0) + 4])
    hu, origin = soft_tissue(rng, fov_box, cfg.tissue_res_mm)
    ct = resample_to_ct(Grid(hu, origin, cfg.tissue_res_mm), world_to_canon, geom, shape,
                        -1000.0, sitk.sitkInt16)
    return ct, fov_box


def _bone_groups(structures, plans, grids, cfg: SizeConfig, fov_box) -> list[Group]:
    """One render group per bone without a plan, per fractured bone's fragments that stay,
    and per moved fragment; each with its canonical box (mm)."""
    groups: list[Group] = []
    for s in structures:
        grid = grids.get(s.name) or evaluate(s, cfg.canon_res_mm, fov_box + [[-12], [12]])
        plan = plans.get(s.bone) if s.bone else None
        if plan is None:
            groups.append(Group(s, grid, None, (0,), np.eye(4), s.box_mm))
            continue
        still = tuple(k for k in range(plan.n_fragments) if k not in plan.motions)
        box = np.array([np.min([plan.boxes_mm[k][0] for k in still], 0) - 6,
                        np.max([plan.boxes_mm[k][1] for k in still], 0) + 6])
        groups.append(Group(s, grid, plan, still, np.eye(4), box))
        for k, motion in sorted(plan.motions.items()):
            b = plan.boxes_mm[k]
            groups.append(Group(s, grid, plan, (k,), motion.matrix(), np.array([b[0] - 6, b[1] + 6])))
    return groups


def _render_bones(ct, groups, geom, shape, canon_to_world, world_to_canon, fov_box, cfg, rng, *, crop):
    """In place: bone HU blended into ``ct`` by partial-volume coverage. Returns the
    provisional label map (``shape``, uint8) and the slices of the box the bones touch."""
    kept = []
    for g in groups:
        box = box_in_grid(geom, shape, canon_to_world @ g.motion, g.box_mm)
        if box is not None:
            g.start, g.stop = box
            kept.append(g)
    ustart = np.min([g.start for g in kept], 0)
    ustop = np.max([g.stop for g in kept], 0)
    usl = tuple(slice(int(a), int(b)) for a, b in zip(ustart, ustop))
    acc_a = np.zeros(tuple(int(v) for v in ustop - ustart), np.float32)
    acc_h = np.zeros_like(acc_a)
    labels = np.zeros(shape, np.uint8)
    texture = _bone_texture(kept, fov_box, cfg, rng)
    w = float(np.prod(geom.spacing_zyx_mm) ** (1 / 3))
    tex_hu = float(rng.uniform(35, 80))
    # unlabelled bone first, moved fragments last: they win the (rare) voxels both claim
    kept.sort(key=lambda g: (g.structure.bone != 0, g.moved))
    for g in kept:
        render_group(g, geom, world_to_canon, texture, w, tex_hu, acc_a, acc_h, labels, ustart, crop=crop)
    touched = np.nonzero(acc_a)
    a = np.minimum(acc_a[touched], 1)
    bone_hu = acc_h[touched] / acc_a[touched]
    del acc_a, acc_h
    ct_u = ct[usl]
    ct_u[touched] = np.rint(ct_u[touched] * (1 - a) + bone_hu * a).clip(-1024, 3071).astype(np.int16)
    return labels, usl


def _bone_texture(groups, fov_box, cfg: SizeConfig, rng):
    """Cancellous texture over the rendered structures' canonical boxes, within the field of
    view (+12 mm)."""
    tex_box = np.array([np.min([g.structure.box_mm[0] for g in groups], 0),
                        np.max([g.structure.box_mm[1] for g in groups], 0)])
    tex_box = np.array([np.maximum(tex_box[0], fov_box[0] - 12), np.minimum(tex_box[1], fov_box[1] + 12)])
    return make_texture(rng, tex_box, cfg.texture_res_mm)


def _rank_fragments(lab_u: np.ndarray, plans) -> tuple[dict[int, int], dict[int, list[int]]]:
    """In place: labels cleaned and ranked to PENGWIN ids. Returns the fragments present per
    bone and the PENGWIN labels of the moved fragments per bone."""
    clean_labels(lab_u)
    mapping = rank_labels(lab_u)
    present = {bone: len(m) for bone, m in mapping.items()}
    displaced = {
        bone: sorted(mapping[bone][first_label(bone) + k] for k in plans[bone].motions
                     if first_label(bone) + k in mapping[bone])
        for bone in BONES
    }
    return present, displaced


def _add_noise(ct: np.ndarray, rng: np.random.Generator, bank_slices: int = 12, pad: int = 48) -> None:
    """In place: CT noise (sigma 8-28 HU, slightly correlated in-plane), then clip to int16 HU.

    Noise comes from a small bank of correlated noise slices, each CT slice taking a
    random bank slice at a random offset: cheap for 512 x 512 x 400 and still white
    between slices.
    """
    nz, ny, nx = ct.shape
    sigma = rng.uniform(8.0, 28.0)
    bank = rng.standard_normal((bank_slices, ny + pad, nx + pad), dtype=np.float32)
    bank = ndimage.gaussian_filter(bank, (0, 0.6, 0.6))
    bank *= np.float32(sigma / max(float(bank.std()), 1e-6))
    bank = np.rint(bank).astype(np.int16)
    pick = rng.integers(0, bank_slices, nz)
    oy = rng.integers(0, pad, nz)
    ox = rng.integers(0, pad, nz)
    for k in range(nz):
        ct[k] += bank[pick[k], oy[k]:oy[k] + ny, ox[k]:ox[k] + nx]
    np.clip(ct, -1024, 3071, out=ct)


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
    fragment_probabilities: dict[int, float] | None = None,
) -> list[str]:
    """Write ``cases`` phantoms in the PENGWIN layout and return their case names.

    ``OUT/images/<case>.<ext>`` (int16 HU) and ``OUT/labels/<case>.<ext>`` (uint8), with
    ext ``mha`` or ``nii.gz``; ``fmt="dicom"`` also writes each CT as a DICOM series in
    ``OUT/dicom/<case>/`` (images and labels stay .mha). ``OUT/phantoms.json`` records
    each case's seed and fragments. ``fragment_probabilities`` ({count: weight})
    replaces the default fragment-count distribution.
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
        ph = generate_phantom(cs, size, fragment_probabilities=fragment_probabilities)
        ext = "mha" if fmt == "dicom" else fmt
        write_volume(ph.ct, out / "images" / f"{name}.{ext}")
        write_volume(ph.labels, out / "labels" / f"{name}.{ext}")
        if fmt == "dicom":
            from .dicom_export import write_dicom_series

            write_dicom_series(ph.ct, out / "dicom" / name, series_number=1, patient_index=i,
                               uid_key=f"{name}-{cs}")
        names.append(name)
        records.append({"case": name, "case_seed": cs, **ph.summary()})
    out.mkdir(parents=True, exist_ok=True)
    probs = fragment_probabilities or FRAGMENT_COUNT_PROBABILITIES
    info = {"seed": int(seed), "size": size, "fragment_probabilities": {str(k): v for k, v in probs.items()},
            "cases": records}
    (out / "phantoms.json").write_text(json.dumps(info, indent=1))
    return names
