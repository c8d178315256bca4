"""Benchmark: load a 300-slice 512 x 512 CT series with load_ct vs SimpleITK's series reader.

Usage::

    python benchmarks/bench_dicom_load.py [--slices 300] [--size 512] [--syntax raw|rle|jpeg2000]
                                          [--repeat 3] [--workdir DIR]

Writes a synthetic series (tests/_helpers/dicom_factory.py) into a temporary folder, then times, in
the same run and on the same files, ``pengwin_demo.dicom.load_ct`` and the reference
``SimpleITK.ImageSeriesReader`` (GDCM; file discovery + read), best of ``--repeat`` runs
after a warm-up read (the files are in the page cache for both). It checks that both give
the same voxels and geometry and prints the figures.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from pengwin_demo.dicom import load_ct  # noqa: E402
from pengwin_demo.volume import Volume  # noqa: E402

from _helpers import dicom_factory as fac  # noqa: E402


def write_series(folder: Path, n_slices: int, size: int, syntax: str) -> None:
    syntaxes = {"raw": None, "rle": fac.RLELossless, "jpeg2000": fac.JPEG2000Lossless}
    for k in range(n_slices):  # one slice at a time keeps memory flat
        (ds,) = fac.make_series(
            positions=np.array([[-250.0, -250.0, -400.0 + 0.8 * k]]), rows=size, columns=size,
            pixel_spacing_rc_mm=(0.8, 0.8), spacing_z_mm=0.8, series_uid="1.2.826.0.1.3680043.8.498.1",
            study_uid="1.2.826.0.1.3680043.8.498.2",
        )
        ds.InstanceNumber = k + 1
        if syntaxes[syntax] is not None:
            ds = fac.compress(ds, syntaxes[syntax])
        fac.write_files([ds], folder, names=[f"IM{k:05d}"])


def read_sitk(folder: Path) -> Volume:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return Volume.from_sitk(reader.Execute())


def best_of(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--syntax", choices=["raw", "rle", "jpeg2000"], default="raw")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp) / "series"
        t0 = time.perf_counter()
        write_series(folder, args.slices, args.size, args.syntax)
        print(f"wrote {args.slices} x {args.size} x {args.size} ({args.syntax}) in {time.perf_counter() - t0:.1f} s")
        load_ct(folder)  # warm-up: page cache, imports
        read_sitk(folder)
        t_ours, ct = best_of(lambda: load_ct(folder), args.repeat)
        t_ref, ref = best_of(lambda: read_sitk(folder), args.repeat)
        same = ct.volume.same_grid(ref, tol_mm=1e-3) and np.array_equal(ct.volume.array, ref.array)
        print(f"load_ct (pengwin_demo.dicom)           {t_ours:6.2f} s   best of {args.repeat}")
        print(f"SimpleITK ImageSeriesReader (reference) {t_ref:6.2f} s   best of {args.repeat}")
        print(f"ratio ours / reference                  {t_ours / t_ref:6.2f}")
        print(f"identical voxels and geometry           {same}")
        print(f"budget (under 5 s)                      {'met' if t_ours < 5 else 'MISSED'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
