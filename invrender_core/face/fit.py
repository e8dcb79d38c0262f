"""Fitting a 3D morphable model to dense 2D-3D correspondences, and inverse SH lighting on the fitted mesh.

Koizumi & Smith, "Look Ma, no landmarks!" (ECCV 2020, "backwards rasterisation"): a network gives, for each
face pixel, the point of the model surface it sees (a triangle and barycentric weights) and a confidence.
Shape, pose and camera then follow from (mostly linear) least squares, and albedo and lighting from inverse
SH lighting on the fitted mesh.

Method
------
Model point of correspondence i: ``X_i = sum_j b_ij (mean + S c + B w)[tri_ij]``, linear in the identity
c (K,) (std units, S = basis * sqrt(variances)) and the expression w (E,). Camera: ``P = R X + t`` in the
camera frame of DESIGN.md (x right, y up, z towards the viewer, the face at z < 0), principal point at the
image centre, ``u = cx + f P_x / (-P_z)``, ``v = cy - f P_y / (-P_z)``.

1. Pose of the mean shape: a scaled-orthographic (affine) linear least-squares fit of the normalised image
   coordinates, its 2x3 part projected onto two orthonormal rotation rows (SVD), its scale giving the
   depth; then a few Levenberg-Marquardt steps on the 6 pose dof of every frame (and the log focal, shared
   by all frames, when it is estimated), residuals in pixels.
2. `iterations` damped Gauss-Newton steps on everything at once: identity (shared), focal (shared, when
   estimated), expression and pose (per frame). The shape block of each step is the linear least squares
   of the shape given the pose (``u - cx = f P_x / (-P_z)`` multiplied by the depth is linear in (c, w)
   because P is; linearised at the current depth, so the rows are the reprojection errors in pixels); the
   pose and focal columns ride along, linearised. The normal equations have K (+1) shared columns and
   E + 6 per frame: the per-frame blocks are eliminated (Schur complement), so the cost is linear in the
   frames. Why not alternate pose <-> shape: identity components and the pose (and the focal) are
   strongly correlated, and alternation crawls along that valley (measured on exact Surrey-model data:
   still 2-9 degrees of rotation error and 0.2-0.6 px RMS after 6 alternations; the joint steps reach
   1e-5 degrees within 3-4 steps). Translation steps are taken in (image offset of the origin, log image
   scale), where the focal-depth trade-off is a straight line (`_update_translation`).

   The focal is kept within `FOV_RANGE_DEG` (horizontal). Focal length and depth trade off for faces far
   away (the projection tends to scaled orthographic): the estimated focal is then weakly determined, while
   the reprojection stays right either way.

   Robust (``robust=True``): iteratively reweighted least squares on the per-point reprojection distance,
   re-weighted before every step: Huber weights for the first step and Tukey's biweight afterwards, with the
   noise scale from the median distance (not below `MIN_NOISE_PX`), times the confidences.

Objective (pixel² units; MAP for Gaussian reprojection noise): the confidence-weighted SUM of squared
reprojection errors ``sum_i w_i |r_i|²`` over all frames, plus ``identity_weight * |c|²`` (c ~ N(0, 1))
once for the shared identity and ``expression_weight * sum_e (w_e / sigma_e)²`` per frame. This is the
exact MAP estimate when each correspondence of confidence 1 has independent Gaussian pixel noise of
variance ``identity_weight`` px² per axis (and `expression_weight` is the same): the default 1 means 1 px
noise. Correspondences from a network have errors correlated between neighbouring pixels, i.e. fewer
independent observations than points: raise the weights (e.g. towards the number of correspondences over
the number of truly independent ones) for a firmer prior.

Inverse SH lighting (`inverse_sh`, `inverse_sh_frames`): ``colour_i = albedo(X_i) * E(n_i)`` with the
per-vertex albedo (V, 3) interpolated barycentrically, n_i the interpolated vertex normal of the posed mesh
(camera frame) and E = `sh.shading` (order 2, camera frame). Per colour channel, Levenberg-Marquardt on
the albedo (shared by all frames) and the SH lighting (per frame) jointly, started from the lighting that
`sh.fit_lighting` gives for the prior-mean albedo; the albedo prior: smoothness over the mesh edges
(graph Laplacian), left-right symmetry (optional mirror map) and a pull towards a mean albedo. (Alternating
albedo and lighting solves, the textbook approach, crawls: after 300 alternations the albedo was still 4 %
off in the multi-frame test, where the joint steps converge in 3.) Albedo and lighting are only determined
up to one scale per colour channel; the convention here: the albedo is rescaled per channel so that its
mean over the observed vertices equals that of `mean_albedo`. A single frame does not separate a smooth
albedo variation from the lighting (each vertex is seen under one normal): the priors decide; several
frames of a turning head do separate them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from invrender_core import sh

from .render import vertex_normals

MIN_CORRESPONDENCES = 6  # 6 pose dof need at least 3 points; 6 leave a margin for the focal and outliers
FOV_RANGE_DEG = (10.0, 90.0)  # horizontal field of view range of an estimated focal length
MIN_NOISE_PX = 0.5  # the robust noise scale never goes below this (exact data would make it 0)
_HUBER_K = 1.345  # Huber and Tukey tuning constants (95 % efficiency for Gaussian noise), in noise scales
_TUKEY_C = 4.685
_RAYLEIGH_MEDIAN = math.sqrt(2.0 * math.log(2.0))  # median of |r| for 2D Gaussian noise of std 1 per axis
_INIT_POSE_STEPS = 3  # LM steps from the affine start (the joint steps finish the job)
_CONVERGED = 1e-5  # relative decrease of the objective below which the joint steps stop


# ---------------------------------------------------------------------------------------------------
# Data classes


@dataclass
class Correspondences:
    """N image points and the model surface points they see.

    Attributes:
        pixels: (N, 2) float64 (u, v) pixel coordinates in the full frame (u right, v down, pixel centres at
            +0.5, as `camera.Camera`).
        triangles: (N,) int64 model triangle ids.
        barycentric: (N, 3) float64 barycentric weights in that triangle (sum 1).
        weights: (N,) float64 confidence in [0, 1].
        colors: (N, 3) float64 linear RGB of the image at the pixels (for inverse SH), or None.
    """

    pixels: np.ndarray
    triangles: np.ndarray
    barycentric: np.ndarray
    weights: np.ndarray
    colors: np.ndarray | None = None

    def __post_init__(self):
        self.pixels = np.asarray(self.pixels, dtype=np.float64)
        if self.pixels.ndim != 2 or self.pixels.shape[1] != 2:
            raise ValueError(f"pixels must have shape (N, 2), got {self.pixels.shape}")
        n = self.pixels.shape[0]
        triangles = np.asarray(self.triangles)
        if triangles.size and not np.issubdtype(triangles.dtype, np.integer):
            raise ValueError(f"triangles must be integer ids, got dtype {triangles.dtype}")
        self.triangles = triangles.astype(np.int64)
        self.barycentric = np.asarray(self.barycentric, dtype=np.float64)
        self.weights = np.asarray(self.weights, dtype=np.float64)
        if self.colors is not None:
            self.colors = np.asarray(self.colors, dtype=np.float64)
        for name, arr, shape in (("triangles", self.triangles, (n,)), ("barycentric", self.barycentric, (n, 3)),
                                 ("weights", self.weights, (n,)), ("colors", self.colors, (n, 3))):
            if arr is not None and arr.shape != shape:
                raise ValueError(f"{name} has shape {arr.shape}, expected {shape} to match pixels of shape "
                                 f"{self.pixels.shape}")
        for name, arr in (("pixels", self.pixels), ("barycentric", self.barycentric), ("weights", self.weights),
                          ("colors", self.colors)):
            if arr is not None and not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} has non-finite values")
        if n and (self.weights.min() < 0 or self.weights.max() > 1):
            raise ValueError(f"weights must lie in [0, 1], found [{self.weights.min()}, {self.weights.max()}]")

    def __len__(self) -> int:
        return int(self.pixels.shape[0])


@dataclass
class FrameFit:
    """Shape, pose and camera of one frame.

    Attributes:
        identity: (K,) identity coefficients in standard deviations (as `MorphableModel.vertices` takes).
        expression: (E,) raw blendshape weights.
        rotation: (3, 3) model -> camera rotation (det +1).
        translation: (3,) model -> camera translation (model units); the face is in front: translation[2] < 0.
        focal: focal length in pixels (principal point at the image centre).
        rms_px: RMS reprojection error in pixels at the end, weighted by confidence times the final robust
            weight (so with ``robust=True`` it measures the points the fit kept).
    """

    identity: np.ndarray
    expression: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    focal: float
    rms_px: float

    def camera_vertices(self, model) -> np.ndarray:
        """Posed vertices (V, 3) float64 in the camera frame: ``R x + t`` for the model's vertices x."""
        x = model.vertices(self.identity, self.expression).astype(np.float64)  # (V, 3)
        return x @ self.rotation.T + self.translation


