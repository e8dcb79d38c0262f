"""Edge-aware filtering and upsampling: the guided filter (He, Sun & Tang, ECCV 2010 / T-PAMI 2013) and its
fast variant for upsampling (He & Sun, "Fast Guided Filter", arXiv 2015).

The guided filter models the output as a local affine function of a guide image I inside every window
w_k of radius r: q_i = a_k · I_i + b_k. Per window, (a_k, b_k) minimise Σ_i (a_k · I_i + b_k - p_i)² + eps |a_k|²,
so a_k = (Σ_k + eps U)⁻¹ cov_k(I, p) and b_k = mean_k(p) - a_k · mean_k(I) (Σ_k the guide's covariance; for a
grey guide a scalar variance). Every pixel then averages the coefficients of all windows that contain it.
Where the guide has an edge (variance >> eps) the output follows the guide's edge; where the guide is flat
relative to eps the output is a box blur of p. Box filters make the cost independent of r.

Upsampling (`guided_upsample`) keeps the map's own values and adds the guide's detail that the low resolution
cannot hold, through the guided filter's local linear coefficients computed at the low resolution (the guide
area-downsampled to it) and upsampled bilinearly: q = up(low) + up(A) · (I_full - up(I_low)). Where the map
follows the guide (an object's edge in both) the result follows the full-resolution guide's edge exactly, to
the pixel; where it does not, the result is bilinear upsampling, so texture is not copied into smooth maps and
nothing is blurred beyond the low resolution. All box filtering runs at the low resolution. It is preferred to
joint-bilateral upsampling because its cost does not depend on the kernel size and it has no range kernel to
tune or sample, and to the plain fast guided filter for the reason given in `guided_upsample`.

Shapes: images are (H, W) or (H, W, C) float arrays; guides (H, W), (H, W, 1) (grey) or (H, W, 3) (colour).
"""

from __future__ import annotations

import numpy as np

from .io import cv2, resize_linear

DEFAULT_RADIUS = 1  # in low-resolution pixels: 3x3 windows (larger ones smooth the coefficients across edges)
# Regularisation in squared guide units (guide values in [0, 1]): edges with a local standard deviation well
# above sqrt(eps) = 0.1 are followed, weaker guide variation (texture) is not copied into the output.
DEFAULT_EPS = 1e-2
MIN_NORMAL_Z = 1e-3  # upsampled normals are kept facing the camera (DESIGN.md: visible surfaces have z > 0)


