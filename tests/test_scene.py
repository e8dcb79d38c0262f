"""scene.py: the photo -> SceneEstimate pipeline on analytic scenes, and the file contract."""

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from invrender_core import geometry, scene, sh
from invrender_core.camera import Camera
from invrender_core.filtering import renormalise_normals
from invrender_core.illumination_prior import IlluminationPrior
from invrender_core.io import load_image, read_exr, read_exr_header, resize_linear, write_png
from invrender_core.nets import weights
from invrender_core.nets.irn import IRNOutput
from invrender_core.nets.photo_shadow import PhotoShadowNet
from invrender_core.train.synthetic import exact_estimate, register_untrained_networks

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
    assert names == sorted(["albedo.exr", "shading.exr", "shadow.exr", "normal.exr", "depth.exr", "depth_fused.exr",
                            "confidence.exr", "lighting.json", "camera.json", "preview.png"])
    np.testing.assert_array_equal(read_exr(out / "shadow.exr"), 1.0)  # the RGB-D path has no shadow
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


def test_write_estimate_refuses_to_replace_a_foreign_folder(uniform_albedo_scene, tmp_path):
    camera, depth, normals, image, _ = uniform_albedo_scene
    est = scene.estimate_from_geometry(image, depth, normals, camera)
    out = scene.write_estimate(est, tmp_path / "maps")
    scene.write_estimate(est, out)  # a previous output is replaced
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        scene.write_estimate(est, out)
    assert (out / "notes.txt").read_text() == "mine"


# ------------------------------------------------------------------------------------------------ decompose

SIZE = (72, 104)  # (H, W): not multiples of 16, so the working size differs from the photo's


def photo(sky_rows: int, seed: int = 0) -> np.ndarray:
    """A linear test photo (H, W, 3): textured ground below `sky_rows` rows of smooth bright sky."""
    rng = np.random.default_rng(seed)
    h, w = SIZE
    u, v = np.meshgrid(np.arange(w) / w, np.arange(h) / h)
    ground = 0.15 + 0.25 * (((u * 6).astype(int) + (v * 4).astype(int)) % 2)[..., None] * [1.0, 0.8, 0.6]
    ground = ground * (0.6 + 0.4 * u)[..., None] + 0.02 * rng.random((h, w, 3))
    sky = np.stack([0.55 + 0.1 * v, 0.7 + 0.1 * v, np.full_like(v, 0.95)], -1)
    img = np.where((np.arange(h) < sky_rows)[:, None, None], sky, ground)
    return img.astype(np.float32)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """Random-init width-1/16 networks registered as irn-test / depth-test in a weights folder."""
    return register_untrained_networks(tmp_path_factory.mktemp("weights"))


def run(image, nets, **kwargs):
    kwargs = {"irn": "irn-test", "depth": "depth-test", "weights_dir": nets, "device": "cpu", "max_side": 64,
              **kwargs}
    return scene.decompose(image, **kwargs)


class FarTopDepth(torch.nn.Module):
    """A depth 'network' that puts the top 40 % of the image 1000x further than the rest (log depth)."""

    def forward(self, x):
        h = x.shape[2]
        log_depth = torch.zeros_like(x[:, :1])
        log_depth[:, :, : int(0.4 * h)] = np.log(1000.0)
        return log_depth + 0.01 * x[:, :1]


def assert_valid_estimate(est):
    h, w = SIZE
    for name, shape in (("albedo", (h, w, 3)), ("shading", (h, w, 3)), ("normals", (h, w, 3)), ("shadow", (h, w)),
                        ("depth", (h, w)), ("depth_fused", (h, w)), ("confidence", (h, w)), ("lighting", (9, 3))):
        a = getattr(est, name)
        assert a.shape == shape and a.dtype == np.float32, name
        assert np.isfinite(a).all(), name
    assert 0 <= est.albedo.min() and est.albedo.max() <= 1 and 0 <= est.shadow.min() and est.shadow.max() <= 1
    assert 0 <= est.confidence.min() and est.confidence.max() <= 1 and est.shading.min() >= 0
    assert est.depth.min() > 0 and est.depth_fused.min() > 0
    np.testing.assert_allclose(np.linalg.norm(est.normals, axis=-1), 1.0, atol=1e-5)
    assert (est.normals[..., 2] > 0).all()
    # The albedo is the network's (test_decompose_albedo_is_the_networks_at_the_working_resolution), mostly
    # within (0, 1), where the shading is not floored.
    denominator = est.shadow[..., None] * est.shading
    free = (est.albedo > 0) & (est.albedo < 1) & (denominator > scene.MIN_SHADING)
    assert free[~est.sky].mean() > 0.3  # the lighting is fitted to the ground: the sky's "albedo" may clip
    # The shading is the lighting's irradiance at the normals (clamped at 0).
    np.testing.assert_allclose(est.shading, np.maximum(sh.shading(est.normals, est.lighting), 0), atol=1e-4)


@pytest.mark.parametrize("sky_rows", [0, 50], ids=["no-sky", "large-sky"])
def test_decompose_random_nets_end_to_end(nets, sky_rows):
    image = photo(sky_rows)
    est = run(image, nets, fov_deg=50.0)
    assert_valid_estimate(est)
    assert est.camera == Camera.from_fov(SIZE[1], SIZE[0], 50.0)
    given = Camera(SIZE[1], SIZE[0], 90.0, 80.0, 50.0, 40.0)
    assert run(image, nets, fov_deg=50.0, camera=given).camera == given  # intrinsics given win
    meta = est.metadata
    assert meta["working_size"] == [64, 48] and meta["depth_scale"] == "relative" and meta["device"] == "cpu"
    assert meta["models"]["irn"]["sha256"] == weights.sha256_of(nets / "irn-test.safetensors")
    assert meta["models"]["depth"]["config"] == {"width": 0.0625}
    assert set(meta["timings_s"]) == {"models", "irn", "depth", "upsample", "lighting", "fusion", "total"}


