"""fusion.py: Nehab et al. 2005 position + normal fusion on an analytic sphere-in-front-of-a-plane scene.

Errors are relative depth errors. Pixels on either side of the sphere's silhouette (the band that
depth_discontinuities marks on the exact depth) are left out of the RMS figures: they have half their
neighbours cut, hence less smoothing, and are checked separately (the step is kept).
"""

import numpy as np
import pytest
from scipy import ndimage

from invrender_core import fusion, geometry
from invrender_core.camera import Camera

NOISE = 0.02
# The input's pixel-to-pixel relative jumps have a spread of about NOISE * sqrt(2) = 2.8 %; the default
# 5 % cut would drop many edges between noisy pixels. 0.2 is above the noise and far below the
# sphere-to-plane step (about 90 %).
THRESHOLD = 0.2


@pytest.fixture(scope="module")
def scene():
    camera = Camera.from_fov(160, 120, 60.0)
    depth, normals, on_sphere = geometry.synthetic_sphere_plane(camera)
    noisy = depth * (1.0 + NOISE * np.random.default_rng(0).standard_normal(depth.shape))
    band = geometry.depth_discontinuities(depth, 0.05)
    return camera, depth, normals, noisy, band


def rms(x):
    return float(np.sqrt(np.mean(np.square(x))))


