"""The command line: discovered subcommands, clean errors without tracebacks."""

import pkgutil
import subprocess
import sys

import numpy as np

from _helpers.paths import REPO
from pengwin_demo import cli
from pengwin_demo.io import write_volume
from pengwin_demo.volume import Volume


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "pengwin_demo", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_help_lists_every_command_module_and_nothing_else():
    out = _cli("--help")
    assert out.returncode == 0
    names = []
    for info in pkgutil.iter_modules(cli.__path__):
        if not info.name.startswith("_"):
            module = __import__(f"pengwin_demo.cli.{info.name}", fromlist=["NAME"])
            names.append(module.NAME)
            assert module.NAME in out.stdout
            assert callable(module.run) and callable(module.add_arguments)
    assert "info" in names
    listed = out.stdout.split("positional arguments:")[1].split("options:")[0]
    listed_names = {line.split()[0] for line in listed.splitlines()
                    if line.startswith("    ") and not line.startswith("      ") and line.split()}
    assert listed_names == set(names)


def test_info_prints_geometry(tmp_path):
    vol = Volume(np.full((4, 5, 6), 40, np.int16), (2.0, 0.5, 0.75), (1.0, 2.0, 3.0))
    write_volume(vol, tmp_path / "ct.mha")
    out = _cli("info", str(tmp_path / "ct.mha"))
    assert out.returncode == 0, out.stderr
    assert "(4, 5, 6)" in out.stdout and "(2.0, 0.5, 0.75)" in out.stdout


def test_bad_input_is_one_clear_line_not_a_traceback(tmp_path):
    out = _cli("info", str(tmp_path / "missing.nii.gz"))
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "missing.nii.gz: file not found" in out.stderr


def test_no_command_prints_help_and_fails():
    out = _cli()
    assert out.returncode == 2
    assert "COMMAND" in out.stdout
