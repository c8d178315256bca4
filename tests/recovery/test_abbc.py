"""ABBC targets on hand-built cases: invariants, geometry in mm, edge cases, bad input.

Invariants (tests/_helpers/abbc_checks.py): the four classes partition the volume and
background stays background; every fragment has a core voxel; no 26-connected core
component spans two fragments; border lies only within the border width of another
fragment of the same bone; open (boundary/core) voxels of two fragments of one bone
never touch.
"""

from __future__ import annotations

import numpy as np
import pytest

from pengwin_demo.recovery.targets import (
    BORDER_MM,
    _deepest_region,
    _finish_core,
    abbc_targets,
)
from pengwin_demo.errors import InputError
from pengwin_demo.labels import ABBC_BORDER, ABBC_BOUNDARY, ABBC_CORE
from _helpers.abbc_checks import (
    check_all,
    check_border_near_same_bone,
    check_cores_apart,
    core_components,
)

ISO = (1.0, 1.0, 1.0)


def ball(shape, centre, radius_mm, spacing=ISO):
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    dz, dy, dx = ((np.array(centre) - 0) * 0,) * 3 if False else (0, 0, 0)
    r2 = (
        ((z - centre[0]) * spacing[0]) ** 2
        + ((y - centre[1]) * spacing[1]) ** 2
        + ((x - centre[2]) * spacing[2]) ** 2
    )
    return r2 <= radius_mm**2


def two_slabs(label_a=1, label_b=2, shape=(30, 30, 44), split=22, spacing=ISO):
    """Two boxes touching along the plane x = split (voxel index)."""
    labels = np.zeros(shape, dtype=np.uint8)
    labels[5:25, 5:25, 6:split] = label_a
    labels[5:25, 5:25, split:38] = label_b
    return labels


# -- one fragment ------------------------------------------------------------------------
def test_single_sphere_core_inside_boundary_shell_no_border():
    labels = ball((40, 40, 40), (20, 20, 20), 12).astype(np.uint8)
    out = abbc_targets(labels, ISO)
    check_all(labels, out, ISO)
    assert not (out == ABBC_BORDER).any(), "a lone fragment has no fracture zone"
    assert core_components(labels, out, 1) == 1
    # the core is the centre; the surface layer is boundary
    assert out[20, 20, 20] == ABBC_CORE
    surface = labels.astype(bool) & ~ball((40, 40, 40), (20, 20, 20), 11)
    assert np.all(out[surface] == ABBC_BOUNDARY)
    # deeper than core_mm (6 mm) is always core
    deep = ball((40, 40, 40), (20, 20, 20), 12 - 6 - 0.5)
    assert np.all(out[deep] == ABBC_CORE)


def test_long_cylinder_core_runs_along_its_axis():
    z, y, x = np.ogrid[:20, :20, :60]
    labels = (((z - 10) ** 2 + (y - 10) ** 2 <= 16) & (x >= 5) & (x < 55)).astype(np.uint8)
    out = abbc_targets(labels, ISO)
    check_all(labels, out, ISO)
    zc, yc, xc = np.nonzero(out == ABBC_CORE)
    # radius 4 mm: curvature 1/r > 0.11 everywhere inside, so the core is all but the
    # outer voxel ring (the kink at the surface); it runs the whole length
    assert np.all(np.hypot(zc - 10, yc - 10) < 4.0), "the surface ring is boundary"
    assert out[10, 10, 30] == ABBC_CORE and out[10, 6, 30] == ABBC_BOUNDARY
    assert xc.max() - xc.min() >= 40, "core must run along the cylinder"
    assert core_components(labels, out, 1) == 1


def test_output_dtype_shape_and_integer_inputs():
    labels = two_slabs()
    ref = abbc_targets(labels, ISO)
    assert ref.dtype == np.uint8 and ref.shape == labels.shape
    for dtype in (np.int32, np.uint16, np.int64):
        assert np.array_equal(abbc_targets(labels.astype(dtype), ISO), ref)


