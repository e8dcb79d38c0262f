"""Two-view geometry of the training format: reprojection against analytic cameras, warping, validity, gradients."""

import math

import numpy as np
import pytest
import torch

from invrender_core.camera import Camera
from invrender_core.train.multiview import reproject, warp_to_view

F64 = torch.float64


def _K(fx, fy, cx, cy, b=1):
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=F64).expand(b, 3, 3).clone()


def _pose(R=None, t=(0.0, 0.0, 0.0), b=1):
    T = torch.eye(4, dtype=F64)
    if R is not None:
        T[:3, :3] = torch.as_tensor(R, dtype=F64)
    T[:3, 3] = torch.as_tensor(t, dtype=F64)
    return T.expand(b, 4, 4).clone()


def _yaw(deg):
    """Rotation about the camera's y (up) axis: positive turns the view to the left."""
    a = math.radians(deg)
    return [[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]]


def _column_map(h, w, b=1):
    return torch.arange(w, dtype=F64).expand(b, 1, h, w).clone()


# ---------- translation: a fronto-parallel plane shifts by f * baseline / depth pixels ----------

def test_translated_camera_shifts_plane_by_known_pixels():
    h, w = 8, 16
    K = _K(10.0, 10.0, 8.0, 4.0)
    depth = torch.full((1, 1, h, w), 5.0, dtype=F64)
    # Source camera 1 unit to the right: u_src = u_dst - f * 1 / 5 = u_dst - 2 pixels.
    warped, valid = warp_to_view(_column_map(h, w), depth, K, _pose(), K, _pose(t=(1.0, 0.0, 0.0)), depth_src=depth)
    assert warped.shape == (1, 1, h, w) and valid.shape == (1, 1, h, w) and valid.dtype == torch.bool
    expected_valid = torch.arange(w) >= 2  # u_src = j + 0.5 - 2 >= 0
    assert torch.equal(valid[0, 0], expected_valid.expand(h, w))
    cols = torch.arange(w, dtype=F64) - 2.0
    assert torch.allclose(warped[0, 0], torch.where(expected_valid, cols, 0.0).expand(h, w), atol=1e-12)


def test_reproject_matches_numpy_camera_projection_under_rotation_and_translation():
    h, w = 12, 20
    cam_dst = Camera(w, h, 18.0, 17.0, 9.7, 6.2)
    cam_src = Camera(2 * w, 2 * h, 30.0, 31.0, 21.0, 11.0)  # other intrinsics and resolution
    rng = np.random.default_rng(0)
    depth = rng.uniform(3.0, 6.0, (h, w))
    R_dst, t_dst = np.array(_yaw(10.0)), np.array([0.3, -0.2, 0.5])
    R_src, t_src = np.array(_yaw(-15.0)), np.array([-0.8, 0.1, 0.2])
    # Expected: back-project with numpy, to world, into the source camera, project with Camera.project.
    P = depth[..., None] * cam_dst.rays()
    Pw = P @ R_dst.T + t_dst
    Ps = (Pw - t_src) @ R_src  # R^T (x - t) for row vectors
    uv_expected, z_expected = cam_src.project(Ps)
    uv, z, ok = reproject(torch.tensor(depth)[None, None], torch.tensor(cam_dst.K)[None], _pose(R_dst, t_dst),
                          torch.tensor(cam_src.K)[None], _pose(R_src, t_src))
    assert uv.shape == (1, 2, h, w) and z.shape == (1, 1, h, w) and bool(ok.all())
    np.testing.assert_allclose(uv[0].permute(1, 2, 0).numpy(), uv_expected, atol=1e-9)
    np.testing.assert_allclose(z[0, 0].numpy(), z_expected, rtol=1e-12)


def test_warp_of_coordinate_map_returns_source_coordinates():
    # Bilinear sampling reproduces a linear map exactly, so warping the source's pixel-centre coordinates
    # gives back the projected coordinates wherever they are at least half a pixel inside the image.
    h, w = 16, 24
    cam = Camera.from_fov(w, h, 60.0)
    K = torch.tensor(cam.K)[None]
    depth = torch.full((1, 1, h, w), 4.0, dtype=F64)
    src_pose = _pose(_yaw(8.0), (0.2, 0.05, 0.0))
    u, v = cam.pixel_grid()
    coords = torch.tensor(np.stack([u, v]))[None]  # (1, 2, H, W)
    warped, valid = warp_to_view(coords, depth, K, _pose(), K, src_pose)
    uv, _, _ = reproject(depth, K, _pose(), K, src_pose)
    interior = valid & (uv[:, :1] >= 0.5) & (uv[:, :1] <= w - 0.5) & (uv[:, 1:] >= 0.5) & (uv[:, 1:] <= h - 0.5)
    assert interior.sum() > 0.5 * h * w
    assert torch.allclose(warped[interior.expand(-1, 2, -1, -1)], uv[interior.expand(-1, 2, -1, -1)], atol=1e-9)
    inside = (uv[:, :1] >= 0) & (uv[:, :1] < w) & (uv[:, 1:] >= 0) & (uv[:, 1:] < h)
    assert torch.equal(valid, inside)


