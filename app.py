"""Gradio web app: upload a pelvic CT, get coloured 3D fragments, slices and downloads.

Run ``python app.py`` (port from GRADIO_SERVER_PORT, default 7860). This is also the
Hugging Face Space entry point. With an inbox configured (``--inbox``/``--outbox`` or the
PENGWIN_INBOX/PENGWIN_OUTBOX environment variables) the PACS-style folder watcher runs in
this process and shares the one loaded pipeline; the page then lists recent inbox jobs.

Everything the CLI or the watcher would need too lives in :mod:`pengwin_demo`; this file
only stages uploads, calls the shared pipeline and shows its results.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np

from pengwin_demo.errors import InputError, ModelError
from pengwin_demo.io import volume_suffix
from pengwin_demo.pipeline import get_pipeline
from pengwin_demo.outputs import AXES, WINDOWS_HU, n_slices, render_slice, to_lps_orientation

log = logging.getLogger("pengwin_app")

REPO = Path(__file__).resolve().parent
EXAMPLE_CASE = REPO / "examples" / "example_pelvis.nii.gz"
MAX_UPLOAD_MB = int(os.environ.get("PENGWIN_MAX_UPLOAD_MB", "1024"))
KEEP_RESULTS_MINUTES = float(os.environ.get("PENGWIN_KEEP_RESULTS_MINUTES", "60"))
QUEUE_SIZE = int(os.environ.get("PENGWIN_QUEUE_SIZE", "16"))
MESH_DETAIL = ["coarse", "normal", "fine"]
DEVICES = ["auto", "cpu", "cuda"]
BACKENDS = ["auto", "bundled", "totalsegmentator"]

_WORK_ROOT: Path | None = None
"""Folder of the per-request folders: made by the first request, removed at exit."""
_WORK_ROOT_LOCK = threading.Lock()


# -- per-request folders ---------------------------------------------------------------
def _work_root() -> Path:
    global _WORK_ROOT
    with _WORK_ROOT_LOCK:
        if _WORK_ROOT is None:
            _WORK_ROOT = Path(tempfile.mkdtemp(prefix="pengwin-app-"))
            atexit.register(shutil.rmtree, _WORK_ROOT, ignore_errors=True)
        return _WORK_ROOT


def _new_request_dir(session: str) -> Path:
    _purge_old_requests()
    safe = "".join(c for c in session if c.isalnum())[:32] or "anon"
    path = _work_root() / safe / uuid.uuid4().hex[:12]
    path.mkdir(parents=True)
    return path


def _purge_old_requests() -> None:
    cutoff = time.time() - KEEP_RESULTS_MINUTES * 60
    for session_dir in _work_root().glob("*"):
        for req in session_dir.glob("*"):
            if req.stat().st_mtime < cutoff:
                shutil.rmtree(req, ignore_errors=True)


def _cleanup_session(request: gr.Request) -> None:
    safe = "".join(c for c in (request.session_hash or "") if c.isalnum())[:32]
    if safe:
        shutil.rmtree(_work_root() / safe, ignore_errors=True)


@dataclass
class Upload:
    """Uploaded file(s) staged for the pipeline under neutral names.

    A file name can carry a patient's name, and a path in a server log or traceback would
    repeat it, so the staged copies are named ``uploaded_ct<suffix>`` or
    ``file00000<suffix>``, ``file00001<suffix>``... (the suffix kept: it tells a volume file
    from a zip); ``names`` maps each staged name back to the user's, for messages shown to
    that user.
    """

    path: Path
    names: dict[str, str]

    def shown(self, text: str) -> str:
        """``text`` with every staged file name replaced by the name the user uploaded."""
        for staged in sorted(self.names, key=len, reverse=True):
            text = text.replace(staged, self.names[staged])
        return text


def stage_upload(files: list[str] | str | None, dest: Path) -> Upload:
    """Put the uploaded file(s) where :func:`pengwin_demo.dicom.load_ct` can read them.

    One volume file or zip is used as is (copied into the request folder); several files
    are taken to be the slices of a DICOM series and copied into one folder.
    """
    if not files:
        raise InputError("No file uploaded. Choose a CT (NIfTI, MHA, NRRD, a zip of a DICOM "
                         "series, or the DICOM files themselves), or run the example case.")
    items = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    # gradio gives str paths; older versions gave tempfile wrappers with .name
    paths = [Path(f if isinstance(f, (str, os.PathLike)) else f.name) for f in items]
    if len(paths) == 1:
        target = dest / "input" / f"uploaded_ct{_suffix(paths[0].name)}"
        target.parent.mkdir(parents=True)
        shutil.copyfile(paths[0], target)
        return Upload(target, {target.name: _safe_name(paths[0].name)})
    folder = dest / "input_dicom"
    folder.mkdir(parents=True)
    names = {}
    for i, p in enumerate(paths):
        staged = folder / f"file{i:05d}{_suffix(p.name)}"
        shutil.copyfile(p, staged)
        names[staged.name] = _safe_name(p.name)
    return Upload(folder, names)


def _suffix(name: str) -> str:
    """The file type ending of ``name`` (``.nii.gz`` counts as one), made safe; "" if none."""
    suffix = volume_suffix(name) or Path(_safe_name(name)).suffix.lower()
    return suffix if len(suffix) <= 10 else ""


def _safe_name(name: str) -> str:
    base = os.path.basename(name).replace("\x00", "")
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in base)[:100] or "upload"


# -- the main action ---------------------------------------------------------------------
def _zip_stls(stl_paths: list[Path], zip_path: Path) -> Path:
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in stl_paths:
            zf.write(p, arcname=f"fragments/{Path(p).name}")
    return zip_path


def _fragment_rows(report: dict) -> list[list]:
    rows = []
    for f in report.get("fragments", []):
        rows.append([f.get("label"), f.get("bone"), round(float(f.get("volume_ml", 0.0)), 2),
                     f.get("voxels", f.get("voxel_count"))])
    return rows


def run_segmentation(files, device, backend, detail, request: gr.Request,
                     progress=gr.Progress()):
    """Gradio handler: stage upload -> shared pipeline -> viewer state and downloads."""
    work = _new_request_dir(getattr(request, "session_hash", None) or "anon")
    upload = None
    try:
        upload = stage_upload(files, work)
        return _run(upload, work, device, backend, detail, progress)
    except (InputError, ModelError) as err:
        shutil.rmtree(work, ignore_errors=True)
        raise gr.Error(upload.shown(str(err)) if upload else str(err), duration=None) from None
    except gr.Error:
        raise
    except Exception as err:  # noqa: BLE001 - a service must answer, not crash
        log.exception("segmentation failed")
        shutil.rmtree(work, ignore_errors=True)
        raise gr.Error(
            f"Internal error while segmenting ({type(err).__name__}). The details were logged "
            "on the server; please report the problem with the time it happened.",
            duration=None) from None


def run_example(device, backend, detail, request: gr.Request, progress=gr.Progress()):
    if not EXAMPLE_CASE.exists():
        raise gr.Error(f"The bundled example case {EXAMPLE_CASE.name} is missing from this "
                       "installation; upload a CT instead.")
    return run_segmentation([str(EXAMPLE_CASE)], device, backend, detail, request, progress)


def _run(upload: Upload, work: Path, device: str, backend: str, detail: str, progress):
    progress(0.0, desc="loading models")
    pipeline = get_pipeline(device, backend)
    out = work / "result"

    def on_progress(stage: str, fraction: float) -> None:
        progress(float(np.clip(fraction, 0, 1)), desc=stage)

    result = pipeline.run(upload.path, out, progress=on_progress, dicom_seg=True, mesh_detail=detail)
    paths = result.paths
    downloads = []
    stls = [Path(p) for p in paths.get("stl", [])]
    if stls:
        downloads.append(str(_zip_stls(stls, out / "fragments_stl.zip")))
    for key in ("labels", "report", "seg"):
        if paths.get(key) and Path(paths[key]).exists():
            downloads.append(str(paths[key]))

    ct = to_lps_orientation(result.ct)
    labels = to_lps_orientation(result.labels)
    np.save(work / "ct.npy", ct.array)
    np.save(work / "labels.npy", labels.array)
    viewer = {"dir": str(work), "spacing": list(ct.spacing_zyx_mm), "shape": list(ct.shape)}
    axis = "axial"
    mid = _default_slice(labels.array, axis)
    image = _render(viewer, axis, mid, "bone", True)
    warnings = [upload.shown(w) for w in result.warnings or []]
    summary = _summary_markdown(result.report, warnings)
    glb = str(paths["glb"]) if paths.get("glb") else None
    slider = gr.Slider(minimum=0, maximum=n_slices(ct.shape, axis) - 1, value=mid, step=1)
    return glb, image, slider, _fragment_rows(result.report), downloads, summary, viewer


def _default_slice(labels: np.ndarray, axis: str) -> int:
    """The slice through the middle of the labelled bone (or the volume's middle)."""
    ax = AXES.index(axis)
    hit = np.flatnonzero(np.any(labels > 0, axis=tuple(a for a in range(3) if a != ax)))
    return int(hit[len(hit) // 2]) if hit.size else labels.shape[ax] // 2


def _render(viewer: dict, axis: str, index: int, window: str, overlay: bool) -> np.ndarray:
    ct = np.load(Path(viewer["dir"]) / "ct.npy", mmap_mode="r")
    labels = np.load(Path(viewer["dir"]) / "labels.npy", mmap_mode="r") if overlay else None
    return render_slice(ct, labels, viewer["spacing"], axis, int(index), window)


def update_slice(viewer, axis, index, window, overlay):
    if not viewer or not Path(viewer["dir"]).exists():
        return None
    return _render(viewer, axis, index, window, overlay)


def change_axis(viewer, axis, window, overlay):
    if not viewer or not Path(viewer["dir"]).exists():
        return gr.Slider(), None
    labels = np.load(Path(viewer["dir"]) / "labels.npy", mmap_mode="r")
    mid = _default_slice(labels, axis)
    slider = gr.Slider(minimum=0, maximum=n_slices(tuple(viewer["shape"]), axis) - 1, value=mid,
                       step=1)
    return slider, _render(viewer, axis, mid, window, overlay)


def _summary_markdown(report: dict, warnings: list[str]) -> str:
    """Fragment count, input spacing, run time, then one bullet per warning."""
    paragraphs = [f"**{len(report.get('fragments', []))} fragments** found."]
    spacing = report.get("input", {}).get("spacing_zyx_mm")
    if spacing:
        paragraphs.append(f"Input spacing (z, y, x): {tuple(round(v, 2) for v in spacing)} mm.")
    stage1 = report.get("models", {}).get("anatomy") or {}
    if stage1.get("backend"):
        refined = stage1.get("refined_by") or {}
        paragraphs.append(f"Stage 1 (bones): {stage1['backend']}"
                          + (f" ({stage1['name']})" if stage1.get("name") else "")
                          + (f", refined by {refined.get('backend')} ({refined.get('name')})" if refined else "")
                          + ".")
    total_s = report.get("timings_s", {}).get("total")
    if total_s is not None:
        paragraphs.append(f"Processed in {total_s:.1f} s.")
    if warnings:
        paragraphs.append("\n".join(f"- ⚠️ {w}" for w in warnings))
    paragraphs.append("*Research software: not for clinical use.*")
    return "\n\n".join(paragraphs)


# -- inbox jobs (watcher in this process) ----------------------------------------------
_watcher_service = None


def inbox_rows() -> list[list]:
    if _watcher_service is None:
        return []
    rows = []
    for job in _watcher_service.recent_jobs():
        secs = job.get("seconds")
        state = job.get("state")
        if job.get("stage"):
            state = f"{state}: {job['stage']}"
        rows.append([job.get("job_id"), state, job.get("received"),
                     None if secs is None else round(float(secs), 1), job.get("error") or ""])
    return rows


# -- layout ------------------------------------------------------------------------------
def build_demo(with_inbox: bool = False) -> gr.Blocks:
    with gr.Blocks(title="Pelvic fracture segmentation", delete_cache=(1800, 3600)) as demo:
        gr.Markdown(
            "# Pelvic fracture segmentation\n"
            "Upload a pelvic CT (NIfTI, MHA, NRRD, a zip of a DICOM series, or the DICOM "
            "files). Every bone fragment comes back coloured and labelled the PENGWIN way "
            "(sacrum reds, left hip greens, right hip blues), with one STL mesh per fragment "
            "in patient (LPS) coordinates. **Demo models trained on synthetic phantoms: not "
            "for clinical use.**")
        with gr.Row():
            with gr.Column(scale=1):
                # no file_types filter: DICOM files often have no extension; the
                # loader names any file it cannot use and says what to do
                upload = gr.File(label="CT upload", file_count="multiple")
                with gr.Row():
                    run_btn = gr.Button("Segment upload", variant="primary")
                    example_btn = gr.Button("Run the example case", variant="secondary",
                                            elem_id="example-button")
                with gr.Accordion("Options", open=False):
                    device = gr.Radio(DEVICES, value="auto", label="Device")
                    backend = gr.Radio(BACKENDS, value="auto", label="Stage 1 (bones)",
                                       info="auto: TotalSegmentator where its weights are installed, "
                                            "else the bundled model; the summary says which ran.")
                    detail = gr.Radio(MESH_DETAIL, value="normal", label="Mesh detail")
                summary = gr.Markdown(elem_id="summary")
                table = gr.Dataframe(headers=["label", "bone", "volume (mL)", "voxels"],
                                     label="Fragments", interactive=False)
                downloads = gr.File(label="Downloads (STL zip, labels, report, DICOM SEG)",
                                    file_count="multiple", interactive=False)
            with gr.Column(scale=2):
                model3d = gr.Model3D(label="Fragments in 3D (drag to turn)", height=480,
                                     clear_color=(0.08, 0.08, 0.1, 1.0), elem_id="model3d")
                with gr.Row():
                    axis = gr.Radio(list(AXES), value="axial", label="Slice")
                    window = gr.Radio(list(WINDOWS_HU), value="bone", label="Window")
                    overlay = gr.Checkbox(value=True, label="Overlay")
                index = gr.Slider(0, 1, value=0, step=1, label="Slice number")
                image = gr.Image(label="Slices", type="numpy", interactive=False, height=420)
        viewer = gr.State(None)
        if with_inbox:
            gr.Markdown("## Inbox jobs (folder watcher)")
            jobs = gr.Dataframe(headers=["job", "state", "received", "seconds", "error"],
                                interactive=False, value=inbox_rows)
            gr.Timer(5.0).tick(inbox_rows, outputs=jobs, show_progress="hidden")

        outputs = [model3d, image, index, table, downloads, summary, viewer]
        run_btn.click(run_segmentation, [upload, device, backend, detail], outputs,
                      api_name="segment", concurrency_limit=1, concurrency_id="pipeline")
        example_btn.click(run_example, [device, backend, detail], outputs,
                          api_name="example", concurrency_limit=1, concurrency_id="pipeline")
        index.release(update_slice, [viewer, axis, index, window, overlay], image,
                      show_progress="hidden")
        for ctl in (window, overlay):
            ctl.change(update_slice, [viewer, axis, index, window, overlay], image,
                       show_progress="hidden")
        axis.change(change_axis, [viewer, axis, window, overlay], [index, image],
                    show_progress="hidden")
        demo.unload(_cleanup_session)
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pelvic fracture segmentation web app")
    parser.add_argument("--inbox", help="also run the folder watcher on this inbox "
                        "(or set PENGWIN_INBOX / PENGWIN_WATCHER_INBOX)")
    parser.add_argument("--outbox", help="outbox of the inbox jobs (or PENGWIN_OUTBOX)")
    parser.add_argument("--work", help="watcher work area, on the inbox's filesystem")
    parser.add_argument("--polling", action="store_true", default=None,
                        help="poll the inbox (SMB/NFS shares deliver no events)")
    parser.add_argument("--watcher-config", help="watcher config file (TOML or JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    global _watcher_service
    with_inbox = bool(args.inbox or args.watcher_config or any(
        os.environ.get(k) for k in ("PENGWIN_INBOX", "PENGWIN_WATCHER_INBOX",
                                    "PENGWIN_WATCHER_CONFIG")))
    if with_inbox:
        try:
            _watcher_service = start_inbox_watcher(args)
        except (InputError, OSError) as err:
            parser.exit(2, f"error: cannot start the inbox watcher: {err}\n")
    demo = build_demo(with_inbox=with_inbox)
    demo.launch(server_name=os.environ.get("GRADIO_SERVER_NAME"),
                server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                max_file_size=f"{MAX_UPLOAD_MB}mb", show_error=True)


def start_inbox_watcher(args):
    """Run the folder watcher in this process on the app's shared pipeline."""
    from watcher import WatcherService, load_config

    config = load_config({"inbox": args.inbox, "outbox": args.outbox, "work": args.work,
                          "polling": args.polling}, config_file=args.watcher_config)
    service = WatcherService(config, pipeline=get_pipeline(config.device, "bundled"))
    service.start()
    atexit.register(service.stop)
    return service


if __name__ == "__main__":
    main()