def test_empty_map_is_all_background():
    out = abbc_targets(np.zeros((5, 6, 7), dtype=np.uint8), ISO)
    assert out.shape == (5, 6, 7) and not out.any()


# -- two slabs touching along a plane -------------------------------------------------------
def test_two_slabs_same_bone_symmetric_wall_on_the_fracture_plane():
    labels = two_slabs()
    out = abbc_targets(labels, ISO, border_mm=2.0)  # a 2 mm zone: 2 voxels a side at 1 mm
    check_all(labels, out, ISO, max_width_mm=2.0)
    border_x = np.nonzero((out == ABBC_BORDER).any(axis=(0, 1)))[0]
    # border = the voxels within 2 mm of the other slab: x 20,21 | 22,23
    assert border_x.tolist() == [20, 21, 22, 23]
    left = np.count_nonzero((out == ABBC_BORDER) & (labels == 1))
    right = np.count_nonzero((out == ABBC_BORDER) & (labels == 2))
    assert left == right, "the wall has the same width on both sides"
    # 2 voxels a side inside the bone; on the bone's outer surface (1 mm from the
    # background) only the contact layer: the zone takes at most half the local thickness
    mid = np.nonzero(out[15, 15] == ABBC_BORDER)[0].tolist()
    rim = np.nonzero(out[5, 15] == ABBC_BORDER)[0].tolist()
    assert mid == [20, 21, 22, 23] and rim == [21, 22]
    # one voxel in from the rim the wall thins on both sides alike (symmetric walls: the
    # other side's open bone at the rim is diagonally near), elsewhere 2 voxels a side
    assert left > 1.6 * 20 * 20
    assert core_components(labels, out, 1) == 1 and core_components(labels, out, 2) == 1


def test_two_slabs_wall_follows_border_mm():
    labels = two_slabs()
    widths = {}
    for border_mm in (1.0, 2.0, 3.0):
        out = abbc_targets(labels, ISO, border_mm=border_mm)
        check_border_near_same_bone(labels, out, ISO, border_mm)
        widths[border_mm] = np.count_nonzero((out == ABBC_BORDER).any(axis=(0, 1)))
    assert widths == {1.0: 2, 2.0: 4, 3.0: 6}


def test_two_bones_touching_at_a_joint_have_no_border():
    labels = two_slabs(label_a=1, label_b=21)  # sacrum against right hip
    out = abbc_targets(labels, ISO)
    check_all(labels, out, ISO)
    assert not (out == ABBC_BORDER).any(), "border is only between fragments of one bone"
    # cores stay inside their bone, apart
    check_cores_apart(labels, out)
    assert out[15, 15, 21] == ABBC_BOUNDARY and out[15, 15, 22] == ABBC_BOUNDARY


def test_joint_between_curved_bones_keeps_cores_apart():
    shape = (40, 40, 60)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[ball(shape, (20, 20, 18), 12)] = 11
    labels[ball(shape, (20, 20, 40), 12) & (labels == 0)] = 21
    out = abbc_targets(labels, ISO)
    check_all(labels, out, ISO)
    assert not (out == ABBC_BORDER).any()


@pytest.mark.parametrize("thickness", [1, 2])
def test_thin_plates_of_two_bones_stacked_keep_cores_apart(thickness):
    """Plates this thin are all core or all guaranteed core at their contact: the larger
    one gives way and moves its core out of reach of the other's."""
    labels = np.zeros((20, 30, 30), dtype=np.uint8)
    labels[9 - thickness : 9, 5:25, 5:25] = 1
    labels[9 : 9 + thickness, 5:27, 5:27] = 21
    out = abbc_targets(labels, ISO)
    check_all(labels, out, ISO)
    for lab in (1, 21):
        assert np.count_nonzero(out[labels == lab] == ABBC_CORE) >= 50


def test_two_touching_single_voxels_each_keep_their_core():
    """The one case the invariants cannot both hold: each speck keeps its core."""
    labels = np.zeros((5, 5, 6), dtype=np.uint8)
    labels[2, 2, 2] = 1
    labels[2, 2, 3] = 21
    out = abbc_targets(labels, ISO)
    assert out[2, 2, 2] == ABBC_CORE and out[2, 2, 3] == ABBC_CORE


