"""Instance recovery: ABBC prediction + anatomy map -> PENGWIN fragment labels.

The network predicts four geometric classes (ABBC: 0 background, 1 boundary, 2 core,
3 border = fracture zone). Fragments are recovered from them by classical steps, all on
the bounding box of the bone:

1. **Seeds**: 26-connected components of core; components under ``min_seed_vox`` dropped;
   a component that one 6-erosion splits into pieces gives one seed per piece (siblings,
   which need less evidence to merge again in step 4).
2. **Growth through bone**: every boundary/core voxel goes to the seed whose geodesic wave
   (physical spacing, border and background impassable) reaches it first
   (:func:`.geodesic.grow_labels`). Boundary/core components that no seed
   reaches (a fragment whose core was missed) become instances of their own when they
   have at least ``min_seed_vox`` voxels.
3. **Growth through border**: the remaining bone voxels (border, specks) are assigned the
   same way with border passable. Bone still unreached becomes its own instance.
4. **Seeds not separated by border are one fragment**: two instances whose shared surface
   lies mostly in boundary/core (not border) - a core split in two - are merged. The
   share is ``open / (open + walled)`` over the face contacts between them, compared
   with ``merge_open_fraction``; a border wall with a few gaps keeps two fragments apart.
   Two big instances of one bone whose contact (counted within that bone's anatomy) has
   no border at all merge however narrow it is (two cores joined by a neck).
5. **Anatomy**: each instance takes the bone (sacrum, left hip, right hip) most of its
   voxels have; its voxels in a second bone (a wave that crossed a joint) are split off,
   however few (its voxels the anatomy map leaves unlabelled take the nearest labelled
   voxel's bone first, so the far bone is not dotted with islands of the near one), and
   join a fragment of that bone in step 6 (small pieces the one they
   touch most, larger ones the one they continue into without border: at least
   ``merge_open_fraction`` of their contact open, or ``anatomy_open_fraction`` for a
   piece that lies mostly inside its bone in the anatomy map); an instance
   with no anatomy at all takes the nearest bone's.
6. **Small and surplus fragments**: instances under ``min_fragment_vox`` merge into the
   same-bone instance they continue into without border, else the one they touch most; within a bone, fragments are ranked by size
   (largest = lowest label) and beyond ``max_per_bone`` the smallest are merged into
   their neighbours, with a warning.

Arrays are indexed (z, y, x); ``spacing_zyx_mm`` is in the same order, in mm.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import cc3d
import edt
import numpy as np
from scipy import ndimage

from ..labels import (
    ABBC_BORDER,
    ABBC_BOUNDARY,
    ABBC_CORE,
    BONES,
    MAX_FRAGMENTS_PER_BONE,
    first_label,
)
from ..volume import bounding_box, check_label_array, check_spacing_zyx_mm
from .geodesic import METHODS, grow_labels

log = logging.getLogger(__name__)

OPEN_SECTION = 0.25
"""Two instances continue into each other only over an open contact of at least this
times (smaller instance's voxels)^(2/3) faces (a fraction of its typical cross-section)."""


@dataclass
class RecoveryResult:
    """Outcome of :func:`recover_fragments`.

    Attributes
    ----------
    labels : ndarray of uint8, shape (Z, Y, X)
        PENGWIN map: 0 background, 1-10 sacrum, 11-20 left hip, 21-30 right hip; the
        largest fragment of a bone has its lowest label.
    fragments : list of dict
        One row per label, in label order: ``label``, ``bone`` (name), ``bone_id``
        (1 sacrum, 2 left hip, 3 right hip), ``voxels``, ``volume_mm3``, ``seeds``
        (core components merged into it; 0 when grown from a core-less region).
    warnings : list of str
        Things a user should know (no core, fragments merged beyond the limit, bone
        without anatomy...). Also logged.
    """

    labels: np.ndarray
    fragments: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __iter__(self):
        """Unpack as ``labels, fragments = recover_fragments(...)``."""
        yield self.labels
        yield self.fragments


def recover_fragments(
    abbc: np.ndarray,
    anatomy: np.ndarray,
    spacing_zyx_mm,
    *,
    min_seed_vox: int = 50,
    min_fragment_vox: int = 1000,
    merge_open_fraction: float = 0.8,
    sibling_open_fraction: float = 0.2,
    anatomy_open_fraction: float = 0.5,
    max_per_bone: int = MAX_FRAGMENTS_PER_BONE,
    method: str = "fast",
) -> RecoveryResult:
    """Turn an ABBC map and an anatomy map into labelled PENGWIN fragments.

    Parameters
    ----------
    abbc : ndarray of uint8, shape (Z, Y, X)
        0 background, 1 boundary, 2 core, 3 border (fracture zone).
    anatomy : ndarray of uint8, shape (Z, Y, X)
        0 background, 1 sacrum, 2 left hip, 3 right hip; same grid as ``abbc``.
    spacing_zyx_mm : sequence of 3 float
        Voxel size along (z, y, x), mm.
    min_seed_vox : int
        Core components (and seedless boundary components) smaller than this are not seeds.
    min_fragment_vox : int
        Fragments smaller than this merge into the same-bone fragment they touch most.
        (An instance's voxels in a second bone are split off whatever their number.)
    merge_open_fraction : float
        Two instances whose face contacts are at least this share boundary/core on both
        sides (no border between them) are one fragment.
    sibling_open_fraction : float
        The same for two seeds cut from one core component by the erosion (see ``_seeds``).
    anatomy_open_fraction : float
        The same for a piece split off by anatomy (an instance's voxels in a second bone)
        that has more than half of its voxels in that bone of ``anatomy``, and the
        fragment of that bone it touches. Such a piece has no core of its own: another
        bone's wave reached it across a joint. On real intact pelves the ABBC model walls
        parts of the sacral alae off the sacrum with stray fracture zone; a piece the
        anatomy places in the sacrum then rejoins it unless most of the contact is
        walled. A piece mostly outside the anatomy (soft tissue beside the hip that the
        ABBC model took for bone, say) still needs ``merge_open_fraction``.
    max_per_bone : int
        At most this many fragments per bone (PENGWIN: 10).
    method : {"fast", "reference"}
        Geodesic growth implementation (see :mod:`.geodesic`).

    Returns
    -------
    RecoveryResult
        ``labels`` (uint8, same shape), ``fragments`` table, ``warnings``; unpacks as
        ``(labels, fragments)``.

    Raises
    ------
    ValueError
        Shapes differ, not 3D, values outside 0-3, a bad spacing, method or
        ``max_per_bone``.
    TypeError
        A map does not hold integer labels.
    """
    abbc, anatomy, spacing = _validate(abbc, anatomy, spacing_zyx_mm, method, max_per_bone)
    warnings: list[str] = []
    labels = np.zeros(abbc.shape, dtype=np.uint8)

    box = bounding_box(abbc > 0, margin_vox=1)
    if box is None:
        _warn(warnings, "the ABBC map has no bone voxels: no fragments")
        return RecoveryResult(labels, [], warnings)
    abbc_box = abbc[box]
    anatomy_box = anatomy[box]

    # 1. seeds
    seeds, n_seeds, core_of_seed = _seeds(abbc_box == ABBC_CORE, min_seed_vox)
    if n_seeds == 0:
        _warn(
            warnings,
            f"no core component of at least {min_seed_vox} voxels in the ABBC map: no "
            "fragments can be seeded (is this an ABBC prediction? class 2 is core)",
        )
        return RecoveryResult(labels, [], warnings)

    # 2.-3. growth through boundary/core, then through border
    inst, n_inst = _grow_instances(abbc_box, seeds, n_seeds, spacing, method, min_seed_vox)
    seed_count = np.zeros(n_inst + 1, dtype=np.int64)
    seed_count[1 : n_seeds + 1] = 1
    sibling_of = np.zeros(n_inst + 1, dtype=np.int64)  # core component of each seed, 0 if none
    sibling_of[: n_seeds + 1] = core_of_seed

    # bone voxels as flat vectors: the per-instance bookkeeping runs on these only
    flat = np.flatnonzero(abbc_box > 0)
    inst_flat = inst.ravel()[flat]
    anatomy_flat = anatomy_box.ravel()[flat]

    # 4. merge instances that meet without border between them
    inst_flat, seed_count, faces = _merge_open(
        inst, abbc_box, anatomy_box, inst_flat, anatomy_flat, seed_count, sibling_of, min_fragment_vox,
        merge_open_fraction, sibling_open_fraction,
    )

    # 5. anatomy: majority bone, split straddlers, orphans of anatomy take the nearest bone
    inst_flat, votes, seed_count, n_split = _split_by_anatomy(inst_flat, anatomy_flat, flat, anatomy_box,
                                                              seed_count, spacing)
    n_inst = votes.shape[0] - 1
    inst_bone = _majority_bone(votes)
    inst.ravel()[flat] = inst_flat
    sizes = np.bincount(inst_flat, minlength=n_inst + 1).astype(np.int64)
    # face contacts carried over from step 4 unless a split changed the instances
    contacts = _contact_table(inst, abbc_box, None if n_split else faces)
    _assign_missing_bones(inst, anatomy_box, inst_bone, sizes, contacts, spacing, min_fragment_vox, warnings)
    _warn_outside_anatomy(votes, sizes, min_fragment_vox, warnings)

    # 6. small fragments merge into neighbours; rank and cap per bone
    groups = _UnionFind(n_inst + 1)
    centroids = _centroids(flat, inst_flat, abbc_box.shape, n_inst, spacing)
    pick = _neighbour_picker(sizes, merge_open_fraction)
    _merge_small(groups, sizes, contacts, inst_bone, pick, min_fragment_vox, min_seed_vox)
    split_ids = range(n_inst - n_split + 1, n_inst + 1)
    inside = _mostly_inside(groups, sizes, inst_bone, inst_flat, anatomy_flat)
    _merge_split_pieces(groups, sizes, contacts, inst_bone, split_ids, inside,
                        (merge_open_fraction, min(anatomy_open_fraction, merge_open_fraction)))
    _cap_per_bone(groups, sizes, contacts, inst_bone, centroids, pick, max_per_bone, warnings)

    # 7. PENGWIN labels: per bone, largest first
    root = np.array([groups.find(i) for i in range(n_inst + 1)], dtype=np.int64)
    root[0] = 0
    root[sizes[root] == 0] = 0  # dropped specks
    to_label, fragments = _number_fragments(root, sizes, seed_count, inst_bone, spacing, max_per_bone)
    labels_box = np.zeros(abbc_box.shape, dtype=np.uint8)
    labels_box.ravel()[flat] = to_label[root[inst_flat]]
    labels[box] = labels_box
    return RecoveryResult(labels, fragments, warnings)


def _grow_instances(abbc_box, seeds, n_seeds, spacing, method, min_seed_vox) -> tuple[np.ndarray, int]:
    """Steps 2 and 3: instance ids (z, y, x) on every bone voxel of ``a``, and their number.

    Seeds grow through boundary/core first; boundary/core components no seed reaches
    (6-connected, at least ``min_seed_vox``) become instances. Then everything grows through
    border; bone still unreached becomes instances of its own (26-connected).
    """
    bone = abbc_box > 0
    passable = (abbc_box == ABBC_BOUNDARY) | (abbc_box == ABBC_CORE)
    inst = grow_labels(seeds, passable, spacing, method)
    n_inst = _append_components(inst, passable & (inst == 0), n_seeds, 6, min_seed_vox)
    if n_inst > n_seeds:
        log.debug("%d boundary/core regions without a core seed", n_inst - n_seeds)
    inst = grow_labels(inst, bone, spacing, method)
    n_inst = _append_components(inst, bone & (inst == 0), n_inst, 26, 1)
    return inst, n_inst


def _merge_open(inst, abbc_box, anatomy_box, inst_flat, anatomy_flat, seed_count, sibling_of, min_fragment_vox,
                merge_open_fraction, sibling_open_fraction):
    """Step 4: instances that meet without border between them become one.

    Returns the bone voxels' new instance ids, the seeds per instance and the face contacts
    between the new instances (see :func:`_merge_open_contacts`).
    """
    n_inst = seed_count.shape[0] - 1
    votes = _bone_votes(inst_flat, anatomy_flat, n_inst)
    vote_bone = _majority_bone(votes)
    big = votes.sum(axis=1) >= min_fragment_vox
    lut, faces = _merge_open_contacts(
        inst, abbc_box, anatomy_box, vote_bone, big, sibling_of, merge_open_fraction, sibling_open_fraction
    )
    inst_flat, seed_count, _, new_id = _apply_lut(inst_flat, lut, seed_count)
    return inst_flat, seed_count, _renumber_pairs(faces, new_id)


def _split_by_anatomy(inst_flat, anatomy_flat, flat, anatomy_box, seed_count, spacing):
    """Step 5: bone votes per instance, after splitting instances that straddle two bones.

    Returns the bone voxels' instance ids, the votes (instance, bone), the seeds per
    instance and the number of split-off pieces (numbered last).
    """
    n_inst = seed_count.shape[0] - 1
    votes = _bone_votes(inst_flat, anatomy_flat, n_inst)
    anat_split = _fill_straddler_anatomy(inst_flat, anatomy_flat, votes, flat, anatomy_box, spacing)
    if anat_split is not anatomy_flat:
        votes = _bone_votes(inst_flat, anat_split, n_inst)
    inst_flat, votes, seed_count, n_split = _split_straddlers(inst_flat, anat_split, votes, seed_count, 1)
    if n_split:
        log.info("split %d instance(s) that straddle two bones", n_split)
    return inst_flat, votes, seed_count, n_split


def _warn_outside_anatomy(votes, sizes, min_fragment_vox, warnings) -> None:
    """Warn about fragments of real size that lie mostly where the anatomy map is empty."""
    covered = votes[:, 1:].sum(axis=1)
    poor = [i for i in range(1, votes.shape[0])
            if sizes[i] >= min_fragment_vox and covered[i] < 0.5 * sizes[i]]
    if poor:
        _warn(
            warnings,
            f"{len(poor)} fragment(s) ({int(sizes[poor].sum())} voxels) lie mostly outside the "
            "anatomy map; their bone was taken from the few anatomy voxels they have or the "
            "nearest bone - check the anatomy segmentation",
        )


def _number_fragments(root, sizes, seed_count, inst_bone, spacing, max_per_bone):
    """Step 7: PENGWIN label of every final group (``root``), largest first per bone.

    Returns the instance -> label table (uint8, 0 for dropped) and the fragments table of
    :class:`RecoveryResult`, in label order.
    """
    n = sizes.shape[0]
    final_sizes = np.bincount(root, weights=sizes, minlength=n).astype(np.int64)
    final_seeds = np.bincount(root, weights=seed_count, minlength=n).astype(np.int64)
    to_label = np.zeros(n, dtype=np.uint8)
    fragments = []
    voxel_mm3 = float(np.prod(spacing))
    for bone_id, name in BONES.items():
        members = [r for r in np.unique(root[1:]) if r > 0 and inst_bone[r] == bone_id]
        members.sort(key=lambda r: (-final_sizes[r], r))
        for k, r in enumerate(members[:max_per_bone]):
            to_label[r] = first_label(bone_id) + k
            fragments.append(
                {
                    "label": int(to_label[r]),
                    "bone": name,
                    "bone_id": bone_id,
                    "voxels": int(final_sizes[r]),
                    "volume_mm3": round(float(final_sizes[r]) * voxel_mm3, 1),
                    "seeds": int(final_seeds[r]),
                }
            )
    fragments.sort(key=lambda f: f["label"])
    return to_label, fragments


# -- validation ---------------------------------------------------------------------------
def _validate(abbc, anatomy, spacing_zyx_mm, method, max_per_bone):
    abbc = check_label_array("ABBC map", abbc, max_label=3,
                             hint=" (0 background, 1 boundary, 2 core, 3 border)")
    if np.shape(anatomy) != abbc.shape:
        raise ValueError(
            f"anatomy map shape {np.shape(anatomy)} (z, y, x) differs from the ABBC map's "
            f"{abbc.shape}: both must be on the same grid. Resample the anatomy map onto "
            "the ABBC grid (nearest neighbour) first."
        )
    anatomy = check_label_array("anatomy map", anatomy, max_label=3,
                                hint=" (0 background, 1 sacrum, 2 left hip, 3 right hip)")
    spacing = check_spacing_zyx_mm(spacing_zyx_mm)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not 1 <= max_per_bone <= MAX_FRAGMENTS_PER_BONE:
        raise ValueError(f"max_per_bone must be 1-{MAX_FRAGMENTS_PER_BONE}, got {max_per_bone}")
    return abbc.astype(np.uint8, copy=False), anatomy.astype(np.uint8, copy=False), spacing


def _warn(warnings: list[str], message: str) -> None:
    log.warning("%s", message)
    warnings.append(message)


# -- seeds -------------------------------------------------------------------------------
def _seeds(core: np.ndarray, min_seed_vox: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Seed ids (uint32) from the core mask, their number, and each one's core component.

    Seeds are the 26-connected core components of at least ``min_seed_vox`` voxels, with
    one refinement against thin core bridges (a spurious blob of core across a fracture
    joins two fragments' cores into one component): where a component, eroded by one voxel
    (6-neighbourhood), falls apart into several pieces of at least ``min_seed_vox``,
    those pieces are the seeds and the rest of the component is grown into like boundary.
    Components whose erosion leaves no such piece (thin cores) are seeds as they are.
    The third value maps seed id -> core component id (index 0 unused), so that pieces of
    one component can be told apart from seeds of different components.
    """
    comps, n = _components(core, 26, min_seed_vox)
    if n == 0:
        return comps, 0, np.zeros(1, dtype=np.int64)
    box = bounding_box(comps > 0)
    pieces = np.zeros(comps.shape, dtype=np.uint32)
    pieces[box], n_pieces = _components(_erode6(comps[box] > 0), 26, min_seed_vox)
    if n_pieces == 0:
        return comps, n, np.arange(n + 1)
    where = np.flatnonzero(pieces)
    piece_ids = pieces.ravel()[where]
    parent = np.zeros(n_pieces + 1, dtype=np.int64)
    parent[piece_ids] = comps.ravel()[where]
    per_comp = np.bincount(parent[1:], minlength=n + 1)
    split = np.flatnonzero(per_comp >= 2)
    if split.size == 0:
        return comps, n, np.arange(n + 1)
    whole = np.setdiff1d(np.arange(1, n + 1), split)
    lut = np.zeros(n + 1, dtype=np.uint32)
    lut[whole] = np.arange(1, whole.size + 1, dtype=np.uint32)
    seeds = lut[comps]
    piece_lut = np.zeros(n_pieces + 1, dtype=np.uint32)
    split_pieces = np.flatnonzero(np.isin(parent, split))
    piece_lut[split_pieces] = np.arange(1, split_pieces.size + 1, dtype=np.uint32) + whole.size
    seeds.ravel()[where] = np.maximum(seeds.ravel()[where], piece_lut[piece_ids])
    core_of_seed = np.concatenate([[0], whole, parent[split_pieces]]).astype(np.int64)
    return seeds, int(whole.size + split_pieces.size), core_of_seed


def _components(mask: np.ndarray, connectivity: int, min_vox: int) -> tuple[np.ndarray, int]:
    """Connected components of ``mask`` with at least ``min_vox`` voxels, ids 1..n (uint32)."""
    comps, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
    comps = comps.astype(np.uint32, copy=False)
    if n == 0 or min_vox <= 1:
        return comps, int(n)
    sizes = np.bincount(comps[mask], minlength=n + 1)
    keep = sizes >= min_vox
    keep[0] = False
    if keep[1:].all():
        return comps, int(n)
    lut = np.zeros(n + 1, dtype=np.uint32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return lut[comps], int(keep.sum())


def _erode6(mask: np.ndarray) -> np.ndarray:
    """Erosion by the 6-neighbourhood (voxels whose 6 neighbours are all in ``mask``).

    Outside the array counts as inside (a structure cut by the edge is not thinned there).
    """
    out = mask.copy()
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        out[tuple(lo)] &= mask[tuple(hi)]
        out[tuple(hi)] &= mask[tuple(lo)]
    return out


# -- instance bookkeeping -----------------------------------------------------------------
def _append_components(inst: np.ndarray, mask: np.ndarray, n: int, connectivity: int, min_vox: int) -> int:
    """Label components of ``mask`` (at least ``min_vox``) as instances n+1, n+2... in place.

    Returns the new instance count.
    """
    box = bounding_box(mask)
    if box is None:
        return n
    comps, k = _components(mask[box], connectivity, min_vox)
    if k:
        region = inst[box]
        region[...] = np.where(comps > 0, comps + np.uint32(n), region)
    return n + int(k)


def _bone_votes(inst_flat: np.ndarray, anatomy_flat: np.ndarray, n_inst: int) -> np.ndarray:
    """(n_inst + 1, 4) voxel counts of anatomy 0-3 per instance."""
    keys = inst_flat.astype(np.int64) * 4 + anatomy_flat
    return np.bincount(keys, minlength=(n_inst + 1) * 4).reshape(n_inst + 1, 4)


def _majority_bone(votes: np.ndarray) -> np.ndarray:
    """Bone 1-3 most voxels of each instance have (0 where none has anatomy)."""
    bones = np.argmax(votes[:, 1:], axis=1) + 1
    bones[votes[:, 1:].sum(axis=1) == 0] = 0
    return bones


def _apply_lut(inst_flat, lut, seed_count):
    """Relabel by ``lut`` (old id -> representative), then compact ids to 1..n."""
    rep = lut[inst_flat]
    used = np.unique(np.concatenate([[0], lut[1:]]))
    compact = np.zeros(lut.shape[0], dtype=np.int64)
    compact[used] = np.arange(used.size)
    new_seed = np.bincount(compact[lut], weights=seed_count, minlength=used.size).astype(np.int64)
    new_seed[0] = 0
    return compact[rep].astype(np.uint32), new_seed, used.size - 1, compact[lut]


def _pair_counts(inst: np.ndarray, connectivity: int) -> dict[tuple[int, int], int]:
    """Number of neighbouring voxel pairs between every two touching instances."""
    out: dict[tuple[int, int], int] = {}
    for (p, q), n in cc3d.contacts(inst, connectivity=connectivity, surface_area=False).items():
        key = (int(p), int(q)) if p < q else (int(q), int(p))
        out[key] = out.get(key, 0) + int(n)
    return out


def _merge_open_contacts(
    inst, abbc_box, anatomy_box, vote_bone, big, sibling_of, merge_open_fraction, sibling_open_fraction
) -> tuple[np.ndarray, dict]:
    """LUT merging big instances whose face contacts are mostly outside the border class.

    Seeds cut from one core component (``sibling_of`` equal and nonzero) were one core
    until the erosion split it, so they need less evidence: ``sibling_open_fraction``.

    Two big instances of one bone that touch, within that bone's anatomy, only through
    open voxels (not a single border voxel between them, however narrow the contact) are
    one fragment too: two cores of one fragment joined by a neck of boundary. Contacts in
    another bone's territory (two waves that crossed a joint) do not count for this.

    Apart from siblings, only instances of at least ``min_fragment_vox`` (``big``) are
    merged here: a small one (a spurious core speck, say) could otherwise bridge two
    fragments across their wall; small instances join one neighbour later.
    """
    n = vote_bone.shape[0]
    groups = _UnionFind(n)
    faces = _face_contacts(inst, abbc_box)
    sizes = np.bincount(inst[abbc_box > 0], minlength=n)
    unwalled = []
    if faces:
        for (p, q), (n_open, n_total) in faces.items():
            siblings = sibling_of[p] != 0 and sibling_of[p] == sibling_of[q]
            if not (siblings or (big[p] and big[q])):
                continue
            needed = sibling_open_fraction if siblings else merge_open_fraction
            same_bone = vote_bone[p] == vote_bone[q] or 0 in (vote_bone[p], vote_bone[q])
            section = not siblings  # siblings were one core: no cross-section test
            if not same_bone:
                continue
            if _continues(n_open, n_total, sizes[p], sizes[q], needed, section):
                groups.union(p, q)
            elif n_open == n_total:
                unwalled.append((p, q))
    if unwalled:  # all-open contacts: count them again within the instances' own bone
        inst_bone = vote_bone.astype(np.uint8)[inst]  # uint8, (z, y, x) of the bone box
        own = np.where((anatomy_box == inst_bone) | (inst_bone == 0), inst, 0)
        own_faces = _face_contacts(own.astype(np.uint32, copy=False), abbc_box)
        for p, q in unwalled:
            n_open, n_total = own_faces.get((p, q), (0, 0))
            if n_open > 0 and n_open == n_total:
                groups.union(p, q)
    return np.array([groups.find(i) for i in range(n)], dtype=np.int64), faces


def _fill_straddler_anatomy(inst_flat, anatomy_flat, votes, flat, anatomy_box, spacing, margin_mm: float = 20.0):
    """Anatomy for the bone voxels (flat vectors) of instances that straddle two bones: those
    without anatomy take the bone of the nearest voxel that has one (Euclidean, mm).

    Without this, an instance that crossed a joint (e.g. the symphysis) keeps every voxel the
    anatomy map left unlabelled on the far side, and the far bone ends up dotted with islands
    of the near bone's fragment. Returns ``anatomy_flat`` itself when nothing is to fill.
    """
    straddlers = np.flatnonzero(np.count_nonzero(votes[:, 1:], axis=1) >= 2)
    if straddlers.size == 0:
        return anatomy_flat
    need = np.isin(inst_flat, straddlers) & (anatomy_flat == 0)
    if not need.any():
        return anatomy_flat
    where = np.zeros(anatomy_box.shape, dtype=bool)
    where.ravel()[flat[need]] = True
    margin = [max(1, int(np.ceil(margin_mm / sp))) for sp in spacing]
    box = bounding_box(where, margin_vox=max(margin))
    sub = anatomy_box[box]
    if not sub.any():
        return anatomy_flat
    _, nearest = ndimage.distance_transform_edt(sub == 0, sampling=spacing, return_indices=True)
    filled = sub[tuple(nearest)]
    del nearest
    out = anatomy_flat.copy()
    idx = np.unravel_index(flat[need], anatomy_box.shape)
    local = tuple(i - b.start for i, b in zip(idx, box))
    out[need] = filled[local]
    return out


def _split_straddlers(inst_flat, anatomy_flat, votes, seed_count, min_fragment_vox):
    """Give the voxels an instance has in a second bone their own instance when there are at
    least ``min_fragment_vox`` of them (``recover_fragments`` passes 1: all of them)."""
    majority = _majority_bone(votes)
    n_inst = votes.shape[0] - 1
    rows = [votes]
    seeds = [seed_count]
    n_split = 0
    for i in range(1, n_inst + 1):
        for b in BONES:
            if b == majority[i] or votes[i, b] < min_fragment_vox:
                continue
            new = n_inst + 1 + n_split
            inst_flat = inst_flat.copy() if n_split == 0 else inst_flat
            inst_flat[(inst_flat == i) & (anatomy_flat == b)] = new
            row = np.zeros((1, 4), dtype=votes.dtype)
            row[0, b] = votes[i, b]
            rows.append(row)
            rows[0] = rows[0].copy() if n_split == 0 else rows[0]
            rows[0][i, b] = 0
            seeds.append(np.zeros(1, dtype=np.int64))
            n_split += 1
    if n_split:
        votes = np.concatenate(rows)
        seed_count = np.concatenate(seeds)
        inst_flat = inst_flat.astype(np.uint32, copy=False)
    return inst_flat, votes, seed_count, n_split


def _assign_missing_bones(
    inst, anatomy_box, inst_bone, sizes, contacts, spacing, min_fragment_vox, warnings, step_mm: float = 15.0
) -> None:
    """Give instances without any anatomy voxel a bone (in place on ``inst_bone``).

    A small one (under ``min_fragment_vox``) takes the bone of the neighbour it touches
    most; the others, and small ones touching nothing, the bone with the nearest anatomy
    voxel (searched in growing boxes). The caller warns about large ones.
    """
    missing = [i for i in range(1, inst_bone.shape[0]) if inst_bone[i] == 0 and sizes[i] > 0]
    if not missing:
        return
    if not np.any(anatomy_box):
        inst_bone[1:] = 1
        _warn(
            warnings,
            "the anatomy map is empty: the bone of each fragment is unknown; all fragments "
            "are labelled as sacrum (1-10)",
        )
        return
    touch: dict[int, dict[int, int]] = {}
    for (p, q), n in contacts.items():
        touch.setdefault(p, {})[q] = n
        touch.setdefault(q, {})[p] = n
    far = []
    for i in missing:
        nbrs = {k: n for k, n in touch.get(i, {}).items() if inst_bone[k] > 0}
        if sizes[i] < min_fragment_vox and nbrs:
            inst_bone[i] = inst_bone[max(nbrs, key=lambda k: nbrs[k][-1])]
        else:
            far.append(i)
    if not far:
        return
    boxes = cc3d.statistics(inst)["bounding_boxes"]
    for i in far:
        margin = [max(1, int(round(step_mm / s))) for s in spacing]
        while True:
            box = tuple(
                slice(max(sl.start - m, 0), min(sl.stop + m, n))
                for sl, m, n in zip(boxes[i], margin, inst.shape)
            )
            sub_an = anatomy_box[box]
            whole = all(sl.start == 0 and sl.stop == n for sl, n in zip(box, inst.shape))
            if np.any(sub_an) or whole:
                break
            margin = [2 * m for m in margin]
        dist = edt.edt(inst[box] != i, anisotropy=spacing, parallel=1)
        best = min((float(dist[sub_an == b].min()), b) for b in BONES if np.any(sub_an == b))
        inst_bone[i] = best[1]


def _centroids(flat, inst_flat, shape, n_inst, spacing) -> np.ndarray:
    """(n_inst + 1, 3) centroid of each instance, (z, y, x) mm."""
    coords = np.unravel_index(flat, shape)
    counts = np.maximum(np.bincount(inst_flat, minlength=n_inst + 1), 1)
    return np.stack(
        [np.bincount(inst_flat, weights=c * s, minlength=n_inst + 1) / counts for c, s in zip(coords, spacing)],
        axis=1,
    )


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, keep: int, other: int) -> int:
        """Merge ``other``'s group into ``keep``'s; returns the surviving root."""
        rk, ro = self.find(keep), self.find(other)
        if rk != ro:
            self.parent[ro] = rk
        return rk


def _face_contacts(inst: np.ndarray, abbc_box: np.ndarray) -> dict[tuple[int, int], tuple[int, int]]:
    """(p, q) -> (open, all) face contacts between instances.

    Open contacts have neither voxel in the border class: the two instances continue
    into each other there, with no fracture zone between them.
    """
    total = _pair_counts(inst, connectivity=6)
    open_ = _pair_counts(np.where(abbc_box == ABBC_BORDER, 0, inst), connectivity=6)
    return {pq: (open_.get(pq, 0), n) for pq, n in total.items()}


def _continues(
    n_open: int, n_faces: int, size_p: int, size_q: int, fraction: float, section: bool = True
) -> bool:
    """Do two instances continue into each other (no border between them)?

    At least ``fraction`` of their face contacts are open, and the open contact is a real
    cross-section, not a thin bridge: at least ``OPEN_SECTION`` x (smaller size)^(2/3)
    faces. A core cut in two meets its other half over the bone's whole section; a few
    boundary voxels laid around the outer edge of a fracture by surface noise do not.
    """
    if n_faces == 0 or n_open < fraction * n_faces:
        return False
    return not section or n_open >= OPEN_SECTION * float(min(size_p, size_q)) ** (2.0 / 3.0)


def _renumber_pairs(pairs: dict, new_id: np.ndarray) -> dict:
    """Sum pair counts under a renumbering (pairs that become one instance vanish)."""
    out: dict = {}
    for (p, q), counts in pairs.items():
        abbc_box, b = int(new_id[p]), int(new_id[q])
        if abbc_box == b:
            continue
        key = (abbc_box, b) if abbc_box < b else (b, abbc_box)
        prev = out.get(key)
        out[key] = counts if prev is None else tuple(x + y for x, y in zip(prev, counts))
    return out


def _contact_table(inst, abbc_box, faces: dict | None = None) -> dict[tuple[int, int], tuple[int, int, int]]:
    """(p, q) -> (open faces, faces, all 26-neighbour contacts) between instances
    (faces as in :func:`_face_contacts`, computed unless given)."""
    if faces is None:
        faces = _face_contacts(inst, abbc_box)
    return {pq: faces.get(pq, (0, 0)) + (n,) for pq, n in _pair_counts(inst, connectivity=26).items()}


def _neighbours(root, contacts, groups, inst_bone, same_bone: bool = True):
    """Groups touching group ``root`` (of the same bone unless told) -> summed contacts.

    """
    out: dict[int, tuple[int, int, int]] = {}
    for (p, q), counts in contacts.items():
        rp, rq = groups.find(p), groups.find(q)
        if rp == rq or root not in (rp, rq):
            continue
        other = rq if rp == root else rp
        if not same_bone or inst_bone[other] == inst_bone[root]:
            prev = out.get(other, (0, 0, 0))
            out[other] = tuple(x + y for x, y in zip(prev, counts))
    return out


def _neighbour_picker(sizes, merge_open_fraction):
    """The neighbour a fragment merges into: the one it continues into without border
    (open share of their contact at least ``merge_open_fraction``) if any, else the one it
    touches most; ties to the larger."""

    def pick(r: int, nbrs: dict[int, tuple[int, int, int]]) -> int:
        def key(k):
            n_open, n_faces, n_all = nbrs[k]
            return (_continues(n_open, n_faces, sizes[r], sizes[k], merge_open_fraction), n_all, sizes[k])

        return max(nbrs, key=key)

    return pick


def _merge_small(groups, sizes, contacts, inst_bone, pick, min_fragment_vox, min_island_vox) -> None:
    """Merge groups under ``min_fragment_vox`` into the neighbour they touch most.

    A neighbour of the same bone is preferred; failing that, any touching group. Islands
    (touching nothing) under ``min_island_vox`` are dropped (size set to 0), larger ones kept.
    """
    done: set[int] = set()
    while True:
        roots = [
            r for r in range(1, sizes.shape[0])
            if groups.find(r) == r and 0 < sizes[r] < min_fragment_vox and r not in done
        ]
        if not roots:
            return
        r = min(roots, key=lambda i: (sizes[i], i))
        nbrs = _neighbours(r, contacts, groups, inst_bone) or _neighbours(
            r, contacts, groups, inst_bone, same_bone=False
        )
        if nbrs:
            target = pick(r, nbrs)
            groups.union(target, r)
            sizes[target] += sizes[r]
            sizes[r] = 0
        else:  # an island: keep it unless it is a speck
            if sizes[r] < min_island_vox:
                sizes[r] = 0
            done.add(r)


def _mostly_inside(groups, sizes, inst_bone, inst_flat, anatomy_flat) -> np.ndarray:
    """Per group root: whether the fragment as merged so far (``sizes`` of the roots) has
    more than half of its voxels in the root's bone of the anatomy map (never for a
    fragment without a bone)."""
    roots = np.array([groups.find(i) for i in range(sizes.shape[0])], dtype=np.int64)
    root_flat = roots[inst_flat]
    bone = inst_bone[root_flat]
    in_bone = np.bincount(root_flat[(anatomy_flat == bone) & (bone > 0)], minlength=sizes.shape[0])
    return 2 * in_bone > sizes


def _merge_split_pieces(groups, sizes, contacts, inst_bone, split_ids, inside, fractions) -> None:
    """Join the pieces split off by anatomy (step 5) to the fragment of their bone they
    continue into, whatever their size.

    Such a piece was grown by the wave of another bone's seed across a joint; it has no
    core of its own. When its face contacts with a fragment of its own bone are open
    enough (little fracture zone between them), it is that fragment's bone the other wave
    took; otherwise (walled off: a fragment whose core was missed) it stays a fragment of
    its own. ``fractions`` = (merge, anatomy): the open share needed in general, and
    where the piece and the fragment both lie mostly inside their bone (``inside``).
    """
    merge_fraction, anatomy_fraction = fractions
    for r in split_ids:
        if groups.find(r) != r or sizes[r] == 0:
            continue
        nbrs = _neighbours(r, contacts, groups, inst_bone)
        open_nbrs = {
            k: c[0] for k, c in nbrs.items()
            if c[1] > 0 and c[0] >= (anatomy_fraction if inside[r] and inside[k] else merge_fraction) * c[1]
        }
        if open_nbrs:
            target = max(open_nbrs, key=lambda k: (open_nbrs[k], sizes[k]))
            groups.union(target, r)
            sizes[target] += sizes[r]
            sizes[r] = 0


def _cap_per_bone(groups, sizes, contacts, inst_bone, centroids, pick, max_per_bone, warnings) -> None:
    """Merge the smallest fragments of a bone into neighbours until at most ``max_per_bone``."""
    for bone_id, name in BONES.items():
        n_before = None
        while True:
            roots = [
                r for r in range(1, sizes.shape[0])
                if groups.find(r) == r and sizes[r] > 0 and inst_bone[r] == bone_id
            ]
            if n_before is None:
                n_before = len(roots)
            if len(roots) <= max_per_bone:
                break
            r = min(roots, key=lambda i: (sizes[i], i))
            nbrs = _neighbours(r, contacts, groups, inst_bone)
            if nbrs:
                target = pick(r, nbrs)
            else:  # touches no fragment of its bone: the nearest one by centroid
                others = [k for k in roots if k != r]
                target = min(others, key=lambda k: float(np.sum((centroids[k] - centroids[r]) ** 2)))
            groups.union(target, r)
            sizes[target] += sizes[r]
            sizes[r] = 0
        if n_before is not None and n_before > max_per_bone:
            _warn(
                warnings,
                f"{name}: {n_before} fragments found, more than {max_per_bone}; the "
                f"{n_before - max_per_bone} smallest were merged into their neighbours",
            )
