"""Depth-map geometry: back-projection, normals from depth, discontinuities, grid meshing, the background
layer behind occluders, PLY output.

All points and normals are in the camera frame of `camera.py` (x right, y up, z towards the viewer;
depth = -z > 0). A pixel's depth is *valid* when it is finite, > 0 and not masked out; everything
else is unknown and never produces geometry.

Depth discontinuities are judged by the *relative* jump between two neighbouring pixels,
``|d_a - d_b| / min(d_a, d_b)``, so one threshold works at any depth scale (metric or the relative
depth of a monocular network) and for near and far surfaces alike: 0.05 cuts where one neighbour is
more than 5 % further away than the other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph
from scipy.sparse.linalg import splu

from .camera import Camera

DEFAULT_DISCONTINUITY_THRESHOLD = 0.05
# Normal for pixels where none can be estimated: facing the camera, so shading stays finite.
FALLBACK_NORMAL = (0.0, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------------
# checks and small helpers


def _as_depth(depth, camera: Camera | None = None) -> np.ndarray:
    """depth as a float64 (H, W) array, checked against the camera's size."""
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 2:
        raise ValueError(f"depth must have shape (H, W), got {depth.shape}")
    if camera is not None and depth.shape != (camera.height, camera.width):
        raise ValueError(f"depth has shape {depth.shape}, expected {(camera.height, camera.width)} to match "
                         f"the camera ({camera.width}x{camera.height})")
    return depth


