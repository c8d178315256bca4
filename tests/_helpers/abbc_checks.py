"""Invariant checks for ABBC maps, shared by the tests/recovery/test_abbc*.py files
(tests/recovery/test_abbc_checks.py shows that they catch broken maps), and a plain recovery.

Each check raises AssertionError with a message naming the fragment and what is wrong.
"""

from __future__ import annotations

import cc3d
import edt
import numpy as np

from pengwin_demo.labels import ABBC_BORDER, ABBC_BOUNDARY, ABBC_CORE, BONES, bone_of_label, bone_of_labels


def check_partition(labels: np.ndarray, abbc: np.ndarray) -> None:
    """Four classes, background stays background, every fragment voxel is classified."""
    assert abbc.dtype == np.uint8 and abbc.shape == labels.shape
    assert int(abbc.max(initial=0)) <= 3
    assert np.array_equal(abbc == 0, labels == 0), "background and fragments must keep their extent"


def check_core_per_fragment(labels: np.ndarray, abbc: np.ndarray) -> None:
    for lab in np.unique(labels[labels > 0]):
        n_core = int(np.count_nonzero(abbc[labels == lab] == ABBC_CORE))
        assert n_core >= 1, f"fragment {lab} has no core voxel"


def check_cores_apart(labels: np.ndarray, abbc: np.ndarray) -> None:
    """No 26-connected core component spans two fragments."""
    cc = cc3d.connected_components(abbc == ABBC_CORE, connectivity=26)
    core = cc > 0
    pairs = np.unique(np.stack([cc[core], labels[core]]), axis=1)
    comp_ids, n_labels = np.unique(pairs[0], return_counts=True)
    bad = comp_ids[n_labels > 1]
    assert bad.size == 0, f"core components {bad.tolist()} span two fragments"


def check_border_near_same_bone(labels, abbc, spacing, max_width_mm) -> None:
    """Border voxels lie within ``max_width_mm`` of another fragment of the same bone
    (or are 26-adjacent to one)."""
    contact_mm = float(np.linalg.norm(spacing))
    allowed = max(max_width_mm, contact_mm) + 1e-4
    present = [int(v) for v in np.unique(labels[labels > 0])]
    for lab in present:
        frag = labels == lab
        border = frag & (abbc == ABBC_BORDER)
        if not border.any():
            continue
        others = np.isin(labels, [o for o in present if o != lab and bone_of_label(o) == bone_of_label(lab)])
        assert others.any(), f"fragment {lab} has border but no other fragment in its bone"
        d = edt.edt(~others, anisotropy=tuple(spacing), black_border=False)
        worst = float(d[border].max())
        assert worst <= allowed, f"fragment {lab}: border {worst:.2f} mm from the next fragment"


def check_walls(labels, abbc) -> None:
    """Non-border voxels of two fragments of the same bone are never 26-adjacent."""
    open_ = (abbc == ABBC_BOUNDARY) | (abbc == ABBC_CORE)
    lab = np.where(open_, labels, 0).astype(np.int16)
    z, y, x = lab.shape
    padded = np.zeros((z + 2, y + 2, x + 2), dtype=np.int16)
    padded[1:-1, 1:-1, 1:-1] = lab
    centre = padded[1:-1, 1:-1, 1:-1]
    for dz in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dz, dy, dx) <= (0, 0, 0):
                    continue
                nb = padded[1 + dz : z + 1 + dz, 1 + dy : y + 1 + dy, 1 + dx : x + 1 + dx]
                both = (centre > 0) & (nb > 0) & (centre != nb)
                if both.any():
                    same_bone = bone_of_labels(centre[both]) == bone_of_labels(nb[both])
                    assert not same_bone.any(), (
                        f"open (boundary/core) voxels of fragments {np.unique(centre[both][same_bone])} "
                        "touch another fragment of their bone without border"
                    )


def check_all(labels, abbc, spacing, max_width_mm=2.0) -> None:
    check_partition(labels, abbc)
    from pengwin_demo.volume import bounding_box

    box = bounding_box(labels > 0, margin_vox=1)
    if box is None:
        return
    labels, abbc = labels[box], abbc[box]  # the other checks only look at bone
    check_core_per_fragment(labels, abbc)
    check_cores_apart(labels, abbc)
    check_border_near_same_bone(labels, abbc, spacing, max_width_mm)
    check_walls(labels, abbc)


def core_components(labels, abbc, lab) -> int:
    core = (labels == lab) & (abbc == ABBC_CORE)
    return int(cc3d.connected_components(core, connectivity=26, return_N=True)[1])


def _contacts(labels: np.ndarray, lab: int) -> dict[int, int]:
    """Other labels 26-adjacent to ``lab`` -> number of touching voxel pairs."""
    from scipy import ndimage

    from pengwin_demo.volume import bounding_box

    box = bounding_box(labels == lab, margin_vox=1)
    sub = labels[box]
    mine = sub == lab
    out: dict[int, int] = {}
    for off in np.ndindex(3, 3, 3):
        if off == (1, 1, 1):
            continue
        shifted = ndimage.shift(sub, np.array(off) - 1, order=0, mode="constant", cval=0)
        touch = shifted[mine]
        for other, n in zip(*np.unique(touch[(touch > 0) & (touch != lab)], return_counts=True)):
            out[int(other)] = out.get(int(other), 0) + int(n)
    return out


