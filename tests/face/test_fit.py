"""Tests for invrender_core.face.fit: synthetic correspondences of known shape, pose and camera, recovered.

Models: a tiny model built here (a 16 x 14 grid bulging towards +z, random orthonormal identity basis,
random blendshapes) and the real Surrey Face Model from ../shared/data (skipped when absent).
"""

import math
from pathlib import Path

import numpy as np
import pytest

from invrender_core import sh
from invrender_core.face.fit import (
    MIN_CORRESPONDENCES,
    Correspondences,
    FrameFit,
    fit_frame,
    fit_frames,
    inverse_sh,
    inverse_sh_frames,
    vertex_normals,
)
from invrender_core.face.morphable_model import MorphableModel, load_model
from invrender_core.face.synthetic import rotation_from_euler

SFM = Path(__file__).resolve().parents[3] / "shared" / "data" / "eos" / "sfm_shape_3448.bin"
SIZE = (640, 480)
NX, NY = 16, 14


def grid_triangles(nx: int, ny: int) -> np.ndarray:
    """(2 (nx-1)(ny-1), 3) triangles of an nx x ny vertex grid (row i has y growing), CCW seen from +z."""
    tris = []
    for i in range(ny - 1):
        for j in range(nx - 1):
            a = i * nx + j
            tris += [(a, a + 1, a + nx + 1), (a, a + nx + 1, a + nx)]
    return np.array(tris, dtype=np.int32)


def tiny_model(seed=0, K=10, E=3) -> MorphableModel:
    """A face-sized bulge (mm) facing +z with a random orthonormal identity basis and random blendshapes."""
    rng = np.random.default_rng(seed)
    X, Y = np.meshgrid(np.linspace(-70, 70, NX), np.linspace(-80, 90, NY))
    Z = 70.0 * np.sqrt(np.clip(1.0 - (X / 95.0) ** 2 - (Y / 115.0) ** 2, 0.05, None)) - 60.0
    mean = np.stack([X, Y, Z], axis=-1).reshape(-1, 3)
    V = len(mean)
    basis, _ = np.linalg.qr(rng.standard_normal((3 * V, K)))  # orthonormal columns
    std = 4.0 * math.sqrt(V) * 0.8 ** np.arange(K)  # about 4 mm per vertex for the first component
    expression = 3.0 * rng.standard_normal((V, 3, E))
    return MorphableModel(
        mean=mean.astype(np.float32), shape_basis=basis.reshape(V, 3, K).astype(np.float32),
        shape_variances=(std**2).astype(np.float32), expression_basis=expression.astype(np.float32),
        expression_names=np.array([f"e{k}" for k in range(E)]), triangles=grid_triangles(NX, NY), name="tiny",
    ).validate()


@pytest.fixture(scope="module")
def tiny():
    return tiny_model()


@pytest.fixture(scope="module")
def surrey():
    if not SFM.is_file():
        pytest.skip(f"{SFM} not present")
    return load_model(SFM)


@pytest.fixture(scope="module", params=["tiny", "surrey"])
def model(request):
    return request.getfixturevalue(request.param)


rotation = rotation_from_euler  # yaw about y, pitch about x, roll about z (degrees)


def angle_deg(A, B) -> float:
    return math.degrees(math.acos(np.clip((np.trace(A.T @ B) - 1.0) / 2.0, -1.0, 1.0)))


def synth(model, rng, n, *, distance=600.0, focal=None, identity=None, noise=0.0, outliers=0.0):
    """Random identity / expression / pose / focal and n exact (then noisy) correspondences of random surface points.

    Points are spread over the whole mesh (visibility plays no part in the algebra being tested).
    """
    c = rng.standard_normal(model.num_identity) if identity is None else identity
    w = rng.uniform(0.0, 0.6, model.num_expressions)
    R = rotation(rng.uniform(-60, 60), rng.uniform(-30, 30), rng.uniform(-15, 15))
    t = np.array([rng.uniform(-20, 20), rng.uniform(-20, 20), -distance])
    f = rng.uniform(450, 1000) if focal is None else focal
    tri = rng.integers(0, len(model.triangles), n)
    bary = rng.dirichlet([1.0, 1.0, 1.0], n)
    V = model.vertices(c, w).astype(np.float64) @ R.T + t  # (V, 3) camera frame
    P = np.einsum("nj,njk->nk", bary, V[model.triangles[tri]])
    uv = np.stack([SIZE[0] / 2 + f * P[:, 0] / -P[:, 2], SIZE[1] / 2 - f * P[:, 1] / -P[:, 2]], axis=-1)
    pixels = uv + noise * rng.standard_normal(uv.shape)
    bad = rng.permutation(n)[: int(round(outliers * n))]
    pixels[bad] = rng.uniform(uv.min(axis=0), uv.max(axis=0), (len(bad), 2))  # gross: anywhere on the face
    corr = Correspondences(pixels, tri, bary, np.ones(n))
    return corr, {"identity": c, "expression": w, "R": R, "t": t, "focal": f, "vertices": V}


