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
    parser.add_argument("--fragment-probs", default=None, metavar="N=W,...",
                        help="fragment-count distribution per bone, e.g. '1=0.2,4=0.4,10=0.4' "
                             "(default: mostly 1-3 fragments, a tail up to 10)")


def _parse_probs(text: str | None) -> dict[int, float] | None:
    if not text:
        return None
    probs: dict[int, float] = {}
    try:
        for item in text.split(","):
            k, v = item.split("=")
            probs[int(k)] = float(v)
    except ValueError:
        raise InputError(
            f"--fragment-probs {text!r}: expected COUNT=WEIGHT pairs separated by commas, "
            "e.g. '1=0.5,3=0.5'"
        ) from None
    if not probs or min(probs) < 1 or max(probs) > 10 or min(probs.values()) < 0 or sum(probs.values()) <= 0:
        raise InputError(
            f"--fragment-probs {text!r}: counts must be 1-10 and weights non-negative with a "
            "positive sum"
        )
    return probs


def run(args) -> int:
    from ..phantom import write_phantom_dataset

    if args.cases < 1:
        raise InputError(f"--cases must be at least 1, got {args.cases}")
    if args.seed < 0:
        raise InputError(f"--seed must be >= 0, got {args.seed}")
    probs = _parse_probs(args.fragment_probs)
    names = write_phantom_dataset(args.out, args.cases, args.seed, size=args.size, fmt=args.fmt,
                                  progress=True, fragment_probabilities=probs)
    print(f"wrote {len(names)} case(s) to {args.out}")
    return 0
