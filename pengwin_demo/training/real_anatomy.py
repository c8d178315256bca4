"""Train the anatomy (Stage 1) model on real pelves placed in synthetic bodies.

Real per-bone masked pelves (:mod:`pengwin_demo.masked_cases`) -> composites
(:func:`pengwin_demo.training.composite_case`: each real pelvis in several random bodies,
half of them mirrored with left and right swapped, plus crops above the pelvis with no
pelvic bone at all) and, optionally, full-context phantoms -> the nnU-Net anatomy raw
dataset -> plans with :data:`REAL_ANATOMY_CONFIG` -> training that starts from another
model's weights -> an inference-only model folder with its card. Held-out patients are
never composited, so a model can be checked on bones it never saw.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, replace
from enum import Enum
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..masked_cases import find_masked_cases, read_masked_case, write_pengwin_cases
from .cards import training_summary
from .composite import CompositeOptions, composite_case, mirror_case, pelvis_box_crop, pelvis_free_crop
from .datasets import dataset_folder_name, prepare_datasets
from .nnunet_run import DemoConfig, NnunetDirs, train_and_export
from .real_abbc import LICENCE, checkpoint_file
from .whole_ct import FILLED_CANAL_BELOW_HU, find_whole_ct_cases, ignore_filled_canal, write_whole_ct_cases

log = logging.getLogger(__name__)

__all__ = ["REAL_ANATOMY_CONFIG", "REFINE_ANATOMY_CONFIG", "ANATOMY_DATASET_ID", "AnatomyView",
           "write_composite_cases", "train_real_anatomy"]

ANATOMY_DATASET_ID = 521
"""nnU-Net id of the composite set's ABBC half; the anatomy set used here is id + 1."""

REAL_ANATOMY_CONFIG = DemoConfig(
    spacing_zyx_mm=(4.0, 4.0, 4.0), patch_size_vox=(64, 64, 64), features_per_stage=(8, 16, 32, 64),
    batch_size=2, epochs=1000, iterations_per_epoch=25, val_iterations_per_epoch=2, initial_lr=0.01,
    mirror=False,
)
"""The bundled anatomy network (4 mm, a 256 mm patch: the whole pelvis in view). No
mirroring in nnU-Net's augmentation, which would swap the sides without their labels;
mirrored composites swap both."""

REFINE_ANATOMY_CONFIG = replace(REAL_ANATOMY_CONFIG, spacing_zyx_mm=(2.5, 2.5, 2.5), patch_size_vox=(80, 80, 80))
"""The refining anatomy network: the same network at 2.5 mm on the pelvis box (a 200 mm
patch), where the 4 mm model places surfaces a voxel off and takes the lowest lumbar
vertebra's articular processes for sacrum."""


class AnatomyView(str, Enum):
    """What an anatomy model is trained to look at."""

    WHOLE_BODY = "whole-body"
    """Whole composites and crops above the pelvis with no pelvic bone: the first model,
    which finds the pelvis in any scan (or refuses one without)."""
    PELVIS_BOX = "pelvis-box"
    """Each composite cut to its pelvic bones' box plus random margins
    (:func:`pengwin_demo.training.pelvis_box_crop`): the refining model, which the pipeline
    runs only on the box the first model found."""


