"""IRN self-supervised losses: analytic values, invariances, masks, all-invalid batches, gradients, errors."""

import math

import numpy as np
import pytest
import torch

from invrender_core import sh
from invrender_core.camera import Camera
from invrender_core.geometry import normals_from_depth, synthetic_sphere_plane
from invrender_core.illumination_prior import IlluminationPrior
from invrender_core.io import linear_to_srgb
from invrender_core.train.irn_losses import (
    IRNLossWeights,
    albedo_consistency_loss,
    albedo_smoothness_loss,
    combine,
    cross_render_loss,
    illumination_prior_loss,
    illumination_prior_nll,
    normal_angular_loss,
    normal_gradient_loss,
    normal_loss,
    normals_from_depth_torch,
    rerender_loss,
    shading_smoothness_loss,
    shadow_consistency_loss,
    shadow_prior_loss,
    shadow_ratio_loss,
    shadow_sparsity_loss,
)
from invrender_core.train.multiview import warp_to_view

F64 = torch.float64


def _rand(*shape, seed=0, lo=0.0, hi=1.0):
    return torch.rand(*shape, dtype=F64, generator=torch.Generator().manual_seed(seed)) * (hi - lo) + lo


def _scene(b=2, h=6, w=7, seed=0):
    """A consistent decomposition: image = albedo * shadow * shading, all positive."""
    albedo = _rand(b, 3, h, w, seed=seed, lo=0.1, hi=0.9)
    shadow = _rand(b, 1, h, w, seed=seed + 1, lo=0.3, hi=1.0)
    shading = _rand(b, 3, h, w, seed=seed + 2, lo=0.2, hi=1.5)
    return albedo * shadow * shading, albedo, shadow, shading


def _ones(b=2, h=6, w=7):
    return torch.ones(b, 1, h, w, dtype=torch.bool)


def _assert_zero_with_grad(loss, *inputs):
    assert loss.ndim == 0 and loss.item() == 0.0
    loss.backward()
    for x in inputs:
        assert x.grad is not None and torch.equal(x.grad, torch.zeros_like(x))


# ---------- rerender_loss ----------

def test_rerender_zero_for_consistent_decomposition_positive_otherwise():
    image, albedo, shadow, shading = _scene()
    assert rerender_loss(image, albedo, shadow, shading, _ones()).item() == pytest.approx(0.0, abs=1e-14)
    assert rerender_loss(image, albedo * 1.2, shadow, shading, _ones()).item() > 1e-3


def test_rerender_is_l1_of_srgb_encoded_values():
    image = torch.full((1, 3, 2, 2), 0.5, dtype=F64)
    ones = torch.ones(1, 1, 2, 2, dtype=F64)
    render = np.array([0.25, -0.01, 0.002])  # power branch, negative toe, positive toe
    shading = torch.tensor(render, dtype=F64)[None, :, None, None].expand(1, 3, 2, 2)
    loss = rerender_loss(image, torch.ones_like(image), ones, shading, ones)
    expected = np.mean(np.abs(linear_to_srgb(np.full(3, 0.5)) - linear_to_srgb(render)))
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_rerender_negative_rendering_still_gets_a_gradient():
    image = torch.full((1, 3, 1, 1), 0.2, dtype=F64)
    shading = torch.full((1, 3, 1, 1), -0.1, dtype=F64, requires_grad=True)
    ones = torch.ones(1, 1, 1, 1, dtype=F64)
    rerender_loss(image, torch.full_like(image, 0.5), ones, shading, ones).backward()
    # d/dE |enc(y) - 12.92 a E| / 3 = -12.92 a / 3 per channel.
    assert torch.allclose(shading.grad, torch.full_like(shading, -12.92 * 0.5 / 3))


def test_rerender_mask_ignores_nan_pixels_and_skips_empty_images():
    image, albedo, shadow, shading = _scene(b=2)
    image_bad = image.clone()
    image_bad[0, :, 0, 0] = float("nan")
    image_bad[1] = float("nan")  # second image fully masked
    mask = _ones()
    mask[0, :, 0, 0] = False
    mask[1] = False
    albedo2 = albedo * 1.3
    loss = rerender_loss(image_bad, albedo2, shadow, shading, mask)
    ref = rerender_loss(image[:1], albedo2[:1], shadow[:1], shading[:1], mask[:1])
    assert torch.isfinite(loss) and loss.item() == pytest.approx(ref.item(), rel=1e-12)


def test_rerender_all_invalid_is_zero_with_grad():
    image, albedo, shadow, shading = _scene()
    albedo.requires_grad_()
    _assert_zero_with_grad(rerender_loss(image, albedo, shadow, shading, torch.zeros(2, 1, 6, 7)), albedo)


