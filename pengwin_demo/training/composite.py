"""Real pelvic bones in synthetic bodies: training cases for the anatomy (Stage 1) model.

The real fractured pelves we can train on are bone-masked: the CT is 0 HU outside the
bones. An anatomy model must find those bones in a whole CT, among soft tissue, gas,
contrast, the table, the lumbar spine and the femurs. :func:`composite_case` puts one real
pelvis (its own voxels, untouched) into a body drawn around it:

- an elliptic body of muscle with a fat layer and fat streaks, air around it, a table;
- bowel loops (gas, fluid), a bladder (sometimes with contrast), contrast-filled iliac
  vessels;
- distractor bone with the case's own bone intensities: femurs whose heads sit in the
  real acetabula, and lumbar vertebrae stacked on the real sacrum;
- in some bodies, fatty marrow: the real bones' cancellous interior blended towards fat
  and soft-tissue values in patches, as in the osteoporotic bone of older patients (whose
  pelves fracture most), while the cortex keeps its values. In real scans such marrow
  reads -50 to 50 HU deep inside the sacrum and iliac wings, and it is bone.

The labels are the real bones only, so the model learns that femurs and vertebrae are
background. A mirrored copy swaps left and right labels with the image, so sides stay
honest. Everything is on an LPS grid of about 2 mm; the model resamples to its own spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, signal

from ..labels import MAX_FRAGMENTS_PER_BONE, first_label
from ..volume import Volume, bounding_box, resample_onto

__all__ = ["CompositeOptions", "composite_case", "pelvis_box_crop", "pelvis_free_crop", "mirror_case"]

AIR_HU = -1000.0


@dataclass(frozen=True)
class CompositeOptions:
    """Ranges the random body is drawn from (mm, HU).

    inplane_mm, slice_mm : voxel size ranges of the composite grid.
    below_mm, above_mm : body length drawn below and above the pelvic bones.
    fov_mm : in-plane field of view range.
    fatty_marrow_probability : share of bodies whose real bones get fatty marrow.
    marrow_hu : range of the fatty marrow's own value, HU.
    """

    inplane_mm: tuple[float, float] = (1.6, 2.4)
    slice_mm: tuple[float, float] = (1.6, 3.0)
    below_mm: tuple[float, float] = (20.0, 160.0)
    above_mm: tuple[float, float] = (20.0, 220.0)
    fov_mm: tuple[float, float] = (340.0, 460.0)
    fatty_marrow_probability: float = 0.5
    marrow_hu: tuple[float, float] = (-80.0, 30.0)

    def __post_init__(self) -> None:
        # a range the wrong way round or a share outside [0, 1] would draw wrong bodies silently
        lowest = {"inplane_mm": 1e-6, "slice_mm": 1e-6, "below_mm": 0.0, "above_mm": 0.0,
                  "fov_mm": 1e-6, "marrow_hu": -1024.0}
        for name, floor in lowest.items():
            low, high = getattr(self, name)
            if not floor <= low <= high:
                raise ValueError(f"CompositeOptions.{name} must be a range (low, high) with "
                                 f"{floor:g} <= low <= high, not {(low, high)}")
        if not 0.0 <= self.fatty_marrow_probability <= 1.0:
            raise ValueError("CompositeOptions.fatty_marrow_probability must lie between 0 and 1, "
                             f"not {self.fatty_marrow_probability}")


@dataclass
class _Canvas:
    """The composite grid and its world coordinates (LPS mm, broadcastable z, y, x)."""

    geom: Volume
    z: np.ndarray
    y: np.ndarray
    x: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.geom.shape

    @property
    def spacing(self) -> np.ndarray:
        return np.asarray(self.geom.spacing_zyx_mm)


def _bone_box_world(labels: Volume) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) world corners (x, y, z LPS mm) of the labelled bone."""
    box = bounding_box(labels.array > 0)
    corners = np.array([[z, y, x] for z in (box[0].start, box[0].stop - 1) for y in (box[1].start, box[1].stop - 1)
                        for x in (box[2].start, box[2].stop - 1)], float)
    world = labels.index_to_world(corners)
    return world.min(0), world.max(0)


