"""Rasteriser, template lookup, synthetic faces and texture aggregation: against analytic answers and round trips."""

from pathlib import Path

import numpy as np
import pytest

from invrender_core import sh
from invrender_core.camera import Camera
from invrender_core.face.morphable_model import MorphableModel, load_model
from invrender_core.face.render import SurfaceLookup, TemplateFrame, rasterize
from invrender_core.face.synthetic import SyntheticFaces, render_face, rotation_from_euler
from invrender_core.face.texture import aggregate_albedo, uv_raster

EOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "eos"


def _grid(n: int = 12, bulge: float = 0.3):
    """A (n+1)² vertex height-field patch over [-1, 1]², z = bulge * (1 - x² - y²), counter-clockwise from +z."""
    x, y = np.meshgrid(np.linspace(-1, 1, n + 1), np.linspace(-1, 1, n + 1))
    vertices = np.stack([x, y, bulge * (1 - x**2 - y**2)], -1).reshape(-1, 3)
    idx = np.arange((n + 1) ** 2).reshape(n + 1, n + 1)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel(), idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    triangles = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)]).astype(np.int32)
    uvs = (vertices[:, :2] + 1) / 2
    return vertices, triangles, uvs


def _tiny_model(seed: int = 0) -> MorphableModel:
    vertices, triangles, uvs = _grid()
    rng = np.random.default_rng(seed)
    v = len(vertices)
    basis = np.linalg.qr(rng.normal(size=(3 * v, 4)))[0].reshape(v, 3, 4)
    return MorphableModel(mean=(vertices * 50).astype(np.float32), shape_basis=basis.astype(np.float32),
                          shape_variances=np.full(4, 4.0, np.float32),
                          expression_basis=rng.normal(0, 1, (v, 3, 2)).astype(np.float32),
                          expression_names=np.array(["a", "b"]), triangles=triangles, uvs=uvs.astype(np.float32))


def test_rasterize_plane_depth_is_perspective_correct_and_coverage_matches_area():
    camera = Camera.from_fov(64, 48, 50.0)
    # A tilted square plane z = -4 + 0.5 x, big enough to cover a known part of the image.
    corners = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], float)
    corners[:, 2] = -4 + 0.5 * corners[:, 0]
    triangles = np.array([[0, 1, 2], [0, 2, 3]])
    raster = rasterize(corners, triangles, camera)
    rays = camera.rays()  # points at depth 1: (x, y, -1)
    m = raster.mask
    # Ray r * t hits the plane where -t = -4 + 0.5 * r_x * t -> t = 4 / (1 + 0.5 r_x).
    true_depth = 4.0 / (1.0 + 0.5 * rays[..., 0])
    np.testing.assert_allclose(raster.depth[m], true_depth[m], rtol=1e-9)
    # Interpolating the vertex positions reproduces the 3D point on the ray.
    points = raster.interpolate(corners, triangles)
    np.testing.assert_allclose(points[m], rays[m] * true_depth[m, None], atol=1e-9)
    uv, _ = camera.project(corners)
    x = np.r_[uv[:, 0], uv[0, 0]]
    y = np.r_[uv[:, 1], uv[0, 1]]
    area = 0.5 * abs(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))
    assert abs(m.sum() - area) < 0.05 * area


def test_rasterize_nearest_surface_wins_and_behind_camera_is_skipped():
    camera = Camera.from_fov(32, 32, 60.0)
    quad = np.array([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]], float)
    near, far, behind = quad + [0, 0, -3], quad * 2 + [0, 0, -6], quad + [0, 0, 1]
    triangles = np.array([[0, 1, 2], [0, 2, 3]])
    mesh = np.concatenate([far, near, behind])
    tris = np.concatenate([triangles, triangles + 4, triangles + 8])
    raster = rasterize(mesh, tris, camera)
    centre = raster.triangle[16, 16]
    assert centre in (2, 3) and raster.depth[16, 16] == pytest.approx(3.0)
    assert set(np.unique(raster.triangle[raster.mask])) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match=r"\(V, 3\)"):
        rasterize(mesh[:, :2], tris, camera)


def test_surface_lookup_returns_the_point_it_was_given():
    model = _tiny_model()
    lookup = SurfaceLookup(model.mean, model.triangles, subdivisions=4)
    rng = np.random.default_rng(1)
    tri = rng.integers(0, len(model.triangles), 200)
    bary = rng.dirichlet([1, 1, 1], 200)
    points = np.einsum("nk,nkc->nc", bary, model.mean[model.triangles[tri]].astype(np.float64))
    found_tri, found_bary, distance = lookup.query(lookup.frame.normalise(points))
    found = np.einsum("nk,nkc->nc", found_bary, model.mean[model.triangles[found_tri]].astype(np.float64))
    # The grid spacing bounds the error: a quarter of a triangle edge (edge ~ 100/12 model units).
    assert np.linalg.norm(found - points, axis=1).max() < 100 / 12 / 4
    np.testing.assert_allclose(lookup.frame.denormalise(lookup.frame.normalise(points)), points)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        lookup.query(np.zeros((3, 2)))