def test_rerender_gradcheck():
    image, albedo, shadow, shading = _scene(b=1, h=3, w=4)
    albedo, shadow, shading = (x.clone().requires_grad_() for x in (albedo * 0.9, shadow, shading))
    assert torch.autograd.gradcheck(lambda a, s, e: rerender_loss(image, a, s, e, _ones(1, 3, 4)),
                                    (albedo, shadow, shading))


# ---------- cross_render_loss ----------

def test_cross_render_zero_for_any_albedo_scale_positive_when_inconsistent():
    image, albedo, shadow, shading = _scene()
    for scale in (0.2, 1.0, 3.0):
        assert cross_render_loss(image, albedo * scale, shadow, shading, _ones()).item() == pytest.approx(0, abs=1e-12)
    other = _rand(*albedo.shape, seed=9, lo=0.1, hi=0.9)
    loss = cross_render_loss(image, other, shadow, shading, _ones())
    assert loss.item() > 1e-2
    assert cross_render_loss(image, other * 7.0, shadow, shading, _ones()).item() == pytest.approx(loss.item(), 1e-10)


def test_cross_render_all_invalid_zero_with_grad_and_gradcheck():
    image, albedo, shadow, shading = _scene(b=1, h=3, w=4)
    a = albedo.clone().requires_grad_()
    _assert_zero_with_grad(cross_render_loss(image, a, shadow, shading, torch.zeros(1, 1, 3, 4)), a)
    other = _rand(1, 3, 3, 4, seed=5, lo=0.1, hi=0.9).requires_grad_()
    e = shading.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: cross_render_loss(image, x, shadow, y, _ones(1, 3, 4)), (other, e))


# ---------- albedo_consistency_loss ----------

def test_albedo_consistency_analytic_value():
    a_i = torch.full((1, 3, 4, 4), 0.5, dtype=F64)
    a_j = a_i.clone()
    a_j[..., 2:] = 0.25  # half the pixels differ by a factor 2: r = 0 or log 2, c = log(2) / 2
    loss = albedo_consistency_loss(a_i, a_j, _ones(1, 4, 4), eps=0.0)
    assert loss.item() == pytest.approx(math.log(2.0) / 2.0, rel=1e-12)


def test_albedo_consistency_invariant_to_each_view_scale_and_symmetric():
    a_i = _rand(2, 3, 5, 6, seed=1, lo=0.05, hi=0.95)
    a_j = _rand(2, 3, 5, 6, seed=2, lo=0.05, hi=0.95)
    valid = _rand(2, 1, 5, 6, seed=3) > 0.3
    base = albedo_consistency_loss(a_i, a_j, valid, eps=0.0)
    assert base.item() > 0.1
    assert albedo_consistency_loss(0.3 * a_i, 2.5 * a_j, valid, eps=0.0).item() == pytest.approx(base.item(), 1e-12)
    assert albedo_consistency_loss(a_j, a_i, valid, eps=0.0).item() == pytest.approx(base.item(), rel=1e-12)
    assert albedo_consistency_loss(a_i, 0.4 * a_i, valid, eps=0.0).item() == pytest.approx(0.0, abs=1e-14)
    # The default eps = 1e-3 keeps it approximately invariant for albedos >= 0.05.
    assert albedo_consistency_loss(a_i, 0.4 * a_i, valid).item() < 0.01


def test_albedo_consistency_per_channel_forgives_colour_casts_only_when_asked():
    a_i = _rand(1, 3, 4, 5, seed=4, lo=0.1, hi=0.9)
    a_j = a_i * torch.tensor([1.0, 1.5, 0.7], dtype=F64)[None, :, None, None]
    assert albedo_consistency_loss(a_i, a_j, _ones(1, 4, 5), per_channel=True, eps=0.0).item() < 1e-14
    assert albedo_consistency_loss(a_i, a_j, _ones(1, 4, 5), eps=0.0).item() > 0.1


def test_albedo_consistency_all_invalid_zero_with_grad_and_gradcheck():
    a_i = _rand(1, 3, 3, 4, seed=5, lo=0.1, hi=0.9).requires_grad_()
    a_j = _rand(1, 3, 3, 4, seed=6, lo=0.1, hi=0.9).requires_grad_()
    _assert_zero_with_grad(albedo_consistency_loss(a_i, a_j, torch.zeros(1, 1, 3, 4)), a_i, a_j)
    a_i.grad = a_j.grad = None
    valid = _rand(1, 1, 3, 4, seed=7) > 0.2
    assert torch.autograd.gradcheck(lambda x, y: albedo_consistency_loss(x, y, valid), (a_i, a_j))


