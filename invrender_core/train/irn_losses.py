"""Self-supervised training losses of InverseRenderNet (Yu & Smith, CVPR 2019) and its shadow decoder (IRN++).

Image formation (DESIGN.md): image_linear ≈ albedo · shadow · E(normal), with the SH lighting solved per image
by least squares inside the network. That solve makes each image's albedo scale free: albedo · c with lighting
/ c renders the same image. Every term here that compares albedos is therefore invariant to a per-image
albedo scale (log-space differences, or a per-pair scale solved in closed form), so no term can be lowered by
shrinking the albedo while the lighting grows.

Terms (all batch-first torch, maps (B, C, H, W), masks (B, 1, H, W) bool or float with nonzero = valid):

- `rerender_loss`: image vs albedo · shadow · shading, L1 in sRGB-encoded space.
- `albedo_consistency_loss`: cross-view albedo agreement, L1 of mean-centred log-albedo differences.
- `cross_render_loss`: view i re-rendered with view j's warped albedo (per-pair scale in closed form).
- `normal_loss` = `normal_angular_loss` + `normal_gradient_loss`: supervision from MVS normals, which
  `normals_from_depth_torch` computes from MVS depth.
- `albedo_smoothness_loss`: chromaticity-weighted L1 smoothness of log albedo.
- `illumination_prior_loss` (`illumination_prior_nll`): negative log-likelihood under the scale-free
  `IlluminationPrior`.
- `shadow_consistency_loss`, `shadow_prior_loss`: IRN++ shadows agree across views of the same moment and are
  mostly lit.
- `shadow_ratio_loss`: one view under two lights: the ratio of the photos, free of albedo, is for shadows and
  shading to explain.
- `IRNLossWeights`, `combine`: default weights and the weighted sum the trainer logs term by term.

Reduction (as `depth_losses`): a mean over the valid pixels (or neighbour pairs) of each image, then a mean over
the images that have any; an image without valid pixels is skipped, and a batch without any gives an exact 0
still attached to the graph of the predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ..geometry import DEFAULT_DISCONTINUITY_THRESHOLD
from ..illumination_prior import IlluminationPrior
from ..sh import LUMINANCE

__all__ = [
    "IRNLossWeights",
    "albedo_consistency_loss",
    "albedo_smoothness_loss",
    "combine",
    "cross_render_loss",
    "illumination_prior_loss",
    "illumination_prior_nll",
    "normal_angular_loss",
    "normal_gradient_loss",
    "normal_loss",
    "normals_from_depth_torch",
    "rerender_loss",
    "shadow_consistency_loss",
    "shadow_prior_loss",
    "shadow_ratio_loss",
    "smooth_depth",
    "srgb_encode",
]

RATIO_LOG_EPS = 1e-3  # `shadow_ratio_loss`: log(x + eps) of linear photos; bounds the weight of near-black pixels
ALBEDO_LOG_EPS = 1e-3  # log(albedo + eps): albedo is a sigmoid in (0, 1); eps bounds the weight of near-black texels
CHROMA_SIGMA = 0.05  # chromaticity difference at which the smoothness weight falls to 1/e (see the function)
PRIOR_MIN_RELATIVE_SCALE = 0.01  # floor of DC luminance / |L|; physical lighting is above ~0.19 (a point light)
_SRGB_LINEAR_THRESHOLD = 0.0031308


# ----------------------------------------------------------------------------------------------------
# checks and reduction helpers


def _check_map(name: str, x: torch.Tensor, channels: int | tuple[int, ...]) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    allowed = (channels,) if isinstance(channels, int) else channels
    if x.ndim != 4 or x.shape[1] not in allowed:
        want = " or ".join(f"(B, {c}, H, W)" for c in allowed)
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")


def _check_same_size(ref_name: str, ref: torch.Tensor, **others: torch.Tensor) -> None:
    """Every tensor in `others` has ref's batch size and H, W (channels are checked by `_check_map`)."""
    b, _, h, w = ref.shape
    for name, t in others.items():
        if (t.shape[0], *t.shape[2:]) != (b, h, w):
            raise ValueError(f"{ref_name} has shape {tuple(ref.shape)} but {name} has shape {tuple(t.shape)}; "
                             "batch size, height and width must match")