def _make_canvas(lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator, opt: CompositeOptions) -> _Canvas:
    sxy = rng.uniform(*opt.inplane_mm)
    sz = rng.uniform(*opt.slice_mm)
    fov = max(rng.uniform(*opt.fov_mm), float(max(hi[:2] - lo[:2])) + 60)
    nxy = int(np.ceil(fov / sxy))
    z_lo = lo[2] - rng.uniform(*opt.below_mm)
    z_hi = hi[2] + rng.uniform(*opt.above_mm)
    nz = int(np.ceil((z_hi - z_lo) / sz)) + 1
    centre = (lo + hi) / 2 + np.r_[rng.normal(0, 10, 2), 0.0]
    origin = np.array([centre[0] - sxy * (nxy - 1) / 2, centre[1] - sxy * (nxy - 1) / 2, z_lo])
    geom = Volume(np.zeros((nz, nxy, nxy), np.uint8), (sz, sxy, sxy), tuple(origin), np.eye(3))
    z = (origin[2] + sz * np.arange(nz))[:, None, None]
    y = (origin[1] + sxy * np.arange(nxy))[None, :, None]
    x = (origin[0] + sxy * np.arange(nxy))[None, None, :]
    return _Canvas(geom, z, y, x)


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox: float) -> np.ndarray:
    """Unit-variance smooth noise (float32)."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox)
    return n / max(float(n.std()), 1e-6)


def _ellipsoid(cv: _Canvas, centre, radii) -> np.ndarray:
    return (((cv.x - centre[0]) / radii[0]) ** 2 + ((cv.y - centre[1]) / radii[1]) ** 2
            + ((cv.z - centre[2]) / radii[2]) ** 2) <= 1


def _segment_distance(cv: _Canvas, p0, p1) -> np.ndarray:
    """Distance (mm) of every voxel from the segment p0-p1 (x, y, z world mm)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    t = ((cv.x - p0[0]) * d[0] + (cv.y - p0[1]) * d[1] + (cv.z - p0[2]) * d[2]) / max(d @ d, 1e-9)
    t = np.clip(t, 0, 1)
    return np.sqrt((cv.x - p0[0] - t * d[0]) ** 2 + (cv.y - p0[1] - t * d[1]) ** 2
                   + (cv.z - p0[2] - t * d[2]) ** 2)


# -- soft tissue ---------------------------------------------------------------------


def _body(cv: _Canvas, lo, hi, rng) -> tuple[np.ndarray, np.ndarray, dict]:
    """Muscle, fat and air; returns (hu, body mask, body geometry)."""
    half_width = (hi[0] - lo[0]) / 2
    cx = (lo[0] + hi[0]) / 2 + rng.normal(0, 4)
    cy = (lo[1] + hi[1]) / 2 - rng.uniform(0, 25)  # the belly lies anterior (LPS -y) of the pelvis
    ax = half_width * rng.uniform(1.1, 1.45) + rng.uniform(10, 40)
    ay = (hi[1] - lo[1]) / 2 * rng.uniform(1.1, 1.5) + rng.uniform(15, 50)
    r = np.sqrt(((cv.x - cx) / ax) ** 2 + ((cv.y - cy) / ay) ** 2)
    r = np.broadcast_to(r, cv.shape)
    depth_mm = (1 - r) * min(ax, ay)  # approximate depth below the skin
    body = depth_mm > 0
    fat_mm = rng.uniform(6, 45)
    sp = cv.spacing
    hu = np.full(cv.shape, AIR_HU, np.float32)
    muscle_hu, fat_hu = rng.uniform(30, 65), rng.uniform(-125, -80)
    streaks = _smooth_noise(rng, cv.shape, 3.0 / sp.mean() * 2) > rng.uniform(1.4, 2.4)
    fat = body & ((depth_mm < fat_mm) | streaks)
    hu[body] = muscle_hu
    hu[fat] = fat_hu
    hu += body * _smooth_noise(rng, cv.shape, 1.5) * rng.uniform(4, 12)
    geometry = {"cx": cx, "cy": cy, "ax": ax, "ay": ay, "skin_y_posterior": cy + ay}
    return hu, body, geometry


