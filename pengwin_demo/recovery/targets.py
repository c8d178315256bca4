"""Fragment labels -> ABBC training targets (0 background, 1 boundary, 2 core, 3 border).

The network does not learn fragment ids, which mean nothing from one patient to the next;
it learns four geometric classes that mean the same in every patient (the MIC-DKFZ
PENGWIN 2024 winners' idea, as described in the seed article):

* **core**: the medial, deep part of a fragment. Per fragment, on its cropped box, the
  Euclidean distance to the fragment surface (mm, anisotropic) is smoothed with a
  Gaussian of ``sigma_vox`` voxels; core is where the negative Laplacian of that field
  exceeds ``laplacian_threshold`` (a ridge of the distance field) or the distance exceeds
  ``core_mm``.
* **boundary**: the rest of the fragment (a shell along its surface).
* **border**: the *fracture zone*: the voxels of a fragment that lie within the border
  width of a **different fragment of the same bone**. (The article makes only the
  boundary shell there border and demotes core there to boundary; that reading is
  ``border_shell_only=True``.)

Instance recovery (:mod:`.instances`) turns the classes back into fragments:
core components are seeds, they grow through boundary and core, border is a wall.

What is not in the article, and why (see ``docs/abbc.md`` for the measurements):

* The border width is **per pair of fragments** and scales with the thinner of the two:
  ``w = min(border_mm, border_radius_fraction * min(R_a, R_b))`` where ``R`` is the
  fragment's largest inscribed radius (its maximum distance to its own surface, mm). A
  fixed 6 mm zone swallows small and thin fragments whole. The same width on both sides
  of a fracture keeps the wall centred on it, so growth meets on the true fracture surface.
* The zone never takes more than half the local thickness: a voxel is in it only if it
  is at least as close to the other fragment as to the background. A flange two voxels
  thick lying on its neighbour keeps its outer half open, so recovery reaches it from
  its own fragment.
* Every voxel 26-adjacent to another fragment of the same bone is border whatever the
  width (the *contact layer*): the open (boundary/core) voxels of two same-bone
  fragments are never 26-adjacent, so the wall cannot leak on any grid.
* **Symmetric walls**: a zone voxel stays border only where the zone facing it is as thick
  (its neighbour's open bone at least twice as far as the neighbour itself). Recovery
  splits a wall between the open bone on its two sides, so a wall thicker on one side
  (facing a thin plate kept half open, say) would be split off the fracture.
* A fragment's boundary/core stays in one piece: zone voxels that alone join two parts of
  it get back the class they had before the zone (a path through the contact layer where nothing else
  joins them; the neighbour's contact layer stays the wall), and a core component sharing
  its open piece with a core five times its size is demoted (one seed grows through it).
* Every fragment keeps a core: when the fracture zone (or thinness) leaves it less than
  ``min_core_vox`` core voxels, its deepest voxels (one 26-connected piece) become core.
* A fragment keeps **one** core component where possible: splinters of core that the zone
  cuts off (under ``extra_core_min_vox``) are demoted, so they cannot become extra seeds;
  a large second core stays (it is deep bone; recovery merges two seeds that meet without
  border between them).
* Cores of different fragments never touch (26-connectivity): the larger fragment gives
  way, and moves its core out of reach if too little is left. Only two touching specks
  that each have a single voxel keep touching cores (logged).
* Components of a fragment under ``stray_vox`` voxels (other than its largest) are label
  noise: they get no core and do not stretch the crop box.

Arrays are indexed (z, y, x); ``spacing_zyx_mm`` is in the same order, in mm. Everything
runs on the bone's bounding box and then per fragment on its own box plus a margin; the
only whole-box float array is the float32 distance map.
"""

from __future__ import annotations

import logging
import math

import cc3d
import edt
import numpy as np
from scipy import ndimage

from ..labels import ABBC_BORDER, ABBC_BOUNDARY, ABBC_CORE, MAX_LABEL, bone_of_labels
from ..volume import check_label_array, check_spacing_zyx_mm

log = logging.getLogger(__name__)

# -- defaults (every one is a keyword of abbc_targets; docs/abbc.md gives the measurements)
BORDER_MM = 2.0
"""Largest fracture-zone width (mm). The article's 6 mm drowns small fragments in border
(real sacrum, plain seeded growth: oracle fragment IoU 0.555 with the article read
literally, 0.994 with the defaults); the winners' code used a 3-voxel shell (about 2.4 mm
at 0.8 mm spacing). 2 mm keeps a wall of 2-3 voxels a side at typical CT spacing. 1.5 mm
scores a little higher in the oracle (real sacrum: 0.9923 against 0.9918) but a thinner
wall is bridged by prediction errors (real sacrum, 50 spurious core specks: 0.708 against
0.991); see docs/abbc.md."""

