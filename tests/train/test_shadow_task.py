"""train/shadow_task.py: the shadow refiner's loss, and that training on it learns which marched shadows are real."""

import numpy as np
import pytest
import torch

from invrender_core.nets.shadow_refine import INPUT_CHANNELS, ShadowRefiner, visibility_logit
from invrender_core.train import relight_task
from invrender_core.train.shadow_task import calibrate, iou_by_threshold, refined_visibility, shadow_loss


def test_loss_is_least_for_the_true_shadow():
    target = torch.ones(1, 1, 8, 8)
    target[..., 2:5, 2:6] = 0.0
    ones = torch.ones_like(target)
    right = shadow_loss(torch.where(target > 0.5, 30.0, -30.0), target, ones, ones)
    wrong = shadow_loss(torch.where(target > 0.5, -30.0, 30.0), target, ones, ones)
    none = shadow_loss(torch.full_like(target, 30.0), target, ones, ones)
    assert float(right["bce"]) < 1e-6 and abs(float(right["soft_iou"]) - 1.0) < 1e-6
    assert float(wrong["soft_iou"]) < 1e-6 and float(none["soft_iou"]) < 1e-6
    assert float(right["total"]) < float(none["total"]) < float(wrong["total"]) + 1.0
    light = shadow_loss(torch.full_like(target, 30.0), target, ones, ones, iou_weight=1.0)
    heavy = shadow_loss(torch.full_like(target, 30.0), target, ones, ones, iou_weight=3.0)
    assert abs(float(heavy["total"]) - float(light["total"]) - 2.0) < 1e-5  # (3 - 1) * (1 - soft IoU 0)
    region = torch.zeros_like(target)  # the soft IoU counts the region only
    region[..., :, 4:] = 1.0
    half = shadow_loss(torch.where((target < 0.5) & (region > 0), -30.0, 30.0), target, ones, region)
    assert abs(float(half["soft_iou"]) - 1.0) < 1e-6


def test_iou_counts_threshold_both_visibilities_within_the_region():
    truth = np.array([[0.0, 0.0, 1.0, 1.0]])
    estimate = np.array([[0.2, 0.9, 0.1, 1.0]])
    region = np.array([[True, True, True, False]])
    assert relight_task.iou_counts(estimate, truth, region) == (1, 3)


def test_training_learns_which_marched_shadows_are_real():
    """Marched shadows where the photo is dark are real, the others blobs: a few hundred steps find that."""
    rng = np.random.default_rng(0)
    n, h, w = 16, 16, 16
    features = np.zeros((n, INPUT_CHANNELS, h, w), np.float32)
    target = np.ones((n, 1, h, w), np.float32)
    for k in range(n):
        for _ in range(4):  # marched shadow squares, half of them real (dark in the photo)
            y, x = rng.integers(0, h - 4, 2)
            features[k, 0, y:y + 4, x:x + 4] = 1.0  # marked, then inverted below
            if rng.random() < 0.5:
                features[k, -1, y:y + 4, x:x + 4] = -1.0
                target[k, 0, y:y + 4, x:x + 4] = 0.0
    features[:, 0] = 1.0 - features[:, 0]  # marched visibility: 0 in every square
    features[:, 4] = 1.0  # normals facing the camera
    x, y, ones = torch.from_numpy(features), torch.from_numpy(target), torch.ones(n, 1, h, w)
    torch.manual_seed(0)
    net = ShadowRefiner(width=8, levels=2)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)

    def iou():
        with torch.no_grad():
            est = (torch.sigmoid(visibility_logit(net, x)) < 0.5).numpy()
        truth = target < 0.5
        return (est & truth).sum() / (est | truth).sum()

    before = iou()
    for _ in range(200):
        loss = shadow_loss(visibility_logit(net, x), y, ones, ones)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert before < 0.65 and iou() > 0.9


