"""Benchmark: ABBC targets on a full-size case (budget: under 10 s, peak RSS under 3 GB, 2 cores).

    python benchmarks/bench_abbc.py [--seed 0] [--ref-fragments 2] [--ref-all] [--real]

The case is ``pengwin_demo.phantom.make_phantom(seed, "full")`` with 5 fragments per bone
(about 512 x 512 x 300, 15 fragments); ``--real`` uses the real fractured sacrum from
../shared/data instead (512 x 512 x 357, 10 fragments). Each method runs in a fresh
Python process that loads the label map from a .npy file, so its peak RSS (``ru_maxrss``)
is its own; the RSS right after loading (Python, numpy, the labels) is printed beside it.

Printed, from the same run:

* ``pengwin_demo.recovery.abbc_targets`` (per-fragment crops, seung-lab edt, 2 threads);
* the naive reference, the article's snippet applied per fragment on the whole volume:
  scipy ``distance_transform_edt`` of the fragment, Gaussian (sigma 2 voxels; on an
  anisotropic grid made isotropic in mm as in ``abbc_targets``), Laplacian (float64),
  core = -Laplacian > 0.11 or distance > 6 mm, and a second whole-volume EDT to the other
  fragments of the bone for the 6 mm fracture zone. It takes about 20 s and 3-4 GB per
  fragment, so by default it runs on ``--ref-fragments`` fragments and the per-fragment
  time is extrapolated to all (labelled so); ``--ref-all`` runs it on every fragment;
* the voxel agreement between the reference and ``abbc_targets`` run with the same naive
  parameters (6 mm zone, no scaling, no core guarantees), on the fragments the reference
  did: the crops must not change the result.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NAIVE = dict(border_mm=6.0, border_radius_fraction=None, border_shell_only=True,
             extra_core_min_vox=None, min_core_vox=1, zone_half_thickness=False)

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np
    sys.path.insert(0, {root!r})
    labels = np.load({labels!r})
    spacing = tuple(json.loads({spacing!r}))
    def hwm_gb():  # this process's own peak RSS (ru_maxrss would include the parent's)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    def cpu_s():
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime
    base = hwm_gb()
    method = {method!r}
    c0 = cpu_s()
    t0 = time.perf_counter()
    if method == "ours":
        from pengwin_demo.recovery import abbc_targets
        out = abbc_targets(labels, spacing, parallel=2)
        done = None
    elif method == "ours_naive":
        from pengwin_demo.recovery import abbc_targets
        out = abbc_targets(labels, spacing, parallel=2, **json.loads({naive!r}))
        done = None
    else:
        sys.path.insert(0, {bench!r})
        from bench_abbc import naive_reference
        out, done = naive_reference(labels, spacing, json.loads({subset!r}))
    seconds = time.perf_counter() - t0
    cpu = cpu_s() - c0
    peak = hwm_gb()
    np.save({out!r}, out)
    print(json.dumps(dict(seconds=seconds, cpu_s=cpu, peak_gb=peak, base_gb=base, done=done)))
    """
)