BORDER_RADIUS_FRACTION = 0.5
"""The fracture-zone width is at most this fraction of the thinner fragment's largest
inscribed radius, so that no fragment is turned into border through its whole thickness."""

CORE_MM = 6.0
"""Voxels deeper than this (mm from the fragment surface) are core whatever the Laplacian."""

LAPLACIAN_THRESHOLD = 0.11
"""Core where -Laplacian of the smoothed distance field exceeds this (mm per voxel^2 of the
finest axis; the article's value at its near-isotropic training spacing)."""

SIGMA_VOX = 2.0
"""Gaussian sigma, in voxels of the finest axis (isotropic in mm)."""

MIN_CORE_VOX = 50
"""A fragment with fewer core voxels gets its deepest connected part as core, up to this
size (instance recovery drops seeds under 50 voxels)."""

MAX_CORE_FRACTION = 0.5
"""The guaranteed core never takes more than this fraction of a fragment (at least 1 voxel)."""

STRAY_VOX = 100
"""Components of a fragment smaller than this, other than its largest, get no core."""


def abbc_targets(
    labels: np.ndarray,
    spacing_zyx_mm,
    *,
    border_mm: float = BORDER_MM,
    border_radius_fraction: float | None = BORDER_RADIUS_FRACTION,
    core_mm: float = CORE_MM,
    laplacian_threshold: float = LAPLACIAN_THRESHOLD,
    sigma_vox: float = SIGMA_VOX,
    min_core_vox: int = MIN_CORE_VOX,
    max_core_fraction: float = MAX_CORE_FRACTION,
    stray_vox: int = STRAY_VOX,
    extra_core_min_vox: int | None = MIN_CORE_VOX,
    border_shell_only: bool = False,
    zone_half_thickness: bool = True,
    symmetric_walls: bool = True,
    parallel: int = 2,
) -> np.ndarray:
    """Compute the ABBC map of a PENGWIN fragment label map.

    Parameters
    ----------
    labels : ndarray of int, shape (Z, Y, X)
        PENGWIN fragment labels: 0 background, 1-10 sacrum, 11-20 left hip, 21-30 right
        hip. Any integer dtype; values outside 0-30 are an error.
    spacing_zyx_mm : sequence of 3 float
        Voxel size along (z, y, x), mm.
    border_mm : float
        Largest fracture-zone width, mm (see :data:`BORDER_MM`).
    border_radius_fraction : float or None
        The zone between fragments a and b is at most this fraction of the smaller of
        their largest inscribed radii (mm). None: a fixed ``border_mm`` (the article).
    core_mm : float
        Voxels deeper than this (mm) are core.
    laplacian_threshold : float
        Core where -Laplacian of the smoothed distance exceeds this (mm / voxel^2 of the
        finest axis).
    sigma_vox : float
        Gaussian sigma in voxels of the finest axis; isotropic in mm.
    min_core_vox : int
        Guaranteed core size per fragment (capped by ``max_core_fraction``).
    max_core_fraction : float
        The guaranteed core never exceeds this fraction of the fragment (at least 1 voxel).
    stray_vox : int
        Fragment components under this size (not the largest) get no core.
    extra_core_min_vox : int or None
        Core components of a fragment other than its largest are demoted to boundary when
        smaller than this (splinters the fracture zone cut off, which would only be noise
        or extra seeds); larger ones stay core, because demoting deep bone would teach the
        network contradictory targets (recovery merges seeds that meet without border).
        None keeps every component (the article).
    border_shell_only : bool
        False (default): the whole fracture zone is border, the same width on both sides
        of the fracture. True (the article): only the boundary shell in the zone becomes
        border and core there is demoted to boundary (the wall is then as thick as the
        shell, which differs from one side to the other).
    zone_half_thickness : bool
        A voxel is in the fracture zone only if it is at least as close to the other
        fragment as to the background, so the zone never takes more than half of a thin
        flange lying on its neighbour (the contact layer still does). Without it, such a
        flange is all border and recovery gives it to the neighbour.
    parallel : int
        Threads for the distance transforms.

    Returns
    -------
    ndarray of uint8, shape (Z, Y, X)
        0 background, 1 boundary, 2 core, 3 border (see :mod:`pengwin_demo.labels`).
        Background stays background; every fragment voxel gets 1, 2 or 3.

    Raises
    ------
    ValueError
        ``labels`` not 3D or outside 0-30, a bad spacing or option.
    TypeError
        ``labels`` does not hold integers.
    """
    labels = _check_labels(labels)
    spacing = np.array(check_spacing_zyx_mm(spacing_zyx_mm))
    if border_mm < 0 or core_mm <= 0 or sigma_vox < 0 or min_core_vox < 1:
        raise ValueError(
            "border_mm >= 0, core_mm > 0, sigma_vox >= 0 and min_core_vox >= 1 are required, got "
            f"{border_mm}, {core_mm}, {sigma_vox}, {min_core_vox}"
        )
    result = np.zeros(labels.shape, dtype=np.uint8)
    bone_box = _bbox(labels > 0, margin=1)  # everything below runs on the bone's box
    if bone_box is None:
        return result
    clock = _Clock()
    labels = np.ascontiguousarray(labels[bone_box])
    out = result[bone_box]
    present = [int(v) for v in np.flatnonzero(np.bincount(labels.ravel(), minlength=MAX_LABEL + 1)[1:]) + 1]
    clock.lap("crop")

    dist, depth = _distances(labels, spacing, zone_half_thickness, parallel)
    clock.lap("distance")

    boxes, strays, comps = _fragment_boxes(labels, present, stray_vox)
    radius_mm = {lab: float(dist[box][labels[box] == lab].max()) for lab, box in boxes.items()}
    clock.lap("boxes")

    s_ref = float(spacing.min())
    sigma_axes = sigma_vox * s_ref / spacing  # voxels per axis, isotropic in mm
    lap_weights = (s_ref / spacing) ** 2  # second differences in units of the finest axis

    widths = _pair_widths(present, radius_mm, border_mm, border_radius_fraction)
    max_width = max([w for w in widths.values()] + [float(spacing.max())])
    smooth_margin = np.ceil(4.0 * sigma_axes).astype(int) + 1
    zone_margin = np.ceil(max_width / spacing).astype(int) + 1
    margin = np.maximum(smooth_margin, zone_margin)

    zone_args = (boxes, widths, spacing, parallel, border_shell_only, depth)
    core_args = (sigma_axes, lap_weights, laplacian_threshold, core_mm)
    finish_args = (min_core_vox, max_core_fraction, stray_vox, extra_core_min_vox)
    for lab in present:
        box = _grow_box(boxes[lab], margin, labels.shape)
        _label_fragment(out, labels, dist, lab, box, core_args, zone_args, finish_args, clock)
    _label_strays(out, labels, comps, strays, zone_margin, zone_args)
    del comps, dist, depth

    if symmetric_walls and not border_shell_only:
        _symmetric_walls(out, labels, present, boxes, widths, spacing, zone_margin, parallel)
        clock.lap("symmetric")
    _separate_cores(out, labels, min_core_vox, max_core_fraction)
    clock.lap("separate")
    log.debug("abbc_targets %s: %s", labels.shape, clock)
    return result