def _valid(mask: torch.Tensor, like: torch.Tensor, *data: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) bool: mask nonzero and every data map (B, C, H, W) finite in all channels."""
    valid = mask.to(like.device).bool()
    for t in data:
        valid = valid & torch.isfinite(t).all(dim=1, keepdim=True)
    return valid


def _mean_over_images(per_image: torch.Tensor, has_data: torch.Tensor) -> torch.Tensor:
    """Mean of per_image (B,) over the images with has_data (B,) bool; 0 (graph kept) when none has."""
    weights = has_data.to(per_image.dtype)
    return (per_image * weights).sum() / weights.sum().clamp(min=1.0)


def _masked_mean(per_pixel: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """per_pixel (B, 1, H, W), valid (B, 1, H, W) bool -> mean over valid pixels per image, then over images."""
    # where(), not a product: an invalid pixel's NaN (e.g. log of garbage) must not reach values or gradients.
    values = torch.where(valid, per_pixel, torch.zeros_like(per_pixel))
    n = valid.to(per_pixel.dtype).sum(dim=(1, 2, 3))  # (B,)
    return _mean_over_images(values.sum(dim=(1, 2, 3)) / n.clamp(min=1.0), n > 0)


def _pair_mean(dx: torch.Tensor, valid_x: torch.Tensor, dy: torch.Tensor, valid_y: torch.Tensor) -> torch.Tensor:
    """Mean of horizontal (B, 1, H, W-1) and vertical (B, 1, H-1, W) neighbour-pair terms over valid pairs."""
    sx = torch.where(valid_x, dx, torch.zeros_like(dx)).sum(dim=(1, 2, 3))
    sy = torch.where(valid_y, dy, torch.zeros_like(dy)).sum(dim=(1, 2, 3))
    n = valid_x.to(dx.dtype).sum(dim=(1, 2, 3)) + valid_y.to(dx.dtype).sum(dim=(1, 2, 3))  # (B,)
    return _mean_over_images((sx + sy) / n.clamp(min=1.0), n > 0)


def _neighbour_abs_mean(x: torch.Tensor, ok: torch.Tensor, wx: torch.Tensor | None = None,
                        wy: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over pairs of valid neighbours (ok (B, 1, H, W) bool) of the channel-mean |x_p - x_q| of x (B, C, H, W),
    each pair weighted by wx (B, 1, H, W-1) / wy (B, 1, H-1, W) when given."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dim=1, keepdim=True)  # (B, 1, H, W-1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dim=1, keepdim=True)  # (B, 1, H-1, W)
    if wx is not None:
        dx, dy = wx * dx, wy * dy
    return _pair_mean(dx, ok[..., :, 1:] & ok[..., :, :-1], dy, ok[..., 1:, :] & ok[..., :-1, :])


def srgb_encode(x: torch.Tensor) -> torch.Tensor:
    """The sRGB transfer curve (as `io.linear_to_srgb`), differentiable; the linear toe continues below 0.

    Continuing the toe keeps a finite slope (12.92) for negative renderings (SH shading can be negative), so
    they are still pushed up, where clamping at 0 would give them no gradient.
    """
    high = 1.055 * x.clamp(min=_SRGB_LINEAR_THRESHOLD) ** (1.0 / 2.4) - 0.055  # clamp: no NaN grad below
    return torch.where(x <= _SRGB_LINEAR_THRESHOLD, 12.92 * x, high)


def _log_albedo(albedo: torch.Tensor, eps: float) -> torch.Tensor:
    # clamp: a negative input (not a sigmoid output) must give a finite log, not NaN.
    return torch.log(albedo.clamp(min=0.0) + eps)


# ----------------------------------------------------------------------------------------------------
# re-rendering


def rerender_loss(image: torch.Tensor, albedo: torch.Tensor, shadow: torch.Tensor, shading: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
    """L1 between the photo and its re-rendering albedo · shadow · shading, both sRGB-encoded.

    Compared in sRGB-encoded space (the curve the photos were stored with, close to perceived lightness):
    in linear space bright pixels dominate and shadows are ignored; in log space dark, noisy pixels dominate
    and the slope is unbounded at 0. The sRGB curve has a bounded slope (12.92 at the toe, continued for
    negative renderings). L1 rather than IRN's L2 so that pixels the Lambertian model cannot explain
    (speculars, mis-masked sky) do not dominate. Per pixel: mean over the 3 channels.

    Args:
        image: (B, 3, H, W) linear photo.
        albedo: (B, 3, H, W).
        shadow: (B, 1, H, W) (or (B, 3, H, W)) in [0, 1].
        shading: (B, 3, H, W) E(normal).
        mask: (B, 1, H, W) bool or float, nonzero = pixel used (e.g. not sky).

    Returns:
        0-dim tensor.
    """
    _check_map("image", image, 3)
    _check_map("albedo", albedo, 3)
    _check_map("shadow", shadow, (1, 3))
    _check_map("shading", shading, 3)
    _check_map("mask", mask, 1)
    _check_same_size("image", image, albedo=albedo, shadow=shadow, shading=shading, mask=mask)
    valid = _valid(mask, image, image)
    target = torch.where(torch.isfinite(image), image, torch.zeros_like(image))
    render = albedo * shadow * shading  # (B, 3, H, W)
    per_pixel = (srgb_encode(target) - srgb_encode(render)).abs().mean(dim=1, keepdim=True)
    return _masked_mean(per_pixel, valid)


def cross_render_loss(image_i: torch.Tensor, albedo_j_warped: torch.Tensor, shadow_i: torch.Tensor,
                      shading_i: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Re-render view i with view j's albedo warped into view i: `rerender_loss` after a per-pair albedo scale.

    View j's albedo has its own arbitrary scale (see the module docstring), so it is first multiplied by the
    scale k >= 0 that best fits view i's photo in the least-squares sense over the valid pixels,
    k = <image_i, R> / <R, R> with R = albedo_j_warped · shadow_i · shading_i (one scalar per image, as
    IRN's per-pair scale). A consistent decomposition gives 0 whatever the two albedo scales.

    Args:
        image_i: (B, 3, H, W) linear photo of view i.
        albedo_j_warped: (B, 3, H, W) albedo of view j sampled at view i's pixels (`multiview.warp_to_view`).
        shadow_i: (B, 1, H, W) (or (B, 3, H, W)) shadow of view i.
        shading_i: (B, 3, H, W) shading of view i.
        valid: (B, 1, H, W) where the warp is valid (and view i's mask).

    Returns:
        0-dim tensor.
    """
    _check_map("image_i", image_i, 3)
    _check_map("albedo_j_warped", albedo_j_warped, 3)
    _check_map("shadow_i", shadow_i, (1, 3))
    _check_map("shading_i", shading_i, 3)
    _check_map("valid", valid, 1)
    _check_same_size("image_i", image_i, albedo_j_warped=albedo_j_warped, shadow_i=shadow_i, shading_i=shading_i,
                     valid=valid)
    ok = _valid(valid, image_i, image_i, albedo_j_warped)
    m = ok.to(image_i.dtype)
    target = torch.where(torch.isfinite(image_i), image_i, torch.zeros_like(image_i))
    render = torch.where(ok, albedo_j_warped, torch.zeros_like(albedo_j_warped)) * shadow_i * shading_i
    num = (m * target * render).sum(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    den = (m * render * render).sum(dim=(1, 2, 3), keepdim=True)
    k = (num / den.clamp(min=1e-12)).clamp(min=0.0)  # a scale of albedo is positive
    per_pixel = (srgb_encode(target) - srgb_encode(k * render)).abs().mean(dim=1, keepdim=True)
    return _masked_mean(per_pixel, ok)


# ----------------------------------------------------------------------------------------------------
# albedo


def albedo_consistency_loss(albedo_i: torch.Tensor, albedo_j_warped: torch.Tensor, valid: torch.Tensor,
                            per_channel: bool = False, eps: float = ALBEDO_LOG_EPS) -> torch.Tensor:
    """Albedo of the same surface point agrees across views, up to each view's albedo scale.

    r = log(albedo_i + eps) - log(albedo_j_warped + eps) per pixel and channel; the per-pair log scale
    c = mean of r over the valid pixels (and channels; per channel when per_channel) is removed, and the loss
    is the mean of |r - c|. Removing c makes the loss invariant to scaling either albedo by any positive
    factor (exactly when eps = 0), which the per-image lighting solve leaves free; a plain L1 could be
    lowered by shrinking both albedos, and IRN's one-sided scale fit (|a_i - k a_j|²) by shrinking a_i.
    The loss is symmetric in i and j. Keep per_channel False when the views share a white balance (it
    then also ties the albedo colour across views); True forgives a per-view colour cast too.

    Args:
        albedo_i: (B, 3, H, W) albedo of view i.
        albedo_j_warped: (B, 3, H, W) albedo of view j warped into view i.
        valid: (B, 1, H, W) bool or float, where the warp is valid (and view i's mask).
        per_channel: solve one scale per RGB channel instead of one per pair.
        eps: offset inside the log, >= 0.

    Returns:
        0-dim tensor.
    """
    _check_map("albedo_i", albedo_i, 3)
    _check_map("albedo_j_warped", albedo_j_warped, 3)
    _check_map("valid", valid, 1)
    _check_same_size("albedo_i", albedo_i, albedo_j_warped=albedo_j_warped, valid=valid)
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    ok = _valid(valid, albedo_i, albedo_j_warped)
    m = ok.to(albedo_i.dtype)
    r = torch.where(ok, _log_albedo(albedo_i, eps) - _log_albedo(albedo_j_warped, eps), torch.zeros_like(albedo_i))
    dims = (2, 3) if per_channel else (1, 2, 3)
    count = m.sum(dim=dims, keepdim=True) * (1 if per_channel else 3)  # pixel-channel values per scale
    c = r.sum(dim=dims, keepdim=True) / count.clamp(min=1.0)  # (B, 3 or 1, 1, 1)
    per_pixel = (r - c).abs().mean(dim=1, keepdim=True)
    return _masked_mean(per_pixel, ok)


def albedo_smoothness_loss(albedo: torch.Tensor, image: torch.Tensor, mask: torch.Tensor,
                           sigma: float = CHROMA_SIGMA, eps: float = ALBEDO_LOG_EPS) -> torch.Tensor:
    """Chromaticity-weighted smoothness: neighbours of similar image colour should have similar albedo.

    For each horizontal and vertical pair of valid neighbours p, q:
    w = exp(-|chroma(p) - chroma(q)|² / sigma²) with chroma = rgb / (r + g + b) of the linear image (shading
    with white light cancels, so equal chroma suggests equal material), and the penalty is
    w · mean over channels |log(albedo_p + eps) - log(albedo_q + eps)|, averaged over the valid pairs.
    The albedo difference is taken in log space (Retinex) so the term is scale invariant: a plain L1 could
    be lowered by shrinking the albedo, which the lighting solve would compensate. With sigma = 0.05 one
    material under one light colour (chroma noise < 0.02) keeps a weight > 0.85, while a change of material
    (brick vs grey stone: chroma distance 0.16, weight 3e-5) or of light colour (sun-lit vs sky-lit, ~0.12)
    is cut. The weights carry no gradient.

    Args:
        albedo: (B, 3, H, W).
        image: (B, 3, H, W) linear photo.
        mask: (B, 1, H, W) bool or float, nonzero = pixel used.
        sigma: chromaticity scale, > 0.
        eps: offset inside the log, >= 0.

    Returns:
        0-dim tensor.
    """
    _check_map("albedo", albedo, 3)
    _check_map("image", image, 3)
    _check_map("mask", mask, 1)
    _check_same_size("albedo", albedo, image=image, mask=mask)
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma!r}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    ok = _valid(mask, albedo, image)
    with torch.no_grad():
        img = torch.where(torch.isfinite(image), image, torch.zeros_like(image)).clamp(min=0.0).to(albedo.dtype)
        chroma = img / img.sum(dim=1, keepdim=True).clamp(min=1e-6)  # (B, 3, H, W); black pixels -> 0

        def weight(a, b):
            return torch.exp(-((a - b) ** 2).sum(dim=1, keepdim=True) / sigma**2)

        wx = weight(chroma[..., :, 1:], chroma[..., :, :-1])  # (B, 1, H, W-1)
        wy = weight(chroma[..., 1:, :], chroma[..., :-1, :])  # (B, 1, H-1, W)
    return _neighbour_abs_mean(_log_albedo(albedo, eps), ok, wx, wy)


