"""Train the fragment (ABBC) model on real bone-masked fractured pelves.

Per-bone masked cases (:mod:`pengwin_demo.masked_cases`) -> PENGWIN-layout cases cropped to
their bones, optionally with the same pelves as Stage 2 sees them in a real scan
(:mod:`.in_body`) -> the nnU-Net ABBC raw dataset (:func:`pengwin_demo.training.prepare_datasets`)
-> plans with the ``3d_demo`` configuration of :data:`REAL_ABBC_CONFIG` -> training that
starts from another model's weights (by default the bundled ABBC model) -> an
inference-only model folder. Held-out patients are named and never written into the
training set, so a model can be scored on patients it never saw
(``benchmarks/bench_real_fragments.py``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..masked_cases import find_masked_cases, read_masked_case, write_pengwin_cases
from ..volume import bounding_box
from .cards import training_summary
from .datasets import prepare_datasets
from .in_body import IN_BODY_OPTIONS, in_body_case
from .nnunet_run import DemoConfig, NnunetDirs, train_and_export

log = logging.getLogger(__name__)

__all__ = ["REAL_ABBC_CONFIG", "REAL_DATASET_ID", "CASE_MARGIN_VOX", "LICENCE", "write_training_cases",
           "train_real_abbc", "write_real_card", "checkpoint_file"]

REAL_DATASET_ID = 511
"""nnU-Net dataset id of the real ABBC training set (the anatomy set gets 512)."""

CASE_MARGIN_VOX = 12
"""Training cases are cropped to their bones plus this many voxels (about 10 mm), the
room the pipeline leaves around the Stage-1 bones at inference."""

REAL_ABBC_CONFIG = DemoConfig(
    spacing_zyx_mm=(1.5, 1.5, 1.5), patch_size_vox=(64, 64, 64),
    features_per_stage=(8, 16, 32, 64, 128), batch_size=2, epochs=1000,
    iterations_per_epoch=25, val_iterations_per_epoch=2, initial_lr=0.01, mirror=True,
)
"""1.5 mm: the expert fragments taken to 1.5 mm and back keep official IoU-F 0.974 on the
five real pelves (2.0 mm: 0.911, 1.0 mm: 0.990; ``benchmarks/bench_real_resolution.py``),
while a pelvis at 1.5 mm (about 2.5 M voxels) still runs in seconds on a CPU. The network
is the bundled demo model's, so its weights start the training."""


def write_training_cases(sources: list[str | os.PathLike], out_dir: str | os.PathLike,
                         holdout: tuple[str, ...] = (), bodies_per_case: int = 0, seed: int = 0,
                         fatty_marrow_probability: float = IN_BODY_OPTIONS.fatty_marrow_probability
                         ) -> list[str]:
    """Write every per-bone masked case of ``sources`` but ``holdout`` as PENGWIN layout.

    Each case is cropped to its bones plus :data:`CASE_MARGIN_VOX` (the masked CT is 0
    outside them anyway). With ``bodies_per_case``, each also gives that many cases
    ``<case>_bodyNN`` as Stage 2 sees a real scan (:func:`.in_body.in_body_case`, drawn
    from ``seed``; the bones get fatty marrow in a share ``fatty_marrow_probability`` of them).
    Returns the (patient) case names used.

    Raises
    ------
    InputError
        A source holds no case, two cases share a name, or a held-out name matches no case.
    """
    cases = [c for src in sources for c in find_masked_cases(src)]
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise InputError(f"case names repeat across the sources ({sorted(names)}); rename the folders.")
    unknown = sorted(set(holdout) - set(names))
    if unknown:
        raise InputError(f"held-out case(s) {unknown} are not among the cases {sorted(names)}.")
    options = replace(IN_BODY_OPTIONS, fatty_marrow_probability=float(fatty_marrow_probability))
    written = []
    for i, case in enumerate(cases):
        if case.name in holdout:
            continue
        ct, labels = read_masked_case(case)
        box = bounding_box(labels.array > 0, CASE_MARGIN_VOX)
        write_pengwin_cases([(case.name, ct.crop(box), labels.crop(box))], out_dir)
        for k in range(bodies_per_case):
            body = in_body_case(ct, labels, np.random.default_rng([seed, i, k]), options)
            write_pengwin_cases([(f"{case.name}_body{k:02d}", *body)], out_dir)
            log.info("%s: in-body case %d written", case.name, k)
        written.append(case.name)
    if not written:
        raise InputError("no training case left after holding out " + ", ".join(holdout))
    return written


