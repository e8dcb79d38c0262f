"""scene.py: the photo -> SceneEstimate pipeline on analytic scenes, and the file contract."""

import json

import numpy as np
import pytest

from invrender_core import scene, sh
from invrender_core.camera import Camera
from invrender_core.io import read_exr

LIGHT = np.zeros((9, 3))
LIGHT[0] = [1.0, 0.9, 0.8]
LIGHT[1] = [0.3, 0.3, 0.25]  # from above
LIGHT[2] = [0.35, 0.3, 0.3]  # from the viewer's side


def sphere(camera: Camera):
    """Depth and normals of a sphere seen whole (NaN depth around it), so its normals span a hemisphere."""
    rays = camera.rays()
    centre, radius = np.array([0.0, 0.0, -5.0]), 2.0
    b = -2.0 * (rays @ centre)
    a = (rays * rays).sum(-1)
    disc = b * b - 4 * a * (centre @ centre - radius**2)
    with np.errstate(invalid="ignore"):
        depth = (-b - np.sqrt(disc)) / (2 * a)
    normals = np.nan_to_num((depth[..., None] * rays - centre) / radius, nan=0.0)
    normals[np.isnan(depth)] = [0.0, 0.0, 1.0]
    return depth.astype(np.float32), normals.astype(np.float32)


@pytest.fixture
def uniform_albedo_scene():
    camera = Camera.from_fov(48, 40, 60.0)
    depth, normals = sphere(camera)
    albedo = np.array([0.5, 0.5, 0.5], np.float32)  # grey: a uniform tint would go to the light
    image = (albedo * sh.shading(normals, LIGHT)).astype(np.float32)
    return camera, depth, normals, image, albedo


def test_estimate_recovers_uniform_albedo_and_lighting(uniform_albedo_scene):
    camera, depth, normals, image, albedo = uniform_albedo_scene
    est = scene.estimate_from_geometry(image, depth, normals, camera, use_prior=False)
    on = np.isfinite(depth)
    # Albedo and light are known up to one scale: the estimate is the truth times k, lighting divided by k.
    k = est.albedo[..., 1].mean() / albedo[1]
    np.testing.assert_allclose(est.albedo[on], np.broadcast_to(albedo * k, image[on].shape), rtol=1e-3)
    np.testing.assert_allclose(est.lighting * k, LIGHT, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose((est.albedo * est.shading)[on], image[on], rtol=1e-3, atol=1e-5)
    luminance = float(np.median(est.albedo[on] @ sh.LUMINANCE))
    assert luminance == pytest.approx(scene.MEDIAN_ALBEDO_LUMINANCE, rel=1e-3)
    # Exact inputs stay put, up to the first-order tangent model on a curved surface (worst at the rim).
    rel = np.abs(est.depth_fused[on] / depth[on] - 1)
    assert np.median(rel) < 1e-3 and rel.max() < 1e-2
    assert np.isnan(est.depth_fused[~on]).all()


def test_estimate_with_prior_handles_a_flat_wall():
    """A wall shows one normal: least squares alone cannot pin 9 coefficients, the prior can."""
    camera = Camera.from_fov(32, 24, 60.0)
    normal = np.array([0.3, 0.2, 1.0]) / np.linalg.norm([0.3, 0.2, 1.0])
    depth = (-3.0 / (camera.rays() @ normal)).astype(np.float32)
    normals = np.broadcast_to(normal, (24, 32, 3)).astype(np.float32)
    u, _ = camera.pixel_grid()
    albedo = (0.3 + 0.3 * (u > 16))[..., None] * np.ones(3)
    image = (albedo * sh.shading(normals, LIGHT)).astype(np.float32)
    with pytest.raises(ValueError, match="pass a prior"):
        scene.estimate_from_geometry(image, depth, normals, camera, use_prior=False)
    est = scene.estimate_from_geometry(image, depth, normals, camera)
    np.testing.assert_allclose(est.albedo * est.shading, image, rtol=1e-4)
    ratio = est.albedo[0, -1] / est.albedo[0, 0]  # the albedo edge keeps its contrast of 2
    np.testing.assert_allclose(ratio, 2.0, rtol=1e-4)


def test_estimate_checks_shapes(uniform_albedo_scene):
    camera, depth, normals, image, _ = uniform_albedo_scene
    with pytest.raises(ValueError, match=r"depth has shape \(40, 47\), expected \(40, 48\)"):
        scene.estimate_from_geometry(image, depth[:, :-1], normals, camera)


def test_write_estimate_file_contract(uniform_albedo_scene, tmp_path):
    camera, depth, normals, image, _ = uniform_albedo_scene
    est = scene.estimate_from_geometry(image, depth, normals, camera)
    out = scene.write_estimate(est, tmp_path / "maps")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["albedo.exr", "shading.exr", "normal.exr", "depth.exr", "depth_fused.exr",
                            "confidence.exr", "lighting.json", "camera.json", "preview.png"])
    np.testing.assert_allclose(read_exr(out / "albedo.exr"), est.albedo)
    np.testing.assert_allclose(read_exr(out / "depth_fused.exr"), est.depth_fused)
    lighting = json.loads((out / "lighting.json").read_text())
    assert lighting["frame"] == "camera" and lighting["convention"] == "ramamoorthi-hanrahan"
    np.testing.assert_allclose(np.array(lighting["sh"]), est.lighting, rtol=1e-6)
    assert Camera.from_dict(json.loads((out / "camera.json").read_text())) == camera


def test_write_estimate_leaves_nothing_on_failure(uniform_albedo_scene, tmp_path):
    camera, depth, normals, image, _ = uniform_albedo_scene
    est = scene.estimate_from_geometry(image, depth, normals, camera)
    est.shading = np.zeros((3, 3, 2))  # not writable as an EXR
    with pytest.raises(ValueError):
        scene.write_estimate(est, tmp_path / "maps")
    assert list(tmp_path.iterdir()) == []


def test_sun_direction_convention():
    np.testing.assert_allclose(scene.sun_direction(0, 0), [0, -1, 0], atol=1e-12)  # behind the camera
    np.testing.assert_allclose(scene.sun_direction(0, 90), [1, 0, 0], atol=1e-12)  # from the right
    np.testing.assert_allclose(scene.sun_direction(90, 37), [0, 0, 1], atol=1e-12)  # zenith