def valid_mask(depth: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(H, W) bool: depth (H, W) is finite and > 0, and mask (H, W) bool (if given) is True."""
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must have shape (H, W), got {depth.shape}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != depth.shape:
            raise ValueError(f"mask has shape {mask.shape}, expected {depth.shape} to match depth")
        valid &= mask.astype(bool)
    return valid


def continuous(da: np.ndarray, db: np.ndarray, va: np.ndarray, vb: np.ndarray,
               threshold: float | None) -> np.ndarray:
    """Bool array: both depths valid (va, vb) and their relative jump |da - db| / min(da, db) <= threshold.

    All four arrays share one shape; threshold None accepts any jump between valid depths.
    """
    both = va & vb
    if threshold is None:
        return both
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # Written as a product so that no division is needed; NaNs of invalid pixels compare False.
        small = np.abs(da - db) <= threshold * np.minimum(da, db)
    return both & small


# ----------------------------------------------------------------------------------------------------
# back-projection, normals, discontinuities


def backproject(depth: np.ndarray, camera: Camera) -> np.ndarray:
    """Planar depth (H, W) -> camera-frame points (H, W, 3) float32: depth * ray through each pixel centre.

    Non-finite depths give non-finite points; the caller decides which pixels are valid (`valid_mask`).
    """
    d = _as_depth(depth, camera)
    return (d[..., None] * camera.rays()).astype(np.float32)


def depth_discontinuities(depth: np.ndarray, threshold: float = DEFAULT_DISCONTINUITY_THRESHOLD,
                          mask: np.ndarray | None = None) -> np.ndarray:
    """(H, W) bool: True at valid pixels whose relative depth jump to a valid 4-neighbour exceeds threshold.

    depth (H, W); mask (H, W) bool or None. The jump between pixels a and b is
    ``|d_a - d_b| / min(d_a, d_b)`` (relative, so scale-free); both pixels of a jumping pair are
    marked, so a step is marked on both its sides. Invalid or masked pixels are never marked and do
    not mark their neighbours (unknown is not a discontinuity).
    """
    d = _as_depth(depth)
    valid = valid_mask(d, mask)
    out = np.zeros(d.shape, dtype=bool)
    jump_h = (valid[:, :-1] & valid[:, 1:]) & ~continuous(d[:, :-1], d[:, 1:], valid[:, :-1], valid[:, 1:],
                                                          threshold)  # (H, W-1)
    jump_v = (valid[:-1] & valid[1:]) & ~continuous(d[:-1], d[1:], valid[:-1], valid[1:],
                                                    threshold)  # (H-1, W)
    out[:, :-1] |= jump_h
    out[:, 1:] |= jump_h
    out[:-1] |= jump_v
    out[1:] |= jump_v
    return out


def _derivative(P: np.ndarray, link: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Derivative of points P (H, W, 3) along axis 1 (columns) or 0 (rows), and where it exists (H, W).

    link (H, W-1) or (H-1, W) says which neighbour pairs may be differenced. A pixel with both
    neighbours linked gets the central difference (mean of forward and backward ones), with one the
    one-sided difference, with none no derivative.
    """
    diff = np.diff(P, axis=axis)  # (H, W-1, 3) or (H-1, W, 3)
    diff[~link] = 0.0
    total = np.zeros_like(P)
    count = np.zeros(P.shape[:2], dtype=np.int8)
    lead = (slice(None),) * axis
    total[lead + (slice(None, -1),)] += diff  # forward difference of each pixel
    total[lead + (slice(1, None),)] += diff  # backward difference
    count[lead + (slice(None, -1),)] += link
    count[lead + (slice(1, None),)] += link
    return total / np.maximum(count, 1)[..., None], count > 0


def normals_from_depth(depth: np.ndarray, camera: Camera, mask: np.ndarray | None = None,
                       discontinuity_threshold: float | None = DEFAULT_DISCONTINUITY_THRESHOLD) -> np.ndarray:
    """Unit camera-frame normals (H, W, 3) float32 of the surface seen in depth (H, W).

    Tangents are central differences of back-projected points, one-sided where a neighbour is
    missing: image border, invalid or masked (mask (H, W) bool) pixel, or across a depth
    discontinuity (relative jump > discontinuity_threshold; None: difference across any jump).
    Normals face the viewer (n . point < 0). Pixels with no estimate (invalid, or no neighbour along
    a direction) get (0, 0, 1); the output is NaN-free.
    """
    d = _as_depth(depth, camera)
    valid = valid_mask(d, mask)
    P = np.where(valid, d, 0.0)[..., None] * camera.rays()  # (H, W, 3) float64
    link_u = continuous(d[:, :-1], d[:, 1:], valid[:, :-1], valid[:, 1:], discontinuity_threshold)  # (H, W-1)
    link_v = continuous(d[:-1], d[1:], valid[:-1], valid[1:], discontinuity_threshold)  # (H-1, W)
    dP_du, has_u = _derivative(P, link_u, axis=1)  # towards the right of the image
    dP_dv, has_v = _derivative(P, link_v, axis=0)  # towards the bottom of the image
    # (down) x (right) points towards the viewer for the image's orientation (y up, v down).
    n = np.cross(dP_dv, dP_du)  # (H, W, 3)
    length = np.linalg.norm(n, axis=-1)  # (H, W)
    ok = valid & has_u & has_v & (length > 0)
    n /= np.where(ok, length, 1.0)[..., None]
    # A depth map only shows front faces; the flip guards degenerate numerical cases.
    flip = (n * P).sum(-1) > 0
    n[flip] *= -1.0
    n[~ok] = FALLBACK_NORMAL
    return n.astype(np.float32)


def rotation_z(angle: float) -> np.ndarray:
    """(3, 3) rotation by `angle` radians about the z axis (counter-clockwise seen from +z)."""
    c, s = float(np.cos(angle)), float(np.sin(angle))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_about(axis, angle: float) -> np.ndarray:
    """(3, 3) rotation by `angle` radians about `axis` (3,), counter-clockwise seen from its tip (Rodrigues)."""
    k = np.asarray(axis, dtype=np.float64)
    if k.shape != (3,) or not (np.isfinite(k).all() and np.linalg.norm(k) > 0):
        raise ValueError(f"axis must be a finite non-zero (3,) vector, got {axis!r}")
    k = k / np.linalg.norm(k)
    kx = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(angle) * kx + (1.0 - math.cos(angle)) * kx @ kx


def azimuth_turn(source, target, up) -> np.ndarray:
    """(3, 3) rotation about `up` that takes the azimuth of direction `source` (3,) to that of `target` (3,):
    what turns a sky with its sun while the sky stays upright. The identity when either points along `up`."""
    up = np.asarray(up, dtype=np.float64)
    up = up / np.linalg.norm(up)
    a, b = (np.asarray(d, dtype=np.float64) for d in (source, target))
    a, b = a - (a @ up) * up, b - (b @ up) * up  # their horizontal parts
    if not (np.linalg.norm(a) > 1e-9 * np.linalg.norm(source) and np.linalg.norm(b) > 1e-9 * np.linalg.norm(target)):
        return np.eye(3)
    return rotation_about(up, math.atan2(float(np.cross(a, b) @ up), float(a @ b)))


# ----------------------------------------------------------------------------------------------------
# meshing and PLY


@dataclass
class Mesh:
    """Triangle mesh of a depth map, in the camera frame.

    vertices (V, 3) float32 camera-frame points; faces (F, 3) int32 vertex indices wound
    counter-clockwise as seen from the camera (face normals point towards the camera); uvs (V, 2)
    float32 Blender UVs (origin bottom-left): u = (j + 0.5) / W, v = 1 - (i + 0.5) / H for the
    vertex's pixel (i, j); pixel_index (V,) int64 flat index i * W + j of that pixel (colour lookup).
    """

    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    pixel_index: np.ndarray

    def __post_init__(self):
        v = self.vertices.shape[0] if self.vertices.ndim == 2 else -1
        for name, arr, shape in (("vertices", self.vertices, (v, 3)), ("faces", self.faces, (-1, 3)),
                                 ("uvs", self.uvs, (v, 2)), ("pixel_index", self.pixel_index, (v,))):
            if arr.ndim != len(shape) or any(s not in (-1, t) for s, t in zip(shape, arr.shape, strict=True)):
                raise ValueError(f"mesh {name} has shape {arr.shape}, expected {shape} "
                                 f"(V = {v} vertices, -1 = any)")


def grid_mesh(depth: np.ndarray, camera: Camera, mask: np.ndarray | None = None,
              discontinuity_threshold: float | None = DEFAULT_DISCONTINUITY_THRESHOLD, step: int = 1,
              reach_edges: bool = False) -> Mesh:
    """Triangulate depth (H, W) into a Mesh with one vertex per used pixel centre.

    Vertices lie on the pixels (i, j) with i % step == 0 and j % step == 0 that are valid (finite,
    > 0, mask (H, W) True). Each cell of 2x2 neighbouring grid vertices gives two triangles split
    along its TL-BR diagonal; if that split is impossible but the TR-BL one works, that one is used;
    failing both, the cell gives the one triangle that is possible (e.g. three valid corners), if
    any. A triangle is possible when its three edges join valid vertices with a relative depth jump
    <= discontinuity_threshold (None: no cut), so no face bridges an occlusion ("rubber sheet").
    Vertices used by no face are dropped and indices compacted.
    reach_edges: the grid's first and last rows and columns lie on the photo's edges (the rays and UVs of the edges,
    at their pixels' depths), so that the photo's camera sees the mesh up to its frame, not only between the
    outermost pixel centres (a line of background at the border).
    """
    d = _as_depth(depth, camera)
    if int(step) != step or step < 1:
        raise ValueError(f"step must be a positive integer, got {step}")
    step = int(step)
    valid = valid_mask(d, mask)
    ds, vs = d[::step, ::step], valid[::step, ::step]  # (h, w) grid vertices
    h, w = ds.shape
    thr = discontinuity_threshold
    # Corner depths and validity of each cell, (h-1, w-1) each.
    corners = {name: (ds[r], vs[r]) for name, r in (
        ("tl", np.s_[:-1, :-1]), ("tr", np.s_[:-1, 1:]), ("bl", np.s_[1:, :-1]), ("br", np.s_[1:, 1:]))}

    def edge(a, b):
        return continuous(corners[a][0], corners[b][0], corners[a][1], corners[b][1], thr)

    top, bottom, left, right = edge("tl", "tr"), edge("bl", "br"), edge("tl", "bl"), edge("tr", "br")
    diag, anti = edge("tl", "br"), edge("tr", "bl")
    t1 = left & bottom & diag  # (tl, bl, br)
    t2 = diag & right & top  # (tl, br, tr)
    t3 = left & anti & top  # (tl, bl, tr)
    t4 = bottom & right & anti  # (bl, br, tr)
    main = t1 & t2
    alt = ~main & t3 & t4
    single = ~main & ~alt  # at most one triangle, first possible of t1..t4: they overlap pairwise
    use = (main | (single & t1),
           main | (single & ~t1 & t2),
           alt | (single & ~t1 & ~t2 & t3),
           alt | (single & ~t1 & ~t2 & ~t3 & t4))

    # Grid vertex ids of the corners of every cell, (h-1, w-1) each; cells are row-major like pixels.
    ids = np.arange(h * w, dtype=np.int64).reshape(h, w)
    tl, tr, bl, br = ids[:-1, :-1], ids[:-1, 1:], ids[1:, :-1], ids[1:, 1:]
    # Counter-clockwise on screen (x right, y up): e.g. tl -> bl -> br turns left.
    triangles = ((tl, bl, br), (tl, br, tr), (tl, bl, tr), (bl, br, tr))
    faces = np.concatenate([np.stack([c[sel] for c in tri], axis=-1)
                            for tri, sel in zip(triangles, use, strict=True)])  # (F, 3) grid ids

    used = np.zeros(h * w, dtype=bool)
    used[faces.ravel()] = True
    grid_ids = np.flatnonzero(used)  # (V,) grid vertex ids, ascending
    remap = np.cumsum(used) - 1
    faces = remap[faces].astype(np.int32)

    return _grid_vertices(camera, (h, w), step, grid_ids, ds.ravel()[grid_ids], faces, reach_edges)


def _grid_vertices(camera: Camera, grid_shape: tuple[int, int], step: int, grid_ids: np.ndarray,
                   vertex_depth: np.ndarray, faces: np.ndarray, reach_edges: bool) -> Mesh:
    """The Mesh of faces (F, 3) on vertices at grid_ids (V,) (flat indices into the (h, w) grid of every step-th
    pixel), each at its vertex_depth (V,) on its pixel's ray, or on the photo's edge (`grid_mesh`'s reach_edges)."""
    h, w = grid_shape
    i = (grid_ids // w) * step  # (V,) pixel rows
    j = (grid_ids % w) * step  # (V,) pixel columns
    y, x = i.astype(np.float64), j.astype(np.float64)  # (V,) where the vertices are seen, in pixels
    if reach_edges:
        y[i == 0], y[i == (h - 1) * step] = -0.5, camera.height - 0.5
        x[j == 0], x[j == (w - 1) * step] = -0.5, camera.width - 0.5
    vertices = vertex_depth[:, None] * camera.rays_at(y, x)
    uvs = np.stack([(x + 0.5) / camera.width, 1.0 - (y + 0.5) / camera.height], axis=-1)
    return Mesh(vertices=vertices.astype(np.float32), faces=faces, uvs=uvs.astype(np.float32),
                pixel_index=(i * camera.width + j).astype(np.int64))


def far_patches(depth: np.ndarray, camera: Camera, cells: np.ndarray, mask: np.ndarray | None = None, step: int = 1,
                reach_edges: bool = False) -> Mesh:
    """Two triangles on each chosen cell of `grid_mesh`'s grid (cells (h-1, w-1) bool), all four corners at the
    depth of the cell's farthest corner (on their own rays, placed as `grid_mesh` places them): a cut cell's gap,
    as the photo's camera sees it, filled with a piece of what lies behind, which other viewpoints see as a small
    patch instead of a sheet stretched across the jump. Cells with a corner that is not valid are left out; the
    patches share no vertices."""
    d = _as_depth(depth, camera)
    valid = valid_mask(d, mask)
    ds, vs = d[::step, ::step], valid[::step, ::step]  # (h, w)
    h, w = ds.shape
    if np.shape(cells) != (h - 1, w - 1):
        raise ValueError(f"cells has shape {np.shape(cells)}, expected {(h - 1, w - 1)} (one per grid cell)")
    ids = np.arange(h * w).reshape(h, w)
    corners = np.stack([ids[:-1, :-1], ids[1:, :-1], ids[1:, 1:], ids[:-1, 1:]], -1)  # (h-1, w-1, 4) tl bl br tr
    chosen = np.asarray(cells, bool) & vs.ravel()[corners].all(-1)
    grid_ids = corners[chosen].ravel()  # (4 N,) four vertices of their own per patch
    far = ds.ravel()[corners[chosen]].max(-1).repeat(4)  # (4 N,)
    quads = np.arange(len(grid_ids)).reshape(-1, 4)
    faces = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]]).astype(np.int32)  # as grid_mesh's split
    return _grid_vertices(camera, (h, w), step, grid_ids, far, faces, reach_edges)


