"""Pelvic anatomy of the phantom as signed distance fields in a canonical patient frame.

Canonical frame: LPS millimetres (+x the patient's left, +y posterior, +z superior) with
the origin between the hip joint centres. Global size, pose and the stored image
orientation are applied later (see :mod:`.generate`); here live the shapes:

* sacrum: curved, tapering wedge (wide alae on top, tip below), sacral canal and four
  pairs of anterior foramina, S1 endplate on top;
* each hip bone: iliac wing as a curved plate that is only 2-6 mm thick in the fossa,
  crest rim, anterior and posterior borders, thick posterior ilium carved to the sacrum
  with a sacroiliac joint gap, acetabular cup, ischium with tuberosity and ramus,
  superior and inferior pubic rami, pubic body cut at the symphysis gap;
* unlabelled bone that must stay background: L5 vertebra above the sacrum (disc gap)
  and both femoral heads, necks, trochanters and shafts (hip joint gap).

Each :class:`Structure` paints its distance field into a canonical grid, crop first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import sdf

SACRUM, LEFT_HIP, RIGHT_HIP = 1, 2, 3
"""Anatomy ids of the labelled bones (0 = unlabelled bone such as L5 and the femurs)."""


@dataclass(frozen=True)
class Structure:
    """One bone of the phantom.

    Attributes
    ----------
    name : str
    bone : int
        Anatomy id: 1 sacrum, 2 left hip, 3 right hip, 0 unlabelled (L5, femur).
    box_mm : ndarray, shape (2, 3)
        Canonical bounding box, rows min and max, columns (x, y, z) mm; the shape lies
        inside it with a margin.
    paint : callable
        ``paint(canvas)`` draws the signed distance (mm, negative inside) into a
        :class:`~pengwin_demo.phantom.sdf.Canvas`.
    cortex_mm : float
        Cortical shell thickness (mm).
    cortex_hu, cancellous_hu : float
        Mean HU of the shell and of the inner bone.
    """

    name: str
    bone: int
    box_mm: np.ndarray
    paint: Callable
    cortex_mm: float
    cortex_hu: float
    cancellous_hu: float


@dataclass(frozen=True)
class AnatomyParams:
    """Random anatomy parameters (mm, degrees) drawn by :func:`sample_anatomy`."""

    side_scale: tuple[float, float]  # (left, right) asymmetry factors
    hip_centre: tuple[float, float, float]  # left hip joint centre (x, y, z), mirrored for right
    head_radius: float
    hip_gap: float
    si_gap: float
    symphysis_gap: float
    disc_gap: float
    wing_thin: tuple[float, float]  # thinnest iliac wing (left, right), mm
    wing_flare: tuple[float, float]  # tan of the flare angle (left, right)
    sacral_tilt_deg: float
    sacrum_length: float
    sacrum_width: float
    cortex_mm: float
    cortex_hu: float
    cancellous_hu: float
    extras: dict = field(default_factory=dict)


def sample_anatomy(rng: np.random.Generator) -> AnatomyParams:
    """Draw one set of anatomy parameters."""
    u = rng.uniform
    return AnatomyParams(
        side_scale=(1 + u(-0.035, 0.035), 1 + u(-0.035, 0.035)),
        hip_centre=(u(80, 90), u(-12, -4), 0.0),
        head_radius=u(21.5, 25.5),
        hip_gap=u(2.0, 3.5),
        si_gap=u(1.8, 3.5),
        symphysis_gap=u(3.5, 6.0),
        disc_gap=u(8.0, 12.0),
        wing_thin=(u(2.0, 3.5), u(2.0, 3.5)),
        wing_flare=(u(0.25, 0.42), u(0.25, 0.42)),
        sacral_tilt_deg=u(40, 52),
        sacrum_length=u(82, 95),
        sacrum_width=u(48, 56),
        cortex_mm=u(1.0, 2.0),
        cortex_hu=u(1100, 1700),
        cancellous_hu=u(170, 360),
    )


# -- sacrum -------------------------------------------------------------------------


def _sacral_frame(a: AnatomyParams):
    """Top centre S (x, y, z), long axis e_b (down the sacrum), AP axis e_a (posterior)."""
    t = np.deg2rad(a.sacral_tilt_deg)
    top = np.array([0.0, 44.0, 46.0])
    e_b = np.array([0.0, np.sin(t), -np.cos(t)])
    e_a = np.array([0.0, np.cos(t), np.sin(t)])
    return top, e_b, e_a


def _sacral_local(p, a: AnatomyParams):
    """Local sacral coordinates: |x| (mm), b along the length, a' across (from the midline curve)."""
    x, y, z = p
    top, e_b, e_a = _sacral_frame(a)
    dy, dz = y - np.float32(top[1]), z - np.float32(top[2])
    b = dy * np.float32(e_b[1]) + dz * np.float32(e_b[2])
    ap = dy * np.float32(e_a[1]) + dz * np.float32(e_a[2])
    curve = np.float32(-0.0035) * np.clip(b, 0, None) ** 2  # concave anteriorly
    return x, b, ap - curve


