"""Rendering of phantom bones onto a CT grid, crop first, and label clean-up.

A *group* is a bone, or the fragments of a bone that move together (one rigid motion).
For each group the bone's distance field is resampled onto the CT voxels of the group's
bounding box only (crop first). At each voxel near the bone the exact canonical position
is known, so the fragment (from the cut surfaces), the distance to the bone surface and
to the fracture line give partial-volume coverage of bone, of the cortical shell and of
the fracture gap across one voxel.

Arrays are indexed (z, y, x); canonical points are (x, y, z) mm.
"""

from __future__ import annotations

from dataclasses import dataclass

import cc3d
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..labels import BONES, MAX_FRAGMENTS_PER_BONE, MAX_LABEL, bone_of_label, bone_of_labels, first_label
from ..volume import Volume
from .anatomy import Structure
from .fractures import FracturePlan
from .sdf import Canvas

FAR_MM = 1000.0


@dataclass(frozen=True)
class Grid:
    """A scalar field on an isotropic canonical grid (z, y, x) with spacing ``res_mm``."""

    array: np.ndarray  # (z, y, x) float32
    origin_mm: np.ndarray  # canonical (x, y, z) of voxel (0, 0, 0)
    res_mm: float

    def sample(self, q: np.ndarray, outside: float = FAR_MM) -> np.ndarray:
        """Trilinear value at canonical points ``q`` (N, 3) x, y, z mm (float32)."""
        c = (q - self.origin_mm.astype(np.float32)) * np.float32(1.0 / self.res_mm)
        return ndimage.map_coordinates(
            self.array, c[:, ::-1].T, order=1, mode="constant", cval=outside, prefilter=False
        )

    def points(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) canonical (x, y, z) mm and (N, 3) (z, y, x) indices of ``mask`` voxels."""
        idx = np.argwhere(mask)
        pts = (self.origin_mm + self.res_mm * idx[:, ::-1]).astype(np.float32)
        return pts, idx

    def to_sitk(self) -> sitk.Image:
        img = sitk.GetImageFromArray(self.array)
        img.SetSpacing((self.res_mm,) * 3)
        img.SetOrigin(tuple(float(o) for o in self.origin_mm))
        return img


def evaluate(structure: Structure, res_mm: float, clip_mm: np.ndarray | None = None) -> Grid:
    """Distance field of ``structure`` on a canonical grid (its box clipped to ``clip_mm``)."""
    box = np.array(structure.box_mm, float)
    if clip_mm is not None:
        box = np.array([np.maximum(box[0], clip_mm[0]), np.minimum(box[1], clip_mm[1])])
        box[1] = np.maximum(box[1], box[0] + res_mm)
    cv = Canvas(box, res_mm)
    structure.paint(cv)
    return Grid(cv.finish(), cv.origin_mm, res_mm)


def resample_to_ct(grid: Grid, world_to_canon: np.ndarray, geom: Volume, shape_zyx,
                   default: float, pixel_type=sitk.sitkFloat32, start_zyx=(0, 0, 0)) -> np.ndarray:
    """Linear resampling (SimpleITK) of a canonical grid onto the CT grid box of
    ``shape_zyx`` voxels starting at index ``start_zyx`` (z, y, x)."""
    ref = sitk.Image([int(s) for s in shape_zyx[::-1]], pixel_type)
    ref.SetSpacing(geom.spacing_zyx_mm[::-1])
    ref.SetOrigin(tuple(geom.index_to_world(np.asarray(start_zyx, float))[0]))
    ref.SetDirection(tuple(geom.direction.ravel()))
    tf = sitk.AffineTransform(3)
    tf.SetMatrix(tuple(world_to_canon[:3, :3].ravel()))
    tf.SetTranslation(tuple(world_to_canon[:3, 3]))
    out = sitk.Resample(grid.to_sitk(), ref, tf, sitk.sitkLinear, float(default), pixel_type)
    return sitk.GetArrayFromImage(out)


@dataclass
class Group:
    """Fragments of one bone drawn with one rigid motion (or an unlabelled bone)."""

    structure: Structure
    grid: Grid
    plan: FracturePlan | None
    members: tuple[int, ...]  # fragment indices drawn by this group
    motion: np.ndarray  # 4 x 4 canonical motion of those fragments
    box_mm: np.ndarray  # canonical box (before motion)
    start: np.ndarray | None = None  # CT index box (z, y, x)
    stop: np.ndarray | None = None

    @property
    def moved(self) -> bool:
        return not np.allclose(self.motion, np.eye(4))


def box_in_grid(geom: Volume, shape_zyx, canon_to_world: np.ndarray, box_mm: np.ndarray,
                margin_vox: int = 2):
    """Index box (start, stop) (z, y, x) on the CT covering a canonical box, or None."""
    lo, hi = box_mm
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    world = corners @ canon_to_world[:3, :3].T + canon_to_world[:3, 3]
    idx = geom.world_to_index(world)
    start = np.maximum(np.floor(idx.min(axis=0)).astype(int) - margin_vox, 0)
    stop = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 1 + margin_vox, np.asarray(shape_zyx))
    if np.any(stop <= start):
        return None
    return start, stop


def make_texture(rng: np.random.Generator, box_mm, res_mm: float) -> tuple[Grid, Grid]:
    """Cancellous texture: fine white noise (trilinear) plus a coarse smooth variation."""
    lo, hi = np.asarray(box_mm, float)
    n = np.ceil((hi - lo) / res_mm).astype(int) + 1
    fine = Grid(rng.standard_normal((n[2], n[1], n[0]), dtype=np.float32), lo, res_mm)
    cres = 8.0
    nc = np.ceil((hi - lo) / cres).astype(int) + 1
    coarse = ndimage.gaussian_filter(rng.standard_normal((nc[2], nc[1], nc[0]), dtype=np.float32), 1.0)
    coarse /= max(float(coarse.std()), 1e-6)
    return fine, Grid(coarse.astype(np.float32), lo, cres)


def _coverages(sdf: np.ndarray, w: float, cortex_mm: float):
    """Bone coverage and cortical coverage of a voxel ``w`` mm wide across the surface."""
    w = np.float32(w)
    alpha = np.clip(np.float32(0.5) - sdf / w, 0, 1)
    cortex = np.clip(np.minimum(sdf + w / 2, 0) - np.maximum(sdf - w / 2, -np.float32(cortex_mm)), 0, None) / w
    return alpha, np.minimum(cortex, alpha)


def render_group(g: Group, geom: Volume, world_to_canon: np.ndarray, texture: tuple[Grid, Grid],
                 w: float, tex_hu: float, acc_a: np.ndarray, acc_h: np.ndarray,
                 labels: np.ndarray, ustart: np.ndarray, crop: bool = True) -> None:
    """Add the group's bone coverage and HU to the accumulators; write its labels.

    The distance field is resampled (SimpleITK, linear, multi-threaded) onto the CT voxels
    of the group's box; voxels within half a voxel of the bone are then evaluated
    exactly. ``acc_a``, ``acc_h`` cover the CT box starting at ``ustart``; ``labels`` is the
    whole CT label array, written with provisional ids ``first_label(bone) + fragment``
    where the voxel centre is inside the fragment. ``crop=False`` resamples onto the whole
    CT instead of the box: the reference that ``benchmarks/bench_phantom.py`` times.
    """
    to_source = np.linalg.inv(g.motion) @ world_to_canon  # world -> un-moved canonical
    idx_to_q = to_source @ geom.index_to_world_matrix()
    start = g.start if crop else np.zeros(3, int)
    stop = g.stop if crop else np.asarray(labels.shape)
    box = resample_to_ct(g.grid, to_source, geom, stop - start, FAR_MM, start_zyx=start)
    local = np.nonzero(box < np.float32(w / 2))
    d_bone = box[local]
    del box
    vox = np.stack(local, axis=1).astype(np.int32) + start.astype(np.int32)
    q = vox.astype(np.float32) @ idx_to_q[:3, :3].T.astype(np.float32) + idx_to_q[:3, 3].astype(np.float32)
    if vox.size == 0:
        return
    cov = np.ones(len(q), dtype=np.float32)
    frag = None
    members = np.array(g.members)
    if g.plan is not None and g.plan.n_fragments > 1:
        frag, dist, nearest = g.plan.assign(q)
        own = np.isin(frag, members)
        gaps = np.array([sp.gap_mm for sp in g.plan.splits], dtype=np.float32)
        cov = np.where(own, np.clip(np.float32(0.5) + dist / np.float32(w), 0, 1), np.float32(0))
        edge = np.flatnonzero((nearest >= 0) & (dist < np.float32(w)))
        if edge.size:
            other, _, _ = g.plan.assign(q[edge], nearest[edge].astype(np.int16))
            nb = np.isin(other, members)
            extra = np.clip(np.float32(0.5) - (dist[edge] + gaps[nearest[edge]]) / np.float32(w), 0, 1)
            cov[edge] += np.where(nb, extra, np.float32(0))
    s = g.structure
    alpha, cortex = _coverages(d_bone, w, s.cortex_mm)
    fine, coarse = texture
    tex = fine.sample(q, 0.0) + np.float32(0.5) * coarse.sample(q, 0.0)
    canc = np.float32(s.cancellous_hu) + np.float32(tex_hu) * tex
    hu = np.float32(s.cortex_hu) * cortex + canc * (alpha - cortex)
    keep = cov > 0
    loc = tuple((vox[keep] - ustart.astype(np.int32)).T)
    acc_a[loc] += (alpha * cov)[keep]
    acc_h[loc] += (hu * cov)[keep]
    if s.bone:
        inside = d_bone < 0
        if frag is not None:
            inside &= np.isin(frag, members)
            ids = np.uint8(first_label(s.bone)) + frag[inside].astype(np.uint8)
        else:
            ids = np.uint8(first_label(s.bone))
        labels[tuple(vox[inside].T)] = ids


def clean_labels(labels: np.ndarray) -> None:
    """In place: one 26-connected component per label; stray pieces join the fragment of the
    same bone they touch most, or become background."""
    stats = cc3d.statistics(labels)
    boxes = stats["bounding_boxes"]
    counts = stats["voxel_counts"]
    for lab in range(1, len(counts)):
        if counts[lab] == 0:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in boxes[lab])
        sub = labels[box]
        cc, n = cc3d.connected_components(sub == lab, connectivity=26, return_N=True)
        if n <= 1:
            continue
        sizes = np.bincount(cc.ravel())
        sizes[0] = 0
        keep = int(np.argmax(sizes))
        bone = bone_of_label(lab)
        for c in range(1, n + 1):
            if c == keep:
                continue
            piece = cc == c
            ring = ndimage.binary_dilation(piece, np.ones((3, 3, 3), bool)) & ~piece
            nb = sub[ring]
            nb = nb[(nb > 0) & (nb != lab) & (bone_of_labels(nb) == bone)]
            sub[piece] = np.bincount(nb).argmax() if nb.size else 0


def rank_labels(labels: np.ndarray) -> dict[int, dict[int, int]]:
    """In place: renumber provisional labels to PENGWIN ids, largest first per bone.

    Provisional labels are ``first_label(bone) + fragment``. Returns
    {bone: {provisional: final}}.
    """
    nz = np.nonzero(labels)
    values = labels[nz]
    counts = np.bincount(values, minlength=MAX_LABEL + 1)
    lut = np.zeros(256, dtype=np.uint8)
    mapping: dict[int, dict[int, int]] = {}
    for bone in BONES:
        base = first_label(bone)
        present = [lab for lab in range(base, base + MAX_FRAGMENTS_PER_BONE) if counts[lab] > 0]
        present.sort(key=lambda lab: (-counts[lab], lab))
        mapping[bone] = {lab: base + rank for rank, lab in enumerate(present)}
        for lab, new in mapping[bone].items():
            lut[lab] = new
    labels[nz] = lut[values]
    return mapping
