"""Find the files of a DICOM delivery: a (nested) folder, a zip, or a single file.

A zip is unpacked into a private temporary folder with hard limits: no member may land
outside that folder (absolute names, ``..``, symbolic links), and archives whose unpacked
size or file count is absurd are refused before they fill the disk. The limits are checked
against the bytes actually written, not only against what the archive's directory claims.
"""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from ..errors import InputError

MAX_ZIP_UNPACKED_BYTES = 8 * 1024**3
"""Refuse a zip that unpacks to more than this (8 GiB: many whole CT studies)."""

MAX_ZIP_FILES = 50_000
"""Refuse a zip with more members than this."""

MAX_ZIP_RATIO = 200.0
"""Refuse a member whose unpacked size is more than this many times its packed size
(DICOM compresses 2-5x; a zip bomb by 1000x and more)."""

_CHUNK = 1 << 20


def is_zip(path: Path) -> bool:
    """True for a regular file that is a zip archive (by content, not name)."""
    return path.is_file() and zipfile.is_zipfile(path)


def list_files(folder: Path) -> list[Path]:
    """All regular files under ``folder`` (recursive, hidden ones too), in a stable order.

    Symbolic links are not followed (a link could point anywhere on the machine).
    """
    out: list[Path] = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            p = Path(root) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_size > 0:
                out.append(p)
    return out


def _safe_member_path(name: str, zip_name: str) -> PurePosixPath:
    """The relative path a member will take inside the extraction folder, or InputError."""
    clean = name.replace("\\", "/")
    path = PurePosixPath(clean)
    if path.is_absolute() or clean.startswith("/") or (len(clean) > 1 and clean[1] == ":"):
        raise InputError(
            f"{zip_name}: the archive holds a member with an absolute path; refusing to unpack "
            "it (it could write outside its folder). Re-create the zip from the DICOM folder."
        )
    if any(part == ".." for part in path.parts):
        raise InputError(
            f"{zip_name}: the archive holds a member whose path climbs out with '..'; refusing "
            "to unpack it. Re-create the zip from the DICOM folder."
        )
    return path


def extract_zip(
    zip_path: Path,
    dest: Path,
    max_bytes: int = MAX_ZIP_UNPACKED_BYTES,
    max_files: int = MAX_ZIP_FILES,
    max_ratio: float = MAX_ZIP_RATIO,
) -> list[Path]:
    """Unpack ``zip_path`` into the existing folder ``dest`` safely; return the files written.

    Raises
    ------
    InputError
        Not a readable zip, encrypted, a member escaping ``dest``, a symbolic link member,
        too many members, too many bytes, or a suspicious compression ratio.
    """
    name = zip_path.name
    dest = dest.resolve()
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as err:
        raise InputError(f"{name}: is not a readable zip archive ({err}). Zip the folder again.") from None
    written: list[Path] = []
    with zf:
        members = [m for m in zf.infolist() if not m.is_dir()]
        _check_declared_size(members, name, max_files, max_bytes)
        total = 0
        for m in members:
            target = _member_target(m, dest, name, max_ratio)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                total += _copy_member(zf, m, target, name, total, max_bytes)
            except FileExistsError:
                continue  # the same name twice in one archive: keep the first copy
            except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError) as err:
                raise InputError(
                    f"{name}: the archive is damaged ({type(err).__name__}: {str(err)[:80]}); "
                    "zip the folder again."
                ) from None
            except RuntimeError as err:  # encrypted members, unsupported compression
                raise InputError(f"{name}: cannot unpack a member ({err}); zip the folder again.") from None
            written.append(target)
    return written


def _check_declared_size(members: list[zipfile.ZipInfo], name: str, max_files: int, max_bytes: int) -> None:
    """Refuse an archive whose directory already declares too many files or bytes."""
    if len(members) > max_files:
        raise InputError(
            f"{name}: the archive holds {len(members)} files, more than the limit of "
            f"{max_files}; send one study or series per archive."
        )
    declared = sum(m.file_size for m in members)
    if declared > max_bytes:
        raise InputError(
            f"{name}: the archive would unpack to {declared / 1024**3:.1f} GiB, more than the "
            f"limit of {max_bytes / 1024**3:.1f} GiB; send one study or series per archive."
        )


def _member_target(m: zipfile.ZipInfo, dest: Path, name: str, max_ratio: float) -> Path:
    """Where member ``m`` goes inside ``dest`` (resolved); InputError for a symbolic link,
    an encrypted member, a zip-bomb ratio or a path that leaves ``dest``."""
    rel = _safe_member_path(m.filename, name)
    mode = (m.external_attr >> 16) & 0o170000
    if mode == stat.S_IFLNK:
        raise InputError(
            f"{name}: the archive holds a symbolic link ({rel.name}); refusing to unpack "
            "it. Zip the DICOM files themselves."
        )
    if m.flag_bits & 0x1:
        raise InputError(f"{name}: the archive is password-protected; send it unencrypted.")
    if m.compress_size > 0 and m.file_size / m.compress_size > max_ratio and m.file_size > _CHUNK:
        raise InputError(
            f"{name}: member {rel.name} claims a compression ratio of "
            f"{m.file_size / m.compress_size:.0f}:1, typical of a zip bomb; refusing it."
        )
    target = (dest / Path(*rel.parts)).resolve()
    if dest not in target.parents:
        raise InputError(f"{name}: member {rel.name} would be written outside its folder; refusing.")
    return target


def _copy_member(zf: zipfile.ZipFile, m: zipfile.ZipInfo, target: Path, name: str, written_bytes: int,
                 max_bytes: int) -> int:
    """Copy member ``m`` to the new file ``target`` in chunks; return its bytes. The bytes
    actually read are counted: more than the member declares, or than ``max_bytes`` with the
    ``written_bytes`` before it, is refused (FileExistsError when ``target`` exists)."""
    member_bytes = 0
    with zf.open(m) as src, open(target, "xb") as out:
        while True:
            chunk = src.read(_CHUNK)
            if not chunk:
                return member_bytes
            member_bytes += len(chunk)
            if written_bytes + member_bytes > max_bytes or member_bytes > max(m.file_size, 0) + _CHUNK:
                raise InputError(
                    f"{name}: unpacks to more bytes than it declares or than the limit "
                    f"of {max_bytes / 1024**3:.1f} GiB; refusing it."
                )
            out.write(chunk)


class UnpackedInput:
    """Context manager: the files of a folder, a zip (unpacked to a temp folder) or one file.

    ``files`` lists the files to examine; the temporary folder, if any, is deleted on exit.
    """

    def __init__(self, path: Path):
        self.path = path
        self.tmp: Path | None = None
        self.files: list[Path] = []

    def __enter__(self) -> "UnpackedInput":
        p = self.path
        if p.is_dir():
            self.files = list_files(p)
        elif p.name.lower().endswith(".zip") and not is_zip(p):
            raise InputError(
                f"{p.name}: is named .zip but is not a readable zip archive (it may be "
                "truncated: a copy that stopped before the end). Copy or zip it again."
            )
        elif is_zip(p):
            self.tmp = Path(tempfile.mkdtemp(prefix="pengwin-dicom-"))
            try:
                self.files = extract_zip(p, self.tmp)
            except BaseException:
                shutil.rmtree(self.tmp, ignore_errors=True)
                raise
        else:
            self.files = [p]
        return self

    def __exit__(self, *exc) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
