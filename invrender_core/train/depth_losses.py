"""MegaDepth-style depth supervision (Li & Snavely, CVPR 2018) and the scale-invariant evaluation metric.

The depth network predicts log depth up to an unknown global scale, so every term here compares the
residual R = pred_log_depth - log(gt_depth) in ways that ignore a constant offset of R:

- `scale_invariant_log_loss`: Eigen et al.'s scale-invariant data term with lambda = 1, mean(R^2) - mean(R)^2.
- `gradient_matching_loss`: |grad_x R| + |grad_y R| at several scales, so edges are sharp and planes flat.
- `ordinal_loss` (+ `sample_ordinal_pairs`): robust ordinal term on point pairs, log(1 + exp(-label (p_i - p_j))).
- `sky_far_loss`: sky pixels (no MVS depth, open to the top) predicted farther than the whole scene.
- `si_log_rmse`: the evaluation metric, sqrt(mean(R^2) - mean(R)^2) with R = log pred - log gt.

Shapes: the losses take maps of shape (B, 1, H, W), like the network's output, and check them at entry.
Masks (same shape, bool or float, nonzero = valid) select pixels with valid ground truth; pixels whose
gt depth is not finite and positive are dropped from the mask too, so log(gt) is always defined.

Reduction: each loss is a mean over the valid pixels (or pairs) of each image, then a mean over the images
that have any; an image without valid pixels is skipped rather than producing 0/0 = NaN, and a batch
without any gives an exact 0 that is still attached to the graph of the prediction.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "gradient_matching_loss",
    "ordinal_loss",
    "sample_ordinal_pairs",
    "scale_invariant_log_loss",
    "si_log_rmse",
    "sky_far_loss",
]


def _check_map(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, H, W), got {tuple(x.shape)}")


def _check_same(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
                         "they must match")


def _residual(pred_log_depth: torch.Tensor, gt_depth: torch.Tensor, mask: torch.Tensor):
    """Check shapes; return R = pred - log gt (0 where invalid) and the effective bool mask, both (B, 1, H, W)."""
    _check_map("pred_log_depth", pred_log_depth)
    _check_same("pred_log_depth", pred_log_depth, "gt_depth", gt_depth)
    _check_same("pred_log_depth", pred_log_depth, "mask", mask)
    gt = gt_depth.to(device=pred_log_depth.device, dtype=pred_log_depth.dtype)
    valid = mask.to(pred_log_depth.device).bool() & torch.isfinite(gt) & (gt > 0)
    # where() before log: log(0) = -inf would turn the masked-out product into NaN, in values and gradients.
    log_gt = torch.log(torch.where(valid, gt, torch.ones_like(gt)))
    r = torch.where(valid, pred_log_depth - log_gt, torch.zeros_like(pred_log_depth))
    return r, valid


def _mean_over_images(per_image: torch.Tensor, has_data: torch.Tensor) -> torch.Tensor:
    """Mean of per_image (B,) over the images with has_data (B,) bool; 0 (graph kept) when none has."""
    weights = has_data.to(per_image.dtype)
    return (per_image * weights).sum() / weights.sum().clamp(min=1.0)


def scale_invariant_log_loss(pred_log_depth: torch.Tensor, gt_depth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Scale-invariant data term on log depth: per image mean(R^2) - mean(R)^2, R = pred_log_depth - log(gt_depth).

    This is Eigen et al.'s (NIPS 2014) term with lambda = 1, the form MegaDepth uses: it equals the variance
    of R over the valid pixels, so adding any constant to the prediction (scaling the depth) changes
    nothing. Monocular depth has no absolute scale, hence the fully invariant choice rather than 0.5.

    Args:
        pred_log_depth: (B, 1, H, W) predicted log depth.
        gt_depth: (B, 1, H, W) ground-truth depth (linear, > 0 where valid).
        mask: (B, 1, H, W) bool or float, nonzero where gt_depth is valid.

    Returns:
        0-dim tensor: mean over images with valid pixels (0 when there are none).
    """
    r, valid = _residual(pred_log_depth, gt_depth, mask)
    m = valid.to(r.dtype)
    n = m.sum(dim=(1, 2, 3))  # (B,)
    denom = n.clamp(min=1.0)
    mean_r = r.sum(dim=(1, 2, 3)) / denom  # r is already 0 outside the mask
    mean_r2 = (r * r).sum(dim=(1, 2, 3)) / denom
    return _mean_over_images(mean_r2 - mean_r * mean_r, n > 0)