# ---------------------------------------------------------------------------------------------------
# Small helpers


def _rodrigues(omega: np.ndarray) -> np.ndarray:
    """Rotation matrix (3, 3) of the axis-angle vector omega (3,)."""
    angle = float(np.linalg.norm(omega))
    if angle < 1e-12:
        k = np.zeros((3, 3))
        k[[2, 0, 1], [1, 2, 0]] = omega
        k -= k.T
        return np.eye(3) + k
    a = omega / angle
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    return np.eye(3) + math.sin(angle) * k + (1.0 - math.cos(angle)) * (k @ k)


def _update_translation(t: np.ndarray, f: float, dt: np.ndarray, dlogf: float, f_new: float) -> np.ndarray:
    """Apply a linearised step (dt (3,), dlog f) to t (3,) along the focal-depth trade-off.

    The step is taken in (p, q, s) = (f t_x / d, f t_y / d, log(f / d)) with d = -t_z: the origin's image
    offset in pixels and the image scale, which stay put when the focal and the depth change together. The
    focal-depth valley is straight in these coordinates (curved in t), so Gauss-Newton steps along it do not
    overshoot. To first order this is t + dt.
    """
    d = -t[2]
    s = math.log(f / d)
    p, q = f * t[0] / d, f * t[1] / d
    ds = dlogf + dt[2] / d
    scale = math.exp(s)
    p_new, q_new, s_new = p + scale * dt[0] + p * ds, q + scale * dt[1] + q * ds, s + ds
    inv = math.exp(-s_new)
    return np.array([p_new * inv, q_new * inv, -f_new * inv])


def focal_bounds(width: int) -> tuple[float, float]:
    """(smallest, largest) focal in pixels: horizontal fov 90 and 10 degrees."""
    return tuple(0.5 * width / math.tan(math.radians(fov) / 2.0) for fov in FOV_RANGE_DEG[::-1])


def _robust_weights(dist: np.ndarray, conf: np.ndarray, kind: str | None) -> np.ndarray:
    """Robust IRLS weights (N,) of the per-point reprojection distances dist (N,) in pixels; 1 when kind is None."""
    if kind is None:
        return np.ones_like(dist)
    used = conf > 0
    scale = max(float(np.median(dist[used])) / _RAYLEIGH_MEDIAN if used.any() else 0.0, MIN_NOISE_PX)
    if kind == "huber":
        k = _HUBER_K * scale
        return np.minimum(1.0, k / np.maximum(dist, 1e-300))
    c = _TUKEY_C * scale
    return np.square(np.clip(1.0 - np.square(dist / c), 0.0, None))


# ---------------------------------------------------------------------------------------------------
# Per-frame data


