"""sh.py: order-2 SH basis, shading, lighting fits (numpy and torch), rotation, environment maps."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from invrender_core import sh

RNG = np.random.default_rng(0)


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def random_normals(n, rng=RNG):
    return unit(rng.normal(size=(n, 3)))


def outdoor_light():
    """Positive-ish lighting: sky (uniform + gradient from +y) plus a sun."""
    L = np.zeros((9, 3))
    L[0] = [1.0, 1.05, 1.15]
    L[1] = [0.25, 0.3, 0.35]
    L += sh.directional(unit([0.4, 0.7, 0.3]), [3.0, 2.8, 2.4])
    return L


def sphere_view(size=64):
    """Normals (H, W, 3) and mask (H, W) of a sphere seen orthographically by the camera (normals z > 0)."""
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(c, -c)
    r2 = x * x + y * y
    mask = r2 < 0.98
    n = np.stack([x, y, np.sqrt(np.clip(1.0 - r2, 0.0, None))], axis=-1)
    return np.where(mask[..., None], n, 0.0), mask


def sphere_integral(radiance_fn, normals, res=400):
    """(1/π) ∫ radiance(ω) max(n·ω, 0) dω by a fine equirect midpoint rule: the E of our convention."""
    theta = (np.arange(res) + 0.5) * math.pi / res
    phi = (np.arange(2 * res) + 0.5) * math.pi / res
    T, P = np.meshgrid(theta, phi, indexing="ij")
    w = np.stack([np.sin(T) * np.cos(P), np.sin(T) * np.sin(P), np.cos(T)], axis=-1).reshape(-1, 3)
    dw = (np.sin(T) * (math.pi / res) ** 2).reshape(-1)
    rad = radiance_fn(w)  # (M,)
    cos = np.maximum(normals @ w.T, 0.0)  # (N, M)
    return cos @ (rad * dw) / math.pi


# ------------------------------------------------------------------------------------- basis


def test_basis_shapes_and_errors():
    assert sh.basis(np.zeros(3)).shape == (9,)
    assert sh.basis(np.zeros((4, 5, 3))).shape == (4, 5, 9)
    assert sh.radiance_basis(np.zeros((2, 3))).shape == (2, 9)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\).*\(4, 2\)"):
        sh.basis(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="shape"):
        sh.radiance_basis(np.zeros(4))
    with pytest.raises(ValueError, match=r"\(9, 3\).*\(9,\)"):
        sh.shading(np.zeros((2, 3)), np.zeros(9))
    assert sh.shading(np.zeros((5, 7, 3)), np.zeros((9, 3))).shape == (5, 7, 3)


def test_shading_image_is_shading_in_float32_block_by_block():
    normals = random_normals(5 * 7).reshape(5, 7, 3)
    L = RNG.normal(size=(9, 3))
    expected = sh.shading(normals, L)
    for block_pixels in (1 << 20, 6):  # one block; blocks that do not divide the 35 pixels
        image = sh.shading_image(normals, L, block_pixels=block_pixels)
        assert image.dtype == np.float32 and image.shape == (5, 7, 3)
        np.testing.assert_allclose(image, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    assert sh.shading_image(normals[0], L).shape == (7, 3)
    with pytest.raises(ValueError, match=r"\(9, 3\)"):
        sh.shading_image(normals, np.zeros(9))


def test_basis_is_rh_closed_form():
    n = random_normals(50)
    L = RNG.normal(size=(9, 3))
    x, y, z = n[:, :1], n[:, 1:2], n[:, 2:]
    L00, L1m1, L10, L11, L2m2, L2m1, L20, L21, L22 = L
    c1, c2, c3, c4, c5 = 0.429043, 0.511664, 0.743125, 0.886227, 0.247708
    E = (c1 * L22 * (x * x - y * y) + c3 * L20 * z * z + c4 * L00 - c5 * L20
         + 2 * c1 * (L2m2 * x * y + L21 * x * z + L2m1 * y * z) + 2 * c2 * (L11 * x + L1m1 * y + L10 * z))
    np.testing.assert_allclose(sh.shading(n, L), E, atol=1e-12)


def test_basis_is_convolved_radiance_basis():
    n = random_normals(50)
    A = np.array([math.pi] + [2 * math.pi / 3] * 3 + [math.pi / 4] * 5)
    np.testing.assert_allclose(sh.basis(n), sh.radiance_basis(n) * A, atol=2e-6)


def test_radiance_basis_orthonormal():
    h = 256
    Y = sh.radiance_basis(sh._equirect_directions(2 * h, h)).reshape(-1, 9)
    dw = np.broadcast_to(sh._equirect_solid_angles(2 * h, h), (h, 2 * h)).reshape(-1)
    np.testing.assert_allclose((Y * dw[:, None]).T @ Y, np.eye(9), atol=1e-4)


# ----------------------------------------------------------------- irradiance vs integration


def test_uniform_environment_is_exact():
    # Radiance 1 everywhere: irradiance π, so E = irradiance / π = 1.
    L = sh.from_equirect(np.ones((32, 64, 3)))
    np.testing.assert_allclose(sh.shading(random_normals(20), L), 1.0, atol=1e-5)
    np.testing.assert_allclose(L[1:], 0.0, atol=1e-12)
    np.testing.assert_allclose(L[0], 2.0 * math.sqrt(math.pi) / math.pi, rtol=1e-12)


def test_smooth_sky_matches_numerical_integration():
    # CIE-overcast-like sky over a dim ground plus a 10 degree cone light: a smooth environment.
    s = unit([0.3, -0.2, 0.8])

    def radiance(w):
        sky = np.where(w[..., 2] > 0, (1.0 + 2.0 * w[..., 2]) / 3.0, 0.15)
        cone = 8.0 * np.clip((w @ s - math.cos(math.radians(10.0))) / (1 - math.cos(math.radians(10.0))), 0, 1)
        return sky + cone

    h = 200
    env = radiance(sh._equirect_directions(2 * h, h))
    L = sh.from_equirect(np.repeat(env[..., None], 3, axis=-1))
    n = random_normals(300)
    truth = sphere_integral(radiance, n)
    approx = sh.shading(n, L)[:, 0]
    err = np.abs(approx - truth)
    assert err.max() <= 0.10 * truth.max()  # order-2 truncation (RH: ~9 % worst case for a point light)
    assert err.mean() <= 0.03 * truth.mean()


def test_directional_light_matches_clamped_cosine():
    s = unit([0.2, 0.5, 0.8])
    n = random_normals(500)
    E = sh.shading(n, sh.directional(s, [math.pi] * 3))[:, 0]  # intensity π -> E = max(n·s, 0)
    truth = np.maximum(n @ s, 0.0)
    assert np.abs(E - truth).max() < 0.11  # RH's bound on the order-2 clamped cosine
    assert np.abs(E - truth).mean() < 0.04


# ------------------------------------------------------------------------------------ fitting


def test_fit_recovers_rendered_sphere():
    normals, mask = sphere_view()
    albedo = RNG.uniform(0.2, 0.9, size=normals.shape)
    L = outdoor_light()
    image = albedo * sh.shading(normals, L) * mask[..., None]
    est = sh.fit_lighting(image, albedo, normals, mask=mask)
    np.testing.assert_allclose(est, L, atol=1e-6)


def test_fit_with_noise_is_close():
    normals, mask = sphere_view()
    albedo = np.full(normals.shape, 0.5)
    L = outdoor_light()
    clean = albedo * sh.shading(normals, L)
    image = clean * (1.0 + 0.01 * np.random.default_rng(1).normal(size=clean.shape))
    est = sh.fit_lighting(image, albedo, normals, mask=mask)
    shade_err = np.abs(sh.shading(normals[mask], est) - sh.shading(normals[mask], L)).max()
    assert shade_err < 0.02 * sh.shading(normals[mask], L).max()
    np.testing.assert_allclose(est[:4], L[:4], atol=0.05 * np.abs(L).max())


def test_fit_ignores_masked_invalid_pixels_and_uses_shadow():
    normals, mask = sphere_view(48)
    albedo = np.full(normals.shape, 0.6)
    shadow = np.where(normals[..., 0] > 0.3, 0.3, 1.0)
    L = outdoor_light()
    image = albedo * shadow[..., None] * sh.shading(normals, L)
    image[~mask] = 123.0  # garbage outside the object
    image[0, 0] = np.nan
    est = sh.fit_lighting(image, albedo, normals, mask=mask, shadow=shadow)
    np.testing.assert_allclose(est, L, atol=1e-6)
    # zero-length normals are ignored even without a mask (NaN pixel outside the sphere too)
    est2 = sh.fit_lighting(np.where(mask[..., None], image, 0.0), albedo, normals, shadow=shadow[..., None])
    np.testing.assert_allclose(est2, L, atol=1e-6)
    # weights act like a soft mask
    est3 = sh.fit_lighting(image, albedo, normals, weights=mask.astype(float) * 0.5, shadow=shadow)
    np.testing.assert_allclose(est3, L, atol=1e-6)


def test_fit_errors():
    normals, mask = sphere_view(16)
    img = np.ones(normals.shape)
    with pytest.raises(ValueError, match=r"albedo.*\(16, 16, 3\).*\(16, 15, 3\)"):
        sh.fit_lighting(img, np.ones((16, 15, 3)), normals)
    with pytest.raises(ValueError, match=r"normals.*\(16, 16, 3\)"):
        sh.fit_lighting(img, img, normals[:, :, :2])
    with pytest.raises(ValueError, match=r"mask.*\(16, 16\).*\(4, 4\)"):
        sh.fit_lighting(img, img, normals, mask=np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="shadow"):
        sh.fit_lighting(img, img, normals, shadow=np.ones((16, 16, 2)))
    with pytest.raises(ValueError, match="too few valid pixels"):
        few = np.zeros((16, 16), bool)
        few[8, :5] = True
        sh.fit_lighting(img, img, normals, mask=few)
    with pytest.raises(ValueError, match="not determined"):  # a flat wall: one normal
        sh.fit_lighting(img, img, np.broadcast_to([0.0, 0.0, 1.0], img.shape))
    with pytest.raises(ValueError, match="non-negative"):
        sh.fit_lighting(img, img, normals, weights=-np.ones((16, 16)))
    with pytest.raises(ValueError, match=r"precision.*\(27, 27\)"):
        sh.fit_lighting(img, img, normals, mask=mask, prior=(np.zeros(27), np.eye(9)))


def test_map_limits():
    normals, mask = sphere_view(32)
    albedo = np.full(normals.shape, 0.5)
    L = outdoor_light()
    image = albedo * sh.shading(normals, L) * (1.0 + 0.02 * RNG.normal(size=normals.shape))
    lsq = sh.fit_lighting(image, albedo, normals, mask=mask)
    mu = RNG.normal(size=(9, 3))
    strong = sh.fit_lighting(image, albedo, normals, mask=mask, prior=sh.GaussianPrior(mu, 1e12 * np.eye(27)))
    np.testing.assert_allclose(strong, mu, atol=1e-6)
    zero = sh.fit_lighting(image, albedo, normals, mask=mask, prior=(mu.reshape(27), np.zeros((27, 27))))
    np.testing.assert_allclose(zero, lsq, atol=1e-9)
    # an object with .mean (9, 3) / .precision attributes works as well; a prior also rescues a flat wall
    prior = type("P", (), {"mean": mu, "precision": np.eye(27)})()
    wall = sh.fit_lighting(np.ones((4, 4, 3)), np.ones((4, 4, 3)), np.broadcast_to([0.0, 0.0, 1.0], (4, 4, 3)),
                           prior=prior)
    assert wall.shape == (9, 3) and np.all(np.isfinite(wall))


# -------------------------------------------------------------------------------------- torch


def _torch_inputs(b=2, size=16, seed=0):
    rng = np.random.default_rng(seed)
    normals, mask = sphere_view(size)
    albedo = rng.uniform(0.3, 0.9, size=(b, size, size, 3))
    Ls = [outdoor_light() * (1 + 0.2 * i) for i in range(b)]
    image = np.stack([albedo[i] * sh.shading(normals, Ls[i]) for i in range(b)])
    image = image * (1.0 + 0.01 * rng.normal(size=image.shape))
    to_t = lambda a: torch.tensor(np.moveaxis(a, -1, 1), dtype=torch.float64)  # noqa: E731
    return (image, albedo, normals, mask), (to_t(image), to_t(albedo),
                                            to_t(np.broadcast_to(normals, (b, size, size, 3)).copy()),
                                            torch.tensor(np.broadcast_to(mask, (b, 1, size, size)).copy()))


def test_torch_matches_numpy():
    (image, albedo, normals, mask), (ti, ta, tn, tm) = _torch_inputs()
    out = sh.fit_lighting_torch(ti, ta, tn, mask=tm, ridge=0.0)
    assert out.shape == (2, 9, 3) and out.dtype == torch.float64
    for i in range(2):
        ref = sh.fit_lighting(image[i], albedo[i], normals, mask=mask)
        np.testing.assert_allclose(out[i].numpy(), ref, atol=1e-8)
    # with the default ridge the answer barely moves
    np.testing.assert_allclose(sh.fit_lighting_torch(ti, ta, tn, mask=tm).numpy(), out.numpy(), atol=1e-4)
    # MAP path agrees with numpy too
    mu, P = RNG.normal(size=27), np.diag(RNG.uniform(0.1, 10.0, 27))
    tmap = sh.fit_lighting_torch(ti, ta, tn, mask=tm, prior_mean=torch.tensor(mu), prior_precision=torch.tensor(P),
                                 ridge=0.0)
    ref = sh.fit_lighting(image[1], albedo[1], normals, mask=mask, prior=(mu, P))
    np.testing.assert_allclose(tmap[1].numpy(), ref, atol=1e-8)


def test_torch_shadow_and_errors():
    (image, albedo, normals, mask), (ti, ta, tn, tm) = _torch_inputs(b=1)
    shadow = torch.full((1, 1, 16, 16), 0.5, dtype=torch.float64)
    out = sh.fit_lighting_torch(ti * 0.5, ta, tn, mask=tm, shadow=shadow, ridge=0.0)
    np.testing.assert_allclose(out[0].numpy(), sh.fit_lighting(image[0], albedo[0], normals, mask=mask), atol=1e-8)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        sh.fit_lighting_torch(ti[:, :2], ta, tn)
    with pytest.raises(ValueError, match=r"normals.*\(1, 3, 16, 16\)"):
        sh.fit_lighting_torch(ti, ta, tn[..., :8])
    with pytest.raises(ValueError, match="mask"):
        sh.fit_lighting_torch(ti, ta, tn, mask=tm[:, :, :8])
    with pytest.raises(ValueError, match="both"):
        sh.fit_lighting_torch(ti, ta, tn, prior_mean=torch.zeros(27))


def test_torch_gradcheck():
    rng = np.random.default_rng(3)
    n = unit(rng.normal(size=(1, 4, 4, 3)))
    n[..., 2] = np.abs(n[..., 2])
    normals = torch.tensor(np.moveaxis(n, -1, 1), dtype=torch.float64, requires_grad=True)
    albedo = torch.tensor(rng.uniform(0.3, 0.9, (1, 3, 4, 4)), dtype=torch.float64, requires_grad=True)
    image = torch.tensor(rng.uniform(0.1, 0.9, (1, 3, 4, 4)), dtype=torch.float64, requires_grad=True)
    prior_mean = torch.zeros(27, dtype=torch.float64)
    prior_precision = 0.1 * torch.eye(27, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda i, a, nn: sh.fit_lighting_torch(i, a, nn, prior_mean=prior_mean, prior_precision=prior_precision),
        (image, albedo, normals))
    assert torch.autograd.gradcheck(lambda i, a: sh.fit_lighting_torch(i, a, normals.detach()), (image, albedo))


# ------------------------------------------------------------------------------------ rotation

quaternions = st.tuples(*[st.floats(-1.0, 1.0, allow_nan=False)] * 4).filter(lambda q: sum(x * x for x in q) > 1e-2)


def quat_to_matrix(q):
    w, x, y, z = np.asarray(q) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


@settings(max_examples=40, deadline=None)
@given(quaternions, quaternions)
def test_rotation_leaves_shading_unchanged(q1, q2):
    R1, R2 = quat_to_matrix(q1), quat_to_matrix(q2)
    M = sh.rotation(R1)
    L = np.random.default_rng(7).normal(size=(9, 3))
    n = random_normals(30, np.random.default_rng(8))
    np.testing.assert_allclose(sh.shading(n @ R1.T, M @ L), sh.shading(n, L), atol=2e-5)
    np.testing.assert_allclose(M @ M.T, np.eye(9), atol=1e-10)  # orthogonal
    np.testing.assert_allclose(M[0, 1:], 0.0, atol=1e-12)  # band-diagonal
    np.testing.assert_allclose(sh.rotation(R1 @ R2), M @ sh.rotation(R2), atol=1e-10)  # a representation


def test_rotation_errors_and_identity():
    np.testing.assert_allclose(sh.rotation(np.eye(3)), np.eye(9), atol=1e-12)
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(2, 2\)"):
        sh.rotation(np.eye(2))
    with pytest.raises(ValueError, match="rotation"):
        sh.rotation(np.diag([1.0, 1.0, -1.0]))
    with pytest.raises(ValueError, match="rotation"):
        sh.rotation(2.0 * np.eye(3))


def test_camera_to_world():
    C = sh.CAMERA_TO_WORLD
    np.testing.assert_allclose(C @ [0, 1, 0], [0, 0, 1])  # camera up = world up
    np.testing.assert_allclose(C @ [0, 0, -1], [0, 1, 0])  # camera looks along +y world
    L_cam = sh.directional([0.0, 1.0, 0.0], [1.0, 1.0, 1.0])  # light from above the camera
    L_world = sh.rotation(C) @ L_cam
    np.testing.assert_allclose(sh.dominant_direction(L_world), [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(sh.rotation(C.T) @ L_world, L_cam, atol=1e-12)


# ---------------------------------------------------------------------------- environment maps


def test_equirect_round_trip_exact():
    L = RNG.normal(size=(9, 3))
    for w, h in ((64, 32), (30, 16), (8, 4)):
        env = sh.to_equirect(L, w, h, clamp_negative=False)
        assert env.shape == (h, w, 3) and env.dtype == np.float32
        np.testing.assert_allclose(sh.from_equirect(env), L, atol=1e-5)


def test_equirect_positive_sky_round_trip_with_clamp():
    L = sh.from_equirect(np.ones((16, 32, 3)) * [1.0, 0.9, 0.8])
    L[2] += 0.3 * L[0]  # brighter towards +z, still positive everywhere
    assert sh.to_equirect(L, 64, 32, clamp_negative=False).min() > 0
    np.testing.assert_allclose(sh.from_equirect(sh.to_equirect(L, 64, 32)), L, atol=1e-5)


def test_equirect_clamping_error_is_quantified():
    """Clamping negative radiance brightens shading away from the light: quantify it."""
    n = random_normals(2000)

    def clamp_error(sky_radiance):
        L = sh.directional(unit([0.3, 0.2, 0.9]), [1.0, 1.0, 1.0])
        L[0] += sky_radiance * 2.0 * math.sqrt(math.pi) / math.pi
        Lc = sh.from_equirect(sh.to_equirect(L, 256, 128))
        E, Ec = sh.shading(n, L), sh.shading(n, Lc)
        assert np.all(Ec >= E - 1e-6)  # clamping only adds light
        return np.abs(Ec - E).max() / E.max()

    assert 0.15 < clamp_error(0.0) < 0.20  # a bare sun: 18 % of the peak shading
    assert clamp_error(0.1) < 0.03  # with a sky of 10 % of the sun irradiance: 2 %
    assert clamp_error(0.3) < 1e-6  # enough sky: no negative radiance, exact


def test_equirect_matches_blender_mapping():
    h, w = 16, 32
    d = sh._equirect_directions(w, h)
    assert d[0, w // 2, 2] > 0.98 and d[-1, w // 2, 2] < -0.98  # row 0 = top = +z
    np.testing.assert_allclose(d[h // 2, w // 2], [1, 0, 0], atol=0.2)  # centre = +x
    np.testing.assert_allclose(d[h // 2, w // 4], [0, 1, 0], atol=0.2)  # quarter from the left = +y
    # Cycles: u = (atan2(y, x) - π) / (-2π), v = (acos(z) - π) / (-π), v = 0 at the bottom row.
    u = (np.arctan2(d[..., 1], d[..., 0]) - math.pi) / (-2.0 * math.pi)
    v = (np.arccos(d[..., 2]) - math.pi) / (-math.pi)
    np.testing.assert_allclose(u * w - 0.5, np.broadcast_to(np.arange(w), (h, w)), atol=1e-9)
    np.testing.assert_allclose((1.0 - v) * h - 0.5, np.broadcast_to(np.arange(h)[:, None], (h, w)), atol=1e-9)
    # a light from +x is brightest in the centre column
    env = sh.to_equirect(sh.directional([1.0, 0.0, 0.0], [1, 1, 1]), w, h)
    assert np.unravel_index(env[..., 0].argmax(), (h, w))[1] in (w // 2 - 1, w // 2)


def test_equirect_errors():
    with pytest.raises(ValueError, match=r"\(9, 3\).*\(3, 9\)"):
        sh.to_equirect(np.zeros((3, 9)), 8, 4)
    with pytest.raises(ValueError, match="2x2"):
        sh.to_equirect(np.zeros((9, 3)), 1, 1)
    with pytest.raises(ValueError, match=r"\(H, W, 3\).*\(4, 8\)"):
        sh.from_equirect(np.zeros((4, 8)))
    with pytest.raises(ValueError, match="non-finite"):
        sh.from_equirect(np.full((4, 8, 3), np.inf))


# ------------------------------------------------------------------------------ directions, sun


def test_dominant_direction():
    s = unit([-0.3, 0.5, 0.4])
    L = sh.directional(s, [2.0, 1.0, 0.5])
    L[0] += 1.0
    np.testing.assert_allclose(sh.dominant_direction(L), s, atol=1e-12)
    np.testing.assert_allclose(sh.dominant_direction(sh.from_equirect(np.ones((8, 16, 3)))), [0, 0, 1])
    np.testing.assert_allclose(sh.dominant_direction(np.zeros((9, 3)), fallback=(0, 2, 0)), [0, 1, 0])
    with pytest.raises(ValueError, match=r"\(9, 3\)"):
        sh.dominant_direction(np.zeros(27))


def test_directional_and_extract_sun():
    s = unit([0.2, -0.4, 0.9])
    sun = sh.directional(s, [math.pi, math.pi, math.pi])
    # facing the light: E ≈ 1 up to order-2 truncation (A_l Y_l sums to 0.8862+1.0233*0.4886+...)
    assert abs(sh.shading(s, sun)[0] - 1.0) < 0.1
    sky = sh.from_equirect(np.ones((8, 16, 3)) * 0.2)
    d, irr, rest = sh.extract_sun(sun + sky, 1.0)
    np.testing.assert_allclose(d, s, atol=1e-12)
    np.testing.assert_allclose(irr, 1.0, atol=1e-12)  # irradiance π in radiance units -> 1 in E units
    np.testing.assert_allclose(rest, sky, atol=1e-12)
    d, irr, rest = sh.extract_sun(sun + sky, 0.25)
    np.testing.assert_allclose(rest + np.outer(sh.radiance_basis(d), irr), sun + sky, atol=1e-12)
    np.testing.assert_allclose(irr, 0.25, atol=1e-12)
    with pytest.raises(ValueError, match="fraction"):
        sh.extract_sun(sky, 1.5)
    with pytest.raises(ValueError, match=r"\(3,\)"):
        sh.directional([1.0, 0.0], 1.0)


def test_basis_and_shading_torch_match_numpy():
    n = torch.nn.functional.normalize(torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(3)), dim=1)
    ref = sh.basis(n.permute(0, 2, 3, 1).double().numpy())  # (B, H, W, 9)
    np.testing.assert_allclose(sh.basis_torch(n.double()).permute(0, 2, 3, 1).numpy(), ref, rtol=1e-12)
    L = torch.randn(2, 9, 3, dtype=torch.float64)
    ref_e = np.einsum("bhwk,bkc->bchw", ref, L.numpy())
    np.testing.assert_allclose(sh.shading_torch(n.double(), L).numpy(), ref_e, rtol=1e-12)


def test_mirroring_negates_exactly_the_x_odd_coefficients():
    rng = np.random.default_rng(3)
    n = rng.standard_normal((50, 3))
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    L = rng.standard_normal((9, 3))
    mirrored_L = L.copy()
    mirrored_L[list(sh.X_ODD)] *= -1.0
    np.testing.assert_allclose(sh.shading(n * [-1.0, 1.0, 1.0], mirrored_L), sh.shading(n, L), atol=1e-12)
    assert not np.allclose(sh.shading(n * [-1.0, 1.0, 1.0], L), sh.shading(n, L))