def test_an_hdr_photo_is_decomposed_at_an_exposure_the_networks_know(nets):
    """Light far above 1 (an EXR) would reach the networks clipped to white: the photo is scaled so its 99th
    percentile of luminance is 1, and lighting and shading return to its units. So two exposures of one HDR
    photo give one albedo, and lighting, shading and image in proportion."""
    image = photo(20)
    bright, brighter = run(image * 50.0, nets), run(image * 100.0, nets)
    assert bright.metadata["input_exposure"] == pytest.approx(2 * brighter.metadata["input_exposure"], rel=1e-5)
    assert run(image, nets).metadata["input_exposure"] == 1.0  # a photo within [0, 1]: unchanged
    np.testing.assert_allclose(brighter.albedo, bright.albedo, atol=1e-4)
    np.testing.assert_allclose(brighter.normals, bright.normals, atol=1e-4)
    np.testing.assert_allclose(brighter.lighting, 2 * bright.lighting, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(brighter.shading, 2 * bright.shading, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(brighter.image, image * 100.0, rtol=1e-5)
    assert_valid_estimate(brighter)
    photo_tile = dict(scene.preview_tiles(brighter))["photo"]  # the preview shows it as the networks saw it
    np.testing.assert_allclose(photo_tile, image * 100.0 * brighter.metadata["input_exposure"], rtol=1e-5)


def test_unreliable_inputs_are_named_in_the_warnings(nets, tmp_path):
    from invrender_core.io import write_png

    assert "warnings" not in run(photo(20), nets).metadata
    grey = np.full((*SIZE, 3), 0.2, np.float32)
    assert any("almost uniform" in w for w in run(grey, nets).metadata["warnings"])
    holes = photo(20)
    holes[:2, :3] = np.nan
    assert any("18 pixel values were not finite" in w for w in run(holes, nets).metadata["warnings"])
    alpha = np.ones(SIZE, np.float32)
    alpha[:, : SIZE[1] // 4] = 0.0
    write_png(tmp_path / "cut_out.png", photo(20), alpha)
    cut_out = run(tmp_path / "cut_out.png", nets).metadata["warnings"]
    assert any("25.0 % of the photo is transparent" in w for w in cut_out)


def test_decompose_sky_is_left_out_of_fusion(nets):
    image = photo(29)  # the stub puts rows 0..28 of 72 far away (40 % of the working rows)
    est = scene.decompose(image, irn="irn-test", depth=FarTopDepth(), weights_dir=nets, device="cpu", max_side=64)
    assert_valid_estimate(est)
    sky_rows = est.depth > 100 * np.median(est.depth)
    assert est.metadata["sky_fraction"] == pytest.approx(sky_rows.mean(), abs=1e-6)
    assert 0.35 < sky_rows.mean() < 0.45
    assert (est.confidence[sky_rows] == 0).all()
    np.testing.assert_array_equal(est.depth_fused[sky_rows], est.depth[sky_rows])  # kept, not fused
    assert np.median(est.depth[~sky_rows]) == pytest.approx(1.0, rel=0.05)  # relative scale: ground median 1


def test_decompose_from_a_file_and_the_file_contract(nets, tmp_path):
    image = photo(20)
    write_png(tmp_path / "photo.png", image)
    est = run(tmp_path / "photo.png", nets)
    assert est.camera.fov_x_deg == pytest.approx(60.0)  # no EXIF focal: the default
    out = scene.write_estimate(est, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == sorted(scene.CONTRACT_FILES)
    channels = {name: read_exr_header(out / name).channels for name in scene.CONTRACT_FILES if name.endswith(".exr")}
    for name in ("albedo.exr", "shading.exr", "normal.exr"):
        assert set(channels[name]) == {"R", "G", "B"}, name
    for name in ("shadow.exr", "depth.exr", "depth_fused.exr", "confidence.exr"):
        assert channels[name] == ("Y",), name
    lighting = json.loads((out / "lighting.json").read_text())
    assert lighting["frame"] == "camera" and lighting["convention"] == "ramamoorthi-hanrahan"
    camera = json.loads((out / "camera.json").read_text())
    assert camera["depth_scale"] == "relative" and Camera.from_dict(camera) == est.camera
    # The files hold the estimate, and the shading is E(normal) under the written lighting.
    for name, value in (("albedo", est.albedo), ("shadow", est.shadow), ("normal", est.normals)):
        np.testing.assert_allclose(read_exr(out / f"{name}.exr"), value, rtol=1e-6, atol=1e-7, err_msg=name)
    shading = np.maximum(sh.shading(read_exr(out / "normal.exr"), np.array(lighting["sh"])), 0)
    np.testing.assert_allclose(read_exr(out / "shading.exr"), shading, atol=1e-4)


def test_decompose_progress_and_cancel(nets):
    seen = []
    run(photo(0), nets, progress=lambda stage, fraction: seen.append((stage, fraction)))
    assert [s for s, _ in seen] == list(scene.STAGES)
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0

    stop = threading.Event()
    stages = []

    def progress(stage, _):
        stages.append(stage)
        if stage == "irn":
            stop.set()  # e.g. the user pressed ESC while the IRN ran

    with pytest.raises(scene.Cancelled):
        run(photo(0), nets, progress=progress, cancel=stop)
    assert stages == ["models", "irn"]
    with pytest.raises(scene.Cancelled):
        run(photo(0), nets, cancel=lambda: True)


def test_decompose_errors_are_one_line(nets, monkeypatch, tmp_path):
    monkeypatch.setattr(weights, "SHIPPED_WEIGHTS_DIR", tmp_path / "no-shipped-weights")  # as on a bare install
    with pytest.raises(ValueError, match="no weights named 'irn-small'") as info:
        scene.decompose(photo(0), weights_dir=nets, device="cpu")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="'depth-test' holds 'megadepth' weights, but 'irn' weights are needed"):
        scene.decompose(photo(0), irn="depth-test", depth="depth-test", weights_dir=nets, device="cpu")
    with pytest.raises(ValueError, match="the camera is 10x10 but the photo is 104x72"):
        run(photo(0), nets, camera=Camera.from_fov(10, 10))
    with pytest.raises(ValueError, match="unknown device"):
        run(photo(0), nets, device="tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available.*use device cpu") as info:
        scene.decompose(photo(0), irn="irn-test", depth="depth-test", weights_dir=nets, device="cuda")
    assert "\n" not in str(info.value)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ValueError, match="MPS is not available.*use device cpu"):
        scene.resolve_device("mps")
    assert scene.resolve_device("auto").type == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert scene.resolve_device("auto").type == "mps" and scene.resolve_device("mps").type == "mps"


def test_out_of_memory_says_what_to_do(nets):
    class Hungry(torch.nn.Module):
        def forward(self, x):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore text")

    with pytest.raises(MemoryError, match=r"at 64x48: lower max_side \(--max-side\) or use the CPU") as info:
        scene.decompose(photo(0), irn=Hungry(), depth="depth-test", weights_dir=nets, device="cpu", max_side=64)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("size", "max_side", "expected"), [
    ((1224, 816), 320, (320, 208)),  # 816 * 320 / 1224 = 213.3 -> 208
    ((816, 1224), 256, (176, 256)),  # portrait: 816 * 256 / 1224 = 170.7 -> 176
    ((1000, 100), 320, (320, 32)),
    ((40, 30), 320, (32, 32)),  # never upscaled beyond the photo's multiple of 16 (30 * 32 / 40 = 24 -> 32)
    ((4000, 20), 320, (320, 16)),  # at least 16
])
def test_working_size(size, max_side, expected):
    assert scene.working_size(*size, max_side) == expected
    w, h = expected
    assert w % 16 == 0 and h % 16 == 0


def test_fuse_network_depth_gives_the_blurred_band_the_surfaces_on_either_side():
    """A fronto-parallel wall (depth 2) beside a tilted one (about 4), the depth blurred into a ramp over the 8
    columns between them, as depth networks draw edges; exact normals. The band takes each side's plane and
    the step lands half-way, where the ramp had put depths that neither surface has (`band_reach` spans the ramp,
    so the range the surfaces are clipped to holds both)."""
    camera = Camera.from_fov(40, 30, 60.0)
    rays = camera.rays()
    tilted = np.array([0.4, 0.0, 1.0]) / np.linalg.norm([0.4, 0.0, 1.0])
    left = -2.0 / (rays @ np.array([0.0, 0.0, 1.0]))  # n . (d r) = c  ->  d = c / (n . r)
    right = -4.0 * tilted[2] / (rays @ tilted)
    columns = np.arange(40)
    truth = np.where(columns < 20, left, right)
    normals = np.where((columns < 20)[:, None], [0.0, 0.0, 1.0], tilted) * np.ones((30, 1, 1))
    ramp = (columns >= 16) & (columns < 24)
    t = np.clip((columns - 15.5) / 8.0, 0.0, 1.0)
    blurred = np.where(ramp, (1 - t) * left[:, 15:16] + t * right[:, 24:25], truth).astype(np.float32)
    band = np.broadcast_to(ramp, truth.shape)
    fused = scene.fuse_network_depth(blurred, normals.astype(np.float32), camera, band=band, band_reach=8)
    np.testing.assert_allclose(fused, truth, rtol=1e-3)
    assert np.abs(blurred / truth - 1)[band].max() > 0.3  # the ramp was far from both surfaces


def test_fuse_network_depth_lets_the_band_follow_its_normals():
    """A sphere before a plane, the depth blurred across the outline as depth networks draw it, noisy normals: the
    band's pixels, each moved onto its nearest fused pixel's plane, would show streaks (14 degrees of normal error
    within 3 pixels of the outline before the second fusion); fused again along their own normals they do not."""
    from scipy import ndimage

    camera = Camera.from_fov(96, 72, 60.0)
    depth, normals, _ = geometry.synthetic_sphere_plane(camera)
    rng = np.random.default_rng(0)
    blurred = np.exp(ndimage.gaussian_filter(np.log(depth), 1.5)).astype(np.float32)
    noisy = renormalise_normals(normals + rng.normal(0.0, 0.05, normals.shape)).astype(np.float32)
    fused = scene.fuse_network_depth(blurred, noisy, camera)
    fused_normals = geometry.normals_from_depth(fused, camera)
    error = np.degrees(np.arccos(np.clip((fused_normals * normals).sum(-1), -1.0, 1.0)))  # (H, W), NaN: none
    near_outline = ndimage.binary_dilation(geometry.depth_discontinuities(depth), iterations=3)
    assert np.nanmean(error[near_outline]) < 7.0
    assert np.nanmean(error[~near_outline]) < 2.5


def test_extend_surfaces_keeps_band_pixels_within_the_depths_around_them():
    """A fronto-parallel wall at depth 2 whose band (columns 18-21) borders pixels with a wrong normal, tilted 60
    degrees: extended along it the band would leave the wall by more than 0.1, where no depth around it lies; clipped
    to the depths within `band_reach` pixels, it stays at the wall's 2 (all depths around are 2)."""
    camera = Camera.from_fov(40, 30, 60.0)
    depth = np.full((30, 40), 2.0, np.float32)
    normals = np.zeros((30, 40, 3), np.float32)
    normals[..., 2] = 1.0
    normals[:, [17, 22]] = [np.sin(np.radians(60.0)), 0.0, np.cos(np.radians(60.0))]
    band = np.zeros((30, 40), bool)
    band[:, 18:22] = True
    rays = camera.rays()
    n = normals[15, 17]
    on_tilted_plane = 2.0 * (n @ rays[15, 17]) / (n @ rays[15, 19])  # column 19 on column 17's plane
    assert abs(on_tilted_plane - 2.0) > 0.1
    clipped = scene._extend_surfaces(depth, ~band, band, normals, camera, reach=3)
    np.testing.assert_allclose(clipped, 2.0, rtol=1e-6)


def test_working_size_errors():
    with pytest.raises(ValueError, match="max_side must be an integer >= 16"):
        scene.working_size(100, 100, 8)


def test_fuse_network_depth_keeps_exact_input_and_the_step():
    """Two fronto-parallel planes (depth 2 left, 4 right) with exact normals: fusion changes nothing, the step
    survives, and the confidence is 1 inside each plane, 0 at the step and where excluded."""
    camera = Camera.from_fov(40, 30, 60.0)
    depth = np.where(np.arange(40) < 20, 2.0, 4.0) * np.ones((30, 1), np.float32)
    normals = np.zeros((30, 40, 3), np.float32)
    normals[..., 2] = 1.0
    exclude = np.zeros((30, 40), bool)
    exclude[:5] = True
    confidence = scene.depth_confidence(depth, normals, camera, exclude=exclude)
    step = geometry.depth_discontinuities(depth)
    assert (confidence[exclude] == 0).all() and (confidence[:, 18:22] == 0).all()
    np.testing.assert_allclose(confidence[8:-2, 2:16], 1.0, atol=1e-5)
    fused = scene.fuse_network_depth(depth, normals, camera, exclude=exclude)
    np.testing.assert_allclose(fused, depth, rtol=1e-4)
    assert step[:, 19].all() and (fused[:, 20] / fused[:, 19] > 1.9).all()

    # Noisy depth, exact normals: fusion smooths the noise inside each plane and keeps the step.
    rng = np.random.default_rng(0)
    noisy = (depth * (1 + 0.01 * rng.standard_normal(depth.shape))).astype(np.float32)
    fused = scene.fuse_network_depth(noisy, normals, camera)
    inner = np.zeros(depth.shape, bool)
    inner[3:-3, 3:16] = inner[3:-3, 24:-3] = True
    assert np.std(fused[inner] / depth[inner]) < 0.3 * np.std(noisy[inner] / depth[inner])
    assert (fused[:, 21] / fused[:, 18] > 1.9).all()
    with pytest.raises(ValueError, match=r"depth \(30, 40\) and normals \(30, 39, 3\)"):
        scene.fuse_network_depth(depth, normals[:, :-1], camera)


class OracleIRN(torch.nn.Module):
    """An 'InverseRenderNet' that returns the true maps, area-averaged to the working resolution."""

    def __init__(self, albedo, normals, lighting):
        super().__init__()
        self.albedo, self.normals, self.lighting = albedo, normals, lighting

    def forward(self, x):

        h, w = x.shape[2:]
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))[None].float()  # noqa: E731
        albedo = as_t(resize_linear(self.albedo, w, h))
        normals = as_t(renormalise_normals(resize_linear(self.normals, w, h)))
        lighting = torch.from_numpy(self.lighting)[None].float()
        return IRNOutput(albedo, normals, torch.ones_like(x[:, :1]), lighting, sh.shading_torch(normals, lighting))


