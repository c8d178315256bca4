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
    * the components touched by several ("contested") are first grown together by one
      multi-source Dijkstra on their own voxels (6-neighbour edges, one spacing long;
      scipy.sparse.csgraph), never on their bounding box. The Dijkstra distance is a path
      of face steps, never shorter than the fast-marching one, so it bounds how far any
      seed's wave has to travel inside the component. Then, where that is cheap, the
      reference's answer replaces it: one scikit-fmm field per touching seed, from its
      voxels next to the component, cropped to their box grown by that bound and stopped
      there (``narrow``), arg-min in id order. That is every component within 6 mm of
      its seeds (fracture zones) and any whose per-seed boxes add up to at most 6 M
      voxels. A larger component whose seeds' Dijkstra cells are compact (a boundary
      region that holes in a predicted wall join across several fragments) gets each
      seed's field on its cell grown by a 3-voxel band instead, which is the reference's
      wherever the Dijkstra wall lies within the band of the fast-marching one. Only large
      boundary/core regions shared by two or three cores of one fragment keep the
      Dijkstra labels; their walls may sit a voxel or two off the reference's (see
      docs/recovery.md for the measured agreement).

Both use the 6-neighbour stencil of scikit-fmm, so "reachable" means 6-connected.
Arrays are indexed (z, y, x); ``spacing_zyx_mm`` is in the same order, in mm.
"""

from __future__ import annotations

import cc3d
import numpy as np
import skfmm
from scipy import ndimage as ndi
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from ..volume import bounding_box

METHODS = ("fast", "reference")


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
    if method == "fast":
        return _grow_fast(seeds, np.asarray(passable, dtype=bool), spacing)
    out = np.zeros(seeds.shape, dtype=np.uint32)
    domain = passable.astype(bool, copy=False) | (seeds > 0)
    box = bounding_box(domain, margin_vox=1)
    if box is None or not np.any(seeds[box]):
        return out
    sub_seeds = seeds[box].astype(np.uint32, copy=False)
    sub_domain = domain[box]
    out[box] = _grow_reference(sub_seeds, sub_domain, spacing)
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


def _fmm_distance(source: np.ndarray, blocked: np.ndarray, spacing, narrow: float = 0.0) -> np.ndarray:
    """Geodesic distance (mm, float32) from ``source`` avoiding ``blocked``; inf if unreachable.

    With ``narrow`` > 0 the march stops at that distance (mm); farther voxels are inf.
    """
    phi = np.where(source, -1.0, 1.0)
    try:
        dist = skfmm.distance(np.ma.MaskedArray(phi, blocked), dx=list(spacing), narrow=narrow)
    except ValueError:  # no zero level set: the source fills its whole reachable set
        out = np.full(source.shape, np.inf, dtype=np.float32)
        out[source] = -1.0
        return out
    out = np.ma.filled(dist, np.inf).astype(np.float32)
    out[source] = np.minimum(out[source], 0.0)
    return out


# -- fast path: components + fields only where seeds compete ---------------------------------
_CONTESTED = np.uint32(np.iinfo(np.uint32).max)  # placeholder in the output until decided

FIELD_MAX_RANGE_MM = 6.0
FIELD_MAX_WORK_VOX = 6_000_000
"""Which contested components get the reference's per-seed fast-marching fields (exact):
those whose every voxel lies within ``FIELD_MAX_RANGE_MM`` of a touching seed (fracture
zones, small pockets), and those whose per-seed boxes (around the seed's contacts, or
else around its Dijkstra cell) add up to at most ``FIELD_MAX_WORK_VOX`` voxels. The others
(large boundary/core regions shared by two or three cores of one fragment) keep the
multi-source Dijkstra labels, whose walls may sit a voxel or two away from the
reference's."""


