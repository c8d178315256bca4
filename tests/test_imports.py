"""Importing a module changes nothing outside it: no folders, no logging set-up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from _helpers.paths import REPO


def _python(code: str, tmp_dir: Path) -> str:
    env = dict(os.environ, TMPDIR=str(tmp_dir), GRADIO_TEMP_DIR=str(tmp_dir / "gradio"))
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_importing_the_app_makes_no_folder(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = _python("import os, tempfile, app; print(os.listdir(tempfile.gettempdir()))", tmp)
    assert out.strip() == "[]"


def test_the_app_makes_its_work_folder_on_the_first_request(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = _python("import app; print(app._new_request_dir('s1'))", tmp)
    request_dir = Path(out.strip())
    assert request_dir.is_relative_to(tmp) and request_dir.parent.name == "s1"
    assert not request_dir.exists(), "the app's work folder outlived the process"


def test_importing_the_watcher_adds_no_logging_filter(tmp_path):
    code = (
        "import logging, watcher, watcher.service, watcher.__main__\n"
        "print([len(logging.getLogger(n).filters) for n in "
        "('', 'watcher', 'watchdog', 'watchdog.observers.inotify')])\n"
    )
    assert _python(code, tmp_path).strip() == "[0, 0, 0, 0]"


def test_a_started_watcher_drops_watchdogs_stop_noise_once(tmp_path):
    (tmp_path / "in").mkdir()
    code = (
        "import logging\n"
        "from watcher import WatcherService, load_config\n"
        f"cfg = load_config({{'inbox': {str(tmp_path / 'in')!r}, 'outbox': {str(tmp_path / 'out')!r}}})\n"
        "for _ in range(2):\n"
        "    s = WatcherService(cfg, process=lambda src, out: None).start(); s.stop(timeout=5)\n"
        "noise = logging.LogRecord('watchdog.observers.inotify', logging.ERROR, '', 0,\n"
        "                          'called when the thread is inactive', None, None)\n"
        "logger = logging.getLogger('watchdog.observers.inotify')\n"
        "print(len(logger.filters), logger.filter(noise))\n"
    )
    assert _python(code, tmp_path).strip() == "1 False"


SUBPACKAGES = ("pengwin_demo.dicom", "pengwin_demo.outputs", "pengwin_demo.phantom",
               "pengwin_demo.recovery")


def test_every_name_a_subpackage_exports_imports(tmp_path):
    code = (
        "import importlib\n"
        f"for name in {SUBPACKAGES!r}:\n"
        "    package = importlib.import_module(name)\n"
        "    missing = [n for n in package.__all__ if getattr(package, n, None) is None]\n"
        "    print(name, len(package.__all__), missing)\n"
    )
    for line in _python(code, tmp_path).splitlines():
        name, count, missing = line.split(" ", 2)
        assert int(count) > 0 and missing == "[]", line


def test_the_slice_images_load_neither_meshes_nor_dicom_seg(tmp_path):
    # pengwin_demo.outputs loads each module on first use: the app's slice viewer must not
    # pay for trimesh and highdicom at start-up
    code = ("import sys\nfrom pengwin_demo.outputs import render_slice\n"
            "print(sorted(m for m in ('trimesh', 'highdicom') if m in sys.modules))")
    assert _python(code, tmp_path).strip() == "[]"