def gradient_matching_loss(
    pred_log_depth: torch.Tensor, gt_depth: torch.Tensor, mask: torch.Tensor, scales: int = 4
) -> torch.Tensor:
    """Multi-scale gradient matching on R = pred_log_depth - log(gt_depth) (MegaDepth's L_grad).

    At scale k = 0..scales-1, R and the mask are subsampled by striding (every 2^k-th row and column), and
    the term is (sum |R[y, x+1] - R[y, x]| + sum |R[y+1, x] - R[y, x]|) / N_k, each difference counted only
    when both of its pixels are valid and N_k the number of valid subsampled pixels. Per scale, images are
    averaged over those with N_k > 0; the scales are then averaged. A constant offset of R cancels, so the
    term is scale invariant like the data term.

    Args:
        pred_log_depth: (B, 1, H, W) predicted log depth.
        gt_depth: (B, 1, H, W) ground-truth depth (linear, > 0 where valid).
        mask: (B, 1, H, W) bool or float, nonzero where gt_depth is valid.
        scales: number of scales (strides 1, 2, 4, ..., 2^(scales-1)), >= 1.

    Returns:
        0-dim tensor (0 when no image has a valid pixel).
    """
    if not isinstance(scales, int) or scales < 1:
        raise ValueError(f"scales must be a positive int, got {scales!r}")
    r, valid = _residual(pred_log_depth, gt_depth, mask)
    m = valid.to(r.dtype)
    total = r.new_zeros(())
    for k in range(scales):
        s = 2**k
        r_s, m_s = r[..., ::s, ::s], m[..., ::s, ::s]  # (B, 1, ceil(H/s), ceil(W/s))
        gx = (r_s[..., :, 1:] - r_s[..., :, :-1]).abs() * (m_s[..., :, 1:] * m_s[..., :, :-1])
        gy = (r_s[..., 1:, :] - r_s[..., :-1, :]).abs() * (m_s[..., 1:, :] * m_s[..., :-1, :])
        n = m_s.sum(dim=(1, 2, 3))  # (B,)
        per_image = (gx.sum(dim=(1, 2, 3)) + gy.sum(dim=(1, 2, 3))) / n.clamp(min=1.0)
        total = total + _mean_over_images(per_image, n > 0)
    return total / scales