WEAK = {"identity_weight": 1e-6, "expression_weight": 1e-6}


# ----------------------------------------------------------------------------------------------- exact data


@pytest.mark.parametrize("seed", [1, 2])
def test_exact_correspondences_known_focal(model, seed):
    rng = np.random.default_rng(seed)
    corr, truth = synth(model, rng, 2000)
    fit = fit_frame(model, corr, SIZE, focal=truth["focal"], **WEAK)
    assert isinstance(fit, FrameFit)
    assert angle_deg(fit.rotation, truth["R"]) < 0.1
    assert np.abs(fit.camera_vertices(model) - truth["vertices"]).max() < 0.1  # mm
    assert abs(np.linalg.det(fit.rotation) - 1.0) < 1e-9 and fit.translation[2] < 0
    assert fit.focal == truth["focal"] and fit.rms_px < 0.01
    assert fit.identity.shape == (model.num_identity,) and fit.expression.shape == (model.num_expressions,)


@pytest.mark.parametrize("seed", [3, 4])
def test_exact_correspondences_estimated_focal_at_close_range(model, seed):
    rng = np.random.default_rng(seed)
    corr, truth = synth(model, rng, 2000, distance=350.0, focal=rng.uniform(450, 700))
    fit = fit_frame(model, corr, SIZE, **WEAK)
    assert abs(fit.focal / truth["focal"] - 1.0) < 0.01
    assert angle_deg(fit.rotation, truth["R"]) < 0.1
    assert np.abs(fit.camera_vertices(model) - truth["vertices"]).max() < 0.1


def test_fixed_identity_fits_expression_and_pose_only(tiny):
    rng = np.random.default_rng(5)
    identity = rng.standard_normal(tiny.num_identity)
    corr, truth = synth(tiny, rng, 800, identity=identity)
    fit = fit_frame(tiny, corr, SIZE, focal=truth["focal"], identity=identity[:6].tolist() + [0.0] * 4, **WEAK)
    assert np.array_equal(fit.identity, np.r_[identity[:6], np.zeros(4)])  # held fixed (padded to K)
    assert fit.rms_px > 0.1  # the wrong fixed identity cannot be fitted away
    fit = fit_frame(tiny, corr, SIZE, focal=truth["focal"], identity=identity, **WEAK)
    assert np.allclose(fit.expression, truth["expression"], atol=1e-4)
    assert angle_deg(fit.rotation, truth["R"]) < 0.01


def test_fit_frames_exact_shares_identity_and_focal(tiny):
    rng = np.random.default_rng(6)
    identity = rng.standard_normal(tiny.num_identity)
    focal = 600.0
    data = [synth(tiny, rng, 500, identity=identity, focal=focal, distance=400.0) for _ in range(4)]
    shared, fits = fit_frames(tiny, [c for c, _ in data], SIZE, **WEAK)
    assert np.allclose(shared, identity, atol=1e-3)
    for fit, (_, truth) in zip(fits, data, strict=True):
        assert abs(fit.focal / focal - 1.0) < 1e-3 and np.array_equal(fit.identity, shared)
        assert np.allclose(fit.expression, truth["expression"], atol=1e-3)
        assert np.abs(fit.camera_vertices(tiny) - truth["vertices"]).max() < 0.1


# ------------------------------------------------------------------------------------- noise and outliers