# ---------- two-view integration: warp then compare ----------

def test_warped_albedo_of_two_views_is_consistent_and_cross_renders():
    # A fronto-parallel plane with albedo affine in world x, seen by two translated cameras; each view's
    # albedo has its own scale. Affine maps survive bilinear sampling exactly, so the losses are ~0.
    h, w = 12, 16
    cam = Camera.from_fov(w, h, 60.0)
    K = torch.tensor(cam.K)[None]
    depth = torch.full((1, 1, h, w), 4.0, dtype=F64)
    poses = [torch.eye(4, dtype=F64)[None].clone() for _ in range(2)]
    poses[1][0, 0, 3] = 0.4

    def albedo_of_view(pose, scale):
        x_world = torch.tensor(depth[0, 0].numpy()[..., None] * cam.rays())[..., 0] + pose[0, 0, 3]  # (H, W)
        a = torch.stack([0.3 + 0.1 * x_world, 0.4 + 0.05 * x_world, torch.full_like(x_world, 0.2)])
        return (scale * a)[None]

    a_i, a_j = albedo_of_view(poses[0], 1.0), albedo_of_view(poses[1], 0.6)
    warped, valid = warp_to_view(a_j, depth, K, poses[0], K, poses[1], depth_src=depth)
    interior = valid.clone()
    interior[..., :2] = False  # u_src = u - 1.39 < 0.5: the source's border half-pixel (clamped) or outside
    assert interior.sum() > 0.5 * h * w
    assert albedo_consistency_loss(a_i, warped, interior, eps=0.0).item() < 1e-12
    shading = _rand(1, 3, h, w, seed=8, lo=0.3, hi=1.2)
    shadow = torch.ones(1, 1, h, w, dtype=F64)
    image = a_i * shading
    assert cross_render_loss(image, warped, shadow, shading, interior).item() < 1e-12


# ---------- albedo_smoothness_loss ----------

def _two_material_image(h=4, w=6):
    chroma_a = torch.tensor([0.45, 0.33, 0.22], dtype=F64)
    chroma_b = torch.tensor([0.40, 0.33, 0.27], dtype=F64)
    image = torch.empty(1, 3, h, w, dtype=F64)
    image[..., :3] = chroma_a[None, :, None, None] * 0.6
    image[..., 3:] = chroma_b[None, :, None, None] * 0.9  # brighter too: brightness does not matter
    return image, float(((chroma_a - chroma_b) ** 2).sum())


def test_albedo_smoothness_analytic_value():
    h, w = 4, 6
    image, d2 = _two_material_image(h, w)
    albedo = torch.full((1, 3, h, w), 0.4, dtype=F64)
    albedo[..., 3:] = 0.2  # a step exactly at the material edge: weight exp(-d2 / sigma^2)
    albedo[..., 0, :] *= 2.0  # a step between rows 0 and 1 inside both materials: weight 1
    pairs = h * (w - 1) + (h - 1) * w
    sigma = 0.05
    expected = (h * math.exp(-d2 / sigma**2) * math.log(2.0) + w * math.log(2.0)) / pairs
    # Row 0 is doubled on both sides, so the edge step is log 2 there too.
    loss = albedo_smoothness_loss(albedo, image, _ones(1, h, w), sigma=sigma, eps=0.0)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_albedo_smoothness_zero_for_constant_and_scale_invariant():
    image = _rand(2, 3, 5, 6, seed=1, lo=0.05, hi=1.0)
    assert albedo_smoothness_loss(torch.full((2, 3, 5, 6), 0.3, dtype=F64), image, _ones(2, 5, 6)).item() == 0.0
    albedo = _rand(2, 3, 5, 6, seed=2, lo=0.1, hi=0.9)
    mask = _rand(2, 1, 5, 6, seed=3) > 0.3
    base = albedo_smoothness_loss(albedo, image, mask, eps=0.0)
    assert base.item() > 0
    assert albedo_smoothness_loss(0.2 * albedo, image, mask, eps=0.0).item() == pytest.approx(base.item(), rel=1e-12)


