"""TotalSegmentator as the optional Stage 1 backend (sacrum, left hip, right hip).

Its weights are never downloaded here: :class:`TotalSegmentatorAnatomy` checks they are
installed and says how to provide them otherwise.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..volume import Volume, resample_onto
from .devices import resolve_device
from .nnunet import EXPECTED_LABELS

TOTALSEG_IDS = {25: 1, 77: 2, 78: 3}
"""TotalSegmentator ``total`` task ids (sacrum, hip_left, hip_right) -> anatomy labels."""
TOTALSEG_ROI_SUBSET = ["sacrum", "hip_left", "hip_right"]


def totalsegmentator_weights_dir() -> Path:
    """Where TotalSegmentator looks for its weights (TOTALSEG_WEIGHTS_PATH / TOTALSEG_HOME_DIR)."""
    try:
        from totalsegmentator.config import get_weights_dir
    except ImportError:
        raise ModelError(
            "TotalSegmentator is not installed. `pip install TotalSegmentator`, or use the "
            "bundled anatomy model."
        ) from None
    return Path(get_weights_dir())


def totalsegmentator_missing_weights(fast: bool = False) -> list[str]:
    """Names of the TotalSegmentator weight folders the anatomy backend needs but lacks.

    With ``roi_subset`` TotalSegmentator runs a 6 mm model to crop, then the ``total``
    models (all five parts at 1.5 mm, or the 3 mm one when ``fast``).
    """
    weights_dir = totalsegmentator_weights_dir()
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS
    from totalsegmentator.python_api import get_task_config

    task_ids = get_task_config("total", fast=fast, quiet=True).get("task_id")
    task_ids = list(task_ids) if isinstance(task_ids, (list, tuple)) else [task_ids]
    task_ids.append(298)  # the 6 mm crop model used for roi_subset
    missing = []
    for tid in task_ids:
        info = TASK_ID_WEIGHTS_CONFIGS.get(tid, {})
        name = info.get("foldername", f"task {tid}")
        rel = Path(info["rel_path"]) / name if info.get("rel_path") else Path(name)
        if not (weights_dir / rel).is_dir():
            missing.append(name)
    return missing


class TotalSegmentatorAnatomy:
    """Stage 1 by TotalSegmentator: sacrum, left hip, right hip -> anatomy labels 1, 2, 3.

    Construction checks that the weights are installed (it never starts a download) and
    raises :class:`ModelError` saying how to provide them otherwise.
    """

    def __init__(self, device: str = "auto", fast: bool = False):
        self.device = resolve_device(device)
        self.fast = fast
        missing = totalsegmentator_missing_weights(fast)
        if missing:
            raise ModelError(
                f"TotalSegmentator weights not found in {totalsegmentator_weights_dir()} "
                f"(missing: {', '.join(missing)}). Download them once with "
                "`TotalSegmentator -i some_ct.nii.gz -o /tmp/ts --roi_subset sacrum hip_left hip_right` "
                "on a machine with internet, or copy an existing weights folder and point "
                "TOTALSEG_HOME_DIR (the folder holding nnunet/results) or TOTALSEG_WEIGHTS_PATH to it."
            )
        self.labels = dict(EXPECTED_LABELS["anatomy"])

    def predict(self, volume: Volume) -> np.ndarray:
        """Anatomy map (uint8, 0 bg, 1 sacrum, 2 left hip, 3 right hip) on the input grid."""
        from totalsegmentator.python_api import totalsegmentator
        from ..io import read_volume, write_volume

        ts_device = "gpu" if self.device.type == "cuda" else self.device.type
        if self.device.type == "cuda" and self.device.index is not None:
            ts_device = f"gpu:{self.device.index}"
        with tempfile.TemporaryDirectory(prefix="pengwin-ts-") as tmp:
            src = Path(tmp) / "ct.nii.gz"  # TotalSegmentator treats any non-NIfTI path as DICOM
            write_volume(volume, src)
            out = Path(tmp) / "seg.nii.gz"
            try:
                img = totalsegmentator(
                    src, None, roi_subset=TOTALSEG_ROI_SUBSET, ml=True, device=ts_device,
                    fast=self.fast, quiet=True,
                )
            except (ConnectionError, OSError) as err:
                raise ModelError(
                    f"TotalSegmentator could not run ({type(err).__name__}: {str(err)[:200]}); "
                    "it probably tried to download weights. Provide them via TOTALSEG_HOME_DIR."
                ) from err
            import nibabel as nib

            nib.save(img, str(out))
            seg = read_volume(out, kind="label")
        lut = np.zeros(256, dtype=np.uint8)
        for ts_id, ours in TOTALSEG_IDS.items():
            lut[ts_id] = ours
        seg = seg.with_array(lut[seg.array])
        if not seg.same_grid(volume, tol_mm=1e-3):
            seg = resample_onto(seg, volume, "nearest")
        return np.ascontiguousarray(seg.array, dtype=np.uint8)

    __call__ = predict