def shading_smoothness_loss(shading: torch.Tensor, mask: torch.Tensor, eps: float = ALBEDO_LOG_EPS) -> torch.Tensor:
    """Mean |log lum(shading_p) - log lum(shading_q)| over horizontal and vertical pairs of valid neighbours.

    Shading E(n) varies with the surface's orientation, which changes little from pixel to pixel except at
    edges; texture is albedo. Without this term, a fine-tuning run whose shadow map had been freed by
    `shadow_sparsity_loss` explained three quarters of the photos' fine luminance detail by normals that
    followed the texture, leaving the albedo one flat colour. L1, so the few real creases stay sharp; log
    luminance, so the lighting's scale and colour do not matter.

    Args:
        shading: (B, 3, H, W) E(normal), > 0 where valid.
        mask: (B, 1, H, W).
        eps: offset inside the log, >= 0.

    Returns:
        0-dim tensor.
    """
    _check_map("shading", shading, 3)
    _check_map("mask", mask, 1)
    _check_same_size("shading", shading, mask=mask)
    ok = _valid(mask, shading)
    to_luminance = torch.as_tensor(LUMINANCE, dtype=shading.dtype, device=shading.device).view(1, 3, 1, 1)
    log_lum = torch.log((shading * to_luminance).sum(dim=1, keepdim=True).clamp(min=0.0) + eps)
    return _neighbour_abs_mean(log_lum, ok)