def rotate(normals, axis, angle):
    """Rodrigues rotation of normals (..., 3) about the unit axis (3,) by angle (...) radians."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    angle = np.asarray(angle, float)[..., None]
    return (normals * np.cos(angle) + np.cross(axis, normals) * np.sin(angle)
            + axis * (normals @ axis)[..., None] * (1.0 - np.cos(angle)))


def test_exact_inputs_stay_put(scene):
    camera, depth, normals, _, band = scene
    fused, info = fusion.fuse(depth, normals, camera, return_info=True)
    assert fused.shape == depth.shape and fused.dtype == np.float32
    assert info.converged and info.unknowns == depth.size
    rel = fused / depth - 1.0
    # Forward-difference tangents with the normal of one end are exact on the plane and second-order
    # accurate on the sphere.
    assert rms(rel[~band]) < 1e-4
    assert np.abs(rel[~band]).max() < 3e-3
    assert np.abs(rel).max() < 1e-2


def test_noise_is_reduced_more_than_five_times(scene):
    camera, depth, normals, noisy, band = scene
    fused = fusion.fuse(noisy, normals, camera, discontinuity_threshold=THRESHOLD)
    before, after = rms(noisy[~band] / depth[~band] - 1.0), rms(fused[~band] / depth[~band] - 1.0)
    assert before == pytest.approx(NOISE, rel=0.05)
    assert after < before / 5.0


@pytest.mark.parametrize("perturbation", ["bias about x", "bias about y", "tilt field"])
def test_wrong_normals_do_not_move_the_low_frequencies(scene, perturbation):
    camera, depth, normals, noisy, band = scene
    u, v = camera.pixel_grid()
    if perturbation == "bias about x":
        wrong = rotate(normals, [1, 0, 0], np.radians(8.0))
    elif perturbation == "bias about y":
        wrong = rotate(normals, [0, 1, 0], np.radians(8.0))
    else:  # up to 10 degrees, varying over the image
        field = np.radians(10.0) * np.sin(2 * np.pi * u / 160) * np.cos(2 * np.pi * v / 120)
        wrong = rotate(normals, [1, 1, 0], field)
    fused = fusion.fuse(noisy, wrong, camera, discontinuity_threshold=THRESHOLD).astype(np.float64)
    assert fused.mean() == pytest.approx(depth.mean(), rel=0.01)
    low_frequency_error = ndimage.gaussian_filter(fused / depth - 1.0, 8.0)
    assert np.abs(low_frequency_error).max() < 0.005
    assert rms(fused[~band] / depth[~band] - 1.0) < NOISE / 5.0  # still far better than the input


def test_the_silhouette_step_is_kept(scene):
    camera, depth, normals, noisy, _ = scene
    for source in (depth, noisy):
        fused = fusion.fuse(source, normals, camera, discontinuity_threshold=THRESHOLD).astype(np.float64)
        for axis in (0, 1):
            true_step = np.abs(np.diff(np.log(depth), axis=axis))  # log of the depth ratio of neighbours
            fused_step = np.abs(np.diff(np.log(fused), axis=axis))
            step = true_step > np.log(1.2)
            assert step.sum() > 50
            assert (fused_step[step] > 0.9 * true_step[step]).all()
            assert (fused_step[step] < 1.1 * true_step[step]).all()


def test_the_three_solvers_agree(scene):
    camera, _, normals, noisy, _ = scene
    results = {s: fusion.fuse(noisy, normals, camera, solver=s, tol=1e-8, discontinuity_threshold=THRESHOLD,
                              return_info=True) for s in fusion.SOLVERS}
    reference = results["amg"][0]
    for solver, (fused, info) in results.items():
        assert info.solver == solver and info.converged
        np.testing.assert_allclose(fused, reference, rtol=1e-5, err_msg=solver)
    assert results["amg"][1].iterations < results["cg-jacobi"][1].iterations < results["lsqr"][1].iterations


def test_depth_scale_does_not_matter(scene):
    camera, _, normals, noisy, _ = scene
    fused = fusion.fuse(noisy, normals, camera, tol=1e-8)
    scaled = fusion.fuse(noisy * 250.0, normals, camera, tol=1e-8)
    np.testing.assert_allclose(scaled, fused * 250.0, rtol=1e-5)


def test_lam_one_returns_the_input(scene):
    camera, _, normals, noisy, _ = scene
    np.testing.assert_allclose(fusion.fuse(noisy, normals, camera, lam=1.0), noisy, rtol=1e-6)


def test_low_confidence_depth_follows_the_normals(scene):
    camera, depth, normals, _, _ = scene
    u, v = camera.pixel_grid()
    r2 = (u - 25.0) ** 2 + (v - 25.0) ** 2
    wrong = depth * (1.0 + 0.1 * np.exp(-r2 / (2 * 5.0**2)))  # a smooth 10 % bump on the plane
    confidence = np.where(r2 < 15.0**2, 0.0, 1.0)
    fused = fusion.fuse(wrong, normals, camera, confidence=confidence)
    near = r2 < 20.0**2
    # Rebuilt from the depth around it and the normals.
    assert np.abs(fused[near] / depth[near] - 1.0).max() < 0.002
    trusting = fusion.fuse(wrong, normals, camera)
    assert (trusting / depth - 1.0).max() > 0.05  # with confidence 1 the bump largely stays


def test_masked_and_invalid_pixels_are_nan_and_isolated_ones_keep_the_input(scene):
    camera, depth, normals, noisy, _ = scene
    noisy = noisy.copy()
    normals = normals.copy()
    noisy[5, 5] = np.nan
    noisy[6, 7] = -1.0
    normals[8, 9] = np.nan
    mask = np.ones(depth.shape, bool)
    mask[50:60, 70:80] = False
    mask[100, 100] = True
    mask[99, 100] = mask[101, 100] = mask[100, 99] = mask[100, 101] = False  # (100, 100) has no neighbour
    fused = fusion.fuse(noisy, normals, camera, mask=mask, discontinuity_threshold=THRESHOLD)
    unknown = ~mask | ~np.isfinite(noisy) | (noisy <= 0) | ~np.isfinite(normals).all(-1)
    assert np.isnan(fused[unknown]).all() and np.isfinite(fused[~unknown]).all()
    assert fused[100, 100] == pytest.approx(noisy[100, 100], rel=1e-6)


@pytest.mark.parametrize("solver", fusion.SOLVERS)
@pytest.mark.parametrize("shape", [(1, 7), (6, 1), (1, 1)])
def test_degenerate_image_shapes(shape, solver):
    camera = Camera.from_fov(shape[1], shape[0])
    depth = np.linspace(2.0, 2.1, shape[0] * shape[1]).reshape(shape)
    normals = np.broadcast_to([0.0, 0.0, 1.0], shape + (3,))
    fused = fusion.fuse(depth, normals, camera, solver=solver)
    assert fused.shape == shape and np.isfinite(fused).all()


def test_isolated_pixels_only():
    """A checkerboard mask leaves every pixel without neighbours: AMG has nothing to coarsen."""
    camera = Camera.from_fov(60, 40)
    depth = np.random.default_rng(1).uniform(2.0, 3.0, (40, 60))
    mask = np.zeros((40, 60), bool)
    mask[::2, ::2] = True
    fused, info = fusion.fuse(depth, np.broadcast_to([0.0, 0.0, 1.0], (40, 60, 3)), camera, mask=mask,
                              return_info=True)
    assert info.unknowns == 600 and info.tangent_rows == 0 and info.converged
    np.testing.assert_allclose(fused[mask], depth[mask], rtol=1e-6)


def test_info_and_non_convergence_warning(scene):
    camera, _, normals, noisy, _ = scene
    with pytest.warns(RuntimeWarning, match="stopped after 1 iterations"):
        _, info = fusion.fuse(noisy, normals, camera, solver="cg-jacobi", tol=1e-12, maxiter=1,
                              discontinuity_threshold=THRESHOLD, return_info=True)
    assert not info.converged and info.iterations == 1
    all_edges = 2 * 160 * 120 - 160 - 120
    assert 0.95 * all_edges < info.tangent_rows < all_edges  # only edges across the silhouette are cut


def test_shape_and_argument_errors(scene):
    camera, depth, normals, _, _ = scene
    with pytest.raises(ValueError, match=r"depth has shape \(120, 159\), expected \(120, 160\)"):
        fusion.fuse(depth[:, :-1], normals, camera)
    with pytest.raises(ValueError, match=r"normals have shape \(120, 160\), expected \(120, 160, 3\)"):
        fusion.fuse(depth, normals[..., 0], camera)
    with pytest.raises(ValueError, match=r"confidence has shape \(120, 160, 1\), expected \(120, 160\)"):
        fusion.fuse(depth, normals, camera, confidence=np.ones((120, 160, 1)))
    with pytest.raises(ValueError, match=r"mask has shape \(2, 2\), expected \(120, 160\)"):
        fusion.fuse(depth, normals, camera, mask=np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="no valid pixel"):
        fusion.fuse(np.full(depth.shape, np.nan), normals, camera)
    with pytest.raises(ValueError, match="no valid pixel"):
        fusion.fuse(depth, normals, camera, mask=np.zeros(depth.shape, bool))
    with pytest.raises(ValueError, match="solver"):
        fusion.fuse(depth, normals, camera, solver="magic")
    with pytest.raises(ValueError, match="lam"):
        fusion.fuse(depth, normals, camera, lam=0.0)