@dataclass
class _Frame:
    """One frame's correspondences on the model: model-frame points X = base + columns @ theta, theta = (c, w)."""

    pixels: np.ndarray  # (N, 2)
    conf: np.ndarray  # (N,) confidences
    base: np.ndarray  # (N, 3) mean (+ a fixed identity)
    columns: np.ndarray  # (N, 3, D) float32 offsets per unit coefficient: K identity (std units; none when fixed), E
    # expression. float32 (the model's own precision) halves the memory traffic, which bounds the speed here.

    def points(self, theta: np.ndarray) -> np.ndarray:
        """Model-frame points (N, 3) for the coefficients theta (D,)."""
        n, _, d = self.columns.shape
        offsets = self.columns.reshape(n * 3, d) @ theta.astype(np.float32)  # one matrix-vector product
        return self.base + offsets.reshape(n, 3)


def _interpolate(values: np.ndarray, vid: np.ndarray, bary: np.ndarray) -> np.ndarray:
    """sum_j bary[:, j] * values[vid[:, j]]: values (V, ...) -> (N, ...) float64, in the values' precision."""
    gathered = values.reshape(len(values), -1)[vid]  # (N, 3, M)
    out = (bary[:, None, :].astype(values.dtype) @ gathered)[:, 0]  # (N, M) batched (1, 3) @ (3, M)
    return out.astype(np.float64).reshape((len(vid),) + values.shape[1:])


def _check_triangles(model, corr: Correspondences, what: str) -> np.ndarray:
    """Vertex ids (N, 3) of the correspondences' triangles; ValueError for ids outside the model."""
    n_tri = model.triangles.shape[0]
    if len(corr) and (corr.triangles.min() < 0 or corr.triangles.max() >= n_tri):
        raise ValueError(f"{what}: triangle ids must lie in [0, {n_tri}) for this model "
                         f"(triangles {model.triangles.shape}), found [{corr.triangles.min()}, {corr.triangles.max()}]")
    return model.triangles[corr.triangles].astype(np.int64)


def _gather(model, corr: Correspondences, identity: np.ndarray | None, what: str) -> _Frame:
    """Interpolate the model at the correspondences; a given identity (K,) is folded into the base."""
    vid = _check_triangles(model, corr, what)  # (N, 3)
    bary = corr.barycentric
    base = _interpolate(model.mean.astype(np.float64), vid, bary)  # (N, 3)
    std = np.sqrt(model.shape_variances.astype(np.float64))  # (K,)
    ident = _interpolate(model.shape_basis, vid, bary) * std  # (N, 3, K)
    if identity is not None:
        base = base + ident @ identity
        ident = ident[..., :0]
    expr = _interpolate(model.expression_basis, vid, bary)  # (N, 3, E)
    return _Frame(pixels=corr.pixels, conf=corr.weights, base=base,
                  columns=np.concatenate([ident, expr], axis=2).astype(np.float32))


def _project(points: np.ndarray, R: np.ndarray, t: np.ndarray, f: float, centre) -> tuple[np.ndarray, np.ndarray]:
    """Model points (N, 3) -> pixels (N, 2) and camera-frame points (N, 3)."""
    P = points @ R.T + t
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = np.stack([centre[0] + f * P[:, 0] / -P[:, 2], centre[1] - f * P[:, 1] / -P[:, 2]], axis=-1)
    return uv, P


def _pose_cost(points, frame: _Frame, weights, R, t, f, centre) -> float:
    """Weighted sum of squared pixel residuals; inf when a point is not in front of the camera."""
    uv, P = _project(points, R, t, f, centre)
    if not np.all(P[:, 2] < 0):
        return math.inf
    return float(weights @ np.sum(np.square(uv - frame.pixels), axis=1))


def _linearise(points, frame: _Frame, R, t, f, centre):
    """Pixel residuals r (N, 2), d(u, v)/dX in the model frame (N, 2, 3) and d(u, v)/d(omega, t, log f) (N, 2, 7).

    Rotation steps are left perturbations R <- exp(omega) R, so d P / d omega = -[Q]x with Q = R X.
    """
    Q = points @ R.T  # (N, 3) rotated points
    P = Q + t
    iz = 1.0 / -P[:, 2]
    x, y = P[:, 0] * iz, P[:, 1] * iz
    r = np.stack([centre[0] + f * x - frame.pixels[:, 0], centre[1] - f * y - frame.pixels[:, 1]], axis=-1)
    dP = np.zeros((len(P), 2, 3))  # d(u, v) / d P
    dP[:, 0, 0] = f * iz
    dP[:, 0, 2] = f * x * iz
    dP[:, 1, 1] = -f * iz
    dP[:, 1, 2] = -f * y * iz
    pose = np.empty((len(P), 2, 7))
    pose[..., :3] = np.cross(Q[:, None, :], dP)  # d u / d omega = Q x d u / d P
    pose[..., 3:6] = dP
    pose[:, 0, 6], pose[:, 1, 6] = f * x, -f * y  # d / d log f
    return r, dP @ R, pose