def _organs(cv: _Canvas, hu: np.ndarray, body: np.ndarray, lo, hi, g: dict, rng) -> None:
    """Bowel loops, bladder and contrast vessels, painted into ``hu`` inside the body."""
    cx, cy = g["cx"], g["cy"]
    z_inlet = lo[2] + 0.55 * (hi[2] - lo[2])
    for _ in range(rng.integers(6, 20)):  # bowel loops in the belly and the false pelvis
        c = (cx + rng.normal(0, g["ax"] * 0.35), cy - rng.uniform(0, g["ay"] * 0.6),
             rng.uniform(z_inlet - 30, cv.z.max()))
        loop = _ellipsoid(cv, c, rng.uniform(10, 30, 3)) & body
        kind = rng.random()
        hu[loop] = (rng.uniform(-1000, -700) if kind < 0.4 else rng.uniform(-60, 40) if kind < 0.85
                    else rng.uniform(150, 450))  # gas, fluid or oral contrast
    if rng.random() < 0.8:  # bladder behind the pubis
        c = (cx + rng.normal(0, 6), lo[1] + rng.uniform(25, 45), lo[2] + rng.uniform(20, 55))
        hu[_ellipsoid(cv, c, rng.uniform(20, 45, 3)) & body] = (
            rng.uniform(0, 25) if rng.random() < 0.8 else rng.uniform(200, 900))
    if rng.random() < 0.5:  # contrast-filled aorta and iliac arteries
        vessel_hu = rng.uniform(150, 400)
        top = (cx + rng.normal(0, 5), (lo[1] + hi[1]) / 2 - rng.uniform(10, 30), cv.z.max())
        fork = (top[0], top[1], hi[2] - rng.uniform(0, 30))
        dist = _segment_distance(cv, top, fork) < rng.uniform(8, 12)
        for side in (-1, 1):
            end = (cx + side * rng.uniform(50, 80), lo[1] + rng.uniform(10, 40), lo[2] + rng.uniform(0, 30))
            dist |= _segment_distance(cv, fork, end) < rng.uniform(4, 6)
        hu[dist & body] = vessel_hu


def _table(cv: _Canvas, hu: np.ndarray, g: dict, rng) -> None:
    """A patient table under the back (posterior, LPS +y)."""
    if rng.random() < 0.2:
        return
    top = g["skin_y_posterior"] + rng.uniform(0, 15)
    thick = rng.uniform(8, 30)
    half = rng.uniform(180, 260)
    slab = (cv.y >= top) & (cv.y < top + thick) & (np.abs(cv.x - g["cx"]) < half)
    slab = np.broadcast_to(slab, cv.shape)
    rim = slab & ((cv.y < top + 2.5) | (cv.y >= top + thick - 2.5))
    hu[slab] = rng.uniform(-300, -50)
    hu[np.broadcast_to(rim, cv.shape)] = rng.uniform(200, 900)


# -- distractor bone ------------------------------------------------------------------


@dataclass(frozen=True)
class _BoneLook:
    """Intensities of distractor bone, taken from the real case's own bone (HU)."""

    cortex: float
    cancellous: float
    spread: float


def _bone_look(real_hu: np.ndarray, rng) -> _BoneLook:
    p50, p90 = np.percentile(real_hu, [50, 90])
    return _BoneLook(cortex=float(p90 * rng.uniform(0.85, 1.15)),
                     cancellous=float(p50 * rng.uniform(0.85, 1.15)),
                     spread=float(max(np.std(real_hu) * 0.3, 20)))


def _paint_bone(cv: _Canvas, hu: np.ndarray, mask: np.ndarray, look: _BoneLook, rng,
                hollow: np.ndarray | None = None) -> None:
    """Cortical shell (about 2 mm) and cancellous interior over ``mask``."""
    if not mask.any():
        return
    depth = ndimage.distance_transform_edt(mask, sampling=cv.spacing)
    inner = _smooth_noise(rng, mask.shape, 1.0) * look.spread + look.cancellous
    val = np.where(depth <= 2.2, look.cortex, inner)
    if hollow is not None:
        val = np.where(hollow & (depth > 2.2), rng.uniform(-60, 60), val)
    hu[mask] = val[mask]


CORTEX_MM = (2.5, 4.0)
"""Depth range (mm below the bone surface) kept as cortex when marrow is made fatty."""


def _fatty_marrow(cv: _Canvas, hu: np.ndarray, bone: np.ndarray, rng, marrow_hu: tuple[float, float]) -> None:
    """Blend the cancellous interior of ``bone`` (in place) towards a fatty marrow value.

    Voxels deeper than a cortex of 2.5-4 mm get ``(1 - w) * hu + w * marrow``, with ``w``
    a smooth random patchwork of 0.3-1 times a strength of 0.5-1, so that some regions
    keep most of their trabecular density and others read as fat.
    """
    depth = ndimage.distance_transform_edt(bone, sampling=cv.spacing)
    interior = depth > rng.uniform(*CORTEX_MM)
    if not interior.any():
        return
    patches = _smooth_noise(rng, bone.shape, 8.0 / cv.spacing.mean())
    weight = np.clip(0.75 + 0.35 * patches, 0.3, 1.0) * rng.uniform(0.5, 1.0)
    marrow = rng.uniform(*marrow_hu)
    hu[interior] = (1 - weight[interior]) * hu[interior] + weight[interior] * marrow