def test_albedo_smoothness_all_invalid_zero_with_grad_gradcheck_and_errors():
    image = _rand(1, 3, 3, 4, seed=1, lo=0.05, hi=1.0)
    albedo = _rand(1, 3, 3, 4, seed=2, lo=0.1, hi=0.9).requires_grad_()
    mask = torch.zeros(1, 1, 3, 4)
    mask[..., 0, 0] = 1  # one pixel: no valid pair
    _assert_zero_with_grad(albedo_smoothness_loss(albedo, image, mask), albedo)
    albedo.grad = None
    assert torch.autograd.gradcheck(lambda a: albedo_smoothness_loss(a, image, _ones(1, 3, 4), sigma=0.5),
                                    (albedo,))
    with pytest.raises(ValueError, match="sigma"):
        albedo_smoothness_loss(albedo, image, _ones(1, 3, 4), sigma=0.0)


# ---------- normals_from_depth_torch ----------

def _plane_depth(cam, normal, offset):
    n = np.asarray(normal, dtype=np.float64) / np.linalg.norm(normal)
    return offset / (cam.rays() @ n), n


def test_normals_of_tilted_plane_are_analytic():
    cam = Camera(12, 9, 30.0, 32.0, 6.3, 4.1)  # long focal length: neighbour depth jumps < 5 %
    depth, n = _plane_depth(cam, (0.3, -0.4, 1.0), -5.0)
    normals, valid = normals_from_depth_torch(torch.tensor(depth)[None, None], torch.tensor(cam.K)[None])
    assert normals.shape == (1, 3, 9, 12) and valid.shape == (1, 1, 9, 12)
    interior = torch.zeros(9, 12, dtype=torch.bool)
    interior[1:-1, 1:-1] = True
    assert torch.equal(valid[0, 0], interior)  # border pixels lack a neighbour
    got = normals[0].permute(1, 2, 0)[interior].numpy()
    np.testing.assert_allclose(got, np.broadcast_to(n, got.shape), atol=1e-12)
    assert torch.equal(normals[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0], dtype=F64))  # fallback


