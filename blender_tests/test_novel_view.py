"""Novel-view cameras (orbit, crane, dolly) around a built import, the operator, and `invrender scene
--novel-views`."""

import json
import math

import bpy
import numpy as np
import pytest
from bpy_extras.object_utils import world_to_camera_view
from invrender_addon.build.novel_view import NovelViewSettings, add_novel_view_camera, pivot
from invrender_addon.build.scene import SceneAssets, build_scene
from mathutils import Vector

from invrender_core import cli, geometry, sh
from invrender_core.camera import Camera
from invrender_core.io import write_exr, write_png
from invrender_core.scene import scene_assets
from invrender_core.train.synthetic import exact_estimate

LIGHT = np.zeros((9, 3))
LIGHT[0] = [1.0, 0.95, 0.9]
LIGHT[1] = [0.3, 0.3, 0.3]
LIGHT[3] = [0.3, 0.25, 0.2]
# Off-centre principal point: the copy must keep the lens shift.
CAMERA = Camera(width=48, height=32, fx=45.0, fy=45.0, cx=21.0, cy=18.5)


def build(scene, camera: Camera = CAMERA, name: str = "view"):
    depth, normals, _ = geometry.synthetic_sphere_plane(camera)
    assets = scene_assets(exact_estimate(camera, depth, normals, LIGHT), name, environment_height=16)
    built = build_scene(SceneAssets(**assets), scene)
    scene.view_layers[0].update()  # matrix_world of the new objects
    return built, assets


def pixel(scene, camera, point) -> np.ndarray:
    """(u, v) pixel coordinates of a world point seen by `camera` (v down from the top edge)."""
    ndc = world_to_camera_view(scene, camera, Vector(point))
    return np.array([ndc.x * scene.render.resolution_x, (1.0 - ndc.y) * scene.render.resolution_y])


def poses(scene, camera, frames) -> list[np.ndarray]:
    out = []
    for frame in frames:
        scene.frame_set(frame)
        out.append(np.array(camera.matrix_world))
    return out


def test_pivot_is_the_median_depth_on_the_optical_axis(clean_scene):
    built, assets = build(clean_scene)
    median = float(np.median(-assets["vertices"][:, 2]))  # camera frame: depth = -z
    # The photo camera sits at the origin looking along +y.
    np.testing.assert_allclose(pivot(clean_scene, built), [0.0, median, 0.0], atol=1e-5)


@pytest.mark.parametrize("kind, angle", [("orbit", 30.0), ("orbit", -50.0), ("crane", 25.0), ("crane", -15.0)])
def test_orbit_and_crane_keep_the_pivot_on_the_same_pixel(clean_scene, kind, angle):
    built, _ = build(clean_scene)
    photo_camera = built.camera
    before = np.array(photo_camera.matrix_world)
    centre = pivot(clean_scene, built)
    settings = NovelViewSettings(kind=kind, angle_deg=angle, frames=5, frame_start=3)
    camera = add_novel_view_camera(clean_scene, built, settings)
    assert camera != photo_camera and camera.name in built.collection.objects
    for name in ("lens", "shift_x", "shift_y", "sensor_width", "sensor_fit"):
        assert getattr(camera.data, name) == getattr(photo_camera.data, name), name
    expected = pixel(clean_scene, photo_camera, centre)  # the principal point
    np.testing.assert_allclose(expected, [CAMERA.cx, CAMERA.cy], atol=1e-4)
    matrices = poses(clean_scene, camera, range(3, 8))
    for frame in range(3, 8):
        clean_scene.frame_set(frame)
        np.testing.assert_allclose(pixel(clean_scene, camera, centre), expected, atol=1e-3)
    np.testing.assert_allclose(matrices[0], before, atol=1e-6)  # frame_start: the photo's pose
    offsets = [m[:3, 3] - np.array(centre) for m in matrices]
    if kind == "orbit":  # turned about the vertical, counter-clockwise seen from above for a positive angle
        turned = [math.degrees(math.atan2(o[1], o[0])) - math.degrees(math.atan2(offsets[0][1], offsets[0][0]))
                  for o in offsets]
        np.testing.assert_allclose(turned, np.linspace(0.0, angle, 5), atol=1e-4)
        np.testing.assert_allclose([o[2] for o in offsets], 0.0, atol=1e-6)
    else:  # risen (or lowered) by the angle, at the same distance
        risen = [math.degrees(math.atan2(o[2], math.hypot(o[0], o[1]))) for o in offsets]
        np.testing.assert_allclose(risen, np.linspace(0.0, angle, 5), atol=1e-4)
    np.testing.assert_allclose([np.linalg.norm(o) for o in offsets], np.linalg.norm(offsets[0]), rtol=1e-6)
    # The photo camera and the active camera are untouched.
    np.testing.assert_allclose(np.array(photo_camera.matrix_world), before, atol=1e-9)
    assert clean_scene.camera == photo_camera and photo_camera.animation_data is None