def _as_image(name: str, a) -> np.ndarray:
    """(H, W) or (H, W, C) float64 view -> (H, W, C) float64."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or 0 in a.shape:
        raise ValueError(f"{name} must have shape (H, W) or (H, W, C), got {a.shape}")
    return a


def _as_guide(name: str, guide) -> np.ndarray:
    g = _as_image(name, guide)
    if g.shape[2] not in (1, 3):
        raise ValueError(f"{name} must have shape (H, W), (H, W, 1) or (H, W, 3), got {np.shape(guide)}")
    return g


def _window_counts(height: int, width: int, radius: int) -> np.ndarray:
    """(H, W) number of pixels of each (2r+1)² window that lie inside the image (windows are clipped)."""
    def counts(n):
        i = np.arange(n)
        return np.minimum(i + radius, n - 1) - np.maximum(i - radius, 0) + 1.0

    return np.outer(counts(height), counts(width))


def box_filter(x, radius: int) -> np.ndarray:
    """Mean of x (H, W) or (H, W, C) over the (2r+1)x(2r+1) window around each pixel, clipped to the image.

    Windows are not padded: near the border the mean is over the pixels inside the image (He's N
    normalisation). Returns float64 of x's shape.
    """
    if int(radius) != radius or radius < 0:
        raise ValueError(f"radius must be a non-negative integer, got {radius}")
    a = np.asarray(x, dtype=np.float64)
    if a.ndim not in (2, 3) or 0 in a.shape:
        raise ValueError(f"box_filter needs shape (H, W) or (H, W, C), got {a.shape}")
    radius = int(radius)
    if radius == 0:
        return a.copy()
    h, w = a.shape[:2]
    k = 2 * radius + 1
    flat = a.reshape(h, w, -1)
    # OpenCV filters at most 512 channels at once; zero border + our own counts = clipped windows.
    out = np.empty_like(flat)
    for c0 in range(0, flat.shape[2], 512):
        part = np.ascontiguousarray(flat[..., c0:c0 + 512])
        summed = cv2.boxFilter(part, -1, (k, k), normalize=False, borderType=cv2.BORDER_CONSTANT)
        out[..., c0:c0 + 512] = summed.reshape(h, w, -1)
    return (out / _window_counts(h, w, radius)[..., None]).reshape(a.shape)


def _inverse_sym3(s: np.ndarray) -> np.ndarray:
    """Inverses (H, W, 3, 3) of symmetric 3x3 matrices given by their upper triangles s (H, W, 6) in
    triu order (xx, xy, xz, yy, yz, zz), by the adjugate: an order of magnitude faster than batched solve."""
    xx, xy, xz, yy, yz, zz = np.moveaxis(s, -1, 0)
    c_xx, c_xy, c_xz = yy * zz - yz * yz, xz * yz - xy * zz, xy * yz - xz * yy  # cofactors
    c_yy, c_yz, c_zz = xx * zz - xz * xz, xy * xz - xx * yz, xx * yy - xy * xy
    det = xx * c_xx + xy * c_xy + xz * c_xz
    inv = np.stack([c_xx, c_xy, c_xz, c_xy, c_yy, c_yz, c_xz, c_yz, c_zz], axis=-1) / det[..., None]
    return inv.reshape(s.shape[:-1] + (3, 3))


def _coefficients(guide: np.ndarray, src: np.ndarray, radius: int, eps: float,
                  average: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Guided-filter coefficients: A (H, W, Cg, C), B (H, W, C) with q = Σ_g A[..., g, :] I_g + B.

    guide (H, W, Cg) with Cg in {1, 3}, src (H, W, C), both float64. average=True gives He's output
    coefficients (the mean over all windows containing a pixel); False the model of the window centred there.
    """
    h, w, cg = guide.shape
    c = src.shape[2]
    mean_i = box_filter(guide, radius)  # (H, W, Cg)
    mean_p = box_filter(src, radius)  # (H, W, C)
    corr_ip = box_filter((guide[..., :, None] * src[..., None, :]).reshape(h, w, cg * c), radius)
    cov_ip = corr_ip.reshape(h, w, cg, c) - mean_i[..., :, None] * mean_p[..., None, :]  # (H, W, Cg, C)
    if cg == 1:
        var_i = box_filter(guide * guide, radius) - mean_i * mean_i  # (H, W, 1)
        a = cov_ip / (np.maximum(var_i, 0.0)[..., None] + eps)  # (H, W, 1, C)
    else:
        iu, ju = np.triu_indices(3)
        corr_ii = box_filter(guide[..., iu] * guide[..., ju], radius)  # (H, W, 6): the unique products
        s = corr_ii - mean_i[..., iu] * mean_i[..., ju] + eps * (iu == ju)  # Σ + eps U, positive definite
        a = np.einsum("hwgk,hwkc->hwgc", _inverse_sym3(s), cov_ip)  # (H, W, 3, C)
    b = mean_p - np.einsum("hwgc,hwg->hwc", a, mean_i)  # (H, W, C)
    if not average:
        return a, b
    # Each pixel lies in many windows: average their coefficients.
    mean_a = box_filter(a.reshape(h, w, cg * c), radius).reshape(h, w, cg, c)
    return mean_a, box_filter(b, radius)


def _check_params(radius, eps):
    if int(radius) != radius or radius < 1:
        raise ValueError(f"radius must be a positive integer, got {radius}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")