class OracleDepth(torch.nn.Module):
    """A depth 'network': the true depth area-averaged to the working resolution, with relative noise."""

    def __init__(self, depth, noise=0.0):
        super().__init__()
        self.depth, self.noise = depth, noise

    def forward(self, x):
        h, w = x.shape[2:]
        noise = self.noise * np.random.default_rng(0).standard_normal((h, w))
        return torch.from_numpy(np.log(resize_linear(self.depth, w, h)) + noise)[None, None].float()


@pytest.mark.parametrize("fusion_max_side", [scene.DEFAULT_FUSION_MAX_SIDE, 96])
def test_decompose_with_oracle_networks_recovers_full_resolution_detail(fusion_max_side, monkeypatch):
    """With networks that are right at the working resolution (half the photo's), the full-resolution pipeline
    recovers albedo texture finer than the working resolution, the normals, the lighting and the geometry (exact
    networks need no pull towards the illumination prior's mean light); also when the depth is fused on a grid
    smaller than the photo (96 pixels wide) and upsampled."""
    monkeypatch.setattr(scene, "LIGHTING_PRIOR_WEIGHT", 0.0)
    camera = Camera.from_fov(128, 96, 60.0)
    depth, normals, on_sphere = geometry.synthetic_sphere_plane(camera)
    u, v = camera.pixel_grid()
    checker = ((u // 2 + v // 2) % 2)[..., None]  # 2-pixel cells: averaged away at half resolution
    albedo = np.where(on_sphere[..., None], 0.7, 0.3 + 0.15 * checker) * np.array([1.0, 0.9, 0.8])
    image = (albedo * sh.shading(normals, LIGHT)).astype(np.float32)
    est = scene.decompose(image, fov_deg=60.0, irn=OracleIRN(albedo, normals, LIGHT), mirror_average=False,
                          depth=OracleDepth(depth, noise=0.02), shadow=None,
                          device="cpu", max_side=64, fusion_max_side=fusion_max_side)
    assert est.metadata["working_size"] == [64, 48]
    assert est.metadata["fusion_size"] == ([128, 96] if fusion_max_side > 128 else [96, 72])
    rim = geometry.depth_discontinuities(depth, 0.05)
    away = ~scene._dilate(rim, 3)  # silhouettes are where half-resolution maps are wrong
    angle = np.degrees(np.arccos(np.clip((est.normals * normals).sum(-1), -1, 1)))
    assert np.median(angle[away]) < 1.0
    # Edge-aware: at the silhouette the normals follow the photo's edge, bilinear ones straddle it.
    bilinear = renormalise_normals(resize_linear(renormalise_normals(resize_linear(normals, 64, 48)),
                                                       128, 96))
    angle_bilinear = np.degrees(np.arccos(np.clip((bilinear * normals).sum(-1), -1, 1)))
    # (Rim pixels mix sphere and plane at half resolution: their grazing normals are in no upsampled map.)
    assert np.median(angle[rim]) < 0.85 * np.median(angle_bilinear[rim])
    assert np.percentile(angle[rim], 90) < np.percentile(angle_bilinear[rim], 90)
    # The network's lighting (order 1) comes through its order-1 reduction and the rescale to the photo's colour
    # (which the half-resolution maps' mixed pixels at the rim move by 0.2 %).
    np.testing.assert_allclose(est.lighting, LIGHT, rtol=3e-3, atol=1e-4)
    rel = np.abs(est.albedo / albedo - 1)[away]
    blurred = np.abs(resize_linear(resize_linear(albedo, 64, 48), 128, 96) / albedo - 1)[away]
    assert np.median(rel) < 0.01 and np.median(blurred) > 0.1  # the texture is the photo's, not the network's

    def depth_error(d):  # RMS relative error after fixing the (relative) scale
        r = (d * np.median(depth / d) / depth - 1)[away]
        return np.sqrt(np.mean(r * r))

    assert depth_error(est.depth_fused) < 0.5 * depth_error(est.depth)  # the normals remove the depth's noise
    assert est.metadata["sky_fraction"] == 0.0
    # Meshes cut the sphere's outline (no rubber sheet), and nothing away from it: the steps made out of the
    # upsampled ramps (`filtering.snap_to_steps`) stay within 5 pixels of the outline, the band around the
    # network's discontinuities that keeps its noisy depth unfused (grazing parts of the sphere can be cut too).
    cut = geometry.depth_discontinuities(est.depth_fused, 0.05)
    assert cut[rim].mean() > 0.85 and not (cut & ~scene._dilate(rim, 5)).any()


def test_decompose_gives_the_lighting_the_photos_colour(monkeypatch):
    """A network whose light has the wrong colour for its albedo (a solve pulled by a prior): decompose rescales
    each channel of the light so that albedo * shading reproduces the photo again."""
    monkeypatch.setattr(scene, "LIGHTING_PRIOR_WEIGHT", 0.0)
    camera = Camera.from_fov(64, 48, 60.0)
    depth, normals, on_sphere = geometry.synthetic_sphere_plane(camera)
    albedo = np.where(on_sphere[..., None], 0.7, 0.4) * np.array([1.0, 0.9, 0.8])
    image = (albedo * sh.shading(normals, LIGHT)).astype(np.float32)
    cast = LIGHT * np.array([1.3, 1.0, 0.7])
    est = scene.decompose(image, fov_deg=60.0, irn=OracleIRN(albedo, normals, cast), mirror_average=False,
                          depth=OracleDepth(depth), device="cpu", max_side=64, shadow=None)
    np.testing.assert_allclose(est.lighting, LIGHT, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(est.albedo * est.shading, image, rtol=1e-3, atol=1e-5)


def test_decompose_pulls_a_light_from_below_towards_the_prior_and_keeps_the_photos_level():
    """A network whose light comes from below (as irn-small's normals mislead its lighting, irn-small.md): the
    shipped light is moved up towards the illumination prior's mean (light from above) by the analytic ridge
    step of `sh.observed_lighting`, and the model still matches the photo's level per channel (least squares)."""
    camera = Camera.from_fov(64, 48, 60.0)
    depth, normals, on_sphere = geometry.synthetic_sphere_plane(camera)
    albedo = np.where(on_sphere[..., None], 0.7, 0.4) * np.array([1.0, 0.9, 0.8])
    from_below = LIGHT.copy()
    from_below[1] = -np.abs(LIGHT[1]) - 0.2  # Y1-1 ~ y: negative = from below
    image = (albedo * sh.shading(normals, from_below)).astype(np.float32)
    est = scene.decompose(image, fov_deg=60.0, irn=OracleIRN(albedo, normals, from_below), mirror_average=False,
                          depth=OracleDepth(depth), device="cpu", max_side=64, shadow=None)
    prior_mean = IlluminationPrior.load().mean_lighting
    assert prior_mean[1] @ sh.LUMINANCE > 0  # the prior's light comes from above
    up = (est.lighting[1] / est.lighting[0]) @ sh.LUMINANCE
    assert up > (from_below[1] / from_below[0]) @ sh.LUMINANCE + 0.05
    expected = sh.observed_lighting(normals[::2, ::2], from_below, toward=prior_mean,
                                    weight=scene.LIGHTING_PRIOR_WEIGHT)
    np.testing.assert_allclose(est.lighting[1:4] / est.lighting[0], expected[1:4] / expected[0], atol=0.02)
    model = (est.albedo * est.shading).reshape(-1, 3).astype(np.float64)
    photo_level = (model * image.reshape(-1, 3)).sum(0) / (model * model).sum(0)  # least-squares factor per channel
    np.testing.assert_allclose(photo_level, 1.0, atol=0.01)


def test_decompose_albedo_is_the_networks_at_the_working_resolution(nets):
    image = photo(0)[:48, :64]  # the working size itself: nothing to upsample
    est = run(image, nets, mirror_average=False)
    assert est.metadata["working_size"] == [64, 48]
    irn = weights.load_named("irn-test", nets, expect="irn")
    with torch.inference_mode():
        albedo = irn(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]).albedo
    albedo = np.clip(albedo[0].permute(1, 2, 0).numpy(), scene.MIN_SHADING ** 2, 1.0)
    np.testing.assert_allclose(est.albedo, albedo, rtol=1e-4, atol=1e-6)


def test_mirror_averaged_decomposition_of_a_mirrored_photo_is_the_mirror_image(nets):
    """With mirror averaging even random networks' albedo, normals (x negated), lighting (x-odd SH terms negated)
    and depth are exactly mirror-symmetric; without it they are not."""
    image = photo(0)[:48, :64]
    flip_x = np.array([-1.0, 1.0, 1.0], np.float32)
    odd = np.ones((9, 1))
    odd[list(sh.X_ODD)] = -1.0
    for average in (True, False):
        est, mirrored = run(image, nets, mirror_average=average), run(image[:, ::-1], nets, mirror_average=average)
        albedo_gap = np.abs(mirrored.albedo[:, ::-1] - est.albedo).max()
        normal_gap = np.abs(mirrored.normals[:, ::-1] * flip_x - est.normals).max()
        lighting_gap = np.abs(mirrored.lighting * odd - est.lighting).max()
        depth_gap = np.abs(np.log(mirrored.depth[:, ::-1] / est.depth)).max()
        if average:
            assert albedo_gap < 1e-5 and normal_gap < 1e-5 and lighting_gap < 1e-4 * np.abs(est.lighting).max()
            assert depth_gap < 1e-5
        else:
            assert albedo_gap > 1e-3 and normal_gap > 1e-3 and depth_gap > 1e-3


@pytest.mark.parametrize("scales", [scene.DEPTH_SCALES, (1.25,)])
def test_averaged_depth_of_a_pointwise_network_is_its_output_at_the_working_size(scales, monkeypatch):
    """A "depth network" that returns its input's first channel commutes with mirroring and (on a smooth image)
    with resizing: the average over mirror images and scales must give that channel back at the working size. At
    1.25 alone the error is 0.004 (the sine's curvature); resampling with the corners aligned instead, a shift of
    up to half a pixel, gives 0.011 (the ramp changes 0.05 per pixel)."""
    monkeypatch.setattr(scene, "DEPTH_SCALES", scales)
    h, w = 48, 80
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = 0.05 * u + 0.02 * v + 0.3 * np.sin(u / 9.0)
    x = torch.from_numpy(np.stack([ramp, ramp, ramp]))[None]
    averaged = scene._averaged_depth(lambda image: image[:, :1], x)
    assert tuple(averaged.shape) == (1, 1, h, w)
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4))  # the border resamples against the edge
    np.testing.assert_allclose(averaged[inner].numpy(), x[:, :1][inner].numpy(), atol=0.006)