# -- thin plates ------------------------------------------------------------------------------
@pytest.mark.parametrize("thickness", [2, 3, 4])
def test_thin_plate_alone_has_one_core_component(thickness):
    labels = np.zeros((30, 30, 20), dtype=np.uint8)
    labels[3:27, 3:27, 8 : 8 + thickness] = 1
    out = abbc_targets(labels, ISO)
    check_all(labels, out, ISO)
    assert core_components(labels, out, 1) == 1
    assert np.count_nonzero(out == ABBC_CORE) >= 50


@pytest.mark.parametrize("thickness", [2, 3, 4])
def test_thin_plate_against_a_block_is_not_swallowed_by_border(thickness):
    """A fixed 6 mm zone would turn the whole plate into border; the plate must keep a
    core of at least min_core_vox voxels and more than a border's worth of itself."""
    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[3:27, 3:27, 4:18] = 1  # block
    labels[3:27, 3:27, 18 : 18 + thickness] = 2  # plate lying on it
    out = abbc_targets(labels, ISO)
    check_all(labels, out, ISO)
    plate = labels == 2
    assert np.count_nonzero(out[plate] == ABBC_CORE) >= 50
    assert core_components(labels, out, 2) == 1
    assert np.count_nonzero(out[plate] == ABBC_BORDER) < plate.sum()
    # the naive reading (fixed 6 mm, no scaling) drowns the plate in border
    naive = abbc_targets(labels, ISO, border_mm=6.0, border_radius_fraction=None, min_core_vox=1,
                         extra_core_min_vox=None, border_shell_only=True,
                         zone_half_thickness=False)
    assert np.count_nonzero(naive[plate] == ABBC_CORE) < np.count_nonzero(out[plate] == ABBC_CORE)


# -- many fragments ------------------------------------------------------------------------
def thirty_fragments():
    """10 fragments in each of the 3 bones: a 2 x 5 grid of touching cubes per bone."""
    labels = np.zeros((24, 52, 140), dtype=np.uint8)
    for b in range(3):
        for k in range(10):
            i, j = divmod(k, 5)
            z0, y0, x0 = 2, 2 + i * 24, 4 + b * 46 + j * 8
            size = 8 if j < 4 else 6
            labels[z0 : z0 + 20, y0 : y0 + 24, x0 : x0 + size] = b * 10 + k + 1
    return labels


def test_thirty_fragments_all_keep_a_core():
    labels = thirty_fragments()
    assert len(np.unique(labels)) == 31
    out = abbc_targets(labels, ISO)
    check_all(labels, out, ISO)
    for lab in range(1, 31):
        assert core_components(labels, out, lab) == 1, f"fragment {lab}"


# -- spacing ----------------------------------------------------------------------------------
def test_anisotropic_spacing_wall_is_measured_in_mm():
    spacing = (3.0, 0.7, 0.7)
    labels = np.zeros((20, 60, 60), dtype=np.uint8)
    labels[2:18, 5:55, 5:30] = 1  # touches fragment 2 across an x plane
    labels[2:18, 5:55, 30:55] = 2
    out = abbc_targets(labels, spacing)
    check_all(labels, out, spacing, max_width_mm=BORDER_MM)
    border_x = np.nonzero((out == ABBC_BORDER).any(axis=(0, 1)))[0]
    # 2 mm at 0.7 mm per voxel: within 2 mm of the plane are 2 voxels a side (0.7, 1.4 mm)
    assert border_x.tolist() == [28, 29, 30, 31]
    # the same bones stacked along z: one 3 mm voxel a side (the contact layer)
    labels_z = np.zeros((20, 60, 60), dtype=np.uint8)
    labels_z[2:10, 5:55, 5:55] = 1
    labels_z[10:18, 5:55, 5:55] = 2
    out_z = abbc_targets(labels_z, spacing)
    check_all(labels_z, out_z, spacing, max_width_mm=BORDER_MM)
    assert np.nonzero((out_z == ABBC_BORDER).any(axis=(1, 2)))[0].tolist() == [9, 10]