def _distances(labels, spacing, zone_half_thickness: bool, parallel: int):
    """Distance (mm, float32) of every fragment voxel to its own fragment's surface, and to
    the background (None without ``zone_half_thickness``)."""
    # the multi-label EDT treats a change of label as a surface. The volume edge is not a
    # surface (the scan cut the bone there, the bone goes on).
    dist = edt.edt(labels, anisotropy=tuple(spacing), black_border=False, parallel=parallel)
    dist = dist.astype(np.float32, copy=False)
    # distance (mm) to the background, for the half-thickness limit of the fracture zone
    depth = None
    if zone_half_thickness:
        depth = edt.edt(labels > 0, anisotropy=tuple(spacing), black_border=False,
                        parallel=parallel).astype(np.float32, copy=False)
    return dist, depth


def _label_fragment(out, labels, dist, lab, box, core_args, zone_args, finish_args, clock) -> None:
    """In place: the classes of fragment ``lab`` in ``out``, worked out on ``box``: core and
    boundary, then its fracture zone, then the core's clean-up."""
    lab_crop = labels[box]
    frag = lab_crop == lab
    d = np.where(frag, dist[box], np.float32(0))
    classes = _core_boundary(d, frag, *core_args)
    clock.lap("core")
    _apply_fracture_zone(classes, lab, lab_crop, frag, box, *zone_args)
    clock.lap("zone")
    _finish_core(classes, frag, d, *finish_args)
    region = out[box]
    region[frag] = classes[frag]
    clock.lap("finish")


def _label_strays(out, labels, comps, strays, zone_margin, zone_args) -> None:
    """In place: small stray pieces away from their fragment's box are boundary, or border
    near a fracture."""
    for lab, cid, sbox in strays:
        box = _grow_box(sbox, zone_margin, labels.shape)
        lab_crop = labels[box]
        frag = comps[box] == cid
        classes = np.where(frag, np.uint8(ABBC_BOUNDARY), np.uint8(0))
        _apply_fracture_zone(classes, lab, lab_crop, frag, box, *zone_args)
        region = out[box]
        region[frag] = classes[frag]


class _Clock:
    """Accumulated wall time per step (for the debug log)."""

    def __init__(self) -> None:
        import time

        self._now = time.perf_counter
        self._last = self._now()
        self.steps: dict[str, float] = {}

    def lap(self, step: str) -> None:
        now = self._now()
        self.steps[step] = self.steps.get(step, 0.0) + now - self._last
        self._last = now

    def __str__(self) -> str:
        return ", ".join(f"{k} {v:.2f} s" for k, v in self.steps.items())