def write_composite_cases(sources: list[str | os.PathLike], out_dir: str | os.PathLike, *,
                          holdout: tuple[str, ...] = (), per_case: int = 8, seed: int = 0,
                          phantoms: int = 0, options: CompositeOptions = CompositeOptions(),
                          view: AnatomyView = AnatomyView.WHOLE_BODY) -> list[str]:
    """Write composites of every case but ``holdout`` (and phantoms) in PENGWIN layout.

    Parameters
    ----------
    per_case : int
        Bodies per real pelvis; every second one is mirrored. In the whole-body view every
        fourth also gives a negative crop above the pelvis; in the pelvis-box view each is
        cut to its box.
    seed : int
        Seed of the bodies (same seed, same cases).
    phantoms : int
        Small full-context phantoms added (:func:`pengwin_demo.phantom.write_phantom_dataset`),
        in the pelvis-box view cut to their box as well.
    options : CompositeOptions
        Ranges the bodies are drawn from.

    Returns
    -------
    list of str
        The real case (patient) names used.
    """
    cases = [c for src in sources for c in find_masked_cases(src)]
    _check_holdout(holdout, [c.name for c in cases])
    used = []
    for i, case in enumerate(cases):
        if case.name in holdout:
            continue
        ct, labels = read_masked_case(case)
        for k in range(per_case):
            rng = np.random.default_rng([seed, i, k])
            c_ct, c_lab = composite_case(ct, labels, rng, options)
            if k % 2:
                c_ct, c_lab = mirror_case(c_ct, c_lab)
            if view is AnatomyView.PELVIS_BOX:
                c_ct, c_lab = pelvis_box_crop(c_ct, c_lab, rng)
            written = [(f"{case.name}_body{k:02d}", c_ct, c_lab)]
            above = pelvis_free_crop(c_ct, c_lab) if k % 4 == 0 and view is AnatomyView.WHOLE_BODY else None
            if above is not None:
                written.append((f"{case.name}_body{k:02d}_above", *above))
            write_pengwin_cases(written, out_dir)
            log.info("composite %s body %d written", case.name, k)
        used.append(case.name)
    if not used:
        raise InputError("no training case left after holding out " + ", ".join(holdout))
    if phantoms:
        from ..phantom import write_phantom_dataset

        names = write_phantom_dataset(out_dir, phantoms, seed + 1, "small", fmt="nii.gz")
        if view is AnatomyView.PELVIS_BOX:
            _cut_to_pelvis_box(Path(out_dir), names, np.random.default_rng([seed, len(cases)]))
    return used


def _check_holdout(holdout: tuple[str, ...], names: list[str]) -> None:
    unknown = sorted(set(holdout) - set(names))
    if unknown:
        raise InputError(f"held-out case(s) {unknown} are not among the cases {sorted(names)}.")


def _cut_to_pelvis_box(cases_dir: Path, names: list[str], rng: np.random.Generator) -> None:
    """Replace the PENGWIN-layout cases ``names`` in ``cases_dir`` by their pelvis-box crops."""
    from ..io import read_volume

    for name in names:
        ct = read_volume(cases_dir / "images" / f"{name}.nii.gz")
        labels = read_volume(cases_dir / "labels" / f"{name}.nii.gz", kind="label")
        write_pengwin_cases([(name, *pelvis_box_crop(ct, labels, rng))], cases_dir)


def train_real_anatomy(
    work_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    sources: list[str | os.PathLike],
    *,
    whole_ct: list[str | os.PathLike] = (),
    whole_ct_filled_canal: bool = False,
    holdout: tuple[str, ...] = (),
    per_case: int = 8,
    phantoms: int = 12,
    seed: int = 0,
    options: CompositeOptions = CompositeOptions(),
    view: AnatomyView = AnatomyView.WHOLE_BODY,
    init_weights: str | os.PathLike | None = None,
    max_seconds: float | None = None,
    config: DemoConfig | None = None,
    device: str = "cpu",
    threads: int = 2,
) -> Path:
    """Real masked pelves in synthetic bodies -> an anatomy model in ``out_dir``.

    ``work_dir`` keeps the cases, nnU-Net folders and logs, so a second call resumes
    (or, with the same budget, continues) the training. See :func:`write_composite_cases`
    for ``holdout``, ``per_case``, ``phantoms``, ``seed``, ``options`` and ``view``;
    ``whole_ct`` adds real whole CTs with bone masks (folders of cases, or cases;
    :func:`pengwin_demo.training.write_whole_ct_cases`, ``per_case`` variants each), whose
    names ``holdout`` may also give. With ``whole_ct_filled_canal`` their sacrum masks are
    taken to include the sacral canal and foramina, as manual outlines often do, unlike
    PENGWIN's labels: their low-HU sacrum voxels are left out of the loss
    (:func:`pengwin_demo.training.whole_ct.ignore_filled_canal`). The network is ``config``, by default
    :data:`REAL_ANATOMY_CONFIG` for the whole-body view and :data:`REFINE_ANATOMY_CONFIG`
    for the pelvis box.
    """
    view = AnatomyView(view)
    if config is None:
        config = REFINE_ANATOMY_CONFIG if view is AnatomyView.PELVIS_BOX else REAL_ANATOMY_CONFIG
    work = Path(work_dir)
    record = work / "cases.json"
    if not record.is_file():
        cases_dir = work / "pengwin_cases"
        scan_names = [f.name for root in whole_ct for f in find_whole_ct_cases(root)]
        masked = [c.name for src in sources for c in find_masked_cases(src)]
        _check_holdout(tuple(holdout), masked + scan_names)
        names = write_composite_cases(list(sources), cases_dir, holdout=tuple(h for h in holdout if h in masked),
                                      per_case=per_case, phantoms=phantoms, seed=seed, options=options, view=view)
        scans = write_whole_ct_cases(list(whole_ct), cases_dir, holdout=tuple(holdout), per_case=per_case,
                                     seed=seed, box_view=view is AnatomyView.PELVIS_BOX)
        # a composite cut to its pelvis box may hold no air, which the CT check asks of a scan
        prepare_datasets(cases_dir, NnunetDirs.under(work).raw, ANATOMY_DATASET_ID, num_workers=1, overwrite=True,
                         allow_non_ct=view is AnatomyView.PELVIS_BOX)
        ignored_ml = 0.0
        if whole_ct_filled_canal and scans:
            anatomy_raw = NnunetDirs.under(work).raw / dataset_folder_name("anatomy", ANATOMY_DATASET_ID)
            ignored_ml = ignore_filled_canal(anatomy_raw, list(scans))
            log.info("filled-canal sacrum masks: %.0f mL under %.0f HU left out of the loss", ignored_ml,
                     FILLED_CANAL_BELOW_HU)
        record.write_text(json.dumps({"training": names, "whole_ct_training": list(scans),
                                      "whole_ct_digests": scans, "whole_ct_filled_canal": bool(whole_ct_filled_canal),
                                      "whole_ct_ignored_ml": round(ignored_ml, 1), "holdout": sorted(holdout),
                                      "per_case": per_case,
                                      "phantoms": phantoms, "seed": seed, "view": view.value,
                                      "fatty_marrow_probability": options.fatty_marrow_probability}, indent=2))
    else:
        _check_resumed(record, seed, options, view)
    cfg = replace(config, init_weights=checkpoint_file(init_weights),
                  max_seconds=max_seconds if max_seconds is not None else config.max_seconds)
    train_log = train_and_export(work, out_dir, "anatomy", ANATOMY_DATASET_ID + 1, cfg, device, threads)
    write_anatomy_card(Path(out_dir), cfg, json.loads(record.read_text()), device, train_log)
    return Path(out_dir)