def _normal_equations(J: np.ndarray, r: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """J (N, 2, M), r (N, 2), weights (N,) -> J^T W J (M, M), J^T W r (M,). Scales J in place."""
    sw = np.sqrt(weights)[:, None]
    J *= sw[:, :, None].astype(J.dtype)  # in place: J is a temporary of the caller, and this is memory-bound
    J2 = J.reshape(-1, J.shape[2])
    return (J2.T @ J2).astype(np.float64), (J2.T @ (r * sw).reshape(-1).astype(J.dtype)).astype(np.float64)


# ---------------------------------------------------------------------------------------------------
# Pose from a fixed shape


def _affine_pose(points: np.ndarray, frame: _Frame, f: float, centre, robust: bool):
    """Scaled-orthographic start: (R (3, 3), t (3,)) from model points (N, 3) and the frame's pixels."""
    xn = np.stack([(frame.pixels[:, 0] - centre[0]) / f, -(frame.pixels[:, 1] - centre[1]) / f], axis=-1)  # (N, 2)
    centroid = np.average(points, axis=0, weights=frame.conf)
    A = np.concatenate([points - centroid, np.ones((len(points), 1))], axis=1)  # (N, 4)
    w = frame.conf
    for _ in range(4 if robust else 1):  # IRLS (Huber) against outliers
        sw = np.sqrt(w)[:, None]
        M, *_ = np.linalg.lstsq(A * sw, xn * sw, rcond=None)  # (4, 2): xn ~ A @ M
        w = frame.conf * _robust_weights(f * np.linalg.norm(A @ M - xn, axis=1), frame.conf, "huber")
    U, s, Vt = np.linalg.svd(M[:3].T, full_matrices=False)  # affine part (2, 3) = U diag(s) Vt
    rows = U @ Vt  # (2, 3): the closest pair of orthonormal rows
    R = np.vstack([rows, np.cross(rows[0], rows[1])])
    scale = float(s.mean())  # = 1 / depth of the centroid
    t_centroid = np.array([M[3, 0] / scale, M[3, 1] / scale, -1.0 / scale])
    t = t_centroid - R @ centroid
    # Scaled orthography knows no "behind": should a point land there (a face filling a wide-angle view),
    # move the face back until the nearest point is in front, by a tenth of the face's extent.
    nearest = float(np.max((points @ R.T + t)[:, 2]))
    if nearest > -1e-3:
        t[2] -= nearest + 0.1 * float(np.ptp(points, axis=0).max())
    return R, t


def _refine_poses(points, frames, weights, poses, f, centre, estimate_focal, bounds, steps):
    """Levenberg-Marquardt on every frame's 6 pose dof (+ the shared log focal); returns (poses, f)."""
    lam = 1e-6
    for _ in range(steps):
        if not all(np.all((p @ R.T + t)[:, 2] < 0) for p, (R, t) in zip(points, poses, strict=True)):
            break
        systems = []
        for p, fr, wk, pose in zip(points, frames, weights, poses, strict=True):
            r, _, J = _linearise(p, fr, *pose, f, centre)
            systems.append(_normal_equations(J, r, wk))
        H = np.stack([s[0] for s in systems])  # (F, 7, 7)
        g = np.stack([s[1] for s in systems])  # (F, 7)
        cost = sum(_pose_cost(p, fr, wk, *pose, f, centre)
                   for p, fr, wk, pose in zip(points, frames, weights, poses, strict=True))
        improved = False
        for _attempt in range(6):
            A = H[:, :6, :6] + (lam * np.diagonal(H[:, :6, :6], axis1=1, axis2=2)[:, :, None] + 1e-12) * np.eye(6)
            if estimate_focal:
                # Arrow structure: eliminate each frame's pose, solve the shared focal, back-substitute.
                b = H[:, :6, 6]  # (F, 6)
                Ainv_b = np.linalg.solve(A, b[..., None])[..., 0]
                Ainv_g = np.linalg.solve(A, g[:, :6, None])[..., 0]
                schur = H[:, 6, 6].sum() * (1.0 + lam) + 1e-12 - np.sum(b * Ainv_b)
                dlogf = float((-g[:, 6].sum() + np.sum(b * Ainv_g)) / schur)
                dpose = -Ainv_g - Ainv_b * dlogf
            else:
                dlogf, dpose = 0.0, -np.linalg.solve(A, g[:, :6, None])[..., 0]
            f_new = float(np.clip(f * math.exp(dlogf), *bounds))
            new = [(_rodrigues(dp[:3]) @ R, _update_translation(t, f, dp[3:], math.log(f_new / f), f_new))
                   for dp, (R, t) in zip(dpose, poses, strict=True)]
            new_cost = sum(_pose_cost(p, fr, wk, *pose, f_new, centre)
                           for p, fr, wk, pose in zip(points, frames, weights, new, strict=True))
            if new_cost < cost:
                poses, f, improved = new, f_new, True
                lam = max(lam * 0.1, 1e-9)
                break
            lam *= 10.0
        if not improved or cost - new_cost < 1e-12 * cost:
            break
    return poses, f


# ---------------------------------------------------------------------------------------------------
# Joint shape + pose step


def _objective(frames, weights, poses, f, centre, c, ws, identity_weight, expression_precision):
    """(objective, model points per frame): weighted mean squared reprojection errors summed over frames plus
    the priors (inf if a point is behind the camera)."""
    total, pts = identity_weight * float(c @ c), []
    for frame, wk, (R, t), w in zip(frames, weights, poses, ws, strict=True):
        pts.append(frame.points(np.r_[c, w]))
        total += _pose_cost(pts[-1], frame, wk, R, t, f, centre) + float(expression_precision @ (w * w))
    return total, pts


def _frame_system(frame: _Frame, weights, R, t, f, centre, points):
    """Gauss-Newton normal equations of one frame's pixel residuals in (c, w, omega, t, log f).

    Returns G (D + 7, D + 7), g (D + 7,) and the data cost sum w |r|², D = K + E, columns ordered c (K),
    w (E), omega (3), t (3), log f.
    The (c, w) block alone is the linear least squares of the shape at the current pose (the projection is
    linear in the coefficients once multiplied by the depth), linearised at the current depth.
    """
    r, dX, pose = _linearise(points, frame, R, t, f, centre)  # points (N, 3) = frame.points(theta)
    D = frame.columns.shape[2]
    J = np.empty((len(r), 2, D + 7), dtype=np.float32)  # the Jacobian in float32: half the memory traffic
    J[..., :D] = dX.astype(np.float32) @ frame.columns  # (N, 2, 3) @ (N, 3, D)
    J[..., D:] = pose
    return (*_normal_equations(J, r, weights), float(weights @ np.sum(r * r, axis=1)))


def _joint_step(frames, weights, pts, poses, f, centre, c, ws, identity_weight, expression_precision,
                estimate_focal, bounds, lam):
    """One damped Gauss-Newton step on everything from the state (pts = model points per frame, poses, f, c, ws).

    Returns (accepted, cost before, cost after, pts, poses, f, c, ws, lam) with the new state when accepted.

    Shared unknowns: identity (K) and log focal (when estimated); per frame: expression (E) and pose (6). The
    per-frame blocks are eliminated (Schur complement), so the cost grows linearly with the frames.
    """
    K, E = c.size, expression_precision.size
    D = K + E
    shared = np.r_[np.arange(K), [D + 6] if estimate_focal else []].astype(int)
    local = np.r_[np.arange(K, D + 6)].astype(int)  # w (E), omega (3), t (3)
    systems = [_frame_system(frame, wk, *pose, f, centre, p)
               for frame, wk, pose, p in zip(frames, weights, poses, pts, strict=True)]
    cost = sum(s[2] for s in systems) + identity_weight * float(c @ c)
    cost += sum(float(expression_precision @ (w * w)) for w in ws)
    for _attempt in range(8):
        S = identity_weight * np.diag(np.r_[np.ones(K), np.zeros(len(shared) - K)])
        gs = np.r_[identity_weight * c, np.zeros(len(shared) - K)]
        eliminated = []
        for (G, g, _), w in zip(systems, ws, strict=True):
            H_ll = G[np.ix_(local, local)]
            H_ll[np.arange(E), np.arange(E)] += expression_precision
            H_ll[np.diag_indices_from(H_ll)] *= 1.0 + lam
            H_ll[np.diag_indices_from(H_ll)] += 1e-12
            g_l = g[local]
            g_l[:E] += expression_precision * w
            H_ls = G[np.ix_(local, shared)]
            solved = np.linalg.solve(H_ll, np.concatenate([H_ls, g_l[:, None]], axis=1))  # H_ll^-1 [H_ls | g_l]
            S += G[np.ix_(shared, shared)] - H_ls.T @ solved[:, :-1]
            gs += g[shared] - H_ls.T @ solved[:, -1]
            eliminated.append(solved)
        S[np.diag_indices_from(S)] *= 1.0 + lam
        S[np.diag_indices_from(S)] += 1e-12
        ds = np.linalg.solve(S, -gs) if len(shared) else np.zeros(0)
        c_new = c + ds[:K]
        f_new = float(np.clip(f * math.exp(ds[K]), *bounds)) if estimate_focal else f
        ws_new, poses_new = [], []
        for solved, w, (R, t) in zip(eliminated, ws, poses, strict=True):
            dl = -(solved[:, -1] + solved[:, :-1] @ ds)  # this frame's (w, omega, t) step
            ws_new.append(w + dl[:E])
            poses_new.append((_rodrigues(dl[E : E + 3]) @ R,
                              _update_translation(t, f, dl[E + 3 :], math.log(f_new / f), f_new)))
        new_cost, pts_new = _objective(frames, weights, poses_new, f_new, centre, c_new, ws_new, identity_weight,
                                       expression_precision)
        if new_cost <= cost:
            return True, cost, new_cost, pts_new, poses_new, f_new, c_new, ws_new, max(lam * 0.1, 1e-9)
        lam *= 10.0
    return False, cost, cost, pts, poses, f, c, ws, 1e-6


# ---------------------------------------------------------------------------------------------------
# Public fitting API


def _check_frames(model, corrs, image_size, focal, identity, expression_sigma, iterations, identity_weight,
                  expression_weight):
    if len(image_size) != 2 or min(image_size) < 1:
        raise ValueError(f"image_size must be (width, height), both positive, got {image_size}")
    if focal is not None and not focal > 0:
        raise ValueError(f"focal must be positive, got {focal}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if not (identity_weight >= 0 and expression_weight >= 0):
        raise ValueError(f"prior weights must be >= 0, got identity_weight={identity_weight}, "
                         f"expression_weight={expression_weight}")
    for k, corr in enumerate(corrs):
        if not isinstance(corr, Correspondences):
            raise ValueError(f"frame {k}: expected Correspondences, got {type(corr).__name__}")
        used = int(np.count_nonzero(corr.weights > 0))
        if used < MIN_CORRESPONDENCES:
            raise ValueError(f"frame {k}: too few correspondences with positive weight: {used} "
                             f"(need >= {MIN_CORRESPONDENCES})")
    K, E = model.num_identity, model.num_expressions
    if identity is not None:
        identity = np.asarray(identity, dtype=np.float64)
        if identity.ndim != 1 or identity.size > K:
            raise ValueError(f"identity has shape {identity.shape}, expected (k,) with k <= K for the model's "
                             f"shape_basis {model.shape_basis.shape}")
        identity = np.r_[identity, np.zeros(K - identity.size)]
    sigma = np.ones(E) if expression_sigma is None else np.asarray(expression_sigma, dtype=np.float64)
    if sigma.shape != (E,):
        raise ValueError(f"expression_sigma has shape {sigma.shape}, expected (E,) = ({E},) for the model's "
                         f"expression_basis {model.expression_basis.shape}")
    if not np.all(sigma > 0):
        raise ValueError("expression_sigma must be positive")
    return identity, sigma


def fit_frames(model, corrs: list[Correspondences], image_size: tuple[int, int], *, focal: float | None = None,
               identity: np.ndarray | None = None, iterations: int = 6, identity_weight: float = 1.0,
               expression_weight: float = 1.0, expression_sigma: np.ndarray | None = None,
               robust: bool = True) -> tuple[np.ndarray, list[FrameFit]]:
    """Fit ONE identity shared by all frames, per-frame expression and pose, and one focal (same camera).

    Args:
        model: a `MorphableModel` (K identity components, E expressions).
        corrs: F `Correspondences`, one per frame, each with >= `MIN_CORRESPONDENCES` positive weights.
        image_size: (width, height) in pixels; the principal point is the image centre.
        focal: focal length in pixels; None estimates one for all frames (fov within `FOV_RANGE_DEG`).
        identity: (k,) k <= K, std units: held fixed (only expressions and poses are fitted); None fits it.
        iterations: Gauss-Newton steps on all unknowns after the pose initialisation (each one re-weights
            the points when robust); stops early once converged.
        identity_weight, expression_weight: prior weights against the confidence-weighted sum of squared
            reprojection errors in pixel² (module docstring: the pixel noise variance of a confidence-1
            correspondence under which the fit is the MAP estimate): ``identity_weight |c|²`` and
            ``expression_weight sum (w_e / sigma_e)²``.
        expression_sigma: (E,) prior std of each expression weight (default 1).
        robust: IRLS (Huber, then Tukey) against outlying correspondences.

    Returns:
        identity (K,) and F `FrameFit` (each holding that identity).
    """
    corrs = list(corrs)
    if not corrs:
        raise ValueError("fit_frames needs at least one frame of correspondences")
    fixed, sigma = _check_frames(model, corrs, image_size, focal, identity, expression_sigma, iterations,
                                 identity_weight, expression_weight)
    width, height = int(image_size[0]), int(image_size[1])
    centre = (width / 2.0, height / 2.0)
    bounds = focal_bounds(width)
    estimate_focal = focal is None
    f = math.sqrt(bounds[0] * bounds[1]) if estimate_focal else float(focal)

    frames = [_gather(model, corr, fixed, f"frame {k}") for k, corr in enumerate(corrs)]
    c = np.zeros(0 if fixed is not None else model.num_identity)
    ws = [np.zeros(model.num_expressions) for _ in frames]
    expression_precision = expression_weight / np.square(sigma)  # (E,)

    def points():
        return [frame.points(np.r_[c, w]) for frame, w in zip(frames, ws, strict=True)]

    def robust_weights(kind, pts):
        out = []
        for frame, p, pose in zip(frames, pts, poses, strict=True):
            dist = np.linalg.norm(_project(p, *pose, f, centre)[0] - frame.pixels, axis=1)
            out.append(frame.conf * _robust_weights(dist, frame.conf, kind if robust else None))
        return out

    # Pose (and focal) of the mean shape: affine start, then Levenberg-Marquardt.
    pts = points()
    poses = [_affine_pose(p, frame, f, centre, robust) for p, frame in zip(pts, frames, strict=True)]
    weights = robust_weights("huber", pts)
    poses, f = _refine_poses(pts, frames, weights, poses, f, centre, estimate_focal, bounds, _INIT_POSE_STEPS)
    # Gauss-Newton on everything (module docstring); IRLS: Huber first, then Tukey's biweight.
    lam = 1e-6
    for it in range(iterations):
        weights = robust_weights("huber" if it == 0 else "tukey", pts)
        accepted, before, after, pts, poses, f, c, ws, lam = _joint_step(
            frames, weights, pts, poses, f, centre, c, ws, identity_weight, expression_precision, estimate_focal,
            bounds, lam)
        if it > 0 and (not accepted or before - after <= _CONVERGED * before):
            break  # converged: the weights would not change any more either
    weights = robust_weights("tukey" if iterations > 1 else "huber", pts)  # the points the final state keeps

    shared = fixed if fixed is not None else c
    fits = []
    for frame, p, wk, w, (R, t) in zip(frames, pts, weights, ws, poses, strict=True):
        sq = np.sum(np.square(_project(p, R, t, f, centre)[0] - frame.pixels), axis=1)
        rms = math.sqrt(float(wk @ sq) / max(float(wk.sum()), 1e-300))
        fits.append(FrameFit(identity=shared.copy(), expression=w.copy(), rotation=R.copy(), translation=t.copy(),
                             focal=f, rms_px=rms))
    return shared.copy(), fits


def fit_frame(model, corr: Correspondences, image_size: tuple[int, int], *, focal: float | None = None,
              identity: np.ndarray | None = None, iterations: int = 6, identity_weight: float = 1.0,
              expression_weight: float = 1.0, expression_sigma: np.ndarray | None = None,
              robust: bool = True) -> FrameFit:
    """Fit identity (K,), expression (E,), pose and (when `focal` is None) the focal to one frame.

    Same arguments as `fit_frames` with a single `Correspondences`; returns its `FrameFit`.
    """
    _, fits = fit_frames(model, [corr], image_size, focal=focal, identity=identity, iterations=iterations,
                         identity_weight=identity_weight, expression_weight=expression_weight,
                         expression_sigma=expression_sigma, robust=robust)
    return fits[0]


# ---------------------------------------------------------------------------------------------------
# Normals and inverse SH lighting


def _edge_laplacian(pairs: np.ndarray, num_vertices: int) -> sp.csr_matrix:
    """Graph Laplacian (V, V) of the vertex pairs (M, 2): a^T L a = sum over pairs of (a_i - a_j)²."""
    i, j = pairs[:, 0], pairs[:, 1]
    ones = np.ones(len(pairs))
    adj = sp.coo_matrix((ones, (i, j)), shape=(num_vertices, num_vertices))
    adj = (adj + adj.T).tocsr()
    return (sp.diags(np.asarray(adj.sum(axis=1)).ravel()) - adj).tocsr()


def _mesh_edges(triangles: np.ndarray) -> np.ndarray:
    """Unique undirected edges (M, 2) of a triangle list (F, 3)."""
    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]]).astype(np.int64)
    e.sort(axis=1)
    return np.unique(e, axis=0)