def sacrum_distance(p, a: AnatomyParams):
    """Signed distance (mm) of the sacrum: tapering curved wedge with canal and foramina."""
    x, b, ap = _sacral_local(p, a)
    length = np.float32(a.sacrum_length)
    t = np.clip(b / length, 0, 1)
    # half width: broad alae for the top ~35 %, then tapering to the tip
    w = np.float32(12) + np.float32(a.sacrum_width - 12) * np.clip(1 - (t - 0.3) / 0.7, 0, 1) ** 1.3
    w = np.where(t < 0.3, np.float32(a.sacrum_width) - np.float32(4) * (0.3 - t) / 0.3, w)
    h = np.float32(6) + np.float32(17) * (1 - t)  # AP half thickness
    # thicker vertebral body in the middle, thinner alae
    h = h * (np.float32(0.7) + np.float32(0.3) * np.exp(-((x / np.float32(22)) ** 2)))
    r = np.minimum(np.minimum(w, h) * np.float32(0.6), np.float32(8))
    qx = np.abs(x) - w + r
    qa = np.abs(ap) - h + r
    cross = sdf.length(np.maximum(qx, 0), np.maximum(qa, 0), np.float32(0)) + np.minimum(
        np.maximum(qx, qa), 0
    ) - r
    d = np.maximum(cross, np.maximum(-b, b - length))
    # sacral canal: tube behind the bodies, narrowing downwards
    canal_r = np.float32(8.5) - np.float32(5) * t
    canal = sdf.length(x, ap - (h * np.float32(0.45)), np.float32(0)) - canal_r
    canal = np.where(t < 0.85, canal, np.float32(50))
    d = np.maximum(d, -canal)
    # four pairs of anterior sacral foramina, through the AP direction
    for i, bf in enumerate((0.2, 0.38, 0.56, 0.72)):
        rf = np.float32(5.0 - 0.6 * i)
        xf = np.float32(19 - 2 * i)
        hole = sdf.length(np.abs(x) - xf, b - np.float32(bf * a.sacrum_length), np.float32(0)) - rf
        hole = np.maximum(hole, ap - h * np.float32(0.2))  # anterior half only
        d = np.maximum(d, -hole)
    return d


# -- hip bone -----------------------------------------------------------------------


def _hip_landmarks(a: AnatomyParams, side: int) -> dict:
    """Landmarks of one hip bone in mirrored coordinates (u = side * x), mm."""
    s = a.side_scale[0 if side > 0 else 1]
    H = np.array(a.hip_centre)
    L = {
        "H": H,
        "cup_top": H + [-5, 5, 18],
        "si": np.array([56.0, 58.0, 26.0]),
        "asis": np.array([118.0, -38.0, 58.0]),
        "aiis": H + [14, -22, 24],
        "psis": np.array([52.0, 74.0, 62.0]),
        "si_low": np.array([56.0, 46.0, 4.0]),
        "isch_top": H + [-6, 18, -20],
        "tuber": H + [-16, 32, -74],
        "isch_join": np.array([46.0, -12.0, -86.0]),
        "pub_low": np.array([8.0, -44.0, -56.0]),
        "pub_top": np.array([8.0, -50.0, -24.0]),
        "ramus_start": H + [-16, -24, -6],
    }
    return {k: (v * s if k != "H" else v * s) for k, v in L.items()}


