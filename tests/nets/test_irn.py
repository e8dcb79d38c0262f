"""InverseRenderNet: shapes, ranges, conventions, the in-forward lighting solve, gradients, structure."""

import numpy as np
import pytest
import torch
from torch import nn

from invrender_core import sh
from invrender_core.illumination_prior import IlluminationPrior
from invrender_core.nets.irn import (
    InverseRenderNet,
    group_count,
    parameter_count,
    re_render,
)

SMALL = 0.125


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return InverseRenderNet(width=SMALL)


@pytest.fixture(scope="module")
def image():
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 64, 96, generator=g)


@pytest.fixture(scope="module")
def out(net, image):
    with torch.no_grad():
        return net.eval()(image)


def test_shapes_and_ranges(out):
    assert out.albedo.shape == (2, 3, 64, 96)
    assert out.normals.shape == (2, 3, 64, 96)
    assert out.shadow.shape == (2, 1, 64, 96)
    assert out.lighting.shape == (2, 9, 3)
    assert out.shading.shape == (2, 3, 64, 96)
    for t in out:
        assert torch.isfinite(t).all()
    assert out.albedo.min() >= 0 and out.albedo.max() <= 1
    assert out.shadow.min() >= 0 and out.shadow.max() <= 1
    assert re_render(out).shape == (2, 3, 64, 96)


def test_normals_unit_and_visible(out):
    torch.testing.assert_close(out.normals.norm(dim=1), torch.ones(2, 64, 96))
    assert (out.normals[:, 2] > 0).all()


@pytest.mark.parametrize("shape", [(1, 3, 60, 96), (1, 3, 64, 90), (3, 64, 96), (1, 4, 64, 96)])
def test_bad_shapes(net, shape):
    with pytest.raises(ValueError, match=r"\(" + ", ".join(str(s) for s in shape) + r"\)"):
        net(torch.rand(shape))


def test_bad_mask_shape(net, image):
    with pytest.raises(ValueError, match="mask"):
        net(image, mask=torch.ones(2, 64, 96))


def test_parameter_counts():
    big, small = parameter_count(InverseRenderNet(1.0)), parameter_count(InverseRenderNet(SMALL))
    # Convolution weights dominate and scale with width²: ~64x (measured 45.4 M vs 0.71 M).
    assert 40e6 < big < 50e6
    assert 0.5e6 < small < 1e6
    assert 50 < big / small < 70


