"""Fracture plans for the phantom: curved cut surfaces, small comminuted pieces, displacement.

A bone is cut into fragments by a sequence of splits. Each split takes one existing
fragment and gives the part of it on the positive side of a surface to a new fragment.
Surfaces are curved sheets (a plane bent by two curvatures and a wave) or balls (a small
piece broken out of the surface). Pieces are accepted only when both sides are large
enough and each side is a single 26-connected component on the planning grid.

Fragments other than the largest may be displaced by a rigid motion (1-8 mm, up to
10 degrees about their centroid); undisplaced fragments stay in contact and are separated
only by a fracture line ``gap_mm`` wide (0.15-0.7 mm: barely visible after partial volume).

All coordinates are canonical LPS millimetres (x, y, z); point arrays are (N, 3) float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cc3d
import numpy as np

from ..labels import MAX_FRAGMENTS_PER_BONE
from .sdf import random_unit, rotation_matrix

FRAGMENT_COUNT_PROBABILITIES: dict[int, float] = {
    1: 0.30, 2: 0.25, 3: 0.15, 4: 0.09, 5: 0.06, 6: 0.05, 7: 0.04, 8: 0.03, 9: 0.02, 10: 0.01,
}
"""Default probability of each fragment count per bone: most bones whole or in a few
pieces, a tail of comminuted bones with up to 10 fragments."""

MIN_FRAGMENT_MM3 = 400.0
"""Smallest fragment the planner accepts (about 50 voxels at 2 mm, 800 at 0.8 mm)."""

MIN_MAJOR_FRAGMENT_MM3 = 6000.0
"""Smallest piece of a sheet split (a ball split makes the small comminuted pieces)."""


@dataclass(frozen=True)
class Surface:
    """A cut surface; :meth:`value` is about the signed distance in mm (positive: new piece)."""

    kind: str  # "sheet" or "ball"
    centre: np.ndarray  # (3,) mm
    normal: np.ndarray = field(default_factory=lambda: np.zeros(3))
    u: np.ndarray = field(default_factory=lambda: np.zeros(3))
    v: np.ndarray = field(default_factory=lambda: np.zeros(3))
    curvature: tuple[float, float] = (0.0, 0.0)  # 1/mm along u and v
    wave_mm: float = 0.0  # amplitude of the ripple (mm)
    wavelength_mm: float = 50.0
    phase: float = 0.0
    radius_mm: float = 0.0  # ball radius

    def value(self, q: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm) of points ``q`` (N, 3) to the surface."""
        w = q - self.centre.astype(np.float32)
        if self.kind == "ball":
            return np.float32(self.radius_mm) - np.sqrt(np.einsum("ij,ij->i", w, w))
        a = w @ self.normal.astype(np.float32)
        s1 = w @ self.u.astype(np.float32)
        s2 = w @ self.v.astype(np.float32)
        k1, k2 = (np.float32(c) for c in self.curvature)
        om = np.float32(2 * np.pi / self.wavelength_mm)
        amp = np.float32(self.wave_mm)
        f = a + k1 * s1 * s1 + k2 * s2 * s2 + amp * np.sin(om * s1 + np.float32(self.phase))
        g1 = 2 * k1 * s1 + amp * om * np.cos(om * s1 + np.float32(self.phase))
        g2 = 2 * k2 * s2
        return f / np.sqrt(1 + g1 * g1 + g2 * g2)


@dataclass(frozen=True)
class Split:
    """Points of fragment ``parent`` with ``surface.value > 0`` become fragment ``child``."""

    parent: int
    child: int
    surface: Surface
    gap_mm: float


@dataclass(frozen=True)
class Motion:
    """Rigid displacement of a fragment: p -> R (p - pivot) + pivot + t (mm)."""

    rotation: np.ndarray  # (3, 3)
    translation_mm: np.ndarray  # (3,)
    pivot_mm: np.ndarray  # (3,)

    def matrix(self) -> np.ndarray:
        """4 x 4 homogeneous matrix of the motion (x, y, z mm)."""
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[:3, 3] = self.pivot_mm + self.translation_mm - self.rotation @ self.pivot_mm
        return m