def test_sphere_core_is_isotropic_in_mm_on_an_anisotropic_grid():
    spacing = (3.0, 0.7, 0.7)
    shape = (16, 70, 70)
    labels = ball(shape, (8, 35, 35), 18, spacing).astype(np.uint8)
    out = abbc_targets(labels, spacing)
    check_all(labels, out, spacing)
    z, y, x = np.nonzero(out == ABBC_CORE)
    ext_z = (z.max() - z.min() + 1) * spacing[0]
    ext_x = (x.max() - x.min() + 1) * spacing[2]
    assert abs(ext_z - ext_x) <= 2 * spacing[0], (ext_z, ext_x)


def test_translation_and_relabelling_within_a_bone_do_not_change_the_map():
    labels = two_slabs(shape=(30, 30, 44))
    out = abbc_targets(labels, ISO)
    shifted = np.zeros((34, 33, 50), dtype=np.uint8)
    shifted[3:33, 2:32, 5:49] = labels
    out_shifted = abbc_targets(shifted, ISO)
    assert np.array_equal(out_shifted[3:33, 2:32, 5:49], out)
    swapped = np.where(labels == 1, 2, np.where(labels == 2, 1, 0)).astype(np.uint8)
    assert np.array_equal(abbc_targets(swapped, ISO), out)


# -- the volume edge --------------------------------------------------------------------------
def test_fragment_cut_by_the_volume_edge_has_no_boundary_on_the_cut():
    """The scan's field of view cut the bone: the edge is not a bone surface."""
    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[5:25, 5:25, 0:16] = 1  # runs out of the volume at x = 0
    out = abbc_targets(labels, ISO)
    check_all(labels, out, ISO)
    assert out[15, 15, 0] == ABBC_CORE, "the middle of the cut face is deep bone"
    assert out[15, 15, 15] == ABBC_BOUNDARY, "the real surface at x = 15 is boundary"


def test_fragments_filling_the_volume_to_every_edge():
    labels = np.ones((12, 14, 16), dtype=np.uint8)
    labels[:, :, 8:] = 2
    out = abbc_targets(labels, ISO)
    check_all(labels, out, ISO)
    assert core_components(labels, out, 1) == 1 and core_components(labels, out, 2) == 1


# -- tiny fragments ---------------------------------------------------------------------------
def test_single_voxel_fragment_alone_is_core():
    labels = np.zeros((9, 9, 9), dtype=np.uint8)
    labels[4, 4, 4] = 3
    out = abbc_targets(labels, ISO)
    check_all(labels, out, ISO)
    assert out[4, 4, 4] == ABBC_CORE


def test_single_voxel_fragment_beside_a_big_one_keeps_its_core():
    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[4:26, 4:26, 4:20] = 1
    labels[15, 15, 20] = 2  # a chip on the face of fragment 1
    labels[4, 4, 3] = 3  # a chip on its corner
    out = abbc_targets(labels, ISO)
    check_all(labels, out, ISO)
    assert out[15, 15, 20] == ABBC_CORE and out[4, 4, 3] == ABBC_CORE
    # the big fragment walls itself off from the chips, and keeps one core
    assert out[15, 15, 19] == ABBC_BORDER
    assert core_components(labels, out, 1) == 1


def test_small_fragment_gets_a_connected_core_of_min_core_vox():
    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[4:26, 4:26, 4:18] = 1
    labels[10:19, 10:19, 18:20] = 2  # 162 voxels, 2 thick, lying on fragment 1
    out = abbc_targets(labels, ISO, min_core_vox=50)
    check_all(labels, out, ISO)
    n_core = np.count_nonzero(out[labels == 2] == ABBC_CORE)
    assert n_core == 50  # exactly min_core_vox: the natural core was smaller
    assert core_components(labels, out, 2) == 1


