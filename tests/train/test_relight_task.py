"""train/relight_task.py: the relighting metrics and the refiner's loss, against exact answers."""

import math

import numpy as np
import pytest
import torch

from invrender_core.train import relight_task


def test_si_log_luminance_ignores_exposure_and_measures_log_spread():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.05, 0.9, (20, 30, 3))
    assert relight_task.si_log_luminance(a, 3.0 * a) == pytest.approx(0.0, abs=1e-6)
    b = a.copy()
    b[:10] *= math.e  # half the pixels one log unit brighter: deviations ±0.5
    assert relight_task.si_log_luminance(a, b) == pytest.approx(0.5, abs=1e-9)


def test_refine_loss_is_zero_for_the_exact_correction_up_to_scale():
    torch.manual_seed(0)
    relit = torch.rand(2, 3, 8, 8) + 0.1
    correction = torch.randn(2, 3, 8, 8) * 0.3
    target = relit * torch.exp(correction) * 5.0
    mask = torch.ones(2, 1, 8, 8)
    assert float(relight_task.refine_loss(correction, relit, target, mask)) == pytest.approx(0.0, abs=1e-10)
    assert float(relight_task.refine_loss(torch.zeros_like(correction), relit, target, mask)) > 0.05
    mask[:, :, :4] = 0.0  # masked pixels do not count
    target[:, :, :4] = 1e3
    assert float(relight_task.refine_loss(correction, relit, target, mask)) == pytest.approx(0.0, abs=1e-10)


def test_shadow_counts_compare_sun_facing_ground_only():
    h, w = 4, 6
    view = {"gt_normal": np.tile(np.array([0.0, 1.0, 0.0], np.float16), (h, w, 1)),
            "relight_sun_camera": np.array([0.0, 1.0, 0.0], np.float32),
            "sky_mask": np.zeros((h, w), bool), "relight_gt_shadow": np.ones((h, w), np.float16)}
    view["relight_gt_shadow"][:, :3] = 0.0  # true shadow: left half (12 pixels)
    visibility = np.ones((h, w), np.float32)
    visibility[:, 2:4] = 0.0  # estimated: columns 2-3 (8 pixels), 4 of them right
    assert relight_task.shadow_counts(visibility, view) == (4, 16)
    view["sky_mask"][:, 3:] = True  # sky is not scored
    view["gt_normal"][0] = (0.0, -1.0, 0.0)  # nor are surfaces facing away from the sun
    assert relight_task.shadow_counts(visibility, view) == (3, 9)


def test_a_fractional_width_is_refused_not_truncated(tmp_path):
    """--width 0.5 counts channels for the refiner: refused as such (it was cast to 0 and reported as 0)."""
    with pytest.raises(ValueError, match="multiple of 4, got 0.5"):
        relight_task.RelightTask(tmp_path, width=0.5)
    assert relight_task.RelightTask(tmp_path, width=24.0).model.enc1[0].out_channels == 24
