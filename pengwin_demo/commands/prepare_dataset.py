"""``prepare-dataset``: a PENGWIN-layout folder -> nnU-Net v2 raw datasets (ABBC and anatomy)."""

from __future__ import annotations

NAME = "prepare-dataset"
HELP = "convert images/*.mha + labels/*.mha (PENGWIN layout) into nnU-Net ABBC and anatomy datasets"


def add_arguments(parser) -> None:
    parser.add_argument("src", help="folder with images/ and labels/ (PENGWIN zips or `phantom` output)")
    parser.add_argument("nnunet_raw", help="nnU-Net raw folder (nnUNet_raw) to write the datasets into")
    parser.add_argument("--dataset-id", type=int, default=501,
                        help="id of the ABBC dataset; the anatomy dataset gets id+1 (default 501)")
    parser.add_argument("--workers", type=int, default=2, help="cases converted in parallel (default 2)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing dataset folders")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip nnU-Net's verify_dataset_integrity afterwards")


def run(args) -> int:
    from ..training import prepare_datasets

    out = prepare_datasets(args.src, args.nnunet_raw, args.dataset_id, num_workers=args.workers,
                           verify=not args.no_verify, progress=True, overwrite=args.overwrite)
    for kind, folder in out.items():
        print(f"{kind}: {folder}")
    print("next: nnUNetv2_plan_and_preprocess -d "
          f"{args.dataset_id} {args.dataset_id + 1} -pl nnUNetPlannerResEncL (see docs/models.md)")
    return 0
