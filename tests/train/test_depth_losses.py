"""MegaDepth-style depth losses and the SI log RMSE metric: analytic values, invariances, masks, errors, gradients."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from invrender_core.train.depth_losses import (
    gradient_matching_loss,
    ordinal_loss,
    sample_ordinal_pairs,
    scale_invariant_log_loss,
    si_log_rmse,
)


def _gt(b=2, h=8, w=10, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=gen, dtype=dtype) * 9.0 + 1.0  # depths in [1, 10)


def _noise(shape, seed=1, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------- scale_invariant_log_loss ----------

@settings(max_examples=25, deadline=None)
@given(c=st.floats(-20, 20, allow_nan=False))
def test_si_loss_zero_for_any_offset(c):
    gt = _gt()
    mask = torch.ones_like(gt, dtype=torch.bool)
    loss = scale_invariant_log_loss(gt.log() + c, gt, mask)
    assert loss.ndim == 0
    assert abs(loss.item()) < 1e-10


def test_si_loss_equals_variance_of_residual_on_valid_pixels():
    gt = _gt()
    r = _noise(gt.shape)
    mask = _noise(gt.shape, seed=2) > -0.3
    gt_masked = torch.where(mask, gt, torch.zeros_like(gt))  # invalid gt is 0: must not leak NaN
    loss = scale_invariant_log_loss(gt.log() + r, gt_masked, mask.float())
    expected = np.mean([r[k][mask[k]].var(unbiased=False).item() for k in range(gt.shape[0])])
    assert loss.item() == pytest.approx(expected, rel=1e-10)


def test_si_loss_empty_mask_is_zero_with_grad():
    gt = _gt(dtype=torch.float32)
    pred = torch.randn_like(gt, requires_grad=True)
    loss = scale_invariant_log_loss(pred, gt, torch.zeros_like(gt, dtype=torch.bool))
    assert loss.item() == 0.0 and not torch.isnan(loss)
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_si_loss_skips_empty_image_in_batch():
    gt = _gt()
    r = _noise(gt.shape)
    mask = torch.ones_like(gt, dtype=torch.bool)
    mask[1] = False
    loss = scale_invariant_log_loss(gt.log() + r, gt, mask)
    assert loss.item() == pytest.approx(r[0].var(unbiased=False).item(), rel=1e-10)


def test_si_loss_gradcheck():
    gt = _gt(b=2, h=4, w=5)
    mask = _noise(gt.shape, seed=3) > -0.5
    pred = _noise(gt.shape, seed=4).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: scale_invariant_log_loss(p, gt, mask), (pred,))


# ---------- gradient_matching_loss ----------

@settings(max_examples=15, deadline=None)
@given(c=st.floats(-20, 20, allow_nan=False))
def test_gradient_loss_zero_for_any_offset(c):
    gt = _gt(h=16, w=16)
    mask = _noise(gt.shape, seed=5) > -0.8
    assert abs(gradient_matching_loss(gt.log() + c, gt, mask).item()) < 1e-10


def test_gradient_loss_positive_for_noise_and_analytic_single_scale():
    gt = _gt(b=1, h=3, w=3)
    r = torch.zeros_like(gt)
    r[0, 0, 1, 1] = 1.0  # a spike: 4 neighbouring differences of magnitude 1
    mask = torch.ones_like(gt, dtype=torch.bool)
    loss = gradient_matching_loss(gt.log() + r, gt, mask, scales=1)
    assert loss.item() == pytest.approx(4 / 9)
    assert gradient_matching_loss(gt.log() + _noise(gt.shape), gt, mask).item() > 0


def test_gradient_loss_ignores_pairs_touching_invalid_pixels():
    gt = _gt(b=1, h=3, w=3)
    r = torch.zeros_like(gt)
    r[0, 0, 1, 1] = 1.0
    mask = torch.ones_like(gt, dtype=torch.bool)
    mask[0, 0, 1, 1] = False  # the spike sits on an invalid pixel: no valid difference sees it
    assert gradient_matching_loss(gt.log() + r, gt, mask, scales=1).item() == 0.0


def test_gradient_loss_scales_by_striding():
    # R alternates along x with period 2: stride-1 sees |1| jumps, strides 2 and 4 see a constant.
    gt = _gt(b=1, h=8, w=8)
    r = (torch.arange(8, dtype=torch.float64) % 2).expand(1, 1, 8, 8).clone()
    mask = torch.ones_like(gt, dtype=torch.bool)
    pred = gt.log() + r
    one = gradient_matching_loss(pred, gt, mask, scales=1).item()
    assert one == pytest.approx(8 * 7 / 64)
    assert gradient_matching_loss(pred, gt, mask, scales=3).item() == pytest.approx(one / 3)
    # At stride 2 only the even columns remain; masking them out empties that scale's differences.
    mask2 = mask.clone()
    mask2[..., ::2] = False
    assert gradient_matching_loss(pred, gt, mask2, scales=2).item() == pytest.approx(
        gradient_matching_loss(pred, gt, mask2, scales=1).item() / 2)


def test_gradient_loss_image_smaller_than_stride_and_empty_mask():
    gt = _gt(b=1, h=3, w=3, dtype=torch.float32)
    pred = torch.randn_like(gt, requires_grad=True)
    mask = torch.ones_like(gt, dtype=torch.bool)
    assert torch.isfinite(gradient_matching_loss(pred, gt, mask, scales=4))
    loss = gradient_matching_loss(pred, gt, torch.zeros_like(mask))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_gradient_loss_gradcheck():
    gt = _gt(b=2, h=6, w=5)
    mask = _noise(gt.shape, seed=6) > -0.5
    pred = _noise(gt.shape, seed=7).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: gradient_matching_loss(p, gt, mask, scales=2), (pred,))


def test_gradient_loss_rejects_bad_scales():
    gt = _gt()
    with pytest.raises(ValueError, match="scales"):
        gradient_matching_loss(gt, gt, gt > 0, scales=0)


# ---------- shape errors (shared by the per-pixel losses) ----------

@pytest.mark.parametrize("loss", [scale_invariant_log_loss, gradient_matching_loss])
def test_shape_errors_name_both_shapes(loss):
    gt = _gt()
    with pytest.raises(ValueError, match=r"\(2, 1, 8, 10\).*\(2, 1, 8, 9\)"):
        loss(gt, gt[..., :9], gt > 0)
    with pytest.raises(ValueError, match="mask"):
        loss(gt, gt, (gt > 0)[0])
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\).*\(2, 8, 10\)"):
        loss(gt[:, 0], gt[:, 0], gt[:, 0] > 0)


# ---------- ordinal_loss ----------

def _pairs(b=2, p=6, hw=80, seed=8):
    gen = torch.Generator().manual_seed(seed)
    i = torch.randint(hw, (b, p), generator=gen)
    j = torch.randint(hw, (b, p), generator=gen)
    lab = torch.randint(2, (b, p), generator=gen) * 2 - 1
    return i, j, lab


def test_ordinal_equal_predictions_cost_log2():
    pred = torch.full((2, 1, 8, 10), 0.3, dtype=torch.float64)
    assert ordinal_loss(pred, *_pairs()).item() == pytest.approx(math.log(2))


def test_ordinal_correct_large_margin_goes_to_zero_and_wrong_grows():
    pred = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    pred[0, 0, 0, 0] = 50.0  # pixel 0 is far
    i, j = torch.tensor([[0]]), torch.tensor([[3]])
    assert ordinal_loss(pred, i, j, torch.tensor([[1]])).item() < 1e-15
    assert ordinal_loss(pred, i, j, torch.tensor([[-1]])).item() == pytest.approx(50.0)  # no overflow


def test_ordinal_gradient_sign():
    pred = torch.zeros(1, 1, 2, 2, dtype=torch.float64, requires_grad=True)
    ordinal_loss(pred, torch.tensor([[0]]), torch.tensor([[3]]), torch.tensor([[1]])).backward()
    g = pred.grad.flatten()
    assert g[0] < 0 < g[3]  # descent raises p_i (i farther) and lowers p_j
    assert g[1] == g[2] == 0


def test_ordinal_padding_ignored_and_empty_is_zero_with_grad():
    pred = torch.randn(2, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    i, j = torch.tensor([[0, 5], [1, 2]]), torch.tensor([[3, 6], [4, 7]])
    padded = ordinal_loss(pred[:1], i[:1], j[:1], torch.tensor([[1, 0]]))
    assert padded.item() == pytest.approx(ordinal_loss(pred[:1], i[:1, :1], j[:1, :1], torch.tensor([[1]])).item())
    loss = ordinal_loss(pred, i, j, torch.zeros(2, 2, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_ordinal_errors():
    pred = torch.zeros(2, 1, 4, 4)
    i, j, lab = _pairs(p=3, hw=16)
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 2\)"):
        ordinal_loss(pred, i, j[:, :2], lab)
    with pytest.raises(ValueError, match="B = 2"):
        ordinal_loss(pred, i[:1], j[:1], lab[:1])
    with pytest.raises(ValueError, match="H\\*W"):
        ordinal_loss(pred, i + 16, j, lab)
    with pytest.raises(ValueError, match="labels"):
        ordinal_loss(pred, i, j, lab * 2)


# ---------- sample_ordinal_pairs ----------

def test_sampled_pairs_agree_with_gt_and_respect_ratio():
    gt = _gt(b=3, h=12, w=12, seed=9)
    mask = _noise(gt.shape, seed=10) > 0
    mask[2] = False  # an empty image: all padding
    gen = torch.Generator().manual_seed(11)
    i, j, lab = sample_ordinal_pairs(gt, mask, num_pairs=200, min_ratio=1.3, generator=gen)
    assert i.shape == j.shape == lab.shape == (3, 200) and i.dtype == torch.long
    assert (lab[:2] != 0).all() and (lab[2] == 0).all()
    flat, fmask = gt.flatten(1), mask.flatten(1)
    for k in range(2):
        d_i, d_j = flat[k, i[k]], flat[k, j[k]]
        assert fmask[k, i[k]].all() and fmask[k, j[k]].all()
        assert (torch.maximum(d_i, d_j) > 1.3 * torch.minimum(d_i, d_j)).all()
        assert torch.equal(lab[k], torch.where(d_i > d_j, 1, -1))
    # With these pairs a prediction equal to log gt beats a flat one.
    assert ordinal_loss(gt.log(), i, j, lab) < ordinal_loss(torch.zeros_like(gt), i, j, lab)


def test_sampled_pairs_reproducible_and_padding_when_no_ratio_possible():
    gt = _gt(b=1, h=6, w=6)
    mask = torch.ones_like(gt, dtype=torch.bool)
    a = sample_ordinal_pairs(gt, mask, 10, generator=torch.Generator().manual_seed(0))
    b = sample_ordinal_pairs(gt, mask, 10, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    _, _, lab = sample_ordinal_pairs(torch.full_like(gt, 2.0), mask, 10)
    assert (lab == 0).all()
    with pytest.raises(ValueError, match="min_ratio"):
        sample_ordinal_pairs(gt, mask, 10, min_ratio=0.9)
    with pytest.raises(ValueError, match=r"\(1, 1, 6, 6\).*\(1, 1, 6, 5\)"):
        sample_ordinal_pairs(gt, mask[..., :5], 10)


# ---------- si_log_rmse ----------

def test_si_log_rmse_constant_prediction_is_std_of_log_gt_numpy_and_torch():
    rng = np.random.default_rng(0)
    gt = rng.uniform(1, 10, (7, 9))
    mask = rng.random((7, 9)) > 0.3
    expected = np.log(gt[mask]).std()
    pred = np.full_like(gt, 3.0)
    assert si_log_rmse(pred, gt, mask) == pytest.approx(expected, rel=1e-12)
    assert si_log_rmse(torch.from_numpy(pred), torch.from_numpy(gt), torch.from_numpy(mask)) == pytest.approx(
        expected, rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(scale=st.floats(1e-3, 1e3), seed=st.integers(0, 100))
def test_si_log_rmse_numpy_torch_agree_and_scale_invariant(scale, seed):
    rng = np.random.default_rng(seed)
    gt = rng.uniform(1, 10, (2, 1, 5, 6)).astype(np.float32)
    pred = (gt * np.exp(rng.normal(0, 0.2, gt.shape))).astype(np.float32)
    mask = (rng.random(gt.shape) > 0.2).astype(np.float32)
    ref = si_log_rmse(pred, gt, mask)
    assert isinstance(ref, float) and ref > 0
    assert si_log_rmse(torch.from_numpy(pred), gt, torch.from_numpy(mask)) == pytest.approx(ref, rel=1e-9)
    assert si_log_rmse(pred * scale, gt, mask) == pytest.approx(ref, rel=1e-4, abs=1e-6)


def test_si_log_rmse_empty_mask_errors_and_pred_checks():
    gt = np.ones((4, 4))
    assert si_log_rmse(gt, gt, np.zeros((4, 4), bool)) == 0.0
    assert si_log_rmse(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)) == 0.0
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 3\)"):
        si_log_rmse(gt, gt[:, :3], gt > 0)
    with pytest.raises(ValueError, match=r"\(H, W\) or \(B, 1, H, W\)"):
        si_log_rmse(gt[None], gt[None], gt[None] > 0)
    with pytest.raises(ValueError, match="positive"):
        si_log_rmse(gt - 1, gt, gt > 0)


def test_sky_far_loss_hinge_values_and_gradient_only_on_sky():
    from invrender_core.train.depth_losses import sky_far_loss

    pred = torch.zeros(1, 1, 2, 3)
    pred[0, 0, 1] = torch.tensor([0.0, 1.0, 2.0])  # scene: farthest log depth 2
    pred[0, 0, 0] = torch.tensor([2.5, 4.0, 10.0])  # sky row
    pred.requires_grad_(True)
    sky = torch.zeros(1, 1, 2, 3)
    sky[0, 0, 0] = 1
    mask = 1 - sky
    margin = 1.0
    loss = sky_far_loss(pred, sky, mask, margin=margin)
    # relu(2 + 1 - [2.5, 4, 10]) = [0.5, 0, 0] -> mean 0.5 / 3
    assert float(loss.detach()) == pytest.approx(0.5 / 3)
    loss.backward()
    assert pred.grad[0, 0, 1].abs().sum() == 0  # the scene is not pulled in
    assert pred.grad[0, 0, 0, 0] == pytest.approx(-1 / 3)


def test_sky_far_loss_without_sky_is_zero_with_graph():
    from invrender_core.train.depth_losses import sky_far_loss

    pred = torch.randn(2, 1, 4, 4, requires_grad=True)
    loss = sky_far_loss(pred, torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4))
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert pred.grad is not None