def join_meshes(first: Mesh, second: Mesh) -> Mesh:
    """One Mesh holding the vertices and faces of both (no vertex merged)."""
    return Mesh(vertices=np.concatenate([first.vertices, second.vertices]),
                faces=np.concatenate([first.faces, second.faces + len(first.vertices)]).astype(np.int32),
                uvs=np.concatenate([first.uvs, second.uvs]),
                pixel_index=np.concatenate([first.pixel_index, second.pixel_index]))


def covered_cells(mesh: Mesh, width: int, height: int, step: int = 1) -> np.ndarray:
    """(height-1, width-1) bool: the cells between 2x2 neighbouring pixel centres that lie in a cell of the mesh's
    grid (every step-th pixel, as `grid_mesh` made it) holding two of its triangles, i.e. that a camera at the
    mesh's viewpoint sees no gap in (a cell with one triangle shows a gap over half of it)."""
    h, w = (height - 1) // step + 1, (width - 1) // step + 1  # the grid's rows and columns
    corners = mesh.pixel_index[mesh.faces]  # (F, 3): a face's top row and left column are its cell's
    cell = (corners // width).min(axis=1) // step * (w - 1) + (corners % width).min(axis=1) // step
    full = (np.bincount(cell, minlength=(h - 1) * (w - 1)) >= 2).reshape(h - 1, w - 1)
    unit = np.repeat(np.repeat(full, step, axis=0), step, axis=1)[:height - 1, :width - 1]
    out = np.zeros((height - 1, width - 1), bool)
    out[:unit.shape[0], :unit.shape[1]] = unit
    return out


def keep_faces(mesh: Mesh, keep: np.ndarray) -> Mesh:
    """The Mesh of the faces with keep (F,) bool True, without the vertices no kept face uses."""
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (len(mesh.faces),):
        raise ValueError(f"keep has shape {keep.shape}, expected ({len(mesh.faces)},) (one per face)")
    faces = mesh.faces[keep]
    used = np.zeros(len(mesh.vertices), dtype=bool)
    used[faces.ravel()] = True
    remap = np.cumsum(used) - 1
    return Mesh(vertices=mesh.vertices[used], faces=remap[faces].astype(np.int32), uvs=mesh.uvs[used],
                pixel_index=mesh.pixel_index[used])


# ----------------------------------------------------------------------------------------------------
# the background layer: what lies behind occluders, for novel views


@dataclass
class BackgroundLayer:
    """The surface behind the near side of each depth discontinuity, continued from the far side.

    A depth map shows one surface per pixel: seen from another viewpoint, the background next to an occluder
    opens up as a hole. The layer fills it: `region` (H, W) bool holds the occluder's pixels up to `band`
    pixels in from its outline; there the background is the harmonic continuation (Laplace's
    equation on the 4-neighbour grid) of the far side's inverse depth, whose pixels bordering the region form
    `ring` (H, W) bool (the boundary condition; elsewhere the region's border is free). Inverse depth makes a
    plane continue as the same plane wherever the ring surrounds it. depth (H, W): the layer's planar depth on
    region | ring, NaN elsewhere. `fill` continues any per-pixel values (colour, albedo) the same way.
    """

    region: np.ndarray
    ring: np.ndarray
    depth: np.ndarray
    _unknowns: np.ndarray = field(repr=False)  # (N,) flat pixel indices of the region, in unknown order
    _boundary: sp.csr_matrix = field(repr=False)  # (N, H*W): sum of each unknown's ring neighbours' values
    _solver: object = field(repr=False)  # factorised (N, N) graph Laplacian of the region

    def fill(self, values: np.ndarray) -> np.ndarray:
        """values (H, W) or (H, W, C) with the region replaced by the continuation of the ring's values."""
        values = np.asarray(values)
        if values.shape[:2] != self.region.shape or values.ndim not in (2, 3):
            raise ValueError(f"values have shape {values.shape}, expected {self.region.shape} or "
                             f"{(*self.region.shape, 'C')} to match the layer")
        flat = values.reshape(self.region.size, -1).astype(np.float64)  # (H*W, C)
        out = flat.copy()
        if len(self._unknowns):
            out[self._unknowns] = self._solver.solve(np.asarray(self._boundary @ flat))
        return out.reshape(values.shape).astype(values.dtype, copy=False)


def _neighbour_pairs(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (a, b), (P,) each, of every pair of 4-neighbouring pixels of an image of this shape."""
    ids = np.arange(shape[0] * shape[1]).reshape(shape)
    return (np.concatenate([ids[:, :-1].ravel(), ids[:-1].ravel()]),
            np.concatenate([ids[:, 1:].ravel(), ids[1:].ravel()]))


def background_layer(depth: np.ndarray, mask: np.ndarray | None = None, band: int = 32,
                     discontinuity_threshold: float = DEFAULT_DISCONTINUITY_THRESHOLD) -> BackgroundLayer:
    """The BackgroundLayer of depth (H, W) (mask (H, W) bool: False = unknown, e.g. sky, never continued).

    The region grows from the near side of every discontinuity (a valid pixel with a 4-neighbour farther by
    more than discontinuity_threshold, relative, as in `depth_discontinuities`) into the occluder, through
    neighbours without a jump between them, `band` pixels deep; parts that touch no far side (nothing to
    continue from) are dropped, and so are the pixels where a first continuation does not end up behind the
    occluder.
    """
    d = _as_depth(depth)
    if int(band) != band or band < 1:
        raise ValueError(f"band must be a positive number of pixels, got {band}")
    thr = float(discontinuity_threshold)
    valid = valid_mask(d, mask)
    a, b = _neighbour_pairs(d.shape)
    flat, ok = d.ravel(), valid.ravel()
    with np.errstate(invalid="ignore"):
        b_behind = ok[a] & ok[b] & (flat[b] > flat[a] * (1 + thr))  # (P,) b is the far side of a jump from a
        a_behind = ok[a] & ok[b] & (flat[a] > flat[b] * (1 + thr))
    near_side = np.zeros(d.size, dtype=bool)
    near_side[a[b_behind]] = True
    near_side[b[a_behind]] = True
    region = near_side.reshape(d.shape)  # the near sides of the discontinuities ...
    link_h = continuous(d[:, :-1], d[:, 1:], valid[:, :-1], valid[:, 1:], thr)  # (H, W-1)
    link_v = continuous(d[:-1], d[1:], valid[:-1], valid[1:], thr)  # (H-1, W)
    for _ in range(band - 1):  # ... grown into their surfaces
        grown = region.copy()
        grown[:, :-1] |= region[:, 1:] & link_h
        grown[:, 1:] |= region[:, :-1] & link_h
        grown[:-1] |= region[1:] & link_v
        grown[1:] |= region[:-1] & link_v
        if (grown == region).all():
            break
        region = grown
    layer = _continue_behind(d, region, a, b, a_behind, b_behind)
    with np.errstate(invalid="ignore"):
        in_front = layer.region & ~(layer.depth > d * (1 + thr))
    # Continued again without them, so that their values do not pull the rest forward.
    return _continue_behind(d, layer.region & ~in_front, a, b, a_behind, b_behind) if in_front.any() else layer


def _continue_behind(d, region, a, b, a_behind, b_behind) -> BackgroundLayer:
    """The harmonic continuation over region (H, W) of the inverse depth of the pixels it jumps to: pixel pairs
    (a, b) (P,) each, a_behind / b_behind (P,) bool where a / b is the far side of a jump."""
    r = region.ravel().copy()
    inner = r[a] & r[b]  # (P,) pairs inside the region: the Laplacian's edges
    a_to_ring = r[a] & ~r[b] & b_behind  # b is a's boundary value
    b_to_ring = r[b] & ~r[a] & a_behind
    # Parts of the region without a boundary value have no continuation (singular): drop them.
    n = d.size
    graph = sp.coo_matrix((np.ones(int(inner.sum())), (a[inner], b[inner])), shape=(n, n))
    _, label = csgraph.connected_components(graph, directed=False)
    anchored = np.zeros(label.max() + 1, dtype=bool)
    anchored[label[a[a_to_ring]]] = True
    anchored[label[b[b_to_ring]]] = True
    r &= anchored[label]
    inner &= r[a]
    a_to_ring &= r[a]
    b_to_ring &= r[b]

    unknowns = np.flatnonzero(r)  # (N,)
    index = np.full(n, -1)
    index[unknowns] = np.arange(len(unknowns))
    ia, ib = index[a[inner]], index[b[inner]]
    degree = (np.bincount(ia, minlength=len(unknowns)) + np.bincount(ib, minlength=len(unknowns))
              + np.bincount(index[a[a_to_ring]], minlength=len(unknowns))
              + np.bincount(index[b[b_to_ring]], minlength=len(unknowns)))
    laplacian = sp.coo_matrix((np.concatenate([degree, -np.ones(2 * len(ia))]),
                               (np.concatenate([np.arange(len(unknowns)), ia, ib]),
                                np.concatenate([np.arange(len(unknowns)), ib, ia]))),
                              shape=(len(unknowns),) * 2).tocsc()
    boundary = sp.coo_matrix((np.ones(int(a_to_ring.sum() + b_to_ring.sum())),
                              (np.concatenate([index[a[a_to_ring]], index[b[b_to_ring]]]),
                               np.concatenate([b[a_to_ring], a[b_to_ring]]))),
                             shape=(len(unknowns), n)).tocsr()
    ring = np.zeros(n, dtype=bool)
    ring[b[a_to_ring]] = True
    ring[a[b_to_ring]] = True
    solver = splu(laplacian) if len(unknowns) else None
    layer = BackgroundLayer(region=r.reshape(d.shape), ring=ring.reshape(d.shape), depth=np.full(d.shape, np.nan),
                            _unknowns=unknowns, _boundary=boundary, _solver=solver)
    with np.errstate(divide="ignore"):
        inverse = np.where(ring.reshape(d.shape), 1.0 / d, 0.0)  # (H, W) only the ring's values are read
        layer.depth = np.where(ring.reshape(d.shape), d, 1.0 / layer.fill(inverse))
    layer.depth[~(layer.region | layer.ring)] = np.nan
    return layer


def write_ply(path: str | Path, mesh: Mesh) -> None:
    """Write mesh as binary little-endian PLY: vertex x, y, z, s, t (float) and triangle faces (int).

    s, t are the Blender UVs (mesh.uvs); coordinates are in the camera frame.
    """
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    faces = np.asarray(mesh.faces)
    uvs = np.asarray(mesh.uvs, dtype=np.float32)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or uvs.shape != (vertices.shape[0], 2):
        raise ValueError(f"mesh vertices (V, 3) and uvs (V, 2) expected, "
                         f"got {vertices.shape} and {uvs.shape}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"mesh faces must have shape (F, 3), got {faces.shape}")
    vertex_rows = np.empty(len(vertices), dtype=[("xyz", "<f4", (3,)), ("st", "<f4", (2,))])
    vertex_rows["xyz"] = vertices
    vertex_rows["st"] = uvs
    face_rows = np.empty(len(faces), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
    face_rows["n"] = 3
    face_rows["idx"] = faces
    header = ("ply\nformat binary_little_endian 1.0\n"
              "comment InvRender depth mesh, camera frame: x right, y up, z towards the viewer\n"
              f"element vertex {len(vertices)}\n"
              "property float x\nproperty float y\nproperty float z\nproperty float s\nproperty float t\n"
              f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n")
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(vertex_rows.tobytes())
        f.write(face_rows.tobytes())


# ----------------------------------------------------------------------------------------------------
# analytic test scene (tests, benchmarks, examples)


def synthetic_sphere_plane(camera: Camera, centre=(0.1, -0.05, -3.0), radius: float = 0.8,
                           plane_normal=(0.0, 0.3, 1.0), plane_offset: float = -5.0):
    """Exact depth and normals of a sphere in front of a tilted plane, ray-cast through pixel centres.

    The plane is {X : n . X = plane_offset} with n = plane_normal / |plane_normal| (it must face the
    camera, n_z > 0, and lie in front of it, plane_offset < 0); the sphere has the given camera-frame
    centre (3,) and radius. Returns (depth (H, W) float64, normals (H, W, 3) float64 unit and facing
    the camera, on_sphere (H, W) bool). Every ray must hit the plane.
    """
    rays = camera.rays()  # (H, W, 3) at depth 1
    n = np.asarray(plane_normal, dtype=np.float64)
    n = n / np.linalg.norm(n)
    c = np.asarray(centre, dtype=np.float64)
    with np.errstate(divide="ignore"):
        depth = plane_offset / (rays @ n)  # n . (d r) = offset
    if not (np.isfinite(depth).all() and (depth > 0).all()):
        raise ValueError("some camera rays miss the plane: tilt it less or move it in front of the camera")
    # |d r - c|^2 = radius^2: a d^2 + b d + k = 0, nearest root.
    a = (rays * rays).sum(-1)
    b = -2.0 * (rays @ c)
    k = c @ c - radius**2
    disc = b * b - 4.0 * a * k
    d_sphere = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
    on_sphere = (disc > 0) & (d_sphere > 0) & (d_sphere < depth)
    depth = np.where(on_sphere, d_sphere, depth)
    normals = np.where(on_sphere[..., None], (depth[..., None] * rays - c) / radius, n)
    return depth, normals, on_sphere
