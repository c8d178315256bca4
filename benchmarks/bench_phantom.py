"""Phantom generation speed and memory, crop-first rendering against its reference.

Each case is generated twice, each time in a fresh process (so peak RSS is that of one
generation): once as shipped (every bone resampled onto its own bounding box, crop first)
and once by the reference that resamples every bone onto the whole CT grid. Both must
produce identical arrays; the benchmark checks it (SHA-256 of CT and labels).

Usage::

    python benchmarks/bench_phantom.py [--small 4] [--full 2] [--seed 0]

Budget: ``small`` under 1 s per case, ``full`` under 15 s per case
on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _one(seed: int, size: str, reference: bool, write: bool) -> dict:
    sys.path.insert(0, str(ROOT))
    import tempfile

    from pengwin_demo.io import write_volume
    from pengwin_demo.phantom import generate_phantom

    t0 = time.perf_counter()
    ph = generate_phantom(seed, size, dense_reference=reference)
    seconds = time.perf_counter() - t0
    out = {
        "seconds": seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "shape": list(ph.ct.shape),
        "spacing": [round(s, 3) for s in ph.ct.spacing_zyx_mm],
        "fragments": sum(ph.fragments.values()),
        "sha": hashlib.sha256(ph.ct.array.tobytes() + ph.labels.array.tobytes()).hexdigest()[:16],
    }
    if write:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_volume(ph.ct, Path(tmp) / "ct.mha")
            write_volume(ph.labels, Path(tmp) / "labels.mha")
            out["write_mha_s"] = time.perf_counter() - t0
            from pengwin_demo.phantom import write_dicom_series

            t0 = time.perf_counter()
            write_dicom_series(ph.ct, Path(tmp) / "dicom")
            out["write_dicom_s"] = time.perf_counter() - t0
    return out


def _run(seed: int, size: str, reference: bool, write: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--one", str(seed), size, str(int(reference)), str(int(write))]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="phantom generation benchmark")
    parser.add_argument("--small", type=int, default=4, help="number of small cases")
    parser.add_argument("--full", type=int, default=2, help="number of full cases")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        load = open("/proc/loadavg").read().split()[0]
    except OSError:
        load = "?"
    print(f"load average at start: {load} (2-core machine: timings inflate when it is busy)")
    print(f"{'size':5} {'seed':>4} {'shape (z,y,x)':>16} {'spacing mm':>20} {'frags':>5} "
          f"{'crop-first s':>12} {'reference s':>11} {'speed-up':>8} {'RSS MB':>14} {'identical':>9}")
    totals: dict[str, list[float]] = {"small": [], "full": []}
    for size, n in (("small", args.small), ("full", args.full)):
        for i in range(n):
            seed = args.seed + i
            ours = _run(seed, size, False, write=(size == "full"))
            ref = _run(seed, size, True)
            totals[size].append(ours["seconds"])
            same = "yes" if ours["sha"] == ref["sha"] else "NO"
            print(f"{size:5} {seed:4d} {str(tuple(ours['shape'])):>16} {str(tuple(ours['spacing'])):>20} "
                  f"{ours['fragments']:5d} {ours['seconds']:12.2f} {ref['seconds']:11.2f} "
                  f"{ref['seconds'] / ours['seconds']:7.1f}x {ours['peak_rss_mb']:6.0f}/{ref['peak_rss_mb']:<6.0f} "
                  f"{same:>9}")
            if "write_mha_s" in ours:
                print(f"      writing: .mha (compressed) CT+labels {ours['write_mha_s']:.2f} s, "
                      f"DICOM series {ours['write_dicom_s']:.2f} s")
    for size, ts in totals.items():
        if ts:
            print(f"{size}: mean {sum(ts) / len(ts):.2f} s per case over {len(ts)} case(s) "
                  f"(budget {'1' if size == 'small' else '15'} s)")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        seed, size, ref, write = int(sys.argv[2]), sys.argv[3], bool(int(sys.argv[4])), bool(int(sys.argv[5]))
        print(json.dumps(_one(seed, size, ref, write)))
        raise SystemExit(0)
    raise SystemExit(main())
