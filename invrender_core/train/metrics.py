"""Evaluation metrics for the inverse-rendering and depth networks (numpy, one image at a time).

Every metric takes a boolean `mask` (H, W) of the pixels to score (e.g. not sky) and returns a float; a mask
without pixels gives NaN, so an average over images can skip it with np.nanmean. Depth's scale-invariant log
RMSE lives in `depth_losses.si_log_rmse`.
"""

from __future__ import annotations

import json

import numpy as np

from .. import sh


def _check(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray, mask: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {a.shape} but {name_b} has shape {b.shape}")
    if mask.shape != a.shape[:2]:
        raise ValueError(f"mask has shape {mask.shape}, expected {a.shape[:2]} to match {name_a} {a.shape}")


def normal_angular_error(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """Mean angle in degrees between unit normal maps pred and gt (H, W, 3) over mask (H, W)."""
    pred, gt, mask = np.asarray(pred, np.float64), np.asarray(gt, np.float64), np.asarray(mask, bool)
    _check("pred", pred, "gt", gt, mask)
    if not mask.any():
        return float("nan")
    p = pred[mask] / np.maximum(np.linalg.norm(pred[mask], axis=-1, keepdims=True), 1e-12)
    g = gt[mask] / np.maximum(np.linalg.norm(gt[mask], axis=-1, keepdims=True), 1e-12)
    return float(np.degrees(np.arccos(np.clip((p * g).sum(-1), -1.0, 1.0))).mean())


def _least_squares_gains(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """(C,) the factor a_c = <p_c, g_c> / <p_c, p_c> that takes each column of p (N, C) closest to g's."""
    return (p * g).sum(0) / np.maximum((p * p).sum(0), 1e-12)


def _channel_gains(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a (C,), p (N, C), g (N, C)): the least-squares factor of each channel of pred (H, W, C) towards gt over
    mask (H, W) (`_least_squares_gains`), and the masked pixels."""
    pred, gt, mask = np.asarray(pred, np.float64), np.asarray(gt, np.float64), np.asarray(mask, bool)
    _check("pred", pred, "gt", gt, mask)
    p, g = pred[mask], gt[mask]  # (N, C)
    return _least_squares_gains(p, g), p, g


def scale_invariant_mse(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """Scale-invariant MSE (Grosse et al. 2009) of images pred and gt (H, W, C) over mask (H, W).

    Each channel of pred is scaled by the least-squares factor a_c = <pred_c, gt_c> / <pred_c, pred_c> before
    the mean squared error, because albedo is only recoverable up to a scale per colour channel (the light's).
    """
    a, p, g = _channel_gains(pred, gt, mask)
    if not len(p):
        return float("nan")
    return float(((a * p - g) ** 2).mean())


def colour_balance_error(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> float:
    """How far the colours of pred (H, W, C) are from gt's over mask (H, W), whatever the brightness: the RMS over
    channels of log(a_c / geometric mean of a), a_c the per-channel factors of `scale_invariant_mse`. That metric
    forgives any colour cast; this one measures it (0: the right colours; a cast of x % in one of three channels:
    about 0.47 x / 100)."""
    a, p, _ = _channel_gains(pred, gt, mask)
    if not len(p) or not (a > 0).all():
        return float("nan")
    log_a = np.log(a)
    return float(np.sqrt(np.mean((log_a - log_a.mean()) ** 2)))


def shadow_iou(pred_shadow: np.ndarray, gt_shadow: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    """Intersection over union of the shadowed regions (visibility < threshold) of two (H, W) maps over mask.

    NaN when neither map has a shadowed pixel (nothing to score).
    """
    pred_shadow, gt_shadow = np.asarray(pred_shadow, np.float64), np.asarray(gt_shadow, np.float64)
    mask = np.asarray(mask, bool)
    _check("pred_shadow", pred_shadow, "gt_shadow", gt_shadow, mask)
    return mask_iou((pred_shadow < threshold) & mask, (gt_shadow < threshold) & mask)


def mask_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two (H, W) bool masks; NaN when neither has a pixel (nothing to score)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    union = (pred | truth).sum()
    return float((pred & truth).sum() / union) if union else float("nan")


def lighting_error(pred_sh: np.ndarray, gt_sh: np.ndarray, samples: int = 2000) -> float:
    """Scale-invariant relative RMS error of the shading two SH lightings (9, 3) give over the sphere.

    Shading E(n) = basis(n) @ L is compared on `samples` Fibonacci-sphere directions after giving pred the
    least-squares scale per channel (lighting and albedo share an unknown scale); normalised by the RMS of the
    true shading, so 0 is perfect and 1 is as bad as predicting no light at all.
    """
    pred_sh, gt_sh = np.asarray(pred_sh, np.float64), np.asarray(gt_sh, np.float64)
    if pred_sh.shape != (9, 3) or gt_sh.shape != (9, 3):
        raise ValueError(f"lightings must have shape (9, 3), got {pred_sh.shape} and {gt_sh.shape}")
    dirs = sh._fibonacci_sphere(samples)
    p, g = sh.shading(dirs, pred_sh), sh.shading(dirs, gt_sh)  # (N, 3)
    a = _least_squares_gains(p, g)
    return float(np.sqrt(((a * p - g) ** 2).mean() / max((g * g).mean(), 1e-12)))


def print_and_write(scores: dict, path=None) -> None:
    """An evaluation's scores as indented JSON on stdout, and also in the file `path` (a Path; None: not written),
    its folder made when missing."""
    text = json.dumps(scores, indent=2)
    print(text)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
