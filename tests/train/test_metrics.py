import numpy as np
import pytest

from invrender_core import sh
from invrender_core.train import metrics


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_normal_angular_error_of_known_rotation():
    gt = np.tile([0.0, 0.0, 1.0], (4, 5, 1))
    angle = np.radians(30.0)
    pred = np.tile([np.sin(angle), 0.0, np.cos(angle)], (4, 5, 1))
    assert metrics.normal_angular_error(pred, gt, np.ones((4, 5), bool)) == pytest.approx(30.0, abs=1e-9)
    # unnormalised prediction gives the same angle
    assert metrics.normal_angular_error(3 * pred, gt, np.ones((4, 5), bool)) == pytest.approx(30.0, abs=1e-9)


def test_normal_error_respects_mask_and_empty_mask_is_nan():
    gt = np.tile([0.0, 0.0, 1.0], (2, 2, 1))
    pred = gt.copy()
    pred[0, 0] = [1.0, 0.0, 0.0]  # 90 degrees, masked out
    mask = np.ones((2, 2), bool)
    mask[0, 0] = False
    assert metrics.normal_angular_error(pred, gt, mask) == pytest.approx(0.0, abs=1e-6)
    assert np.isnan(metrics.normal_angular_error(pred, gt, np.zeros((2, 2), bool)))


def test_scale_invariant_mse_ignores_per_channel_scale():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.1, 0.9, (6, 7, 3))
    mask = np.ones((6, 7), bool)
    assert metrics.scale_invariant_mse(gt * [2.0, 0.5, 3.0], gt, mask) == pytest.approx(0.0, abs=1e-20)
    noisy = gt + rng.normal(0, 0.05, gt.shape)
    plain = float(((noisy - gt) ** 2).mean())
    si = metrics.scale_invariant_mse(noisy, gt, mask)
    assert 0 < si <= plain  # the optimal scale can only lower the error


def test_colour_balance_error_measures_the_cast_that_scale_invariance_forgives():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.1, 0.9, (6, 7, 3))
    mask = np.ones((6, 7), bool)
    assert metrics.colour_balance_error(gt * 2.5, gt, mask) == pytest.approx(0.0, abs=1e-12)  # brightness only
    cast = np.array([2.0, 0.5, 1.0])  # pred too red, not green enough: a = 1 / cast
    log_a = -np.log(cast)
    expected = np.sqrt(np.mean((log_a - log_a.mean()) ** 2))
    assert metrics.colour_balance_error(gt * cast, gt, mask) == pytest.approx(expected, rel=1e-12)
    assert np.isnan(metrics.colour_balance_error(gt, gt, np.zeros((6, 7), bool)))


def test_shadow_iou_of_overlapping_boxes():
    gt = np.ones((10, 10))
    pred = np.ones((10, 10))
    gt[2:6, 2:6] = 0.0  # 16 pixels
    pred[4:8, 2:6] = 0.1  # 16 pixels, 8 shared
    assert metrics.shadow_iou(pred, gt, np.ones((10, 10), bool)) == pytest.approx(8 / 24)
    assert np.isnan(metrics.shadow_iou(np.ones((3, 3)), np.ones((3, 3)), np.ones((3, 3), bool)))
    assert metrics.mask_iou(pred < 0.5, gt < 0.5) == pytest.approx(8 / 24)
    assert np.isnan(metrics.mask_iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)))


def test_lighting_error_zero_for_scaled_copy_and_one_for_darkness():
    L = sh.directional([0.3, 0.8, 0.5], [1.0, 0.9, 0.8])
    L[0] += 0.5  # plus some ambient light
    assert metrics.lighting_error(2.5 * L, L) == pytest.approx(0.0, abs=1e-9)
    assert metrics.lighting_error(np.zeros((9, 3)), L) == pytest.approx(1.0)
    rotated = sh.rotation(np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])) @ L
    assert 0.1 < metrics.lighting_error(rotated, L) < 1.0


def test_shape_errors():
    with pytest.raises(ValueError, match="shape"):
        metrics.normal_angular_error(np.zeros((2, 2, 3)), np.zeros((2, 3, 3)), np.ones((2, 2), bool))
    with pytest.raises(ValueError, match="mask"):
        metrics.scale_invariant_mse(np.zeros((2, 2, 3)), np.zeros((2, 2, 3)), np.ones((3, 2), bool))
    with pytest.raises(ValueError, match=r"\(9, 3\)"):
        metrics.lighting_error(np.zeros(9), np.zeros((9, 3)))


def test_print_and_write_round_trips_the_scores(tmp_path, capsys):
    import json

    scores = {"iou": 0.375, "per_image": [1.5, 2.0]}
    metrics.print_and_write(scores, tmp_path / "new" / "scores.json")
    assert json.loads((tmp_path / "new" / "scores.json").read_text()) == scores
    assert json.loads(capsys.readouterr().out) == scores
    metrics.print_and_write(scores)  # printed only
    assert json.loads(capsys.readouterr().out) == scores
