"""Benchmark: fragment quality on real fractured pelves the model never saw.

    python benchmarks/bench_real_fragments.py --model MODEL_DIR --cases case_004,case_005
        [--reference OTHER_MODEL_DIR] [--data ../shared/data/real_fractured_pelves] [--json out.json]

Each named case (a per-bone masked real pelvis, :mod:`pengwin_demo.masked_cases`) goes
through the whole pipeline with Stage 1 taken from its expert bone labels
(``anatomy_map``), so the figures measure Stage 2 (the ABBC model and recovery) alone. The
model must not have been trained on these cases: ``train-abbc --holdout`` keeps them out
and records its training cases in the model's ``training.json``, which is checked here.

Printed per case and model: official PENGWIN IoU-F, HD95-F (mm), IoU-A; fragments found /
expected; whether every intact bone (one expert fragment) came out as one fragment; seconds.
``--reference`` scores a second model on the same cases in the same run (e.g. the
phantom-trained model), so the two lines compare like with like.
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
from pengwin_demo.masked_cases import find_masked_cases, read_masked_case  # noqa: E402
from pengwin_demo.metrics import evaluate_case  # noqa: E402
from pengwin_demo.pipeline import Pipeline  # noqa: E402

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
    parser.add_argument("--cases", required=True, help="comma-separated held-out case folder names")
    parser.add_argument("--data", default=str(DATA), help="folder of per-bone masked cases")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the rows to this file")
    args = parser.parse_args()
    if not Path(args.data).is_dir():
        print(f"real data not found at {args.data}: nothing to measure")
        return 0
    wanted = [c for c in args.cases.split(",") if c]
    models = [Path(args.model)] + ([Path(args.reference)] if args.reference else [])
    for model in models:
        seen = sorted(set(wanted) & set(trained_on(model)))
        if seen:
            print(f"{model}: was trained on {seen}; pick cases it never saw")
            return 2
    cases = {c.name: c for c in find_masked_cases(args.data)}
    rows = []
    for name in wanted:
        ct, truth = read_masked_case(cases[name])
        for model in models:
            row = {"model": str(model), **score_case(Pipeline(args.device, fragments=str(model)), name, ct, truth)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    for model in models:
        sel = [r for r in rows if r["model"] == str(model)]
        print(f"{model}: mean IoU-F {np.mean([r['iou_f'] for r in sel]):.4f}, "
              f"HD95-F {np.mean([r['hd95_f_mm'] for r in sel]):.2f} mm, "
              f"IoU-A {np.mean([r['iou_a'] for r in sel]):.4f} over {len(sel)} held-out patients; "
              f"fragments {sum(r['fragments_found'] for r in sel)}/{sum(r['fragments_expected'] for r in sel)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