def test_normals_match_numpy_geometry_with_holes_and_discontinuities():
    cam = Camera.from_fov(40, 30, 60.0)
    depth, _, _ = synthetic_sphere_plane(cam)
    depth[5:8, 10:14] = 0.0  # MVS hole
    depth[20, 30] = np.nan
    expected = normals_from_depth(depth, cam)  # float32, one-sided where a neighbour is missing
    d = torch.tensor(depth)[None, None]
    K = torch.tensor(cam.K)[None]
    loose, loose_valid = normals_from_depth_torch(d, K, one_sided=True)
    np.testing.assert_allclose(loose[0].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    strict, valid = normals_from_depth_torch(d, K)
    v = valid[0, 0].numpy()
    np.testing.assert_allclose(strict[0].permute(1, 2, 0).numpy()[v], expected[v], atol=1e-6)
    assert bool((valid <= loose_valid).all()) and valid.sum() < loose_valid.sum()
    # The holes and their 4-neighbours.
    assert not v[4:9, 10:14].any() and not v[5:8, 9:15].any() and not v[19:22, 30].any() and not v[20, 29:32].any()
    # The sphere's silhouette is a depth discontinuity: without the cut more pixels are "valid".
    _, no_cut = normals_from_depth_torch(d, K, discontinuity_threshold=None)
    assert no_cut.sum() > valid.sum()


def test_normals_from_depth_batch_float32_and_errors():
    cams = [Camera(10, 8, 9.0, 9.0, 5.0, 4.0), Camera(10, 8, 12.0, 10.0, 4.5, 4.2)]
    planes = [(0.0, 0.5, 1.0), (-0.4, 0.1, 1.0)]
    depths, ns = zip(*(_plane_depth(c, p, -3.0) for c, p in zip(cams, planes, strict=True)), strict=True)
    d = torch.tensor(np.stack(depths), dtype=torch.float32)[:, None]
    K = torch.tensor(np.stack([c.K for c in cams]), dtype=torch.float32)
    normals, valid = normals_from_depth_torch(d, K)
    assert normals.dtype == torch.float32
    for k in range(2):
        got = normals[k].permute(1, 2, 0)[valid[k, 0]].numpy()
        np.testing.assert_allclose(got, np.broadcast_to(ns[k], got.shape), atol=1e-4)
    with pytest.raises(ValueError, match="K"):
        normals_from_depth_torch(d, K[:1])
    with pytest.raises(ValueError, match="depth"):
        normals_from_depth_torch(d[:, 0], K)


# ---------- normal losses ----------

def _unit(x):
    return x / x.norm(dim=1, keepdim=True)


def test_normal_angular_loss_is_one_minus_cos_of_known_angle():
    m = _unit(_rand(2, 3, 4, 5, seed=1, lo=-1, hi=1) + torch.tensor([0, 0, 2.0], dtype=F64)[None, :, None, None])
    # Rotate every normal by 30° about an axis perpendicular to it.
    axis = _unit(torch.linalg.cross(m, torch.tensor([1.0, 0, 0], dtype=F64)[None, :, None, None].expand_as(m), dim=1))
    theta = math.radians(30.0)
    n = m * math.cos(theta) + torch.linalg.cross(axis, m, dim=1) * math.sin(theta)
    valid = _rand(2, 1, 4, 5, seed=2) > 0.3
    assert normal_angular_loss(3.0 * n, m, valid).item() == pytest.approx(1 - math.cos(theta), rel=1e-12)
    assert normal_angular_loss(m, m, valid).item() == pytest.approx(0.0, abs=1e-14)


def test_normal_gradient_loss_analytic_and_offset_free():
    h, w = 4, 5
    m = _unit(_rand(1, 3, h, w, seed=1, lo=-1, hi=1) + torch.tensor([0, 0, 2.0], dtype=F64)[None, :, None, None])
    offset = torch.tensor([0.1, -0.2, 0.05], dtype=F64)[None, :, None, None]
    assert normal_gradient_loss(m + offset, m, _ones(1, h, w)).item() == pytest.approx(0.0, abs=1e-14)
    ramp = torch.zeros(1, 3, h, w, dtype=F64)
    ramp[:, 0] = 0.06 * torch.arange(w, dtype=F64)  # x component grows 0.06 per column
    loss = normal_gradient_loss(m + ramp, m, _ones(1, h, w))
    pairs_x, pairs_y = h * (w - 1), (h - 1) * w
    assert loss.item() == pytest.approx(pairs_x * 0.06 / 3 / (pairs_x + pairs_y), rel=1e-12)
    total = normal_loss(m + ramp, m, _ones(1, h, w), gradient_weight=2.0)
    assert total.item() == pytest.approx(normal_angular_loss(m + ramp, m, _ones(1, h, w)).item() + 2 * loss.item())


def test_normal_losses_all_invalid_zero_with_grad_and_gradcheck():
    m = _unit(_rand(1, 3, 3, 4, seed=1, lo=-1, hi=1) + torch.tensor([0, 0, 2.0], dtype=F64)[None, :, None, None])
    n = _unit(_rand(1, 3, 3, 4, seed=2, lo=-1, hi=1) + torch.tensor([0, 0, 2.0], dtype=F64)[None, :, None, None])
    n.requires_grad_()
    _assert_zero_with_grad(normal_loss(n, m, torch.zeros(1, 1, 3, 4)), n)
    n.grad = None
    valid = _rand(1, 1, 3, 4, seed=3) > 0.2
    assert torch.autograd.gradcheck(lambda x: normal_loss(x, m, valid), (n,))


# ---------- illumination prior ----------

@pytest.fixture(scope="module")
def prior():
    return IlluminationPrior.load()


def test_prior_nll_equals_numpy_log_prob_up_to_a_constant(prior):
    L = prior.sample(6, rng=0) * np.array([0.3, 1.0, 2.0, 5.0, 0.01, 1.0])[:, None, None]  # any exposure
    L[5] = prior.mean.reshape(9, 3)
    nll = illumination_prior_nll(torch.tensor(L), prior).numpy()
    # nll = -log_prob - C with C the Gaussian's normalising term, 0.5 (logdet + 27 log 2 pi).
    c = 0.5 * (np.linalg.slogdet(prior.covariance())[1] + 27 * math.log(2 * math.pi))
    np.testing.assert_allclose(nll + prior.log_prob(L), -c, rtol=1e-9)
    assert nll[5] == pytest.approx(0.0, abs=1e-9)  # 0 at the prior mean
    assert illumination_prior_loss(torch.tensor(L), prior).item() == pytest.approx(nll.mean(), rel=1e-12)


def test_prior_nll_scale_free_and_finite_for_non_physical_lighting(prior):
    L = torch.tensor(prior.sample(3, rng=1))
    assert torch.allclose(illumination_prior_nll(7.5 * L, prior), illumination_prior_nll(L, prior), rtol=1e-10)
    bad = L.clone()
    bad[:, 0] = -bad[:, 0]  # negative DC luminance: log_prob = -inf
    bad.requires_grad_()
    nll = illumination_prior_nll(bad, prior)
    assert torch.isfinite(nll).all() and (nll > 100 * illumination_prior_nll(L, prior)).all()
    nll.sum().backward()
    assert torch.isfinite(bad.grad).all() and bad.grad.abs().sum() > 0
    assert torch.allclose(illumination_prior_nll(3.0 * bad.detach(), prior), nll.detach(), rtol=1e-10)
    zero = illumination_prior_nll(torch.zeros(1, 9, 3, dtype=F64), prior)
    assert torch.isfinite(zero).all()


def test_prior_gradcheck_and_errors(prior):
    L = torch.tensor(prior.sample(2, rng=2)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: illumination_prior_loss(x, prior), (L,))
    with pytest.raises(ValueError, match=r"\(B, 9, 3\)"):
        illumination_prior_loss(L[0], prior)
    with pytest.raises(TypeError, match="IlluminationPrior"):
        illumination_prior_loss(L, prior.gaussian())


def test_prior_loss_of_the_net_lighting_is_finite_float32(prior):
    # The lighting the network's solve returns (float32, camera frame) goes straight in.
    n = torch.tensor([0.0, 0.3, 1.0])
    L = sh.fit_lighting_torch(torch.full((1, 3, 4, 4), 0.4), torch.full((1, 3, 4, 4), 0.5),
                              (n / n.norm())[None, :, None, None].expand(1, 3, 4, 4).contiguous())
    value = illumination_prior_loss(L, prior)
    assert value.dtype == torch.float32 and torch.isfinite(value)


# ---------- shadows ----------

def test_shadow_consistency_and_prior_analytic_values():
    s_i = torch.tensor([[0.2, 1.0], [0.5, 0.9]], dtype=F64)[None, None]
    s_j = torch.tensor([[0.6, 1.0], [0.5, 0.1]], dtype=F64)[None, None]
    valid = torch.tensor([[True, True], [True, False]])[None, None]
    assert shadow_consistency_loss(s_i, s_j, valid).item() == pytest.approx(0.4 / 3, rel=1e-12)
    assert shadow_consistency_loss(s_i, s_i, valid).item() == 0.0
    assert shadow_prior_loss(s_i, valid).item() == pytest.approx((0.8 + 0.0 + 0.5) / 3, rel=1e-12)


def test_shadow_losses_all_invalid_zero_with_grad_and_gradcheck():
    s_i = _rand(1, 1, 3, 4, seed=1).requires_grad_()
    s_j = _rand(1, 1, 3, 4, seed=2)
    zero = torch.zeros(1, 1, 3, 4)
    _assert_zero_with_grad(shadow_consistency_loss(s_i, s_j, zero) + shadow_prior_loss(s_i, zero), s_i)
    s_i.grad = None
    assert torch.autograd.gradcheck(lambda s: shadow_consistency_loss(s, s_j, _ones(1, 3, 4))
                                    + shadow_prior_loss(s, _ones(1, 3, 4)), (s_i,))


def test_shadow_sparsity_is_log_darkness_below_the_lit_quantile_at_any_scale():
    # 10 valid pixels: nine lit at 0.8 and one at 0.2; the 0.9 quantile of the logs is log 0.8.
    s = torch.full((1, 1, 2, 6), 0.8, dtype=F64)
    s[0, 0, 0, 0] = 0.2
    s[0, 0, 1, 5] = 0.01  # left out by the mask
    valid = torch.ones(1, 1, 2, 6, dtype=torch.bool)
    valid[0, 0, 1, 4:] = False
    expected = math.log(0.8 / 0.2) / 10
    assert shadow_sparsity_loss(s, valid, eps=0.0).item() == pytest.approx(expected, rel=1e-12)
    # The lighting solve absorbs the scale of the shadow map, so the prior must not see it.
    assert shadow_sparsity_loss(s * 1e-4, valid, eps=0.0).item() == pytest.approx(expected, rel=1e-9)
    assert shadow_sparsity_loss(torch.full_like(s, 1e-3), valid, eps=0.0).item() == 0.0
    # Each image has its own lit level; the mean is over images.
    both = torch.cat([s, s * 0.5])
    assert shadow_sparsity_loss(both, valid.expand(2, -1, -1, -1), eps=0.0).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="quantile"):
        shadow_sparsity_loss(s, valid, quantile=0.0)


