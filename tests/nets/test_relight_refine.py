"""nets/relight_refine.py: the relighting refiner's shapes, identity at start, learning, and registry layout."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from invrender_core import relight
from invrender_core.camera import Camera
from invrender_core.nets import relight_refine, weights
from invrender_core.scene import SceneEstimate
from invrender_core.train.relight_task import refine_loss


def small_estimate(h=24, w=32):
    rng = np.random.default_rng(0)
    normals = np.zeros((h, w, 3), np.float32)
    normals[..., 2] = 1.0
    depth = np.full((h, w), 3.0, np.float32)
    image = rng.uniform(0.1, 0.6, (h, w, 3)).astype(np.float32)
    lighting = np.zeros((9, 3))
    lighting[0] = 1.0
    lighting[2] = 0.3
    return SceneEstimate(image=image, albedo=image.copy(), shading=np.ones_like(image), normals=normals, depth=depth,
                         depth_fused=depth, confidence=np.ones((h, w), np.float32), lighting=lighting,
                         camera=Camera.from_fov(w, h, 60.0), shadow=np.ones((h, w), np.float32),
                         sky=np.zeros((h, w), bool))


def test_untrained_refiner_changes_nothing():
    estimate = small_estimate()
    plain = relight.Relighter(estimate)
    refined = relight.Relighter(estimate, refine=relight_refine.RelightRefiner(width=8).eval())
    lighting = plain.sun_at(40.0, 120.0)
    np.testing.assert_allclose(refined.render(lighting).image, plain.render(lighting).image, rtol=1e-6)


def test_features_resized_one_map_at_a_time_are_the_full_features_resized():
    from invrender_core.io import resize_linear

    estimate = small_estimate()
    estimate.normals[..., 0] = np.linspace(-0.5, 0.5, 32, dtype=np.float32)  # normals that vary, not only z
    r = relight.Relighter(estimate)
    relit = r.render(r.sun_at(40.0, 120.0), refine=False)
    full = relight_refine.features(estimate, relit, 1.7, r.own_render)  # (24, 32, 20)
    assert full.shape == (24, 32, relight_refine.INPUT_CHANNELS) and full.dtype == np.float32
    np.testing.assert_allclose(full[..., 3:6], estimate.normals * 0.5 + 0.5, rtol=1e-6)  # normals in [0, 1]
    np.testing.assert_allclose(full[..., 6:9], 1.7 * relit.sun_shading, rtol=1e-6)  # the exposure applied
    small = relight_refine.features(estimate, relit, 1.7, r.own_render, size=(16, 12))
    np.testing.assert_allclose(small, resize_linear(full, 16, 12), rtol=1e-5, atol=1e-6)


def test_features_without_a_shadow_map_are_those_of_an_all_lit_map():
    estimate = small_estimate()
    estimate.shadow[:, :10] = 0.25  # a shadowed stripe: the maps differ where it is
    r = relight.Relighter(estimate)
    relit = r.render(r.sun_at(40.0, 120.0), refine=False)
    lit = replace(estimate, shadow=np.ones_like(estimate.shadow))
    without = replace(estimate, shadow=None)
    for size in (None, (16, 12)):
        expected = relight_refine.features(lit, relit, 1.7, r.own_render, size=size)
        np.testing.assert_array_equal(relight_refine.features(without, relit, 1.7, r.own_render, size=size), expected)
        assert not np.array_equal(relight_refine.features(estimate, relit, 1.7, r.own_render, size=size), expected)


def test_inputs_kept_per_photo_are_the_inputs_prepared_again():
    estimate = small_estimate()
    estimate.normals[..., 0] = np.linspace(-0.5, 0.5, 32, dtype=np.float32)
    r = relight.Relighter(estimate)
    kept = {}
    for elevation, azimuth in [(40.0, 120.0), (15.0, 250.0)]:  # the second light reuses what the first kept
        relit = r.render(r.sun_at(elevation, azimuth), refine=False)
        again = relight_refine.features(estimate, relit, 1.7, r.own_render, size=(16, 12), photo_inputs=kept)
        np.testing.assert_array_equal(again, relight_refine.features(estimate, relit, 1.7, r.own_render, size=(16, 12)))
    assert sorted(name for name, _ in kept) == ["albedo", "normals", "own_render", "photo", "shadow"]

    torch.manual_seed(0)
    refiner = relight_refine.RelightRefiner(width=8).eval()
    torch.nn.init.normal_(refiner.head.weight, std=0.1)  # a refiner that changes the image
    sequence = relight.Relighter(estimate, refine=refiner)
    sequence.render(sequence.sun_at(40.0, 120.0))
    second = sequence.render(sequence.sun_at(15.0, 250.0)).image
    fresh = relight.Relighter(estimate, refine=refiner)
    alone = fresh.render(fresh.sun_at(15.0, 250.0)).image
    np.testing.assert_array_equal(second, alone)
    assert not np.allclose(alone, fresh.render(fresh.sun_at(15.0, 250.0), refine=False).image, rtol=1e-3)


def test_refiner_checks_its_input():
    net = relight_refine.RelightRefiner(width=8)
    assert net(torch.zeros(2, relight_refine.INPUT_CHANNELS, 8, 12)).shape == (2, 3, 8, 12)
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.zeros(1, relight_refine.INPUT_CHANNELS, 10, 12))
    with pytest.raises(ValueError, match="B, 20"):
        net(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="multiple of 4"):
        relight_refine.RelightRefiner(width=6)
    assert net.working_size(1224, 816) == (256, 172)


def test_refiner_learns_a_smooth_correction():
    torch.manual_seed(0)
    net = relight_refine.RelightRefiner(width=8)
    features = torch.rand(4, relight_refine.INPUT_CHANNELS, 16, 16)
    relit = torch.rand(4, 3, 16, 16) + 0.1
    target = relit * torch.exp(0.5 * (features[:, :3] - 0.5))  # a correction the features explain
    mask = torch.ones(4, 1, 16, 16)
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    start = float(refine_loss(torch.zeros_like(relit), relit, target, mask))
    for _ in range(150):
        optimiser.zero_grad()
        loss = refine_loss(net(features), relit, target, mask)
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.3 * start


def test_refiner_weights_are_recognised_and_load_strictly(tmp_path):
    from safetensors.torch import save_file

    net = relight_refine.RelightRefiner(width=8)
    assert weights.infer_architecture(net.state_dict()) == ("relight_refine", {"width": 8})
    save_file(net.state_dict(), tmp_path / "refine.safetensors")
    loaded = relight_refine.load(tmp_path / "refine.safetensors")
    assert isinstance(loaded, relight_refine.RelightRefiner) and not loaded.training
    with pytest.raises(ValueError, match="holds 'relight_refine' weights"):
        weights.load_named(tmp_path / "refine.safetensors", expect="irn")


def test_refiner_keeps_the_exposure_and_corrects_relative_colour():
    # refine_loss is blind to a constant log ratio, so a trained refiner's mean is arbitrary: it must not set the
    # image's brightness (the shipped one darkened photos to 0.6-0.8 under their own light).
    estimate = small_estimate()
    net = relight_refine.RelightRefiner(width=8).eval()
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([-0.5, -0.3, -0.7]))  # darker overall, a little greener
    plain = relight.Relighter(estimate)
    refined = relight.Relighter(estimate, refine=net)
    lighting = plain.sun_at(40.0, 120.0)
    ratio = refined.render(lighting).image / plain.render(lighting).image
    log_ratio = relight_refine.LOG_RATIO_LIMIT * np.tanh(np.array([-0.5, -0.3, -0.7]) / relight_refine.LOG_RATIO_LIMIT)
    np.testing.assert_allclose(ratio, np.exp(log_ratio - log_ratio.mean()) * np.ones_like(ratio), rtol=1e-4)
