"""Rasterising a morphable-model mesh: which triangle each pixel sees, where in it, how deep.

A plain z-buffer rasteriser in numpy, vectorised over triangles: the correspondence network's training
images, the synthetic evaluation videos and the per-pixel colours of a fitted face all come from it. No
differentiability is needed (the network is supervised with the rasterised correspondences).

Template coordinates: the correspondence network predicts, per pixel, the point of the model's MEAN shape
the pixel sees (Koizumi & Smith's "where on the model"), normalised by `TemplateFrame` so that the mean
shape spans about [-1, 1]. `SurfaceLookup` maps such a point back to (triangle, barycentric) on the mean
surface, which is what the least-squares fitting consumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ..camera import Camera

_LOOKUP_SUBDIVISIONS = 4  # barycentric grid per triangle side for SurfaceLookup (15 samples a triangle)


@dataclass
class Raster:
    """What each pixel sees: triangle (H, W) int64 (-1 where no triangle), barycentric (H, W, 3) float64
    perspective-correct weights of the triangle's vertices, depth (H, W) float64 (inf where empty)."""

    triangle: np.ndarray
    barycentric: np.ndarray
    depth: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool: pixels covered by the mesh."""
        return self.triangle >= 0

    def interpolate(self, values: np.ndarray, triangles: np.ndarray) -> np.ndarray:
        """Per-vertex values (V, C) -> (H, W, C) at every covered pixel (0 elsewhere)."""
        if values.ndim != 2:
            raise ValueError(f"values must have shape (V, C), got {values.shape}")
        out = np.zeros((*self.triangle.shape, values.shape[1]))
        m = self.mask
        corners = values[triangles[self.triangle[m]]]  # (M, 3, C)
        out[m] = np.einsum("mk,mkc->mc", self.barycentric[m], corners)
        return out


def _mesh_arrays(vertices, triangles) -> tuple[np.ndarray, np.ndarray]:
    """vertices as (V, 3) float64 and triangles as (T, 3) arrays, or a one-line ValueError."""
    vertices = np.asarray(vertices, dtype=np.float64)
    triangles = np.asarray(triangles)
    if vertices.ndim != 2 or vertices.shape[1] != 3:
        raise ValueError(f"vertices must have shape (V, 3), got {vertices.shape}")
    if triangles.ndim != 2 or triangles.shape[1] != 3:
        raise ValueError(f"triangles must have shape (T, 3), got {triangles.shape} (vertices {vertices.shape})")
    return vertices, triangles


def rasterize(vertices: np.ndarray, triangles: np.ndarray, camera: Camera) -> Raster:
    """Z-buffer the mesh with camera-frame `vertices` (V, 3) (z < 0 in front) and `triangles` (T, 3).

    A pixel is covered when its centre lies inside the projected triangle (edges shared by two triangles
    belong to one of them through the tie-break of the depth test). Triangles with a vertex behind the
    camera are skipped.
    """
    vertices, triangles = _mesh_arrays(vertices, triangles)
    h, w = camera.height, camera.width
    uv, depth = camera.project(vertices)  # (V, 2), (V,)
    corner_uv, corner_depth = uv[triangles], depth[triangles]  # (T, 3, 2), (T, 3)
    in_front = np.all(corner_depth > 1e-6, axis=1)
    # Pixel centres (j + 0.5, i + 0.5) inside each triangle's box: columns ceil(min - 0.5) .. floor(max - 0.5).
    lo = np.ceil(corner_uv.min(axis=1) - 0.5).astype(np.int64)  # (T, 2) first column, row
    hi = np.floor(corner_uv.max(axis=1) - 0.5).astype(np.int64)  # (T, 2) last column, row
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [w - 1, h - 1])
    keep = np.flatnonzero(in_front & np.all(hi >= lo, axis=1))
    a, b, c = (corner_uv[keep, k] for k in range(3))  # (T', 2) each
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])  # (T',)
    good = np.abs(area) > 1e-12
    keep, a, b, c, area = keep[good], a[good], b[good], c[good], area[good]
    lo_k, extent = lo[keep], hi[keep] - lo[keep] + 1  # (T', 2)
    inv_depth = 1.0 / corner_depth[keep]  # (T', 3)

    pixels, tri_ids, weights, depths = [], [], [], []
    # Loop over offsets inside the boxes, vectorised over triangles: few offsets, many triangles.
    for dy in range(int(extent[:, 1].max(initial=0))):
        rows_ok = extent[:, 1] > dy
        for dx in range(int(extent[:, 0].max(initial=0))):
            sel = np.flatnonzero(rows_ok & (extent[:, 0] > dx))
            if sel.size == 0:
                continue
            px = lo_k[sel, 0] + dx + 0.5
            py = lo_k[sel, 1] + dy + 0.5
            pa, pb, pc = a[sel], b[sel], c[sel]
            w0 = ((pb[:, 0] - px) * (pc[:, 1] - py) - (pb[:, 1] - py) * (pc[:, 0] - px)) / area[sel]
            w1 = ((pc[:, 0] - px) * (pa[:, 1] - py) - (pc[:, 1] - py) * (pa[:, 0] - px)) / area[sel]
            w2 = 1.0 - w0 - w1
            inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
            if not inside.any():
                continue
            sel, bary = sel[inside], np.stack([w0, w1, w2], axis=1)[inside]  # (M,), (M, 3) screen space
            persp = bary * inv_depth[sel]  # perspective-correct: interpolate 1/depth linearly on screen
            z = 1.0 / persp.sum(axis=1)
            pixels.append((lo_k[sel, 1] + dy) * w + lo_k[sel, 0] + dx)
            tri_ids.append(keep[sel])
            weights.append(persp * z[:, None])
            depths.append(z)

    triangle = np.full(h * w, -1, dtype=np.int64)
    barycentric = np.zeros((h * w, 3))
    zbuffer = np.full(h * w, np.inf)
    if pixels:
        pixel, tri, bary, z = (np.concatenate(x) for x in (pixels, tri_ids, weights, depths))
        order = np.lexsort((tri, z, pixel))  # per pixel the nearest first (ties: lower triangle id)
        first = order[np.r_[True, pixel[order][1:] != pixel[order][:-1]]]
        triangle[pixel[first]] = tri[first]
        barycentric[pixel[first]] = bary[first]
        zbuffer[pixel[first]] = z[first]
    return Raster(triangle.reshape(h, w), barycentric.reshape(h, w, 3), zbuffer.reshape(h, w))


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3) float64 of a mesh: vertices (V, 3), triangles (F, 3).

    Triangles wound counter-clockwise seen from outside give outward normals. Vertices in no triangle of
    non-zero area get (0, 0, 0).
    """
    v, tri = _mesh_arrays(vertices, triangles)
    if tri.size and (tri.min() < 0 or tri.max() >= len(v)):
        raise ValueError(f"triangle vertex indices must lie in [0, {len(v)}), found [{tri.min()}, {tri.max()}]")
    face = np.cross(v[tri[:, 1]] - v[tri[:, 0]], v[tri[:, 2]] - v[tri[:, 0]])  # (F, 3), length = 2 * area
    n = np.zeros_like(v)
    for j in range(3):
        np.add.at(n, tri[:, j], face)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return np.divide(n, norm, out=np.zeros_like(n), where=norm > 0)


