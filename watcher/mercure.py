"""mercure processing module: ``python -m watcher.mercure`` (the container's command).

mercure (the open-source DICOM router) starts the module's container with the series (or
study) in ``$MERCURE_IN_DIR`` (files ``<series>#<instance>.dcm``, ``.tags`` files and a
``task.json``) and dispatches whatever DICOM files the module writes to
``$MERCURE_OUT_DIR``. This module segments the CT found there and writes the DICOM SEG
(``pengwin-seg.dcm``) and, if asked, one Encapsulated STL per fragment
(``pengwin-mesh-NN.dcm``). Settings come from ``task.json`` > ``process`` > ``settings``::

    {"device": "auto", "mesh_detail": "normal", "outputs": ["seg", "stl"]}

Exit status: 0 done (also when no fragment was found: nothing is written, a log line
says so), 1 the input cannot be used, 2 bad settings or models, 3 unexpected error. Every
failure ends with one log line ``pengwin: failed (...)`` that says what was wrong; UIDs
and paths of the input are replaced, so the log carries no identifiers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from pengwin_demo.errors import InputError, ModelError

log = logging.getLogger("pengwin.mercure")

SEG_FILE = "pengwin-seg.dcm"
MESH_FILE = "pengwin-mesh-{:02d}.dcm"
_UID_RE = re.compile(r"\b\d+(?:\.\d+){3,}\b")


class Output(str, Enum):
    """Results the module can write."""

    SEG = "seg"
    STL = "stl"


class ExitCode(int, Enum):
    OK = 0
    BAD_INPUT = 1
    BAD_SETTINGS = 2
    UNEXPECTED = 3


@dataclass(frozen=True)
class ModuleSettings:
    """The module's settings (mercure: the module's or rule's "settings" JSON).

    Parameters
    ----------
    device : str
        "auto", "cpu" or "cuda".
    mesh_detail : str
        "fine", "normal" or "coarse" (see :mod:`pengwin_demo.outputs.meshes`).
    outputs : tuple of Output
        What to write: the SEG, and/or Encapsulated STL meshes.
    """

    device: str = "auto"
    mesh_detail: str = "normal"
    outputs: tuple[Output, ...] = (Output.SEG,)

    @classmethod
    def from_task(cls, task: dict) -> "ModuleSettings":
        """Settings from a mercure task (``task["process"]["settings"]``); InputError if bad."""
        from pengwin_demo.outputs import MESH_DETAILS

        process = task.get("process") or {}
        raw = (process.get("settings") or {}) if isinstance(process, dict) else {}
        if not isinstance(raw, dict):
            raise InputError('task.json: "process" > "settings" must be a JSON object.')
        unknown = sorted(set(raw) - {"device", "mesh_detail", "outputs"})
        if unknown:
            raise InputError(f"task.json settings: unknown key(s) {unknown}; known: device, "
                             "mesh_detail, outputs.")
        device = str(raw.get("device", cls.device))
        if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            raise InputError(f'task.json settings: device {device!r}: use "auto", "cpu" or "cuda".')
        detail = str(raw.get("mesh_detail", cls.mesh_detail))
        if detail not in MESH_DETAILS:
            raise InputError(f"task.json settings: mesh_detail {detail!r}: use one of "
                             f"{sorted(MESH_DETAILS)}.")
        wanted = raw.get("outputs", [o.value for o in cls.outputs])
        try:
            outputs = tuple(Output(str(o).lower()) for o in wanted)
        except ValueError:
            raise InputError(f'task.json settings: outputs {wanted!r}: a list of "seg" and '
                             '"stl".') from None
        if not outputs:
            raise InputError('task.json settings: outputs is empty; ask for "seg" and/or "stl".')
        return cls(device, detail, outputs)


def read_task(in_dir: Path) -> dict:
    """``task.json`` of the input folder (an empty task when mercure wrote none)."""
    path = in_dir / "task.json"
    if not path.is_file():
        log.warning("no task.json in the input folder; default settings")
        return {}
    try:
        task = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"task.json cannot be read ({err}).") from None
    if not isinstance(task, dict):
        raise InputError("task.json must hold a JSON object.")
    return task


def run_module(in_dir: Path, out_dir: Path, settings: ModuleSettings, pipeline=None) -> list[Path]:
    """Segment the CT in ``in_dir``; write the wanted DICOM results into ``out_dir``.

    Returns the files written (none when no fragment was found).
    """
    from pengwin_demo.pipeline import get_pipeline

    pipeline = pipeline or get_pipeline(device=settings.device)
    with tempfile.TemporaryDirectory(prefix="pengwin-mercure-") as tmp:
        result = pipeline.run(in_dir, Path(tmp), dicom_seg=True, mesh_detail=settings.mesh_detail)
        for warning in result.warnings:
            log.warning("%s", scrub(warning, in_dir))
        seg_path = Path(tmp) / "segmentation.dcm"
        if not seg_path.is_file():
            return []
        return _write_outputs(seg_path, sorted((Path(tmp) / "fragments").glob("*.stl")), out_dir,
                              settings.outputs)


def _write_outputs(seg_path: Path, stls: list[Path], out_dir: Path,
                   outputs: tuple[Output, ...]) -> list[Path]:
    import pydicom

    from pengwin_demo.outputs import stl_instances, write_instance

    written = []
    if Output.SEG in outputs:
        shutil.copyfile(seg_path, out_dir / f".{SEG_FILE}.tmp")
        os.replace(out_dir / f".{SEG_FILE}.tmp", out_dir / SEG_FILE)
        written.append(out_dir / SEG_FILE)
    if Output.STL in outputs:
        seg = pydicom.dcmread(seg_path)
        for ds in stl_instances(stls, seg):
            written.append(write_instance(ds, out_dir / MESH_FILE.format(int(ds.InstanceNumber))))
    return written


def scrub(text: str, in_dir: Path) -> str:
    """``text`` without the input folder's path and without DICOM UIDs."""
    return _UID_RE.sub("<uid>", text.replace(str(in_dir), "<in>"))


