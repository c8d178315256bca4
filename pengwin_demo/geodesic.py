"""Geodesic Voronoi growth: give every passable voxel to the seed whose wave reaches it first.

Two implementations of one function, :func:`grow_labels`:

``method="reference"``
    What the ABBC article describes: one scikit-fmm distance field per seed, computed
    through the passable voxels only (everything else is masked, i.e. impassable), with
    the physical voxel spacing, then the arg-min over seeds. Cost: one fast-marching run
    per seed over the whole bounding box of the domain.

``method="fast"``
    The same answer from much less work. The voxels to be assigned ("free": passable and
    not a seed) are split into 6-connected components. A wave can only enter a free
    component through a seed voxel that touches it, and the touching seed is at distance 0
    there, so the arg-min inside a component is decided by the seeds that touch it:

    * a component touched by one seed belongs to it entirely (exact, no distance field);
    * a component touched by none is unreachable (label 0, as in the reference);
    * a component touched by several is cropped to its own box, with only those seeds
      and, as sources, only their voxels next to the component (instead of the whole
      domain box for every seed, marching through every seed's interior too). Up to eight
      seeds and a small component: one fast-marching run per seed, as in the reference.
      More seeds or a large component: one joint fast-marching field from all of them, and a
      marker watershed on it carries each seed's label down the field; this differs from
      the per-seed arg-min near the walls between cells (see docs/recovery.md: 99.96 %
      agreement on the final labels of a full-size phantom).

    Elsewhere the partition equals the reference's up to ties on the cell walls.

Both use the 6-neighbour stencil of scikit-fmm, so "reachable" means 6-connected.
Arrays are indexed (z, y, x); ``spacing_zyx_mm`` is in the same order, in mm.
"""

from __future__ import annotations

import cc3d
import numpy as np
import skfmm
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from .volume import bounding_box

METHODS = ("fast", "reference")
_BALL6 = ndi.generate_binary_structure(3, 1)

JOINT_FIELD_MIN_VOX = 50_000
JOINT_FIELD_MIN_SEEDS = 8
"""Contested components with more voxels than ``JOINT_FIELD_MIN_VOX``, or with more seeds
than ``JOINT_FIELD_MIN_SEEDS``, get one joint distance field and a watershed instead of
one field per seed (cheaper, a little off on the cell walls)."""