def test_shadow_sparsity_gradient_survives_a_saturated_sigmoid_unlike_the_plain_prior():
    logits = torch.full((1, 1, 4, 4), -10.0, dtype=F64)
    logits[0, 0, 0, :2] = -12.0  # two darker pixels
    logits.requires_grad_()
    ones = _ones(1, 4, 4)
    shadow_sparsity_loss(torch.sigmoid(logits), ones, eps=0.0).backward()
    sparse_grad = logits.grad[0, 0, 0, 0].item()
    logits.grad = None
    shadow_prior_loss(torch.sigmoid(logits), ones).backward()
    plain_grad = logits.grad[0, 0, 0, 0].item()
    assert sparse_grad == pytest.approx(-(1 - torch.sigmoid(torch.tensor(-12.0)).item()) / 16, rel=1e-9)
    assert abs(plain_grad) < 1e-4 * abs(sparse_grad)  # sigmoid slope at -12: 6e-6


def test_shadow_sparsity_all_invalid_zero_with_grad_and_gradcheck():
    s = _rand(1, 1, 3, 4, seed=3, lo=0.1).requires_grad_()
    _assert_zero_with_grad(shadow_sparsity_loss(s, torch.zeros(1, 1, 3, 4)), s)
    # The lit level carries no gradient: check with the dark pixels alone varying, below a fixed lit level.
    dark = _rand(4, seed=4, lo=0.1, hi=0.5).requires_grad_()
    lit = torch.full((8,), 0.9, dtype=F64)
    assert torch.autograd.gradcheck(
        lambda x: shadow_sparsity_loss(torch.cat([x, lit]).view(1, 1, 3, 4), _ones(1, 3, 4)), (dark,))


