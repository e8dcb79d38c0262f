"""Real photos with measured depth, for evaluating the depth pipeline (see ../shared/data/README.md).

- KITTI (object benchmark frames): a Velodyne scan projected into camera 2 with the frame's calibration gives
  sparse metric planar depth (`kitti_lidar_depth`).
- Middlebury 2014 "Motorcycle" (`skimage.data.stereo_motorcycle`, quarter resolution): dense depth from the
  measured disparity, depth = f · baseline / (disparity + doffs) (`middlebury_motorcycle`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..camera import Camera

# Middlebury 2014 Motorcycle calibration (full resolution), divided by 4 for skimage's quarter-size pair.
MOTORCYCLE_FOCAL = 3979.911 / 4
MOTORCYCLE_CX, MOTORCYCLE_CY = 1244.772 / 4, 1019.507 / 4
MOTORCYCLE_DOFFS = 124.343 / 4
MOTORCYCLE_BASELINE_MM = 193.001


def read_kitti_calib(path: str | Path) -> dict[str, np.ndarray]:
    """KITTI calibration file -> {"P2": (3, 4), "R0_rect": (3, 3), "Tr_velo_to_cam": (3, 4), ...}."""
    shapes = {"R0_rect": (3, 3)}
    calib = {}
    for line in Path(path).read_text().splitlines():
        if ":" not in line:
            continue
        key, values = line.split(":", 1)
        numbers = np.array(values.split(), dtype=np.float64)
        calib[key.strip()] = numbers.reshape(shapes.get(key.strip(), (3, 4)))
    for key in ("P2", "R0_rect", "Tr_velo_to_cam"):
        if key not in calib:
            raise ValueError(f"{path}: KITTI calibration without {key}")
    return calib


def project_lidar(points: np.ndarray, calib: dict, width: int, height: int) -> np.ndarray:
    """Sparse planar depth (H, W) of camera 2 from Velodyne points (N, 3+) in metres; 0 where no point.

    X_rect = R0_rect · Tr_velo_to_cam · X_velo; pixel = P2 · X_rect; depth = the rectified camera's z. Where
    several points fall in one pixel the nearest wins (the others are hidden behind it).
    """
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must have shape (N, 3) or (N, 4), got {points.shape}")
    velo = np.c_[points[:, :3], np.ones(len(points))]  # (N, 4)
    rect = velo @ calib["Tr_velo_to_cam"].T @ calib["R0_rect"].T  # (N, 3)
    proj = np.c_[rect, np.ones(len(rect))] @ calib["P2"].T  # (N, 3)
    z = proj[:, 2]
    front = z > 0.1
    u = np.floor(proj[front, 0] / z[front]).astype(np.int64)
    v = np.floor(proj[front, 1] / z[front]).astype(np.int64)
    d = rect[front, 2]
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    u, v, d = u[inside], v[inside], d[inside]
    depth = np.full((height, width), np.inf)
    np.minimum.at(depth, (v, u), d)
    depth[~np.isfinite(depth)] = 0.0
    return depth.astype(np.float32)


def kitti_camera(calib: dict, width: int, height: int) -> Camera:
    """Camera 2's intrinsics from P2 (the translation column is the stereo offset, not intrinsics)."""
    P = calib["P2"]
    return Camera(width=width, height=height, fx=float(P[0, 0]), fy=float(P[1, 1]), cx=float(P[0, 2]),
                  cy=float(P[1, 2]))


def kitti_lidar_depth(calib_path: str | Path, velodyne_path: str | Path, width: int, height: int) -> np.ndarray:
    """Sparse metric depth (H, W) of a KITTI frame from its .bin scan (float32 x, y, z, reflectance)."""
    raw = np.fromfile(velodyne_path, dtype=np.float32)
    if raw.size % 4:
        raise ValueError(f"{velodyne_path}: not a KITTI Velodyne scan (size {raw.size} floats is not a multiple of 4)")
    return project_lidar(raw.reshape(-1, 4), read_kitti_calib(calib_path), width, height)


def motorcycle_depth_from_disparity(disparity: np.ndarray) -> np.ndarray:
    """Planar depth (H, W) in millimetres from Motorcycle's quarter-size disparity; 0 where it is unknown."""
    disparity = np.asarray(disparity, dtype=np.float64)
    ok = np.isfinite(disparity) & (disparity > 0)
    depth = np.zeros(disparity.shape)
    depth[ok] = MOTORCYCLE_FOCAL * MOTORCYCLE_BASELINE_MM / (disparity[ok] + MOTORCYCLE_DOFFS)
    return depth.astype(np.float32)


def middlebury_motorcycle() -> tuple[np.ndarray, np.ndarray, Camera]:
    """(left image uint8 (H, W, 3), depth mm (H, W) with 0 = unknown, Camera) of the Motorcycle pair."""
    from skimage.data import stereo_motorcycle

    left, _, disparity = stereo_motorcycle()
    h, w = disparity.shape
    camera = Camera(width=w, height=h, fx=MOTORCYCLE_FOCAL, fy=MOTORCYCLE_FOCAL, cx=MOTORCYCLE_CX,
                    cy=MOTORCYCLE_CY)
    return left, motorcycle_depth_from_disparity(disparity), camera