def train_real_abbc(
    work_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    sources: list[str | os.PathLike],
    *,
    holdout: tuple[str, ...] = (),
    init_weights: str | os.PathLike | None = None,
    max_seconds: float | None = None,
    bodies_per_case: int = 0,
    seed: int = 0,
    fatty_marrow_probability: float = IN_BODY_OPTIONS.fatty_marrow_probability,
    config: DemoConfig = REAL_ABBC_CONFIG,
    device: str = "cpu",
    threads: int = 2,
) -> Path:
    """Real masked pelves -> an ABBC model in ``out_dir``; resumes an interrupted run.

    Parameters
    ----------
    work_dir : path-like
        Scratch folder (PENGWIN cases, nnU-Net folders, logs); reused when present.
    out_dir : path-like
        Where the inference-only model folder is written (replaced).
    sources : list of path-like
        Folders of per-bone masked cases.
    holdout : tuple of str
        Case (patient) names kept out of training, for validation.
    init_weights : path-like, optional
        A model folder or checkpoint whose weights start the training.
    max_seconds : float, optional
        Training time budget, s (the learning rate decays over it).
    bodies_per_case, seed : int
        In-body cases per patient besides its masked case, and their seed
        (:func:`write_training_cases`).
    fatty_marrow_probability : float
        Share of the in-body cases whose bones get fatty marrow, 0..1.
    """
    work = Path(work_dir)
    cases_dir = work / "pengwin_cases"
    record = work / "cases.json"
    if not 0.0 <= fatty_marrow_probability <= 1.0:
        raise InputError(f"fatty_marrow_probability must lie between 0 and 1, not {fatty_marrow_probability}")
    drawn = {"bodies_per_case": int(bodies_per_case), "seed": int(seed),
             "fatty_marrow_probability": float(fatty_marrow_probability)}
    if not record.is_file():
        names = write_training_cases(list(sources), cases_dir, tuple(holdout), **drawn)
        prepare_datasets(cases_dir, NnunetDirs.under(work).raw, REAL_DATASET_ID, num_workers=1, overwrite=True)
        record.write_text(json.dumps({"training": names, "holdout": sorted(holdout), **drawn}, indent=2))
    cases = json.loads(record.read_text())
    _check_resumed(cases, drawn, work)
    cfg = replace(config, init_weights=checkpoint_file(init_weights),
                  max_seconds=max_seconds if max_seconds is not None else config.max_seconds)
    train_log = train_and_export(work, out_dir, "abbc", REAL_DATASET_ID, cfg, device, threads)
    write_real_card(Path(out_dir), cfg, cases["training"], cases["holdout"], device, train_log, **drawn)
    return Path(out_dir)


RECORD_DEFAULTS = {"bodies_per_case": 0, "seed": 0,
                   "fatty_marrow_probability": IN_BODY_OPTIONS.fatty_marrow_probability}
"""In-body options of a ``cases.json`` that does not name them (written before they existed)."""


def _check_resumed(cases: dict, drawn: dict, work: Path) -> None:
    """Refuse to resume a work folder whose cases (its ``cases.json``) were drawn with other
    in-body options."""
    before = {key: cases.get(key, RECORD_DEFAULTS[key]) for key in drawn}
    if before != drawn:
        raise InputError(
            f"{work}: its training cases were written with {before}, not {drawn}; "
            "use a new --work-dir, or the options it was made with.")


LICENCE = ("CC BY-NC-SA 4.0 (non-commercial, share alike), inherited from the real training "
           "data (PENGWIN / FracSegNet pelvic fracture CTs); the code is Apache-2.0")


