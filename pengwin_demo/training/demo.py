"""The bundled demo models, end to end: phantoms -> datasets -> plans -> training -> cards."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import replace
from pathlib import Path


from .cards import write_model_card
from .datasets import DEMO_CONFIGURATION, dataset_folder_name, prepare_datasets
from .nnunet_run import DemoConfig, NnunetDirs, init_from_run, plan_and_preprocess, preprocess_only, preprocessed_ready, strip_model, train

log = logging.getLogger(__name__)


DEMO_DATASET_ID = 501
TRAIN_SEED = 1
"""Phantom seed of the demo training set (held-out evaluation uses other seeds)."""

DEMO_CONFIGS: dict[str, dict[str, DemoConfig]] = {
    "bootstrap": {
        "anatomy": DemoConfig((3.0, 3.0, 3.0), (64, 64, 64), (8, 16, 32, 64), 2, 6, 25, 2),
        "abbc": DemoConfig((2.5, 2.5, 2.5), (64, 64, 64), (8, 16, 32, 64), 2, 6, 25, 2),
    },
    "demo": {
        "anatomy": DemoConfig((4.0, 4.0, 4.0), (64, 64, 64), (8, 16, 32, 64), 2, 60, 25, 2),
        "abbc": DemoConfig((2.0, 2.0, 2.0), (64, 64, 64), (8, 16, 32, 64, 128), 2, 50, 25, 2),
    },
}
"""Named recipes: a few-minute ``bootstrap`` pair and the bundled ``demo`` pair."""


def train_demo_models(
    work_dir: str | os.PathLike,
    models_dir: str | os.PathLike,
    recipe: str = "demo",
    cases: int = 24,
    seed: int = TRAIN_SEED,
    size: str = "small",
    device: str = "cpu",
    threads: int = 2,
    parallel: bool = True,
    epochs: int | None = None,
    kinds: tuple[str, ...] = ("anatomy", "abbc"),
    max_seconds: float | None = None,
    iterations_per_epoch: int | None = None,
    extend: bool = False,
    init_from: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Phantoms -> nnU-Net datasets -> plans -> training -> stripped models in ``models_dir``.

    Parameters
    ----------
    work_dir : path-like
        Scratch folder (phantoms, nnU-Net raw/preprocessed/results, logs); reused when
        present, so an interrupted run resumes.
    models_dir : path-like
        Where ``anatomy/`` and ``abbc/`` (inference-only model folders) are written.
    recipe : {"bootstrap", "demo"}
        Configuration set from :data:`DEMO_CONFIGS`.
    cases, seed, size : phantom training set (:func:`pengwin_demo.phantom.write_phantom_dataset`).
    device : str
        "cpu" or "cuda".
    threads : int
        Torch threads per training process.
    parallel : bool
        Train both models at the same time (each with ``threads`` threads).
    epochs : int, optional
        Override the recipe's epoch count.
    max_seconds : float, optional
        Training time budget per model, s (see :attr:`DemoConfig.max_seconds`); ``epochs``
        then only caps the run.
    iterations_per_epoch : int, optional
        Override the recipe's iterations per epoch.
    extend : bool
        Continue finished trainings in ``work_dir`` (needs ``max_seconds``), see :func:`train`.
    init_from : path-like, optional
        Work folder of a finished run whose models this run continues on its own phantoms
        (fine-tuning, :func:`init_from_run`); implies ``extend``.
    """
    if init_from is not None:
        extend = True
    from concurrent.futures import ThreadPoolExecutor

    work, out = Path(work_dir), Path(models_dir)
    work.mkdir(parents=True, exist_ok=True)
    log_dir = work / "logs"
    log_dir.mkdir(exist_ok=True)
    phantoms = work / f"phantoms_{size}_{seed}_{cases}"
    if not (phantoms / "phantoms.json").is_file():
        from ..phantom import write_phantom_dataset

        log.info("writing %d %s phantoms (seed %d) to %s", cases, size, seed, phantoms)
        write_phantom_dataset(phantoms, cases, seed, size, progress=True)
    dirs = NnunetDirs.under(work)
    numbers = {"abbc": DEMO_DATASET_ID, "anatomy": DEMO_DATASET_ID + 1}
    if not all((dirs.raw / dataset_folder_name(k, DEMO_DATASET_ID) / "dataset.json").is_file() for k in kinds):
        prepare_datasets(phantoms, dirs.raw, DEMO_DATASET_ID, num_workers=max(1, threads), overwrite=True)
    overrides = {name: cast(value) for name, cast, value in (
        ("epochs", int, epochs), ("max_seconds", float, max_seconds),
        ("iterations_per_epoch", int, iterations_per_epoch)) if value is not None}
    configs = {k: replace(DEMO_CONFIGS[recipe][k], **overrides) for k in kinds}
    for kind in kinds:
        if init_from is not None:
            init_from_run(init_from, kind, DEMO_DATASET_ID, dirs)
        if preprocessed_ready(kind, DEMO_DATASET_ID, dirs, configs[kind]):
            log.info("%s: reusing the preprocessed %s data in %s", kind, DEMO_CONFIGURATION, dirs.preprocessed)
            continue
        if init_from is not None:
            preprocess_only(numbers[kind], dirs, 1, log_dir / f"plan_{kind}.log", threads)
        else:
            plan_and_preprocess(numbers[kind], dirs, configs[kind], 1, log_dir / f"plan_{kind}.log", threads)

    def one(kind: str) -> Path:
        results = train(numbers[kind], dirs, configs[kind], device, log_dir / f"train_{kind}.log", threads,
                        extend=extend)
        target = out / kind
        if target.exists():
            shutil.rmtree(target)
        strip_model(results, target)
        write_model_card(target, kind, configs[kind], recipe=recipe, cases=cases, seed=seed, size=size,
                         device=device, train_log=log_dir / f"train_{kind}.log")
        return target

    if parallel and len(kinds) > 1:
        with ThreadPoolExecutor(len(kinds)) as pool:
            done = dict(zip(kinds, pool.map(one, kinds)))
    else:
        done = {k: one(k) for k in kinds}
    return done