def test_shadow_ratio_is_zero_when_shadows_and_shading_explain_the_two_photos_whatever_the_albedo():
    albedo = _rand(1, 3, 4, 5, seed=5, lo=0.05, hi=0.9)  # cancels in the ratio, texture and all
    shading_i, shading_j = _rand(1, 3, 4, 5, seed=6, lo=0.5), _rand(1, 3, 4, 5, seed=7, lo=0.5)
    shadow_i, shadow_j = torch.ones(1, 1, 4, 5, dtype=F64), torch.ones(1, 1, 4, 5, dtype=F64)
    shadow_i[..., :2, :] = 0.25  # the first light casts a shadow over the top rows, the second does not
    image_i, image_j = albedo * shadow_i * shading_i, albedo * shadow_j * shading_j
    valid = _ones(1, 4, 5)
    assert shadow_ratio_loss(image_i, image_j, shadow_i, shadow_j, shading_i, shading_j, valid, eps=0.0).item() \
        == pytest.approx(0.0, abs=1e-12)
    # A shadow map that missed the moved shadow leaves |log 0.25| on the 10 of 20 shadowed pixels.
    lit = torch.ones_like(shadow_i)
    assert shadow_ratio_loss(image_i, image_j, lit, shadow_j, shading_i, shading_j, valid, eps=0.0).item() \
        == pytest.approx(math.log(4.0) / 2, rel=1e-12)
    valid[..., :2, :] = False  # only the pixels lit under both lights are left: nothing to explain there
    assert shadow_ratio_loss(image_i, image_j, lit, shadow_j, shading_i, shading_j, valid, eps=0.0).item() \
        == pytest.approx(0.0, abs=1e-12)


def test_shadow_ratio_all_invalid_zero_with_grad_and_gradcheck():
    images = [_rand(1, 3, 3, 4, seed=s, lo=0.1) for s in (8, 9)]
    shadings = [_rand(1, 3, 3, 4, seed=s, lo=0.1) for s in (10, 11)]
    shadow_j = _rand(1, 1, 3, 4, seed=12, lo=0.1)
    shadow_i = _rand(1, 1, 3, 4, seed=13, lo=0.1).requires_grad_()

    def loss(s, valid):
        return shadow_ratio_loss(images[0], images[1], s, shadow_j, shadings[0], shadings[1], valid)

    _assert_zero_with_grad(loss(shadow_i, torch.zeros(1, 1, 3, 4)), shadow_i)
    shadow_i.grad = None
    assert torch.autograd.gradcheck(lambda s: loss(s, _ones(1, 3, 4)), (shadow_i,))


def test_shading_smoothness_is_the_mean_log_luminance_step_and_scale_free():
    shading = torch.full((1, 3, 2, 3), 0.5, dtype=F64)
    shading[..., 2] = 2.0  # one step of log 4 across the last column: 2 of the 7 neighbour pairs
    valid = _ones(1, 2, 3)
    expected = 2 * math.log(4.0) / 7
    assert shading_smoothness_loss(shading, valid, eps=0.0).item() == pytest.approx(expected, rel=1e-12)
    coloured = shading * torch.tensor([3.0, 1.0, 0.2], dtype=F64).view(1, 3, 1, 1)  # light colour and scale
    assert shading_smoothness_loss(coloured, valid, eps=0.0).item() == pytest.approx(expected, rel=1e-12)
    assert shading_smoothness_loss(torch.full_like(shading, 0.7), valid).item() == 0.0
    valid[..., 2] = False  # the pairs across the step are left out
    assert shading_smoothness_loss(shading, valid, eps=0.0).item() == 0.0


