"""Combine a depth map with a normal map (Nehab, Rusinkiewicz, Davis, Ramamoorthi, SIGGRAPH 2005).

"Efficiently combining positions and normals for precise 3D geometry": depth maps are accurate at low
spatial frequencies and noisy at high ones, normal maps the opposite. The fused depth minimises a
linear least-squares energy with one unknown per valid pixel, its depth d_i along its own camera ray,
so the point is P_i = d_i r_i (r_i = camera.rays(), the ray at depth 1):

    position rows   sqrt(lam c_i)         (d_i - d0_i) / d0_i            one per valid pixel
    tangent rows    sqrt(1 - lam)  n_i . (P_j - P_i)    / d0_i            for j = right and down 4-neighbours

d0 is the input depth, c_i its confidence in [0, 1] and n_i the unit normal of pixel i: a tangent
row asks that the finite-difference tangent P_j - P_i be perpendicular to the normal (Nehab's
T_x . N = 0 and T_y . N = 0, with the ray-scaled tangents of perspective depth).

Normalisation, so that `lam` means the same at any depth scale and resolution: every row of pixel i
is divided by its input depth d0_i, which makes all residuals relative depth errors (a scene in
metres or in the arbitrary scale of a monocular network fuses identically, and near and far surfaces
count equally). The rows are *not* divided by the pixel spacing: like Nehab's, the tangent residual
of a surface is a per-pixel depth difference, so depth noise of a given relative size contributes
residuals of the same size to both kinds of rows at any resolution. lam is thus the per-pixel
trade-off: for a smooth surface the solution follows the normals above about
sqrt(lam / (1 - lam)) / (2 pi) cycles per pixel and the depth below (lam = 0.1: detail finer than
about 20 pixels comes from the normals). Nehab's unscaled tangent rows are kept on purpose: their
weight |n . r| falls towards grazing views, where normals predict depth poorly.

No tangent row crosses a depth discontinuity of the input depth (relative jump > the threshold, see
geometry.py) or involves an invalid pixel, and none comes from a normal within about 3 degrees of
grazing or facing away (|n . r| / |r| < MIN_FACING_COS): such a normal carries no usable depth
information. A pixel with no tangent row keeps its input depth.

The unknowns are solved as s_i = d_i / d0_i (the same minimiser; the change of variables makes all
matrix entries O(1) whatever the depths) from the normal equations A^T A s = A^T b, a 5-point-stencil
matrix assembled directly and scaled to a unit diagonal, with conjugate gradients warm-started at the
input depth and preconditioned by smoothed-aggregation AMG (bench/bench_fusion.py: 4 megapixels in
about 4 s and 1.25 GB on two cores).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from pyamg.aggregation import standard_aggregation
from pyamg.relaxation.relaxation import gauss_seidel

from . import geometry
from .camera import Camera

SOLVERS = ("amg", "cg-jacobi", "lsqr")
# Tangent rows need the normal to face the camera by at least this cosine (about 87 degrees).
MIN_FACING_COS = 0.05
# Confidence is clipped below at this value so that every connected region keeps the input's scale
# (tangent rows alone fix depth only up to a factor). Use `mask` to drop pixels altogether.
MIN_CONFIDENCE = 1e-3
# Relative residual of the scaled normal equations. On the analytic scene of bench/bench_fusion.py,
# 1e-4 leaves the result within 1e-3 of its own error from the converged solution (and 1e-6 costs
# two more AMG iterations for nothing visible).
DEFAULT_LAMBDA = 0.1  # the weight of positions against tangents asked for by Nehab-style fusion
DEFAULT_TOL = 1e-4
DEFAULT_MAXITER = {"amg": 200, "cg-jacobi": 5000, "lsqr": 50000}


@dataclass
class FusionInfo:
    """How a fusion went: sizes, iterations, final relative residual, timings (seconds)."""

    solver: str
    unknowns: int  # valid pixels
    tangent_rows: int
    iterations: int
    residual: float  # relative residual of the diagonally scaled normal equations (fuse docstring)
    converged: bool
    build_s: float  # assembling the system
    setup_s: float  # preconditioner (AMG hierarchy) set-up
    solve_s: float  # iterations


@dataclass
class _System:
    """The least-squares rows on the pixel grid, unknowns s = d / d0 at the valid pixels.

    Tangent rows are stored per pixel pair: "h" between (i, j) and its right neighbour (i, j+1),
    arrays (H, W-1); "v" between (i, j) and the pixel below, (i+1, j), arrays (H-1, W). A row reads
    alpha * s_first + beta * s_second; alpha = beta = 0 where link is False (no row).
    """

    valid: np.ndarray  # (H, W) bool: pixels with an unknown
    pos_weight: np.ndarray  # (H, W) lam * c: squared weight of the position rows, 0 where not valid
    link_h: np.ndarray  # (H, W-1) bool
    alpha_h: np.ndarray  # (H, W-1)
    beta_h: np.ndarray  # (H, W-1)
    link_v: np.ndarray  # (H-1, W) bool
    alpha_v: np.ndarray  # (H-1, W)
    beta_v: np.ndarray  # (H-1, W)


def _check_inputs(depth, normals, camera, confidence, mask, lam):
    d0 = np.asarray(depth, dtype=np.float64)
    shape = (camera.height, camera.width)
    if d0.shape != shape:
        raise ValueError(f"depth has shape {d0.shape}, expected {shape} to match the camera "
                         f"({camera.width}x{camera.height})")
    normals = np.asarray(normals)
    if normals.shape != shape + (3,):
        raise ValueError(f"normals have shape {normals.shape}, expected {shape + (3,)} "
                         f"to match depth {d0.shape}")
    if confidence is not None:
        confidence = np.asarray(confidence, dtype=np.float64)
        if confidence.shape != shape:
            raise ValueError(f"confidence has shape {confidence.shape}, expected {shape} "
                             f"to match depth {d0.shape}")
    if mask is not None and np.shape(mask) != shape:
        raise ValueError(f"mask has shape {np.shape(mask)}, expected {shape} to match depth {d0.shape}")
    if not 0.0 < lam <= 1.0:
        raise ValueError(f"lam must be in (0, 1], got {lam}")
    return d0, normals, confidence


def _build_system(d0_map, normals, camera, confidence, lam, mask, threshold) -> _System:
    # Normal components as separate (H, W) float64 maps and rays as a row (1, W) and a column (H, 1):
    # no (H, W, 3) temporaries, which dominate memory at several megapixels.
    nx, ny, nz = (normals[..., k].astype(np.float64) for k in range(3))  # (H, W) each
    length = np.sqrt(nx * nx + ny * ny + nz * nz)
    valid = geometry.valid_mask(d0_map, mask) & np.isfinite(length) & (length > 0)
    if not valid.any():
        raise ValueError("no valid pixel to fuse: depth must be finite and > 0, normals finite and non-zero "
                         "(and mask True) somewhere")
    inv_length = 1.0 / np.where(valid, length, 1.0)
    nx *= inv_length
    ny *= inv_length
    nz *= inv_length
    h, w = valid.shape
    rx = ((np.arange(w) + 0.5 - camera.cx) / camera.fx)[None, :]  # (1, W) ray x at depth 1
    ry = (-(np.arange(h) + 0.5 - camera.cy) / camera.fy)[:, None]  # (H, 1) ray y at depth 1; ray z = -1
    n_dot_r = nx * rx + ny * ry - nz  # (H, W)  n_i . r_i, negative when facing the camera
    facing = valid & (-n_dot_r >= MIN_FACING_COS * np.sqrt(rx * rx + ry * ry + 1.0))
    d0 = np.where(valid, d0_map, 1.0)  # (H, W) safe to divide by
    wt = np.sqrt(1.0 - lam)

    # Row of the pair (i, j): n_i . (d_j r_j - d_i r_i) / d0_i with d = s d0, i.e.
    # alpha = -wt n_i . r_i and beta = wt (n_i . r_j) d0_j / d0_i.
    src, dst = np.s_[:, :-1], np.s_[:, 1:]  # right neighbours
    link_h = facing[src] & geometry.continuous(d0[src], d0[dst], valid[src], valid[dst], threshold)
    n_dot_rj = nx[src] * rx[dst] + ny[src] * ry - nz[src]  # (H, W-1)
    alpha_h = np.where(link_h, -wt * n_dot_r[src], 0.0)
    beta_h = np.where(link_h, wt * n_dot_rj * d0[dst] / d0[src], 0.0)
    src, dst = np.s_[:-1], np.s_[1:]  # neighbours below
    link_v = facing[src] & geometry.continuous(d0[src], d0[dst], valid[src], valid[dst], threshold)
    n_dot_rj = nx[src] * rx + ny[src] * ry[dst] - nz[src]  # (H-1, W)
    alpha_v = np.where(link_v, -wt * n_dot_r[src], 0.0)
    beta_v = np.where(link_v, wt * n_dot_rj * d0[dst] / d0[src], 0.0)

    c = 1.0 if confidence is None else np.clip(np.nan_to_num(confidence, nan=0.0), MIN_CONFIDENCE, 1.0)
    pos_weight = np.where(valid, lam * c, 0.0)
    return _System(valid=valid, pos_weight=pos_weight, link_h=link_h, alpha_h=alpha_h, beta_h=beta_h,
                   link_v=link_v, alpha_v=alpha_v, beta_v=beta_v)


def _placed(a: np.ndarray, where, shape) -> np.ndarray:
    """Array of the given shape, zero (False) except a placed at the slice where."""
    out = np.zeros(shape, dtype=a.dtype)
    out[where] = a
    return out


def _normal_matrix(system: _System) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Jacobi-scaled normal equations: M (n, n) CSR, rhs (n,) and scale (n,) over the valid pixels.

    With D = diag(A^T A) and scale = D^(-1/2): M = scale A^T A scale (unit diagonal), rhs = scale A^T b,
    and s = scale * y for the solution y of M y = rhs. The scaling makes all entries O(1) and the
    diagonal preconditioner the identity. Each tangent row touches two unknowns, so A^T A has the
    5-point pattern of the pixel grid: its CSR arrays are written directly, slot by slot (up, left,
    centre, right, down neighbour: ascending columns in raster order), with no COO sort or duplicate
    summation.
    """
    sy = system
    valid = sy.valid
    diag = sy.pos_weight.copy()  # (H, W); alpha = beta = 0 where there is no row
    diag[:, :-1] += sy.alpha_h**2
    diag[:, 1:] += sy.beta_h**2
    diag[:-1] += sy.alpha_v**2
    diag[1:] += sy.beta_v**2
    scale = np.where(valid, 1.0 / np.sqrt(np.where(valid, diag, 1.0)), 0.0)  # (H, W); diag >= lam c > 0
    off_h = sy.alpha_h * sy.beta_h * scale[:, :-1] * scale[:, 1:]  # (H, W-1) entry (p, right of p)
    off_v = sy.alpha_v * sy.beta_v * scale[:-1] * scale[1:]  # (H-1, W) entry (p, below p)
    n = int(valid.sum())
    index = np.full(valid.shape, -1, dtype=np.int32)
    index[valid] = np.arange(n, dtype=np.int32)

    on_valid = (lambda a: a.ravel()) if n == valid.size else (lambda a: a[valid])  # (H, W) -> (n,)
    # Off-diagonal slots of row p in ascending column order (raster order): the pair array, where on
    # the grid its entries go, the neighbour's unknown index. None is the diagonal.
    slots = ((off_v, sy.link_v, np.s_[1:], index[:-1]),  # up: pair (p - W, p) seen from p
             (off_h, sy.link_h, np.s_[:, 1:], index[:, :-1]),  # left
             None,
             (off_h, sy.link_h, np.s_[:, :-1], index[:, 1:]),  # right: pair (p, p + 1)
             (off_v, sy.link_v, np.s_[:-1], index[1:]))  # down
    present = [None if slot is None else on_valid(_placed(slot[1], slot[2], valid.shape)) for slot in slots]
    indptr = np.zeros(n + 1, dtype=np.int32)  # 5 n entries at most: int32 up to 400 megapixels
    np.cumsum(1 + sum(p.astype(np.int32) for p in present if p is not None), out=indptr[1:])
    data = np.empty(indptr[-1])
    indices = np.empty(indptr[-1], dtype=np.int32)
    free = indptr[:-1].copy()  # (n,) next free position in each row
    for slot, has in zip(slots, present, strict=True):
        if slot is None:
            data[free], indices[free] = 1.0, np.arange(n, dtype=np.int32)
            free += 1
            continue
        off, _, where, neighbour = slot
        at = free[has]
        data[at] = on_valid(_placed(off, where, valid.shape))[has]
        indices[at] = on_valid(_placed(neighbour, where, valid.shape))[has]
        free += has
    matrix = sp.csr_matrix((data, indices, indptr), shape=(n, n))
    matrix.has_sorted_indices = True
    return matrix, (sy.pos_weight * scale)[valid], scale[valid]  # A^T b: position rows target s = 1


