"""``abbc``: PENGWIN fragment label map(s) -> ABBC training target map(s).

``python -m pengwin_demo abbc IN OUT`` converts one file; with a folder IN, every volume
file in it is converted into the folder OUT (same file names), in parallel, with a
progress bar.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..recovery import targets as abbc
from ..errors import InputError
from ..io import is_volume_file, read_volume, volume_suffix, write_volume
from ..labels import MAX_LABEL

NAME = "abbc"
HELP = "fragment label map(s) -> ABBC targets (0 bg, 1 boundary, 2 core, 3 border)"

log = logging.getLogger(__name__)


def add_arguments(parser) -> None:
    parser.add_argument("input", help="a PENGWIN fragment label file (0-30), or a folder of them")
    parser.add_argument("output", help="output file, or output folder when INPUT is a folder")
    parser.add_argument("--border-mm", type=float, default=abbc.BORDER_MM,
                        help="largest fracture-zone width, mm (default %(default)s)")
    parser.add_argument("--border-radius-fraction", type=float,
                        default=abbc.BORDER_RADIUS_FRACTION,
                        help="zone width at most this fraction of the thinner fragment's "
                             "inscribed radius; 0 turns the scaling off (default %(default)s)")
    parser.add_argument("--core-mm", type=float, default=abbc.CORE_MM,
                        help="deeper than this is core, mm (default %(default)s)")
    parser.add_argument("--laplacian-threshold", type=float, default=abbc.LAPLACIAN_THRESHOLD,
                        help="core where -Laplacian exceeds this (default %(default)s)")
    parser.add_argument("--sigma-vox", type=float, default=abbc.SIGMA_VOX,
                        help="Gaussian sigma, voxels of the finest axis (default %(default)s)")
    parser.add_argument("--min-core-vox", type=int, default=abbc.MIN_CORE_VOX,
                        help="guaranteed core voxels per fragment (default %(default)s)")
    parser.add_argument("-j", "--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                        help="files converted at once for a folder (default %(default)s)")


def _options(args) -> dict:
    """The ``abbc_targets`` keywords from the command line; InputError for a bad value."""
    if args.border_mm < 0 or args.core_mm <= 0 or args.sigma_vox < 0 or args.min_core_vox < 1:
        raise InputError(
            "--border-mm >= 0, --core-mm > 0, --sigma-vox >= 0 and --min-core-vox >= 1 are "
            f"required, got {args.border_mm}, {args.core_mm}, {args.sigma_vox}, {args.min_core_vox}"
        )
    fraction = args.border_radius_fraction
    return dict(
        border_mm=args.border_mm,
        border_radius_fraction=fraction if fraction and fraction > 0 else None,
        core_mm=args.core_mm,
        laplacian_threshold=args.laplacian_threshold,
        sigma_vox=args.sigma_vox,
        min_core_vox=args.min_core_vox,
    )


def convert_file(src: str | os.PathLike, dst: str | os.PathLike, options: dict,
                 parallel: int = 2) -> dict:
    """Read ``src`` (fragment labels), write its ABBC map to ``dst`` on the same grid.

    Returns the voxel count of each ABBC class.

    Raises
    ------
    InputError
        ``src`` is unreadable or holds values above the PENGWIN labels (0-30).
    """
    vol = read_volume(src, kind="label")  # 3D, uint8, a valid spacing
    top = int(vol.array.max()) if vol.array.size else 0
    if top > MAX_LABEL:
        raise InputError(
            f"{Path(src).name}: label values up to {top}; PENGWIN fragment labels are "
            f"0-{MAX_LABEL}. Convert the map to PENGWIN labels first."
        )
    target = abbc.abbc_targets(vol.array, vol.spacing_zyx_mm, parallel=parallel, **options)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    write_volume(vol.with_array(target), dst)
    counts = np.bincount(target.ravel(), minlength=4)
    return {name: int(counts[k]) for k, name in abbc_names().items()}


def abbc_names() -> dict:
    from ..labels import ABBC_NAMES

    return ABBC_NAMES


def run(args) -> int:
    src, dst = Path(args.input), Path(args.output)
    options = _options(args)
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if is_volume_file(p))
        if not files:
            raise InputError(f"{src}: no .nii/.nii.gz/.mha/.nrrd files in this folder")
        if dst.exists() and not dst.is_dir():
            raise InputError(f"{dst}: INPUT is a folder, so OUTPUT must be a folder too")
        dst.mkdir(parents=True, exist_ok=True)
        failures = 0
        workers = max(1, int(args.workers))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            jobs = {pool.submit(convert_file, f, dst / f.name, options, 1): f for f in files}
            for job in tqdm(as_completed(jobs), total=len(jobs), unit="file", desc="abbc"):
                try:
                    job.result()
                except InputError as err:
                    failures += 1
                    tqdm.write(f"error: {err}")
        print(f"{len(files) - failures} of {len(files)} files converted into {dst}")
        return 1 if failures else 0
    if not src.exists():
        raise InputError(f"{src}: file not found. Give a fragment label file or a folder.")
    if volume_suffix(dst) is None:
        raise InputError(f"{dst}: give an output file name ending in .nii.gz, .nii, .mha or .nrrd")
    counts = convert_file(src, dst, options)
    print(f"{dst}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0
