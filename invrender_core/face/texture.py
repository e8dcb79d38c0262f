"""Albedo texture of a fitted face, aggregated over frames (the "multi-frame aggregation" of the face tool).

For every texel of the model's UV layout: the surface point it stands for is posed in each frame, projected,
and the frame's colour there, divided by that frame's SH shading, is one estimate of the albedo. Estimates
are averaged with weights that favour frames seeing the point head-on (cos of the viewing angle) and drop
frames where the point is hidden (z-buffer test against the frame's own rasterisation). Texels no frame sees
keep the per-vertex albedo of the least-squares fit.
"""

from __future__ import annotations

import cv2
import numpy as np

from .. import sh
from ..camera import Camera
from .render import Raster, rasterize, vertex_normals

MIN_SHADING = 0.05  # below this the shading division amplifies noise: such samples are left out
DEPTH_TOLERANCE = 0.01  # relative: a texel's point is visible when within 1 % of the frame's z-buffer
SEAM_TEXELS = 4  # texels grown outwards from the UV islands, so filtering at the seams never reads black


def uv_raster(uvs: np.ndarray, triangles: np.ndarray, size: int) -> Raster:
    """Rasterise the UV layout: which triangle and where in it each texel of a (size, size) texture lies.

    Texel row 0 is v = 1 (images are stored top row first; Blender's UV v points up)."""
    if uvs.ndim != 2 or uvs.shape[1] != 2:
        raise ValueError(f"uvs must have shape (V, 2), got {uvs.shape}")
    # A camera that maps (x, y, -1) to pixel (u, v) = (size * x, size * (1 - y)): plain 2D rasterisation.
    camera = Camera(size, size, float(size), float(size), 0.0, float(size))
    flat = np.concatenate([uvs.astype(np.float64), -np.ones((len(uvs), 1))], axis=1)
    return rasterize(flat, triangles, camera)


def sample_bilinear(image: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """image (H, W, C) at pixel coordinates uv (N, 2) (pixel centres at +0.5), edge-clamped -> (N, C)."""
    h, w = image.shape[:2]
    x = np.clip(uv[:, 0] - 0.5, 0, w - 1)
    y = np.clip(uv[:, 1] - 0.5, 0, h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def aggregate_albedo(frames: list[np.ndarray], posed: list[np.ndarray], cameras: list[Camera],
                     lightings: list[np.ndarray], triangles: np.ndarray, uvs: np.ndarray, size: int = 512,
                     fallback: np.ndarray | None = None,
                     face_masks: list[tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
    """Albedo texture (size, size, 3) float32 in [0, 1] from frames (H, W, 3) linear RGB, each with its posed
    vertices (V, 3) in the camera frame, camera and SH lighting (9, 3) (camera frame). `fallback` (V, 3) per-vertex
    albedo fills texels no frame sees (else 0). face_masks: per frame, the correspondence network's face probability
    (S, S) on its crop and the crop's affine (2, 3) to frame pixels (`video.crop_affine`); a frame gives a texel only
    where that probability is above one half, so the background beside a fitted outline that reaches past the face
    (or hair over it) stays out of the texture."""
    if not len(frames) == len(posed) == len(cameras) == len(lightings):
        raise ValueError(f"frames, posed, cameras and lightings must have the same length, got {len(frames)}, "
                         f"{len(posed)}, {len(cameras)}, {len(lightings)}")
    if face_masks is not None and len(face_masks) != len(frames):
        raise ValueError(f"face_masks must have one (mask, affine) per frame, got {len(face_masks)} for "
                         f"{len(frames)} frames")
    texels = uv_raster(uvs, triangles, size)
    covered = texels.mask  # (S, S)
    tri, bary = texels.triangle[covered], texels.barycentric[covered]  # (M,), (M, 3)
    total = np.zeros((len(tri), 3))
    weight = np.zeros(len(tri))
    for k, (image, vertices, camera, L) in enumerate(zip(frames, posed, cameras, lightings, strict=True)):
        if image.shape[:2] != (camera.height, camera.width):
            raise ValueError(f"frame of shape {image.shape} does not match its camera {camera.width}x{camera.height}")
        corners = vertices[triangles[tri]]  # (M, 3, 3)
        points = np.einsum("mk,mkc->mc", bary, corners)  # (M, 3) camera frame
        normals = np.einsum("mk,mkc->mc", bary, vertex_normals(vertices, triangles)[triangles[tri]])
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        uv, depth = camera.project(points)
        view = -points / np.maximum(np.linalg.norm(points, axis=1, keepdims=True), 1e-12)  # towards the camera
        facing = np.einsum("mc,mc->m", normals, view)
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < camera.width) & (uv[:, 1] >= 0) & (uv[:, 1] < camera.height)
        zbuffer = rasterize(vertices, triangles, camera).depth
        col = np.clip(uv[:, 0].astype(int), 0, camera.width - 1)
        row = np.clip(uv[:, 1].astype(int), 0, camera.height - 1)
        visible = inside & (facing > 0.1) & (depth <= zbuffer[row, col] * (1 + DEPTH_TOLERANCE))
        shading = sh.shading(normals, L)  # (M, 3)
        usable = visible & np.all(shading > MIN_SHADING, axis=1)
        if face_masks is not None:
            mask, affine = face_masks[k]
            scale, origin = affine[0, 0], affine[:, 2]  # frame = scale * crop + origin (pixel coordinates)
            at = (uv[usable] - origin) / scale  # (N, 2) crop pixel coordinates
            in_crop = np.all((at >= 0) & (at <= mask.shape[0]), axis=1)  # the network saw nothing outside
            usable[usable] = in_crop & (sample_bilinear(mask[..., None].astype(np.float64), at)[:, 0] > 0.5)
        colour = sample_bilinear(image, uv[usable])
        w = facing[usable] ** 2
        total[usable] += w[:, None] * colour / shading[usable]
        weight[usable] += w
    seen = weight > 0
    albedo = np.zeros((len(tri), 3))
    albedo[seen] = total[seen] / weight[seen, None]
    if fallback is not None:
        albedo[~seen] = np.einsum("mk,mkc->mc", bary[~seen], fallback[triangles[tri[~seen]]])
    texture = np.zeros((size, size, 3), np.float32)
    texture[covered] = np.clip(albedo, 0.0, 1.0)  # above 1: highlights and grazing samples, not reflectance
    return grow_islands(texture, covered, SEAM_TEXELS)


def grow_islands(texture: np.ndarray, covered: np.ndarray, texels: int) -> np.ndarray:
    """Fill up to `texels` rings of uncovered texels (S, S) around the UV islands with their neighbours' mean."""
    texture, covered = texture.copy(), covered.copy()
    kernel = np.ones((3, 3), np.float32)
    for _ in range(texels):
        weight = cv2.filter2D(covered.astype(np.float32), -1, kernel, borderType=cv2.BORDER_CONSTANT)
        summed = cv2.filter2D(texture * covered[..., None], -1, kernel, borderType=cv2.BORDER_CONSTANT)
        ring = ~covered & (weight > 0)
        texture[ring] = summed[ring] / weight[ring, None]
        covered = covered | ring
    return texture
