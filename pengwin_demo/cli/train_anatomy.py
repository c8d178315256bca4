"""``train-anatomy``: train the anatomy model on real pelves placed in synthetic bodies (and real whole CTs)."""

from __future__ import annotations

from pathlib import Path

from ._options import add_fatty_marrow, add_real_training, fatty_marrow_ok, real_training_inputs

NAME = "train-anatomy"
HELP = ("train the anatomy (Stage 1) model on real per-bone masked pelves inside synthetic bodies "
        "and on real whole CTs with bone masks")


def add_arguments(parser) -> None:
    add_real_training(parser, "anatomy")
    parser.add_argument("--bodies-per-case", type=int, default=8,
                        help="synthetic bodies each real pelvis is placed in (half mirrored; default 8)")
    parser.add_argument("--view", choices=("whole-body", "pelvis-box"), default="whole-body",
                        help="whole-body: the anatomy model that finds the pelvis in any scan (default); "
                             "pelvis-box: the refining model the pipeline runs at 2.5 mm on the box the "
                             "first one found")
    parser.add_argument("--phantoms", type=int, default=12,
                        help="small full-context phantoms added to the training set (default 12)")
    parser.add_argument("--whole-ct", action="append", default=[], metavar="DIR",
                        help="real whole CTs with bone masks to train with as well: a case folder "
                             "(ct.nii.gz, segmentations/{sacrum,hip_left,hip_right}.nii.gz, as the "
                             "TotalSegmentator data set) or a folder of them; repeatable; --holdout "
                             "takes their folder names")
    parser.add_argument("--whole-ct-filled-canal", action="store_true",
                        help="the --whole-ct sacrum masks include the sacral canal and foramina (as "
                             "manual outlines often do; PENGWIN's labels do not): their sacrum voxels "
                             "under 100 HU are left out of the loss")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic bodies (default 0)")
    add_fatty_marrow(parser, "bodies")


def run(args) -> int:
    from ..models import bundled_model_path, bundled_refine_path
    from ..training import AnatomyView, CompositeOptions, train_real_anatomy

    if not fatty_marrow_ok(args):
        return 2
    view = AnatomyView(args.view)
    refine = view is AnatomyView.PELVIS_BOX
    inputs = real_training_inputs(args, "anatomy")
    if inputs is None:
        return 2
    if refine and args.init_weights == "bundled":  # the bundled refining model, else the first one
        inputs["init_weights"] = str(bundled_refine_path() or bundled_model_path("anatomy"))
    out = train_real_anatomy(args.work_dir, Path(args.out), args.sources, whole_ct=args.whole_ct,
                             whole_ct_filled_canal=args.whole_ct_filled_canal,
                             per_case=args.bodies_per_case,
                             phantoms=args.phantoms, seed=args.seed, view=view,
                             options=CompositeOptions(fatty_marrow_probability=args.fatty_marrow), **inputs)
    print(f"anatomy: {out}")
    return 0
