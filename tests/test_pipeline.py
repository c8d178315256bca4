"""The pipeline end to end: outputs, geometry round trip, warnings, progress, concurrency.

Models here are *oracles*: objects with the model interface (``predict(Volume)`` and a
``target_spacing_zyx_mm``) that return the true anatomy / ABBC map of an analytic phantom
on whatever grid they are given. They stand in for trained networks so that these tests
check the pipeline itself (loading, grids, recovery, outputs, warnings) exactly; runs with
the bundled demo models are at the end and skip when the models are not installed.
"""

import json
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import trimesh

from pengwin_demo.recovery import abbc_targets
from pengwin_demo.errors import ModelError
from pengwin_demo.io import read_volume, write_volume
from pengwin_demo.labels import anatomy_from_fragments
from pengwin_demo.outputs import stl_name
from pengwin_demo.models import bundled_models_dir
from pengwin_demo.pipeline import STAGES, Pipeline
from pengwin_demo.volume import Volume

MODELS = bundled_models_dir()
HAVE_BUNDLED = (MODELS / "anatomy" / "plans.json").is_file() and (MODELS / "abbc" / "plans.json").is_file()


# -- an analytic phantom in LPS mm -------------------------------------------------------
def truth_at(points_lps_mm: np.ndarray) -> np.ndarray:
    """PENGWIN label (uint8) at LPS points (N, 3): sacrum 1; left hip 11 + 12 split by a
    4 mm fracture gap at z = 20 mm; right hip 21. +x is the patient's left."""
    x, y, z = points_lps_mm[:, 0], points_lps_mm[:, 1], points_lps_mm[:, 2]
    out = np.zeros(len(points_lps_mm), np.uint8)
    in_y = (y > 0) & (y < 30)
    out[(np.abs(x) < 15) & in_y & (z > 0) & (z < 40)] = 1
    left = (x > 22) & (x < 58) & in_y
    out[left & (z > 0) & (z < 18)] = 11  # the larger piece gets the lower number
    out[left & (z > 22) & (z < 36)] = 12
    out[(x < -22) & (x > -58) & in_y & (z > 0) & (z < 40)] = 21
    return out


def truth_on(grid: Volume) -> np.ndarray:
    idx = np.indices(grid.shape).reshape(3, -1).T
    return truth_at(grid.index_to_world(idx)).reshape(grid.shape)


def phantom_ct(direction=np.eye(3), spacing=(1.5, 1.0, 1.0), extent_zyx_mm=(64.0, 52.0, 140.0)) -> Volume:
    """CT of the phantom (bone 700 HU, soft tissue 40 HU, air in front and behind) on a grid
    centred on it."""
    shape = tuple(int(round(e / s)) for e, s in zip(extent_zyx_mm, spacing))
    half_xyz = (np.asarray(shape[::-1]) - 1) * np.asarray(spacing[::-1]) / 2.0
    origin = np.array([0.0, 15.0, 20.0]) - np.asarray(direction) @ half_xyz
    grid = Volume(np.zeros(shape, np.int16), spacing, tuple(origin), direction)
    return grid.with_array(body_ct(truth_on(grid)))


def body_ct(truth: np.ndarray) -> np.ndarray:
    """Bone where ``truth`` is set (550 +- 150 HU, at least 200: its values spread as cortex
    and cancellous bone do, while uniform values would be contrast), soft tissue 40 HU, air
    (-1000 HU) in the first and last 3 rows (y): a CT in HU always holds some air (the
    loaders check)."""
    bone_hu = np.clip(np.random.default_rng(0).normal(550, 150, truth.shape), 200, None)
    ct = np.where(truth > 0, bone_hu, 40).astype(np.int16)
    ct[:, :3][truth[:, :3] == 0] = -1000
    ct[:, -3:][truth[:, -3:] == 0] = -1000
    return ct


class OracleAnatomy:
    """Stage 1 stand-in: the true anatomy on the grid it is given."""

    def __init__(self, spacing=None, empty=False):
        self.target_spacing_zyx_mm = spacing
        self.empty = empty
        self.seen: list[Volume] = []

    def predict(self, volume: Volume) -> np.ndarray:
        self.seen.append(volume)
        if self.empty:
            return np.zeros(volume.shape, np.uint8)
        return anatomy_from_fragments(truth_on(volume))


