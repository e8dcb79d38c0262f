"""nets/photo_shadow.py: the photo's shadow map, its inputs and its target."""

import math

import numpy as np
import pytest
import torch

from invrender_core import sh
from invrender_core.nets import weights
from invrender_core.nets.photo_shadow import (
    INPUT_CHANNELS,
    NORMAL_X,
    PhotoShadowNet,
    photo_shadow_features,
    true_shadow_map,
)

SKY_SH = np.zeros((9, 3))
SKY_SH[0] = [0.3, 0.35, 0.45]  # a uniform bluish sky


def constant_net(value: float, levels: int = 2) -> PhotoShadowNet:
    """An untrained network whose head gives `value` everywhere."""
    net = PhotoShadowNet(width=8, levels=levels).eval()
    with torch.no_grad():
        net.head.bias.fill_(math.log(value / (1.0 - value)))
    return net


def test_true_shadow_map_is_the_shadows_share_of_the_light():
    up = np.array([0.0, 0.0, 1.0])
    normals = np.broadcast_to(up, (2, 3, 3)).copy()
    normals[1, 2] = [0.0, 0.0, -1.0]  # faces away from the sun: its visibility does not matter
    visibility = np.array([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0]])
    sky = np.zeros((2, 3), bool)
    sky[1, 1] = True
    irradiance = np.array([2.0, 2.0, 2.0]) * math.pi  # luminance 2 pi: E_sun = 2 at normal incidence
    out = true_shadow_map(normals, visibility, up, irradiance, SKY_SH, sky)
    e_sky = float(sh.shading(up[None], SKY_SH)[0] @ sh.LUMINANCE)
    assert out[0, 0] == pytest.approx(1.0)
    assert out[0, 1] == pytest.approx(e_sky / (2.0 + e_sky), rel=1e-5)
    assert out[0, 2] == pytest.approx((1.0 + e_sky) / (2.0 + e_sky), rel=1e-5)
    assert out[1, 0] == pytest.approx(out[0, 1], rel=1e-5)
    assert out[1, 1] == 1.0 and out[1, 2] == pytest.approx(1.0)


def test_features_show_what_the_shading_leaves_unexplained():
    h, w = 8, 12
    normals = np.broadcast_to([0.0, 0.0, 1.0], (h, w, 3)).astype(np.float32)
    shading = np.full((h, w, 3), 0.8, np.float32)
    albedo = np.full((h, w, 3), 0.5, np.float32)  # grey: no chromaticity
    cast = np.ones((h, w, 1), np.float32)
    cast[2:6, 3:7] = 0.25
    image = albedo * shading * cast
    sky = np.zeros((h, w), bool)
    sky[0] = True
    image[0] = [0.4, 0.6, 0.9]
    depth = np.full((h, w), 2.0, np.float32)
    f = photo_shadow_features(image, normals, shading, depth, sky)
    assert f.shape == (h, w, INPUT_CHANNELS) and f.dtype == np.float32
    ground = ~sky
    np.testing.assert_allclose(f[..., 1:4][ground], 0.0, atol=1e-5)  # grey ground
    assert f[0, 0, 3] > 0 > f[0, 0, 1]  # the sky is blue
    np.testing.assert_allclose(f[..., 4:7], normals)
    unexplained = f[..., 7]
    np.testing.assert_allclose(unexplained[3, 4] - unexplained[7, 10], math.log(0.25) / 2.0, rtol=1e-5)
    np.testing.assert_allclose(f[..., 8][ground], math.log(2.0), rtol=1e-5)
    np.testing.assert_array_equal(f[..., 8][sky], 0.0)
    np.testing.assert_array_equal(f[..., 9], sky)


def test_mirrored_features_are_the_features_of_the_mirrored_photo():
    from invrender_core.train.photo_shadow_task import PhotoShadowViews

    rng = np.random.default_rng(2)
    h, w = 8, 12
    normals = rng.normal(size=(h, w, 3)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    image = rng.uniform(0.05, 1.0, (h, w, 3)).astype(np.float32)
    shading = rng.uniform(0.2, 1.0, (h, w, 3)).astype(np.float32)
    depth = rng.uniform(1.0, 3.0, (h, w)).astype(np.float32)
    sky = rng.random((h, w)) < 0.2
    f = photo_shadow_features(image, normals, shading, depth, sky).transpose(2, 0, 1)
    mirrored_normals = normals[:, ::-1] * np.array([-1.0, 1.0, 1.0], np.float32)
    of_mirror = photo_shadow_features(image[:, ::-1], mirrored_normals, shading[:, ::-1], depth[:, ::-1],
                                      sky[:, ::-1]).transpose(2, 0, 1)
    mirrored = PhotoShadowViews.mirror_features(torch.from_numpy(f.copy()).flip(-1)).numpy()
    assert NORMAL_X == 4
    np.testing.assert_allclose(mirrored, of_mirror, atol=1e-6)


def test_apply_pads_to_the_networks_multiple_and_keeps_the_sky_lit():
    h, w = 13, 21  # not multiples of 4
    features = np.zeros((h, w, INPUT_CHANNELS), np.float32)
    features[:3, :, -1] = 1.0  # sky
    shadow = constant_net(0.3).apply(features)
    assert shadow.shape == (h, w) and shadow.dtype == np.float32
    np.testing.assert_allclose(shadow[3:], 0.3, rtol=1e-5)
    np.testing.assert_array_equal(shadow[:3], 1.0)
    with pytest.raises(ValueError, match=f"features must have shape \\(B, {INPUT_CHANNELS}, h, w\\)"):
        constant_net(0.3)(torch.zeros(1, INPUT_CHANNELS - 1, 8, 8))


def test_photo_shadow_weights_are_recognised_and_load_strictly(tmp_path):
    from safetensors.torch import save_file

    net = PhotoShadowNet(width=8, levels=2)
    path = tmp_path / "photo_shadow.safetensors"
    save_file(net.state_dict(), str(path))
    assert weights.infer_architecture(net.state_dict()) == ("photo_shadow", {"width": 8, "levels": 2})
    loaded = weights.load_named(path, expect="photo_shadow")
    assert isinstance(loaded, PhotoShadowNet) and not loaded.training
    with pytest.raises(ValueError, match="photo_shadow"):
        weights.load_named(path, expect="shadow_refine")


@pytest.mark.parametrize("w", [16, 21])  # 21: padded to the network's multiple
def test_mirror_averaged_map_of_the_mirrored_photo_is_the_mirror_image(w):
    rng = np.random.default_rng(3)
    h = 12
    features = rng.normal(size=(h, w, INPUT_CHANNELS)).astype(np.float32)
    features[..., -1] = 0.0
    net = PhotoShadowNet(width=8, levels=2).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        net.head.weight.normal_()  # a map that varies across the image
    mirrored = features[:, ::-1].copy()
    mirrored[..., NORMAL_X] *= -1.0
    once = net.apply(features)
    averaged = net.apply(features, mirror_average=True)
    np.testing.assert_allclose(net.apply(mirrored, mirror_average=True), averaged[:, ::-1], atol=1e-6)
    assert np.abs(net.apply(mirrored)[:, ::-1] - once).max() > 1e-3  # one pass alone is not symmetric