def _bodies_drawn(cases: dict) -> tuple[int, float]:
    """Seed and fatty-marrow share a work folder's composites were drawn with (a folder
    written before they were recorded used the defaults)."""
    return (int(cases.get("seed", 0)),
            float(cases.get("fatty_marrow_probability", CompositeOptions().fatty_marrow_probability)))


def _check_resumed(record: Path, seed: int, options: CompositeOptions, view: AnatomyView) -> None:
    """Refuse a resumed work folder whose composites were cut for another view; log when they
    were drawn with another seed or marrow share than asked (the folder's own are used)."""
    kept_view = json.loads(record.read_text()).get("view", AnatomyView.WHOLE_BODY.value)
    if kept_view != view.value:
        raise InputError(f"{record.parent} holds training cases of the {kept_view} view, not {view.value}: "
                         "give a new --work-dir (or the folder's own --view)")
    _warn_if_other_bodies(record, seed, options)


def _warn_if_other_bodies(record: Path, seed: int, options: CompositeOptions) -> None:
    """Log when a resumed work folder's composites were drawn with another seed or marrow
    share than asked: the folder's own cases are used, not new ones."""
    kept_seed, kept_marrow = _bodies_drawn(json.loads(record.read_text()))
    if (kept_seed, kept_marrow) != (seed, options.fatty_marrow_probability):
        log.warning("%s holds composites of seed %s with fatty-marrow share %s; they are used as they "
                    "are (a new --work-dir draws bodies with seed %s and share %s)", record.parent,
                    kept_seed, kept_marrow, seed, options.fatty_marrow_probability)


def _whole_ct_line(info: dict, box: bool) -> str:
    """The card's sentence on the real whole CTs trained with, or ''."""
    scans = info["whole_ct_training_cases"]
    if not scans:
        return ""
    return (f"\n  Also {len(scans)} real whole CT(s) with sacrum and hip bones masked ({', '.join(scans)};"
            "\n  the lumbar spine, femurs and all else background), "
            f"{info['bodies_per_case']} variants each with 20-120 mm of"
            "\n  scan below the bones and 40-250 mm above, half mirrored"
            f"{', cut to the box' if box else ', plus the part above the pelvis as a negative'}."
            + ("\n  Their sacrum masks include the canal and foramina: sacrum voxels under"
               f"\n  {FILLED_CANAL_BELOW_HU:.0f} HU there are left out of the loss (nnU-Net's ignore label)."
               if info["whole_ct_filled_canal"] else ""))