def test_encoder_has_15_convs_and_4_poolings(net):
    convs = [m for m in net.encoder.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 15
    assert all(c.kernel_size == (3, 3) for c in convs)
    assert len(net.encoder) == 5  # 5 stages, a 2x2 max-pool between consecutive stages -> 4 poolings
    assert net.pool.kernel_size == 2 and net.pool.stride == 2


@pytest.mark.parametrize("width", [1.0, 0.5, 0.3, SMALL, 0.05])
def test_groupnorm_groups_divide_channels(width):
    m = InverseRenderNet(width)
    norms = [g for g in m.modules() if isinstance(g, nn.GroupNorm)]
    assert norms and all(g.num_channels % g.num_groups == 0 and g.num_groups <= 8 for g in norms)
    assert group_count(12) == 6 and group_count(64) == 8 and group_count(7) == 7 and group_count(3) == 3


def test_lighting_is_the_least_squares_solve(out, image):
    direct = sh.fit_lighting_torch(image, out.albedo, out.normals, None, out.shadow)
    torch.testing.assert_close(out.lighting, direct)
    # Shading is E(n) for that lighting, matching the numpy reference per pixel.
    n = out.normals[0].permute(1, 2, 0).double().numpy()
    ref = sh.shading(n, out.lighting[0].double().numpy())  # (H, W, 3)
    np.testing.assert_allclose(out.shading[0].permute(1, 2, 0).numpy(), ref, rtol=1e-4, atol=1e-5)


def test_albedo_gain_moves_colour_from_the_light_to_the_albedo(net, image):
    """Without a prior the solve is linear per channel: a gain g gives albedo * g, lighting / g, the same
    re-rendering; it is not a learned weight (state dict unchanged)."""
    gain = torch.tensor([0.5, 1.0, 0.8], dtype=torch.float64)
    gained = InverseRenderNet(width=SMALL, albedo_gain=gain.tolist())
    gained.load_state_dict(net.state_dict(), strict=True)
    assert set(gained.state_dict()) == set(net.state_dict())
    # In float64: the untrained net's order-2 lighting terms are ill-conditioned enough to show float32 noise.
    plain_net = InverseRenderNet(width=SMALL).double().eval()
    plain_net.load_state_dict(net.state_dict(), strict=True)
    with torch.no_grad():
        plain, moved = plain_net(image.double()), gained.double().eval()(image.double())
    torch.testing.assert_close(moved.albedo, plain.albedo * gain.view(1, 3, 1, 1))
    torch.testing.assert_close(moved.lighting, plain.lighting / gain.view(1, 1, 3), rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(re_render(moved), re_render(plain))
    with pytest.raises(ValueError, match="albedo_gain"):
        InverseRenderNet(width=SMALL, albedo_gain=[1.0, 0.0, 1.0])


def test_mask_reaches_the_solve(net, image):
    mask = torch.zeros(2, 1, 64, 96)
    mask[..., :, :48] = 1
    with torch.no_grad():
        o = net.eval()(image, mask)
    direct = sh.fit_lighting_torch(image, o.albedo, o.normals, mask, o.shadow)
    torch.testing.assert_close(o.lighting, direct)


def test_prior_lighting_consistent():
    prior = IlluminationPrior.load()
    torch.manual_seed(0)
    m = InverseRenderNet(SMALL, prior=prior).eval()
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        o = m(img)
        mean, precision = m.prior_terms(img, o.albedo, o.normals, None, o.shadow)
    direct = sh.fit_lighting_torch(img, o.albedo, o.normals, None, o.shadow, mean, precision)
    torch.testing.assert_close(o.lighting, direct)
    # The terms are prior.gaussian(s) with precision in pixel-noise units, s the DC luminance scale.
    s = float(mean[0] @ torch.as_tensor(prior.mean).float()) / float(prior.mean @ prior.mean)
    g_mean, g_prec = prior.gaussian(scale=s)
    np.testing.assert_allclose(mean[0].numpy(), g_mean, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(precision[0].numpy(), sh.PRIOR_PIXEL_NOISE**2 * g_prec, rtol=1e-3)
    assert "prior_mean1" not in m.state_dict()  # the prior is data, not weights


def _small_net():
    torch.manual_seed(0)
    return InverseRenderNet(SMALL).train()


def test_gradients_reach_first_conv():
    m = _small_net()
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    (re_render(m(img)) - img).abs().mean().backward()
    first = m.encoder[0][0][0]
    assert isinstance(first, nn.Conv2d)
    assert first.weight.grad is not None and first.weight.grad.abs().sum() > 0
    for head in (m.albedo_decoder, m.normal_decoder, m.shadow_decoder):
        assert head.out.weight.grad.abs().sum() > 0


def test_gradients_flow_through_lighting_solve():
    m = _small_net()
    img = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    # Shading depends on albedo only through the least-squares lighting.
    m(img).shading.square().mean().backward()
    g = m.albedo_decoder.out.weight.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_eval_deterministic(net, image):
    net.eval()
    with torch.no_grad():
        a, b = net(image[:1]), net(image[:1])
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)


def test_normalise_shadow_fixes_the_scale_and_keeps_the_product():
    from invrender_core import sh
    from invrender_core.nets.irn import normalise_shadow

    rng = np.random.default_rng(0)
    shadow = 0.005 * rng.uniform(0.2, 1.0, (20, 30))  # a map squashed to a tiny scale
    lighting = sh.directional([0.2, 0.5, 0.8], [1.0, 0.9, 0.8])
    lighting[0] += 0.3
    s2, l2 = normalise_shadow(shadow, lighting)
    assert np.quantile(s2, 0.99) == pytest.approx(1.0, rel=1e-4) and s2.max() <= 1.0
    normals = np.broadcast_to([0.0, 0.0, 1.0], (20, 30, 3))
    below = shadow <= np.quantile(shadow, 0.99)  # the clipped top 1 % aside, shadow * E is unchanged
    np.testing.assert_allclose((s2[..., None] * sh.shading(normals, l2))[below],
                               (shadow[..., None] * sh.shading(normals, lighting))[below], rtol=1e-5)
    with pytest.raises(ValueError, match=r"\(9, 3\)"):
        normalise_shadow(shadow, lighting[:4])