def _wing(p, a: AnatomyParams, side: int):
    """Iliac wing: curved plate, thin (2-6 mm) in the fossa, bounded by the crest."""
    x, y, z = p
    k = 0 if side > 0 else 1
    s = a.side_scale[k]
    u = x * np.float32(side)
    cx, cy, r0, z0 = 15.0 * s, -25.0 * s, 92.0 * s, 15.0 * s
    flare = np.float32(a.wing_flare[k])
    du, dv = u - np.float32(cx), y - np.float32(cy)
    r = sdf.length(du, dv, np.float32(0))
    theta = np.arctan2(dv, du)
    th0, th1 = np.deg2rad(-8.0), np.deg2rad(68.0)
    frac = np.clip((theta - th0) / (th1 - th0), 0, 1)  # 0 anterior (ASIS) .. 1 posterior
    z_low = np.float32(8.0 * s)
    z_crest = np.float32(s) * (np.float32(58) + np.float32(36) * np.sin(np.pi * frac**0.85) + 6 * frac)
    radius = np.float32(r0) + (z - np.float32(z0)) * flare
    d_r = (r - radius) / np.sqrt(1 + flare * flare)
    v = np.clip((z - z_low) / np.maximum(z_crest - z_low, 1), 0, 1)
    bump = np.sqrt(np.clip(np.sin(np.pi * frac) * np.sin(np.pi * v), 0, 1))
    thin, edge = np.float32(a.wing_thin[k]), np.float32(10.0)
    thick = thin + (edge - thin) * (1 - bump)
    plate = np.abs(d_r) - thick / 2
    bounds = np.maximum(
        np.maximum((np.float32(th0) - theta) * r, (theta - np.float32(th1)) * r),
        np.maximum(z - z_crest, z_low - z),
    )
    return np.maximum(plate, bounds), (cx, cy, r0, z0, float(flare), th0, th1, s)


def _crest_points(wing_geom, side: int, n: int = 9, z_override: float | None = None):
    cx, cy, r0, z0, flare, th0, th1, s = wing_geom
    pts = []
    for f in np.linspace(0.0, 1.0, n):
        th = th0 + f * (th1 - th0)
        zc = s * (58 + 36 * np.sin(np.pi * f**0.85) + 6 * f) if z_override is None else z_override
        rad = r0 + (zc - z0) * flare
        pts.append(np.array([side * (cx + rad * np.cos(th)), cy + rad * np.sin(th), zc]))
    return pts


def paint_hip(cv: sdf.Canvas, a: AnatomyParams, side: int, sacrum_fn: Callable, sacrum_box) -> None:
    """Paint one hip bone (``side`` +1 left at +x, -1 right) into ``cv`` (signed distance, mm)."""
    mirror = np.array([side, 1.0, 1.0])
    marks = {name: v * mirror for name, v in _hip_landmarks(a, side).items()}
    crest = _paint_wing(cv, a, side)
    _paint_hip_body(cv, marks, crest)
    r_cup = _paint_cup(cv, a, side, marks["H"])
    _paint_ischium_and_pubis(cv, marks)
    _cut_hip_joint_gaps(cv, a, side, marks["H"], r_cup, sacrum_fn, sacrum_box)


def _cap(cv: sdf.Canvas, p0, p1, r0: float, r1: float, k: float) -> None:
    """Smooth union (``k`` mm) of a tapered capsule from ``p0`` (radius ``r0``) to ``p1``."""
    lo, hi = sdf.capsule_box(p0, p1, max(r0, r1))
    cv.union(lambda p: sdf.capsule(p, p0, p1, r0, r1), lo, hi, k)


def _paint_wing(cv: sdf.Canvas, a: AnatomyParams, side: int) -> list[np.ndarray]:
    """The iliac wing: a thin curved plate with its crest rim. Returns the crest points."""
    _, geom = _wing((np.zeros(1, np.float32),) * 3, a, side)
    crest = _crest_points(geom, side)
    lower = _crest_points(geom, side, z_override=8.0 * geom[-1])
    ext = np.array(crest + lower)
    lo, hi = ext.min(0) - 8, ext.max(0) + 8
    cv.union(lambda p: _wing(p, a, side)[0], lo, hi)
    radii = [6.5, 5.0, 4.5, 4.5, 4.5, 4.5, 5.0, 6.0, 8.0]
    for i in range(len(crest) - 1):
        _cap(cv, crest[i], crest[i + 1], radii[i], radii[i + 1], 3.0)
    return crest


def _paint_hip_body(cv: sdf.Canvas, marks: dict, crest: list[np.ndarray], k: float = 6.0) -> None:
    """Anterior border ASIS -> AIIS -> cup; thick body over the cup to the SI joint; posterior."""
    _cap(cv, crest[0], marks["aiis"], 6.5, 7.0, k)
    _cap(cv, marks["aiis"], marks["cup_top"], 7.0, 12.0, k)
    _cap(cv, marks["cup_top"], marks["si"], 17.0, 15.0, k)
    _cap(cv, crest[-1], marks["psis"], 8.0, 13.0, k)
    _cap(cv, marks["psis"], marks["si"], 13.0, 18.0, k)
    _cap(cv, marks["si"], marks["si_low"], 18.0, 13.0, k)