class OracleABBC(OracleAnatomy):
    """Stage 2 stand-in: ABBC targets of the truth on the grid it is given."""

    def __init__(self, spacing=None, truth=truth_on):
        super().__init__(spacing)
        self.truth = truth

    def predict(self, volume: Volume) -> np.ndarray:
        self.seen.append(volume)
        return abbc_targets(self.truth(volume), volume.spacing_zyx_mm)


def _write_ras(vol: Volume, path: Path) -> Path:
    """The same CT stored the RAS way (x, y flipped; positive affine)."""
    data = np.transpose(vol.array, (2, 1, 0))[::-1, ::-1, :]
    nx, ny, _ = data.shape
    sz, sy, sx = vol.spacing_zyx_mm
    ox, oy, oz = vol.origin_lps_mm
    affine = np.diag([sx, sy, sz, 1.0])
    affine[:3, 3] = [-(ox + (nx - 1) * sx), -(oy + (ny - 1) * sy), oz]
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))
    return path


def _oblique() -> np.ndarray:
    return np.array(sitk.VersorTransform((0.2, 0.3, 1.0), np.deg2rad(20)).GetMatrix()).reshape(3, 3)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(1, np.count_nonzero(a) + np.count_nonzero(b))


# -- tests ---------------------------------------------------------------------------------
@pytest.mark.parametrize("storage", ["lps", "ras", "oblique"])
def test_outputs_and_geometry_for_lps_ras_and_oblique_inputs(tmp_path, storage):
    if storage == "lps":
        src = write_volume(phantom_ct(), tmp_path / "ct.nii.gz")
    elif storage == "ras":
        src = _write_ras(phantom_ct(), tmp_path / "ct_ras.nii.gz")
    else:
        src = write_volume(phantom_ct(_oblique(), extent_zyx_mm=(90.0, 90.0, 160.0)),
                           tmp_path / "ct_oblique.mha")
    ct = read_volume(src)
    events = []
    # the oracles run on a coarser 2 mm grid, as the CPU models do; labels come back exactly
    pipe = Pipeline(anatomy=OracleAnatomy((2.0, 2.0, 2.0)), fragments=OracleABBC((2.0, 2.0, 2.0)))
    result = pipe.run(src, tmp_path / "out", progress=lambda s, f: events.append((s, f)))

    # label map: exactly the input grid, fragments where the truth says
    labels = read_volume(result.paths["labels"], kind="label")
    assert labels.same_grid(ct, tol_mm=1e-4)
    truth = truth_on(ct)
    assert sorted(int(v) for v in np.unique(labels.array) if v) == [1, 11, 12, 21]
    for lab in (1, 11, 12, 21):
        assert _dice(labels.array == lab, truth == lab) > 0.9, lab

    # STL per fragment, in LPS mm on the label surface, outward normals
    names = sorted(p.name for p in result.paths["stl"])
    assert names == sorted(stl_name(k) for k in (1, 11, 12, 21))
    one_voxel = max(ct.spacing_zyx_mm)
    report = json.loads(result.paths["report"].read_text())
    for frag in report["fragments"]:
        mesh = trimesh.load(result.out_dir / frag["stl"])
        assert mesh.volume > 0
        box = np.array([frag["bbox_lps_mm"]["min"], frag["bbox_lps_mm"]["max"]])
        np.testing.assert_allclose(mesh.bounds, box, atol=one_voxel)
    # the sacrum box is |x| < 15, 0 < y < 30, 0 < z < 40 mm in LPS
    sacrum = next(f for f in report["fragments"] if f["label"] == 1)
    np.testing.assert_allclose(sacrum["centroid_lps_mm"], [0, 15, 20], atol=1.5)
    true_ml = np.count_nonzero(truth == 1) * ct.voxel_volume_mm3 / 1000
    assert sacrum["volume_ml"] == pytest.approx(true_ml, rel=0.1)
    assert result.paths["glb"].read_bytes()[:4] == b"glTF"

    # report, progress, timings
    assert report["input"]["shape_zyx"] == list(ct.shape)
    assert report["n_fragments"] == 4 and report["bones"]["left_hip"]["fragments"] == 2
    assert report["inference"]["abbc_spacing_zyx_mm"] == [2.0, 2.0, 2.0]
    stages = [s for s, _ in events]
    assert stages == ["load", "models", "anatomy", "abbc", "recovery", "labels", "meshes", "report", "done"]
    fractions = [f for _, f in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert set(STAGES) >= set(stages)
    for key in ("load", "anatomy", "abbc", "recovery", "meshes", "total"):
        assert result.timings[key] >= 0 and key in report["timings_s"]
    assert result.warnings == report["warnings"] == []


def test_no_pelvic_bone_finishes_cleanly(tmp_path):
    src = write_volume(phantom_ct(), tmp_path / "ct.nii.gz")
    abbc = OracleABBC()
    result = Pipeline(anatomy=OracleAnatomy(empty=True), fragments=abbc).run(src, tmp_path / "out")
    assert any("no pelvic bone found" in w for w in result.warnings)
    assert abbc.seen == []  # Stage 2 is skipped
    labels = read_volume(result.paths["labels"], kind="label")
    assert not labels.array.any() and labels.same_grid(read_volume(src))
    assert result.paths["stl"] == [] and result.paths["glb"] is None
    assert json.loads(result.paths["report"].read_text())["n_fragments"] == 0


def test_bone_without_fragments_is_reported_as_no_pelvic_bone(tmp_path):
    """Stage 1 marks bone (e.g. a vertebra taken for sacrum) but Stage 2 finds nothing."""
    src = write_volume(phantom_ct(spacing=(2.0, 2.0, 2.0)), tmp_path / "ct.nii.gz")
    nothing = OracleABBC(truth=lambda grid: np.zeros(grid.shape, np.uint8))
    result = Pipeline(anatomy=OracleAnatomy(), fragments=nothing).run(src, tmp_path / "out")
    assert len(result.warnings) == 1, result.warnings
    assert result.warnings[0].startswith("no pelvic bone found: Stage 1 marked")
    assert result.fragments == [] and result.paths["stl"] == []


def test_thick_slices_and_reduced_resolution_warnings(tmp_path):
    src = write_volume(phantom_ct(spacing=(3.0, 1.0, 1.0)), tmp_path / "thick.nii.gz")
    anatomy = OracleAnatomy((1.0, 1.0, 1.0))
    pipe = Pipeline(device="cpu", anatomy=anatomy, fragments=OracleABBC((1.0, 1.0, 1.0)),
                    cpu_max_voxels=200_000)
    result = pipe.run(src, tmp_path / "out")
    text = "\n".join(result.warnings)
    assert "slices are 3.0 mm thick" in text
    assert "reduced-resolution CPU run" in text
    # the grid the model saw really was coarsened to the voxel budget
    assert np.prod(anatomy.seen[0].shape) <= 200_000 * 1.05
    assert min(anatomy.seen[0].spacing_zyx_mm) > 1.0
    assert read_volume(result.paths["labels"], kind="label").same_grid(read_volume(src))


def test_more_than_ten_fragments_in_a_bone_warns(tmp_path):
    def twelve_pieces(grid: Volume) -> np.ndarray:
        pts = grid.index_to_world(np.indices(grid.shape).reshape(3, -1).T)
        x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]
        out = np.zeros(len(pts), np.uint8)
        for k in range(12):  # 12 separate 14 mm cubes of the right hip
            x0 = -66 + (k % 6) * 22
            z0 = 0 + (k // 6) * 24
            inside = (x > x0) & (x < x0 + 14) & (y > 5) & (y < 19) & (z > z0) & (z < z0 + 14)
            out[inside] = 21 + min(k, 9)
        return out.reshape(grid.shape)

    grid = phantom_ct()
    ct = grid.with_array(body_ct(twelve_pieces(grid)))
    src = write_volume(ct, tmp_path / "ct.nii.gz")

    class Anatomy(OracleAnatomy):
        def predict(self, volume):
            return anatomy_from_fragments(twelve_pieces(volume))

    result = Pipeline(anatomy=Anatomy(), fragments=OracleABBC(truth=twelve_pieces),
                      min_bone_ml=10, require_pelvis=False).run(src, tmp_path / "out")
    assert any("12 fragments found, more than 10" in w for w in result.warnings)
    assert result.report["bones"]["right_hip"]["fragments"] == 10


def test_dicom_input_with_dicom_seg(tmp_path):
    from _helpers import dicom_factory as fac
    import highdicom as hd

    dss = fac.make_series(n_slices=30, rows=56, columns=128, pixel_spacing_rc_mm=(1.0, 1.1),
                          spacing_z_mm=2.0, origin_lps_mm=(-70.0, -13.0, -9.0))
    fac.write_files(dss, tmp_path / "dicom")
    # the factory's pixels are a smooth test field, not bone: no bone-density gate here
    pipe = Pipeline(anatomy=OracleAnatomy(), fragments=OracleABBC(), min_bone_ml=0)
    result = pipe.run(tmp_path / "dicom", tmp_path / "out", dicom_seg=True, mesh_detail="coarse")
    seg = hd.seg.segread(result.paths["seg"])
    assert seg.number_of_segments == len(result.fragments) == 4
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == dss[0].SeriesInstanceUID
    report = result.report
    assert report["series"]["series_instance_uid"] == dss[0].SeriesInstanceUID
    assert report["series"]["n_slices"] == 30
    assert report["files"]["seg"] == "segmentation.dcm"
    text = result.paths["report"].read_text()
    assert fac.PATIENT_NAME.split("^")[0] not in text and fac.PATIENT_ID not in text


def test_dicom_seg_for_volume_input_is_skipped(tmp_path):
    src = write_volume(phantom_ct(), tmp_path / "ct.nii.gz")
    result = Pipeline(anatomy=OracleAnatomy(), fragments=OracleABBC()).run(
        src, tmp_path / "out", dicom_seg=True)
    assert result.paths["seg"] is None and result.report["files"]["seg"] is None
    assert not (tmp_path / "out" / "segmentation.dcm").exists()
    assert result.warnings == []
    assert result.ct.same_grid(result.labels) and result.ct.array.dtype == np.int16


def _refine_run(tmp_path, refiner, **run_kwargs):
    """The phantom with room around it (more than the refining margin), Stage 1 at 4 mm,
    ``refiner`` after it."""
    src = write_volume(phantom_ct(extent_zyx_mm=(120.0, 110.0, 220.0)), tmp_path / "ct.nii.gz")
    pipe = Pipeline(anatomy=OracleAnatomy((4.0, 4.0, 4.0)), fragments=OracleABBC((2.0, 2.0, 2.0)),
                    refine_anatomy=refiner)
    return read_volume(src), pipe.run(src, tmp_path / "out", **run_kwargs)


def test_refining_anatomy_runs_on_the_bone_box_and_its_map_is_used(tmp_path):
    fine = OracleAnatomy((2.0, 2.0, 2.0))
    ct, result = _refine_run(tmp_path, fine)
    # it saw the CT cropped to the bones (|x| < 58, 0 < y < 30, 0 < z < 40 mm) plus 30 mm
    (seen,) = fine.seen
    assert seen.spacing_zyx_mm == pytest.approx((2.0, 2.0, 2.0))
    corners = seen.index_to_world(np.array([[0, 0, 0], np.asarray(seen.shape) - 1]))
    np.testing.assert_allclose(corners[0], [-58 - 30, 0 - 30, 0 - 30], atol=5.0)
    np.testing.assert_allclose(corners[1], [58 + 30, 30 + 30, 40 + 30], atol=5.0)
    assert np.prod(seen.shape) * 8.0 < 0.6 * np.prod(ct.shape) * ct.voxel_volume_mm3
    # its map is Stage 1's: on its grid, named in the report beside the first model
    assert result.anatomy.same_grid(seen)
    np.testing.assert_array_equal(result.anatomy.array, anatomy_from_fragments(truth_on(seen)))
    models = result.report["models"]["anatomy"]
    assert models["backend"] == "custom" and models["refined_by"]["backend"] == "custom"
    assert result.report["inference"]["anatomy_spacing_zyx_mm"] == [2.0, 2.0, 2.0]
    assert sorted(f["label"] for f in result.fragments) == [1, 11, 12, 21]


def test_refining_anatomy_that_loses_a_bone_is_not_used(tmp_path):
    class SacrumOnly(OracleAnatomy):
        def predict(self, volume):
            return np.where(super().predict(volume) == 1, 1, 0).astype(np.uint8)

    fine = SacrumOnly((2.0, 2.0, 2.0))
    ct, result = _refine_run(tmp_path, fine)
    assert len(fine.seen) == 1
    assert result.anatomy.spacing_zyx_mm == pytest.approx((4.0, 4.0, 4.0))  # the first map
    assert "refined_by" not in result.report["models"]["anatomy"]
    assert sorted(f["label"] for f in result.fragments) == [1, 11, 12, 21]


def test_refining_anatomy_skips_refused_scans_and_given_maps(tmp_path):
    fine = OracleAnatomy((2.0, 2.0, 2.0))
    src = write_volume(phantom_ct(), tmp_path / "ct.nii.gz")
    refused = Pipeline(anatomy=OracleAnatomy((4.0, 4.0, 4.0), empty=True), fragments=OracleABBC(),
                       refine_anatomy=fine).run(src, tmp_path / "refused")
    assert refused.fragments == [] and fine.seen == []
    ct = read_volume(src)
    given = ct.with_array(anatomy_from_fragments(truth_on(ct)))
    result = Pipeline(anatomy=OracleAnatomy((4.0, 4.0, 4.0)), fragments=OracleABBC(),
                      refine_anatomy=fine).run(src, tmp_path / "given", anatomy_map=given)
    assert len(result.fragments) == 4 and fine.seen == []
    assert "refined_by" not in result.report["models"]["anatomy"]


def test_concurrent_runs_are_serialized(tmp_path):
    src = write_volume(phantom_ct(spacing=(2.0, 2.0, 2.0)), tmp_path / "ct.nii.gz")
    pipe = Pipeline(anatomy=OracleAnatomy(), fragments=OracleABBC())
    events: list[tuple[str, str]] = []
    errors: list[BaseException] = []

    def worker(name):
        try:
            pipe.run(src, tmp_path / name, progress=lambda s, f: events.append((name, s)))
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    owners = [name for name, _ in events]
    first = owners[0]
    n_first = owners.count(first)
    assert owners[:n_first] == [first] * n_first  # one run finished before the other began
    assert (tmp_path / "a" / "labels.nii.gz").exists() and (tmp_path / "b" / "labels.nii.gz").exists()


def test_missing_model_is_a_clear_model_error(tmp_path):
    src = write_volume(phantom_ct(spacing=(2.0, 2.0, 2.0)), tmp_path / "ct.nii.gz")
    with pytest.raises(ModelError, match="model not found"):
        Pipeline(anatomy=OracleAnatomy(), fragments=tmp_path / "no_such_model").run(src, tmp_path / "out")


def test_bad_mesh_detail_is_refused(tmp_path):
    from pengwin_demo.errors import InputError

    with pytest.raises(InputError, match="mesh detail"):
        Pipeline().run(tmp_path / "x.nii.gz", tmp_path / "out", mesh_detail="ultra")


# -- with the bundled demo models ----------------------------------------------------------
needs_models = pytest.mark.skipif(not HAVE_BUNDLED, reason=f"bundled demo models not found in {MODELS}")


@needs_models
@pytest.mark.slow
def test_real_siemens_series_finishes_with_no_pelvic_bone(tmp_path, capsys, siemens_series_dir):
    from pengwin_demo.__main__ import main

    rc = main(["segment", str(siemens_series_dir), "-o", str(tmp_path / "out"),
               "--device", "cpu", "--dicom-seg", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "no pelvic bone found" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["n_fragments"] == 0
    assert any("no pelvic bone found" in w for w in report["warnings"])
    assert report["inference"]["no_fragments_reason"].startswith("no pel")
    assert any("slices are 3.0 mm thick" in w for w in report["warnings"])
    assert report["series"]["manufacturer"] == "SIEMENS"
    labels = read_volume(tmp_path / "out" / "labels.nii.gz", kind="label")
    assert labels.shape == (20, 512, 512) and not labels.array.any()


@pytest.mark.parametrize("option", ["--anatomy", pytest.param("--refine-anatomy", marks=needs_models)])
def test_cli_segment_says_which_model_is_missing(tmp_path, capsys, option):
    from pengwin_demo.__main__ import main

    src = write_volume(phantom_ct(spacing=(2.0, 2.0, 2.0)), tmp_path / "ct.nii.gz")
    rc = main(["segment", str(src), "-o", str(tmp_path / "out"), "--device", "cpu",
               option, str(tmp_path / "missing_model"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "model not found" in err and "missing_model" in err


@needs_models
def test_refining_anatomy_none_and_auto(monkeypatch):
    import pengwin_demo.models as M

    def refiner(anatomy, choice):
        return Pipeline(anatomy=anatomy, refine_anatomy=choice).load_models(("anatomy_refine",))["anatomy_refine"]

    assert refiner(OracleAnatomy((8.0, 8.0, 8.0)), "none") is None
    # auto: a bundled refining model (here the 4 mm anatomy model stands in for one), only
    # after an anatomy model that runs coarser; none when none is bundled
    monkeypatch.setattr(M, "bundled_refine_path", lambda: M.bundled_model_path("anatomy"))
    bundled = refiner(OracleAnatomy((8.0, 8.0, 8.0)), "auto")
    assert bundled is not None and tuple(bundled.target_spacing_zyx_mm) == (4.0, 4.0, 4.0)
    assert refiner(OracleAnatomy((2.0, 2.0, 2.0)), "auto") is None
    assert refiner(OracleAnatomy(), "auto") is None  # a model that resamples by itself (TotalSegmentator)
    monkeypatch.setattr(M, "bundled_refine_path", lambda: None)
    assert refiner(OracleAnatomy((8.0, 8.0, 8.0)), "auto") is None


# spacing ratios chosen so that no fine voxel centre lies exactly halfway between two
# coarse ones (such ties may go either way, in SimpleITK too, by floating-point rounding)
@pytest.mark.parametrize("spacing", [(2.1, 1.7, 1.3), (3.1, 0.7, 2.3)])
def test_fast_nearest_upsampling_equals_simpleitk(spacing):
    from pengwin_demo.recovery import nearest_onto
    from pengwin_demo.volume import resample_onto, resample_to_spacing

    rng = np.random.default_rng(0)
    fine = Volume(rng.integers(0, 31, (37, 41, 53)).astype(np.uint8), (1.5, 0.9, 1.1),
                  (-3.0, 4.0, 5.0), _oblique())
    coarse = resample_to_spacing(fine, spacing, "nearest")
    np.testing.assert_array_equal(nearest_onto(coarse, fine), resample_onto(coarse, fine, "nearest").array)
    shifted = Volume(coarse.array, coarse.spacing_zyx_mm, (-2.0, 4.5, 5.0), coarse.direction)
    np.testing.assert_array_equal(nearest_onto(shifted, fine), resample_onto(shifted, fine, "nearest").array)


@needs_models
def test_totalsegmentator_without_weights_falls_back_with_a_warning():
    from pengwin_demo.models import totalsegmentator_missing_weights

    if not totalsegmentator_missing_weights():
        pytest.skip("TotalSegmentator weights are installed here; the fallback cannot be shown")
    pipe = Pipeline(device="cpu", anatomy="totalsegmentator")
    assert any("TotalSegmentator unavailable" in w for w in pipe.model_warnings)
    info = pipe.model_info
    assert info["anatomy"]["backend"] == "bundled" and info["anatomy"]["name"] == "anatomy"
    assert info["fragments"]["target_spacing_zyx_mm"] is not None