def merge_small_fragments(labels: np.ndarray, min_vox: int, same_bone_only: bool = False,
                          bone_of=bone_of_label) -> np.ndarray:
    """Merge ground-truth fragments under ``min_vox`` as instance recovery does by design.

    Smallest first, each joins the fragment of its bone it touches most (26-contacts),
    failing that (unless ``same_bone_only``) any fragment it touches; an island touching
    nothing stays. Returns a new uint8 map.

    Not :func:`pengwin_demo.metrics.merge_small_fragments`, which keeps to the same bone and
    renumbers: here a piece touching only another bone joins it (as recovery's anatomy vote
    lets it), ids are kept, and ``bone_of`` serves plain instance ids as well.
    """
    out = labels.astype(np.uint8, copy=True)
    islands: set[int] = set()
    while True:
        ids, counts = np.unique(out[out > 0], return_counts=True)
        small = sorted((int(c), int(i)) for i, c in zip(ids, counts)
                       if c < min_vox and int(i) not in islands)
        if not small:
            return out
        lab = small[0][1]
        touching = _contacts(out, lab)
        same = {k: n for k, n in touching.items() if bone_of(k) == bone_of(lab)}
        pool = same if (same or same_bone_only) else touching
        if not pool:
            islands.add(lab)
            continue
        sizes = dict(zip(ids.tolist(), counts.tolist()))
        target = max(pool, key=lambda k: (pool[k], sizes[k]))
        out[out == lab] = target


def best_ious(gt: np.ndarray, pred: np.ndarray) -> dict[int, float]:
    """Per ground-truth fragment: the highest IoU with any predicted fragment."""
    res = {}
    pred_sizes = np.bincount(pred.ravel().astype(np.int64))
    for g in np.unique(gt[gt > 0]):
        m = gt == g
        cand, inter = np.unique(pred[m], return_counts=True)
        best = 0.0
        for c, n in zip(cand, inter):
            if c == 0:
                continue
            best = max(best, n / (m.sum() + pred_sizes[c] - n))
        res[int(g)] = float(best)
    return res


def recover_per_bone(abbc: np.ndarray, anatomy: np.ndarray, spacing, **kwargs) -> np.ndarray:
    """Instance recovery run on each bone alone (growth cannot cross a joint)."""
    from pengwin_demo.recovery import recover_fragments

    out = np.zeros(abbc.shape, dtype=np.uint8)
    for b in BONES:
        in_bone = anatomy == b
        if not np.any(abbc[in_bone] == ABBC_CORE):
            continue
        res = recover_fragments(np.where(in_bone, abbc, 0), np.where(in_bone, anatomy, 0),
                                spacing, **kwargs)
        out[res.labels > 0] = res.labels[res.labels > 0]
    return out


def simple_growth(abbc: np.ndarray, spacing, min_seed_vox: int = 50, min_fragment_vox: int = 1000):
    """A deliberately plain instance recovery, independent of pengwin_demo.recovery.instances.

    Seeds: 26-connected core components of at least ``min_seed_vox``; every boundary/core
    voxel joins the seed it reaches first (breadth-first flooding, border and background
    closed); border and unreached bone then join the nearest labelled voxel (Euclidean,
    mm); bone no seed reaches becomes its own instance; instances under
    ``min_fragment_vox`` merge into the instance they touch most. Returns uint16 ids.
    """
    from scipy import ndimage
    from skimage.segmentation import watershed

    from pengwin_demo.volume import bounding_box

    out = np.zeros(abbc.shape, dtype=np.uint16)
    box = bounding_box(abbc > 0, margin_vox=1)
    if box is None:
        return out
    a = abbc[box]
    seeds = cc3d.dust(a == ABBC_CORE, threshold=min_seed_vox, connectivity=26)
    seeds = cc3d.connected_components(seeds, connectivity=26).astype(np.int32)
    flat = np.zeros(a.shape, dtype=np.uint8)
    lab = watershed(flat, markers=seeds, mask=(a == ABBC_BOUNDARY) | (a == ABBC_CORE))
    if lab.any():
        _, idx = ndimage.distance_transform_edt(lab == 0, sampling=spacing, return_indices=True)
        lab = np.where(a > 0, lab[tuple(idx)], 0)
    rest = (a > 0) & (lab == 0)
    if rest.any():
        extra = cc3d.connected_components(rest, connectivity=26).astype(np.int32)
        lab[rest] = extra[rest] + lab.max()
    lab = merge_small_fragments(lab.astype(np.uint16), min_fragment_vox, bone_of=lambda k: 0)
    out[box] = lab
    return out