@dataclass(frozen=True)
class FracturePlan:
    """How one bone breaks: ``n_fragments`` pieces (0 .. n-1), splits in order, motions."""

    bone: int
    n_fragments: int
    splits: tuple[Split, ...]
    motions: dict[int, Motion]
    sizes_mm3: tuple[float, ...]
    boxes_mm: tuple[np.ndarray, ...]  # per fragment (2, 3) canonical box (before motion)

    def assign(self, q: np.ndarray, flip: np.ndarray | None = None):
        """Fragment of each point and its distance to the nearest fracture surface.

        Parameters
        ----------
        q : ndarray (N, 3) float32
            Canonical points (x, y, z mm) inside the intact bone.
        flip : ndarray (N,) int, optional
            Index of a split whose decision is reversed for that point (-1: none); used to
            find the fragment on the other side of the nearest fracture line.

        Returns
        -------
        fragment : ndarray (N,) int8
        distance_mm : ndarray (N,) float32
            Distance to the nearest surface that bounds the point's fragment, minus half
            that line's gap (inf without fractures).
        nearest : ndarray (N,) int16
            Index of that split (-1 without fractures).
        """
        n = q.shape[0]
        frag = np.zeros(n, dtype=np.int8)
        dist = np.full(n, np.inf, dtype=np.float32)
        nearest = np.full(n, -1, dtype=np.int16)
        for j, sp in enumerate(self.splits):
            sel = np.flatnonzero(frag == sp.parent)
            if sel.size == 0:
                continue
            val = sp.surface.value(q[sel])
            pos = val > 0
            if flip is not None:
                pos ^= flip[sel] == j
            frag[sel[pos]] = sp.child
            d = np.abs(val) - np.float32(sp.gap_mm / 2)
            closer = d < dist[sel]
            dist[sel[closer]] = d[closer]
            nearest[sel[closer]] = j
        return frag, dist, nearest


def sample_fragment_counts(rng: np.random.Generator, probabilities: dict[int, float] | None = None) -> dict[int, int]:
    """Fragments per labelled bone {1 sacrum, 2 left hip, 3 right hip} from ``probabilities``."""
    probs = probabilities or FRAGMENT_COUNT_PROBABILITIES
    ks = np.array(sorted(probs), dtype=int)
    p = np.array([probs[k] for k in ks], dtype=np.float64)
    if ks.min() < 1 or ks.max() > 10 or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"fragment count probabilities need counts 1-10 and weights >= 0, got {probs}")
    draws = rng.choice(ks, size=3, p=p / p.sum())
    return {1: int(draws[0]), 2: int(draws[1]), 3: int(draws[2])}


def _sheet(rng, centre, bone: int) -> Surface:
    if bone == 1 and rng.random() < 0.6:  # sacrum: mostly vertical (zone I-III) fractures
        normal = np.array([1.0, 0.0, 0.0]) + 0.35 * rng.normal(size=3)
    elif bone == 1:
        normal = np.array([0.0, 0.5, -0.85]) + 0.3 * rng.normal(size=3)
    else:
        normal = random_unit(rng)
    normal /= np.linalg.norm(normal)
    u = np.cross(normal, random_unit(rng))
    u /= np.linalg.norm(u)
    v = np.cross(normal, u)
    return Surface(
        "sheet", np.asarray(centre, float), normal, u, v,
        curvature=(rng.uniform(-1 / 50, 1 / 50), rng.uniform(-1 / 50, 1 / 50)),
        wave_mm=rng.uniform(0.0, 3.0), wavelength_mm=rng.uniform(20.0, 60.0),
        phase=rng.uniform(0, 2 * np.pi),
    )


def _single_component(index: np.ndarray) -> bool:
    """True when grid points ``index`` (N, 3 int) form one 26-connected component."""
    lo = index.min(axis=0)
    shape = index.max(axis=0) - lo + 1
    mask = np.zeros(tuple(shape), dtype=np.uint8)
    mask[tuple((index - lo).T)] = 1
    _, n = cc3d.connected_components(mask, connectivity=26, return_N=True)
    return n == 1


