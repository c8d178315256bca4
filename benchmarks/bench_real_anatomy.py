"""Benchmark: Stage 1 (sacrum, left hip, right hip) on real anatomy the model never saw.

    python benchmarks/bench_real_anatomy.py --anatomy MODEL_DIR [--refine auto|none|DIR]
        [--reference bundled [--reference-refine auto|none|DIR]]
        [--fragments bundled|DIR] [--reference-fragments bundled|DIR]
        [--holdout case_005 --bodies 3] [--external CT.nii.gz MASK_DIR ...]
        [--negative PATH ...] [--json out.json]

Three kinds of case, each run through the whole pipeline (Stage 1 from the model under
test, the ABBC model of ``--fragments``, by default the bundled one, recovery), for the
model and the ``--reference`` model in the same run:

- ``--external CT MASK_DIR``: a real whole CT with reference bone masks
  ``MASK_DIR/{sacrum,hip_left,hip_right}.nii.gz`` (TotalSegmentator's file names; e.g. the
  example CT of the TotalSegmentator repository, ``tests/reference_files/example_ct.nii.gz``
  with the ``example_seg/`` masks of its commit 5de6e4d, Apache-2.0). Intact pelves:
  the pipeline should find exactly three fragments, 1, 11 and 21.
- ``--holdout NAME``: a real per-bone masked pelvis held out of the anatomy training,
  placed in ``--bodies`` synthetic bodies with seeds the training never used.
- ``--negative PATH``: scans without a pelvis (e.g. the real upper-abdomen DICOM series);
  the pipeline should find no fragment and say why.

A model's ``training.json`` lists the digest of every whole CT it was trained with
(``train-anatomy --whole-ct``); an external CT among them is marked ``"in_training": true``
and said on stderr: its figures are not held-out figures. A held-out patient whose bones
the ABBC model was trained on is marked ``"fragments_model_saw_patient": true``: its
Stage-1 figures are held out, its end-to-end figures only in part.

Printed per case and model: Stage-1 IoU per bone (the anatomy model alone, on the input
grid; with a refining model also ``refined_stage1_iou``, the pipeline's refined bone map
taken nearest onto the input grid),
end-to-end bone IoU per bone (the pipeline's fragments grouped by bone), fragments found,
the refusal reason when none, seconds.
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

from pengwin_demo.anatomy_map import read_bone_masks  # noqa: E402
from pengwin_demo.training import composite_case  # noqa: E402
from pengwin_demo.dicom import load_ct  # noqa: E402
from pengwin_demo.labels import anatomy_from_fragments  # noqa: E402
from pengwin_demo.masked_cases import find_masked_cases, read_masked_case  # noqa: E402
from pengwin_demo.models import bundled_model_path, load_model  # noqa: E402
from pengwin_demo.pipeline import Pipeline  # noqa: E402
from pengwin_demo.recovery import nearest_onto  # noqa: E402
from pengwin_demo.training.quality import bone_iou  # noqa: E402
from pengwin_demo.training.whole_ct import scan_digest  # noqa: E402
from pengwin_demo.volume import Volume  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
HOLDOUT_SEED = 990_000
"""Body seeds of held-out composites (training uses small seeds)."""


def _rounded(ious: dict[str, float]) -> dict[str, float]:
    return {name: round(v, 4) for name, v in ious.items()}


def run_case(pipeline: Pipeline, model, ct: Volume, truth: Volume | None) -> dict:
    """Stage 1 alone and the whole pipeline on one CT; scored against ``truth`` if given."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pengwin-anat-") as tmp:
        result = pipeline.run(ct, tmp)
    row = {"seconds": round(time.perf_counter() - t0, 1),
           "fragments": sorted(int(f["label"]) for f in result.fragments),
           "no_fragments_reason": result.report["inference"].get("no_fragments_reason")}
    if truth is not None:
        row["stage1_iou"] = _rounded(bone_iou(model.predict(ct), truth.array))
        if "refined_by" in result.report["models"]["anatomy"]:
            row["refined_stage1_iou"] = _rounded(bone_iou(nearest_onto(result.anatomy, ct), truth.array))
        row["end_to_end_iou"] = _rounded(bone_iou(anatomy_from_fragments(result.labels.array), truth.array))
    return row


def cases(args) -> list[tuple[str, Volume, Volume | None]]:
    """(name, CT, anatomy truth or None) of every case asked for."""
    out = []
    for ct_path, mask_dir in args.external:
        ct = load_ct(ct_path).volume
        out.append((f"external:{Path(ct_path).name}", ct, read_bone_masks(mask_dir, ct)))
    masked = {c.name: c for c in find_masked_cases(args.data)} if args.holdout else {}
    for name in args.holdout:
        ct, labels = read_masked_case(masked[name])
        for k in range(args.bodies):
            c_ct, c_lab = composite_case(ct, labels, np.random.default_rng([HOLDOUT_SEED, k]))
            out.append((f"{name}_body{k}", c_ct, c_lab.with_array(anatomy_from_fragments(c_lab.array))))
    for path in args.negative:
        out.append((f"negative:{Path(path).name}", load_ct(path).volume, None))
    return out


def _training_info(folder: Path) -> dict:
    path = folder / "training.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anatomy", required=True, help="anatomy model folder under test, or 'bundled'")
    parser.add_argument("--refine", default="auto",
                        help="refining anatomy model run after --anatomy: auto (the bundled one), none, or a folder")
    parser.add_argument("--reference", default=None, help="a second anatomy model scored in the same run")
    parser.add_argument("--reference-refine", default="auto", help="the refining model run after --reference")
    parser.add_argument("--fragments", default="bundled", help="ABBC model run after --anatomy: 'bundled' or a folder")
    parser.add_argument("--reference-fragments", default="bundled", help="ABBC model run after --reference")
    parser.add_argument("--data", default=str(DATA / "real_fractured_pelves"), help="per-bone masked cases")
    parser.add_argument("--holdout", default="", help="comma-separated held-out case names")
    parser.add_argument("--bodies", type=int, default=3, help="synthetic bodies per held-out case")
    parser.add_argument("--external", nargs=2, action="append", default=[], metavar=("CT", "MASK_DIR"))
    parser.add_argument("--negative", action="append", default=[], help="a scan without a pelvis")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    args.holdout = [h for h in args.holdout.split(",") if h]
    todo = cases(args)
    digests = [scan_digest(ct) if name.startswith("external:") else None for name, ct, _ in todo]
    rows = []
    runs = ((args.anatomy, args.refine, args.fragments),
            (args.reference, args.reference_refine, args.reference_fragments))
    for label, refine, fragments in runs:
        if label is None:
            continue
        folder = bundled_model_path("anatomy") if label == "bundled" else Path(label)
        abbc = bundled_model_path("abbc") if fragments == "bundled" else Path(fragments)
        pipeline = Pipeline(device="cpu", anatomy=str(folder), refine_anatomy=refine, fragments=str(abbc))
        model = load_model(folder, "cpu", expected="anatomy")
        trained_on = set(_training_info(folder).get("whole_ct_digests", {}).values())
        abbc_patients = set(_training_info(abbc).get("training_cases", []))
        for (name, ct, truth), digest in zip(todo, digests):
            row = {"model": label, "refine": refine, "fragments_model": fragments, "case": name,
                   **run_case(pipeline, model, ct, truth)}
            if digest in trained_on:
                row["in_training"] = True
                print(f"{name}: {label} was trained with this scan; its figures are not held out", file=sys.stderr)
            if name.split("_body")[0] in abbc_patients:
                row["fragments_model_saw_patient"] = True  # Stage 1 held out, Stage 2 not
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