def test_tiny_fragment_core_is_capped_at_half_of_it():
    labels = np.zeros((30, 30, 30), dtype=np.uint8)
    labels[4:26, 4:26, 4:18] = 1
    labels[12:15, 12:15, 18:20] = 2  # 18 voxels
    out = abbc_targets(labels, ISO)
    check_all(labels, out, ISO)
    assert np.count_nonzero(out[labels == 2] == ABBC_CORE) == 9


def test_deepest_region_is_connected_holds_the_deepest_voxel_and_the_target():
    import cc3d
    import edt

    frag = np.zeros((20, 20, 40), dtype=bool)
    frag[5:15, 5:15, 2:18] = True
    frag[8:12, 8:12, 18:38] = True  # a thin arm
    d = edt.edt(frag, black_border=True).astype(np.float32)
    region = _deepest_region(d, frag, 60)
    assert region.sum() == 60 and np.all(frag[region])
    assert cc3d.connected_components(region, connectivity=26, return_N=True)[1] == 1
    assert region[np.unravel_index(np.argmax(d), d.shape)]


# -- label noise ------------------------------------------------------------------------------
def test_far_stray_voxels_get_no_core_and_leave_the_fragment_unchanged():
    labels = two_slabs(shape=(30, 30, 44))
    clean = abbc_targets(labels, ISO)
    noisy = labels.copy()
    noisy[0, 0, 0] = 1
    noisy[29, 29, 43] = 2
    noisy[29, 0, 1] = 2
    out = abbc_targets(noisy, ISO)
    check_all(noisy, out, ISO)
    assert out[0, 0, 0] == ABBC_BOUNDARY and out[29, 29, 43] == ABBC_BOUNDARY
    assert np.array_equal(out[labels > 0], clean[labels > 0])


def pinched_fragment():
    """Fragment 1: two blocks joined by a thin rod; fragment 2 fills the gap beside the rod."""
    labels = np.zeros((24, 30, 60), dtype=np.uint8)
    labels[4:20, 4:26, 4:56] = 1
    labels[4:20, 4:26, 27:33] = 0
    labels[11:13, 4:5, 27:33] = 1  # the rod (boundary only)
    labels[4:20, 9:26, 27:33] = 2
    return labels


def test_large_second_core_stays_core_and_can_be_forced_away():
    labels = pinched_fragment()
    out = abbc_targets(labels, ISO)
    check_all(labels, out, ISO)
    # both halves are deep bone: both keep their core (recovery merges the two seeds,
    # which meet through the rod without border)
    assert core_components(labels, out, 1) == 2
    single = abbc_targets(labels, ISO, extra_core_min_vox=10**9)
    check_all(labels, single, ISO)
    assert core_components(labels, single, 1) == 1
    assert np.count_nonzero(single == ABBC_CORE) < np.count_nonzero(out == ABBC_CORE)


def test_core_splinters_cut_off_by_the_zone_are_demoted():
    classes = np.zeros((12, 12, 30), dtype=np.uint8)
    frag = np.zeros(classes.shape, dtype=bool)
    frag[1:11, 1:11, 1:29] = True
    classes[frag] = ABBC_BOUNDARY
    classes[3:9, 3:9, 3:12] = ABBC_CORE  # main core, 324 voxels
    classes[5:7, 5:7, 15:17] = ABBC_CORE  # splinter, 8 voxels
    classes[3:8, 3:8, 20:28] = ABBC_CORE  # second large core, 200 voxels
    d = np.ones(classes.shape, dtype=np.float32)
    _finish_core(classes, frag, d, 50, 0.5, 100, 50)
    assert np.all(classes[5:7, 5:7, 15:17] == ABBC_BOUNDARY)
    assert np.all(classes[3:9, 3:9, 3:12] == ABBC_CORE)
    assert np.all(classes[3:8, 3:8, 20:28] == ABBC_CORE)
    assert np.all(classes[~frag] == 0) and np.all(classes[frag] > 0)