def _paint_cup(cv: sdf.Canvas, a: AnatomyParams, side: int, H: np.ndarray, k: float = 6.0) -> float:
    """The acetabular cup around the hip centre ``H``: an outer ball cut on its opening side.
    Returns the ball's radius (mm)."""
    opening = np.array([side * 0.72, -0.42, -0.55])
    opening /= np.linalg.norm(opening)
    r_cup = a.head_radius + 12.0

    def cup(p):
        x, y, z = p
        return np.maximum(
            sdf.sphere(p, H, r_cup),
            (x - H[0]) * np.float32(opening[0]) + (y - H[1]) * np.float32(opening[1])
            + (z - H[2]) * np.float32(opening[2]) - np.float32(4.0),
        )

    cv.union(cup, H - r_cup, H + r_cup, k)
    return r_cup


def _paint_ischium_and_pubis(cv: sdf.Canvas, marks: dict, k: float = 6.0) -> None:
    """Ischium with tuberosity, ischial ramus, inferior and superior pubic rami, pubic body."""
    _cap(cv, marks["isch_top"], marks["tuber"], 15.0, 12.0, k)
    rad = np.array([11.0, 14.0, 15.0])
    tuber = marks["tuber"]
    cv.union(lambda p: sdf.ellipsoid(p, tuber, rad), tuber - rad, tuber + rad, 4.0)
    _cap(cv, marks["tuber"], marks["isch_join"], 9.0, 7.0, 5.0)
    _cap(cv, marks["isch_join"], marks["pub_low"], 7.0, 8.0, 5.0)
    _cap(cv, marks["ramus_start"], marks["pub_top"], 11.0, 9.5, k)
    _cap(cv, marks["pub_top"], marks["pub_low"], 10.5, 9.0, k)


def _cut_hip_joint_gaps(cv: sdf.Canvas, a: AnatomyParams, side: int, H: np.ndarray, r_cup: float,
                        sacrum_fn: Callable, sacrum_box) -> None:
    """Socket for the femoral head (joint gap), symphysis gap, sacroiliac joint gap."""
    r_sock = a.head_radius + a.hip_gap
    cv.cut(lambda p: np.float32(r_sock) - sdf.length(p[0] - H[0], p[1] - H[1], p[2] - H[2]),
           H - r_sock, H + r_sock)
    # keep the hip joint gap to the femoral neck too (the rim must not touch it)
    r_near = r_cup + 8.0
    cv.cut(lambda p: np.float32(a.hip_gap) - femur_head_distance(p, a, side), H - r_near, H + r_near)
    g = a.symphysis_gap / 2
    big = 1e4
    sym_lo = np.array([-big if side > 0 else -g - 30, -big, -big])
    sym_hi = np.array([g + 30 if side > 0 else big, big, big])
    cv.cut(lambda p: np.float32(g) - p[0] * np.float32(side), sym_lo, sym_hi)
    cv.cut(lambda p: np.float32(a.si_gap) - sacrum_fn(p), sacrum_box[0], sacrum_box[1])


# -- unlabelled bone ----------------------------------------------------------------


def _l5_frame(a: AnatomyParams):
    """Centre and long axis of the L5 body: across the disc from S1, more upright (lordosis)."""
    top, e_b, _ = _sacral_frame(a)
    axis = np.array([0.0, -0.25, 1.0])
    axis /= np.linalg.norm(axis)
    return top - e_b * (a.disc_gap / 2) + axis * (a.disc_gap / 2 + 14.0), axis


def paint_l5(cv: sdf.Canvas, a: AnatomyParams) -> None:
    """Paint the L5 vertebra above the sacrum (body, arch, processes)."""
    c, axis = _l5_frame(a)

    def body(p):
        return np.maximum(
            sdf.ellipsoid(p, c, (26.0, 19.0, 60.0)),
            np.abs((p[0] - c[0]) * axis[0] + (p[1] - c[1]) * axis[1] + (p[2] - c[2]) * axis[2])
            - np.float32(13.5),
        )

    cv.union(body, c - 30, c + 30)
    parts = [
        ([-13, 17, 3], [-14, 36, 4], 6.0, 5.0), ([-14, 36, 4], [14, 36, 4], 5.0, 5.0),
        ([14, 36, 4], [13, 17, 3], 5.0, 6.0), ([0, 36, 4], [0, 62, -8], 5.0, 4.0),
        ([-14, 24, 6], [-46, 27, 10], 5.0, 4.0), ([14, 24, 6], [46, 27, 10], 5.0, 4.0),
    ]
    for p0, p1, r0, r1 in parts:
        p0, p1 = c + p0, c + p1
        lo, hi = sdf.capsule_box(p0, p1, max(r0, r1))
        cv.union(lambda p, p0=p0, p1=p1, r0=r0, r1=r1: sdf.capsule(p, p0, p1, r0, r1), lo, hi, 4.0)


