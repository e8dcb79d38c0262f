"""filtering.py: box filter, guided filter and guided upsampling against analytic answers."""

import numpy as np
import pytest

from invrender_core import filtering
from invrender_core.io import resize_linear


def brute_box(x, r):
    """Mean over the clipped (2r+1)² window, by loops."""
    out = np.empty_like(x, dtype=np.float64)
    h, w = x.shape[:2]
    for i in range(h):
        for j in range(w):
            out[i, j] = x[max(0, i - r):i + r + 1, max(0, j - r):j + r + 1].mean(axis=(0, 1))
    return out


def test_box_filter_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.random((13, 17, 2))
    for r in (1, 3, 20):  # 20: windows larger than the image
        np.testing.assert_allclose(filtering.box_filter(x, r), brute_box(x, r), atol=1e-12)
    np.testing.assert_allclose(filtering.box_filter(x[..., 0], 2), brute_box(x[..., 0], 2), atol=1e-12)
    np.testing.assert_array_equal(filtering.box_filter(x, 0), x)


def test_constant_source_stays_constant():
    rng = np.random.default_rng(1)
    guide = rng.random((30, 40, 3))
    const = np.full((30, 40, 2), [0.3, -2.0])
    np.testing.assert_allclose(filtering.guided_filter(guide, const, 3, 1e-3), const, atol=1e-5)
    low = np.full((8, 10, 2), [0.3, -2.0])
    np.testing.assert_allclose(filtering.guided_upsample(low, guide, 2, 1e-3), const, atol=1e-5)


def test_guide_equal_to_input_is_identity_as_eps_vanishes():
    rng = np.random.default_rng(2)
    image = rng.random((24, 32))
    for eps, tol in ((1e-4, 1e-2), (1e-9, 1e-6)):
        np.testing.assert_allclose(filtering.guided_filter(image, image, 2, eps), image, atol=tol)
    colour = rng.random((24, 32, 3))
    np.testing.assert_allclose(filtering.guided_filter(colour, colour, 2, 1e-9), colour, atol=1e-5)


def test_colour_guide_reproduces_an_affine_function_of_the_guide():
    """q = M I + c is an exact local affine model: the colour filter (full 3x3 covariance) returns it."""
    rng = np.random.default_rng(3)
    guide = rng.random((20, 26, 3))
    M = np.array([[0.5, -1.0, 2.0], [0.1, 0.2, 0.3]])  # two output channels
    src = guide @ M.T + [0.25, -0.5]
    np.testing.assert_allclose(filtering.guided_filter(guide, src, 2, 1e-10), src, atol=1e-4)
    # At low resolution too: the same affine model applied to the full-resolution guide.
    low_guide = resize_linear(guide, 13, 10)
    np.testing.assert_allclose(filtering.guided_upsample(low_guide @ M.T + [0.25, -0.5], guide, 2, 1e-10), src,
                               atol=1e-3)