def ordinal_loss(
    pred_log_depth: torch.Tensor, pairs_i: torch.Tensor, pairs_j: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """MegaDepth's robust ordinal term: mean over pairs of log(1 + exp(-label * (p_i - p_j))).

    label = +1 says pixel i is farther than pixel j (so p_i > p_j is rewarded), -1 the opposite. Label 0
    marks padding (e.g. from `sample_ordinal_pairs` when an image has too few usable pairs) and is ignored.
    Equal predictions cost log 2; a correct large margin costs ~0; a wrong one grows linearly.

    Args:
        pred_log_depth: (B, 1, H, W) predicted log depth.
        pairs_i, pairs_j: (B, P) long, flat pixel indices (row * W + col) into each image.
        labels: (B, P) in {-1, 0, +1} (any dtype).

    Returns:
        0-dim tensor: mean over labelled pairs per image, then over images with any (0 when none).
    """
    _check_map("pred_log_depth", pred_log_depth)
    b, _, h, w = pred_log_depth.shape
    if pairs_i.ndim != 2 or pairs_i.shape[0] != b:
        raise ValueError(f"pairs_i must have shape (B, P) with B = {b} (pred_log_depth {tuple(pred_log_depth.shape)}),"
                         f" got {tuple(pairs_i.shape)}")
    _check_same("pairs_i", pairs_i, "pairs_j", pairs_j)
    _check_same("pairs_i", pairs_i, "labels", labels)
    if pairs_i.dtype != torch.long or pairs_j.dtype != torch.long:
        raise ValueError(f"pairs_i and pairs_j must be torch.long, got {pairs_i.dtype} and {pairs_j.dtype}")
    if pairs_i.numel() and (min(pairs_i.min(), pairs_j.min()) < 0 or max(pairs_i.max(), pairs_j.max()) >= h * w):
        raise ValueError(f"pair indices must lie in [0, H*W = {h * w})")
    lab = labels.to(device=pred_log_depth.device, dtype=pred_log_depth.dtype)
    if not bool(((lab == 1) | (lab == -1) | (lab == 0)).all()):
        raise ValueError("labels must be -1, +1 (or 0 for padding)")
    flat = pred_log_depth.reshape(b, h * w)  # (B, H*W)
    p_i = flat.gather(1, pairs_i.to(flat.device))  # (B, P)
    p_j = flat.gather(1, pairs_j.to(flat.device))
    # softplus(x) = log(1 + exp(x)) without overflow for large wrong margins.
    per_pair = F.softplus(-lab * (p_i - p_j)) * (lab != 0).to(flat.dtype)
    n = (lab != 0).to(flat.dtype).sum(dim=1)  # (B,)
    per_image = per_pair.sum(dim=1) / n.clamp(min=1.0)
    return _mean_over_images(per_image, n > 0)


def sky_far_loss(pred_log_depth: torch.Tensor, sky: torch.Tensor, mask: torch.Tensor,
                 margin: float = math.log(4.0)) -> torch.Tensor:
    """MegaDepth's sky constraint: sky is farther than the scene. Mean over sky pixels of
    relu(far + margin - p), where far is the largest predicted log depth on the image's valid (non-sky) pixels,
    held fixed (no gradient): only the sky is pushed away, by at least `margin` (log of a depth ratio).

    Without it a network trained on MVS depth, which has no sky, predicts anything there, and the pipeline
    cannot tell the sky from the scene. Scale-free like the other terms (only differences of log depth).

    Args:
        pred_log_depth: (B, 1, H, W) predicted log depth.
        sky: (B, 1, H, W) bool or float, nonzero on sky pixels.
        mask: (B, 1, H, W) nonzero on pixels with valid (non-sky) depth.

    Returns:
        0-dim tensor: per-image mean over sky pixels, then mean over images with both sky and valid pixels.
    """
    _check_map("pred_log_depth", pred_log_depth)
    _check_same("pred_log_depth", pred_log_depth, "sky", sky)
    _check_same("pred_log_depth", pred_log_depth, "mask", mask)
    is_sky = sky.to(pred_log_depth.device).bool()
    valid = mask.to(pred_log_depth.device).bool() & ~is_sky
    lowest = torch.finfo(pred_log_depth.dtype).min
    far = torch.where(valid, pred_log_depth.detach(), lowest).amax(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    per_pixel = torch.where(is_sky, F.relu(far + margin - pred_log_depth), 0.0)
    n = is_sky.sum(dim=(1, 2, 3)).to(pred_log_depth.dtype)  # (B,)
    per_image = per_pixel.sum(dim=(1, 2, 3)) / n.clamp(min=1.0)
    return _mean_over_images(per_image, (n > 0) & valid.any(dim=(1, 2, 3)))


@torch.no_grad()
def sample_ordinal_pairs(
    gt_depth: torch.Tensor,
    mask: torch.Tensor,
    num_pairs: int,
    min_ratio: float = 1.05,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample point pairs of valid pixels whose depths differ by more than min_ratio, with ordinal labels.

    For each image, i is drawn uniformly among valid pixels that have at least one partner, then j
    uniformly among i's partners (valid pixels with max(d_i, d_j) / min(d_i, d_j) > min_ratio), found
    exactly by binary search in the sorted depths, so no rejection loop is needed. Labels are +1 when
    d_i > d_j (i farther), -1 otherwise. Images with no admissible pair get all-padding rows (label 0,
    indices 0), which `ordinal_loss` ignores.

    Args:
        gt_depth: (B, 1, H, W) ground-truth depth (linear, > 0 where valid).
        mask: (B, 1, H, W) bool or float, nonzero where gt_depth is valid.
        num_pairs: P >= 0, pairs per image.
        min_ratio: >= 1, the depth ratio a pair must exceed.
        generator: optional torch.Generator (on gt_depth's device) for reproducible sampling.

    Returns:
        pairs_i, pairs_j: (B, P) long flat indices (row * W + col); labels: (B, P) long in {-1, 0, +1}.
    """
    _check_map("gt_depth", gt_depth)
    _check_same("gt_depth", gt_depth, "mask", mask)
    if not isinstance(num_pairs, int) or num_pairs < 0:
        raise ValueError(f"num_pairs must be a non-negative int, got {num_pairs!r}")
    if not min_ratio >= 1.0:
        raise ValueError(f"min_ratio must be >= 1, got {min_ratio!r}")
    b, _, h, w = gt_depth.shape
    dev = gt_depth.device
    gt = gt_depth.reshape(b, h * w).double()  # double: the ratio tests below must not flip by rounding
    valid = mask.to(dev).reshape(b, h * w).bool() & torch.isfinite(gt) & (gt > 0)
    pairs_i = torch.zeros(b, num_pairs, dtype=torch.long, device=dev)
    pairs_j = torch.zeros_like(pairs_i)
    labels = torch.zeros_like(pairs_i)
    for k in range(b):
        idx = valid[k].nonzero().squeeze(1)  # (N,) flat indices of valid pixels
        if idx.numel() < 2 or num_pairs == 0:
            continue
        depth, order = gt[k, idx].sort()
        idx = idx[order]  # valid pixels by increasing depth
        n = idx.numel()
        near_end = torch.searchsorted(depth, depth / min_ratio, side="left")  # partners [0, near_end): d_j < d_i/r
        far_start = torch.searchsorted(depth, depth * min_ratio, side="right")  # partners [far_start, n): d_j > d_i r
        count = near_end + (n - far_start)  # (N,)
        eligible = (count > 0).nonzero().squeeze(1)
        if eligible.numel() == 0:
            continue
        a = eligible[torch.randint(eligible.numel(), (num_pairs,), generator=generator, device=dev)]  # sorted pos.
        u = (torch.rand(num_pairs, generator=generator, device=dev, dtype=torch.float64) * count[a]).long()
        u = torch.minimum(u, count[a] - 1)  # rand() < 1, but guard the product's rounding
        c = torch.where(u < near_end[a], u, far_start[a] + (u - near_end[a]))
        d_i, d_j = depth[a], depth[c]
        ok = torch.maximum(d_i, d_j) > min_ratio * torch.minimum(d_i, d_j)  # exact restatement of the contract
        pairs_i[k] = torch.where(ok, idx[a], 0)
        pairs_j[k] = torch.where(ok, idx[c], 0)
        labels[k] = torch.where(ok, torch.where(d_i > d_j, 1, -1), 0)
    return pairs_i, pairs_j, labels


def _si_log_rmse_numpy(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    pred, gt = pred.astype(np.float64), gt.astype(np.float64)
    valid = mask.astype(bool) & np.isfinite(gt) & (gt > 0)
    if np.any(valid & ~(np.isfinite(pred) & (pred > 0))):
        raise ValueError("pred_depth must be finite and positive on valid pixels (it is linear depth, not log)")
    values = []
    for p, g, v in zip(pred, gt, valid, strict=True):  # one (1, H, W) image at a time
        if v.any():
            r = np.log(p[v]) - np.log(g[v])
            values.append(math.sqrt(max(float(np.mean(r * r) - np.mean(r) ** 2), 0.0)))
    return float(np.mean(values)) if values else 0.0


def _si_log_rmse_torch(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> float:
    pred = pred.detach().double()
    gt = gt.detach().to(pred.device).double()
    valid = mask.detach().to(pred.device).bool() & torch.isfinite(gt) & (gt > 0)
    if bool((valid & ~(torch.isfinite(pred) & (pred > 0))).any()):
        raise ValueError("pred_depth must be finite and positive on valid pixels (it is linear depth, not log)")
    one = torch.ones_like(pred)
    r = torch.where(valid, torch.log(torch.where(valid, pred, one)) - torch.log(torch.where(valid, gt, one)), 0.0)
    m = valid.double()
    n = m.sum(dim=(1, 2, 3))  # (B,)
    mean_r = r.sum(dim=(1, 2, 3)) / n.clamp(min=1.0)
    mean_r2 = (r * r).sum(dim=(1, 2, 3)) / n.clamp(min=1.0)
    per_image = (mean_r2 - mean_r**2).clamp(min=0.0).sqrt()
    return float(_mean_over_images(per_image, n > 0))


def si_log_rmse(pred_depth, gt_depth, mask) -> float:
    """Scale-invariant log RMSE: sqrt(mean(R^2) - mean(R)^2), R = log(pred_depth) - log(gt_depth) on valid pixels.

    The evaluation metric shared by the evaluation scripts and the tests. It is the standard deviation of
    the log-depth error, so it ignores the global scale of the prediction; a constant prediction scores
    the standard deviation of log gt. Computed in float64, in numpy for numpy inputs and in torch (on the
    inputs' device) when any input is a tensor; the two agree.

    Args:
        pred_depth: (H, W) or (B, 1, H, W) predicted LINEAR depth (exp of the network output), numpy or torch;
            must be finite and positive on valid pixels (ValueError otherwise).
        gt_depth: same shape, ground-truth depth; non-finite or non-positive pixels count as invalid.
        mask: same shape, bool or float, nonzero where gt_depth is valid.

    Returns:
        float: per-image value averaged over images with valid pixels; 0.0 when there are none.
    """
    shapes = [tuple(x.shape) for x in (pred_depth, gt_depth, mask)]
    if not (len(shapes[0]) == 2 or (len(shapes[0]) == 4 and shapes[0][1] == 1)):
        raise ValueError(f"pred_depth must have shape (H, W) or (B, 1, H, W), got {shapes[0]}")
    for name, shape in (("gt_depth", shapes[1]), ("mask", shapes[2])):
        if shape != shapes[0]:
            raise ValueError(f"pred_depth has shape {shapes[0]} but {name} has shape {shape}; they must match")
    arrays = [x.reshape(1, 1, *x.shape) if len(shapes[0]) == 2 else x for x in (pred_depth, gt_depth, mask)]
    if any(isinstance(x, torch.Tensor) for x in arrays):
        ref = next(x for x in arrays if isinstance(x, torch.Tensor))
        return _si_log_rmse_torch(*(x if isinstance(x, torch.Tensor) else torch.as_tensor(x, device=ref.device)
                                    for x in arrays))
    return _si_log_rmse_numpy(*(np.asarray(x) for x in arrays))
