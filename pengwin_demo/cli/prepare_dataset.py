"""``prepare-dataset``: PENGWIN-layout or bone-masked cases -> nnU-Net v2 raw datasets (ABBC and anatomy).

Three source layouts: PENGWIN (``images/`` + ``labels/``); per-bone masked cases
(``case_N/{SA,LI,RI}_image`` + ``_fragments``, as FracSegNet publishes them), which are
first written as PENGWIN-layout cases into ``--pengwin-out``; and single masked bones
(``image`` + ``fragments``, with ``--bone``).
"""

from __future__ import annotations

NAME = "prepare-dataset"
HELP = ("convert PENGWIN-layout cases (images/ + labels/) or bone-masked cases (case_N/{SA,LI,RI}_image + "
        "_fragments, or image + fragments with --bone) into nnU-Net ABBC and anatomy datasets")


def add_arguments(parser) -> None:
    parser.add_argument("src", help="folder with images/ and labels/ (PENGWIN zips or `phantom` output), "
                                    "or of per-bone masked cases, or of single masked bones (with --bone)")
    parser.add_argument("nnunet_raw", help="nnU-Net raw folder (nnUNet_raw) to write the datasets into")
    parser.add_argument("--dataset-id", type=int, default=501,
                        help="id of the ABBC dataset; the anatomy dataset gets id+1 (default 501)")
    parser.add_argument("--workers", type=int, default=2, help="cases converted in parallel (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing dataset folders")
    parser.add_argument("--pengwin-out", default=None, metavar="DIR",
                        help="for masked sources: where their PENGWIN-layout cases are written "
                             "(whole pelvis = sum of the masked bone images; labels 1-10 sacrum, "
                             "11-20 left hip, 21-30 right hip, largest first)")
    parser.add_argument("--bone", default=None, choices=("sacrum", "left_hip", "right_hip", "SA", "LI", "RI"),
                        help="the bone of a single-bone masked source (image + fragments files)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip nnU-Net's verify_dataset_integrity afterwards")


def run(args) -> int:
    from pathlib import Path

    from ..errors import InputError
    from ..masked_cases import is_masked_layout, masked_to_pengwin
    from ..training import prepare_datasets

    src = Path(args.src)
    if args.bone or is_masked_layout(src):
        if not args.pengwin_out:
            raise InputError(f"{src}: bone-masked cases are first written in PENGWIN layout; "
                             "say where with --pengwin-out DIR.")
        names = masked_to_pengwin(src, args.pengwin_out, bone=args.bone)
        print(f"PENGWIN-layout cases ({len(names)}): {args.pengwin_out}")
        src = Path(args.pengwin_out)
    out = prepare_datasets(src, args.nnunet_raw, args.dataset_id, num_workers=args.workers,
                           verify=not args.no_verify, progress=True, overwrite=args.overwrite)
    for kind, folder in out.items():
        print(f"{kind}: {folder}")
    print("next: nnUNetv2_plan_and_preprocess -d "
          f"{args.dataset_id} {args.dataset_id + 1} -pl nnUNetPlannerResEncL (see docs/models.md)")
    return 0