def _folder(env: str) -> Path:
    value = os.environ.get(env, "")
    if not value or not Path(value).is_dir():
        raise InputError(f"${env} is {'not set' if not value else 'not a folder'}; mercure sets it "
                         "when it starts the module. To run by hand: "
                         "python -m watcher.mercure IN_DIR OUT_DIR.")
    return Path(value)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(argv) == 2:
        os.environ["MERCURE_IN_DIR"], os.environ["MERCURE_OUT_DIR"] = argv
    in_dir = Path(os.environ.get("MERCURE_IN_DIR", "."))
    try:
        in_dir, out_dir = _folder("MERCURE_IN_DIR"), _folder("MERCURE_OUT_DIR")
        settings = ModuleSettings.from_task(read_task(in_dir))
    except InputError as err:
        return _failed(ExitCode.BAD_SETTINGS, str(err), in_dir)
    log.info("pengwin: started (device %s, mesh detail %s, outputs %s)", settings.device,
             settings.mesh_detail, "+".join(o.value for o in settings.outputs))
    try:
        written = run_module(in_dir, out_dir, settings)
    except InputError as err:
        return _failed(ExitCode.BAD_INPUT, str(err), in_dir)
    except ModelError as err:
        return _failed(ExitCode.BAD_SETTINGS, f"model problem: {err}", in_dir)
    except Exception as err:  # noqa: BLE001 - the traceback, then one readable line
        log.error("traceback:\n%s", scrub(traceback.format_exc(), in_dir))
        return _failed(ExitCode.UNEXPECTED, f"unexpected {type(err).__name__}: {err}", in_dir)
    if not written:
        log.info("pengwin: done, no pelvic fragments found: no results written")
    else:
        log.info("pengwin: done, %d DICOM file(s) written (%s)", len(written),
                 ", ".join(p.name for p in written))
    return ExitCode.OK


def _failed(code: ExitCode, message: str, in_dir: Path) -> int:
    log.error("pengwin: failed (exit %d): %s", int(code), scrub(" ".join(message.split()), in_dir))
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