@pytest.mark.parametrize("albedo_weight", [1.0, 0.5])
def test_decompose_takes_the_networks_albedo_where_shadow_and_shading_miss_a_shadow(albedo_weight):
    """A cast shadow the network's shadow map misses (all lit) but its albedo does not contain: the albedo is the
    network's inside the shadow (not the photo's darkening) and keeps the texture finer than the working
    resolution; photo / (shadow * shading) alone would halve it there. A network trusted with weight w < 1 gives
    the geometric blend with that ratio: albedo * (cast * true shading / fitted shading)^(1 - w), texture kept."""
    camera = Camera.from_fov(128, 96, 60.0)
    depth, normals, _ = geometry.synthetic_sphere_plane(camera)
    u, v = camera.pixel_grid()
    checker = ((u // 2 + v // 2) % 2)[..., None]  # 2-pixel cells: averaged away at half resolution
    albedo = (0.3 + 0.15 * checker) * np.array([1.0, 0.9, 0.8])
    cast = np.where((u >= 16) & (u < 64) & (v >= 48), 0.5, 1.0)[..., None]
    image = (albedo * cast * sh.shading(normals, LIGHT)).astype(np.float32)
    irn = OracleIRN(albedo, normals, LIGHT)
    irn.albedo_weight = albedo_weight
    est = scene.decompose(image, fov_deg=60.0, irn=irn, depth=OracleDepth(depth), mirror_average=False,
                          device="cpu", max_side=64, shadow=None)
    assert est.metadata["albedo_network_weight"] == albedo_weight
    inside = np.zeros(cast.shape[:2], bool)
    inside[56:-4, 24:56] = True  # the shadow, away from its edges
    lit = np.zeros_like(inside)
    lit[8:40, 80:120] = True
    ratio_to_truth = (cast * sh.shading(normals, LIGHT) / est.shading) ** (1.0 - albedo_weight)  # 1 for w = 1
    for region in inside, lit:
        assert np.median(np.abs(est.albedo / (albedo * ratio_to_truth) - 1)[region]) < 0.03
        dark, bright = est.albedo[region & (checker[..., 0] == 0)], est.albedo[region & (checker[..., 0] == 1)]
        assert np.median(bright) / np.median(dark) == pytest.approx(1.5, rel=0.05)  # the texture survives


class OraclePhotoShadow(PhotoShadowNet):
    """A photo-shadow 'network' that gives the true shadow map (H, W), area-averaged to the working resolution."""

    def __init__(self, shadow):
        super().__init__(width=4, levels=1)
        self.shadow = shadow

    def forward(self, features):
        h, w = features.shape[2:]
        shadow = np.clip(resize_linear(self.shadow.astype(np.float32), w, h).reshape(h, w), 1e-6, 1 - 1e-6)
        return torch.from_numpy(np.log(shadow / (1.0 - shadow)))[None, None].float()


def test_decompose_takes_the_cast_shadows_out_of_the_albedo_with_the_photo_shadow_network():
    """The same shadow as above, which the IRN's shadow map misses, found by the photo-shadow network: the
    shadow map holds it and the albedo is the true one inside the shadow too, even where decompose trusts the
    photo's ratio to the model over the IRN's albedo (albedo_weight 0.5); texture finer than the working
    resolution kept."""
    camera = Camera.from_fov(128, 96, 60.0)
    depth, normals, _ = geometry.synthetic_sphere_plane(camera)
    u, v = camera.pixel_grid()
    checker = ((u // 2 + v // 2) % 2)[..., None]
    albedo = (0.3 + 0.15 * checker) * np.array([1.0, 0.9, 0.8])
    cast = np.where((u >= 16) & (u < 64) & (v >= 48), 0.5, 1.0)
    image = (albedo * cast[..., None] * sh.shading(normals, LIGHT)).astype(np.float32)
    irn = OracleIRN(albedo, normals, LIGHT)
    irn.albedo_weight = 0.5
    kw = dict(fov_deg=60.0, irn=irn, depth=OracleDepth(depth), mirror_average=False, device="cpu", max_side=64)
    est = scene.decompose(image, shadow=OraclePhotoShadow(cast), **kw)
    without = scene.decompose(image, shadow=None, **kw)
    assert est.metadata["models"]["shadow"]["name"] == "OraclePhotoShadow"
    assert without.metadata["models"]["shadow"] is None
    inside = np.zeros(cast.shape, bool)
    inside[56:-4, 24:56] = True
    np.testing.assert_allclose(np.median(est.shadow[inside]), 0.5, rtol=0.02)
    np.testing.assert_allclose(np.median(without.shadow[inside]), 1.0)
    assert np.median(np.abs(est.albedo / albedo - 1)[inside]) < 0.03
    assert np.median(without.albedo[inside] / albedo[inside]) == pytest.approx(np.sqrt(0.5), rel=0.05)
    lit = np.zeros_like(inside)
    lit[8:40, 80:120] = True
    model = est.albedo * est.shadow[..., None] * est.shading
    for region in inside, lit:  # the model is the photo (away from the shadow's edge)
        assert np.median(np.abs(model[region] / image[region] - 1)) < 0.01
    dark, bright = est.albedo[inside & (checker[..., 0] == 0)], est.albedo[inside & (checker[..., 0] == 1)]
    assert np.median(bright) / np.median(dark) == pytest.approx(1.5, rel=0.05)


def test_discontinuity_threshold_rises_above_the_noise():
    smooth = np.linspace(2.0, 3.0, 40)[None, :] * np.ones((30, 1))
    assert scene.discontinuity_threshold(smooth) == geometry.DEFAULT_DISCONTINUITY_THRESHOLD
    rng = np.random.default_rng(0)
    noisy = smooth * np.exp(0.02 * rng.standard_normal(smooth.shape))
    # Neighbour differences of 2 % log noise spread by 2.8 %: five spreads is exp(0.14) - 1 = 15 %.
    assert scene.discontinuity_threshold(noisy) == pytest.approx(np.expm1(5 * 0.02 * np.sqrt(2)), rel=0.1)
    stepped = noisy * np.where(np.arange(40) < 20, 1.0, 2.0)
    assert geometry.depth_discontinuities(stepped, scene.discontinuity_threshold(stepped))[:, 19].all()


def test_lit_sphere_is_bright_on_the_side_facing_the_light():
    from invrender_core import sh
    from invrender_core.scene import lit_sphere

    sphere = lit_sphere(sh.directional([1.0, 0.0, 0.3], [1.0, 1.0, 1.0]), size=64)
    assert sphere.shape == (64, 64, 3) and float(sphere.max()) == pytest.approx(1.0)
    right, left = sphere[32, 56].mean(), sphere[32, 8].mean()
    assert right > 5 * max(left, 1e-3)
    assert sphere[0, 0].sum() == 0  # outside the disc
    ambient = np.zeros((9, 3))
    ambient[0] = 1.0
    inside = lit_sphere(ambient, size=32)[16, 8:24]
    np.testing.assert_allclose(inside, 1.0, rtol=1e-6)  # uniform light: E(n) is the same for every normal


def test_background_assets_continue_the_plane_behind_the_sphere():
    camera = Camera.from_fov(80, 60, 60.0)
    depth, normals, on_sphere = geometry.synthetic_sphere_plane(camera)
    u, _ = camera.pixel_grid()
    wall = np.stack([u / 80, np.full_like(u, 0.5), np.zeros_like(u)], -1)  # (H, W, 3) affine in u
    albedo = np.where(on_sphere[..., None], [0.9, 0.1, 0.1], wall)
    est = exact_estimate(camera, depth, normals, LIGHT, albedo=albedo, shadow=np.ones(depth.shape, np.float32))
    layer = scene.background_assets(est, band=1.0)  # reaching over the whole sphere
    plane_normal = np.array([0.0, 0.3, 1.0]) / np.linalg.norm([0.0, 0.3, 1.0])
    np.testing.assert_allclose(layer["vertices"] @ plane_normal, -5.0, rtol=1e-5)  # on the hidden plane
    # Every face has a vertex behind the sphere (the main mesh has the visible plane), and they cover it.
    j, i_up = np.round(layer["uvs"] * [80, 60] - 0.5).astype(int).T  # (V,) each: column, row from the bottom
    hidden = on_sphere[60 - 1 - i_up, j]
    assert hidden[layer["faces"]].any(axis=1).all()
    assert hidden.sum() == on_sphere.sum()
    # Albedo continues the plane's, normals are the plane's, the shadow stays 1; the visible maps are kept.
    np.testing.assert_allclose(layer["albedo"][on_sphere], wall[on_sphere], atol=1e-5)
    np.testing.assert_array_equal(layer["albedo"][~on_sphere], albedo[~on_sphere].astype(np.float32))
    np.testing.assert_allclose(layer["normals"][on_sphere] @ plane_normal, 1.0, atol=1e-4)
    np.testing.assert_allclose(layer["shadow"], 1.0)
    assert scene.background_assets(exact_estimate(camera, np.full((60, 80), 3.0), normals, LIGHT)) is None
    with pytest.raises(ValueError, match="share"):
        scene.background_assets(est, band=0.0)


def test_scene_mesh_fills_the_gaps_the_background_layer_leaves():
    camera = Camera.from_fov(48, 40, 60.0)
    depth = np.kron(np.random.default_rng(0).uniform(1.0, 3.0, (10, 12)), np.ones((4, 4)))  # blocks: many outlines
    normals = np.broadcast_to(np.float32([0, 0, 1]), (40, 48, 3))
    assets = scene.scene_assets(exact_estimate(camera, depth, normals, LIGHT), "blocks", background_band=0.1)
    rows = np.clip(np.round((1 - assets["uvs"][:, 1]) * 40 - 0.5), 0, 39).astype(int)  # edge vertices: first / last
    cols = np.clip(np.round(assets["uvs"][:, 0] * 48 - 0.5), 0, 47).astype(int)
    mesh = geometry.Mesh(assets["vertices"], assets["faces"], assets["uvs"], rows * 48 + cols)
    layer = assets["background"]["covered"]
    cut = geometry.grid_mesh(depth, camera)
    gaps = ~(geometry.covered_cells(cut, 48, 40) | layer)
    assert gaps.sum() > 20  # where the layer would come out in front of its occluder, it is not continued
    np.testing.assert_array_equal(geometry.covered_cells(mesh, 48, 40), geometry.covered_cells(cut, 48, 40) | gaps)
    d = -mesh.vertices[mesh.faces, 2]  # (F, 3): no face spans a jump (no rubber sheet) ...
    assert (d.max(1) <= d.min(1) * (1 + geometry.DEFAULT_DISCONTINUITY_THRESHOLD) + 1e-5).all()
    assert (-mesh.vertices[:, 2] >= depth.ravel()[mesh.pixel_index] * (1 - 1e-6)).all()  # ... nor lies in front
    # Both meshes reach the photo's edges: no vertex on a border pixel's centre, where a line of world would show.
    for vertices in (assets["vertices"], assets["background"]["vertices"]):
        uv, _ = camera.project(vertices)
        assert np.isin(np.round(uv[:, 0], 4), [0.0, 48.0]).any()  # some on the left or right edge ...
        assert not np.isin(np.round(uv[:, 0], 4), [0.5, 47.5]).any()  # ... none where those pixels' centres are
        assert not np.isin(np.round(uv[:, 1], 4), [0.5, 39.5]).any()
    without_layer = scene.scene_assets(exact_estimate(camera, depth, normals, LIGHT), "blocks", background_band=0)
    assert len(without_layer["faces"]) == len(cut.faces)  # no layer asked for: the outlines stay open


def test_background_assets_of_a_large_photo_work_on_a_coarser_grid():
    camera = Camera.from_fov(2 * scene.BACKGROUND_MAX_SIDE + 10, 300, 60.0)  # every 3rd pixel
    depth = np.full((300, camera.width), 4.0)
    depth[99:201, 399:600] = 2.0  # a box in front of a wall
    normals = np.broadcast_to(np.float32([0, 0, 1]), (*depth.shape, 3))
    layer = scene.background_assets(exact_estimate(camera, depth, normals, LIGHT), band=0.2)
    j, i_up = np.round(layer["uvs"] * [camera.width, 300] - 0.5).astype(int).T
    assert (j % 3 == 0).all() and ((300 - 1 - i_up) % 3 == 0).all()
    np.testing.assert_allclose(-layer["vertices"][:, 2], 4.0, rtol=1e-5)  # the wall, behind the whole box
    i = 300 - 1 - i_up
    in_box = (j >= 399) & (j < 600) & (i >= 99) & (i < 201)
    assert in_box.sum() == len(range(399, 600, 3)) * len(range(99, 201, 3))  # all of the box's grid pixels


def test_shadow_tint_is_measured_against_the_lit_band_and_taken_out():
    rng = np.random.default_rng(1)
    albedo = np.float32([0.5, 0.4, 0.3]) * rng.uniform(0.8, 1.2, (60, 80, 1)).astype(np.float32)  # one material
    shadow = np.ones((60, 80), np.float32)
    shadow[20:40, 30:60] = 0.2
    shadow[20:40, 28:30] = 0.6  # a penumbra: part of the tint
    tint = np.float32([0.05, -0.25, 0.2])  # the sky's colour left in the shadowed albedo (zero mean)
    tinted = albedo * np.exp(tint * np.clip((1 - shadow) / 0.8, 0, 1)[..., None])
    ground = np.ones((60, 80), bool)
    ground[:5] = False  # sky
    measured, full_shadow = scene.shadow_tint(tinted, shadow, ground)
    np.testing.assert_allclose(measured, tint, atol=1e-4)
    assert full_shadow == pytest.approx(0.2)
    fixed = scene.without_shadow_tint(tinted.copy(), shadow, ground, measured, full_shadow)
    chroma = np.log(fixed) - np.log(fixed).mean(-1, keepdims=True)
    np.testing.assert_allclose(chroma[25, 40], chroma[50, 10], atol=1e-3)  # the shadow as its surroundings
    np.testing.assert_allclose(chroma[21, 29], chroma[50, 10], atol=1e-3)  # and its penumbra
    # The whole albedo's colour balance, weighted by brightness, is what it was.
    change = np.log(fixed / tinted)[ground]  # (N, 3)
    np.testing.assert_allclose(np.average(change, axis=0, weights=tinted.mean(-1)[ground]), 0.0, atol=1e-5)
    assert scene.shadow_tint(tinted, np.ones((60, 80), np.float32), ground) is None  # no shadow
    assert scene.shadow_tint(tinted, np.zeros((60, 80), np.float32), ground) is None  # nothing lit beside it


def test_photo_gain_is_what_the_render_misses():
    rng = np.random.default_rng(0)
    albedo = rng.uniform(0.1, 0.9, (40, 60, 3)).astype(np.float32)
    light = np.repeat(np.repeat(rng.uniform(0.2, 2.0, (10, 15, 3)), 4, 0), 4, 1).astype(np.float32)  # (40, 60, 3)
    gain = np.float32([1.3, 1.2, 1.1])
    photo = gain * albedo * light
    shadowed = light.copy()
    shadowed[:8] *= 0.2  # a fifth of the surface in a shadow the photo lacks: the median ignores it
    shadowed[-4:] = 0.0  # and a strip no surface covers
    irradiance = resize_linear(shadowed, 15, 10)  # baked at a quarter of the photo's resolution
    np.testing.assert_allclose(scene.photo_gain(photo, albedo, irradiance), gain, rtol=0.02)
    assert scene.photo_gain(photo, albedo, np.zeros((10, 15, 3), np.float32)) is None  # nothing covered
    with pytest.raises(ValueError, match="irradiance"):
        scene.photo_gain(photo, albedo, np.ones((80, 15, 3), np.float32))
    with pytest.raises(ValueError, match="albedo"):
        scene.photo_gain(photo, albedo[:, :, :1], irradiance)


def test_rgbd_lighting_is_what_the_photo_pins_down():
    # The sample photo with its own exact depth and normals: an order-2 fit rang negative (blue's mean -0.25), and
    # the world built from it, negative light clipped to 0, rendered the photo 1.2 / 2.0 / 2.4 times too bright.
    root = Path(__file__).parents[1] / "samples"
    image = load_image(root / "sample_photo.png").rgb
    depth = read_exr(root / "sample_photo_depth.exr")
    normals = read_exr(root / "sample_photo_normal.exr")
    camera = Camera.from_dict(json.loads((root / "sample_photo_camera.json").read_text()))
    est = scene.estimate_from_geometry(image, depth, normals, camera)
    assert (est.lighting[4:] == 0).all() and est.metadata["depth_scale"] == "as given (the depth map's units)"
    env = sh.to_equirect(est.lighting, 64, 32, clamp_negative=False)
    assert env.min() >= -1e-6  # nothing for a world to clip: it lights as the shading says
    valid = geometry.valid_mask(depth)
    np.testing.assert_allclose((est.albedo * est.shading)[valid], image[valid], rtol=1e-3, atol=1e-4)
