"""A real Orthanc PACS for the tests, on loopback (this module holds no tests).

:class:`Orthanc` starts the ``Orthanc`` binary (Debian package ``orthanc``) with a
temporary configuration: its own storage folder, free loopback HTTP and DICOM ports, no
authentication, no plugins, and the DICOM modalities it is told about. The system service
is never used. Tests skip with :data:`SKIP_REASON` when the binary is missing.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

ORTHANC_BIN = shutil.which("Orthanc") or (
    "/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)
SKIP_REASON = ("the Orthanc PACS is not installed (Debian: apt-get install orthanc; "
               ".ci/run does it): the PACS round-trip tests need a real Orthanc")
ORTHANC_AET = "ORTHANC"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """One Orthanc process with its own storage under ``root``.

    Parameters
    ----------
    root : Path
        Folder for the configuration, database and log.
    modalities : dict
        ``{name: (aet, host, port)}`` DICOM nodes Orthanc may send to.
    lua_scripts : tuple of Path
        Lua scripts to load (e.g. the routing script of deploy/orthanc/).
    """

    def __init__(self, root: Path, modalities: dict[str, tuple[str, str, int]],
                 lua_scripts: tuple[Path, ...] = ()):
        self.root = Path(root)
        self.lua_scripts = tuple(str(p) for p in lua_scripts)
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.modalities = modalities
        self.proc: subprocess.Popen | None = None
        self.log_path = self.root / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict:
        return {
            "Name": "pengwin-test-pacs",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": ORTHANC_AET,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "Plugins": [],
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowStore": True,
            "SaveJobs": False,
            "StableAge": 2,
            "LuaScripts": list(self.lua_scripts),
        }

    def start(self, timeout_s: float = 60.0) -> "Orthanc":
        self.root.mkdir(parents=True, exist_ok=True)
        config_path = self.root / "orthanc.json"
        config_path.write_text(json.dumps(self.config(), indent=2))
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([ORTHANC_BIN, str(config_path)], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.root)
        log.close()
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start-up:\n{self.log_tail()}")
            try:
                self.get("/system")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc's REST API did not answer in {timeout_s} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    # -- REST --------------------------------------------------------------------------
    def request(self, method: str, path: str, body: bytes | dict | list | None = None,
                timeout_s: float = 300.0) -> bytes:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.read()

    def get(self, path: str):
        return json.loads(self.request("GET", path))

    def upload(self, files: list[Path]) -> list[dict]:
        """POST each DICOM file to ``/instances``; return Orthanc's answers."""
        return [json.loads(self.request("POST", "/instances", Path(f).read_bytes())) for f in files]

    def store(self, modality: str, resources: list[str]) -> dict:
        """C-STORE ``resources`` (Orthanc ids) to a modality, synchronously (a job)."""
        return json.loads(self.request("POST", f"/modalities/{modality}/store",
                                       {"Resources": resources, "Synchronous": True}))

    def series_of_study(self, study_id: str) -> list[dict]:
        return self.get(f"/studies/{study_id}/series")

    def instance_file(self, instance_id: str) -> bytes:
        return self.request("GET", f"/instances/{instance_id}/file")


def seg_process(input_path: Path, out_dir: Path):
    """A light ``process`` for ``python -m watcher --process``: the real DICOM loader, a
    box-shaped "fragment" and the real DICOM SEG writer (so there is a SEG to send)."""
    import numpy as np

    from pengwin_demo.dicom import load_ct
    from pengwin_demo.outputs import write_dicom_seg

    ct = load_ct(input_path)
    array = np.zeros(ct.volume.shape, np.uint8)
    z, y, x = (s // 2 for s in ct.volume.shape)
    array[z - 2:z + 2, y - 5:y + 5, x - 5:x + 5] = 11
    labels = ct.volume.with_array(array)
    _path, warnings = write_dicom_seg(labels, ct.dicom_headers, Path(out_dir) / "segmentation.dcm")
    return SimpleNamespace(warnings=warnings)