def test_render_face_template_is_the_mean_shape_point_the_pixel_sees():
    model = _tiny_model()
    frame = TemplateFrame.of(model.mean)
    from invrender_core.face.synthetic import FaceParams

    camera = Camera.from_fov(64, 64, 30.0)
    params = FaceParams(np.array([1.0, -1, 0.5, 0]), np.array([0.3, 0.0]), rotation_from_euler(20, 10, 5),
                        np.array([0.0, 0.0, -300.0]), camera, sh.directional(np.array([0, 0, 1.0]), np.ones(3)))
    out = render_face(model, params, np.full((model.num_vertices, 3), 0.5), frame)
    m = out["mask"]
    assert m.sum() > 300
    expect = np.einsum("hwk,hwkc->hwc", out["barycentric"], frame.normalise(model.mean)[model.triangles[
        np.maximum(out["triangle"], 0)]])
    np.testing.assert_allclose(out["template"][m], expect[m], atol=1e-6)
    # Front light on the bulge facing the camera: shading = albedo * E(n) > 0 on every face pixel.
    assert np.all(out["image"][m] > 0)


@pytest.mark.skipif(not (EOS / "sfm_shape_3448.bin").exists(), reason="../shared/data/eos not available")
def test_synthetic_faces_are_deterministic_and_consistent():
    model = load_model(EOS / "sfm_shape_3448.bin")
    faces = SyntheticFaces(model, size=64, seed=3)
    a, b, c = faces.sample(5), faces.sample(5), faces.sample(6)
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["image"], c["image"])
    assert a["image"].dtype == np.uint8 and a["image"].shape == (64, 64, 3)
    assert a["mask"].any() and np.all(a["template"][~a["mask"]] == 0)
    assert np.abs(a["template"]).max() <= 1.0 + 1e-6
    # The face fills 55-80 % of the crop's width on average (the detector's framing).
    widths = []
    for k in range(8):
        cols = np.flatnonzero(faces.sample(k)["template"].any(axis=(0, 2)))
        widths.append(np.ptp(cols) / 64 if cols.size else 0)
    assert 0.3 < np.median(widths) < 0.9


def test_uv_raster_covers_the_layout_and_aggregation_recovers_the_albedo():
    model = _tiny_model()
    size = 32
    texels = uv_raster(model.uvs, model.triangles, size)
    assert texels.mask.mean() > 0.9  # the grid's UVs cover [0, 1]² (edge texels may fall outside)
    # Render a face of known per-vertex albedo under known light from two poses; aggregate: albedo comes back.
    rng = np.random.default_rng(0)
    albedo = 0.3 + 0.4 * rng.random((model.num_vertices, 3))
    frame = TemplateFrame.of(model.mean)
    from invrender_core.face.synthetic import FaceParams

    frames, posed, cams, lights = [], [], [], []
    for yaw in (-15.0, 15.0):
        camera = Camera.from_fov(96, 96, 30.0)
        L = sh.directional(np.array([0.2, 0.3, 1.0]), np.ones(3)) * 2
        L[0] += 0.3
        R = rotation_from_euler(yaw, 0, 0)
        params = FaceParams(np.zeros(4), np.zeros(2), R, np.array([0, 0, -300.0]), camera, L)
        frames.append(render_face(model, params, albedo, frame)["image"])
        posed.append(model.mean.astype(np.float64) @ R.T + params.translation)
        cams.append(camera)
        lights.append(L)
    texture = aggregate_albedo(frames, posed, cams, lights, model.triangles, model.uvs, size=size)
    truth = texels.interpolate(albedo, model.triangles)
    inner = texels.mask & (np.abs(np.linspace(-1, 1, size))[None, :, None] < 0.8)[..., 0] \
        & (np.abs(np.linspace(-1, 1, size))[:, None] < 0.8)
    # Per-vertex albedo is interpolated linearly in the render and the texture: equal up to sampling.
    assert np.median(np.abs(texture[inner] - truth[inner])) < 0.02
    with pytest.raises(ValueError, match="same length"):
        aggregate_albedo(frames, posed[:1], cams, lights, model.triangles, model.uvs)

    # Background painted over the right half of each frame, where the network's face mask says "not face" (its crop:
    # the whole 96x96 frame): that half comes from the fallback, not the paint; without the masks, it is green.
    right = np.arange(96) >= 48
    painted = [np.where(right[None, :, None], np.array([0.0, 5.0, 0.0]), f) for f in frames]
    masks = [(np.broadcast_to(~right, (96, 96)).astype(np.float32), np.array([[1.0, 0, 0], [0, 1.0, 0]]))] * 2
    masked = aggregate_albedo(painted, posed, cams, lights, model.triangles, model.uvs, size=size,
                              fallback=albedo, face_masks=masks)
    assert np.median(np.abs(masked[inner] - truth[inner])) < 0.02
    unmasked = aggregate_albedo(painted, posed, cams, lights, model.triangles, model.uvs, size=size, fallback=albedo)
    assert np.median(np.abs(unmasked[inner] - truth[inner])) > 0.1
    assert unmasked.max() == 1.0  # the paint is far brighter than any albedo: clipped to reflectance's range
