"""Synthetic fractured-pelvis phantoms: PENGWIN label rules, anatomy, geometry, determinism."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest
from scipy import ndimage

from pengwin_demo.labels import anatomy_from_fragments, first_label
from pengwin_demo.phantom import generate_phantom, make_phantom
from pengwin_demo.phantom.anatomy import LEFT_HIP, _wing, build_structures, sample_anatomy
from pengwin_demo.phantom.fractures import FRAGMENT_COUNT_PROBABILITIES, sample_fragment_counts
from pengwin_demo.phantom.render import evaluate

SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def phantoms():
    return {seed: generate_phantom(seed, "small") for seed in SEEDS}


def test_make_phantom_returns_ct_and_labels_on_one_grid():
    ct, labels = make_phantom(11)
    assert ct.array.dtype == np.int16 and labels.array.dtype == np.uint8
    assert ct.same_grid(labels)
    assert 1.5 <= min(ct.spacing_zyx_mm) and max(ct.spacing_zyx_mm) <= 3.0  # "small": ~2 mm
    assert ct.array.min() >= -1024 and ct.array.max() <= 3071


def test_pengwin_label_rules(phantoms):
    for ph in phantoms.values():
        lab = ph.labels.array
        values = set(np.unique(lab).tolist()) - {0}
        assert values <= set(range(1, 31))
        for bone in (1, 2, 3):
            base = first_label(bone)
            present = sorted(v for v in values if base <= v < base + 10)
            # numbered 1..n within the bone, no holes, largest first
            assert present == list(range(base, base + len(present)))
            sizes = [int((lab == v).sum()) for v in present]
            assert sizes == sorted(sizes, reverse=True)
            assert len(present) == ph.fragments[bone] == ph.requested_fragments[bone]


def test_each_fragment_is_one_connected_component(phantoms):
    for ph in phantoms.values():
        lab = ph.labels.array
        stats = cc3d.statistics(lab)
        for v in np.unique(lab[lab > 0]):
            box = stats["bounding_boxes"][v]
            _, n = cc3d.connected_components(lab[box] == v, connectivity=26, return_N=True)
            assert n == 1, f"seed {ph.seed}: label {v} has {n} components"


def _centroid_lps(vol, mask):
    idx = np.argwhere(mask).mean(axis=0)
    return vol.index_to_world(idx)[0]


def test_left_hip_is_at_plus_x_in_lps_for_both_storage_conventions(phantoms):
    stored = set()
    for ph in phantoms.values():
        anat = anatomy_from_fragments(ph.labels.array)
        sac = _centroid_lps(ph.labels, anat == 1)
        left = _centroid_lps(ph.labels, anat == 2)
        right = _centroid_lps(ph.labels, anat == 3)
        assert left[0] > sac[0] + 50 and right[0] < sac[0] - 50
        assert sac[1] > left[1] and sac[1] > right[1]  # sacrum is posterior (+y)
        stored.add(ph.stored_as)
        expected = np.diag([-1.0, -1.0, 1.0]) if ph.stored_as == "RAS" else np.eye(3)
        np.testing.assert_allclose(ph.ct.direction, expected)
    assert stored == {"LPS", "RAS"}, "the test seeds should cover both stored directions"


def test_same_seed_same_arrays_different_seed_different_case():
    a_ct, a_lab = make_phantom(5)
    b_ct, b_lab = make_phantom(5)
    c_ct, _ = make_phantom(6)
    assert np.array_equal(a_ct.array, b_ct.array) and np.array_equal(a_lab.array, b_lab.array)
    assert a_ct.same_grid(b_ct)
    assert a_ct.shape != c_ct.shape or not np.array_equal(a_ct.array, c_ct.array)


def test_requested_fragment_counts_are_met():
    request = {"sacrum": 1, "left_hip": 4, "right_hip": 7}
    ph = generate_phantom(21, "small", n_fragments=request)
    assert ph.fragments == {1: 1, 2: 4, 3: 7}
    lab = ph.labels.array
    assert set(np.unique(lab).tolist()) == {0, 1, 11, 12, 13, 14, 21, 22, 23, 24, 25, 26, 27}
    # a comminuted bone has small pieces beside its main fragments (volumes in mL)
    ml = np.prod(ph.labels.spacing_zyx_mm) / 1000
    right = [float((lab == v).sum() * ml) for v in range(21, 28)]
    assert right[0] > 50 and 0.2 <= right[-1] <= 5.0
    with pytest.raises(ValueError):
        generate_phantom(21, n_fragments={"sacrum": 11})
    with pytest.raises(ValueError):
        generate_phantom(21, n_fragments={"pelvis": 2})


def test_fragment_count_distribution_follows_the_default_probabilities():
    rng = np.random.default_rng(0)
    n = 4000
    draws = np.array([list(sample_fragment_counts(rng).values()) for _ in range(n // 3 + 1)]).ravel()[:n]
    ks = sorted(FRAGMENT_COUNT_PROBABILITIES)
    freq = np.array([(draws == k).mean() for k in ks])
    p = np.array([FRAGMENT_COUNT_PROBABILITIES[k] for k in ks])
    # within 4 binomial standard deviations for every count
    assert np.all(np.abs(freq - p) <= 4 * np.sqrt(p * (1 - p) / n) + 1e-9)
    assert draws.min() >= 1 and draws.max() <= 10


def test_generated_counts_follow_the_distribution(phantoms):
    # every bone of every case has exactly the drawn count, so the dataset's counts are
    # draws from the distribution; most bones are in few pieces
    counts = [c for ph in phantoms.values() for c in ph.fragments.values()]
    assert all(1 <= c <= 10 for c in counts)
    assert all(ph.fragments == ph.requested_fragments for ph in phantoms.values())


def test_intensities_bone_soft_tissue_air(phantoms):
    for ph in phantoms.values():
        ct, lab = ph.ct.array, ph.labels.array
        bone = lab > 0
        core = ndimage.binary_erosion(bone, iterations=2)
        # textured cancellous bone inside, dense cortex at the surface
        assert 120 <= np.median(ct[core]) <= 450
        shell = bone & ~ndimage.binary_erosion(bone)
        assert np.percentile(ct[shell], 95) > 700
        # air outside, fat and muscle inside the body
        assert np.percentile(ct, 2) < -900
        soft = ct[(ct > -200) & (ct < 100)]
        assert np.any(np.abs(soft + 100) < 30) and np.any(np.abs(soft - 45) < 20)
        # bone that must stay background: femoral heads and L5 are dense but unlabelled
        dense_unlabelled = (ct > 600) & ~ndimage.binary_dilation(bone, iterations=1)
        assert dense_unlabelled.sum() * np.prod(ph.ct.spacing_zyx_mm) > 20_000  # > 20 mL


def test_iliac_wing_is_thin_in_the_fossa():
    a = sample_anatomy(np.random.default_rng(3))
    hip = [s for s in build_structures(a) if s.bone == LEFT_HIP][0]
    _, (cx, cy, r0, z0, flare, th0, th1, s) = _wing((np.zeros(1, np.float32),) * 3, a, 1)
    th = (th0 + th1) / 2
    z = (8.0 * s + s * (58 + 36 * np.sin(np.pi * 0.5**0.85) + 3)) / 2  # half way up the fossa
    radius = r0 + (z - z0) * flare
    centre = np.array([cx + radius * np.cos(th), cy + radius * np.sin(th), z])
    grid = evaluate(hip, 0.25, np.array([centre - 10, centre + 10]))
    # thickness = length of the bone along the plate normal through the fossa centre
    normal = np.array([np.cos(th), np.sin(th), -flare])
    normal /= np.linalg.norm(normal)
    t = np.arange(-8, 8, 0.02)
    d = grid.sample((centre + t[:, None] * normal).astype(np.float32))
    thickness = (d < 0).sum() * 0.02
    assert 2.0 <= thickness <= 6.0, thickness
    assert abs(thickness - a.wing_thin[0]) < 0.3


def test_undisplaced_fragments_touch_along_a_faint_line():
    ph = generate_phantom(8, "small", n_fragments={"sacrum": 1, "left_hip": 3, "right_hip": 1},
                          displaced_fraction=0.0)
    lab, ct = ph.labels.array, ph.ct.array
    assert ph.displaced == {1: [], 2: [], 3: []}
    # fragments of the left hip share a face: no background between them
    a = lab == 11
    grown = ndimage.binary_dilation(a)  # 6-connected neighbours
    touching = set(np.unique(lab[grown & ~a]).tolist())
    assert touching & {12, 13}
    # the fracture line is barely visible: contact voxels are close to the interior HU
    contact = a & ndimage.binary_dilation(np.isin(lab, [12, 13]))
    interior = ndimage.binary_erosion(lab > 10, iterations=2) & ~ndimage.binary_dilation(contact, iterations=2)
    drop = np.median(ct[interior]) - np.median(ct[contact])
    assert drop < 150, drop


def test_displaced_fragments_move_by_millimetres():
    request = {"sacrum": 3, "left_hip": 3, "right_hip": 3}
    still = generate_phantom(9, "small", n_fragments=request, displaced_fraction=0.0)
    moved = generate_phantom(9, "small", n_fragments=request, displaced_fraction=1.0)
    assert still.ct.same_grid(moved.ct)  # the motion stream changes nothing else
    n_moved = 0
    for bone in (1, 2, 3):
        plan_s, plan_m = still.plans[bone], moved.plans[bone]
        assert [sp.surface.centre.tolist() for sp in plan_s.splits] == \
            [sp.surface.centre.tolist() for sp in plan_m.splits]
        for k, motion in plan_m.motions.items():
            t = np.linalg.norm(motion.translation_mm)
            angle = np.degrees(np.arccos(np.clip((np.trace(motion.rotation) - 1) / 2, -1, 1)))
            assert 1.0 <= t <= 8.0 and angle <= 10.0
            n_moved += 1
    assert n_moved >= 4
    # a moved fragment's centroid shifts by up to about 8 mm plus rotation lever
    for bone, labs in moved.displaced.items():
        for v in labs:
            c_m = _centroid_lps(moved.labels, moved.labels.array == v)
            shifts = [np.linalg.norm(c_m - _centroid_lps(still.labels, still.labels.array == u))
                      for u in range(first_label(bone), first_label(bone) + 3)
                      if (still.labels.array == u).any()]
            assert 0.3 <= min(shifts) <= 16.0


def test_fragment_counts_follow_a_requested_distribution():
    for seed in (31, 32):
        ph = generate_phantom(seed, fragment_probabilities={1: 0.5, 4: 0.5})
        assert set(ph.fragments.values()) <= {1, 4}
        assert ph.fragments == ph.requested_fragments
    ph = generate_phantom(33, fragment_probabilities={6: 1.0})
    assert ph.fragments == {1: 6, 2: 6, 3: 6}
    with pytest.raises(ValueError):
        sample_fragment_counts(np.random.default_rng(0), {0: 1.0})


def test_joint_gaps_separate_the_bones():
    """SI joints, symphysis and hip joints: the bones never come closer than the gap."""
    a = sample_anatomy(np.random.default_rng(4))
    st = {s.name: s for s in build_structures(a)}
    box = np.array([[-150.0, -90.0, -120.0], [150.0, 110.0, 120.0]])
    res = 1.0
    fields = {n: evaluate(st[n], res, box) for n in ("sacrum", "left_hip", "right_hip", "left_femur")}

    def values_inside(inside_of: str, other: str) -> np.ndarray:
        g = fields[inside_of]
        pts, _ = g.points(g.array < 0)
        return fields[other].sample(pts)

    # interpolation on a 1 mm grid may shave up to about half a voxel off a gap
    assert values_inside("left_hip", "sacrum").min() >= a.si_gap - 0.5
    assert values_inside("right_hip", "sacrum").min() >= a.si_gap - 0.5
    left_x = fields["left_hip"].points(fields["left_hip"].array < 0)[0][:, 0]
    right_x = fields["right_hip"].points(fields["right_hip"].array < 0)[0][:, 0]
    symphysis = left_x.min() - right_x.max()  # pubic bodies face each other across x = 0
    assert a.symphysis_gap - 2 * res <= symphysis <= a.symphysis_gap + 2 * res
    assert values_inside("left_femur", "left_hip").min() >= a.hip_gap - 0.5
    # and they do come close: the gaps are joints, not empty space
    assert values_inside("left_hip", "sacrum").min() <= a.si_gap + 1.5
    assert values_inside("left_femur", "left_hip").min() <= a.hip_gap + 1.5


@pytest.mark.slow
def test_full_size_case():
    ph = generate_phantom(1, "full")
    ct, lab = ph.ct, ph.labels.array
    nz, ny, nx = ct.shape
    assert (ny, nx) == (512, 512) and 100 <= nz <= 480
    sz, sy, sx = ct.spacing_zyx_mm
    assert 0.6 <= sx == sy <= 1.0 and 0.5 <= sz <= 3.0
    assert ph.fragments == ph.requested_fragments
    # every labelled bone lies inside the field of view
    for face in (lab[0], lab[-1], lab[:, 0], lab[:, -1], lab[:, :, 0], lab[:, :, -1]):
        assert not face.any()
    # the cortical shell is resolved at this size: its voxels reach cortical HU
    bone = lab > 0
    shell = bone & ~ndimage.binary_erosion(bone)
    assert 1000 <= np.percentile(ct.array[shell], 90) <= 1900