def write_real_card(model_dir: Path, cfg: DemoConfig, training_cases: list[str], holdout: list[str],
                    device: str, train_log: Path | None, notes: str = "", *, bodies_per_case: int = 0,
                    seed: int = 0,
                    fatty_marrow_probability: float = IN_BODY_OPTIONS.fatty_marrow_probability) -> Path:
    """Write ``training.json`` and ``MODEL_CARD.md`` for a model from :func:`train_real_abbc`.

    ``notes`` (markdown) is appended, e.g. the measured quality and the training history.
    """
    summary = training_summary(train_log)
    info = {"kind": "abbc", "data": "real per-bone masked fractured pelves", "training_cases": training_cases,
            "holdout_cases": holdout, "bodies_per_case": bodies_per_case, "seed": seed,
            "fatty_marrow_probability": fatty_marrow_probability if bodies_per_case else None,
            "config": asdict(cfg), "device": device, "licence": LICENCE, **summary}
    info["config"]["init_weights"] = Path(cfg.init_weights).parent.parent.name if cfg.init_weights else None
    (model_dir / "training.json").write_text(json.dumps(info, indent=2))
    in_body = reproduce = ""
    if bodies_per_case:
        in_body = (f"\n- Each pelvis also in {bodies_per_case} synthetic bodies (seed {seed}; fatty marrow in "
                   f"about {fatty_marrow_probability:.0%} of them),\n  cut to its bone box and masked as Stage 2 "
                   "masks a real scan, around a surface drawn off the expert one.")
        reproduce = f" --bodies-per-case {bodies_per_case} --seed {seed} --fatty-marrow {fatty_marrow_probability:g}"
    weights_mb = sum(f.stat().st_size for f in model_dir.glob("fold_*/*.pth")) / 1e6
    card = f"""# ABBC model trained on real fractured pelves (nnU-Net v2, `3d_demo`)

**Research use only, not for clinical use.** Licence of the weights: {LICENCE}.

- Task: Stage 2, ABBC classes (0 background, 1 boundary, 2 core, 3 border / fracture zone)
  of the pelvic bones, from a CT cropped to the bones and set to 0 HU outside them.
- Data: {len(training_cases)} real fractured pelves, each bone masked separately, with
  expert fragment labels: {", ".join(training_cases)}. Held out (never in training):
  {", ".join(holdout) if holdout else "none"}.{in_body}
- Configuration `3d_demo` (inherits nnU-Net's `3d_fullres` plans of these data): spacing
  {tuple(cfg.spacing_zyx_mm)} mm (z, y, x), patch {tuple(cfg.patch_size_vox)} voxels,
  features per stage {tuple(cfg.features_per_stage)}, batch {cfg.batch_size}; patches mirrored
  along every axis in training{", " if cfg.mirror else " (off), "}no mirroring at inference.
- Training: started from {info["config"]["init_weights"] or "random weights"}; {summary.get("epochs", "?")} epochs x
  {cfg.iterations_per_epoch} iterations on `{device}` ({summary.get("seconds_per_epoch", "?")} s per epoch),
  learning rate decayed over a {(cfg.max_seconds or 0) / 60:.0f}-minute budget; last training
  pseudo-Dice per class {summary.get("last_pseudo_dice", [])}.
- Files: inference only (dataset.json, plans.json, fingerprint, `fold_all/checkpoint_final.pth`
  with float16 weights), {weights_mb:.2f} MB of weights.
- Reproduce: `python -m pengwin_demo train-abbc DATA_DIR --work-dir W --out OUT
  --max-minutes N [--holdout CASES] [--init-weights MODEL]{reproduce}`.
"""
    path = model_dir / "MODEL_CARD.md"
    path.write_text(card + (f"\n{notes.strip()}\n" if notes.strip() else ""))
    return path


def checkpoint_file(source: str | os.PathLike | None) -> str | None:
    """The checkpoint file of a model folder (or the file itself); None stays None."""
    if source is None:
        return None
    path = Path(source)
    if path.is_dir():
        found = sorted(path.glob("fold_*/checkpoint_final.pth"))
        if not found:
            raise InputError(f"{path}: no fold_*/checkpoint_final.pth to start the training from.")
        path = found[0]
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint to start the training from.")
    return str(path.resolve())