def _row_matrix(system: _System) -> tuple[sp.csr_matrix, np.ndarray]:
    """A ((n + E), n) CSR and b ((n + E),) in the unknowns s: position rows first, then tangent rows."""
    sy = system
    n = int(sy.valid.sum())
    index = np.full(sy.valid.shape, -1, dtype=np.int64)
    index[sy.valid] = np.arange(n)
    first = np.concatenate([index[:, :-1][sy.link_h], index[:-1][sy.link_v]])
    second = np.concatenate([index[:, 1:][sy.link_h], index[1:][sy.link_v]])
    alpha = np.concatenate([sy.alpha_h[sy.link_h], sy.alpha_v[sy.link_v]])
    beta = np.concatenate([sy.beta_h[sy.link_h], sy.beta_v[sy.link_v]])
    e = len(first)
    sqrt_w = np.sqrt(sy.pos_weight[sy.valid])
    rows = np.concatenate([np.arange(n), n + np.arange(e), n + np.arange(e)])
    cols = np.concatenate([np.arange(n), first, second])
    A = sp.csr_matrix((np.concatenate([sqrt_w, alpha, beta]), (rows, cols)), shape=(n + e, n))
    return A, np.concatenate([sqrt_w, np.zeros(e)])


class _SmoothedAggregation:
    """Smoothed-aggregation AMG V-cycle (Vanek, Mandel, Brezina 1996) for an SPD CSR matrix.

    The algorithm of pyamg.smoothed_aggregation_solver with all couplings strong, the constant
    near-null-space vector, a Jacobi-smoothed prolongator (omega = 4/3 / rho(D^-1 A), rho bounded by
    Gershgorin) and Gauss-Seidel smoothing, forward before and backward after the coarse correction
    (a symmetric cycle, as CG needs). It is built here from pyamg's aggregation and relaxation
    kernels, in CSR throughout: pyamg's driver runs its levels as 1x1-block BSR matrices and estimates
    spectral radii by Arnoldi, which at 4 megapixels made the set-up 2.5x slower and the peak memory
    0.35 GB larger, and its preconditioner computes two extra fine-level residuals per cycle.
    """

    def __init__(self, matrix: sp.csr_matrix, max_coarse: int = 500):
        self.shape = matrix.shape
        self.levels = []  # (A, P, R) from fine to coarse
        A = matrix
        while A.shape[0] > max_coarse:
            aggregates = standard_aggregation(A)[0]  # (n, nc): one 1 per aggregated node
            nc = aggregates.shape[1]
            if aggregates.nnz == 0 or nc >= A.shape[0]:
                break  # only isolated nodes left: nothing to coarsen
            # Tentative prolongator: the constant vector on each aggregate, unit norm per column.
            sizes = np.bincount(aggregates.indices, minlength=nc)
            T = sp.csr_matrix((1.0 / np.sqrt(sizes[aggregates.indices]), aggregates.indices,
                               aggregates.indptr), shape=(A.shape[0], nc))
            d_inv = 1.0 / A.diagonal()
            rho = float((abs(A).sum(axis=1).A1 * d_inv).max())  # Gershgorin bound on rho(D^-1 A)
            P = sp.csr_matrix(T - sp.diags((4.0 / 3.0 / rho) * d_inv) @ (A @ T))
            R = sp.csr_matrix(P.T)
            self.levels.append((A, P, R))
            A = sp.csr_matrix(R @ (A @ P))
        # Sparse LU of the coarsest matrix: small, or diagonal if coarsening stalled.
        self.coarse_solve = spla.factorized(sp.csc_matrix(A))

    def _cycle(self, k: int, b: np.ndarray) -> np.ndarray:
        if k == len(self.levels):
            return self.coarse_solve(b)
        A, P, R = self.levels[k]
        x = np.zeros_like(b)
        gauss_seidel(A, x, b, iterations=1, sweep="forward")
        x += P @ self._cycle(k + 1, R @ (b - A @ x))
        gauss_seidel(A, x, b, iterations=1, sweep="backward")
        return x

    def as_operator(self) -> spla.LinearOperator:
        """The V-cycle as an (n, n) operator for scipy's cg's M (an exact solve if there are no levels)."""
        return spla.LinearOperator(self.shape, matvec=lambda b: self._cycle(0, np.ravel(b)), dtype=np.float64)


