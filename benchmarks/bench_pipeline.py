"""Benchmark: the whole pipeline on a full-size phantom, per stage, with peak memory.

Usage::

    python benchmarks/bench_pipeline.py [--seed 0] [--device cpu] [--workdir DIR]
                                        [--skip-reference] [--meshes-only]

1. Makes a full-size synthetic fractured pelvis (``make_phantom(seed, "full")``, about
   512 x 512 x 330 at 0.6-1.0 mm) and writes it as NIfTI (not timed).
2. **Meshes**: :func:`pengwin_demo.outputs.fragment_meshes` on the true label map (crop per
   fragment, marching cubes, Taubin, decimation) against a reference that meshes each label
   on the whole volume (no crop) with marching cubes + Taubin and no decimation, in the
   same process, best of 2.
3. **Pipeline** (bundled demo models): ``Pipeline(device).run(ct.nii.gz, out)`` in a fresh
   child process, so its peak RSS is its own (``getrusage(RUSAGE_CHILDREN)``); prints every
   stage's seconds, the total, the peak RSS and the fragment Dice against the truth.
4. **Reference for the model stages** (unless ``--skip-reference``): the Stage 1 model
   applied the plain nnU-Net way, on the full-resolution CT (nnU-Net resamples to its
   spacing and back internally), in another child process; beside it, our Stage 1 time
   (CT resampled once with SimpleITK, nearest back).

Budgets (2 CPU cores): whole pipeline under 90 s and 8 GB peak RSS; all
meshes under 3 s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_gb_children() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # KiB -> GiB


def _child(args: list[str]) -> tuple[dict, float, float]:
    """Run this script as a worker; return (its JSON result, wall seconds, peak RSS GiB)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"worker {args[:2]} failed with exit code {proc.returncode}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1]
    return json.loads(line), wall, _rss_gb_children()


# -- workers (run in a child process) ---------------------------------------------------
class _Precomputed:
    """Oracle 'model': a label map computed before timing, returned for the grid asked."""

    def __init__(self, volume, spacing):
        self.volume = volume
        self.target_spacing_zyx_mm = spacing

    def predict(self, grid):
        from pengwin_demo.volume import resample_onto

        if self.volume.same_grid(grid, tol_mm=1e-3):
            return self.volume.array
        return resample_onto(self.volume, grid, "nearest").array


def _oracles(truth_path: str, spacing: float):
    """Anatomy and ABBC of the truth on a ``spacing`` mm grid (made before any timing)."""
    from pengwin_demo.recovery import abbc_targets
    from pengwin_demo.io import read_volume
    from pengwin_demo.labels import anatomy_from_fragments
    from pengwin_demo.volume import resample_to_spacing

    truth = read_volume(truth_path, kind="label")
    grid = (spacing,) * 3
    coarse = resample_to_spacing(truth, grid, "nearest")
    anatomy = coarse.with_array(anatomy_from_fragments(coarse.array))
    abbc = coarse.with_array(abbc_targets(coarse.array, coarse.spacing_zyx_mm))
    return _Precomputed(anatomy, grid), _Precomputed(abbc, grid)


def worker_pipeline(ct_path: str, out: str, device: str, oracle: str | None = None,
                    oracle_spacing: float = 1.5, force_stage2: bool = False) -> None:
    from pengwin_demo.pipeline import MIN_BONE_ML, Pipeline

    min_bone = 0.0 if force_stage2 else MIN_BONE_ML
    if oracle:
        anatomy, abbc = _oracles(oracle, oracle_spacing)
        pipe = Pipeline(device=device, anatomy=anatomy, fragments=abbc, min_bone_ml=min_bone)
    else:
        pipe = Pipeline(device=device, min_bone_ml=min_bone)
    t0 = time.perf_counter()
    pipe.load_models()
    load_models_s = time.perf_counter() - t0
    cpu_marks: list[tuple[str, float]] = []

    def progress(stage: str, fraction: float) -> None:  # CPU seconds (all threads) per stage
        cpu_marks.append((stage, time.process_time()))

    result = pipe.run(ct_path, out, progress=progress)
    cpu = {a: t1 - t0 for (a, t0), (_, t1) in zip(cpu_marks, cpu_marks[1:])}
    cpu["total"] = cpu_marks[-1][1] - cpu_marks[0][1]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({
        "timings": result.timings, "cpu_s": cpu, "load_models_s": load_models_s, "peak_rss_gb": peak,
        "warnings": result.warnings, "n_fragments": len(result.fragments),
        "inference": result.report["inference"],
    }))


def worker_reference_stage1(ct_path: str, device: str) -> None:
    from pengwin_demo.io import read_volume
    from pengwin_demo.models import anatomy_model

    ct = read_volume(ct_path)
    model, _ = anatomy_model("bundled", device)
    t0 = time.perf_counter()
    pred = model.predict(ct)  # nnU-Net resamples to its spacing and back by itself
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"seconds": seconds, "peak_rss_gb": peak, "bone_voxels": int(np.count_nonzero(pred))}))


# -- the benchmark ------------------------------------------------------------------------
def reference_meshes(labels):
    """Reference: every label meshed on the whole volume (no crop), MC + Taubin, no decimation."""
    import trimesh
    from skimage.measure import marching_cubes

    affine = labels.index_to_world_matrix()
    out = {}
    for lab in [int(v) for v in np.unique(labels.array) if v]:
        mask = np.pad(labels.array == lab, 1).astype(np.float32)
        verts, faces, _, _ = marching_cubes(mask, 0.5)
        world = (verts - 1.0) @ affine[:3, :3].T + affine[:3, 3]
        mesh = trimesh.Trimesh(world, faces, process=False)
        trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=0.52, iterations=10)
        out[lab] = mesh
    return out