def _acetabulum_centre(hip: np.ndarray, cv: _Canvas, side: int) -> np.ndarray | None:
    """Centre (x, y, z mm) of the socket of one hip bone: the point off the bone that the
    bone surrounds most at femoral-head distance (a shell of radius 22-30 mm)."""
    if hip.sum() < 100:
        return None
    sp = cv.spacing
    r_out, r_in = 30.0, 20.0
    half = np.ceil(r_out / sp).astype(int)
    gz, gy, gx = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, sp)], indexing="ij")
    rr = np.sqrt(gz ** 2 + gy ** 2 + gx ** 2)
    shell = ((rr >= r_in) & (rr <= r_out)).astype(np.float32)
    score = signal.fftconvolve(hip.astype(np.float32), shell, mode="same")
    dist = ndimage.distance_transform_edt(~hip, sampling=sp)
    idx = np.argwhere(hip)
    zlo, zhi = idx[:, 0].min(), idx[:, 0].max()
    xlo, xhi = idx[:, 2].min(), idx[:, 2].max()
    ok = (dist >= 14) & (dist <= 30)
    zz = np.arange(hip.shape[0])[:, None, None]
    xx = np.arange(hip.shape[2])[None, None, :]
    ok &= zz <= zlo + 0.55 * (zhi - zlo)  # the socket is in the lower half of the bone
    xmid = (xlo + xhi) / 2
    ok &= (xx >= xmid) if side > 0 else (xx <= xmid)  # and in its lateral half
    if not ok.any():
        return None
    k = np.unravel_index(np.argmax(np.where(ok, score, -1)), hip.shape)
    return np.array([cv.x.ravel()[k[2]], cv.y.ravel()[k[1]], cv.z.ravel()[k[0]]])