@pytest.mark.parametrize("seed", [7, 8, 9])
def test_robust_fit_survives_gross_outliers(model, seed):
    rng = np.random.default_rng(seed)
    corr, truth = synth(model, rng, 1000, noise=1.0, outliers=0.2)
    robust = fit_frame(model, corr, SIZE, focal=truth["focal"])
    plain = fit_frame(model, corr, SIZE, focal=truth["focal"], robust=False)
    err_robust, err_plain = angle_deg(robust.rotation, truth["R"]), angle_deg(plain.rotation, truth["R"])
    assert err_robust < 2.0
    assert err_plain > err_robust
    assert robust.rms_px < 2.0 < plain.rms_px  # kept points: about sqrt(2) px of 2D noise


def test_fit_frames_identity_beats_every_single_frame(model):
    rng = np.random.default_rng(10)
    identity = rng.standard_normal(model.num_identity)
    data = [synth(model, rng, 300, identity=identity, noise=2.0, focal=800.0) for _ in range(10)]
    corrs = [c for c, _ in data]
    neutral = model.vertices(identity).astype(np.float64)

    def shape_error(c):
        return float(np.sqrt(np.mean(np.square(model.vertices(c) - neutral))))

    shared, fits = fit_frames(model, corrs, SIZE, focal=800.0)
    singles = [shape_error(fit_frame(model, c, SIZE, focal=800.0).identity) for c in corrs]
    assert shape_error(shared) < min(singles)
    for fit, (_, truth) in zip(fits, data, strict=True):
        assert angle_deg(fit.rotation, truth["R"]) < 3.0


# --------------------------------------------------------------------------------------------- inverse SH


def lighting(rng) -> np.ndarray:
    """A plausible (9, 3) SH: ambient plus a coloured light from the upper front, a little random detail."""
    L = sh.directional(rng.normal([0.3, 0.6, 0.8], 0.2), [2.0, 1.8, 1.5]) + 0.3 * sh.directional([0, 0, 1], 1.0)
    L[0] += 0.4
    return L + 0.02 * rng.standard_normal((9, 3))


def shaded_correspondences(model, fit: FrameFit, albedo, L, rng, n):
    """Visible surface points of the posed mesh coloured albedo * E(n), exactly as the image model says."""
    V = fit.camera_vertices(model)
    normals = vertex_normals(V, model.triangles)
    tri = rng.integers(0, len(model.triangles), 4 * n)
    bary = rng.dirichlet([1.0, 1.0, 1.0], 4 * n)
    vid = model.triangles[tri]
    n_pt = np.einsum("nj,njk->nk", bary, normals[vid])
    n_pt /= np.linalg.norm(n_pt, axis=1, keepdims=True)
    keep = np.flatnonzero(n_pt[:, 2] > 0.1)[:n]  # facing the camera
    colours = np.einsum("nj,njk->nk", bary[keep], albedo[vid[keep]]) * sh.shading(n_pt[keep], L)
    P = np.einsum("nj,njk->nk", bary[keep], V[vid[keep]])
    pixels = np.stack([SIZE[0] / 2 + fit.focal * P[:, 0] / -P[:, 2], SIZE[1] / 2 - fit.focal * P[:, 1] / -P[:, 2]], -1)
    return Correspondences(pixels, tri[keep], bary[keep], np.ones(len(keep)), colours)


def posed(model, yaw, pitch=0.0) -> FrameFit:
    return FrameFit(np.zeros(model.num_identity), np.zeros(model.num_expressions), rotation(yaw, pitch, 0.0),
                    np.array([0.0, 0.0, -600.0]), 800.0, 0.0)


def normalised(L):
    return L / np.linalg.norm(L, axis=0)  # per channel: albedo and light share one scale per channel


def test_inverse_sh_single_frame_uniform_albedo(tiny):
    rng = np.random.default_rng(11)
    albedo = np.tile([0.6, 0.45, 0.35], (tiny.num_vertices, 1))
    L = lighting(rng)
    fit = posed(tiny, 20.0, 10.0)
    corr = shaded_correspondences(tiny, fit, albedo, L, rng, 1500)
    est_albedo, est_L = inverse_sh(tiny, fit, corr)
    assert est_albedo.shape == (tiny.num_vertices, 3) and est_L.shape == (9, 3)
    assert np.allclose(normalised(est_L), normalised(L), atol=1e-3)
    normals = vertex_normals(fit.camera_vertices(tiny), tiny.triangles)
    truth, est = albedo * sh.shading(normals, L), est_albedo * sh.shading(normals, est_L)
    assert np.abs(est / truth - 1.0).max() < 0.01
    assert np.allclose(est_albedo.mean(axis=0), 0.5, atol=1e-9)  # the scale convention (mean_albedo 0.5)