# -- steps ---------------------------------------------------------------------------------
def _core_boundary(d, frag, sigma_axes, lap_weights, threshold, core_mm) -> np.ndarray:
    """Core / boundary inside ``frag`` from its distance field ``d`` (mm, 0 outside)."""
    smooth = ndimage.gaussian_filter(d, sigma=tuple(sigma_axes), mode="nearest")
    neg_lap = np.zeros_like(smooth)
    tmp = np.empty_like(smooth)
    for axis, weight in enumerate(lap_weights):
        ndimage.correlate1d(smooth, np.array([-1.0, 2.0, -1.0]) * weight, axis, output=tmp,
                            mode="nearest")
        neg_lap += tmp
    core = frag & ((neg_lap > threshold) | (d > core_mm))
    classes = np.zeros(frag.shape, dtype=np.uint8)
    classes[frag] = ABBC_BOUNDARY
    classes[core] = ABBC_CORE
    return classes


def _apply_fracture_zone(classes, lab, lab_crop, frag, box, boxes, widths, spacing, parallel,
                         shell_only, depth) -> None:
    """Fracture zone, in place: all of it -> border; or, with ``shell_only`` (the article),
    boundary there -> border, core there -> boundary, contact layer -> border."""
    zone, contact = _fracture_zone(
        lab, lab_crop, frag, box, boxes, widths, spacing, parallel, depth
    )
    if zone is None:
        return
    whole = _keep_fragment_whole(zone, contact, frag)
    # contact-layer voxels given back hold a fragment together; they touch the neighbour's
    # contact layer (its wall), never its core: no core there
    classes[zone & ~whole & contact & (classes == ABBC_CORE)] = ABBC_BOUNDARY
    zone = whole
    if not shell_only:
        classes[zone] = ABBC_BORDER
        return
    was_core = classes == ABBC_CORE
    classes[zone & (classes == ABBC_BOUNDARY)] = ABBC_BORDER
    classes[zone & was_core] = ABBC_BOUNDARY
    classes[contact] = ABBC_BORDER


BRIDGE_PART_VOX = 50
"""Parts of a fragment at least this large that only its own fracture zone joins are kept
joined (see :func:`_keep_fragment_whole`)."""


def _keep_fragment_whole(zone, contact, frag):
    """Zone without the voxels that hold the fragment together.

    Where a thin part of a fragment passes through the fracture zone (of a neighbour lying
    along it), the zone can cut the fragment's boundary/core into pieces that each get a
    core; recovery would then return one fragment per piece. A 6-connected component of
    the zone (contact layer excluded) that touches two or more pieces of the fragment's
    non-zone part of at least ``BRIDGE_PART_VOX`` voxels gets back its pre-zone class, except
    its contact layer, which stays border (the wall to the neighbour stays). Pieces still
    apart after that (joined only through the contact layer: the fragment is only two or
    three voxels thick there) are joined to the largest piece by the cheapest 6-connected
    path through the zone (:func:`_join_pieces`); the neighbour's own contact layer
    remains the wall there.

    Arrays are boolean on the fragment's crop, (z, y, x).
    """
    zone = _open_zone_bridges(zone, contact, frag)
    return _join_pieces(zone, contact, frag)


def _open_zone_bridges(zone, contact, frag):
    """Zone without its non-contact components that join two big pieces of the rest."""
    rest = frag & ~zone
    parts, n_parts = cc3d.connected_components(rest, connectivity=6, return_N=True)
    if n_parts < 2:
        return zone
    sizes = np.bincount(parts.ravel(), minlength=n_parts + 1)
    big = sizes >= BRIDGE_PART_VOX
    big[0] = False
    if np.count_nonzero(big) < 2:
        return zone
    inner = zone & ~contact
    bridges, n_bridges = cc3d.connected_components(inner, connectivity=6, return_N=True)
    if n_bridges == 0:
        return zone
    parts = parts.astype(np.uint32, copy=False)
    joint = np.where(inner, bridges.astype(np.uint32) + np.uint32(n_parts), parts)
    touched: dict[int, set[int]] = {}
    for a, b in cc3d.contacts(joint, connectivity=6, surface_area=False):
        lo, hi = (int(a), int(b)) if a < b else (int(b), int(a))
        if lo <= n_parts < hi and big[lo]:
            touched.setdefault(hi - n_parts, set()).add(lo)
    joining = [c for c, ps in touched.items() if len(ps) >= 2]
    if not joining:
        return zone
    return zone & ~np.isin(bridges, joining)


CONTACT_PATH_COST = 4.0
"""Cost of a contact-layer voxel on a path joining two pieces of a fragment (1 for other
zone voxels): paths keep to the inner zone where they can, so the wall stays whole."""