def guided_filter(guide, src, radius: int = DEFAULT_RADIUS, eps: float = DEFAULT_EPS) -> np.ndarray:
    """He et al.'s guided filter of src (H, W) or (H, W, C) with guide (H, W), (H, W, 1) or (H, W, 3).

    radius: window radius in pixels; eps: regularisation in squared guide units. Returns float32 of src's
    shape. A colour guide uses the full 3x3 covariance (edges between equally bright colours survive).
    """
    _check_params(radius, eps)
    g = _as_guide("guide", guide)
    p = _as_image("src", src)
    if g.shape[:2] != p.shape[:2]:
        raise ValueError(f"guide {np.shape(guide)} and src {np.shape(src)} must have the same height and width")
    mean_a, mean_b = _coefficients(g, p, int(radius), float(eps))
    q = np.einsum("hwgc,hwg->hwc", mean_a, g) + mean_b
    return q.reshape(np.shape(src)).astype(np.float32)


class Guide:
    """A guide image prepared for `guided_upsample` of maps of one low-resolution size (w, h): its area average at
    (h, w) and its detail above that resolution, computed once for all the maps (each costs about as much as
    one upsampling at 24 MP).

    guide_full (H, W), (H, W, 1) or (H, W, 3), values about in [0, 1] (e.g. the sRGB-encoded photo).
    """

    def __init__(self, guide_full, w: int, h: int):
        g_full = np.asarray(guide_full)
        g_full = g_full[..., None] if g_full.ndim == 2 else g_full
        if g_full.ndim != 3 or g_full.shape[2] not in (1, 3) or 0 in g_full.shape:
            raise ValueError(f"guide_full must have shape (H, W), (H, W, 1) or (H, W, 3), got {np.shape(guide_full)}")
        self.full_size, self.low_size = g_full.shape[:2], (int(h), int(w))
        H, W, cg = g_full.shape
        # The guide has no detail beyond the map's resolution along some axis (a photo smaller than the networks'
        # 16-pixel grid is processed slightly enlarged): maps are plainly resampled.
        self.has_detail = h < H and w < W
        if self.has_detail:
            g_full32 = g_full.astype(np.float32)
            self.low = resize_linear(g_full32, w, h).reshape(h, w, cg)  # area average
            self.detail = g_full32 - resize_linear(self.low, W, H).reshape(H, W, cg)  # (H, W, Cg)


def guided_upsample(low, guide_full, radius: int = DEFAULT_RADIUS, eps: float = DEFAULT_EPS) -> np.ndarray:
    """Edge-aware upsampling of low (h, w) or (h, w, C) to the guide's (H, W): bilinear plus guided detail.

    guide_full (H, W), (H, W, 1) or (H, W, 3), values about in [0, 1] (e.g. the sRGB-encoded photo), or a `Guide`
    of it for (w, h) when several maps share it. The guide is area-downsampled to (h, w) (I↓), the guided-filter
    coefficients A of low against I↓ are computed there (radius in low-resolution pixels; a_k of the window
    centred on each pixel) and the output is

        q = up(low) + up(A) · (I - up(I↓))

    with up() bilinear (pixel-centre aligned): the guide's detail above the low resolution, scaled by the local
    linear model that relates the map to the guide. Where low = a I↓ + b in a window, q = a I + b exactly (the
    map's edges land on the photo's, to the pixel); where the guide says nothing about the map (A ≈ 0), q is
    plain bilinear upsampling. This is the fast guided filter (He & Sun 2015) with its base layer taken from
    the map itself instead of from box means: the fast guided filter returns up(A) · I + up(B) with
    B = mean(low) - A · mean(I↓), a double box average that blurs the map by about 2 radius low-resolution
    pixels wherever the guide is weak, which costs more than edge-awareness gains (normals of a sphere's
    interior, for one). Returns float32 (H, W) or (H, W, C).
    """
    _check_params(radius, eps)
    p = _as_image("low", low)
    h, w, c = p.shape
    guide = guide_full if isinstance(guide_full, Guide) else Guide(guide_full, w, h)
    if guide.low_size != (h, w):
        raise ValueError(f"the Guide was prepared for maps of {guide.low_size[::-1]} (w, h), not {(w, h)}")
    H, W = guide.full_size
    out_shape = (H, W) + np.shape(low)[2:]
    if not guide.has_detail:
        return resize_linear(p.astype(np.float32), W, H).reshape(out_shape)
    # The model of the window centred on each low-resolution pixel, not He's average over the windows around
    # it: next to an edge that average mixes in flat windows (a = 0) and would under-scale the edge's detail.
    a, _ = _coefficients(guide.low.astype(np.float64), p, int(radius), float(eps), average=False)  # (h, w, Cg, C)
    cg = guide.low.shape[2]
    out = resize_linear(p.astype(np.float32), W, H).reshape(H, W, c)
    for k in range(c):  # one output channel at a time keeps the full-resolution coefficient maps small
        up_a = resize_linear(np.ascontiguousarray(a[..., k], dtype=np.float32), W, H).reshape(H, W, cg)
        out[..., k] += np.einsum("hwg,hwg->hw", up_a, guide.detail)
    return out.reshape(out_shape)


