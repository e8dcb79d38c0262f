"""Geometry between two views of the multiview training format (`train/data.py`): reproject pixels, warp maps.

Conventions (DESIGN.md, `camera.py`): camera frame x right, y up, z towards the viewer, so a visible point has
z = -depth < 0; planar depth; K = [[fx, s, cx], [0, fy, cy], [0, 0, 1]] maps (x, -y, -z) to homogeneous pixel
coordinates (u right, v down) with pixel (i, j) centred at (u, v) = (j + 0.5, i + 0.5); cam_to_world (4, 4)
maps camera-frame points to world points.

The destination view is the one whose pixels we fill ("view i" of the losses); the source view is the one we
sample ("view j"). `warp_to_view(albedo_j, depth_i, ...)` gives view j's albedo at view i's pixels.

Depth scale: depth maps and poses must share one scale. That holds for the synthetic data and for MVS depth
from one SfM reconstruction (COLMAP, MegaDepth), whose depths and camera centres are in the same units, so no
per-pair depth rescaling is done here. (The per-pair *albedo* scale IRN solves is a different ambiguity: it is
handled in `irn_losses`.)

Geometry is computed in float64 without gradient: depth and cameras are data. Only the sampled map is
differentiable (through `torch.nn.functional.grid_sample`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["reproject", "warp_to_view"]

# (x, -y, -z) <-> (x, y, z): the axis flip between the pixel-aligned frame K acts on and the camera frame.
_FLIP = (1.0, -1.0, -1.0)


def _check_depth(name: str, depth: torch.Tensor) -> None:
    if not isinstance(depth, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(depth).__name__}")
    if depth.ndim != 4 or depth.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, H, W), got {tuple(depth.shape)}")


def _check_camera(prefix: str, K: torch.Tensor, cam_to_world: torch.Tensor, b: int) -> None:
    for name, t, shape in ((f"K_{prefix}", K, (b, 3, 3)), (f"cam_to_world_{prefix}", cam_to_world, (b, 4, 4))):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} (B = {b} from the depth map), got {tuple(t.shape)}")
    last = K.detach().double()[:, 2]
    if not torch.allclose(last, last.new_tensor([0.0, 0.0, 1.0]).expand_as(last), atol=1e-9):
        raise ValueError(f"K_{prefix}'s last row must be [0, 0, 1] (a pinhole intrinsic matrix)")


@torch.no_grad()
def reproject(
    depth_dst: torch.Tensor,
    K_dst: torch.Tensor,
    cam_to_world_dst: torch.Tensor,
    K_src: torch.Tensor,
    cam_to_world_src: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each destination pixel's surface point lands in the source camera.

    Each pixel centre (j + 0.5, i + 0.5) of the destination view is back-projected with its planar depth,
    moved to world coordinates with cam_to_world_dst, into the source camera with inverse(cam_to_world_src),
    and projected with K_src.

    Args:
        depth_dst: (B, 1, H, W) planar depth of the destination view; not finite or <= 0 = unknown.
        K_dst, K_src: (B, 3, 3) intrinsics of the destination and source views.
        cam_to_world_dst, cam_to_world_src: (B, 4, 4) camera-to-world transforms.

    Returns:
        uv: (B, 2, H, W) float64 continuous source-pixel coordinates (u right, v down; pixel (i, j) covers
            [j, j+1) x [i, i+1)); -1 where ok is False.
        depth: (B, 1, H, W) float64 planar depth of the point in the source camera (= -z there); 0 where ok is
            False.
        ok: (B, 1, H, W) bool, depth_dst is valid and the point is in front of the source camera.
    """
    _check_depth("depth_dst", depth_dst)
    b, _, h, w = depth_dst.shape
    _check_camera("dst", K_dst, cam_to_world_dst, b)
    _check_camera("src", K_src, cam_to_world_src, b)
    dev = depth_dst.device
    f64 = dict(device=dev, dtype=torch.float64)
    d = depth_dst.detach().to(**f64)
    valid = torch.isfinite(d) & (d > 0)
    d = torch.where(valid, d, torch.ones_like(d)).reshape(b, 1, h * w)  # (B, 1, N)

    v, u = torch.meshgrid(torch.arange(h, **f64) + 0.5, torch.arange(w, **f64) + 0.5, indexing="ij")
    pix = torch.stack([u.reshape(-1), v.reshape(-1), torch.ones(h * w, **f64)])  # (3, N) homogeneous pixels
    flip = torch.tensor(_FLIP, **f64)[:, None]  # (3, 1)
    # K^-1 [u, v, 1] = (x, -y, -z) / depth because K's last row is [0, 0, 1].
    rays = torch.linalg.solve(K_dst.to(**f64), pix.expand(b, 3, h * w))  # (B, 3, N)
    points_dst = flip * (d * rays)  # (B, 3, N) camera frame of dst
    dst_to_src = torch.linalg.inv(cam_to_world_src.to(**f64)) @ cam_to_world_dst.to(**f64)  # (B, 4, 4)
    points_src = dst_to_src[:, :3, :3] @ points_dst + dst_to_src[:, :3, 3:]  # (B, 3, N) camera frame of src
    hom = K_src.to(**f64) @ (flip * points_src)  # (B, 3, N); hom[:, 2] = -z_src = source planar depth
    depth_src = hom[:, 2:3]  # (B, 1, N)
    ok = valid.reshape(b, 1, h * w) & (depth_src > 0)
    safe = torch.where(ok, depth_src, torch.ones_like(depth_src))
    uv = torch.where(ok, hom[:, :2] / safe, torch.full_like(hom[:, :2], -1.0))  # (B, 2, N)
    depth_src = torch.where(ok, depth_src, torch.zeros_like(depth_src))
    return uv.reshape(b, 2, h, w), depth_src.reshape(b, 1, h, w), ok.reshape(b, 1, h, w)


