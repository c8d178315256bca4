"""Model cards (``MODEL_CARD.md``, ``training.json``) and the training-log summary they use."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .datasets import ABBC_LABELS, ANATOMY_LABELS, DEMO_CONFIGURATION, INFERENCE_TRAINER_NAME
from .nnunet_run import DemoConfig

log = logging.getLogger(__name__)


def training_summary(train_log: Path | None) -> dict:
    """Epochs run, seconds per epoch and last pseudo-Dice from an nnU-Net training log."""
    import re

    if train_log is None or not Path(train_log).is_file():
        return {}
    text = Path(train_log).read_text(errors="replace")
    epochs = re.findall(r"Epoch (\d+)\n", text)
    times = [float(t) for t in re.findall(r"Epoch time: ([\d.]+) s", text)]
    dice = re.findall(r"Pseudo dice \[(.*?)\]", text)
    last = [float(x) for x in re.findall(r"([\d.]+)\)", dice[-1])] if dice else []
    return {
        "epochs": int(epochs[-1]) + 1 if epochs else None,
        "seconds_per_epoch": round(float(np.median(times)), 1) if times else None,
        "last_pseudo_dice": last,
    }


TARGET_IOU_A = 0.95
TARGET_IOU_F = 0.85
"""The project's quality targets on held-out full-size phantoms (end to end)."""


def write_model_card(model_dir: Path, kind: str, cfg: DemoConfig, *, recipe: str, cases: int, seed: int,
                     size: str, device: str, train_log: Path | None = None,
                     quality: dict | None = None) -> Path:
    """Write ``MODEL_CARD.md`` (and ``training.json``) next to a bundled model."""
    model_dir = Path(model_dir)
    summary = training_summary(train_log)
    if not summary and (model_dir / "training.json").is_file():
        old = json.loads((model_dir / "training.json").read_text())
        summary = {k: old.get(k) for k in ("epochs", "seconds_per_epoch", "last_pseudo_dice")}
    info = {"kind": kind, "recipe": recipe, "config": asdict(cfg), "cases": cases, "seed": seed,
            "size": size, "device": device, **summary}
    if quality:
        info["quality"] = quality
    elif (model_dir / "training.json").is_file():
        info["quality"] = json.loads((model_dir / "training.json").read_text()).get("quality")
    if (model_dir / "training.json").is_file():  # hand-written notes survive a rewrite
        notes = json.loads((model_dir / "training.json").read_text()).get("notes")
        if notes:
            info["notes"] = notes
    (model_dir / "training.json").write_text(json.dumps(info, indent=2))
    classes = ", ".join(f"{v} {k}" for k, v in (ANATOMY_LABELS if kind == "anatomy" else ABBC_LABELS).items())
    weights = sum(p.stat().st_size for p in model_dir.rglob("*.pth"))
    q = info.get("quality")
    extended = ("" if not cfg.max_seconds else
                f", then continued with `train-demo-models --recipe {recipe} --only {kind} --extend "
                f"--epochs {cfg.epochs} --max-minutes {cfg.max_seconds / 60:g}` (learning rate restarted "
                f"and decayed over that time budget)")
    quality_text = "not measured yet." if not q else "\n".join(f"- {k}: {v}" for k, v in q.items())
    if q and "anatomy IoU-A (end to end, official)" in q:
        met = (q["anatomy IoU-A (end to end, official)"] >= TARGET_IOU_A
               and q["fragment IoU-F (end to end, official)"] >= TARGET_IOU_F)
        quality_text += (f"\n\nThe project's targets (IoU-A >= {TARGET_IOU_A}, IoU-F >= {TARGET_IOU_F} on "
                         f"held-out full-size phantoms) are {'met' if met else '**NOT met**'}.")
    if info.get("notes"):
        quality_text += "\n\n" + "\n\n".join(info["notes"])
    bootstrap = ("\n**Bootstrap model**: a few minutes of training so that the pipeline runs; "
                 "expect poor quality. Replaced by the full demo recipe.\n" if recipe == "bootstrap" else "")
    text = f"""# {kind} demo model (nnU-Net v2, `{DEMO_CONFIGURATION}`)

**Synthetic data only, not for clinical use.** Trained on computer-generated pelvis
phantoms; it has never seen a real CT and says nothing about real patients.
{bootstrap}
- Task: {"Stage 1, anatomy" if kind == "anatomy" else "Stage 2, ABBC classes"} ({classes}).
- Data: {cases} `{size}` phantoms, `pengwin_demo.phantom.write_phantom_dataset(seed={seed})`;
  evaluation uses other seeds.
- Configuration `{DEMO_CONFIGURATION}` (inherits nnU-Net's `3d_fullres` plans): spacing
  {tuple(cfg.spacing_zyx_mm)} mm (z, y, x), patch {tuple(cfg.patch_size_vox)} voxels, features per
  stage {tuple(cfg.features_per_stage)}, batch {cfg.batch_size}.
- Training: recipe `{recipe}`, {summary.get("epochs", cfg.epochs)} epochs x {cfg.iterations_per_epoch}
  iterations, fold `all`, no mirroring, on `{device}`
  ({summary.get("seconds_per_epoch", "?")} s per epoch); last training pseudo-Dice per class
  {summary.get("last_pseudo_dice", "?")}.
- Files: inference only (dataset.json, plans.json, fingerprint, `fold_all/checkpoint_final.pth`
  with float16 weights and no optimizer state), {weights / 1e6:.2f} MB of weights. The trainer
  name in the checkpoint is nnU-Net's stock `{INFERENCE_TRAINER_NAME}` (same network).
- Reproduce: `python -m pengwin_demo train-demo-models --recipe {recipe}`{extended}.

## Measured quality

{quality_text}
"""
    path = model_dir / "MODEL_CARD.md"
    path.write_text(text)
    return path


def add_quality_to_cards(models_dir: str | os.PathLike, quality: dict) -> None:
    """Put held-out results (from :func:`pengwin_demo.training.quality.evaluate_models`) in both cards."""
    models_dir = Path(models_dir)
    mean = quality["mean"]
    summary = {
        "held-out phantoms": f"{len(quality['seeds'])} `{quality['size']}` phantoms, seeds {quality['seeds']}, "
                             f"whole pipeline on {quality['device']}",
        "Stage-1 anatomy IoU (model alone, mean over bones)": mean["stage1_iou"],
        "anatomy IoU-A (end to end, official)": mean["iou_a"],
        "fragment IoU-F (end to end, official)": mean["iou_f"],
        "fragment HD95 (mm)": mean["hd95_f_mm"],
        "pipeline seconds per case": mean["pipeline_s"],
    }
    for kind in ("anatomy", "abbc"):
        folder = models_dir / kind
        info = json.loads((folder / "training.json").read_text())
        cfg = DemoConfig(**info["config"])
        info["quality"] = summary
        (folder / "training.json").write_text(json.dumps(info, indent=2))
        write_model_card(folder, kind, cfg, recipe=info["recipe"], cases=info["cases"], seed=info["seed"],
                         size=info["size"], device=info["device"], quality=summary,
                         train_log=None)