def test_minor_core_sharing_open_bone_with_a_large_one_is_demoted():
    """A 64-voxel core in the same boundary/core piece as a 432-voxel one (under
    SHARED_CORE_FRACTION of it) is demoted: growth from the large one reaches it anyway.
    The same core behind a border wall (another piece of the fragment's open bone) stays."""
    for walled in (False, True):
        classes = np.zeros((12, 12, 30), dtype=np.uint8)
        frag = np.zeros(classes.shape, dtype=bool)
        frag[1:11, 1:11, 1:29] = True
        classes[frag] = ABBC_BOUNDARY
        classes[3:9, 3:9, 3:15] = ABBC_CORE  # 432 voxels
        classes[4:8, 4:8, 24:28] = ABBC_CORE  # 64 voxels
        if walled:
            classes[1:11, 1:11, 19:21] = ABBC_BORDER
        _finish_core(classes, frag, np.ones(classes.shape, np.float32), 50, 0.5, 100, 50)
        minor = classes[4:8, 4:8, 24:28]
        assert np.all(minor == (ABBC_CORE if walled else ABBC_BOUNDARY)), walled
        assert np.all(classes[3:9, 3:9, 3:15] == ABBC_CORE)


# -- options ----------------------------------------------------------------------------------
def test_border_shell_only_demotes_core_to_boundary_in_the_zone():
    labels = two_slabs()
    out = abbc_targets(labels, ISO, border_mm=6.0, border_radius_fraction=None,
                       border_shell_only=True, zone_half_thickness=False)
    check_all(labels, out, ISO, max_width_mm=6.0)
    zone = (labels > 0) & (np.abs(np.arange(44) - 21.5) <= 6)[None, None, :]
    assert not np.any(out[zone] == ABBC_CORE), "no core within the zone"
    assert np.any(out[zone] == ABBC_BOUNDARY), "the zone's interior is demoted core (boundary)"


def test_radius_fraction_narrows_the_zone_for_thin_fragments_only():
    labels = two_slabs()
    wide = abbc_targets(labels, ISO, border_mm=6.0, border_radius_fraction=None)
    scaled = abbc_targets(labels, ISO, border_mm=6.0, border_radius_fraction=0.5)
    # both slabs are 16 x 20 x 20 mm: radius 8 -> width min(6, 4) = 4 mm
    assert np.count_nonzero((wide == ABBC_BORDER).any(axis=(0, 1))) == 12
    assert np.count_nonzero((scaled == ABBC_BORDER).any(axis=(0, 1))) == 8


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "labels, spacing, error, message",
    [
        (np.zeros((4, 4), np.uint8), ISO, ValueError, "3D"),
        (np.zeros((4, 4, 4), np.float32), ISO, TypeError, "integers"),
        (np.full((4, 4, 4), 31, np.uint8), ISO, ValueError, "0-30"),
        (np.full((4, 4, 4), -1, np.int16), ISO, ValueError, "0-30"),
        (np.zeros((4, 4, 4), np.uint8), (1.0, 0.0, 1.0), ValueError, "spacing"),
        (np.zeros((4, 4, 4), np.uint8), (1.0, 1.0), ValueError, "spacing"),
    ],
)
def test_bad_input_raises_value_or_type_error(labels, spacing, error, message):
    # an algorithm on arrays: InputError (a file named) is for the front ends
    with pytest.raises(error, match=message) as err:
        abbc_targets(labels, spacing)
    assert not isinstance(err.value, InputError)


def test_fragment_joined_only_through_its_own_zone_stays_one_piece():
    """A bar of fragment 1 sandwiched between fragments 2 and 3 joins its two end blocks.
    The whole bar is within 2 mm of 2 or 3, so a plain zone would cut fragment 1's
    boundary/core in two (two cores: recovery would return two fragments). The bar's
    middle layer stays boundary; its contact layers stay border, so the walls to 2 and 3
    remain. (Recovery still sees a 1-voxel neck between two cores here; see docs/abbc.md.)"""
    import cc3d

    labels = np.zeros((24, 30, 60), dtype=np.uint8)
    labels[:, :, :20] = 1
    labels[:, :, 40:] = 1
    labels[0:10, :, 20:40] = 2
    labels[13:23, :, 20:40] = 3
    labels[10:13, :, 20:40] = 1  # the bar, 3 voxels thick, as wide as the volume
    out = abbc_targets(labels, ISO, border_mm=2.0)
    check_all(labels, out, ISO, max_width_mm=2.0)
    open_part = (labels == 1) & (out != ABBC_BORDER)
    assert cc3d.connected_components(open_part, connectivity=6, return_N=True)[1] == 1
    bar = out[10:13, :, 20:40]
    assert np.all(bar[0] == ABBC_BORDER) and np.all(bar[2] == ABBC_BORDER)  # walls kept
    assert np.all(bar[1, :, 1:-1] != ABBC_BORDER)