def _join_pieces(zone, contact, frag):
    """Zone without the cheapest paths that join every big piece of the rest to the largest.

    Pieces of ``frag & ~zone`` (6-connected, at least ``BRIDGE_PART_VOX`` voxels) other
    than the largest are joined to it by a 6-connected path of zone voxels (Dijkstra over
    the zone, a contact-layer voxel costing ``CONTACT_PATH_COST``, any other 1); pieces the
    zone does not reach stay apart (the fragment itself is in pieces there).
    """
    rest = frag & ~zone
    parts, n_parts = cc3d.connected_components(rest, connectivity=6, return_N=True)
    if n_parts < 2:
        return zone
    sizes = np.bincount(parts.ravel(), minlength=n_parts + 1)
    sizes[0] = 0
    big = np.flatnonzero(sizes >= BRIDGE_PART_VOX)
    if big.size < 2:
        return zone
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    main = int(big[np.argmax(sizes[big])])
    z_idx, r, c, touch_node, touch_part = _zone_adjacency(zone, parts)
    src_nodes = np.unique(touch_node[touch_part == main])
    if src_nodes.size == 0:
        return zone
    m = z_idx.size
    cost = np.where(contact.ravel()[z_idx], CONTACT_PATH_COST, 1.0)
    w = 0.5 * (cost[r] + cost[c])
    source = m  # a virtual node next to the main piece
    r = np.concatenate([r, np.full(src_nodes.size, source)])
    c = np.concatenate([c, src_nodes])
    w = np.concatenate([w, 0.5 * cost[src_nodes]])
    graph = coo_matrix((w, (r, c)), shape=(m + 1, m + 1)).tocsr()
    dist, pred = dijkstra(graph, directed=False, indices=source, return_predecessors=True)
    keep = zone.copy()
    flat_keep = keep.ravel()
    for part in big:
        if part == main:
            continue
        cand = touch_node[touch_part == part]
        cand = cand[np.isfinite(dist[cand])]
        if cand.size == 0:
            continue
        node = int(cand[np.argmin(dist[cand])])
        while node != source and node >= 0:
            flat_keep[z_idx[node]] = False
            node = int(pred[node])
    return keep


def _zone_adjacency(zone, parts):
    """The zone as a graph: its voxels' flat indices (node i is ``z_idx[i]``), the
    6-neighbour node pairs (rows, columns), and every (node, piece) where a zone voxel lies
    beside a piece of ``parts`` (labels > 0)."""
    index = np.full(zone.shape, -1, dtype=np.int64)
    z_idx = np.flatnonzero(zone)
    index.ravel()[z_idx] = np.arange(z_idx.size)
    rows, cols, touch_part, touch_node = [], [], [], []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        a_i, b_i = index[tuple(lo)], index[tuple(hi)]
        a_p, b_p = parts[tuple(lo)], parts[tuple(hi)]
        both = (a_i >= 0) & (b_i >= 0)
        rows.append(a_i[both])
        cols.append(b_i[both])
        for node, part in ((a_i, b_p), (b_i, a_p)):  # zone voxel beside a piece
            sel = (node >= 0) & (part > 0)
            touch_node.append(node[sel])
            touch_part.append(part[sel].astype(np.int64))
    return (z_idx, np.concatenate(rows), np.concatenate(cols), np.concatenate(touch_node),
            np.concatenate(touch_part))


def _fracture_zone(lab, lab_crop, frag, box, boxes, widths, spacing, parallel, depth=None):
    """Voxels of ``frag`` within the pair width of another fragment of the same bone.

    Neighbours that share a width are handled by one distance transform, on the part of
    the crop that can lie within that width of them.

    Returns (zone, contact) boolean arrays on the crop, or (None, None) when no other
    fragment of the bone is near. ``contact`` holds the voxels 26-adjacent to another
    fragment of the bone (always in the zone, whatever the width).
    """
    groups: dict[float, list] = {}
    for other, width, sub in _near_neighbours(lab, box, boxes, widths, spacing):
        groups.setdefault(width, []).append((other, sub))
    zone = contact = None
    for width, members in groups.items():
        lo = np.min([[s.start for s in sub] for _, sub in members], axis=0)
        hi = np.max([[s.stop for s in sub] for _, sub in members], axis=0)
        sub = tuple(slice(int(a) - b.start, int(c) - b.start) for a, c, b in zip(lo, hi, box))
        frag_sub = frag[sub]
        if not frag_sub.any():
            continue
        others = [o for o, _ in members]
        other_mask = np.isin(lab_crop[sub], others)
        if not other_mask.any():
            continue
        d_other = edt.edt(
            ~other_mask, anisotropy=tuple(spacing), black_border=False, parallel=parallel
        )
        touch = frag_sub & (
            ndimage.maximum_filter(other_mask.view(np.uint8), size=3, mode="constant") > 0
        )
        near = frag_sub & (d_other <= width)
        if depth is not None:  # never more than half the local thickness
            whole = tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, sub))
            near &= d_other <= depth[whole]
        near |= touch
        if not near.any():
            continue
        if zone is None:
            zone = np.zeros(frag.shape, dtype=bool)
            contact = np.zeros(frag.shape, dtype=bool)
        zone[sub] |= near
        contact[sub] |= touch
    return zone, contact