def write_anatomy_card(model_dir: Path, cfg: DemoConfig, cases: dict, device: str, train_log: Path | None,
                       notes: str = "") -> Path:
    """``training.json`` and ``MODEL_CARD.md`` of a model from :func:`train_real_anatomy`."""
    summary = training_summary(train_log)
    seed, marrow = _bodies_drawn(cases)
    whole = ", real whole CTs with bone masks" if cases.get("whole_ct_training") else ""
    info = {"kind": "anatomy", "data": f"real per-bone masked pelves in synthetic bodies{whole}, and phantoms",
            "training_cases": cases["training"], "whole_ct_training_cases": cases.get("whole_ct_training", []),
            "whole_ct_digests": cases.get("whole_ct_digests", {}),
            "whole_ct_filled_canal": bool(cases.get("whole_ct_filled_canal", False)),
            "holdout_cases": cases["holdout"],
            "bodies_per_case": cases["per_case"], "phantoms": cases["phantoms"], "seed": seed,
            "fatty_marrow_probability": marrow, "view": cases.get("view", AnatomyView.WHOLE_BODY.value),
            "config": asdict(cfg),
            "device": device, "licence": LICENCE, **summary}
    info["config"]["init_weights"] = Path(cfg.init_weights).parent.parent.name if cfg.init_weights else None
    (model_dir / "training.json").write_text(json.dumps(info, indent=2))
    weights_mb = sum(f.stat().st_size for f in model_dir.glob("fold_*/*.pth")) / 1e6
    box = info["view"] == AnatomyView.PELVIS_BOX.value
    card = f"""# {"Refining a" if box else "A"}natomy model trained with real pelvic bones (nnU-Net v2, `3d_demo`)

**Research use only, not for clinical use.** Licence of the weights: {LICENCE}.

- Task: Stage 1, anatomy (0 background, 1 sacrum, 2 left hip, 3 right hip) {
    "on the box of the bones a first anatomy model found (plus a margin): the pipeline's refining model"
    if box else "in a whole CT"}.
- Data: {len(cases["training"])} real fractured pelves ({", ".join(cases["training"])}), each
  placed in {cases["per_case"]} synthetic bodies (muscle, fat, bowel gas and fluid, bladder,
  contrast vessels, table; femurs in the real acetabula and lumbar vertebrae on the real
  sacrum, painted with the case's own bone intensities and labelled background; in
  {100 * marrow:.0f} % of them the real bones' cancellous interior blended towards fatty
  marrow, -80 to 30 HU; seed {seed}), half
  of them mirrored with the hip labels swapped, {
    "each cut to its pelvic bones' box plus 10-50 mm a side" if box else "plus crops above the pelvis as negatives"},
  and {cases["phantoms"]} small phantoms{" cut the same way" if box else ""}.{
    _whole_ct_line(info, box)} Held out (never in training):
  {", ".join(cases["holdout"]) if cases["holdout"] else "none"}.
- Configuration `3d_demo`: spacing {tuple(cfg.spacing_zyx_mm)} mm (z, y, x), patch
  {tuple(cfg.patch_size_vox)} voxels, features per stage {tuple(cfg.features_per_stage)},
  batch {cfg.batch_size}; no mirroring.
- Training: started from {info["config"]["init_weights"] or "random weights"}; {summary.get("epochs", "?")} epochs x
  {cfg.iterations_per_epoch} iterations on `{device}` ({summary.get("seconds_per_epoch", "?")} s per epoch),
  learning rate decayed over a {(cfg.max_seconds or 0) / 60:.0f}-minute budget; last training
  pseudo-Dice per class {summary.get("last_pseudo_dice", [])}.
- Files: inference only, {weights_mb:.2f} MB of weights.
- Reproduce: `python -m pengwin_demo train-anatomy DATA_DIR --work-dir W --out OUT
  --max-minutes N --seed {seed} --fatty-marrow {marrow}{" --view pelvis-box" if box else ""}{
    " --whole-ct SCANS" if info["whole_ct_training_cases"] else ""}{
    " --whole-ct-filled-canal" if info["whole_ct_filled_canal"] else ""}
  [--holdout CASES] [--init-weights PREVIOUS]`.
"""
    path = model_dir / "MODEL_CARD.md"
    path.write_text(card + (f"\n{notes.strip()}\n" if notes.strip() else ""))
    return path