def _grow_fast(seeds: np.ndarray, passable: np.ndarray, spacing) -> np.ndarray:
    owner = np.array(seeds, dtype=np.uint32, order="C")  # the output: seeds keep their ids
    n_seed_ids = int(owner.max(initial=0))
    free = passable & (owner == 0)
    inner = bounding_box(free)
    if inner is None or n_seed_ids == 0:
        return owner
    box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(inner, owner.shape))
    # a free voxel on the array's face has no neighbour beyond it
    on_face = any(b.start == i.start or b.stop == i.stop for b, i in zip(box, inner))
    whole = all(b.start == 0 and b.stop == n for b, n in zip(box, owner.shape))
    free = np.ascontiguousarray(free[box])
    seeds_box = owner if whole else owner[box].copy()  # seed ids, 0 on free voxels
    comps, n_comps = cc3d.connected_components(free, connectivity=6, return_N=True, out_dtype=np.uint32)
    comps = np.ascontiguousarray(comps)
    flat = np.flatnonzero(free)  # every free voxel, raster order in the box
    comp_of = comps.reshape(-1)[flat]
    # which seeds touch each free component: its voxels' face neighbours that are seeds
    touch = _touch_table(flat, comp_of, n_comps, seeds_box, n_seed_ids, on_face)
    n_touching = np.asarray(touch.sum(axis=1)).ravel()
    lut = np.where(n_touching == 1, np.asarray(touch.argmax(axis=1)).ravel(), 0).astype(np.uint32)
    lut[n_touching > 1] = _CONTESTED
    labels = lut[comp_of]  # unreachable components stay 0
    contested = np.flatnonzero(labels == _CONTESTED)
    if contested.size:
        cflat = flat[contested]
        ccomp = comp_of[contested]
        grown, dist, contacts = _grow_graph(cflat, seeds_box, comps, spacing, on_face)
        _refine_exact(grown, dist, contacts, cflat, ccomp, n_comps, free.shape, spacing)
        labels[contested] = grown
    if whole:
        owner.reshape(-1)[flat] = labels
    else:
        idx = np.unravel_index(flat, free.shape)
        owner[tuple(i + s.start for i, s in zip(idx, box))] = labels
    return owner


def _neighbours(flat: np.ndarray, shape, on_face: bool):
    """Raster indices of the 6 face neighbours of ``flat`` in an array of ``shape``.

    Yields them in the order z-1, z+1, y-1, y+1, x-1, x+1. With ``on_face`` (some voxel
    may lie on the array's face) such a voxel gets itself as its neighbour beyond that face.
    """
    strides = (shape[1] * shape[2], shape[2], 1)
    coords = np.unravel_index(flat, shape) if on_face else None
    for axis in range(3):
        for step in (-1, 1):
            nb = flat + step * strides[axis]
            if on_face:
                edge = (coords[axis] == 0) if step < 0 else (coords[axis] == shape[axis] - 1)
                nb[edge] = flat[edge]
            yield nb


_DENSE_TOUCH_MAX = 50_000_000  # entries of the dense (component, seed) table; sparse beyond