def best_of(fn, repeat=2):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--meshes-only", action="store_true")
    parser.add_argument("--oracle", action="store_true",
                        help="replace both models by the truth (precomputed on a --oracle-spacing grid) "
                             "to time every other stage; no model needed")
    parser.add_argument("--oracle-spacing", type=float, default=1.5, help="mm (default 1.5)")
    parser.add_argument("--force-stage2", action="store_true",
                        help="run Stage 2 and recovery even when Stage 1 finds no bone (times every "
                             "stage with untrained bootstrap models)")
    parser.add_argument("--worker", choices=["pipeline", "reference-stage1"], help=argparse.SUPPRESS)
    parser.add_argument("--ct", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--truth", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "pipeline":
        return worker_pipeline(args.ct, args.out, args.device, args.truth, args.oracle_spacing,
                               args.force_stage2)
    if args.worker == "reference-stage1":
        return worker_reference_stage1(args.ct, args.device)

    from pengwin_demo.io import read_volume, write_volume
    from pengwin_demo.outputs import fragment_meshes
    from pengwin_demo.phantom import make_phantom

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"cpus: {os.cpu_count()}, workdir: {work}")
    t0 = time.perf_counter()
    ct, truth = make_phantom(args.seed, "full")
    ct_path = write_volume(ct, work / "ct.nii.gz")
    write_volume(truth, work / "truth.nii.gz")
    n_frag = len([v for v in np.unique(truth.array) if v])
    print(f"phantom seed {args.seed}: {ct.shape} voxels (z, y, x), spacing "
          f"{tuple(round(s, 3) for s in ct.spacing_zyx_mm)} mm, {n_frag} fragments "
          f"(made in {time.perf_counter() - t0:.1f} s, not counted)")

    # -- meshes --------------------------------------------------------------------------
    ours_s, meshes = best_of(lambda: fragment_meshes(truth))
    faces = sum(len(m.faces) for m in meshes.values())
    ref_s, ref = best_of(lambda: reference_meshes(truth), repeat=1)
    ref_faces = sum(len(m.faces) for m in ref.values())
    print("\nmeshes for all fragments (budget 3 s)")
    print(f"  ours (crop, MC, Taubin, decimate)      {ours_s:6.2f} s   {faces:>9,d} faces")
    print(f"  reference (whole volume, MC, Taubin)   {ref_s:6.2f} s   {ref_faces:>9,d} faces"
          f"   -> {ref_s / ours_s:.1f}x")
    if args.meshes_only:
        return

    # -- pipeline ------------------------------------------------------------------------
    worker = ["--worker", "pipeline", "--ct", str(ct_path), "--out", str(work / "out"),
              "--device", args.device]
    if args.oracle:
        worker += ["--truth", str(work / "truth.nii.gz"), "--oracle-spacing", str(args.oracle_spacing)]
    if args.force_stage2:
        worker += ["--force-stage2"]
    load_before = f"{os.getloadavg()[0]:.1f}"
    res, wall, rss = _child(worker)
    labels = read_volume(work / "out" / "labels.nii.gz", kind="label")
    what = (f"ORACLE models (truth on a {args.oracle_spacing} mm grid, precomputed)"
            if args.oracle else "bundled demo models")
    print(f"\nwhole pipeline with {what}, device {args.device} (budget 90 s, 8 GB)")
    print(f"  load average before/after: {load_before} / {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores (wall time stretches with other jobs; CPU time less so)")
    print(f"  model loading (once per process)       {res['load_models_s']:6.2f} s wall")
    print(f"  {'stage':<38} {'wall s':>6}   {'CPU s (all threads)':>8}")
    for stage, seconds in res["timings"].items():
        if stage != "total":
            print(f"  {stage:<38} {seconds:6.2f}   {res['cpu_s'].get(stage, float('nan')):8.2f}")
    print(f"  total Pipeline.run                     {res['timings']['total']:6.2f}   "
          f"{res['cpu_s']['total']:8.2f}   peak RSS {res['peak_rss_gb']:.2f} GB (child process)")
    print(f"  inference grids: anatomy {res['inference'].get('anatomy_spacing_zyx_mm')} mm, "
          f"ABBC {res['inference'].get('abbc_spacing_zyx_mm')} mm")
    print(f"  fragments found: {res['n_fragments']} (truth {n_frag})")
    for lab in [int(v) for v in np.unique(truth.array) if v]:
        t, p = truth.array == lab, labels.array == lab
        dice = 2 * np.count_nonzero(t & p) / max(1, np.count_nonzero(t) + np.count_nonzero(p))
        print(f"    label {lab:2d}: Dice {dice:.3f}")
    for w in res["warnings"]:
        print(f"  warning: {w}")

    if not args.skip_reference and not args.oracle:
        ref_res, _, _ = _child(["--worker", "reference-stage1", "--ct", str(ct_path), "--device", args.device])
        print("\nStage 1 inference on the full-size CT")
        print(f"  ours (SimpleITK resample to the model grid, nearest back) {res['timings']['anatomy']:6.2f} s")
        print(f"  reference (plain nnU-Net predict on the full-res CT)      {ref_res['seconds']:6.2f} s"
              f"   peak RSS {ref_res['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
