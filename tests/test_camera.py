"""camera.py: constructors, camera.json round trips, rays, projection, resizing."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invrender_core.camera import FULL_FRAME_DIAGONAL_MM, Camera
from invrender_core.geometry import backproject


def off_centre_camera():
    return Camera(width=40, height=30, fx=50.0, fy=55.0, cx=21.5, cy=13.0)


def test_from_fov_is_centred_with_square_pixels_and_the_fov():
    cam = Camera.from_fov(640, 480, 60.0)
    assert (cam.cx, cam.cy) == (320.0, 240.0)
    assert cam.fx == cam.fy == pytest.approx(320.0 / math.tan(math.radians(30.0)))
    assert cam.fov_x_deg == pytest.approx(60.0)
    assert cam.fov_y_deg == pytest.approx(math.degrees(2 * math.atan(240.0 / cam.fy)))


@pytest.mark.parametrize("fov", [0.0, 180.0, -5.0])
def test_from_fov_rejects_impossible_fields_of_view(fov):
    with pytest.raises(ValueError, match="field of view"):
        Camera.from_fov(64, 48, fov)


def test_from_focal_35mm_matches_the_diagonal_field_of_view():
    cam = Camera.from_focal_35mm(3000, 2000, 50.0)
    diagonal_fov = 2 * math.atan(0.5 * math.hypot(3000, 2000) / cam.fx)
    assert diagonal_fov == pytest.approx(2 * math.atan(0.5 * FULL_FRAME_DIAGONAL_MM / 50.0))
    # A 3:2 image has the full frame's shape, so the horizontal field of view matches 36 mm too.
    assert cam.fov_x_deg == pytest.approx(math.degrees(2 * math.atan(18.0 / 50.0)))
    with pytest.raises(ValueError, match="focal length"):
        Camera.from_focal_35mm(3000, 2000, 0.0)


def test_from_K_round_trips_K_and_rejects_skew_and_bad_shapes():
    cam = off_centre_camera()
    assert Camera.from_K(cam.K, cam.width, cam.height) == cam
    skewed = cam.K.copy()
    skewed[0, 1] = 1.0
    with pytest.raises(ValueError, match="skew"):
        Camera.from_K(skewed, cam.width, cam.height)
    with pytest.raises(ValueError, match=r"\(3, 3\).*\(2, 3\)"):
        Camera.from_K(cam.K[:2], cam.width, cam.height)


def test_dict_round_trip_through_json():
    cam = off_centre_camera()
    d = json.loads(json.dumps(cam.to_dict()))
    assert set(d) == {"width", "height", "fx", "fy", "cx", "cy", "fov_x_deg"}
    assert d["fov_x_deg"] == pytest.approx(cam.fov_x_deg)
    assert Camera.from_dict(d) == cam
    assert Camera.from_dict({**d, "depth_scale": "relative"}) == cam  # extra keys are ignored


def test_from_dict_names_the_missing_key():
    d = off_centre_camera().to_dict()
    del d["cy"]
    with pytest.raises(ValueError, match="'cy'"):
        Camera.from_dict(d)


@pytest.mark.parametrize("kwargs", [dict(width=0), dict(height=-1), dict(fx=0.0), dict(fy=-2.0)])
def test_invalid_cameras_are_rejected(kwargs):
    base = dict(width=40, height=30, fx=50.0, fy=50.0, cx=20.0, cy=15.0)
    with pytest.raises(ValueError):
        Camera(**{**base, **kwargs})


def test_rays_have_depth_one_and_point_through_pixel_centres():
    cam = Camera.from_fov(5, 3, 60.0)
    rays = cam.rays()
    assert rays.shape == (3, 5, 3)
    np.testing.assert_array_equal(rays[..., 2], -1.0)
    np.testing.assert_allclose(rays[1, 2], [0.0, 0.0, -1.0])  # centre pixel of an odd-sized image
    assert rays[0, 4, 0] > 0 and rays[0, 4, 1] > 0  # top-right pixel: x right, y up
    rows, cols = np.array([0, 2, 1]), np.array([4, 0, 2])
    np.testing.assert_array_equal(cam.rays_at(rows, cols), rays[rows, cols])  # a few pixels' rays, the same


@settings(max_examples=30, deadline=None)
@given(fx=st.floats(5.0, 500.0), fy=st.floats(5.0, 500.0), cx=st.floats(-10.0, 30.0),
       cy=st.floats(-10.0, 30.0), seed=st.integers(0, 2**16))
def test_project_inverts_backproject(fx, fy, cx, cy, seed):
    cam = Camera(width=7, height=5, fx=fx, fy=fy, cx=cx, cy=cy)
    depth = np.random.default_rng(seed).uniform(0.1, 100.0, size=(5, 7))
    uv, d = cam.project(backproject(depth, cam).astype(np.float64))
    u, v = cam.pixel_grid()
    np.testing.assert_allclose(uv[..., 0], u, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(uv[..., 1], v, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(d, depth, rtol=1e-6)


def test_project_checks_the_point_shape():
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\).*\(4, 2\)"):
        off_centre_camera().project(np.zeros((4, 2)))


def test_resized_keeps_the_view():
    cam = off_centre_camera()
    small = cam.resized(20, 10)
    assert (small.width, small.height) == (20, 10)
    point = np.array([0.3, -0.2, -2.5])
    (u, v), _ = cam.project(point)
    (u2, v2), _ = small.project(point)
    assert u2 == pytest.approx(u * 20 / 40) and v2 == pytest.approx(v * 10 / 30)
    assert cam.resized(40, 30) == cam