def plan_fractures(
    rng: np.random.Generator,
    bone: int,
    n_fragments: int,
    points_mm: np.ndarray,
    index: np.ndarray,
    voxel_mm3: float,
    displaced_fraction: float,
    motion_rng: np.random.Generator | None = None,
    max_tries: int = 80,
) -> FracturePlan:
    """Cut one bone into ``n_fragments`` pieces.

    Parameters
    ----------
    rng : numpy Generator
    bone : int
        Anatomy id (1 sacrum, 2 left hip, 3 right hip); steers fracture orientation.
    n_fragments : int
        1-10.
    points_mm : ndarray (N, 3) float32
        Canonical (x, y, z mm) centres of the planning-grid voxels inside the bone.
    index : ndarray (N, 3) int
        Their planning-grid indices (any consistent order), for connectivity checks.
    voxel_mm3 : float
        Volume of one planning voxel (mm^3).
    displaced_fraction : float
        Probability that a fragment other than the largest is displaced.
    motion_rng : numpy Generator, optional
        Stream for the displacements (default ``rng``); a separate stream keeps the cuts
        identical when only ``displaced_fraction`` changes.
    """
    mrng = rng if motion_rng is None else motion_rng
    if not 1 <= n_fragments <= MAX_FRAGMENTS_PER_BONE:
        raise ValueError(f"n_fragments must be 1-{MAX_FRAGMENTS_PER_BONE}, got {n_fragments}")
    frag = np.zeros(len(points_mm), dtype=np.int8)
    splits: list[Split] = []
    limits_vox = (max(MIN_FRAGMENT_MM3 / voxel_mm3, 8), MIN_MAJOR_FRAGMENT_MM3 / voxel_mm3)
    for child in range(1, n_fragments):
        small = child >= 3 or rng.random() < 0.2
        for attempt in range(max_tries):
            split = _try_split(rng, frag, child, small, attempt < max_tries // 2, bone, points_mm, index,
                               voxel_mm3, limits_vox)
            if split is not None:
                splits.append(split)
                break
        else:
            raise RuntimeError(f"could not cut bone {bone} into {n_fragments} fragments")
    sizes = np.bincount(frag, minlength=n_fragments) * voxel_mm3
    boxes = tuple(
        np.array([points_mm[frag == k].min(axis=0), points_mm[frag == k].max(axis=0)])
        for k in range(n_fragments)
    )
    motions = _sample_motions(mrng, frag, splits, n_fragments, int(np.argmax(sizes)), points_mm,
                              displaced_fraction)
    return FracturePlan(bone, n_fragments, tuple(splits), motions, tuple(float(s) for s in sizes), boxes)


def _try_split(rng, frag, child, small, early, bone, points_mm, index, voxel_mm3, limits_vox) -> Split | None:
    """One attempt to cut fragment ``child`` off a fragment drawn by size; in place on ``frag``.

    ``small``: a ball may break a small piece out (in the first half of the attempts,
    ``early``, always; later half the time); otherwise a curved sheet cuts a major piece
    (``early``) or any piece of at least the small limit. Both sides must keep their size
    limits (``limits_vox``: small, major) and stay in one piece; None when they do not.
    """
    min_small, min_major = limits_vox
    sizes = np.bincount(frag, minlength=child)
    use_ball = small and (early or rng.random() < 0.5)
    if use_ball:
        parent = int(rng.choice(child, p=sizes / sizes.sum()))
        members = np.flatnonzero(frag == parent)
        centre = points_mm[members[rng.integers(members.size)]]
        surf = Surface("ball", np.asarray(centre, float), radius_mm=rng.uniform(6.0, 16.0))
        lo_size, hi_size = min_small, 12000.0 / voxel_mm3
    else:
        weights = sizes.astype(float) ** 1.5
        parent = int(rng.choice(child, p=weights / weights.sum()))
        members = np.flatnonzero(frag == parent)
        centre = points_mm[members[rng.integers(members.size)]]
        surf = _sheet(rng, centre, bone)
        lo_size, hi_size = (min_major if early else min_small), np.inf
    pos = surf.value(points_mm[members]) > 0
    n_pos = int(pos.sum())
    n_neg = members.size - n_pos
    if not (lo_size <= n_pos <= hi_size and n_neg >= min_major * 0.5):
        return None
    if not (_single_component(index[members[pos]]) and _single_component(index[members[~pos]])):
        return None
    frag[members[pos]] = child
    return Split(parent, child, surf, float(rng.uniform(0.15, 0.7)))


def _sample_motions(mrng, frag, splits, n_fragments, largest, points_mm, displaced_fraction) -> dict[int, Motion]:
    """Rigid motions of the displaced fragments (never the largest): 1-8 mm away from the
    surface that made (or last cut) the fragment, give or take, and up to 10 degrees."""
    motions: dict[int, Motion] = {}
    for k in range(n_fragments):
        if k == largest or mrng.random() >= displaced_fraction:
            continue
        # move away from the surface that made (or last cut) the fragment
        j = max(i for i, sp in enumerate(splits) if k in (sp.parent, sp.child))
        sp = splits[j]
        centroid = points_mm[frag == k].mean(axis=0).astype(float)
        if sp.surface.kind == "ball":  # a small piece leaves the rest of the bone
            rest = points_mm[frag != k]
            away = centroid - (rest.mean(axis=0) if rest.size else centroid)
        else:
            away = sp.surface.normal * (1 if k == sp.child else -1)
        away = away / max(np.linalg.norm(away), 1e-6) + 0.5 * random_unit(mrng)
        away /= np.linalg.norm(away)
        t = away * mrng.uniform(1.0, 8.0)
        rot = rotation_matrix(random_unit(mrng), np.deg2rad(mrng.uniform(0.0, 10.0)))
        motions[k] = Motion(rot, t, centroid)
    return motions