def renormalise_normals(normals) -> np.ndarray:
    """Unit normals (H, W, 3) float32 facing the camera: z is raised to at least MIN_NORMAL_Z, then normalised.

    Filtering or averaging unit vectors shortens them (and an affine filter may tip one past the silhouette);
    a zero vector becomes (0, 0, 1).
    """
    n = np.array(normals, dtype=np.float32)
    if n.ndim != 3 or n.shape[2] != 3:
        raise ValueError(f"normals must have shape (H, W, 3), got {n.shape}")
    n[~np.isfinite(n)] = 0.0  # in place in the copy (np.nan_to_num takes ten times as long)
    n[..., 2] = np.maximum(n[..., 2], MIN_NORMAL_Z)
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def upsample_normals(low_normals, guide_full, radius: int = DEFAULT_RADIUS, eps: float = DEFAULT_EPS) -> np.ndarray:
    """`guided_upsample` of unit normals (h, w, 3) to the guide's (H, W) (guide_full: an image or a `Guide`),
    renormalised: (H, W, 3) float32."""
    n = np.asarray(low_normals)
    if n.ndim != 3 or n.shape[2] != 3:
        raise ValueError(f"low_normals must have shape (h, w, 3), got {n.shape}")
    return renormalise_normals(guided_upsample(n, guide_full, radius, eps))


def snap_to_steps(x, where, radius: int, min_step: float, ignore=None) -> np.ndarray:
    """x (H, W) with each pixel of `where` (H, W) bool that lies more than min_step from both its window's minimum
    and maximum moved to the nearer of the two: (H, W) float32.

    Upsampling turns a step into a ramp about as wide as the upsampling factor; within a (2 radius + 1)² window
    the ramp's pixels then go to the side they are nearer to, so the step is a step again (at the ramp's
    middle), with no pixel given a value its window did not hold. Pixels within min_step of a side stay, so a
    smooth surface beside the step is not cut into terraces. Pixels of `ignore` (H, W) bool (e.g. the sky) take
    no part in the windows and are left as they are.
    """
    x = np.asarray(x, dtype=np.float32)
    where = np.asarray(where, dtype=bool)
    ignore = np.zeros(x.shape, bool) if ignore is None else np.asarray(ignore, dtype=bool)
    if x.ndim != 2 or where.shape != x.shape or ignore.shape != x.shape:
        raise ValueError(f"x, where and ignore must share one (H, W) shape, got {x.shape}, {where.shape} and "
                         f"{ignore.shape}")
    if int(radius) != radius or radius < 1:
        raise ValueError(f"radius must be a positive number of pixels, got {radius}")
    window = np.ones((2 * int(radius) + 1,) * 2, np.uint8)
    low = cv2.erode(np.where(ignore, np.inf, x).astype(np.float32), window, borderType=cv2.BORDER_REPLICATE)
    high = cv2.dilate(np.where(ignore, -np.inf, x).astype(np.float32), window, borderType=cv2.BORDER_REPLICATE)
    snap = where & ~ignore & (np.minimum(x - low, high - x) > min_step)
    return np.where(snap, np.where(x - low < high - x, low, high), x)


__all__ = ["DEFAULT_EPS", "DEFAULT_RADIUS", "Guide", "box_filter", "guided_filter", "guided_upsample",
           "renormalise_normals", "snap_to_steps", "upsample_normals"]