def test_shading_smoothness_all_invalid_zero_with_grad_and_gradcheck():
    shading = _rand(1, 3, 3, 4, seed=5, lo=0.2).requires_grad_()
    _assert_zero_with_grad(shading_smoothness_loss(shading, torch.zeros(1, 1, 3, 4)), shading)
    shading.grad = None
    assert torch.autograd.gradcheck(lambda x: shading_smoothness_loss(x, _ones(1, 3, 4)), (shading,))


# ---------- shape errors ----------

def test_shape_errors_name_the_shapes():
    image, albedo, shadow, shading = _scene()
    mask = _ones()
    with pytest.raises(ValueError, match=r"albedo must have shape \(B, 3, H, W\)"):
        rerender_loss(image, albedo[:, :1], shadow, shading, mask)
    with pytest.raises(ValueError, match="shading has shape"):
        rerender_loss(image, albedo, shadow, shading[..., :-1], mask)
    with pytest.raises(ValueError, match="mask"):
        rerender_loss(image, albedo, shadow, shading, mask[:, 0])
    with pytest.raises(ValueError, match="valid has shape"):
        cross_render_loss(image, albedo, shadow, shading, mask[:1])
    with pytest.raises(ValueError, match="albedo_j_warped"):
        albedo_consistency_loss(albedo, albedo[..., :-1, :], mask)
    with pytest.raises(ValueError, match="mvs_normals"):
        normal_loss(albedo, albedo[:, :2], mask)
    with pytest.raises(ValueError, match="shadow_j_warped"):
        shadow_consistency_loss(shadow, albedo, mask)
    with pytest.raises(ValueError, match="shadow"):
        shadow_prior_loss(albedo, mask)
    with pytest.raises(ValueError, match="eps"):
        albedo_consistency_loss(albedo, albedo, mask, eps=-1.0)


# ---------- weights and combine ----------

def test_combine_is_the_weighted_sum_and_skips_zero_weights():
    terms = {"rerender": torch.tensor(0.2), "normal_angular": torch.tensor(0.1), "shadow_prior": torch.tensor(0.4)}
    w = IRNLossWeights()
    expected = w.rerender * 0.2 + w.normal_angular * 0.1 + w.shadow_prior * 0.4
    assert combine(terms).item() == pytest.approx(expected)
    w2 = IRNLossWeights(rerender=2.0, shadow_prior=0.0)
    nan_terms = {**terms, "shadow_prior": torch.tensor(float("nan"))}
    assert combine(nan_terms, w2).item() == pytest.approx(2.0 * 0.2 + w2.normal_angular * 0.1)
    x = torch.tensor(3.0, requires_grad=True)
    off = combine({"shadow_prior": x * 2}, w2)
    assert off.item() == 0.0
    off.backward()
    assert x.grad.item() == 0.0


def test_combine_and_weights_errors():
    with pytest.raises(ValueError, match="unknown loss terms"):
        combine({"rerendr": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="0-dim"):
        combine({"rerender": torch.ones(2)})
    with pytest.raises(ValueError, match="at least one"):
        combine({})
    with pytest.raises(ValueError, match="rerender"):
        IRNLossWeights(rerender=-1.0)
    with pytest.raises(ValueError, match="shadow_prior"):
        IRNLossWeights(shadow_prior=float("nan"))


def test_smooth_depth_keeps_planes_and_holes_and_reduces_noise():
    from invrender_core.train.irn_losses import smooth_depth

    h, w = 24, 32
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    plane = (5.0 + 0.05 * u - 0.03 * v)[None, None]
    hole = plane.clone()
    hole[..., 10:13, 10:13] = 0
    out = smooth_depth(hole, radius=2)
    assert torch.equal(out[..., 10:13, 10:13], torch.zeros(1, 1, 3, 3, dtype=torch.float64))
    interior = torch.zeros_like(plane, dtype=torch.bool)
    interior[..., 2:-2, 2:-2] = True
    far_from_hole = interior.clone()
    far_from_hole[..., 7:16, 7:16] = False
    # A box mean of an affine function is exact where the window is whole (and symmetric)
    torch.testing.assert_close(out[far_from_hole], plane[far_from_hole])
    gen = torch.Generator().manual_seed(0)
    noisy = plane * (1 + 0.01 * torch.randn(plane.shape, generator=gen, dtype=torch.float64))
    residual = (smooth_depth(noisy, radius=2) - plane)[interior] / plane[interior]
    assert float(residual.std()) < 0.01 / 3  # 25-pixel mean: std / 5
    with pytest.raises(ValueError):
        smooth_depth(plane, radius=-1)