def _symmetry_pairs(symmetry, num_vertices: int) -> np.ndarray:
    """Unique pairs (M, 2), i < j, of a symmetry map (V,) (vertex i mirrors onto symmetry[i]; not necessarily
    an involution, e.g. a nearest-vertex map)."""
    s = np.asarray(symmetry)
    if s.shape != (num_vertices,) or not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"symmetry must be (V,) = ({num_vertices},) integer vertex ids, got {s.shape} {s.dtype}")
    if s.min() < 0 or s.max() >= num_vertices:
        raise ValueError(f"symmetry vertex ids must lie in [0, {num_vertices}), found [{s.min()}, {s.max()}]")
    pairs = np.sort(np.stack([np.arange(num_vertices), s.astype(np.int64)], axis=1), axis=1)
    return np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)


def _interpolation_matrix(vid: np.ndarray, bary: np.ndarray, num_vertices: int) -> sp.csr_matrix:
    """Sparse (N, V) matrix of the barycentric interpolation: (M @ values)[i] = sum_j bary[i, j] values[vid[i, j]]."""
    rows = np.repeat(np.arange(len(vid)), 3)
    return sp.csr_matrix((bary.ravel(), (rows, vid.ravel())), shape=(len(vid), num_vertices))


def _albedo_light_channel(frames, prior: sp.csr_matrix, prior_rhs: np.ndarray, a: np.ndarray, ls: np.ndarray,
                          iterations: int):
    """Levenberg-Marquardt on one colour channel's albedo a (V,) and lighting ls (F, 9) together.

    Minimises sum_f sum_i w_i ((M_f a)_i (B_f ls_f)_i - y_i)² + a^T Q a - 2 a^T q (Q = prior, q = prior_rhs).
    The per-frame lighting blocks are small: the sparse albedo block is factorised once per step and
    eliminated (Schur complement onto the 9F lighting unknowns). Alternating albedo and lighting instead
    crawls here: the two are strongly coupled (every albedo change can be partly undone by the lighting).
    """
    V, F = len(a), len(frames)

    def cost_of(a, ls):
        total = float(a @ (prior @ a) - 2.0 * prior_rhs @ a)
        for (M, B, w, y), l in zip(frames, ls, strict=True):
            total += float(w @ np.square((M @ a) * (B @ l) - y))
        return total

    cost, lam = cost_of(a, ls), 1e-8
    for _ in range(iterations):
        H_aa = prior.copy()
        g_a = prior @ a - prior_rhs  # half the gradient of the prior part (as the data parts below)
        H_al = np.zeros((V, 9 * F))
        H_ll = np.zeros((F, 9, 9))
        g_l = np.zeros((F, 9))
        for k, ((M, B, w, y), l) in enumerate(zip(frames, ls, strict=True)):
            shade, alb = B @ l, M @ a  # (N,) shading and interpolated albedo
            r = alb * shade - y
            H_aa = H_aa + M.T @ sp.diags(w * shade * shade) @ M
            g_a = g_a + M.T @ (w * shade * r)
            H_al[:, 9 * k : 9 * k + 9] = M.T @ ((w * shade * alb)[:, None] * B)
            H_ll[k] = (B * (w * alb * alb)[:, None]).T @ B
            g_l[k] = B.T @ (w * alb * r)
        improved = False
        for _attempt in range(8):
            D_aa = H_aa + lam * sp.diags(H_aa.diagonal() + 1e-12)
            # D_aa is symmetric positive definite (mean_weight > 0): a symmetric ordering and no pivoting keep
            # the factors sparse (10x fewer non-zeros and 20x faster than SuperLU's defaults on the SFM mesh).
            lu = spla.splu(D_aa.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                           options={"SymmetricMode": True})
            solved = lu.solve(np.concatenate([H_al, g_a[:, None]], axis=1))  # D_aa^-1 [H_al | g_a]
            S = -H_al.T @ solved[:, :-1]  # (9F, 9F) Schur complement of the albedo block
            for k in range(F):
                block = H_ll[k] + lam * np.diag(np.diag(H_ll[k]) + 1e-12)
                S[9 * k : 9 * k + 9, 9 * k : 9 * k + 9] += block
            rhs = -g_l.reshape(-1) + H_al.T @ solved[:, -1]
            dl = np.linalg.solve(S, rhs)
            da = -(solved[:, -1] + solved[:, :-1] @ dl)
            a_new, ls_new = a + da, ls + dl.reshape(F, 9)
            new_cost = cost_of(a_new, ls_new)
            if new_cost <= cost:
                improved = cost - new_cost > 1e-12 * abs(cost)
                a, ls, cost, lam = a_new, ls_new, new_cost, max(lam * 0.1, 1e-12)
                break
            lam *= 10.0
        if not improved:
            break
    return a, ls