def test_identity_warp_is_exact_and_float32_follows_src_dtype():
    h, w = 6, 7
    K = _K(5.0, 5.0, 3.5, 3.0)
    src = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    depth = torch.rand(2, 1, h, w, generator=torch.Generator().manual_seed(1)) + 1.0
    warped, valid = warp_to_view(src, depth, K.expand(2, 3, 3), _pose(b=2), K.expand(2, 3, 3), _pose(b=2),
                                 depth_src=depth)
    assert warped.dtype == torch.float32 and bool(valid.all())
    assert torch.allclose(warped, src, atol=1e-6)


# ---------- validity ----------

def test_occluded_and_missing_source_depth_is_invalid():
    h, w = 8, 16
    K = _K(10.0, 10.0, 8.0, 4.0)
    depth = torch.full((1, 1, h, w), 5.0, dtype=F64)
    depth_src = depth.clone()
    depth_src[..., 2:5, 6:9] = 2.0  # an occluder in front of the plane, seen by the source only
    depth_src[..., 6:, 12:] = 0.0  # MVS hole in the source
    src_pose = _pose(t=(1.0, 0.0, 0.0))
    _, valid_plain = warp_to_view(_column_map(h, w), depth, K, _pose(), K, src_pose)
    _, valid = warp_to_view(_column_map(h, w), depth, K, _pose(), K, src_pose, depth_src=depth_src)
    # Destination column j samples source column j - 2 (see the translation test).
    expected = valid_plain.clone()
    expected[..., 2:5, 8:11] = False  # source columns 6..8
    expected[..., 6:, 14:] = False  # source columns 12..
    assert torch.equal(valid, expected)
    # A 4 % depth disagreement passes the default 5 % tolerance, 6 % does not.
    for factor, ok in ((1.04, True), (1.06, False)):
        _, v = warp_to_view(_column_map(h, w), depth, K, _pose(), K, src_pose, depth_src=depth * factor)
        assert bool(v[valid_plain].all()) is ok


def test_missing_destination_depth_and_points_behind_the_source_are_invalid():
    h, w = 4, 5
    K = _K(4.0, 4.0, 2.5, 2.0)
    depth = torch.full((1, 1, h, w), 3.0, dtype=F64)
    depth[..., 0, 0] = 0.0
    depth[..., 1, 1] = float("nan")
    src = torch.ones(1, 2, h, w, dtype=F64)
    warped, valid = warp_to_view(src, depth, K, _pose(), K, _pose())
    assert not valid[0, 0, 0, 0] and not valid[0, 0, 1, 1] and int(valid.sum()) == h * w - 2
    assert warped[0, :, 0, 0].abs().sum() == 0 and torch.isfinite(warped).all()
    # A source camera turned around (180° yaw) sees the plane behind it.
    _, _, ok = reproject(depth, K, _pose(), K, _pose(_yaw(180.0)))
    warped, valid = warp_to_view(src, depth, K, _pose(), K, _pose(_yaw(180.0)))
    assert not bool(ok.any()) and not bool(valid.any()) and warped.abs().sum() == 0


# ---------- gradients ----------

def test_warp_gradcheck_wrt_src_map():
    h, w = 4, 5
    K = _K(4.0, 4.0, 2.5, 2.0)
    depth = torch.full((1, 1, h, w), 3.0, dtype=F64)
    src_pose = _pose(_yaw(3.0), (0.1, 0.05, 0.0))  # sub-pixel shifts: real bilinear weights
    src = torch.rand(1, 2, h, w, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: warp_to_view(s, depth, K, _pose(), K, src_pose)[0], (src,))


# ---------- errors ----------

def test_shape_errors():
    K, T = _K(4.0, 4.0, 2.0, 2.0), _pose()
    depth = torch.ones(1, 1, 4, 4, dtype=F64)
    src = torch.ones(1, 3, 4, 4, dtype=F64)
    with pytest.raises(ValueError, match="depth_dst"):
        warp_to_view(src, depth[:, 0], K, T, K, T)
    with pytest.raises(ValueError, match="src_map"):
        warp_to_view(src[0], depth, K, T, K, T)
    with pytest.raises(ValueError, match="batch"):
        warp_to_view(src.expand(2, -1, -1, -1), depth, K, T, K, T)
    with pytest.raises(ValueError, match="K_src"):
        warp_to_view(src, depth, K, T, K[0], T)
    with pytest.raises(ValueError, match="cam_to_world_dst"):
        warp_to_view(src, depth, K, T[:, :3], K, T)
    with pytest.raises(ValueError, match="depth_src"):
        warp_to_view(src, depth, K, T, K, T, depth_src=depth[..., :3])
    with pytest.raises(ValueError, match="last row"):
        bad = K.clone()
        bad[:, 2, 2] = 2.0
        warp_to_view(src, depth, bad, T, K, T)
    with pytest.raises(ValueError, match="occlusion_tolerance"):
        warp_to_view(src, depth, K, T, K, T, occlusion_tolerance=0.0)