def _touch_table(flat, comp_of, n_comps: int, seeds: np.ndarray, n_seed_ids: int, on_face: bool):
    """Boolean table (component, seed id): the seed shares a face with the component."""
    seeds_flat = seeds.reshape(-1)
    if (n_comps + 1) * (n_seed_ids + 1) <= _DENSE_TOUCH_MAX:
        table = np.zeros((n_comps + 1, n_seed_ids + 1), dtype=bool)
        for nb in _neighbours(flat, seeds.shape, on_face):
            sid = seeds_flat[nb]
            hit = np.flatnonzero(sid)
            table[comp_of[hit], sid[hit]] = True
        return table
    pairs = []  # many components and seeds: a sparse table of the pairs that occur
    for nb in _neighbours(flat, seeds.shape, on_face):
        sid = seeds_flat[nb]
        hit = np.flatnonzero(sid)
        pairs.append(np.unique(comp_of[hit].astype(np.int64) * (n_seed_ids + 1) + sid[hit]))
    pairs = np.unique(np.concatenate(pairs))
    from scipy.sparse import coo_matrix

    return coo_matrix(
        (np.ones(pairs.size, dtype=bool), (pairs // (n_seed_ids + 1), pairs % (n_seed_ids + 1))),
        shape=(n_comps + 1, n_seed_ids + 1),
    ).tocsr()


def _grow_graph(flat: np.ndarray, seeds: np.ndarray, scratch: np.ndarray, spacing, on_face: bool = True):
    """Multi-source Dijkstra over the free voxels ``flat`` and their 6-neighbour edges.

    Parameters
    ----------
    flat : ndarray of int
        Sorted raster indices into ``seeds`` of free voxels, each 6-connected through free
        voxels of ``flat`` to a seed voxel.
    seeds : ndarray of uint32, shape (Z, Y, X)
        Seed ids, 0 on free voxels.
    scratch : ndarray of uint32, same shape, C-contiguous
        Overwritten; must hold values under 2**31 elsewhere than ``flat``.
    spacing : sequence of 3 float
        Voxel size (z, y, x), mm: the length of an edge along that axis.
    on_face : bool
        Whether a voxel of ``flat`` may lie on the array's face (see :func:`_neighbours`).

    Returns
    -------
    labels : ndarray of uint32
        Per voxel of ``flat``, the seed nearest along the graph.
    dist : ndarray of float64
        That distance, mm: a path of face steps, so never shorter than the straight line
        (nor than scikit-fmm's distance, which starts half a voxel from the seed).
    contacts : tuple of ndarray
        ``(voxel, seed_flat, seed_id)``: every face between a voxel of ``flat`` (its index
        in ``flat``) and a seed voxel (raster index).

    Each seed is one source node joined to the voxels it touches (edge: the face's
    spacing). Only these voxels are visited, never their bounding box.
    """
    shape = seeds.shape
    n = flat.size
    seeds_flat = seeds.reshape(-1)
    node_of = scratch.reshape(-1)
    base = np.uint32(2**31)  # node ids are stored as base + index, above any label in scratch
    node_of[flat] = base + np.arange(n, dtype=np.uint32)
    nbr = np.empty((n, 6), dtype=np.uint32)
    src_node, src_pos, src_dir = [], [], []
    # a voxel on the array's face points to itself beyond it: a harmless self-loop
    for k, nb in enumerate(_neighbours(flat, shape, on_face)):
        nbr[:, k] = node_of[nb]
        touch = np.flatnonzero(seeds_flat[nb])
        src_node.append(touch)
        src_pos.append(nb[touch])
        src_dir.append(np.full(touch.size, k, dtype=np.int8))
    valid = nbr >= base
    src_node = np.concatenate(src_node)
    src_pos = np.concatenate(src_pos)
    src_dir = np.concatenate(src_dir)
    src_id = seeds_flat[src_pos]
    step_mm = np.repeat(np.asarray(spacing, dtype=np.float64), 2)
    # one source node per seed id, one edge to each voxel it touches (its shortest face)
    ids, which = _small_ids(src_id)
    n_src = ids.size
    # (voxel, seed) pairs once each, with their shortest face; the key is sorted within
    # each direction's run, so the stable sort only merges six runs
    key = src_node.astype(np.int64) * n_src + which
    order = np.argsort(key, kind="stable")
    key = key[order]
    start = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    pair_w = np.minimum.reduceat(step_mm[src_dir[order]], start)
    pair_node = src_node[order[start]]
    pair_src = which[order[start]]
    by_src = np.argsort(pair_src, kind="stable")  # rows of the source nodes, in seed order
    indptr = np.empty(n + n_src + 1, dtype=np.int64)
    indptr[0] = 0
    np.cumsum(valid.sum(axis=1), out=indptr[1 : n + 1])
    indptr[n + 1 :] = indptr[n] + np.cumsum(np.bincount(pair_src, minlength=n_src))
    indices = np.concatenate(((nbr[valid] - base).astype(np.int32), pair_node[by_src].astype(np.int32)))
    data = np.concatenate((np.broadcast_to(step_mm, (n, 6))[valid], pair_w[by_src]))
    graph = csr_matrix((data, indices, indptr), shape=(n + n_src, n + n_src))
    dist, _, origin = dijkstra(graph, directed=True, indices=np.arange(n, n + n_src), min_only=True,
                               return_predecessors=True)
    return ids[origin[:n] - n], dist[:n], (src_node, src_pos, src_id)


def _refine_exact(labels, dist, contacts, flat, comp_of, n_comps, shape, spacing):
    """Recompute, as the reference does, the contested components where that is cheap.

    A seed wins voxels only within the component's largest graph distance ``far`` (an
    upper bound of the fast-marching distances) of its contacts. So each seed's scikit-fmm
    field is computed on its contacts' box grown by ``far`` (cut to the component's box),
    with only its contacts (sources) and the component passable, stopped at ``far``
    (``narrow``); arg-min over seeds in id order, as in the reference. Done for components
    with ``far`` <= ``FIELD_MAX_RANGE_MM`` and for those whose boxes add up to at most
    ``FIELD_MAX_WORK_VOX`` voxels; the others keep the graph labels.
    """
    h = np.asarray(spacing, dtype=np.float64)
    far = np.zeros(n_comps + 1)
    np.maximum.at(far, comp_of, dist)
    reach = far + h.max()
    margin = np.ceil(reach[:, None] / h[None, :]).astype(np.int64) + 2  # per component, axis
    # component boxes (grown by one voxel) and each (component, seed) contact box
    coords = np.unravel_index(flat, shape)
    comp_lo, comp_hi = _key_boxes(comp_of, n_comps + 1, coords, shape)
    comp_lo, comp_hi = np.maximum(comp_lo - 1, 0), np.minimum(comp_hi + 2, shape)
    src_node, src_pos, src_id = contacts
    ids, id_of = _small_ids(src_id)
    keys, key_of = _small_ids(comp_of[src_node].astype(np.int64) * ids.size + id_of)  # (component, seed)
    key_comp = keys // ids.size
    scoords = np.unravel_index(src_pos, shape)
    sub_lo, sub_hi = _key_boxes(key_of, keys.size, scoords, shape)
    sub_lo = np.maximum(sub_lo - margin[key_comp], comp_lo[key_comp])
    sub_hi = np.minimum(sub_hi + margin[key_comp] + 1, comp_hi[key_comp])
    work = np.bincount(key_comp, weights=np.prod(sub_hi - sub_lo, axis=1), minlength=n_comps + 1)
    exact = (far <= FIELD_MAX_RANGE_MM) | ((work <= FIELD_MAX_WORK_VOX) & _CONTACT_BOXES)
    # the other route: each seed's field on its Dijkstra cell and a band (box of the cell)
    cell_work = _cell_work(labels, comp_of, coords, ids, n_comps, shape)
    by_cells = ~exact & (cell_work[: n_comps + 1] <= FIELD_MAX_WORK_VOX)
    present = np.bincount(comp_of, minlength=n_comps + 1) > 0
    present &= exact | by_cells
    present[0] = False
    if not present.any():
        return
    # voxels and contacts of every contested component, grouped by component (and seed)
    pick = np.flatnonzero(present[comp_of])
    pick = pick[np.argsort(comp_of[pick], kind="stable")]
    comps, vox_start = np.unique(comp_of[pick], return_index=True)
    vox_stop = np.append(vox_start[1:], pick.size)
    cpick = np.argsort(key_of, kind="stable")
    ckey = key_of[cpick]
    for c, v0, v1 in zip(comps, vox_start, vox_stop):
        vox = pick[v0:v1]
        vc = np.stack([x[vox] for x in coords], axis=1)
        best = np.full(vox.size, np.inf, dtype=np.float32)
        graph = labels[vox]
        owner = graph.copy()
        for k in np.flatnonzero(key_comp == c):  # this component's seeds, in id order
            sid = ids[keys[k] % ids.size]
            con = cpick[np.searchsorted(ckey, k) : np.searchsorted(ckey, k, side="right")]
            source = [x[con] for x in scoords]
            if exact[c]:
                lo, hi = sub_lo[k], sub_hi[k]
                inside = np.flatnonzero(np.all((vc >= lo) & (vc < hi), axis=1))
                narrow = float(reach[c])
            else:
                inside, lo, hi, narrow = _cell_domain(graph == sid, vc, dist[vox], source, comp_lo[c],
                                                      comp_hi[c], h)
            at = tuple((vc[inside] - lo).T)
            val = _fmm_at(tuple(x - l for x, l in zip(source, lo)), at, tuple(int(x) for x in hi - lo),
                          spacing, narrow)
            closer = val < best[inside]
            best[inside[closer]] = val[closer]
            owner[inside[closer]] = sid
        labels[vox] = owner



def _key_boxes(key: np.ndarray, n_keys: int, coords, shape) -> tuple[np.ndarray, np.ndarray]:
    """Per key 0..n_keys-1: lowest and highest index (n_keys, 3) of the voxels at ``coords``
    (one array per axis) that carry it; ``shape`` and -1 for a key without voxels."""
    lo = np.empty((n_keys, 3), dtype=np.int64)
    hi = np.empty((n_keys, 3), dtype=np.int64)
    for axis in range(3):
        lo[:, axis] = shape[axis]
        hi[:, axis] = -1
        np.minimum.at(lo[:, axis], key, coords[axis])
        np.maximum.at(hi[:, axis], key, coords[axis])
    return lo, hi


def _cell_work(labels, comp_of, coords, ids, n_comps, shape) -> np.ndarray:
    """Per component: voxels of the boxes around its seeds' Dijkstra cells, each grown by the
    band (what the cell route would compute)."""
    id_index = np.zeros(int(ids.max(initial=0)) + 1, dtype=np.int64)
    id_index[ids] = np.arange(ids.size)
    cell_key = comp_of.astype(np.int64) * ids.size + id_index[labels]
    n_cells = cell_key.max(initial=0) + 1
    lo, hi = _key_boxes(cell_key, n_cells, coords, shape)
    cell_ext = np.ones(n_cells)
    for axis in range(3):
        extent = hi[:, axis] - lo[:, axis] + 1 + 2 * (CELL_BAND_VOX + 2)
        cell_ext *= np.clip(extent, 0, shape[axis])  # 0 if absent
    return np.bincount(np.arange(n_cells) // ids.size, weights=cell_ext, minlength=n_comps + 1)

_CONTACT_BOXES = True  # tests switch the contact-box route off to exercise the cell route
CELL_BAND_VOX = 3
"""Band (voxels) around a seed's Dijkstra cell inside which its fast-marching field is
computed on a component too large for whole per-seed boxes."""


def _cell_domain(cell, vc, dist, source, comp_lo, comp_hi, h):
    """Where one seed's field is needed in a large component: its Dijkstra cell and a band.

    ``cell`` marks the component's voxels (coordinates ``vc``) that the Dijkstra gave to
    the seed, ``source`` its contact voxels. The fast-marching wall lies within
    ``CELL_BAND_VOX`` of the Dijkstra wall, and a seed's shortest paths stay inside its own
    cell, so the field on the cell grown by that band (6-neighbour dilation, cut to the
    component) is the reference's wherever the seed can win. Returns the indices into
    ``vc`` of that domain, the box (lo, hi) and the march's stop distance (mm).
    """
    w = CELL_BAND_VOX
    pts = np.concatenate((vc[cell], np.stack(source, axis=1)))
    lo = np.maximum(pts.min(axis=0) - w - 2, comp_lo)
    hi = np.minimum(pts.max(axis=0) + w + 3, comp_hi)
    size = tuple(int(x) for x in hi - lo)
    inbox = np.flatnonzero(np.all((vc >= lo) & (vc < hi), axis=1))
    grown = np.zeros(size, dtype=bool)
    grown[tuple((pts - lo).T)] = True
    grown = ndi.binary_dilation(grown, iterations=w)
    inside = inbox[grown[tuple((vc[inbox] - lo).T)]]
    narrow = float(dist[inside].max(initial=0.0)) + float(h.max())
    return inside, lo, hi, narrow


def _small_ids(values: np.ndarray, dense_max: int = 50_000_000):
    """``np.unique(values, return_inverse=True)`` for non-negative ints, by counting.

    The inverse is int16 when it fits (so that a stable sort of it is a radix sort).
    Falls back to sorting when the values span more than ``dense_max``.
    """
    top = int(values.max(initial=0)) + 1
    if top > dense_max:
        uniq, inverse = np.unique(values, return_inverse=True)
    else:
        present = np.bincount(values, minlength=top) > 0
        uniq = np.flatnonzero(present)
        rank = np.cumsum(present) - 1
        inverse = rank[values]
    dtype = np.int16 if uniq.size < 2**15 else np.int64
    return uniq.astype(values.dtype, copy=False), inverse.astype(dtype, copy=False)


def _fmm_at(source, at, size, spacing, narrow: float) -> np.ndarray:
    """scikit-fmm distance (mm, float32) at voxels ``at`` of a ``size`` box, from ``source``.

    Only ``source`` and ``at`` (tuples of index arrays) are passable; the march stops at
    ``narrow`` mm, beyond which (and where unreachable) the distance is inf.
    """
    phi = np.ones(size)
    phi[source] = -1.0
    blocked = np.ones(size, dtype=bool)
    blocked[source] = False
    blocked[at] = False
    dist = skfmm.distance(np.ma.MaskedArray(phi, blocked), dx=list(spacing), narrow=narrow)
    val = np.asarray(np.ma.getdata(dist)[at], dtype=np.float32)
    val[np.ma.getmaskarray(dist)[at]] = np.inf
    return val