# ----------------------------------------------------------------------------------------------------
# normals


def smooth_depth(depth: torch.Tensor, radius: int = 2, min_support: float = 0.5) -> torch.Tensor:
    """Masked box smoothing (normalised convolution) of MVS depth (B, 1, H, W), 0 = missing -> same shape.

    Each valid pixel becomes the mean of the valid depths in its (2 radius + 1)² window, kept only where at least
    `min_support` of the window is valid; missing pixels stay 0. Normals from per-pixel-noisy MVS depth are
    mostly noise (1 % depth noise gives ~40 degrees mean error at 192 x 128 on the project's renders); the box
    mean keeps planes exact (it is linear) and brings that to ~20 degrees.
    """
    _check_map("depth", depth, 1)
    if radius < 0 or not 0.0 < min_support <= 1.0:
        raise ValueError(f"radius must be >= 0 and min_support in (0, 1], got {radius}, {min_support}")
    if radius == 0:
        return depth
    valid = (depth > 0).to(depth.dtype)
    size = 2 * radius + 1
    total = F.avg_pool2d(depth * valid, size, stride=1, padding=radius, count_include_pad=False)
    support = F.avg_pool2d(valid, size, stride=1, padding=radius, count_include_pad=False)
    keep = (valid > 0) & (support >= min_support)
    return torch.where(keep, total / support.clamp(min=1e-12), torch.zeros_like(depth))


