"""``phantom``: write synthetic fractured-pelvis CTs with exact PENGWIN labels."""

from __future__ import annotations

from ..errors import InputError

NAME = "phantom"
HELP = "write synthetic fractured-pelvis CT phantoms with exact fragment labels (PENGWIN layout)"


def add_arguments(parser) -> None:
    parser.add_argument("out", help="output folder (gets images/, labels/, [dicom/], phantoms.json)")
    parser.add_argument("--cases", type=int, default=1, help="number of cases (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; same seed, same files")
    parser.add_argument("--size", choices=("small", "full"), default="small",
                        help="small: ~2 mm voxels (tests, training); full: 512x512 at 0.6-1.0 mm")
    parser.add_argument("--format", dest="fmt", choices=("mha", "nii.gz", "dicom"), default="mha",
                        help="image format; dicom also writes OUT/dicom/<case>/ CT series")


def run(args) -> int:
    from ..phantom import write_phantom_dataset

    if args.cases < 1:
        raise InputError(f"--cases must be at least 1, got {args.cases}")
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0, got {args.seed}")
    names = write_phantom_dataset(args.out, args.cases, args.seed, size=args.size, fmt=args.fmt,
                                  progress=True)
    print(f"wrote {len(names)} case(s) to {args.out}")
    return 0
