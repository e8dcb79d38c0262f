"""Sky from the photo itself: smooth, bright, blue-to-white regions that reach the top of the frame.

A monocular depth network trained on synthetic streets rarely puts the sky far enough to tell it from a distant
facade (on the held-out synthetic views, depth-small's "depth > 30 x the 10th percentile" found almost none of
it, and on KITTI, MegaDepth and Colosseum photos nothing at all), while the sky's look is simple: at the working
resolution it is a region with almost no texture in any colour channel, brighter than most of the photo, blue or
white-grey (not red-brown: B >= 0.9 R), connected to the top row, and without holes (a plain facade that passes
the other tests has windows in it). `detect_sky` keeps exactly the connected regions of such pixels that touch
the top row and enclose almost nothing; `decompose` takes its union with the depth network's sky.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from . import sh
from .io._cv import cv2
from .io.colour import linear_to_srgb

# Per-pixel sRGB gradient (Sobel of each channel blurred by 1 pixel, the largest of the three, averaged over ~1.5
# pixels) below which a pixel counts as untextured: sky gradients and sensor noise stay under it at <= 320 px,
# bricks, foliage, windows and edges do not, nor a roofline between a grey wall and a blue sky of equal brightness.
MAX_SKY_GRADIENT = 0.02
# The sky is brighter than this percentile of the photo's sRGB luminance.
MIN_SKY_LUMINANCE_PERCENTILE = 40.0
# Blue or neutral: B >= this times R (sunset skies near the sun are redder; they are missed, not invented).
MIN_BLUE_TO_RED = 0.9
# Regions smaller than this share of the photo are not sky (noise in a dark frame, a lamp).
MIN_SKY_FRACTION = 0.002
# Sky is at least this many pixels on either side of its centre line everywhere (strips thinner than that are not).
MIN_SKY_HALF_WIDTH = 3
# A region whose holes (what it encloses) exceed this share of it filled is not sky: a wall with windows.
MAX_SKY_HOLE_FRACTION = 0.02


def detect_sky(image: np.ndarray) -> np.ndarray:
    """Sky mask (H, W) bool of a linear RGB photo (H, W, 3), best at the networks' working resolution (<= 320 px).

    Sky = the 4-connected regions of untextured (gradient < MAX_SKY_GRADIENT), bright (sRGB luminance above its
    MIN_SKY_LUMINANCE_PERCENTILE-th percentile), blue-or-neutral (B >= MIN_BLUE_TO_RED R) pixels that touch the
    top row, cover at least MIN_SKY_FRACTION of the photo and enclose holes of at most MAX_SKY_HOLE_FRACTION.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 3:
        raise ValueError(f"image must have shape (H, W, 3) with H, W >= 3, got {image.shape}")
    srgb = linear_to_srgb(np.clip(np.nan_to_num(image), 0.0, 1.0)).astype(np.float32)
    luminance = srgb @ sh.LUMINANCE.astype(np.float32)  # (H, W)
    blurred = cv2.GaussianBlur(srgb, (0, 0), 1.0)  # (H, W, 3)
    gx = cv2.Sobel(blurred, cv2.CV_32F, 1, 0, ksize=3) / 8.0  # per-pixel differences, per channel
    gy = cv2.Sobel(blurred, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    gradient = cv2.GaussianBlur(np.hypot(gx, gy).max(axis=-1), (0, 0), 1.5)
    candidate = ((gradient < MAX_SKY_GRADIENT)
                 & (luminance > np.percentile(luminance, MIN_SKY_LUMINANCE_PERCENTILE))
                 & (srgb[..., 2] >= MIN_BLUE_TO_RED * srgb[..., 0]))
    # Opening by a square removes strips thinner than it: a sky is wide, the wall between two windows is not.
    candidate = cv2.morphologyEx(candidate.astype(np.uint8), cv2.MORPH_OPEN,
                                 np.ones((2 * MIN_SKY_HALF_WIDTH + 1,) * 2, np.uint8),
                                 borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0  # a strip at the border too
    count, labels = cv2.connectedComponents(candidate.astype(np.uint8), connectivity=4)
    sizes = np.bincount(labels.ravel(), minlength=count)
    touching_top = np.unique(labels[0][candidate[0]])
    sky = np.zeros(candidate.shape, bool)
    for label in touching_top[sizes[touching_top] >= MIN_SKY_FRACTION * labels.size]:
        region = labels == label
        filled = ndimage.binary_fill_holes(region)
        if (filled & ~region).sum() <= MAX_SKY_HOLE_FRACTION * filled.sum():
            sky |= region
    return sky


# `detect_sky` at the working resolution stops short of the sky's edges (the gradient is blurred over ~2.5 pixels and
# the opening removes MIN_SKY_HALF_WIDTH more): at the photo's resolution that was a band of 10-20 pixels of sky
# taken as ground (relit as ground, meshed, a lavender halo along every roof and tree). `extend_sky` grows the
# mask back over up to this many working-resolution pixels ...
SKY_EDGE_REACH = MIN_SKY_HALF_WIDTH + 3
# ... into pixels whose sRGB colour is this close (largest channel difference) to the mean of the sky around them.
SKY_COLOUR_TOLERANCE = 0.1


def extend_sky(image: np.ndarray, sky: np.ndarray, reach: int) -> np.ndarray:
    """Sky mask (H, W) bool of the linear RGB photo image (H, W, 3), grown by up to `reach` pixels (a square
    neighbourhood) into the pixels whose sRGB colour is within SKY_COLOUR_TOLERANCE of the sky's mean colour
    around them and that connect (4-neighbours) to the sky: the sky's edges at the photo's resolution."""
    sky = np.asarray(sky, bool)
    if reach < 1 or not sky.any():
        return sky
    rows = min(sky.shape[0], int(np.flatnonzero(sky.any(axis=1))[-1]) + reach + 1)  # the sky and below it
    srgb = linear_to_srgb(np.clip(np.nan_to_num(np.asarray(image[:rows], np.float32)), 0.0, 1.0)).astype(np.float32)
    box = (2 * reach + 1,) * 2
    inside = sky[:rows].astype(np.float32)
    share = cv2.blur(inside, box, borderType=cv2.BORDER_CONSTANT)  # (rows, W): sky share of each neighbourhood
    local = cv2.blur(srgb * inside[..., None], box, borderType=cv2.BORDER_CONSTANT)
    local /= np.maximum(share, 1e-6)[..., None]  # (rows, W, 3): mean sky colour around each pixel
    grown = sky[:rows] | ((share > 0) & (np.abs(srgb - local).max(axis=-1) < SKY_COLOUR_TOLERANCE))
    count, labels = cv2.connectedComponents(grown.astype(np.uint8), connectivity=4)
    keep = np.zeros(count, bool)
    keep[np.unique(labels[sky[:rows]])] = True
    out = sky.copy()
    out[:rows] = keep[labels]
    return out