WALL_TOLERANCE_VOX = 0.7
"""Slack (voxels of the finest axis) of the symmetric-wall test: a zone voxel stays border
when twice its distance to the neighbour is at most the neighbour's open bone's distance
plus this (see :func:`_symmetric_walls`)."""


def _symmetric_walls(out, labels, present, boxes, widths, spacing, margin, parallel) -> None:
    """Thin each fracture zone to the thickness of the zone facing it, in place.

    Recovery splits a wall between the open (boundary/core) bone on its two sides, so the
    wall is split on the fracture only when it is as thick on one side as on the other. The
    zone of a fragment facing a thin one (a flange kept half open, a thin part of a
    fragment) is thinned to match: a zone voxel of A at distance ``d`` from neighbour B
    stays border only if B's open bone is at least ``2 d`` away (then B's zone there is at
    least ``d`` thick). The contact layer always stays border, so the wall never opens.
    Arrays are the bone box's (z, y, x); ``out`` holds the classes of every fragment.
    """
    tol = WALL_TOLERANCE_VOX * float(np.min(spacing))
    before = out.copy()  # every fragment is tested against the walls as they were
    for lab in present:
        box = _grow_box(boxes[lab], margin, labels.shape)
        lab_crop = labels[box]
        region = before[box]
        frag = lab_crop == lab
        cand = frag & (region == ABBC_BORDER)
        if not cand.any():
            continue
        bone = bone_of_labels(lab)
        same = (lab_crop > 0) & (bone_of_labels(lab_crop) == bone) & ~frag
        contact = frag & (ndimage.maximum_filter(same.view(np.uint8), size=3, mode="constant") > 0)
        cand &= ~contact
        if not cand.any():
            continue
        justified = np.zeros(frag.shape, dtype=bool)
        nearest = np.full(frag.shape, np.inf, dtype=np.float32)  # distance to the nearest neighbour
        for other, width, sub in _near_neighbours(lab, box, boxes, widths, spacing):
            sub = tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(sub, box))
            cand_sub = cand[sub]
            if not cand_sub.any():
                continue
            other_mask = lab_crop[sub] == other
            if not other_mask.any():
                continue
            d_other = edt.edt(~other_mask, anisotropy=tuple(spacing), black_border=False,
                              parallel=parallel)
            near = cand_sub & (d_other <= width + 1e-3)
            if not near.any():
                continue
            ok = near
            open_other = other_mask & (region[sub] != ABBC_BORDER)
            if open_other.any():
                d_open = edt.edt(~open_other, anisotropy=tuple(spacing), black_border=False,
                                 parallel=parallel)
                ok = near & (2.0 * d_other <= d_open + tol)
            # the wall a voxel belongs to is the one to its nearest neighbour
            nearer = near & (d_other < nearest[sub])
            nearest[sub] = np.where(nearer, d_other, nearest[sub])
            js = justified[sub]
            js[nearer] = ok[nearer]
            tie = near & ~nearer & (d_other == nearest[sub])
            js[tie] |= ok[tie]
        release = cand & ~justified
        if release.any():
            out[box][release] = ABBC_BOUNDARY


def _near_neighbours(lab, box, boxes, widths, spacing):
    """Yield (other, width_mm, sub) for each other fragment of ``lab``'s bone whose box, grown
    by its zone width (+1 voxel), meets ``box``; ``sub`` is that overlap (volume slices)."""
    bone = bone_of_labels(lab)
    for other, obox in boxes.items():
        if other == lab or bone_of_labels(other) != bone:
            continue
        width = widths[(min(lab, other), max(lab, other))]
        reach = np.ceil(width / spacing).astype(int) + 1
        sub = _intersect(_grow_box(obox, reach, None), box)
        if sub is not None:
            yield other, width, sub


def _intersect(a, b):
    """Intersection of two boxes (slices in the same index space), or None."""
    out = []
    for sa, sb in zip(a, b):
        lo, hi = max(sa.start, sb.start), min(sa.stop, sb.stop)
        if hi <= lo:
            return None
        out.append(slice(lo, hi))
    return tuple(out)


