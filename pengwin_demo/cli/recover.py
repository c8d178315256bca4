"""``recover``: ABBC prediction + anatomy map -> PENGWIN fragment label map."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..recovery import recover_fragments
from ..io import read_volume, write_like

NAME = "recover"
HELP = "turn an ABBC map (0 bg, 1 boundary, 2 core, 3 border) and an anatomy map into PENGWIN fragments"


def add_arguments(parser) -> None:
    parser.add_argument("--abbc", required=True, help="ABBC label map (.nii.gz, .mha, .nrrd ...)")
    parser.add_argument(
        "--anatomy", required=True,
        help="anatomy map on the same grid: 0 background, 1 sacrum, 2 left hip, 3 right hip",
    )
    parser.add_argument("-o", "--output", required=True, help="PENGWIN label map to write (0-30)")
    parser.add_argument("--table", help="also write the fragment table as JSON here")
    parser.add_argument("--method", choices=("fast", "reference"), default="fast",
                        help="geodesic growth: fast (default) or per-seed scikit-fmm reference")
    parser.add_argument("--min-seed-vox", type=int, default=50,
                        help="core components smaller than this are not seeds (default 50)")
    parser.add_argument("--min-fragment-vox", type=int, default=1000,
                        help="fragments smaller than this merge into a neighbour (default 1000)")


def run(args) -> int:
    abbc = read_volume(args.abbc, kind="label")
    anatomy = read_volume(args.anatomy, kind="label")
    if not abbc.same_grid(anatomy):
        raise InputError(
            f"{Path(args.anatomy).name} and {Path(args.abbc).name} are on different grids "
            f"(shape z, y, x {anatomy.shape} vs {abbc.shape}; spacing mm "
            f"{_r(anatomy.spacing_zyx_mm)} vs {_r(abbc.spacing_zyx_mm)}; origin LPS mm "
            f"{_r(anatomy.origin_lps_mm)} vs {_r(abbc.origin_lps_mm)}). Both maps must come "
            "from the same CT grid; resample the anatomy map onto the ABBC map (nearest "
            "neighbour) first."
        )
    for name, vol in ((args.abbc, abbc), (args.anatomy, anatomy)):
        if vol.array.max() > 3:
            raise InputError(
                f"{Path(name).name}: values up to {int(vol.array.max())}; expected 0-3. "
                "Check that --abbc is the ABBC map and --anatomy the anatomy map."
            )
    result = recover_fragments(
        abbc.array, anatomy.array, abbc.spacing_zyx_mm,
        min_seed_vox=args.min_seed_vox, min_fragment_vox=args.min_fragment_vox,
        method=args.method,
    )
    out = write_like(result.labels, abbc, args.output)
    for f in result.fragments:
        print(f"label {f['label']:2d}  {f['bone']:9s}  {f['voxels']:9d} voxels  "
              f"{f['volume_mm3'] / 1000:8.2f} mL  seeds {f['seeds']}")
    for w in result.warnings:
        print(f"warning: {w}")
    print(f"wrote {out} ({len(result.fragments)} fragments)")
    if args.table:
        Path(args.table).parent.mkdir(parents=True, exist_ok=True)
        Path(args.table).write_text(
            json.dumps({"fragments": result.fragments, "warnings": result.warnings}, indent=2)
        )
    return 0


def _r(values) -> tuple:
    return tuple(round(float(v), 3) for v in values)
