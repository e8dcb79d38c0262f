"""Pinhole camera in the InvRender convention.

Camera frame: x right, y up, z towards the viewer (OpenGL/Blender), so the camera looks down -z and
points in front of it have z < 0. Depth is planar depth along the viewing axis: depth = -z > 0.
Pixel (row i, column j) covers [j, j+1) x [i, i+1) in continuous image coordinates (u right, v down);
its centre is (u, v) = (j + 0.5, i + 0.5). The principal point (cx, cy) is in the same coordinates,
so a centred camera has cx = width / 2, cy = height / 2.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_FOV_X_DEG = 60.0
# Diagonal of a 36 x 24 mm full frame: 35 mm-equivalent focal lengths (EXIF FocalLengthIn35mmFilm)
# are defined by matching the diagonal field of view.
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)


@dataclass(frozen=True)
class Camera:
    """Intrinsics of a pinhole camera: image size and fx, fy, cx, cy in pixels."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self):
        if self.width < 1 or self.height < 1:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")
        if not (self.fx > 0 and self.fy > 0):
            raise ValueError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")

    @classmethod
    def from_fov(cls, width: int, height: int, fov_x_deg: float = DEFAULT_FOV_X_DEG) -> Camera:
        """Centred camera with square pixels and the given horizontal field of view (degrees)."""
        if not 0.0 < fov_x_deg < 180.0:
            raise ValueError(f"horizontal field of view must be in (0, 180) degrees, got {fov_x_deg}")
        f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2.0)
        return cls(int(width), int(height), f, f, width / 2.0, height / 2.0)

    @classmethod
    def from_focal_35mm(cls, width: int, height: int, focal_35mm: float) -> Camera:
        """Centred camera from a 35 mm-equivalent focal length (mm), matched on the diagonal."""
        if focal_35mm <= 0:
            raise ValueError(f"35 mm-equivalent focal length must be positive, got {focal_35mm}")
        f = focal_35mm * math.hypot(width, height) / FULL_FRAME_DIAGONAL_MM
        return cls(int(width), int(height), f, f, width / 2.0, height / 2.0)

    @classmethod
    def from_K(cls, K: np.ndarray, width: int, height: int) -> Camera:
        """Camera from a 3x3 intrinsic matrix [[fx, s, cx], [0, fy, cy], [0, 0, 1]] (skew must be 0)."""
        K = np.asarray(K, dtype=np.float64)
        if K.shape != (3, 3):
            raise ValueError(f"K must have shape (3, 3), got {K.shape}")
        if abs(K[0, 1]) > 1e-9 * abs(K[0, 0]):
            raise ValueError("skewed intrinsics are not supported (K[0, 1] must be 0)")
        return cls(int(width), int(height), float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]))

    @classmethod
    def from_dict(cls, d: dict) -> Camera:
        """Inverse of to_dict (the camera.json file contract); extra keys are ignored."""
        try:
            return cls(int(d["width"]), int(d["height"]), float(d["fx"]), float(d["fy"]),
                       float(d["cx"]), float(d["cy"]))
        except KeyError as e:
            raise ValueError(f"camera description lacks {e.args[0]!r}: it needs width, height, fx, fy, cx, cy") from e

    def to_dict(self) -> dict:
        """camera.json contents: width, height, fx, fy, cx, cy, fov_x_deg."""
        return {**asdict(self), "fov_x_deg": self.fov_x_deg}

    @property
    def K(self) -> np.ndarray:
        """(3, 3) intrinsic matrix, mapping (x, -y, -z) to homogeneous pixel coordinates."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def fov_x_deg(self) -> float:
        return math.degrees(2.0 * math.atan(0.5 * self.width / self.fx))

    @property
    def fov_y_deg(self) -> float:
        return math.degrees(2.0 * math.atan(0.5 * self.height / self.fy))

    def resized(self, width: int, height: int) -> Camera:
        """The same camera for the image resampled to width x height (e.g. a network's working size)."""
        sx, sy = width / self.width, height / self.height
        return Camera(int(width), int(height), self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy)

    def pixel_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates (u, v), each (H, W) float64."""
        u = np.arange(self.width, dtype=np.float64) + 0.5
        v = np.arange(self.height, dtype=np.float64) + 0.5
        return np.meshgrid(u, v)

    def rays(self) -> np.ndarray:
        """(H, W, 3) camera-frame points at depth 1 through each pixel centre: ((u-cx)/fx, -(v-cy)/fy, -1)."""
        return self.rays_at(*np.indices((self.height, self.width)))

    def rays_at(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(..., 3) points at depth 1 through the centres of pixels (rows, cols) (...) each, as `rays` gives them
        (without the whole (H, W, 3) map)."""
        rows, cols = np.asarray(rows, np.float64), np.asarray(cols, np.float64)
        return np.stack([(cols + 0.5 - self.cx) / self.fx, -(rows + 0.5 - self.cy) / self.fy,
                         -np.ones(rows.shape)], axis=-1)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Camera-frame points (..., 3) with z < 0 -> pixel coordinates (..., 2) as (u, v) and depth (...)."""
        points = np.asarray(points, dtype=np.float64)
        if points.shape[-1] != 3:
            raise ValueError(f"points must have shape (..., 3), got {points.shape}")
        depth = -points[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.cx + self.fx * points[..., 0] / depth
            v = self.cy - self.fy * points[..., 1] / depth
        return np.stack([u, v], axis=-1), depth