def inverse_sh_frames(model, fits: list[FrameFit], corrs: list[Correspondences], *, symmetry=None,
                      mean_albedo=0.5, smoothness: float = 0.01, symmetry_weight: float = 0.01,
                      mean_weight: float = 0.001, iterations: int = 10, light_prior=None
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Per-vertex albedo shared by F frames and per-frame SH lighting from the colours at the correspondences.

    Image model ``colors_i = albedo(X_i) * E(n_i)`` (module docstring). Minimises, per colour channel,

        sum_frames mean_i w_i (albedo(X_i) E_c(n_i) - colors_ic)²
        + smoothness      * mean over mesh edges (a_i - a_j)²
        + symmetry_weight * mean over mirror pairs (a_i - a_mirror(i))²
        + mean_weight     * mean over vertices (a_i - mean_albedo_i)²

    (the means make the weights independent of the numbers of points, edges and vertices): lighting first
    (`sh.fit_lighting` per frame with the prior-mean albedo), then Levenberg-Marquardt on albedo and
    lighting jointly. The result is rescaled per channel to the scale convention of the module docstring.

    Args:
        model: `MorphableModel` (its triangles, and the fitted shape through `FrameFit.camera_vertices`).
        fits: F `FrameFit`; corrs: F `Correspondences` with colors (N_f, 3) (linear RGB).
        symmetry: (V,) int vertex ids, vertex i's left-right mirror (itself on the midline), or None.
        mean_albedo: scalar, (3,) or (V, 3) prior mean albedo; also sets the per-channel scale (the albedo's
            mean over the observed vertices is made equal to mean_albedo's there).
        smoothness, symmetry_weight, mean_weight: prior weights (>= 0, mean_weight > 0).
        iterations: Levenberg-Marquardt steps (stops early once converged).
        light_prior: passed to `sh.fit_lighting` as `prior` for the first lighting estimate, or None.

    Returns:
        albedo (V, 3) float64 and SH lighting (F, 9, 3) float64 in each frame's camera frame.
    """
    fits, corrs = list(fits), list(corrs)
    if len(fits) != len(corrs) or not fits:
        raise ValueError(f"need one FrameFit per Correspondences, got {len(fits)} fits and {len(corrs)} frames")
    V = model.num_vertices
    mean = np.asarray(mean_albedo, dtype=np.float64)
    if mean.shape not in ((), (3,), (V, 3)):
        raise ValueError(f"mean_albedo must be a scalar, (3,) or (V, 3) = ({V}, 3), got {mean.shape}")
    mean = np.broadcast_to(mean, (V, 3)).copy()
    if min(smoothness, symmetry_weight) < 0 or not mean_weight > 0:
        raise ValueError("smoothness and symmetry_weight must be >= 0 and mean_weight > 0")

    # Per frame: interpolation matrix (N, V), SH basis of the camera-frame normals (N, 9), weights, colours.
    frames, observed = [], np.zeros(V, dtype=bool)
    for k, (fit, corr) in enumerate(zip(fits, corrs, strict=True)):
        if corr.colors is None:
            raise ValueError(f"frame {k}: correspondences have no colors; inverse SH needs colors (N, 3)")
        vid = _check_triangles(model, corr, f"frame {k}")
        normals = _interpolate(vertex_normals(fit.camera_vertices(model), model.triangles), vid, corr.barycentric)
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
        w = corr.weights / max(float(corr.weights.sum()), 1e-300)
        frames.append((_interpolation_matrix(vid, corr.barycentric, V), sh.basis(normals), w, corr.colors, normals))
        observed[vid[(corr.barycentric > 0) & (w[:, None] > 0)]] = True
    observed = observed if observed.any() else np.ones(V, dtype=bool)

    prior = mean_weight / V * sp.identity(V, format="csr")
    edges = _mesh_edges(np.asarray(model.triangles))
    if smoothness > 0 and len(edges):
        prior = prior + smoothness / len(edges) * _edge_laplacian(edges, V)
    if symmetry is not None:
        pairs = _symmetry_pairs(symmetry, V)
        if symmetry_weight > 0 and len(pairs):
            prior = prior + symmetry_weight / len(pairs) * _edge_laplacian(pairs, V)
    prior_rhs = mean_weight / V * mean  # (V, 3)

    # Start: the prior-mean albedo and the lighting it implies.
    L = np.stack([sh.fit_lighting(colors, M @ mean, normals, weights=w, prior=light_prior)
                  for M, _, w, colors, normals in frames])  # (F, 9, 3)
    albedo = np.empty((V, 3))
    for ch in range(3):
        channel = [(M, B, w, colors[:, ch]) for M, B, w, colors, _ in frames]
        albedo[:, ch], L[:, :, ch] = _albedo_light_channel(channel, prior, prior_rhs[:, ch], mean[:, ch],
                                                           L[:, :, ch], iterations)
    # The per-channel scale (albedo * k, lighting / k) is fixed by the convention: match the prior mean's level.
    level = albedo[observed].mean(axis=0)
    scale = np.where(level != 0, mean[observed].mean(axis=0) / np.where(level != 0, level, 1.0), 1.0)
    return albedo * scale, L / scale


def frame_lighting(model, fit: FrameFit, corr: Correspondences, albedo: np.ndarray, light_prior=None) -> np.ndarray:
    """SH lighting (9, 3) (camera frame) of one frame given the per-vertex albedo (V, 3): `sh.fit_lighting` on
    the frame's colours at its correspondences (e.g. for every frame of a video once `inverse_sh_frames` has
    found the albedo on a subset)."""
    if corr.colors is None:
        raise ValueError("correspondences have no colors; the lighting needs colors (N, 3)")
    if np.shape(albedo) != (model.num_vertices, 3):
        raise ValueError(f"albedo must have shape (V, 3) = ({model.num_vertices}, 3), got {np.shape(albedo)}")
    vid = _check_triangles(model, corr, "frame")
    normals = _interpolate(vertex_normals(fit.camera_vertices(model), model.triangles), vid, corr.barycentric)
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    w = corr.weights / max(float(corr.weights.sum()), 1e-300)
    return sh.fit_lighting(corr.colors, _interpolate(np.asarray(albedo, np.float64), vid, corr.barycentric), normals,
                           weights=w, prior=light_prior)


def mirror_vertices(mean: np.ndarray, tolerance: float = 0.02) -> np.ndarray | None:
    """(V,) left-right mirror of each vertex of a mean shape symmetric about x = 0 (the nearest vertex to its
    x-mirrored position), for the albedo's symmetry prior; None when some vertex has no mirror within
    `tolerance` times the shape's size (the model is not symmetric about x = 0)."""
    from scipy.spatial import cKDTree

    mean = np.asarray(mean, dtype=np.float64)
    distance, index = cKDTree(mean).query(mean * [-1.0, 1.0, 1.0])
    size = float(np.ptp(mean, axis=0).max())
    return index if distance.max() <= tolerance * size else None


def inverse_sh(model, fit: FrameFit, corr: Correspondences, *, symmetry=None, mean_albedo=0.5,
               smoothness: float = 0.01, symmetry_weight: float = 0.01, mean_weight: float = 0.001,
               iterations: int = 10, light_prior=None) -> tuple[np.ndarray, np.ndarray]:
    """One frame's per-vertex albedo (V, 3) and SH lighting (9, 3) (camera frame); see `inverse_sh_frames`.

    A single frame does not separate smooth albedo variations from the lighting: the priors decide.
    """
    albedo, L = inverse_sh_frames(model, [fit], [corr], symmetry=symmetry, mean_albedo=mean_albedo,
                                  smoothness=smoothness, symmetry_weight=symmetry_weight, mean_weight=mean_weight,
                                  iterations=iterations, light_prior=light_prior)
    return albedo, L[0]
