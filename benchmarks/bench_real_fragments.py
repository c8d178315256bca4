"""Benchmark: fragment quality on real fractured pelves the model never saw.

    python benchmarks/bench_real_fragments.py --model MODEL_DIR --cases case_004,case_005
        [--reference OTHER_MODEL_DIR] [--data ../shared/data/real_fractured_pelves]
        [--single-bone ../shared/data/real_fracture_sacrum:sacrum] [--slice-mm 3] [--json out.json]

Each named case (a per-bone masked real pelvis, :mod:`pengwin_demo.masked_cases`) goes
through the whole pipeline with Stage 1 taken from its expert bone labels
(``anatomy_map``), so the figures measure Stage 2 (the ABBC model and recovery) alone. The
model must not have been trained on these cases: ``train-abbc --holdout`` keeps them out
and records its training cases in the model's ``training.json``, which is checked here.

Printed per case and model: official PENGWIN IoU-F, HD95-F (mm), IoU-A; fragments found /
expected; whether every intact bone (one expert fragment) came out as one fragment; seconds.
``--reference`` scores a second model on the same cases in the same run (e.g. the
phantom-trained model), so the two lines compare like with like. ``--single-bone DIR:BONE``
adds a single masked bone (``image`` + ``fragments``) as a case named after its folder.
``--slice-mm S`` scores every case a second time as a CT reconstructed with S mm slices
would show it (smoothed along z with a Gaussian of S mm FWHM, resampled to S mm slices;
the expert labels taken nearest onto that grid): the fragments of a thick-slice scan.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pengwin_demo.labels import BONES, anatomy_from_fragments, bone_of_label  # noqa: E402
from pengwin_demo.masked_cases import find_masked_cases, read_masked_case, read_single_bone  # noqa: E402
from pengwin_demo.metrics import evaluate_case  # noqa: E402
from pengwin_demo.pipeline import Pipeline  # noqa: E402
from pengwin_demo.volume import Volume, resample_onto, resample_to_spacing  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "real_fractured_pelves"


def fragments_per_bone(labels: np.ndarray) -> dict[int, int]:
    """Number of fragments of each bone (anatomy id -> count) in a PENGWIN map."""
    present = [int(v) for v in np.unique(labels) if 1 <= v <= 30]
    return {b: sum(bone_of_label(v) == b for v in present) for b in BONES}


def score_case(pipeline: Pipeline, name: str, ct, truth) -> dict:
    """Run the pipeline on one case (expert anatomy as Stage 1) and score it."""
    anatomy = truth.with_array(anatomy_from_fragments(truth.array))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pengwin-real-") as tmp:
        result = pipeline.run(ct, tmp, anatomy_map=anatomy)
    seconds = time.perf_counter() - t0
    m = evaluate_case(result.labels.array, truth.array, truth.spacing_zyx_mm)
    expected, found = fragments_per_bone(truth.array), fragments_per_bone(result.labels.array)
    intact = [b for b, n in expected.items() if n == 1]
    return {
        "case": name, "iou_f": round(m["iou_f"], 4), "hd95_f_mm": round(m["hd95_f"], 2),
        "iou_a": round(m["iou_a"], 4),
        "fragments_found": sum(found.values()), "fragments_expected": sum(expected.values()),
        "per_bone_found": {BONES[b]: found[b] for b in BONES},
        "per_bone_expected": {BONES[b]: expected[b] for b in BONES},
        "intact_bones_whole": all(found[b] == 1 for b in intact), "n_intact_bones": len(intact),
        "abbc_s": round(result.timings.get("abbc", 0.0), 1), "seconds": round(seconds, 1),
    }


def thick_slices(ct: Volume, truth: Volume, slice_mm: float) -> tuple[Volume, Volume]:
    """The case as an S mm slice reconstruction shows it: (CT, expert labels) on that grid."""
    from scipy.ndimage import gaussian_filter1d

    sigma_vox = slice_mm / 2.3548 / ct.spacing_zyx_mm[0]
    smooth = gaussian_filter1d(ct.array.astype(np.float32), sigma_vox, axis=0, mode="nearest")
    thick = resample_to_spacing(ct.with_array(smooth), (slice_mm, *ct.spacing_zyx_mm[1:]), "linear")
    thick = thick.with_array(np.round(thick.array).astype(np.int16))
    return thick, resample_onto(truth, thick, "nearest")


def load_cases(args) -> dict[str, tuple[Volume, Volume]]:
    """The named per-bone cases of ``--data`` and the ``--single-bone`` cases, as (CT, labels)."""
    found = {c.name: c for c in find_masked_cases(args.data)} if Path(args.data).is_dir() else {}
    cases = {}
    for name in [c for c in args.cases.split(",") if c]:
        if name not in found:
            raise SystemExit(f"{name}: no per-bone masked case of that name in {args.data}")
        cases[name] = read_masked_case(found[name])
    for spec in args.single_bone:
        folder, _, bone = spec.rpartition(":")
        folder = Path(folder)
        cases[folder.name] = read_single_bone(next(folder.glob("image.*")),
                                              next(folder.glob("fragments.*")), bone)
    return cases


def trained_on(model: Path) -> list[str]:
    """The training cases a model's training.json records (empty when it records none)."""
    try:
        return list(json.loads((model / "training.json").read_text()).get("training_cases", []))
    except (OSError, ValueError):
        return []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="ABBC model folder to score")
    parser.add_argument("--reference", default=None, help="a second ABBC model scored in the same run")
    parser.add_argument("--cases", default="", help="comma-separated held-out case folder names")
    parser.add_argument("--data", default=str(DATA), help="folder of per-bone masked cases")
    parser.add_argument("--single-bone", action="append", default=[], metavar="DIR:BONE",
                        help="a single masked bone folder (image + fragments) and its bone, "
                             "e.g. ../shared/data/real_fracture_sacrum:sacrum; repeatable")
    parser.add_argument("--slice-mm", type=float, default=None,
                        help="also score every case as a CT with slices this thick (mm) shows it")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args()
    if not Path(args.data).is_dir() and not args.single_bone:
        print(f"real data not found at {args.data}: nothing to measure")
        return 0
    cases = load_cases(args)
    models = [Path(args.model)] + ([Path(args.reference)] if args.reference else [])
    for model in models:
        seen = sorted(set(cases) & set(trained_on(model)))
        if seen:
            print(f"{model}: was trained on {seen}; pick cases it never saw")
            return 2
    rows = []
    for name, (ct, truth) in cases.items():
        variants = [("native", ct, truth)]
        if args.slice_mm:
            variants.append((f"{args.slice_mm:g} mm slices", *thick_slices(ct, truth, args.slice_mm)))
        for model in models:
            for slices, ct_v, truth_v in variants:
                row = {"model": str(model), "slices": slices,
                       **score_case(Pipeline(args.device, fragments=str(model)), name, ct_v, truth_v)}
                print(json.dumps(row), flush=True)
                rows.append(row)
    for model, slices in sorted({(r["model"], r["slices"]) for r in rows}):
        sel = [r for r in rows if r["model"] == model and r["slices"] == slices]
        print(f"{model} ({slices}): mean IoU-F {np.mean([r['iou_f'] for r in sel]):.4f}, "
              f"HD95-F {np.mean([r['hd95_f_mm'] for r in sel]):.2f} mm, "
              f"IoU-A {np.mean([r['iou_a'] for r in sel]):.4f} over {len(sel)} held-out cases; "
              f"fragments {sum(r['fragments_found'] for r in sel)}/{sum(r['fragments_expected'] for r in sel)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