def test_inverse_sh_frames_shares_a_varied_albedo(tiny):
    rng = np.random.default_rng(12)
    x, y = tiny.mean[:, 0].astype(np.float64), tiny.mean[:, 1].astype(np.float64)
    pattern = 1.0 + 0.3 * np.sin(x / 25.0) * np.cos(y / 30.0) + 0.1 * rng.standard_normal(len(x))
    albedo = np.clip(pattern[:, None] * np.array([0.6, 0.45, 0.35]), 0.05, None)
    fits = [posed(tiny, yaw, pitch) for yaw, pitch in ((-40, 0), (0, 15), (40, 0), (15, -20), (-20, 25))]
    Ls = [lighting(rng) for _ in fits]
    corrs = [shaded_correspondences(tiny, fit, albedo, L, rng, 2000) for fit, L in zip(fits, Ls, strict=True)]
    est_albedo, est_L = inverse_sh_frames(tiny, fits, corrs, smoothness=1e-6, symmetry_weight=0.0,
                                          mean_weight=1e-6, iterations=30)
    assert est_L.shape == (5, 9, 3)
    for fit, corr, L, L_hat in zip(fits, corrs, Ls, est_L, strict=True):
        normals = vertex_normals(fit.camera_vertices(tiny), tiny.triangles)
        seen = np.unique(tiny.triangles[corr.triangles])
        truth = (albedo * sh.shading(normals, L))[seen]
        est = (est_albedo * sh.shading(normals, L_hat))[seen]
        assert np.abs(est / truth - 1.0).max() < 0.01
        assert np.allclose(normalised(L_hat), normalised(L), atol=0.01)
    # One scale per channel relates the estimate to the truth.
    ratio = est_albedo / albedo
    assert np.all(ratio.std(axis=0) < 0.01 * ratio.mean(axis=0))


def test_symmetry_prior_fills_the_unseen_side(tiny):
    rng = np.random.default_rng(13)
    x = tiny.mean[:, 0].astype(np.float64)
    albedo = (0.5 + 0.2 * np.cos(x / 20.0))[:, None] * np.array([1.0, 0.8, 0.7])  # left-right symmetric
    mirror = (np.arange(tiny.num_vertices) // NX) * NX + (NX - 1 - np.arange(tiny.num_vertices) % NX)
    assert np.allclose(tiny.mean[mirror] * [-1, 1, 1], tiny.mean)
    fit = posed(tiny, -20.0)
    corr = shaded_correspondences(tiny, fit, albedo, lighting(rng), rng, 3000)
    left = x[tiny.triangles[corr.triangles]].max(axis=1) < -1.0  # only points on the left half are seen
    corr = Correspondences(corr.pixels[left], corr.triangles[left], corr.barycentric[left], corr.weights[left],
                           corr.colors[left])
    right = x > 1.0
    with_sym, _ = inverse_sh(tiny, fit, corr, symmetry=mirror, symmetry_weight=1.0, smoothness=1e-3)
    without, _ = inverse_sh(tiny, fit, corr, symmetry=None, smoothness=1e-3)
    # The unseen right half takes its mirror's (seen) albedo; without the prior it is only smoothed and
    # pulled towards the mean albedo.
    def mismatch(a):
        return np.abs(a[right] / a[mirror[right]] - 1.0)

    assert mismatch(with_sym).max() < 0.01  # the smoothness pulls a little
    assert mismatch(without).mean() > 10.0 * mismatch(with_sym).mean()


def test_vertex_normals_flat_and_sphere():
    X, Y = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 4))
    flat = np.stack([X, Y, np.zeros_like(X)], -1).reshape(-1, 3)
    assert np.allclose(vertex_normals(flat, grid_triangles(5, 4)), [0.0, 0.0, 1.0])
    theta, phi = np.meshgrid(np.linspace(-0.8, 0.8, 15), np.linspace(-0.8, 0.8, 15))
    cap = np.stack([np.sin(theta) * np.cos(phi), np.sin(phi), np.cos(theta) * np.cos(phi)], -1).reshape(-1, 3)
    n = vertex_normals(cap, grid_triangles(15, 15))
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0)
    error_deg = np.degrees(np.arccos(np.clip(np.sum(n * cap, axis=1), -1, 1))).reshape(15, 15)
    assert error_deg[1:-1, 1:-1].max() < 0.5 and error_deg.max() < 5.0  # radial; one-sided at the border
    lonely = vertex_normals(np.vstack([flat, [[5.0, 5.0, 5.0]]]), grid_triangles(5, 4))
    assert np.array_equal(lonely[-1], [0.0, 0.0, 0.0])


