"""Sky from the photo itself: smooth, bright, blue-to-white regions that reach the top of the frame.

A monocular depth network trained on synthetic streets rarely puts the sky far enough to tell it from a distant
facade (on the held-out synthetic views, depth-small's "depth > 30 x the 10th percentile" found almost none of
it, and on KITTI, MegaDepth and Colosseum photos nothing at all), while the sky's look is simple: at the working
resolution it is a region with almost no texture, brighter than most of the photo, blue or white-grey (not
red-brown: B >= 0.9 R), and connected to the top row. `detect_sky` keeps exactly the connected regions of such
pixels that touch the top row; `decompose` takes its union with the depth network's sky.
"""

from __future__ import annotations

import numpy as np

from .io._cv import cv2
from .io.colour import linear_to_srgb

# Per-pixel sRGB luminance gradient (Sobel of the photo blurred by 1 pixel, itself averaged over ~1.5 pixels)
# below which a pixel counts as untextured: sky gradients and sensor noise stay under it at <= 320 px, bricks,
# foliage, windows and edges do not.
MAX_SKY_GRADIENT = 0.02
# The sky is brighter than this percentile of the photo's sRGB luminance.
MIN_SKY_LUMINANCE_PERCENTILE = 40.0
# Blue or neutral: B >= this times R (sunset skies near the sun are redder; they are missed, not invented).
MIN_BLUE_TO_RED = 0.9
# Regions smaller than this share of the photo are not sky (noise in a dark frame, a lamp).
MIN_SKY_FRACTION = 0.002


def detect_sky(image: np.ndarray) -> np.ndarray:
    """Sky mask (H, W) bool of a linear RGB photo (H, W, 3), best at the networks' working resolution (<= 320 px).

    Sky = the 4-connected regions of untextured (gradient < MAX_SKY_GRADIENT), bright (sRGB luminance above its
    MIN_SKY_LUMINANCE_PERCENTILE-th percentile), blue-or-neutral (B >= MIN_BLUE_TO_RED R) pixels that touch the
    top row and cover at least MIN_SKY_FRACTION of the photo.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 3:
        raise ValueError(f"image must have shape (H, W, 3) with H, W >= 3, got {image.shape}")
    srgb = linear_to_srgb(np.clip(np.nan_to_num(image), 0.0, 1.0)).astype(np.float32)
    luminance = srgb @ np.array([0.2126, 0.7152, 0.0722], np.float32)  # (H, W)
    blurred = cv2.GaussianBlur(luminance, (0, 0), 1.0)
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3) / 8.0  # per-pixel differences
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    gradient = cv2.GaussianBlur(np.hypot(gx, gy), (0, 0), 1.5)
    candidate = ((gradient < MAX_SKY_GRADIENT)
                 & (luminance > np.percentile(luminance, MIN_SKY_LUMINANCE_PERCENTILE))
                 & (srgb[..., 2] >= MIN_BLUE_TO_RED * srgb[..., 0]))
    count, labels = cv2.connectedComponents(candidate.astype(np.uint8), connectivity=4)
    sizes = np.bincount(labels.ravel(), minlength=count)
    touching_top = np.unique(labels[0][candidate[0]])
    keep = touching_top[sizes[touching_top] >= MIN_SKY_FRACTION * labels.size]
    return np.isin(labels, keep)