def normals_from_depth_torch(depth: torch.Tensor, K: torch.Tensor,
                             discontinuity_threshold: float | None = DEFAULT_DISCONTINUITY_THRESHOLD,
                             one_sided: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit camera-frame normals of the surface seen in planar depth, by differences of back-projected points.

    The torch twin of `geometry.normals_from_depth`, batched: pixel centres are back-projected with K, the
    tangents along u and v are central differences of the points (the mean of the forward and backward
    differences), and n = dP/dv x dP/du, flipped to face the viewer. A difference is used only between two
    valid depths (finite, > 0) whose relative jump |d_a - d_b| / min(d_a, d_b) is <= discontinuity_threshold
    (None: any jump). With one_sided False (the default, for supervision) a pixel is valid only when both
    neighbours along both axes are usable, so no normal is estimated from one side of a hole or an occlusion;
    with one_sided True a one-sided difference is accepted where one neighbour is missing, exactly as the
    numpy function. Invalid pixels get (0, 0, 1), so the output is NaN-free.

    Args:
        depth: (B, 1, H, W) planar depth (MVS depth: 0 = missing).
        K: (B, 3, 3) intrinsics at the depth map's resolution (last row [0, 0, 1]).
        discontinuity_threshold: relative depth jump that cuts a difference, or None.
        one_sided: accept one-sided differences (see above).

    Returns:
        normals: (B, 3, H, W) in depth's dtype, unit where valid.
        valid: (B, 1, H, W) bool.
    """
    _check_map("depth", depth, 1)
    b, _, h, w = depth.shape
    if not isinstance(K, torch.Tensor) or tuple(K.shape) != (b, 3, 3):
        shape = tuple(K.shape) if isinstance(K, torch.Tensor) else type(K).__name__
        raise ValueError(f"K must have shape ({b}, 3, 3) for depth {tuple(depth.shape)}, got {shape}")
    if discontinuity_threshold is not None and not discontinuity_threshold >= 0:
        raise ValueError(f"discontinuity_threshold must be >= 0 or None, got {discontinuity_threshold!r}")
    dtype, dev = depth.dtype, depth.device
    valid = torch.isfinite(depth) & (depth > 0)  # (B, 1, H, W)
    d = torch.where(valid, depth, torch.zeros_like(depth))

    v, u = torch.meshgrid(torch.arange(h, device=dev, dtype=torch.float64) + 0.5,
                          torch.arange(w, device=dev, dtype=torch.float64) + 0.5, indexing="ij")
    pix = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones_like(u.reshape(-1))])  # (3, N)
    rays = torch.linalg.solve(K.detach().to(device=dev, dtype=torch.float64), pix.expand(b, 3, h * w))  # (x,-y,1)
    rays = rays * torch.tensor([1.0, -1.0, -1.0], device=dev, dtype=torch.float64)[:, None]  # (x, y, -1)
    P = d * rays.to(dtype).reshape(b, 3, h, w)  # (B, 3, H, W) camera-frame points

    def link(da, db, va, vb):
        ok = va & vb
        if discontinuity_threshold is None:
            return ok
        return ok & ((da - db).abs() <= discontinuity_threshold * torch.minimum(da, db))

    def derivative(axis):  # axis -1: along u (columns), -2: along v (rows)
        n = P.shape[axis]
        a, c = (lambda t: t.narrow(axis, 0, n - 1)), (lambda t: t.narrow(axis, 1, n - 1))
        lk = link(a(d), c(d), a(valid), c(valid))  # (B, 1, ...) pairs (k, k+1)
        diff = torch.where(lk, c(P) - a(P), torch.zeros_like(a(P)))
        pad_after = (0, 1) if axis == -1 else (0, 0, 0, 1)  # pair k is pixel k's forward difference
        pad_before = (1, 0) if axis == -1 else (0, 0, 1, 0)  # ... and pixel k+1's backward difference
        total = F.pad(diff, pad_after) + F.pad(diff, pad_before)
        lkf = lk.to(dtype)
        count = F.pad(lkf, pad_after) + F.pad(lkf, pad_before)  # (B, 1, H, W) in {0, 1, 2}
        return total / count.clamp(min=1.0), count

    dP_du, count_u = derivative(-1)
    dP_dv, count_v = derivative(-2)
    n = torch.linalg.cross(dP_dv, dP_du, dim=1)  # (down) x (right) faces the viewer (y up, v down)
    length = n.norm(dim=1, keepdim=True)
    need = 1 if one_sided else 2
    ok = valid & (count_u >= need) & (count_v >= need) & (length > 0)
    n = n / torch.where(ok, length, torch.ones_like(length))
    n = torch.where((n * P).sum(dim=1, keepdim=True) > 0, -n, n)  # a depth map only shows front faces
    fallback = torch.tensor([0.0, 0.0, 1.0], device=dev, dtype=dtype)[None, :, None, None].expand_as(n)
    return torch.where(ok, n, fallback), ok


def normal_angular_loss(normals: torch.Tensor, mvs_normals: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(angle) between predicted and MVS normals over valid pixels (0 when equal, 2 opposite).

    Both maps are normalised first, so only directions count. 1 - cos rather than IRN's squared angle: it is
    smooth at 0 (acos has an infinite slope at cos = 1, which IRN had to clip).

    Args:
        normals: (B, 3, H, W) predicted normals.
        mvs_normals: (B, 3, H, W) normals from MVS depth (`normals_from_depth_torch`).
        valid: (B, 1, H, W), e.g. the valid map of `normals_from_depth_torch` and the image mask.

    Returns:
        0-dim tensor.
    """
    _check_map("normals", normals, 3)
    _check_map("mvs_normals", mvs_normals, 3)
    _check_map("valid", valid, 1)
    _check_same_size("normals", normals, mvs_normals=mvs_normals, valid=valid)
    ok = _valid(valid, normals, mvs_normals)
    target = torch.where(ok, mvs_normals, torch.ones_like(mvs_normals))
    cos = F.cosine_similarity(normals, target.to(normals.dtype), dim=1, eps=1e-8).unsqueeze(1)  # (B, 1, H, W)
    return _masked_mean(1.0 - cos, ok)


def normal_gradient_loss(normals: torch.Tensor, mvs_normals: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """L1 difference of the spatial gradients of the predicted and MVS normal maps.

    For each horizontal and vertical pair of valid neighbours, |Δ normals - Δ mvs_normals| averaged over the
    3 components, then over the valid pairs: the predicted normals must change where the MVS surface
    changes (edges, creases) and stay flat where it is flat, even where a constant angular offset remains.
    L1 rather than IRN's L2 because MVS normals are noisy.

    Args:
        normals: (B, 3, H, W) predicted normals.
        mvs_normals: (B, 3, H, W) normals from MVS depth.
        valid: (B, 1, H, W).

    Returns:
        0-dim tensor.
    """
    _check_map("normals", normals, 3)
    _check_map("mvs_normals", mvs_normals, 3)
    _check_map("valid", valid, 1)
    _check_same_size("normals", normals, mvs_normals=mvs_normals, valid=valid)
    ok = _valid(valid, normals, mvs_normals)
    e = normals - torch.where(ok, mvs_normals, torch.zeros_like(mvs_normals)).to(normals.dtype)  # error map
    return _neighbour_abs_mean(e, ok)


def normal_loss(normals: torch.Tensor, mvs_normals: torch.Tensor, valid: torch.Tensor,
                gradient_weight: float = 1.0) -> torch.Tensor:
    """`normal_angular_loss` + gradient_weight · `normal_gradient_loss` (shapes as those; 0-dim tensor)."""
    return (normal_angular_loss(normals, mvs_normals, valid)
            + gradient_weight * normal_gradient_loss(normals, mvs_normals, valid))


# ----------------------------------------------------------------------------------------------------
# lighting prior


def illumination_prior_nll(lighting: torch.Tensor, prior: IlluminationPrior,
                           min_relative_scale: float = PRIOR_MIN_RELATIVE_SCALE) -> torch.Tensor:
    """Per-item negative log-likelihood of lighting under the prior, without its constant: (B,).

    The torch twin of `IlluminationPrior.log_prob`: L is divided by its DC luminance s = LUMINANCE · L[0]
    (the prior is on exposure-normalised lighting, so the value is scale-free), and the result is
    0.5 · (Ln - mean)ᵀ P (Ln - mean) with the prior's regularised precision P. It equals
    -log_prob(L) - 0.5 · (logdet Σ + 27 log 2π), so it is 0 at the prior mean.

    Where log_prob gives -inf (s <= 0, non-physical lighting), s is replaced by min_relative_scale · |L|
    (Frobenius norm; scale-free, so the value stays scale invariant): the penalty is large but finite and
    keeps a gradient. Physical lighting always has s / |L| above ~0.19 (a single point light), so the floor
    never changes their value.

    Args:
        lighting: (B, 9, 3) SH lighting, camera frame (the prior's frame).
        prior: the `IlluminationPrior`.
        min_relative_scale: floor of s / |L|, > 0.

    Returns:
        (B,) tensor in lighting's dtype.
    """
    if not isinstance(lighting, torch.Tensor) or lighting.ndim != 3 or tuple(lighting.shape[1:]) != (9, 3):
        shape = tuple(lighting.shape) if isinstance(lighting, torch.Tensor) else type(lighting).__name__
        raise ValueError(f"lighting must have shape (B, 9, 3), got {shape}")
    if not isinstance(prior, IlluminationPrior):
        raise TypeError(f"prior must be an IlluminationPrior, got {type(prior).__name__}")
    if not min_relative_scale > 0:
        raise ValueError(f"min_relative_scale must be positive, got {min_relative_scale!r}")
    kw = dict(device=lighting.device, dtype=lighting.dtype)
    mean, precision = prior.gaussian(scale=1.0)  # (27,), (27, 27) of unit-exposure lighting
    mean, precision = torch.as_tensor(mean, **kw), torch.as_tensor(precision, **kw)
    b = lighting.shape[0]
    s = lighting[:, 0, :] @ torch.as_tensor(LUMINANCE, **kw)  # (B,) DC luminance
    floor = min_relative_scale * lighting.reshape(b, 27).norm(dim=1)
    s = torch.maximum(s, floor).clamp(min=torch.finfo(lighting.dtype).tiny)  # tiny: an all-zero L gives Ln = 0
    d = (lighting / s[:, None, None]).reshape(b, 27) - mean  # (B, 27), coefficient-major like the prior
    return 0.5 * torch.einsum("bi,ij,bj->b", d, precision, d)


def illumination_prior_loss(lighting: torch.Tensor, prior: IlluminationPrior,
                            min_relative_scale: float = PRIOR_MIN_RELATIVE_SCALE) -> torch.Tensor:
    """Mean over the batch of `illumination_prior_nll` (lighting (B, 9, 3)): 0-dim tensor.

    Typical natural lighting scores ~12 (half the mean Mahalanobis² of samples of the prior, 27 dimensions
    with some below the variance floor); 0 at the prior mean.
    """
    return illumination_prior_nll(lighting, prior, min_relative_scale).mean()


# ----------------------------------------------------------------------------------------------------
# shadows (IRN++)


def shadow_consistency_loss(shadow_i: torch.Tensor, shadow_j_warped: torch.Tensor,
                            valid: torch.Tensor) -> torch.Tensor:
    """Mean |shadow_i - shadow_j_warped| over valid pixels: views of one moment share the sun, so a surface
    point is lit or shadowed in both. No scale is solved: shadow is absolute (1 = lit).

    Args:
        shadow_i: (B, 1, H, W) shadow of view i in [0, 1].
        shadow_j_warped: (B, 1, H, W) shadow of view j warped into view i.
        valid: (B, 1, H, W).

    Returns:
        0-dim tensor.
    """
    _check_map("shadow_i", shadow_i, 1)
    _check_map("shadow_j_warped", shadow_j_warped, 1)
    _check_map("valid", valid, 1)
    _check_same_size("shadow_i", shadow_i, shadow_j_warped=shadow_j_warped, valid=valid)
    ok = _valid(valid, shadow_i, shadow_j_warped)
    return _masked_mean((shadow_i - shadow_j_warped).abs(), ok)


def shadow_ratio_loss(image_i: torch.Tensor, image_j_warped: torch.Tensor, shadow_i: torch.Tensor,
                      shadow_j_warped: torch.Tensor, shading_i: torch.Tensor, shading_j_warped: torch.Tensor,
                      valid: torch.Tensor, eps: float = RATIO_LOG_EPS) -> torch.Tensor:
    """Two photos of one view under two lights (j warped into i): their albedo cancels in the ratio of the photos,
    which shadows and shading alone must explain. Mean over valid pixels and channels of
    |log(I_i / I_j) - log(S_i E_i / (S_j E_j))|, each log of a value + eps.

    Shading is a smooth function of the normals, which both photos share, so the sharp edges of the ratio (a cast
    shadow that moved) can only go into the shadow maps; a shadow map that copied texture would cancel too, and
    is left to the sparse-shadow prior.

    Args:
        image_i, image_j_warped: (B, 3, H, W) linear photos of one view under two lights (j warped into i).
        shadow_i, shadow_j_warped: (B, 1, H, W) in [0, 1].
        shading_i, shading_j_warped: (B, 3, H, W).
        valid: (B, 1, H, W), where the warp is valid and the two photos have different lights.
        eps: offset inside the logs, >= 0.

    Returns:
        0-dim tensor.
    """
    for name, x, c in (("image_i", image_i, 3), ("image_j_warped", image_j_warped, 3), ("shadow_i", shadow_i, 1),
                       ("shadow_j_warped", shadow_j_warped, 1), ("shading_i", shading_i, 3),
                       ("shading_j_warped", shading_j_warped, 3), ("valid", valid, 1)):
        _check_map(name, x, c)
    _check_same_size("image_i", image_i, image_j_warped=image_j_warped, shadow_i=shadow_i,
                     shadow_j_warped=shadow_j_warped, shading_i=shading_i, shading_j_warped=shading_j_warped,
                     valid=valid)
    ok = _valid(valid, image_i, image_j_warped, shading_i, shading_j_warped)

    def log(x):
        return torch.log(x.clamp(min=0.0) + eps)

    observed = log(image_i) - log(image_j_warped)  # (B, 3, H, W)
    modelled = log(shadow_i) - log(shadow_j_warped) + log(shading_i) - log(shading_j_warped)
    per_pixel = torch.where(ok, observed - modelled, torch.zeros_like(observed)).abs().mean(dim=1, keepdim=True)
    return _masked_mean(per_pixel, ok)


def shadow_prior_loss(shadow: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of (1 - shadow) over valid pixels: most of an outdoor scene is lit, so shadow is sparse.

    Without it the shadow map can absorb shading or albedo darkening (albedo · shadow is only known as a
    product); with a small weight only darkening the re-rendering needs survives.

    Args:
        shadow: (B, 1, H, W) in [0, 1] (1 = lit).
        mask: (B, 1, H, W).

    Returns:
        0-dim tensor.
    """
    _check_map("shadow", shadow, 1)
    _check_map("mask", mask, 1)
    _check_same_size("shadow", shadow, mask=mask)
    return _masked_mean(1.0 - shadow, _valid(mask, shadow))


SPARSITY_LIT_QUANTILE = 0.9  # `shadow_sparsity_loss`: the share of an image's pixels at most as lit as "lit"
SHADOW_LOG_EPS = 1e-6


def shadow_sparsity_loss(shadow: torch.Tensor, mask: torch.Tensor, quantile: float = SPARSITY_LIT_QUANTILE,
                         eps: float = SHADOW_LOG_EPS) -> torch.Tensor:
    """Scale-free sparse-shadow prior: mean of max(0, log q - log shadow) over valid pixels, q = the image's
    `quantile` of shadow (no gradient).

    `shadow_prior_loss` measures darkness against 1, but the lighting solve absorbs any scale of the shadow
    map, so a network can shrink the whole map (irn-small's is ~4e-5), where the sigmoid's gradient vanishes
    and that prior stops acting: irn-small's map follows the photo's brightness. Measured against the image's
    own lit level, in log space (whose gradient through a sigmoid, 1 - shadow, does not vanish), darkening
    costs the same at any scale of the map.

    Args:
        shadow: (B, 1, H, W) in [0, 1].
        mask: (B, 1, H, W).
        quantile: in (0, 1].
        eps: offset inside the log, >= 0.

    Returns:
        0-dim tensor.
    """
    _check_map("shadow", shadow, 1)
    _check_map("mask", mask, 1)
    _check_same_size("shadow", shadow, mask=mask)
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    valid = _valid(mask, shadow)
    log_shadow = torch.log(shadow.clamp(min=0.0) + eps)
    lit = []
    for b in range(shadow.shape[0]):
        values = log_shadow[b][valid[b]].detach()
        lit.append(torch.quantile(values, quantile) if values.numel() else values.new_zeros(()))
    lit_level = torch.stack(lit).view(-1, 1, 1, 1)
    return _masked_mean(torch.relu(lit_level - log_shadow), valid)


# ----------------------------------------------------------------------------------------------------
# weights


@dataclass(frozen=True)
class IRNLossWeights:
    """Weights of the IRN loss terms (names = the keys `combine` accepts).

    Chosen from the magnitudes of the terms, measured on a synthetic sphere-and-plane scene (64 x 48) for the
    width-0.125 IRN at initialisation / a good decomposition (5 % albedo noise, ~10° normal noise) / ground
    truth. Photometric terms (mean absolute differences of sRGB-encoded values: rerender 0.066 / 0.015 / 0,
    cross_render alike) anchor the scale at weight 1. Normals: 1 - cos 0.10 / 0.029 / 0; the normal decoder
    gets no other geometric signal, so weight 1; the gradient term (0.09 / 0.15 with per-pixel noise / 0)
    weight 0.5. Albedo consistency (log-albedo L1, 0.18 at init, 0.05 for 10 % albedo noise) weight 0.5 and
    smoothness (0.07 / 0.05 / 0) 0.1, regularisers that must not flatten real texture. The illumination prior
    is an NLL without constant: ~12 for natural lighting (mean over prior samples), 8.6 for the scene's, but
    ~780 at init (the solve is ill-posed while the predicted normals are nearly constant), so 0.001: 0.8 at
    init, ~0.01 once lighting is natural (the trainer may clip gradients or ramp it in). Shadow consistency
    (L1 in [0, 1]) 0.5. The shadow sparsity prior 0.05: keeping a true shadow of 0.3 costs 0.05 · 0.7 = 0.035
    per pixel, while removing it costs 0.22 per pixel of re-rendering error, so real shadows survive.
    `shadow_sparsity` and `shading_smoothness` are off (0) by default; the irn-small model card has the runs that
    tried them.
    """

    rerender: float = 1.0
    cross_render: float = 1.0
    albedo_consistency: float = 0.5
    albedo_smoothness: float = 0.1
    normal_angular: float = 1.0
    normal_gradient: float = 0.5
    illumination_prior: float = 0.001
    shadow_consistency: float = 0.5
    shadow_prior: float = 0.05
    shadow_sparsity: float = 0.0
    shading_smoothness: float = 0.0
    shadow_ratio: float = 0.0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"IRNLossWeights.{f.name} must be a finite number >= 0, got {value!r}")


def combine(terms: dict[str, torch.Tensor], weights: IRNLossWeights | None = None) -> torch.Tensor:
    """Weighted sum Σ weights.<name> · terms[name] of 0-dim loss terms (default weights: IRNLossWeights()).

    Terms may be any subset of the weight names (e.g. no pair terms for a batch without pairs); a term with
    weight 0 is left out of the sum entirely, so a disabled term that is NaN cannot poison the total.
    """
    weights = IRNLossWeights() if weights is None else weights
    if not isinstance(weights, IRNLossWeights):
        raise TypeError(f"weights must be an IRNLossWeights, got {type(weights).__name__}")
    if not terms:
        raise ValueError("combine needs at least one loss term")
    names = {f.name for f in fields(weights)}
    unknown = sorted(set(terms) - names)
    if unknown:
        raise ValueError(f"unknown loss terms {unknown}; known terms are {sorted(names)}")
    total = None
    for name, value in terms.items():
        if not isinstance(value, torch.Tensor) or value.ndim != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"loss term {name!r} must be a 0-dim tensor, got {shape}")
        w = getattr(weights, name)
        if w == 0:
            continue
        total = w * value if total is None else total + w * value
    if total is None:  # every given term has weight 0: a finite zero, still attached to their graphs
        total = torch.stack([torch.nan_to_num(v) for v in terms.values()]).sum() * 0.0
    return total