def test_step_edge_follows_the_guide_within_a_pixel_while_bilinear_blurs_it():
    H, W, factor, edge = 32, 64, 4, 37  # the edge falls inside a low-resolution pixel (36..39)
    guide = np.where(np.arange(W) < edge, 0.1, 0.9) * np.ones((H, 1))  # (H, W) grey step
    truth = np.where(np.arange(W) < edge, 0.2, 0.8) * np.ones((H, 1))  # a map with the same edge
    low = resize_linear(truth, W // factor, H // factor)  # what a network at 1/4 resolution would give
    up = filtering.guided_upsample(low, guide, radius=1, eps=1e-4)
    bilinear = resize_linear(low, W, H)
    step = 0.6
    error = np.abs(up - truth) / step  # (H, W) as a fraction of the step
    assert error.max() < 0.01  # the step is where the guide's is, to the pixel
    away = np.abs(np.arange(W) + 0.5 - edge) > 1  # more than a pixel from the edge
    assert error[:, away].max() < 0.005
    smeared = (np.abs(bilinear - truth) / step > 0.05).sum(axis=1)
    assert smeared.min() >= factor  # bilinear smears the step over several pixels


def test_upsample_normals_are_unit_and_face_the_camera():
    rng = np.random.default_rng(4)
    low = rng.normal(size=(6, 8, 3))
    low[..., 2] = np.abs(low[..., 2]) + 0.1
    low /= np.linalg.norm(low, axis=-1, keepdims=True)
    guide = rng.random((24, 32, 3))
    n = filtering.upsample_normals(low, guide)
    assert n.shape == (24, 32, 3) and n.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
    assert (n[..., 2] > 0).all()
    # Renormalising: zero and back-facing vectors become valid camera-facing normals.
    fixed = filtering.renormalise_normals(np.array([[[0.0, 0.0, 0.0], [1.0, 0.0, -1.0]]]))
    np.testing.assert_allclose(fixed[0, 0], [0, 0, 1])
    assert fixed[0, 1, 2] == pytest.approx(filtering.MIN_NORMAL_Z, rel=1e-3)


def test_map_larger_than_the_guide_along_an_axis_is_resampled_plainly():
    # A 30-row photo runs through the networks at 32 rows: the map comes back by plain resampling.
    low = np.linspace(0.0, 1.0, 32 * 48).reshape(32, 48).astype(np.float32)
    out = filtering.guided_upsample(low, np.random.default_rng(0).random((30, 40, 3)))
    assert out.shape == (30, 40)
    np.testing.assert_allclose(out, resize_linear(low, 40, 30), atol=1e-6)


def test_a_shared_guide_gives_each_map_what_its_own_guide_gives():
    rng = np.random.default_rng(5)
    guide = rng.random((24, 32, 3)).astype(np.float32)
    shared = filtering.Guide(guide, 8, 6)
    for low, eps in ((rng.random((6, 8)), 1e-3), (rng.random((6, 8, 3)), 1e-2)):
        np.testing.assert_array_equal(filtering.guided_upsample(low, shared, eps=eps),
                                      filtering.guided_upsample(low, guide, eps=eps))
    normals = rng.normal(size=(6, 8, 3)) + [0.0, 0.0, 3.0]
    np.testing.assert_array_equal(filtering.upsample_normals(normals, shared),
                                  filtering.upsample_normals(normals, guide))
    with pytest.raises(ValueError, match=r"\(8, 6\).*\(9, 6\)"):  # prepared for another map size
        filtering.guided_upsample(rng.random((6, 9)), shared)


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"\(5, 6, 3\).*\(5, 7\)"):
        filtering.guided_filter(np.zeros((5, 6, 3)), np.zeros((5, 7)))
    with pytest.raises(ValueError, match=r"\(5, 6, 2\)"):
        filtering.guided_upsample(np.zeros((2, 2)), np.zeros((5, 6, 2)))
    with pytest.raises(ValueError, match="radius"):
        filtering.guided_filter(np.zeros((5, 6)), np.zeros((5, 6)), radius=0)
    with pytest.raises(ValueError, match="eps"):
        filtering.guided_filter(np.zeros((5, 6)), np.zeros((5, 6)), eps=0.0)


def test_snap_to_steps_makes_an_upsampled_step_a_step_again():
    low = np.where(np.arange(8) < 4, 0.0, 1.0)[None].repeat(6, 0).astype(np.float32)  # (6, 8) a step
    ramp = resize_linear(low, 32, 24)  # bilinear: the step becomes a ramp a few pixels wide
    assert ((ramp > 0.05) & (ramp < 0.95)).any()
    snapped = filtering.snap_to_steps(ramp, np.ones(ramp.shape, bool), radius=4, min_step=0.1)
    np.testing.assert_array_equal(np.unique(snapped), [0.0, 1.0])
    np.testing.assert_array_equal(snapped[:, :16], 0.0)  # the step at the ramp's middle, where the low one was
    np.testing.assert_array_equal(snapped[:, 16:], 1.0)
    # Only where asked, only pixels more than min_step from both sides, and ignored pixels neither move nor count.
    where = np.zeros(ramp.shape, bool)
    where[:12] = True
    part = filtering.snap_to_steps(ramp, where, radius=4, min_step=0.1)
    np.testing.assert_array_equal(part[:12], snapped[:12])
    np.testing.assert_array_equal(part[12:], ramp[12:])
    slope = np.tile(np.linspace(0.0, 0.5, 32, dtype=np.float32), (24, 1))  # 0.13 across a window
    np.testing.assert_array_equal(filtering.snap_to_steps(slope, where, radius=4, min_step=0.1), slope)
    everywhere = np.ones(ramp.shape, bool)
    assert (filtering.snap_to_steps(ramp, everywhere, radius=4, min_step=0.2) != ramp).any()
    kept = filtering.snap_to_steps(ramp, everywhere, radius=4, min_step=0.2, ignore=ramp > 0.5)
    np.testing.assert_array_equal(kept, ramp)  # no pixel left is 0.2 from both sides of its window


def test_snap_to_steps_checks_its_arguments():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        filtering.snap_to_steps(np.zeros((4, 4)), np.zeros((4, 5), bool), radius=1, min_step=0.1)
    with pytest.raises(ValueError, match="radius"):
        filtering.snap_to_steps(np.zeros((4, 4)), np.zeros((4, 4), bool), radius=0, min_step=0.1)