@dataclass(frozen=True)
class TemplateFrame:
    """Normalisation of the mean shape's coordinates: template = (x - centre) / scale, about [-1, 1]."""

    centre: np.ndarray  # (3,)
    scale: float

    @classmethod
    def of(cls, mean: np.ndarray) -> TemplateFrame:
        lo, hi = mean.min(axis=0), mean.max(axis=0)
        return cls(centre=((lo + hi) / 2).astype(np.float64), scale=float((hi - lo).max() / 2))

    def normalise(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, dtype=np.float64) - self.centre) / self.scale

    def denormalise(self, template: np.ndarray) -> np.ndarray:
        return np.asarray(template, dtype=np.float64) * self.scale + self.centre


class SurfaceLookup:
    """Nearest point of the mean surface to a template coordinate -> (triangle, barycentric).

    The surface is sampled densely (a barycentric grid in every triangle) and searched with a k-d tree, so a
    prediction slightly off the surface snaps to the closest sample.
    """

    def __init__(self, mean: np.ndarray, triangles: np.ndarray, subdivisions: int = _LOOKUP_SUBDIVISIONS):
        self.frame = TemplateFrame.of(mean)
        n = int(subdivisions)
        grid = np.array([(i, j, n - i - j) for i in range(n + 1) for j in range(n + 1 - i)], dtype=np.float64) / n
        corners = mean.astype(np.float64)[triangles]  # (T, 3, 3)
        samples = np.einsum("sk,tkc->tsc", grid, corners).reshape(-1, 3)  # (T * S, 3)
        self._tree = cKDTree(self.frame.normalise(samples))
        self._triangle = np.repeat(np.arange(len(triangles)), len(grid))
        self._barycentric = np.tile(grid, (len(triangles), 1))

    def query(self, template: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """template (N, 3) -> triangle (N,) int64, barycentric (N, 3), distance (N,) in template units."""
        template = np.asarray(template, dtype=np.float64)
        if template.ndim != 2 or template.shape[1] != 3:
            raise ValueError(f"template coordinates must have shape (N, 3), got {template.shape}")
        distance, index = self._tree.query(template)
        return self._triangle[index], self._barycentric[index], distance