def test_dolly_moves_along_the_view_axis_by_the_fraction(clean_scene):
    built, _ = build(clean_scene)
    before = np.array(built.camera.matrix_world)
    distance = float(np.linalg.norm(np.array(pivot(clean_scene, built)) - before[:3, 3]))
    camera = add_novel_view_camera(clean_scene, built, NovelViewSettings(kind="dolly", distance=0.4, frames=4))
    view = -before[:3, 2]  # a camera looks along its local -z
    for i, matrix in enumerate(poses(clean_scene, camera, range(1, 5))):
        np.testing.assert_allclose(matrix[:3, 3], before[:3, 3] + (i / 3) * 0.4 * distance * view, atol=1e-5)
        np.testing.assert_allclose(matrix[:3, :3], before[:3, :3], atol=1e-6)  # no turn


@pytest.mark.parametrize("settings, message", [
    (NovelViewSettings(kind="pan"), "kind"),
    (NovelViewSettings(frames=0), "frames"),
    (NovelViewSettings(kind="crane", angle_deg=95.0), "crane angle"),
    (NovelViewSettings(kind="dolly", distance=1.0), "dolly distance"),
])
def test_bad_settings_add_nothing(clean_scene, settings, message):
    build(clean_scene)
    counts = {k: len(getattr(bpy.data, k)) for k in ("objects", "cameras", "actions")}
    with pytest.raises(ValueError, match=message):
        add_novel_view_camera(clean_scene, None, settings)
    assert counts == {k: len(getattr(bpy.data, k)) for k in counts}


def test_operator_equals_api(registered_addon, clean_scene):
    build(clean_scene)
    photo_camera = clean_scene.camera
    assert bpy.ops.invr.add_novel_view_camera(kind="CRANE", crane_angle=math.radians(15.0), frames=6,
                                              frame_start=2) == {"FINISHED"}
    assert clean_scene.camera == photo_camera  # make_active is off by default
    by_operator = poses(clean_scene, bpy.data.objects["view crane camera"], range(1, 9))
    assert bpy.ops.invr.add_novel_view_camera(kind="DOLLY", make_active=True) == {"FINISHED"}
    assert clean_scene.camera == bpy.data.objects["view dolly camera"]

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    built, _ = build(scene)
    camera = add_novel_view_camera(scene, built, NovelViewSettings(kind="crane", angle_deg=15.0, frames=6,
                                                                   frame_start=2))
    np.testing.assert_allclose(poses(scene, camera, range(1, 9)), by_operator, atol=1e-6)


def test_operator_accepts_its_angles_own_limits(registered_addon, clean_scene):
    """The sliders' limits are the checks' limits, which accept them back through float32 radians."""
    build(clean_scene)
    properties = bpy.ops.invr.add_novel_view_camera.get_rna_type().properties
    for name, limit in (("orbit_angle", 360.0), ("crane_angle", 89.0)):
        assert math.degrees(properties[name].hard_max) == pytest.approx(limit)
        assert properties[name].soft_max <= properties[name].hard_max
    for kind, name, limit in (("ORBIT", "orbit_angle", 360.0), ("CRANE", "crane_angle", 89.0)):
        for sign in (1.0, -1.0):
            assert bpy.ops.invr.add_novel_view_camera(kind=kind, frames=2, **{name: sign * math.radians(limit)}) \
                == {"FINISHED"}
    assert len([c for c in bpy.data.cameras if "crane" in c.name]) == 2
    with pytest.raises(ValueError, match="crane angle"):
        NovelViewSettings(kind="crane", angle_deg=89.01).check()


def test_operator_without_import_reports_and_changes_nothing(registered_addon, clean_scene):
    counts = {k: len(getattr(bpy.data, k)) for k in ("objects", "cameras")}
    with pytest.raises(RuntimeError, match="no InvRender import"):  # bpy.ops turns an ERROR report into this
        bpy.ops.invr.add_novel_view_camera()
    assert counts == {k: len(getattr(bpy.data, k)) for k in counts} and clean_scene.camera is None


