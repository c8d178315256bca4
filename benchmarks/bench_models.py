"""Benchmark: bundled demo models, inference on CPU (or the given device).

    python benchmarks/bench_models.py [--seed 900001] [--size full] [--device cpu]

Printed, from the same run, for each bundled model on one held-out phantom:

* our settings (``load_model``: no mirroring, step 0.5, LPS reorientation) - what the
  pipeline uses;
* the reference: nnU-Net's ``nnUNetPredictor`` with its defaults (8x mirror test-time
  augmentation where the model allows it; our demo models allow none, so mirroring is
  forced on all three axes here to show its cost), same step;
* model load time (first call) and the cached second call.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from pengwin_demo.models import bundled_model_path, clear_model_cache, load_model  # noqa: E402
from pengwin_demo.phantom import make_phantom  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=900001)
    parser.add_argument("--size", default="full")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import torch

    ct, _ = make_phantom(args.seed, args.size)
    print(f"phantom seed {args.seed} ({args.size}): {ct.shape} voxels, spacing "
          f"{tuple(round(s, 2) for s in ct.spacing_zyx_mm)} mm; torch threads {torch.get_num_threads()}")
    for kind in ("anatomy", "abbc"):
        clear_model_cache()
        t = time.perf_counter()
        model = load_model(bundled_model_path(kind), args.device)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        load_model(bundled_model_path(kind), args.device)
        cached_s = time.perf_counter() - t
        t = time.perf_counter()
        ours = model.predict(ct)
        ours_s = time.perf_counter() - t
        ref = load_model(bundled_model_path(kind), args.device, use_mirroring=True)
        ref.predictor.allowed_mirroring_axes = (0, 1, 2)
        t = time.perf_counter()
        mirrored = ref.predict(ct)
        ref_s = time.perf_counter() - t
        agree = float(np.mean(ours == mirrored))
        print(f"{kind:8s} spacing {model.target_spacing_zyx_mm} mm: load {load_s:.1f} s (cached {cached_s*1000:.1f} ms); "
              f"predict ours {ours_s:.1f} s | reference 8x mirroring {ref_s:.1f} s "
              f"({ref_s / ours_s:.1f}x); voxel agreement {agree:.4f}")


if __name__ == "__main__":
    main()