def fuse(depth: np.ndarray, normals: np.ndarray, camera: Camera, confidence: np.ndarray | None = None,
         lam: float = DEFAULT_LAMBDA, mask: np.ndarray | None = None,
         discontinuity_threshold: float | None = geometry.DEFAULT_DISCONTINUITY_THRESHOLD,
         tol: float = DEFAULT_TOL, maxiter: int | None = None, solver: str = "amg",
         return_info: bool = False):
    """Fused depth (H, W) float32 from depth (H, W) and unit camera-frame normals (H, W, 3).

    confidence (H, W) in [0, 1] scales the position weight lam * c_i (default 1; clipped below at
    MIN_CONFIDENCE); lam in (0, 1] weighs positions against tangents (module docstring: per-pixel,
    scale-free). mask (H, W) bool selects the pixels to fuse; pixels with invalid depth (non-finite
    or <= 0) or normals (non-finite or zero) are left out as well. Left-out pixels are NaN in the
    output (unknown, as every consumer of depth treats non-finite values). Tangent rows are cut at
    input-depth jumps above discontinuity_threshold (relative; None: never cut); it must exceed the
    pixel-to-pixel noise of the depth, or noisy pixels lose their smoothing.

    solver: "amg" (default: CG preconditioned by a smoothed-aggregation AMG V-cycle built from
    pyamg's kernels, robust when the depth has little weight), "cg-jacobi" (CG with a diagonal
    preconditioner: no set-up, so faster while lam * confidence is large, about 0.1, but its iterations
    grow as 1 / sqrt(lam * confidence)) or "lsqr" (scipy lsqr on the rows themselves; for comparison).
    CG stops at relative residual tol of the diagonally scaled normal equations (lsqr: atol = btol =
    tol), after at most maxiter iterations (default per solver: DEFAULT_MAXITER); not converging warns.
    With return_info=True returns (depth, FusionInfo).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    maxiter = DEFAULT_MAXITER[solver] if maxiter is None else int(maxiter)
    start = time.perf_counter()
    d0, normals, confidence = _check_inputs(depth, normals, camera, confidence, mask, lam)
    system = _build_system(d0, normals, camera, confidence, lam, mask, discontinuity_threshold)
    valid = system.valid
    n_rows = int(system.link_h.sum() + system.link_v.sum())
    matrix, rhs, scale = _normal_matrix(system)  # also for lsqr: its residual is reported the same way
    A, b = _row_matrix(system) if solver == "lsqr" else (None, None)
    del system  # the grid arrays are not needed any more: keep the solver's peak memory down
    build_s = time.perf_counter() - start
    t = time.perf_counter()
    if solver == "lsqr":
        result = spla.lsqr(A, b, atol=tol, btol=tol, iter_lim=maxiter, x0=np.ones(len(rhs)))
        # istop 0: the start is exact already; 1, 2: converged; 3 and up: conlim or iteration limit.
        s, iterations, converged = result[0], int(result[2]), result[1] in (0, 1, 2)
        y = s / scale
        setup_s = 0.0
    else:
        # The matrix has a unit diagonal, so "cg-jacobi" is plain CG on it.
        preconditioner = _SmoothedAggregation(matrix).as_operator() if solver == "amg" else None
        setup_s = time.perf_counter() - t
        count = [0]

        def callback(_):
            count[0] += 1

        # Warm start at the input depth: s = 1, y = s / scale.
        y, status = spla.cg(matrix, rhs, x0=1.0 / scale, rtol=tol, maxiter=maxiter, M=preconditioner,
                            callback=callback)
        s, iterations, converged = y * scale, count[0], status == 0
    solve_s = time.perf_counter() - t - setup_s
    residual = float(np.linalg.norm(rhs - matrix @ y) / np.linalg.norm(rhs))
    if not converged:
        warnings.warn(f"fusion ({solver}) stopped after {iterations} iterations at relative residual "
                      f"{residual:.2e} (tol {tol:.0e})", RuntimeWarning, stacklevel=2)
    fused = np.full(d0.shape, np.nan, dtype=np.float32)
    fused[valid] = s * d0[valid]
    if not return_info:
        return fused
    return fused, FusionInfo(solver=solver, unknowns=len(rhs), tangent_rows=n_rows, iterations=iterations,
                             residual=residual, converged=converged, build_s=build_s, setup_s=setup_s,
                             solve_s=solve_s)