# ----------------------------------------------------------------------------------- invrender scene --novel-views


@pytest.fixture
def photo_files(tmp_path):
    """A 32x24 photo of a sphere before a plane, with its exact depth, normals and camera.json."""
    camera = Camera.from_fov(32, 24, 55.0)
    depth, normals, _ = geometry.synthetic_sphere_plane(camera)
    photo = 0.5 * np.maximum(sh.shading(normals, LIGHT), 0.0)
    write_png(tmp_path / "photo.png", (photo / photo.max()).astype(np.float32))
    write_exr(tmp_path / "depth.exr", depth.astype(np.float32))
    write_exr(tmp_path / "normal.exr", normals.astype(np.float32))
    (tmp_path / "camera.json").write_text(json.dumps(camera.to_dict()))
    return tmp_path


def scene_args(d, *extra) -> list[str]:
    return ["scene", str(d / "photo.png"), "--depth", str(d / "depth.exr"), "--normal", str(d / "normal.exr"),
            "--camera", str(d / "camera.json"), "-o", str(d / "out" / "scene.blend"), "--samples", "2", *extra]


def read_png(path) -> np.ndarray:
    image = bpy.data.images.load(str(path))
    try:
        width, height = image.size
        pixels = np.empty(width * height * 4, np.float32)
        image.pixels.foreach_get(pixels)
        return pixels.reshape(height, width, 4)
    finally:
        bpy.data.images.remove(image)


def test_cli_renders_novel_views(photo_files, capsys):
    d = photo_files
    code = cli.main(scene_args(d, "--render", str(d / "out" / "still.png"), "--novel-views", "3", "--views-dir",
                               str(d / "out" / "views"), "--orbit-deg", "30"))
    assert code == 0
    assert sorted(p.name for p in (d / "out").iterdir()) == ["scene.blend", "still.png", "views"]  # no temp left
    assert sorted(p.name for p in (d / "out" / "views").iterdir()) == ["view_0001.png", "view_0002.png",
                                                                        "view_0003.png"]
    views = [read_png(d / "out" / "views" / f"view_000{i}.png") for i in (1, 2, 3)]
    assert views[0].shape == (24, 32, 4)
    # The first view is the photo camera's: the render of --render itself (not rendered twice); the last has
    # turned away from it.
    assert (d / "out" / "views" / "view_0001.png").read_bytes() == (d / "out" / "still.png").read_bytes()
    err = capsys.readouterr().err
    assert "view 1/3 is the render from the photo camera: copied" in err and "rendered view 1/3" not in err
    assert np.abs(views[2] - views[0]).mean() > 0.02
    bpy.ops.wm.open_mainfile(filepath=str(d / "out" / "scene.blend"))
    scene = bpy.context.scene
    assert scene.camera.name == "photo camera"  # the photo camera stays the active one
    assert scene.cycles.use_denoising and scene.cycles.denoiser == "OPENIMAGEDENOISE"  # what --render used
    assert "photo orbit camera" in bpy.data.objects and (scene.frame_start, scene.frame_end) == (1, 3)

    # Running again replaces the views (the folder holds nothing else).
    assert cli.main(scene_args(d, "--novel-views", "2", "--views-dir", str(d / "out" / "views"))) == 0
    assert sorted(p.name for p in (d / "out" / "views").iterdir()) == ["view_0001.png", "view_0002.png"]


@pytest.mark.parametrize("extra, message", [
    (["--novel-views", "0", "--views-dir", "views"], "--novel-views must be at least 1"),
    (["--novel-views", "2"], "--novel-views needs --views-dir"),
    (["--views-dir", "views"], "--views-dir needs --novel-views"),
    (["--novel-views", "2", "--views-dir", "views", "--orbit-deg", "400"], "--orbit-deg"),
    (["--novel-views", "2", "--views-dir", "taken"], "not views"),
])
def test_cli_novel_view_errors_write_nothing(photo_files, capsys, extra, message):
    d = photo_files
    (d / "taken").mkdir()
    (d / "taken" / "notes.txt").write_text("mine")
    extra = [str(d / e) if e in ("views", "taken") else e for e in extra]
    assert cli.main(scene_args(d, *extra)) == cli.EXIT_FAILURE
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("invrender scene: error:")
    assert not (d / "out").exists() and not (d / "views").exists()
    assert (d / "taken" / "notes.txt").read_text() == "mine"