def naive_reference(labels: np.ndarray, spacing, subset: list[int]):
    """The article's snippet, per fragment, on the whole volume (scipy). Returns
    (ABBC map for the fragments in ``subset``, that list)."""
    from scipy import ndimage

    out = np.zeros(labels.shape, dtype=np.uint8)
    present = [int(v) for v in np.unique(labels[labels > 0])]
    spacing = np.asarray(spacing, dtype=np.float64)
    sigma = 2.0 * spacing.min() / spacing  # 2 voxels of the finest axis, as abbc_targets
    weights = (spacing.min() / spacing) ** 2
    for lab in subset:
        frag = labels == lab
        dist = ndimage.distance_transform_edt(frag, sampling=spacing)
        smooth = ndimage.gaussian_filter(dist, sigma)
        neg_lap = sum(w * ndimage.correlate1d(smooth, [-1.0, 2.0, -1.0], axis)
                      for axis, w in enumerate(weights))
        core = frag & ((neg_lap > 0.11) | (dist > 6.0))
        del smooth, neg_lap
        classes = np.where(frag, np.uint8(1), np.uint8(0))
        classes[core] = 2
        others = [o for o in present if o != lab and (o - 1) // 10 == (lab - 1) // 10]
        if others:
            zone = frag & (ndimage.distance_transform_edt(~np.isin(labels, others),
                                                          sampling=spacing) <= 6.0)
            demote = zone & (classes == 2)
            classes[zone & (classes == 1)] = 3
            classes[demote] = 1
        out[frag] = classes[frag]
    return out, subset


def run_child(method, labels_path, spacing, workdir, subset=()):
    out = Path(workdir) / f"{method}.npy"
    code = CHILD.format(root=str(ROOT), labels=str(labels_path), spacing=json.dumps(spacing),
                        method=method, naive=json.dumps(NAIVE), bench=str(Path(__file__).parent),
                        subset=json.dumps(list(subset)), out=str(out))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{res.stderr[-3000:]}")
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    return stats, np.load(out)


def load_case(args):
    if args.real:
        from pengwin_demo.io import read_volume

        path = ROOT.parent / "shared" / "data" / "real_fracture_sacrum" / "fragments.nii.gz"
        vol = read_volume(path, kind="label")
        return vol.array, vol.spacing_zyx_mm, "real fractured sacrum"
    from pengwin_demo.phantom import make_phantom

    _, labels = make_phantom(args.seed, "full",
                             n_fragments={"sacrum": 5, "left_hip": 5, "right_hip": 5})
    return labels.array, labels.spacing_zyx_mm, f"full phantom seed {args.seed}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", action="store_true", help="the real sacrum instead of a phantom")
    parser.add_argument("--ref-fragments", type=int, default=2,
                        help="fragments the whole-volume reference processes (default 2)")
    parser.add_argument("--ref-all", action="store_true", help="reference on every fragment")
    parser.add_argument("--repeats", type=int, default=2, help="runs of abbc_targets (best kept)")
    args = parser.parse_args(argv)

    labels, spacing, name = load_case(args)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    present, counts = np.unique(labels[labels > 0], return_counts=True)
    print(f"case: {name}, shape (z, y, x) {labels.shape}, spacing (z, y, x) mm "
          f"{tuple(round(s, 3) for s in spacing)}, {len(present)} fragments "
          f"({counts.min()} to {counts.max()} voxels)")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.npy"
        np.save(path, labels)
        best = None
        for _ in range(max(1, args.repeats)):
            stats, ours = run_child("ours", path, spacing, tmp)
            if best is None or stats["seconds"] < best["seconds"]:
                best = stats
        print(f"abbc_targets:        {best['seconds']:7.2f} s wall, {best['cpu_s']:6.2f} s CPU, "
              f"peak RSS {best['peak_gb']:.2f} GB (after loading the labels: "
              f"{best['base_gb']:.2f} GB)")
        classes = np.bincount(ours.ravel(), minlength=4)
        print(f"  classes: boundary {classes[1]}, core {classes[2]}, border {classes[3]}")

        # the reference: the largest fragments that have a neighbour in their bone
        order = [int(v) for v in present[np.argsort(-counts)]]
        subset = order if args.ref_all else order[: max(1, args.ref_fragments)]
        ref_stats, ref = run_child("reference", path, spacing, tmp, subset)
        per_frag = ref_stats["seconds"] / len(subset)
        label = "measured" if len(subset) == len(present) else (
            f"measured on {len(subset)} of {len(present)} fragments, extrapolated")
        total = per_frag * len(present)
        total_cpu = ref_stats["cpu_s"] / len(subset) * len(present)
        print(f"naive reference:     {total:7.2f} s wall, {total_cpu:6.2f} s CPU, peak RSS "
              f"{ref_stats['peak_gb']:.2f} GB ({label}; {per_frag:.2f} s per fragment)")
        print(f"speed-up:            {total / best['seconds']:7.1f} x wall, "
              f"{total_cpu / best['cpu_s']:.1f} x CPU")

        _, ours_naive = run_child("ours_naive", path, spacing, tmp)
        mask = np.isin(labels, subset)
        agree = float(np.mean(ours_naive[mask] == ref[mask]))
        print(f"agreement with the reference (naive parameters, fragments {subset}): "
              f"{agree * 100:.3f} % of their voxels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
