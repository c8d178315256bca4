"""Zip extraction limits, patient-identifier hygiene, and the ``convert`` command."""

from __future__ import annotations

import logging
import stat
import zipfile

import numpy as np
import pytest

from pengwin_demo.__main__ import main
from pengwin_demo.dicom import extract_zip, load_ct
from pengwin_demo.errors import InputError
from pengwin_demo.io import read_volume

from _helpers import dicom_factory as fac


# ------------------------------------------------------------------ zip safety
def _zip(path, members):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            if isinstance(name, zipfile.ZipInfo):
                zf.writestr(name, data)
            else:
                zf.writestr(name, data)
    return path


@pytest.mark.parametrize("name", ["../escape.txt", "a/../../escape.txt", "/tmp/escape_abs.txt", "C:/escape.txt"])
def test_zip_members_cannot_escape(tmp_path, name):
    z = _zip(tmp_path / "evil.zip", [("ok.txt", b"fine"), (name, b"gotcha")])
    dest = tmp_path / "box" / "out"
    dest.mkdir(parents=True)
    with pytest.raises(InputError, match="refusing"):
        extract_zip(z, dest)
    assert not (tmp_path / "box" / "escape.txt").exists()
    assert not (tmp_path / "escape.txt").exists()
    with pytest.raises(InputError):
        load_ct(z)


def test_zip_symlink_member_refused(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    z = _zip(tmp_path / "link.zip", [(info, "/etc/passwd")])
    (tmp_path / "out").mkdir()
    with pytest.raises(InputError, match="symbolic link"):
        extract_zip(z, tmp_path / "out")


def test_zip_limits_on_count_size_and_ratio(tmp_path):
    (tmp_path / "out").mkdir()
    many = _zip(tmp_path / "many.zip", [(f"f{i}", b"x") for i in range(20)])
    with pytest.raises(InputError, match="holds 20 files"):
        extract_zip(many, tmp_path / "out", max_files=10)
    big = _zip(tmp_path / "big.zip", [("a", np.random.default_rng(0).bytes(300_000))])
    with pytest.raises(InputError, match="GiB"):
        extract_zip(big, tmp_path / "out", max_bytes=100_000)
    bomb = _zip(tmp_path / "bomb.zip", [("zeros", bytes(50 * 1024 * 1024))])
    assert bomb.stat().st_size < 200_000
    with pytest.raises(InputError, match="zip bomb"):
        extract_zip(bomb, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_damaged_zip(tmp_path):
    dss = fac.make_series(n_slices=10)
    fac.write_files(dss, tmp_path / "src")
    z = fac.zip_folder(tmp_path / "src", tmp_path / "s.zip")
    data = bytearray(z.read_bytes())
    data[200:400] = b"\0" * 200  # corrupt the first member's compressed bytes
    z.write_bytes(bytes(data))
    with pytest.raises(InputError, match="damaged|cannot|no DICOM|not a readable"):
        load_ct(z)


# ------------------------------------------------------------------ identifiers
NAME_PARTS = ("Doe", "Jane", fac.PATIENT_ID)


def _assert_clean(text: str) -> None:
    for part in NAME_PARTS:
        assert part.lower() not in text.lower(), f"patient identifier {part!r} leaked: {text!r}"


def test_patient_identifiers_never_leak(tmp_path, capsys, caplog):
    caplog.set_level(logging.DEBUG)
    # a careless description that repeats the patient's name, and a missing slice to warn about
    dss = fac.make_series(n_slices=14, description="Pelvis DOE JANE")
    del dss[5]
    fac.write_files(dss, tmp_path / "in")
    ct = load_ct(tmp_path / "in")
    _assert_clean(ct.name)
    _assert_clean(" ".join(ct.warnings))
    _assert_clean(" ".join(s.summary() + s.reason for s in ct.series_seen))
    assert ct.dicom_headers[0].PatientName == fac.PATIENT_NAME  # kept for DICOM SEG, never shown
    assert main(["convert", str(tmp_path / "in"), str(tmp_path / f"{ct.name}.nii.gz")]) == 0
    out = capsys.readouterr()
    _assert_clean(out.out + out.err + caplog.text)
    # and in a refusal
    mr = fac.mr_series(n_slices=12, description="T2 for Jane Doe")
    fac.write_files(mr, tmp_path / "mr")
    with pytest.raises(InputError) as err:
        load_ct(tmp_path / "mr")
    assert "MR" in str(err.value)
    _assert_clean(str(err.value))


# ------------------------------------------------------------------ CLI
def test_convert_cli_writes_volume_and_explains(tmp_path, capsys):
    dss = fac.make_series(n_slices=12)
    fac.write_files(dss, tmp_path / "in")
    fac.write_files(fac.localizer(study_uid=dss[0].StudyInstanceUID), tmp_path / "in" / "scout")
    out = tmp_path / "ct.mha"
    assert main(["convert", str(tmp_path / "in"), str(out)]) == 0
    text = capsys.readouterr().out
    assert "series seen (2)" in text and "localizer" in text
    assert f"chosen: {dss[0].SeriesInstanceUID} because: CT, axial ORIGINAL/PRIMARY" in text
    vol = read_volume(out)
    assert np.array_equal(vol.array, fac.expected_hu(dss))
    assert vol.origin_lps_mm == pytest.approx((-60.0, -50.0, -100.0))


def test_convert_cli_refusal_is_one_clear_paragraph(tmp_path, capsys):
    fac.write_files(fac.make_series(n_slices=4), tmp_path / "in")
    assert main(["convert", str(tmp_path / "in"), str(tmp_path / "o.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no usable CT series") and "fewer than the minimum" in err
    assert not (tmp_path / "o.nii.gz").exists()
    assert main(["convert", str(tmp_path / "in"), str(tmp_path / "o.png")]) == 2


def test_invalid_header_values_are_read_quietly(tmp_path, caplog, capsys):
    """Malformed values load; pydicom's complaints (which quote values) stay out of the logs."""
    from pydicom.dataelem import DataElement

    caplog.set_level(logging.DEBUG)
    dss = fac.make_series(n_slices=12)
    for ds in dss:
        ds[0x00100010] = DataElement(0x00100010, "LO", "Doe^Jane" + "x" * 70)  # PN too long
        ds[0x00200013] = DataElement(0x00200013, "LO", "1.5x")  # not an IS
    fac.write_files(dss, tmp_path / "in", preamble=False)  # implicit VR: read back as PN / IS
    caplog.clear()
    capsys.readouterr()
    ct = load_ct(tmp_path / "in")
    assert ct.volume.shape == (12, 48, 40)
    out = capsys.readouterr()
    everything = caplog.text + out.out + out.err + " ".join(ct.warnings)
    assert "1.5x" not in everything and "Invalid value" not in everything
    _assert_clean(everything)