def grow_labels(
    seeds: np.ndarray,
    passable: np.ndarray,
    spacing_zyx_mm,
    method: str = "fast",
) -> np.ndarray:
    """Geodesic Voronoi partition of the passable voxels among labelled seeds.

    Parameters
    ----------
    seeds : ndarray of int, shape (Z, Y, X)
        Seed labels (0 = not a seed, 1..N = seed ids). Seed voxels are always passable
        and keep their label.
    passable : ndarray of bool, shape (Z, Y, X)
        Voxels a wave may travel through; the rest is impassable.
    spacing_zyx_mm : sequence of 3 float
        Voxel size along (z, y, x), mm: distances are physical, not in voxels.
    method : {"fast", "reference"}
        See the module docstring; both return the same partition up to ties.

    Returns
    -------
    ndarray of uint32, shape (Z, Y, X)
        For each passable voxel the id of the seed with the smallest geodesic distance
        (6-connected paths through passable voxels, lengths in mm); 0 where no seed can
        be reached and outside the passable set.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if seeds.shape != passable.shape or seeds.ndim != 3:
        raise ValueError(f"seeds {seeds.shape} and passable {passable.shape} must be equal 3D shapes")
    spacing = tuple(float(s) for s in spacing_zyx_mm)
    seeds = np.asarray(seeds)
    out = np.zeros(seeds.shape, dtype=np.uint32)
    domain = passable.astype(bool, copy=False) | (seeds > 0)
    box = bounding_box(domain, margin_vox=1)
    if box is None or not np.any(seeds[box]):
        return out
    sub_seeds = seeds[box].astype(np.uint32, copy=False)
    sub_domain = domain[box]
    if method == "reference":
        out[box] = _grow_reference(sub_seeds, sub_domain, spacing)
    else:
        out[box] = _grow_fast(sub_seeds, sub_domain, spacing)
    return out


# -- reference: one scikit-fmm run per seed -------------------------------------------------
def _grow_reference(seeds: np.ndarray, domain: np.ndarray, spacing) -> np.ndarray:
    best = np.full(seeds.shape, np.inf, dtype=np.float32)
    owner = np.zeros(seeds.shape, dtype=np.uint32)
    blocked = ~domain
    for sid in np.unique(seeds[seeds > 0]):
        dist = _fmm_distance(seeds == sid, blocked, spacing)
        closer = dist < best
        best[closer] = dist[closer]
        owner[closer] = sid
    owner[blocked] = 0
    return owner


def _fmm_distance(source: np.ndarray, blocked: np.ndarray, spacing) -> np.ndarray:
    """Geodesic distance (mm, float32) from ``source`` avoiding ``blocked``; inf if unreachable."""
    phi = np.where(source, -1.0, 1.0)
    try:
        dist = skfmm.distance(np.ma.MaskedArray(phi, blocked), dx=list(spacing))
    except ValueError:  # no zero level set: the source fills its whole reachable set
        out = np.full(source.shape, np.inf, dtype=np.float32)
        out[source] = -1.0
        return out
    out = np.ma.filled(dist, np.inf).astype(np.float32)
    out[source] = np.minimum(out[source], 0.0)
    return out


# -- fast path: components + fields only where seeds compete ---------------------------------
def _grow_fast(seeds: np.ndarray, domain: np.ndarray, spacing) -> np.ndarray:
    owner = seeds.astype(np.uint32, copy=True)
    free_all = domain & (owner == 0)
    box = bounding_box(free_all, margin_vox=1)
    if box is None:
        return owner
    free = free_all[box]
    region = owner[box]
    offset = np.uint32(owner.max())
    # one array holds both: seed ids 1..offset, free component c as offset + c
    joint, n_comps = cc3d.connected_components(free, connectivity=6, return_N=True)
    joint = joint.astype(np.uint32, copy=False)
    np.add(joint, offset, out=joint, where=free)
    np.copyto(joint, region, where=~free)
    touching = _touching_seeds(joint, int(offset))
    lut = np.arange(int(offset) + n_comps + 1, dtype=np.uint32)
    lut[int(offset) + 1 :] = 0
    contested = []
    for comp, sids in touching.items():
        if len(sids) == 1:
            lut[int(offset) + comp] = next(iter(sids))
        else:
            contested.append(comp)
    sub_seeds = region.copy()
    region[...] = lut[joint]
    if contested:
        boxes = _boxes_of(joint, free, int(offset), contested)
        for comp in contested:
            cbox = _grow_box(boxes[comp], joint.shape)
            sub_comp = joint[cbox] == int(offset) + comp
            near = ndi.binary_dilation(sub_comp, _BALL6)
            cell_seeds = sub_seeds[cbox]
            ids = np.fromiter(touching[comp], dtype=np.uint32)
            frontier = near & ~sub_comp & np.isin(cell_seeds, ids)
            # the touching seeds' voxels next to the component are the sources; waves
            # cannot come in any other way, so the rest of each seed stays out of the field
            sources = np.where(frontier, cell_seeds, 0)
            if ids.size > JOINT_FIELD_MIN_SEEDS or np.count_nonzero(sub_comp) > JOINT_FIELD_MIN_VOX:
                cells = _grow_joint(sources, sub_comp | frontier, spacing)
            else:
                cells = _grow_reference(sources, sub_comp | frontier, spacing)
            cell_region = region[cbox]
            cell_region[sub_comp] = cells[sub_comp]
    return owner


def _boxes_of(joint: np.ndarray, free: np.ndarray, offset: int, comps: list[int]) -> dict:
    """Bounding boxes (tuples of slices) of the free components ``comps`` (ids without offset)."""
    flat = np.flatnonzero(free)
    ids = joint.ravel()[flat].astype(np.int64) - offset
    pick = np.isin(ids, comps)
    flat, ids = flat[pick], ids[pick]
    coords = np.unravel_index(flat, free.shape)
    n = max(comps) + 1
    boxes = {}
    lo = [np.full(n, np.iinfo(np.int64).max) for _ in range(3)]
    hi = [np.full(n, -1) for _ in range(3)]
    for axis in range(3):
        np.minimum.at(lo[axis], ids, coords[axis])
        np.maximum.at(hi[axis], ids, coords[axis])
    for c in comps:
        boxes[c] = tuple(slice(int(lo[a][c]), int(hi[a][c]) + 1) for a in range(3))
    return boxes


def _grow_joint(seeds: np.ndarray, domain: np.ndarray, spacing) -> np.ndarray:
    """One fast-marching field from all seeds, labels carried down it by a watershed.

    The watershed floods voxels in order of their geodesic distance, each taking the
    label of the already-flooded neighbour it was reached from: the seed whose wave got
    there first, up to a voxel on the walls between cells.
    """
    dist = _fmm_distance(seeds > 0, ~domain, spacing)
    dist[~domain] = 0.0
    return watershed(dist, markers=seeds.astype(np.int32), mask=domain, connectivity=1).astype(np.uint32)


def _touching_seeds(joint: np.ndarray, offset: int) -> dict[int, set[int]]:
    """Free component id -> ids of the seeds that share a face with it.

    ``joint`` holds seed ids 1..offset and free component c as ``offset + c``.
    """
    touching: dict[int, set[int]] = {}
    for a, b in cc3d.contacts(joint, connectivity=6, surface_area=False):
        lo, hi = (a, b) if a < b else (b, a)
        if lo <= offset < hi:  # a seed next to a free component
            touching.setdefault(int(hi - offset), set()).add(int(lo))
    return touching


def _grow_box(bbox, shape, margin_vox: int = 1):
    return tuple(
        slice(max(s.start - margin_vox, 0), min(s.stop + margin_vox, n))
        for s, n in zip(bbox, shape)
    )
