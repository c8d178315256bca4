"""``segment``: CT in, PENGWIN fragments out (label map, STL per fragment, GLB, report)."""

from __future__ import annotations

from pathlib import Path

from ._options import add_allow_non_ct

NAME = "segment"
HELP = "segment pelvic fragments: labels.nii.gz, fragments/*.stl, scene.glb, report.json"


def add_arguments(parser) -> None:
    parser.add_argument(
        "input",
        help="CT: .nii/.nii.gz/.mha/.nrrd file, DICOM folder, zip of one, or multi-frame DICOM file",
    )
    parser.add_argument("-o", "--output", required=True, type=Path, help="output folder")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument(
        "--anatomy", default="auto",
        help="Stage 1 model: auto (default: TotalSegmentator where its weights are installed, "
             "else bundled; the report says which ran), bundled, totalsegmentator, or an "
             "nnU-Net model folder/zip",
    )
    parser.add_argument(
        "--refine-anatomy", default="auto", metavar="MODEL",
        help="second anatomy model run finer on the box of the bones the first one found: "
             "auto (default: the bundled refining model after a coarser anatomy model; not "
             "after TotalSegmentator), none, or an nnU-Net model folder",
    )
    parser.add_argument(
        "--fragments", default="bundled",
        help="Stage 2 (ABBC) model: bundled (default) or an nnU-Net model folder/zip",
    )
    parser.add_argument(
        "--anatomy-map", default=None, metavar="FILE",
        help="take Stage 1 from this bone map instead of a model: 0 background, 1 sacrum, "
             "2 left hip, 3 right hip, on any grid covering the CT (resampled nearest)",
    )
    parser.add_argument("--series", dest="series_uid", default=None,
                        help="DICOM SeriesInstanceUID to segment (default: automatic choice)")
    parser.add_argument("--dicom-seg", action="store_true",
                        help="also write segmentation.dcm (DICOM SEG; DICOM input only)")
    parser.add_argument("--mesh-detail", default="normal", choices=["fine", "normal", "coarse"],
                        help="mesh smoothing/decimation preset (default: normal)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_allow_non_ct(parser)


def run(args) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ..pipeline import STAGES, Pipeline

    bar = None if args.no_progress else tqdm(
        total=100, unit="%", bar_format="{l_bar}{bar}| {elapsed}", leave=True
    )

    def progress(stage: str, fraction: float) -> None:
        if bar is None:
            return
        bar.set_description(STAGES.get(stage, stage)[:48].ljust(48))
        bar.update(max(0, round(fraction * 100) - bar.n))

    pipeline = Pipeline(device=args.device, anatomy=args.anatomy, fragments=args.fragments,
                        refine_anatomy=args.refine_anatomy)
    try:
        with logging_redirect_tqdm():
            result = pipeline.run(
                args.input, args.output, progress=progress, series_uid=args.series_uid,
                dicom_seg=args.dicom_seg, mesh_detail=args.mesh_detail, anatomy_map=args.anatomy_map,
                allow_non_ct=args.allow_non_ct,
            )
    finally:
        if bar is not None:
            bar.close()
    rep = result.report
    print(f"output folder: {result.out_dir}")
    print(f"fragments: {rep['n_fragments']} "
          + " ".join(f"{b}={v['fragments']}" for b, v in rep["bones"].items()))
    for f in result.fragments:
        print(f"  {f['label']:2d} {f['bone']:<9} {f['volume_ml']:9.2f} mL  {f.get('stl') or ''}")
    for w in result.warnings:
        print(f"warning: {w}")
    if args.dicom_seg and result.paths.get("seg") is None:
        why = "there are no fragments" if result.report["input"]["source_kind"] == "dicom" \
            else "the input is not a DICOM series"
        print(f"note: no DICOM SEG written: {why}")
    print("timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
    return 0