def _femur(cv: _Canvas, head_centre: np.ndarray, side: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Femur mask (head, neck, trochanter, shaft) and its medullary canal.

    ``side`` is +1 for the patient's left (LPS +x), -1 for the right.
    """
    head_r = rng.uniform(21, 26)
    neck_dir = np.array([side * 1.0, rng.uniform(-0.2, 0.2), -rng.uniform(0.45, 0.75)])
    neck_dir /= np.linalg.norm(neck_dir)
    troch = head_centre + neck_dir * rng.uniform(45, 60)
    knee = troch + np.array([-side * rng.uniform(10, 40), rng.uniform(-20, 20), -400.0])
    femur = np.sqrt(((cv.x - head_centre[0]) ** 2 + (cv.y - head_centre[1]) ** 2
                     + (cv.z - head_centre[2]) ** 2)) <= head_r
    femur = femur | (_segment_distance(cv, head_centre, troch) <= rng.uniform(13, 17))
    femur |= _ellipsoid(cv, troch + np.array([side * 6, 0, 8]), rng.uniform(14, 20, 3))
    shaft = _segment_distance(cv, troch, knee)
    shaft_r = rng.uniform(12, 15)
    femur |= shaft <= shaft_r
    below = cv.z < troch[2] - 40
    canal = (shaft <= shaft_r - rng.uniform(4, 6)) & below
    return np.broadcast_to(femur, cv.shape), np.broadcast_to(canal, cv.shape)


def _s1_top_mm(cv: _Canvas, sacrum: np.ndarray, x_mid: float) -> np.ndarray:
    """Height (world z, mm) of the sacrum's top in each row of y, over its central 20 mm
    left and right of ``x_mid``: the S1 endplate, tilted by the sacral slope. Rows without
    central sacrum take the nearest row's height. Shape (1, Y, 1), broadcastable."""
    central = sacrum & (np.abs(cv.x - x_mid) < 20)
    z_idx = np.where(central, np.arange(cv.shape[0])[:, None, None], -1).max(axis=(0, 2))
    rows = np.flatnonzero(z_idx >= 0)
    top = np.interp(np.arange(cv.shape[1]), rows, cv.z.ravel()[z_idx[rows]])
    return top[None, :, None]


def _lumbar_spine(cv: _Canvas, sacrum: np.ndarray, rng) -> np.ndarray:
    """Vertebrae (body, arch, spinous and transverse processes) stacked on the sacrum.

    The lowest body (L5) sits on the S1 endplate across a disc, its base tilted with the
    endplate, so that much of it lies below the sacrum's highest point as in real scans (a
    real chest-to-pelvis CT: 43 % of L5, its base 27 mm below the sacrum's top); higher
    bodies stack level on it.
    """
    if sacrum.sum() < 100:
        return np.zeros(cv.shape, bool)
    idx = np.argwhere(sacrum)
    top = idx[:, 0].max()
    slab = idx[idx[:, 0] >= top - max(1, int(12 / cv.spacing[0]))]
    x_mid = cv.x.ravel()[int(np.median(slab[:, 2]))]
    central = slab[np.abs(cv.x.ravel()[slab[:, 2]] - x_mid) < 20]
    y_front = cv.y.ravel()[central[:, 1].min() if len(central) else slab[:, 1].min()]
    rx, ry = rng.uniform(21, 27), rng.uniform(15, 19)
    y_body = y_front + ry + rng.uniform(-3, 5)
    base = _s1_top_mm(cv, sacrum, x_mid) + rng.uniform(6, 11)  # the L5-S1 disc
    footprint = ((cv.x - x_mid) / rx) ** 2 + ((cv.y - y_body) / ry) ** 2 <= 1
    spine = np.zeros(cv.shape, bool)
    zmax = cv.z.max()
    level = 0
    z = float(np.broadcast_to(base, footprint.shape)[footprint].max()) if footprint.any() else cv.z.ravel()[top] + 8.0
    # the endplate drops by at most its sacral slope across the body's depth: not down the
    # sacrum's front face
    base = np.maximum(base, z - rng.uniform(15, 30))
    while z < zmax and level < 6:
        h = rng.uniform(24, 30)
        yb = y_body - 4 * np.sin(level * 0.5)  # a little lordosis
        ellipse = ((cv.x - x_mid) / rx) ** 2 + ((cv.y - yb) / ry) ** 2 <= 1
        bottom = np.minimum(base, z) if level == 0 else z  # L5 follows the endplate
        body = ellipse & (cv.z >= bottom) & (cv.z <= z + h)
        zc = z + h / 2
        ring_c = yb + ry + 12
        rr = np.sqrt((cv.x - x_mid) ** 2 + (cv.y - ring_c) ** 2)
        arch = (rr <= 16) & (rr >= 9) & (np.abs(cv.z - zc) <= h * 0.35)
        spinous = (np.abs(cv.x - x_mid) <= 4) & (cv.y >= ring_c) & (cv.y <= ring_c + 38) & (
            np.abs(cv.z - zc + 4) <= 8)
        span = rng.uniform(30, 50) if level else rng.uniform(45, 60)
        transverse = (np.abs(cv.x - x_mid) <= span) & (np.abs(cv.y - ring_c + 6) <= 6) & (
            np.abs(cv.z - zc) <= 6)
        spine |= body | arch | spinous | transverse
        z += h + rng.uniform(7, 11)
        rx, ry = rx * rng.uniform(0.95, 1.0), ry * rng.uniform(0.95, 1.0)
        level += 1
    return spine


# -- the case -------------------------------------------------------------------------


def composite_case(ct: Volume, labels: Volume, rng: np.random.Generator,
                   options: CompositeOptions = CompositeOptions()) -> tuple[Volume, Volume]:
    """One real bone-masked pelvis inside a random synthetic body.

    Parameters
    ----------
    ct : Volume
        Bone-masked CT (HU; anything outside the bones is ignored).
    labels : Volume
        PENGWIN labels on the CT's grid (1-10 sacrum, 11-20 left hip, 21-30 right hip).
    rng : numpy.random.Generator
        Source of every random choice (same state, same case).

    Returns
    -------
    (Volume, Volume)
        int16 HU CT and uint8 PENGWIN labels on a new LPS grid of about 2 mm, the real
        bone voxels resampled (linear for the CT, nearest for the labels).
    """
    lo, hi = _bone_box_world(labels)
    cv = _make_canvas(lo, hi, rng, options)
    lab = resample_onto(labels, cv.geom, "nearest").array
    real = resample_onto(ct.with_array(ct.array.astype(np.float32)), cv.geom, "linear").array
    bone = lab > 0
    hu, body, g = _body(cv, lo, hi, rng)
    _organs(cv, hu, body, lo, hi, g, rng)
    _table(cv, hu, g, rng)
    look = _bone_look(real[bone], rng)
    keep_off = ndimage.binary_dilation(bone, iterations=2)  # a joint space between bones
    sacrum = (lab >= 1) & (lab <= MAX_FRAGMENTS_PER_BONE)
    spine = _lumbar_spine(cv, sacrum, rng) & ~keep_off
    _paint_bone(cv, hu, spine, look, rng)
    for bone_id, side in ((2, +1), (3, -1)):
        first = first_label(bone_id)
        hip = (lab >= first) & (lab < first + MAX_FRAGMENTS_PER_BONE)
        centre = _acetabulum_centre(hip, cv, side)
        if centre is None:
            continue
        femur, canal = _femur(cv, centre, side, rng)
        femur = femur & ~keep_off
        _paint_bone(cv, hu, femur, look, rng, hollow=canal)
    hu[bone] = real[bone]
    if rng.random() < options.fatty_marrow_probability:
        _fatty_marrow(cv, hu, bone, rng, options.marrow_hu)
    hu += rng.normal(0, rng.uniform(2, 15), hu.shape).astype(np.float32)
    out_ct = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return cv.geom.with_array(out_ct), cv.geom.with_array(lab.astype(np.uint8))


def mirror_case(ct: Volume, labels: Volume) -> tuple[Volume, Volume]:
    """Flip an LPS-identity case left-right and swap the hip labels with it.

    The mirrored patient is anatomically plausible (left and right hip trade places), so
    it doubles the data without teaching the model a wrong side.
    """
    if not np.allclose(ct.direction, np.eye(3)):
        raise ValueError("mirror_case needs an identity (LPS) direction")
    lab = labels.array[:, :, ::-1].copy()
    swapped = lab.copy()
    left = (lab >= first_label(2)) & (lab < first_label(2) + MAX_FRAGMENTS_PER_BONE)
    right = (lab >= first_label(3)) & (lab < first_label(3) + MAX_FRAGMENTS_PER_BONE)
    swapped[left] = lab[left] + MAX_FRAGMENTS_PER_BONE
    swapped[right] = lab[right] - MAX_FRAGMENTS_PER_BONE
    return ct.with_array(ct.array[:, :, ::-1].copy()), labels.with_array(swapped)


def pelvis_free_crop(ct: Volume, labels: Volume, min_slices: int = 24) -> tuple[Volume, Volume] | None:
    """The part of a composite above the pelvic bones (spine, belly, no label), or None
    when fewer than ``min_slices`` slices lie above them: a negative example."""
    z_bone = np.nonzero(labels.array.any(axis=(1, 2)))[0]
    start = int(z_bone.max()) + 1 if len(z_bone) else 0
    if ct.shape[0] - start < min_slices:
        return None
    box = (slice(start, ct.shape[0]), slice(0, ct.shape[1]), slice(0, ct.shape[2]))
    return ct.crop(box), labels.crop(box)


def pelvis_box_crop(ct: Volume, labels: Volume, rng: np.random.Generator,
                    margin_mm: tuple[float, float] = (10.0, 50.0)) -> tuple[Volume, Volume]:
    """A composite cut to its pelvic bones' box plus a random margin on each of the six sides.

    What the pipeline's refining anatomy model sees: the first anatomy model's bone box,
    padded (:data:`pengwin_demo.pipeline.ANATOMY_REFINE_MARGIN_MM`). That box is off by a
    voxel or two of the coarse model and may reach into the lowest lumbar vertebra or the
    femurs; the random margins cover both.

    Parameters
    ----------
    margin_mm : (float, float)
        Range each side's margin is drawn from, mm.
    """
    box = bounding_box(labels.array > 0)
    if box is None:
        raise ValueError("pelvis_box_crop needs a composite with labelled bone")
    spacing = np.asarray(ct.spacing_zyx_mm)
    lo = [max(0, s.start - int(round(rng.uniform(*margin_mm) / sp))) for s, sp in zip(box, spacing)]
    hi = [min(n, s.stop + int(round(rng.uniform(*margin_mm) / sp))) for s, sp, n in zip(box, spacing, ct.shape)]
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    return ct.crop(crop), labels.crop(crop)