def _femur_parts(a: AnatomyParams, side: int):
    s = a.side_scale[0 if side > 0 else 1]
    m = np.array([side, 1.0, 1.0])
    H = np.array(a.hip_centre) * s * m
    return H, m


def femur_head_distance(p, a: AnatomyParams, side: int):
    """Signed distance (mm) of the femoral head, neck and greater trochanter."""
    H, m = _femur_parts(a, side)
    d = sdf.sphere(p, H, a.head_radius)
    d = sdf.smooth_union(d, sdf.capsule(p, H, H + np.array([32, -4, -26]) * m, 15.0, 16.0), 6.0)
    troch = H + np.array([52, 8, -16]) * m
    return sdf.smooth_union(d, sdf.ellipsoid(p, troch, (13.0, 18.0, 22.0)), 6.0)


def paint_femur(cv: sdf.Canvas, a: AnatomyParams, side: int) -> None:
    """Paint a femoral head, neck, greater trochanter and shaft."""
    H, m = _femur_parts(a, side)
    a_lo, a_hi = H + np.array([-30, -30, -45]) * m, H + np.array([70, 30, 25]) * m
    cv.union(lambda p: femur_head_distance(p, a, side), np.minimum(a_lo, a_hi), np.maximum(a_lo, a_hi))
    top, end = H + np.array([44, 6, -40]) * m, H + np.array([36, 10, -300]) * m
    lo, hi = sdf.capsule_box(top, end, 16.0)
    cv.union(lambda p: sdf.capsule(p, top, end, 16.0, 13.0), lo, hi, 8.0)


# -- assembly -----------------------------------------------------------------------


def build_structures(a: AnatomyParams) -> list[Structure]:
    """All bones of the phantom, labelled ones first (sacrum, left hip, right hip)."""

    def sacrum_fn(p):
        return sacrum_distance(p, a)

    box = lambda lo, hi: np.array([lo, hi], dtype=np.float64)  # noqa: E731
    sl, sr = a.side_scale
    top, e_b, e_a = _sacral_frame(a)
    b = np.linspace(0, a.sacrum_length, 12)
    spine = top + b[:, None] * e_b + (-0.0035 * b**2)[:, None] * e_a
    spine = np.concatenate([spine + 30 * e_a, spine - 30 * e_a, spine - 8 * e_b])
    sac_box = box([-a.sacrum_width - 6, spine[:, 1].min() - 6, spine[:, 2].min() - 6],
                  [a.sacrum_width + 6, spine[:, 1].max() + 6, spine[:, 2].max() + 6])
    c, f, ct = a.cortex_mm, a.cortex_hu, a.cancellous_hu
    out = [Structure("sacrum", SACRUM, sac_box, lambda cv: cv.evaluate_all(sacrum_fn), c, f, ct)]
    for side, bone, sc, name in ((1, LEFT_HIP, sl, "left_hip"), (-1, RIGHT_HIP, sr, "right_hip")):
        lo = np.array([0.0, -72.0, -108.0]) * sc
        hi = np.array([150.0, 100.0, 112.0]) * sc
        if side < 0:
            lo[0], hi[0] = -hi[0], -lo[0]
        out.append(Structure(
            name, bone, box(lo, hi),
            (lambda cv, side=side: paint_hip(cv, a, side, sacrum_fn, sac_box)), c, f, ct,
        ))
    l5_c, _ = _l5_frame(a)
    out.append(Structure(
        "l5", 0, box(l5_c + [-55, -30, -25], l5_c + [55, 75, 30]),
        (lambda cv: paint_l5(cv, a)), c, f * 0.95, ct * 0.9,
    ))
    for side, name in ((1, "left_femur"), (-1, "right_femur")):
        H, _ = _femur_parts(a, side)
        lo = H + np.array([-30.0, -35.0, -320.0])
        hi = H + np.array([80.0, 40.0, 30.0])
        if side < 0:
            lo[0], hi[0] = H[0] - 80.0, H[0] + 30.0
        out.append(Structure(
            name, 0, box(lo, hi), (lambda cv, side=side: paint_femur(cv, a, side)),
            c * 1.25, f, ct * 0.6,
        ))
    return out
