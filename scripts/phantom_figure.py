"""Figure of a few synthetic phantoms: axial, coronal and sagittal slices with the label
overlay, and a 3D view of the fragments (viewed from the front).

Usage::

    python scripts/phantom_figure.py [--seeds 3 12 2] [--size full] [--out docs/img/phantoms.png]

Slices are shown in radiological convention whatever the stored direction: the
patient's left on the image right, anterior up in axial views, superior up otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402
from skimage.measure import marching_cubes  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pengwin_demo.labels import PALETTE_RGB  # noqa: E402
from pengwin_demo.phantom import generate_phantom  # noqa: E402


def to_lps_array(vol):
    """Array flipped so that index axes run along +x, +y, +z (LPS); direction must be diagonal."""
    a = vol.array
    signs = np.sign(np.diag(vol.direction))  # (x, y, z)
    for axis_xyz, sign in enumerate(signs):
        if sign < 0:
            a = np.flip(a, axis=2 - axis_xyz)
    return a


def overlay(ax, img, lab, aspect, title):
    ax.imshow(img, cmap="gray", vmin=-250, vmax=1250, aspect=aspect, interpolation="nearest")
    rgba = np.zeros(lab.shape + (4,), np.float32)
    rgba[..., :3] = PALETTE_RGB[lab] / 255.0
    rgba[..., 3] = (lab > 0) * 0.45
    ax.imshow(rgba, aspect=aspect, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()


def view3d(ax, ph, step_mm: float = 2.0):
    lab = ph.labels
    sz, sy, sx = lab.spacing_zyx_mm
    st = [max(1, int(round(step_mm / s))) for s in (sz, sy, sx)]
    sub = lab.array[:: st[0], :: st[1], :: st[2]]
    for v in np.unique(sub[sub > 0]):
        mask = np.pad(sub == v, 1)
        if mask.sum() < 20:
            continue
        verts, faces, _, _ = marching_cubes(mask.astype(np.float32), 0.5)
        idx = (verts - 1) * np.array(st)
        world = lab.index_to_world(idx)
        poly = Poly3DCollection(world[faces], linewidths=0)
        poly.set_facecolor(PALETTE_RGB[v] / 255.0)
        ax.add_collection3d(poly)
    pts = lab.index_to_world(np.argwhere(lab.array > 0)[::50])
    lo, hi = pts.min(0), pts.max(0)
    c, r = (lo + hi) / 2, (hi - lo).max() / 2
    ax.set_xlim(c[0] - r, c[0] + r)
    ax.set_ylim(c[1] - r, c[1] + r)
    ax.set_zlim(c[2] - r, c[2] + r)
    ax.view_init(elev=12, azim=-90)  # from the front: patient's left on the right
    ax.set_axis_off()
    ax.set_title("3D, anterior view", fontsize=9)


def case_row(axes, ph):
    ct, lab = to_lps_array(ph.ct), to_lps_array(ph.labels)
    sz, sy, sx = ph.ct.spacing_zyx_mm
    # slice positions from the anatomy: hip joint level, through the hip centres, midline
    hips = np.argwhere(np.isin(lab, np.arange(11, 31)))
    sac = np.argwhere((lab >= 1) & (lab <= 10))
    z_hip = int(np.percentile(hips[:, 0], 45))
    y_cor = int(np.median(hips[:, 1]))
    x_mid = int(np.median(sac[:, 2])) if len(sac) else ct.shape[2] // 2
    overlay(axes[0], ct[z_hip], lab[z_hip], sy / sx,
            f"seed {ph.seed} ({ph.size}), axial; stored {ph.stored_as}")
    overlay(axes[1], ct[::-1, y_cor, :], lab[::-1, y_cor, :], sz / sx,
            f"coronal; voxels {sx:.2f} x {sy:.2f} x {sz:.2f} mm")
    moved = sum(len(v) for v in ph.displaced.values())
    overlay(axes[2], ct[::-1, :, x_mid], lab[::-1, :, x_mid], sz / sy,
            f"sagittal; fragments S/L/R {ph.fragments[1]}/{ph.fragments[2]}/{ph.fragments[3]}, {moved} moved")
    view3d(axes[3], ph)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[3, 12, 2])
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "img" / "phantoms.png"))
    args = parser.parse_args(argv)
    n = len(args.seeds)
    fig = plt.figure(figsize=(18, 4.6 * n))
    for row, seed in enumerate(args.seeds):
        ph = generate_phantom(seed, args.size)
        axes = [fig.add_subplot(n, 4, 4 * row + i + 1) for i in range(3)]
        axes.append(fig.add_subplot(n, 4, 4 * row + 4, projection="3d"))
        case_row(axes, ph)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=70)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