def _sample(src: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    # Bilinear, align_corners=False: grid -1 / +1 are the outer edges of the image, so pixel centres fall on
    # the pixels; "border" gives the edge half-pixels the edge value instead of blending with zeros.
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)


def warp_to_view(
    src_map: torch.Tensor,
    depth_dst: torch.Tensor,
    K_dst: torch.Tensor,
    cam_to_world_dst: torch.Tensor,
    K_src: torch.Tensor,
    cam_to_world_src: torch.Tensor,
    depth_src: torch.Tensor | None = None,
    occlusion_tolerance: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample a source-view map at the destination view's pixels (backward warping through depth_dst).

    A destination pixel is valid when its depth is valid (finite, > 0), its point is in front of the source
    camera, projects inside the source image (0 <= u < W_src, 0 <= v < H_src), and, when depth_src is given,
    is not occluded there: the source depth bilinearly sampled at that position is > 0 and agrees with the
    point's projected depth z, |d_src - z| <= occlusion_tolerance * min(d_src, z) (relative, as in
    `geometry.depth_discontinuities`). Sampling a hole (depth 0) mixes zeros into d_src and so fails the test:
    pixels next to holes are dropped, which is the safe side.

    Args:
        src_map: (B, C, H_src, W_src) map of the source view (albedo, shadow, ...), any float dtype.
        depth_dst: (B, 1, H, W) planar depth of the destination view (0 / non-finite = unknown).
        K_dst, K_src: (B, 3, 3) intrinsics at the resolution of depth_dst and src_map respectively.
        cam_to_world_dst, cam_to_world_src: (B, 4, 4) camera-to-world transforms.
        depth_src: optional (B, 1, H_src, W_src) planar depth of the source view, for the occlusion test.
        occlusion_tolerance: relative depth agreement required by the occlusion test, > 0.

    Returns:
        warped: (B, C, H, W) in src_map's dtype, bilinear samples of src_map; 0 where not valid.
            Differentiable w.r.t. src_map (depths and cameras get no gradient).
        valid: (B, 1, H, W) bool.
    """
    if not isinstance(src_map, torch.Tensor) or src_map.ndim != 4:
        shape = tuple(src_map.shape) if isinstance(src_map, torch.Tensor) else type(src_map).__name__
        raise ValueError(f"src_map must have shape (B, C, H_src, W_src), got {shape}")
    _check_depth("depth_dst", depth_dst)
    if src_map.shape[0] != depth_dst.shape[0]:
        raise ValueError(f"src_map {tuple(src_map.shape)} and depth_dst {tuple(depth_dst.shape)} must have the "
                         "same batch size")
    hs, ws = src_map.shape[-2:]
    if depth_src is not None:
        _check_depth("depth_src", depth_src)
        if tuple(depth_src.shape) != (src_map.shape[0], 1, hs, ws):
            raise ValueError(f"depth_src must have shape {(src_map.shape[0], 1, hs, ws)} to match src_map "
                             f"{tuple(src_map.shape)}, got {tuple(depth_src.shape)}")
    if not occlusion_tolerance > 0:
        raise ValueError(f"occlusion_tolerance must be positive, got {occlusion_tolerance!r}")

    uv, z, valid = reproject(depth_dst, K_dst, cam_to_world_dst, K_src, cam_to_world_src)
    with torch.no_grad():
        u, v = uv[:, 0:1], uv[:, 1:2]  # (B, 1, H, W) each
        valid &= (u >= 0) & (u < ws) & (v >= 0) & (v < hs)
        # Normalised coordinates for align_corners=False; invalid pixels sample the centre (finite, discarded).
        grid = torch.cat([2.0 * u / ws - 1.0, 2.0 * v / hs - 1.0], dim=1)  # (B, 2, H, W)
        grid = torch.where(valid, grid, torch.zeros_like(grid)).permute(0, 2, 3, 1)  # (B, H, W, 2)
        if depth_src is not None:
            ds = depth_src.detach().to(device=z.device, dtype=torch.float64)
            ds = torch.where(torch.isfinite(ds) & (ds > 0), ds, torch.zeros_like(ds))
            d_sampled = _sample(ds, grid)  # (B, 1, H, W) float64
            agree = (d_sampled - z).abs() <= occlusion_tolerance * torch.minimum(d_sampled, z)
            valid &= (d_sampled > 0) & agree
        grid = grid.to(device=src_map.device, dtype=src_map.dtype)
    valid = valid.to(src_map.device)
    warped = _sample(src_map, grid)  # (B, C, H, W)
    return torch.where(valid, warped, torch.zeros_like(warped)), valid