def _finish_core(classes, frag, d, min_core_vox, max_core_fraction, stray_vox,
                 extra_core_min_vox) -> None:
    """Clean up and guarantee the core of one fragment, in place.

    Strays get no core; core components other than the largest are demoted when smaller
    than ``extra_core_min_vox`` (None: keep all); a fragment left with fewer than
    ``min_core_vox`` core voxels (capped by ``max_core_fraction``) gets its deepest
    connected part as its only core.
    """
    comps, n = cc3d.connected_components(frag, connectivity=26, return_N=True)
    if n > 1:  # strays: no core
        sizes = np.bincount(comps.ravel(), minlength=n + 1)
        sizes[0] = 0
        main = int(np.argmax(sizes))
        stray_ids = np.flatnonzero((sizes < stray_vox) & (sizes > 0))
        stray_ids = stray_ids[stray_ids != main]
        if stray_ids.size:
            classes[np.isin(comps, stray_ids) & (classes == ABBC_CORE)] = ABBC_BOUNDARY

    core = classes == ABBC_CORE
    if extra_core_min_vox is not None and core.any():
        cc, m = cc3d.connected_components(core, connectivity=26, return_N=True)
        if m > 1:
            csizes = np.bincount(cc.ravel())
            csizes[0] = 0
            keep = csizes >= extra_core_min_vox
            keep[int(np.argmax(csizes))] = True
            keep[0] = False
            keep &= ~_minor_cores_in_shared_piece(classes, frag, cc, csizes)
            classes[core & ~keep[cc]] = ABBC_BOUNDARY
            core = classes == ABBC_CORE

    n_frag = int(frag.sum())
    target = max(1, min(min_core_vox, int(math.floor(max_core_fraction * n_frag))))
    if int(np.count_nonzero(core)) >= target:
        return
    classes[core] = ABBC_BOUNDARY
    classes[_deepest_region(d, frag, target)] = ABBC_CORE


SHARED_CORE_FRACTION = 0.2
"""A core component is demoted when a core at least 1 / this fraction its size (5 times)
lies in the same 6-connected boundary/core piece of the fragment (see :func:`_finish_core`).
0.1 left a fragment of full-size phantom seed 0 (5 per bone) with two cores of 52 000 and
9 700 voxels that recovery kept apart; 0.2 changed no other case measured."""


def _minor_cores_in_shared_piece(classes, frag, cc, csizes) -> np.ndarray:
    """Core components (ids of ``cc``) that share a 6-connected boundary/core piece of the
    fragment with a core more than five times larger (``SHARED_CORE_FRACTION``).

    Growth from the large core reaches everything in that piece through boundary, so the
    small one adds nothing but a second seed whose region, mostly fracture zone, recovery
    could keep as a fragment of its own (a thin part of a fragment next to a fracture).
    Large second cores (deep bone) stay.
    """
    minor = np.zeros(csizes.shape, dtype=bool)
    pieces = cc3d.connected_components(frag & (classes != ABBC_BORDER), connectivity=6)
    has = cc > 0
    pairs = np.unique(np.stack([cc[has], pieces[has]]).astype(np.int64), axis=1)
    for piece in np.unique(pairs[1]):
        ids = pairs[0][pairs[1] == piece]
        if ids.size < 2:
            continue
        largest = csizes[ids].max()
        minor[ids[csizes[ids] < SHARED_CORE_FRACTION * largest]] = True
    return minor


def _deepest_region(d, frag, target) -> np.ndarray:
    """``target`` voxels of ``frag`` around its deepest voxel, 26-connected.

    Grown breadth-first (26-neighbourhood, inside ``frag``) from the deepest voxel; the
    last ring is filled deepest first, so the region has exactly ``target`` voxels (or
    the whole component when it is smaller).
    """
    seed = np.unravel_index(int(np.argmax(np.where(frag, d, -1))), d.shape)
    region = np.zeros(d.shape, dtype=bool)
    region[seed] = True
    ball = np.ones((3, 3, 3), dtype=bool)
    count = 1
    while count < target:
        grown = ndimage.binary_dilation(region, structure=ball, mask=frag)
        ring = grown & ~region
        n_ring = int(np.count_nonzero(ring))
        if n_ring == 0:
            break
        if count + n_ring > target:
            idx = np.flatnonzero(ring)
            order = np.argsort(-d.ravel()[idx], kind="stable")
            region.ravel()[idx[order[: target - count]]] = True
            break
        region = grown
        count += n_ring
    return region