# ------------------------------------------------------------------------------------------------- errors


def test_correspondence_shapes_are_checked():
    with pytest.raises(ValueError, match=r"barycentric has shape \(5, 2\).*\(5, 3\).*pixels of shape \(5, 2\)"):
        Correspondences(np.zeros((5, 2)), np.zeros(5, int), np.zeros((5, 2)), np.ones(5))
    with pytest.raises(ValueError, match=r"triangles has shape \(4,\).*\(5,\)"):
        Correspondences(np.zeros((5, 2)), np.zeros(4, int), np.zeros((5, 3)), np.ones(5))
    with pytest.raises(ValueError, match=r"colors has shape \(5, 4\)"):
        Correspondences(np.zeros((5, 2)), np.zeros(5, int), np.zeros((5, 3)), np.ones(5), np.zeros((5, 4)))
    with pytest.raises(ValueError, match=r"pixels must have shape \(N, 2\), got \(5, 3\)"):
        Correspondences(np.zeros((5, 3)), np.zeros(5, int), np.zeros((5, 3)), np.ones(5))
    with pytest.raises(ValueError, match=r"weights must lie in \[0, 1\]"):
        Correspondences(np.zeros((5, 2)), np.zeros(5, int), np.zeros((5, 3)), np.full(5, 2.0))
    with pytest.raises(ValueError, match="integer"):
        Correspondences(np.zeros((5, 2)), np.zeros(5), np.zeros((5, 3)), np.ones(5))


def test_fit_errors(tiny):
    rng = np.random.default_rng(14)
    corr, truth = synth(tiny, rng, 50)
    few = Correspondences(corr.pixels[:5], corr.triangles[:5], corr.barycentric[:5], corr.weights[:5])
    with pytest.raises(ValueError, match=f"too few correspondences.*5.*{MIN_CORRESPONDENCES}"):
        fit_frame(tiny, few, SIZE)
    zero_weight = Correspondences(corr.pixels, corr.triangles, corr.barycentric, np.r_[np.ones(3), np.zeros(47)])
    with pytest.raises(ValueError, match="too few"):
        fit_frames(tiny, [corr, zero_weight], SIZE)
    bad = Correspondences(corr.pixels, np.full(50, len(tiny.triangles)), corr.barycentric, corr.weights)
    with pytest.raises(ValueError, match=r"triangle ids must lie in \[0, 390\)"):
        fit_frame(tiny, bad, SIZE)
    with pytest.raises(ValueError, match=r"expression_sigma has shape \(2,\), expected \(E,\) = \(3,\)"):
        fit_frame(tiny, corr, SIZE, expression_sigma=np.ones(2))
    with pytest.raises(ValueError, match=r"identity has shape \(11,\)"):
        fit_frame(tiny, corr, SIZE, identity=np.zeros(11))
    with pytest.raises(ValueError, match="focal must be positive"):
        fit_frame(tiny, corr, SIZE, focal=0.0)
    with pytest.raises(ValueError, match="at least one frame"):
        fit_frames(tiny, [], SIZE)
    fit = fit_frame(tiny, corr, SIZE, focal=truth["focal"])
    with pytest.raises(ValueError, match="no colors"):
        inverse_sh(tiny, fit, corr)
    with pytest.raises(ValueError, match=r"one FrameFit per Correspondences, got 1 fits and 2 frames"):
        inverse_sh_frames(tiny, [fit], [corr, corr])
    with pytest.raises(ValueError, match=r"symmetry must be \(V,\) = \(224,\)"):
        coloured = Correspondences(corr.pixels, corr.triangles, corr.barycentric, corr.weights, np.ones((50, 3)))
        inverse_sh(tiny, fit, coloured, symmetry=np.arange(5))
    with pytest.raises(ValueError, match=r"vertices must have shape \(V, 3\), got \(4, 2\)"):
        vertex_normals(np.zeros((4, 2)), np.zeros((1, 3), int))