def _block_under_a_plate():
    """Fragment 1, a block; fragment 2, a big block beside it (face to face at x = 30) with
    a plate two voxels thick lying on top of fragment 1 (z 20-21)."""
    labels = np.zeros((30, 40, 60), dtype=np.uint8)
    labels[5:20, 5:35, 5:30] = 1
    labels[5:28, 5:35, 30:55] = 2
    labels[20:22, 5:35, 5:30] = 2
    return labels


def test_symmetric_walls_thin_the_zone_facing_a_thin_plate():
    """The plate keeps half its thickness open (its zone is its contact layer); the block's
    zone under it is thinned to the same one voxel, so recovery splits the wall on the
    fracture. Where two thick parts meet (x = 30) the wall stays 2 voxels a side."""
    from pengwin_demo.recovery import recover_fragments

    labels = _block_under_a_plate()
    out = abbc_targets(labels, ISO, border_mm=2.0)
    plain = abbc_targets(labels, ISO, border_mm=2.0, symmetric_walls=False)
    for m in (out, plain):
        check_all(labels, m, ISO, max_width_mm=2.0)
    under = (slice(10, 30), slice(8, 25))  # (y, x) away from every edge
    assert np.all(plain[19][under] == ABBC_BORDER) and np.all(plain[18][under] == ABBC_BORDER)
    assert np.all(out[19][under] == ABBC_BORDER) and np.all(out[18][under] != ABBC_BORDER)
    assert np.all(out[20][under] == ABBC_BORDER) and np.all(out[21][under] != ABBC_BORDER)
    side = out[10:16, 10:30, 26:34]  # the face-to-face wall, mid-height
    assert np.all(side[:, :, 2:6] == ABBC_BORDER) and np.all(side[:, :, [1, 6]] != ABBC_BORDER)
    anatomy = (labels > 0).astype(np.uint8)
    pred = recover_fragments(out, anatomy, ISO, min_fragment_vox=1000).labels
    block, plate = pred[15, 20, 15], pred[21, 20, 15]
    assert block != plate
    assert np.all(pred[19][under] == block) and np.all(pred[20][under] == plate)


def test_fragment_joined_only_through_its_contact_layers_stays_one_piece():
    """As above, but the bar is two voxels thick: all of it is contact layer (it touches 2
    below and 3 above). A path through the bar joins the two end blocks' open bone; the
    walls on the neighbours' side (their contact layers) stay, so nothing leaks."""
    import cc3d

    labels = np.zeros((24, 30, 60), dtype=np.uint8)
    labels[:, :, :20] = 1
    labels[:, :, 40:] = 1
    labels[0:10, :, 20:40] = 2
    labels[12:22, :, 20:40] = 3
    labels[10:12, :, 20:40] = 1  # the bar, 2 voxels thick
    out = abbc_targets(labels, ISO, border_mm=2.0)
    check_all(labels, out, ISO, max_width_mm=2.0)
    open_part = (labels == 1) & (out != ABBC_BORDER)
    assert cc3d.connected_components(open_part, connectivity=6, return_N=True)[1] == 1
    assert np.all(out[9, :, 21:39] == ABBC_BORDER) and np.all(out[12, :, 21:39] == ABBC_BORDER)
    assert np.count_nonzero(out[10:12, :, 20:40] != ABBC_BORDER) < 3 * 20  # a path, not the bar