def _core_clash(out: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(clash, core_lab): core voxels with a core neighbour (26) of another fragment, and
    the core voxels' fragment labels (0 elsewhere)."""
    core_lab = np.where(out == ABBC_CORE, labels, 0).astype(np.uint8)
    hi = ndimage.maximum_filter(core_lab, size=3, mode="constant", cval=0)
    lo = ndimage.minimum_filter(np.where(core_lab > 0, core_lab, 255).astype(np.uint8), size=3,
                                mode="constant", cval=255)
    clash = (core_lab > 0) & ((hi != core_lab) | (lo != core_lab))
    return clash, core_lab


def _separate_cores(out, labels, min_core_vox, max_core_fraction) -> None:
    """Demote core voxels that touch (26) the core of another fragment, in place.

    The larger fragment of a clash gives way. A fragment that would lose its whole core
    moves it to voxels of its own away from every other core (as many as its guaranteed
    core); only when it has none does the clash stay (logged).
    """
    box = _bbox(out == ABBC_CORE, margin=1)
    if box is None:
        return
    clash, core_lab = _core_clash(out[box], labels[box])
    if not clash.any():
        return
    region, lab_box = out, labels  # rare: work on the whole (bone-box) arrays
    sizes = np.bincount(lab_box.ravel(), minlength=MAX_LABEL + 1)
    involved = sorted({int(v) for v in np.unique(core_lab[clash])}, key=lambda v: (-sizes[v], -v))
    for lab in involved[:-1]:  # every fragment but the smallest gives way
        clash, core_lab = _core_clash(region, lab_box)
        mine = clash & (core_lab == lab)
        if not mine.any():
            continue
        region[mine] = ABBC_BOUNDARY
        frag = lab_box == lab
        target = max(1, min(min_core_vox, int(math.floor(max_core_fraction * sizes[lab]))))
        if np.count_nonzero(region[frag] == ABBC_CORE) >= target:
            continue
        # too little core left: rebuild it where no other core is near
        others = ndimage.maximum_filter(
            ((region == ABBC_CORE) & (lab_box != lab)).view(np.uint8), size=3, mode="constant"
        ) > 0
        allowed = frag & ~others
        if not allowed.any():
            if not np.any(region[frag] == ABBC_CORE):
                region[mine] = ABBC_CORE  # nowhere else: keep it (two touching specks)
            continue
        cc = cc3d.connected_components(allowed, connectivity=26)
        counts = np.bincount(cc.ravel())
        counts[0] = 0
        piece = cc == int(np.argmax(counts))
        region[frag & (region == ABBC_CORE)] = ABBC_BOUNDARY
        region[_deepest_region(np.ones(piece.shape, np.float32), piece, target)] = ABBC_CORE
    clash, _ = _core_clash(region, lab_box)
    if clash.any():
        log.warning(
            "%d core voxels touch the core of another fragment (fragments too small to keep "
            "apart)", int(clash.sum())
        )


# -- helpers -------------------------------------------------------------------------------
def _pair_widths(present, radius_mm, border_mm, fraction) -> dict:
    widths = {}
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            if bone_of_labels(a) != bone_of_labels(b):
                continue
            w = float(border_mm)
            if fraction is not None:
                w = min(w, fraction * min(radius_mm[a], radius_mm[b]))
            widths[(a, b)] = w
    return widths


def _fragment_boxes(labels: np.ndarray, present: list[int], stray_vox: int):
    """Crop box (z, y, x slices) of each fragment, not stretched by its small strays.

    Returns ``(boxes, strays, comps)``: ``boxes[label]`` covers the fragment's components of
    at least ``stray_vox`` voxels (or its largest); ``strays`` lists ``(label, component id,
    box)`` for the small components outside that box; ``comps`` is the 26-connected
    component map of ``labels`` (each component holds one label).
    """
    comps = cc3d.connected_components(labels, connectivity=26)
    stats = cc3d.statistics(comps)
    counts = stats["voxel_counts"]
    bbs = stats["bounding_boxes"]
    comp_label = np.zeros(len(counts), dtype=np.int64)
    for cid in range(1, len(counts)):
        if counts[cid] == 0:
            continue
        b = bbs[cid]
        corner = labels[b][comps[b] == cid]
        comp_label[cid] = int(corner[0])
    boxes, strays = {}, []
    for lab in present:
        ids = np.flatnonzero(comp_label == lab)
        big = ids[counts[ids] >= stray_vox]
        if big.size == 0:
            big = ids[[int(np.argmax(counts[ids]))]]
        lo = np.min([[s.start for s in bbs[c]] for c in big], axis=0)
        hi = np.max([[s.stop for s in bbs[c]] for c in big], axis=0)
        boxes[lab] = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        for c in ids:
            if c not in big and not _inside(bbs[c], boxes[lab]):
                strays.append((lab, int(c), bbs[c]))
    return boxes, strays, comps


def _inside(inner, outer) -> bool:
    return all(o.start <= i.start and i.stop <= o.stop for i, o in zip(inner, outer))


def _grow_box(box, margin, shape):
    """``box`` grown by ``margin`` voxels per axis, clipped to ``shape`` (None: not clipped
    above)."""
    shape = shape if shape is not None else (None, None, None)
    return tuple(
        slice(max(s.start - int(m), 0), s.stop + int(m) if n is None else min(s.stop + int(m), n))
        for s, m, n in zip(box, margin, shape)
    )


def _bbox(mask: np.ndarray, margin: int = 0):
    from ..volume import bounding_box

    return bounding_box(mask, margin_vox=margin)


def _check_labels(labels) -> np.ndarray:
    labels = check_label_array("fragment labels", labels, max_label=MAX_LABEL,
                               hint=" (PENGWIN labels); convert the map to PENGWIN labels first")
    return np.ascontiguousarray(labels, dtype=np.uint8)
