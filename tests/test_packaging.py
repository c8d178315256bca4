"""The project as an installed package: a wheel with the bundled models, console scripts
that work from any folder, and dependency ranges that admit the pinned requirements."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

from _helpers.paths import REPO
from pengwin_demo.io import write_volume
from pengwin_demo.volume import Volume

SOURCES = ("pyproject.toml", "README.md", "pengwin_demo", "watcher")


def _run(cmd: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (the build writes nothing into the repo)."""
    root = tmp_path_factory.mktemp("build")
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / "src" / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (root / "src").mkdir(exist_ok=True)
            shutil.copy2(src, root / "src" / name)
    _run([sys.executable, "-m", "pip", "wheel", root / "src", "--no-deps", "--no-build-isolation",
          "-q", "-w", root / "dist"], cwd=root)
    (found,) = (root / "dist").glob("pengwin_demo-*.whl")
    return found


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed; the dependencies (torch, nnU-Net,
    ...) come from the system site-packages, so nothing is downloaded."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", env_dir], cwd=env_dir.parent)
    _run([sys.executable, "-m", "pip", "--python", env_dir / "bin" / "python", "install", "-q",
          "--no-deps", "--no-index", wheel], cwd=env_dir.parent)
    return env_dir


def test_wheel_holds_every_package_and_the_bundled_models(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for top in ("pengwin_demo", "watcher"):
        for init in (REPO / top).rglob("__init__.py"):
            assert init.relative_to(REPO).as_posix() in names, f"{init.parent.name} is not packaged"
    bundled = REPO / "pengwin_demo" / "models" / "bundled"
    model_files = [p.relative_to(REPO).as_posix() for p in bundled.rglob("*") if p.is_file()]
    assert any(f.endswith("checkpoint_final.pth") for f in model_files)
    missing = sorted(set(model_files) - names)
    assert not missing, f"bundled model files not in the wheel: {missing}"


def test_installed_console_scripts_work_from_any_folder(venv, tmp_path):
    bin_dir = venv / "bin"
    out = _run([bin_dir / "pengwin-demo", "--help"], cwd=tmp_path)
    assert "segment" in out.stdout and "train-demo-models" in out.stdout
    out = _run([bin_dir / "pengwin-watcher", "--help"], cwd=tmp_path)
    assert "--inbox" in out.stdout and "--outbox" in out.stdout
    write_volume(Volume(np.full((3, 4, 5), 7, np.int16), (2.0, 1.0, 1.5)), tmp_path / "ct.nii.gz")
    out = _run([bin_dir / "pengwin-demo", "info", "ct.nii.gz"], cwd=tmp_path)
    assert "(3, 4, 5)" in out.stdout and "(2.0, 1.0, 1.5)" in out.stdout


def test_installed_package_loads_its_bundled_models(venv, tmp_path):
    script = (
        "import pengwin_demo\n"
        "from pengwin_demo.models import abbc_model, anatomy_model\n"
        "print(pengwin_demo.__file__)\n"
        "print(anatomy_model('bundled', 'cpu')[0].folder)\n"
        "print(abbc_model(None, 'cpu').folder)\n"
    )
    out = _run([venv / "bin" / "python", "-c", script], cwd=tmp_path)
    package_file, anatomy_folder, abbc_folder = out.stdout.split()
    site = Path(package_file).parent.parent
    assert site.is_relative_to(venv), f"imported {package_file}, not the installed copy"
    assert Path(anatomy_folder) == site / "pengwin_demo" / "models" / "bundled" / "anatomy"
    assert Path(abbc_folder) == site / "pengwin_demo" / "models" / "bundled" / "abbc"


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_declared_dependencies_admit_the_pinned_requirements():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {Requirement(r).name.lower(): Requirement(r) for r in project["dependencies"]}
    extras = {Requirement(r).name.lower(): Requirement(r)
              for group in project["optional-dependencies"].values() for r in group}
    pins = _pins()
    assert {"torch", "nnunetv2", "simpleitk", "pydicom", "gradio", "watchdog"} <= set(declared)
    assert {"pytest", "playwright"} <= set(extras) and not {"pytest", "playwright"} & set(declared)
    for name, version in pins.items():
        req = declared.get(name) or extras.get(name)
        assert req is not None, f"{name} is pinned in requirements.txt but not declared in pyproject.toml"
        assert req.specifier.contains(version, prereleases=True), f"{req} excludes the pinned {name}=={version}"
    assert set(declared) <= set(pins) | {"numpy", "scipy", "tqdm"}, "a dependency without a tested pin"
    assert project["scripts"] == {"pengwin-demo": "pengwin_demo.__main__:main",
                                  "pengwin-watcher": "watcher.__main__:main"}