def test_a_mirrored_item_is_the_item_of_the_mirrored_scene():
    from invrender_core.nets.shadow_refine import light_features, photo_features
    from invrender_core.train.shadow_task import ShadowPairs

    rng = np.random.default_rng(1)
    h, w = 8, 12
    normals = rng.normal(size=(h, w, 3)).astype(np.float32)
    normals[..., 2] = np.abs(normals[..., 2])
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    depth, image = rng.uniform(1, 5, (h, w)), rng.uniform(0.05, 0.9, (h, w, 3))
    sky, marched, sun = rng.random((h, w)) < 0.2, rng.random((h, w)).astype(np.float32), np.array([0.5, 0.6, 0.3])

    def item(normals, depth, sky, image, marched, sun):
        return light_features(marched, photo_features(normals, depth, sky, image), sun).transpose(2, 0, 1)

    mirrored_normals = normals[:, ::-1] * np.float32([-1.0, 1.0, 1.0])
    expected = item(mirrored_normals, depth[:, ::-1], sky[:, ::-1], image[:, ::-1], marched[:, ::-1],
                    sun * [-1.0, 1.0, 1.0])
    features = torch.from_numpy(item(normals, depth, sky, image, marched, sun).copy())
    mirrored = ShadowPairs.mirror_features(features.flip(-1).clone())
    np.testing.assert_allclose(mirrored.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_calibration_moves_the_best_threshold_to_one_half():
    """Untrained refiner: visibility sigmoid(4 (marched - 0.5)). True shadows marched at 0.6 (visibility 0.599),
    lit pixels at 0.9 (0.832): cut at 0.5 nothing is shadow (IoU 0); cut at 0.6 or 0.65 exactly the true shadows
    (IoU 1, 0.6 the nearer); cut at 0.85 everything (IoU = the shadows' share, 1/4). Calibrated, the visibility
    is below 0.5 on the true shadows alone."""
    h = w = 8
    features = np.zeros((INPUT_CHANNELS, h, w), np.float32)
    features[0] = 0.9
    features[0, :, :2] = 0.6
    target = np.ones((1, h, w), np.float32)
    target[0, :, :2] = 0.0
    item = {"features": features, "target": target, "region": np.ones((1, h, w), np.float32)}
    net = ShadowRefiner(width=8, levels=2)
    table = iou_by_threshold(net, [item])
    assert table[0.5] == 0.0 and table[0.6] == 1.0 and table[0.65] == 1.0 and table[0.85] == 0.25
    offset, _ = calibrate(net, [item])
    assert abs(offset - (-np.log(0.6 / 0.4))) < 1e-6
    shadow = refined_visibility(net, item) < 0.5
    assert np.array_equal(shadow, target[0] < 0.5)


def test_calibration_keeps_the_smaller_shift_when_the_ious_are_within_tolerance():
    """One true shadow pixel of 1000 is marched at 0.625 (visibility 0.622), the others at 0.6 (0.599): a cut at
    0.65 finds all (IoU 1), at 0.6 all but one (0.999), within the tolerance: 0.6 is kept."""
    h = w = 32
    features = np.zeros((INPUT_CHANNELS, h, w), np.float32)
    target = np.ones((1, h, w), np.float32)
    flat = features[0].reshape(-1)
    flat[:] = 0.9
    flat[:1000] = 0.6
    flat[0] = 0.625
    target.reshape(-1)[:1000] = 0.0
    item = {"features": features, "target": target, "region": np.ones((1, h, w), np.float32)}
    net = ShadowRefiner(width=8, levels=2)
    table = iou_by_threshold(net, [item])
    assert table[0.65] == 1.0 and abs(table[0.6] - 0.999) < 1e-9
    offset, _ = calibrate(net, [item])
    assert abs(offset - (-np.log(0.6 / 0.4))) < 1e-6


def test_calibration_refuses_to_write_over_the_trained_weights(tmp_path, capsys):
    from invrender_core.train.shadow_task import main

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"trained")
    with pytest.raises(SystemExit) as e:
        main(["--weights", str(weights), "--data", str(tmp_path), "--out", str(weights)])
    assert e.value.code == 2 and "--out must differ from --weights" in capsys.readouterr().err
    assert weights.read_bytes() == b"trained"
