"""``convert``: DICOM folder / zip / file (or a volume file) -> NIfTI or MHA, choosing the CT series."""

from __future__ import annotations

from ..dicom import describe, load_ct
from ..errors import InputError
from ..io import volume_suffix, write_volume
from ._options import add_allow_non_ct

NAME = "convert"
HELP = "convert a DICOM folder, zip or file (or a volume file) to .nii.gz/.mha, choosing the CT series"


def add_arguments(parser) -> None:
    parser.add_argument("input", help="DICOM folder (searched recursively), .zip, DICOM file, or volume file")
    parser.add_argument("output", help="output volume: .nii.gz, .nii, .mha or .nrrd")
    parser.add_argument("--series", metavar="SERIES_UID", default=None,
                        help="use this SeriesInstanceUID instead of the automatic choice")
    add_allow_non_ct(parser)


def run(args) -> int:
    if volume_suffix(args.output) is None:
        raise InputError(
            f"{args.output}: unknown output type; end the name with .nii.gz, .nii, .mha or .nrrd."
        )
    ct = load_ct(args.input, series_uid=args.series, allow_non_ct=args.allow_non_ct)
    print(describe(ct))
    out = write_volume(ct.volume, args.output)
    print(f"wrote {out}")
    return 0
