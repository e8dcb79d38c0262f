"""nets/shadow_refine.py: the shadow refiner's inputs, its identity at start, resolution handling, the Relighter's use
of it and its registry layout."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from invrender_core import relight
from invrender_core.io import resize_linear
from invrender_core.nets import shadow_refine, weights
from invrender_core.nets.shadow_refine import BASE_LOGIT_GAIN, ShadowRefiner, light_features, photo_features

from .test_relight_refine import small_estimate


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def stepped_marched(h=24, w=40):
    """A marched visibility: lit, with a shadowed rectangle and a soft edge."""
    marched = np.ones((h, w), np.float32)
    marched[6:18, 5:20] = 0.0
    marched[6:18, 20] = 0.4
    return marched


def test_untrained_refiner_keeps_the_marched_shadows():
    net = ShadowRefiner(width=8, levels=2).eval()
    marched = stepped_marched()
    refined = net.apply(marched, [0.0, 0.6, 0.8], flat_photo(24, 40, net.working_size(40, 24)))
    np.testing.assert_allclose(refined, sigmoid(BASE_LOGIT_GAIN * (marched - 0.5)), rtol=1e-6)
    np.testing.assert_array_equal(refined < 0.5, marched < 0.5)


def flat_photo(h, w, size):
    return photo_features(np.dstack([np.zeros((h, w, 2)), np.ones((h, w))]), np.full((h, w), 2.0),
                          np.zeros((h, w), bool), np.full((h, w, 3), 0.3), size=size)


def test_correction_adds_to_the_marched_logit():
    net = ShadowRefiner(width=8, levels=2).eval()
    with torch.no_grad():
        net.head.bias.fill_(1.5)
    marched = stepped_marched()
    refined = net.apply(marched, [0.0, 0.6, 0.8], flat_photo(24, 40, net.working_size(40, 24)))
    np.testing.assert_allclose(refined, sigmoid(BASE_LOGIT_GAIN * (marched - 0.5) + 1.5), rtol=1e-5)


def test_a_kept_shadow_keeps_the_marched_edges_at_the_grids_resolution():
    net = ShadowRefiner(width=8, levels=2, max_side=16).eval()
    h, w = 24, 40
    marched = np.ones((h, w), np.float32)
    marched[5:19, 7:23] = 0.0  # edges in the middle of the working size's pixels (2.5 grid pixels each)
    size = net.working_size(w, h)
    assert size == (16, 8) and all(s % net.side_multiple == 0 for s in size)
    refined = net.apply(marched, [0.0, 0.6, 0.8], flat_photo(h, w, size))
    assert refined.shape == marched.shape and 0.0 <= refined.min() and refined.max() <= 1.0
    np.testing.assert_array_equal(refined < 0.5, marched < 0.5)
    # plain bilinear upsampling of the same working-size visibility misplaces them
    small = sigmoid(BASE_LOGIT_GAIN * (resize_linear(marched, *size) - 0.5)).astype(np.float32)
    assert ((resize_linear(small, w, h) < 0.5) != (marched < 0.5)).sum() > 0
    with pytest.raises(ValueError, match="working size"):
        net.apply(marched, [0.0, 0.6, 0.8], flat_photo(h, w, size)[:4])


def test_photo_features_are_relative_depth_sky_and_relative_log_luminance():
    h, w = 8, 12
    normals = np.dstack([np.full((h, w), 0.6), np.zeros((h, w)), np.full((h, w), 0.8)])
    depth = np.full((h, w), 3.0, np.float32)
    depth[:, 8:] = 6.0  # a quarter at twice the median
    depth[0, 0] = np.nan  # unknown
    sky = np.zeros((h, w), bool)
    sky[:2] = True
    image = np.full((h, w, 3), 0.2, np.float32)
    image[4:, :4] = 0.2 * np.e ** 2  # two log units brighter than the median ground
    image[7, 0] = 0.2 * np.e ** 10  # far brighter: clipped
    f = photo_features(normals, depth, sky, image)
    assert f.shape == (h, w, 6) and f.dtype == np.float32
    np.testing.assert_allclose(f[..., :3], normals)
    np.testing.assert_allclose(f[2:, :8, 3], 0.0, atol=1e-6)
    np.testing.assert_allclose(f[2:, 8:, 3], np.log(2.0), rtol=1e-6)
    assert f[0, 0, 3] == 0.0 and (f[:2, :, 3] == 0.0).all()  # unknown and sky: no depth
    np.testing.assert_array_equal(f[..., 4], sky)
    np.testing.assert_allclose(f[2:4, :, 5], 0.0, atol=1e-6)
    np.testing.assert_allclose(f[4:7, :4, 5], 1.0, rtol=1e-5)  # log difference halved
    assert f[7, 0, 5] == 2.0
    np.testing.assert_allclose(photo_features(normals, depth, sky, image, size=(6, 4)),
                               resize_linear(f, 6, 4), rtol=1e-5, atol=1e-6)


def test_light_features_add_the_marched_shadow_and_the_sun():
    normals = np.dstack([np.full((4, 6), 0.6), np.zeros((4, 6)), np.full((4, 6), 0.8)]).astype(np.float32)
    photo = np.concatenate([normals, np.zeros((4, 6, 3), np.float32)], axis=-1)
    marched = np.linspace(0, 1, 24, dtype=np.float32).reshape(4, 6)
    x = light_features(marched, photo, [0.0, 0.0, 2.0])  # not unit length: normalised
    assert x.shape == (4, 6, shadow_refine.INPUT_CHANNELS)
    np.testing.assert_array_equal(x[..., 0], marched)
    np.testing.assert_allclose(x[..., 1], 0.8, rtol=1e-6)  # n . s
    np.testing.assert_allclose(x[..., 5:8], np.broadcast_to([0.0, 0.0, 1.0], (4, 6, 3)))


def test_refiner_checks_its_input():
    net = ShadowRefiner(width=8, levels=3)
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.zeros(1, shadow_refine.INPUT_CHANNELS, 12, 16))
    with pytest.raises(ValueError, match="INPUT_CHANNELS|11"):
        net(torch.zeros(1, 10, 16, 16))
    for width in (6, 16.5):  # not a multiple of 4, or not whole: refused, not truncated
        with pytest.raises(ValueError, match="width"):
            ShadowRefiner(width=width)


def test_relighter_uses_the_refined_shadow_and_keeps_the_marched_one_on_request():
    estimate = small_estimate()
    estimate.sky[:3] = True
    net = ShadowRefiner(width=8, levels=2).eval()
    with torch.no_grad():
        net.head.bias.fill_(-30.0)  # everything in shadow
    plain = relight.Relighter(estimate)
    refined = relight.Relighter(estimate, shadow_refine=net)
    lighting = plain.sun_at(40.0, 120.0)
    marched = plain.visibility(lighting.sun)
    np.testing.assert_array_equal(refined.visibility(lighting.sun, refine=False), marched)
    relit = refined.render(lighting, refine=False)
    assert (relit.visibility[~estimate.sky] < 1e-6).all() and (relit.visibility[estimate.sky] == 1.0).all()
    ground = ~estimate.sky
    np.testing.assert_allclose(relit.sun_shading[ground], 0.0, atol=1e-5)  # no sun where it is all shadow
    np.testing.assert_allclose(relit.image[ground],
                               (refined.exposure * estimate.albedo * relit.sky_shading)[ground], rtol=1e-5)


def test_refiner_weights_are_recognised_and_load_strictly(tmp_path):
    net = ShadowRefiner(width=8, levels=2)
    path = tmp_path / "shadow.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    assert weights.infer_architecture(net.state_dict()) == ("shadow_refine", {"width": 8, "levels": 2})
    loaded = shadow_refine.load(path)
    assert isinstance(loaded, ShadowRefiner) and not loaded.training and loaded.levels == 2
    for k, v in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)
    with pytest.raises(ValueError):
        weights.build_model("shadow_refine", {"depth": 3})
