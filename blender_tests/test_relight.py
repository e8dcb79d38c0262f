"""Relighting a built import: the Mapping rotation against sh.rotation, the sun against sun_direction, cast
shadows of the reconstructed mesh, the physical sky and back, time-of-day keyframes, the operator."""

import math

import bpy
import numpy as np
import pytest
from invrender_addon.build.bpy_io import image_to_array
from invrender_addon.build.relight import (
    RELIGHT_BASE_KEY,
    SKY_NODE,
    SKY_TYPES,
    RelightSettings,
    action_fcurves,
    animate_time_of_day,
    apply_relight,
    placed_sun,
)
from invrender_addon.build.scene import (
    ENVIRONMENT_MAPPING_NODE,
    ENVIRONMENT_NODE,
    SceneAssets,
    build_scene,
    find_import,
    set_cycles,
)
from mathutils import Matrix, Vector

from invrender_core import geometry, relight, sh
from invrender_core.camera import Camera
from invrender_core.relight import DEFAULT_SUN_TO_SKY, Lighting, Sun, place_sun
from invrender_core.scene import SceneEstimate, scene_assets, sun_direction, world_lighting
from invrender_core.train.synthetic import exact_estimate

# Camera-frame lighting: a sun from the upper right, in front of the camera, over a dim sky.
SUN_CAMERA = np.array([0.6, 0.6, 0.5]) / np.linalg.norm([0.6, 0.6, 0.5])
LIGHT = sh.directional(SUN_CAMERA, [2.5, 2.4, 2.2])
LIGHT[0] += [0.35, 0.4, 0.5]
LIGHT[1] += [0.1, 0.1, 0.12]  # the sky is brighter above (camera +y)


def ground_scene(camera: Camera, radius: float = 0.6):
    """A sphere resting on a ground plane that rises away from the camera (so every ray hits it): depth (H, W),
    normals (H, W, 3), on_sphere (H, W), sphere centre (3,), camera frame."""
    n = np.array([0.0, 1.0, 0.5]) / np.linalg.norm([0.0, 1.0, 0.5])
    foot = np.array([0.0, -0.4, -3.2])  # where the sphere touches the ground
    offset = float(n @ foot)
    centre = foot + radius * n
    depth, normals, on_sphere = geometry.synthetic_sphere_plane(camera, centre=centre, radius=radius,
                                                                plane_normal=n, plane_offset=offset)
    return depth, normals, on_sphere, centre


def estimate_of(camera: Camera, depth: np.ndarray, normals: np.ndarray, lighting: np.ndarray) -> SceneEstimate:
    """An exact estimate: grey albedo, the image rendered by the image model."""
    return exact_estimate(camera, depth, normals, lighting)


def build(scene, camera=None, sun_fraction=1.0, name="relit"):
    camera = camera or Camera.from_fov(32, 24, 50.0)
    depth, normals, *_ = ground_scene(camera)
    assets = scene_assets(estimate_of(camera, depth, normals, LIGHT), name, sun_fraction=sun_fraction,
                          environment_height=32)
    return build_scene(SceneAssets(**assets, lighting_camera=LIGHT, sun_fraction=sun_fraction), scene)


def sun_axis(built) -> np.ndarray:
    """World direction towards the sun lamp (it shines along its local -z)."""
    return np.array(built.sun.rotation_euler.to_matrix() @ Vector((0.0, 0.0, 1.0)))


def mapping_z(built) -> float:
    return built.world.node_tree.nodes[ENVIRONMENT_MAPPING_NODE].inputs["Rotation"].default_value[2]


def rz(deg: float) -> np.ndarray:
    return np.array(Matrix.Rotation(math.radians(deg), 3, "Z"))


def base_angles(built) -> tuple[float, float]:
    """Elevation and azimuth (degrees) of the estimated sun, from its direction."""
    x, y, z = sun_axis(built)
    return math.degrees(math.asin(z)), math.degrees(math.atan2(x, -y))


def render(scene, path, width, height, samples) -> np.ndarray:
    set_cycles(scene, samples=samples)
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.pixel_aspect_x = scene.render.pixel_aspect_y = 1.0
    scene.render.threads_mode, scene.render.threads = "FIXED", 2
    scene.cycles.pixel_filter_type, scene.cycles.filter_width = "BOX", 1.0
    scene.render.image_settings.file_format = "OPEN_EXR"
    scene.render.image_settings.color_depth = "32"
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    image = bpy.data.images.load(str(path))
    try:
        return image_to_array(image)
    finally:
        bpy.data.images.remove(image)


def world_panorama(scene, built, path) -> np.ndarray:
    """(16, 32, 3) equirect render of the world alone, in sh.py's (= the Environment Texture's) mapping."""
    built.mesh.hide_render = True
    data = bpy.data.cameras.new("pano")
    data.type, data.panorama_type = "PANO", "EQUIRECTANGULAR"
    pano = bpy.data.objects.new("pano", data)
    pano.rotation_euler = (math.pi / 2, 0.0, -math.pi / 2)  # as datagen/render_skies.py: centre = +x, top = +z
    scene.collection.objects.link(pano)
    camera, scene.camera = scene.camera, pano
    try:
        return render(scene, path, 32, 16, 2)
    finally:
        scene.camera = camera
        bpy.data.objects.remove(pano)
        built.mesh.hide_render = False


# ------------------------------------------------------------------------------------- environment mode


def test_mapping_rotation_turns_the_lighting_as_sh_rotation_predicts(clean_scene, tmp_path):
    built = build(clean_scene, sun_fraction=0.6)  # an environment with a clear direction left in it
    before = sh.from_equirect(world_panorama(clean_scene, built, tmp_path / "before.exr"))
    axis_before = sun_axis(built)
    state = apply_relight(clean_scene, built, RelightSettings(rotation_deg=90.0))
    after = sh.from_equirect(world_panorama(clean_scene, built, tmp_path / "after.exr"))
    expected = sh.rotation(rz(90.0)) @ before
    assert np.abs(expected - before).max() > 0.1 * np.abs(before).max()  # the rotation is visible
    np.testing.assert_allclose(after, expected, atol=0.02 * np.abs(before).max())
    np.testing.assert_allclose(sun_axis(built), rz(90.0) @ axis_before, atol=1e-6)  # the sun turns with it
    assert state.rotation_deg == 90.0 and mapping_z(built) == pytest.approx(-math.pi / 2)


@pytest.mark.parametrize("elevation, azimuth", [(30.0, 0.0), (10.0, 90.0), (60.0, -135.0), (45.0, 200.0)])
def test_placed_sun_points_along_sun_direction(clean_scene, elevation, azimuth):
    built = build(clean_scene)
    elevation0, azimuth0 = base_angles(built)
    settings = RelightSettings(sun_angles=(elevation, azimuth), rotation_deg=33.0)  # angles win over rotation
    state = apply_relight(clean_scene, built, settings)
    np.testing.assert_allclose(sun_axis(built), sun_direction(elevation, azimuth), atol=1e-6)
    # The environment turns by the azimuth change, counter-clockwise seen from above like the azimuth.
    assert mapping_z(built) == pytest.approx(-math.radians(azimuth - azimuth0), abs=1e-6)
    assert (state.sun_elevation, state.sun_azimuth) == (elevation, azimuth)
    # Settings are absolute: applying them again (as a redo does) changes nothing.
    apply_relight(clean_scene, built, settings)
    np.testing.assert_allclose(sun_axis(built), sun_direction(elevation, azimuth), atol=1e-6)
    assert mapping_z(built) == pytest.approx(-math.radians(azimuth - azimuth0), abs=1e-6)
    # Back to the estimate: the recorded sun.
    apply_relight(clean_scene, built, RelightSettings())
    np.testing.assert_allclose(sun_axis(built), sun_direction(elevation0, azimuth0), atol=1e-6)
    assert mapping_z(built) == pytest.approx(0.0, abs=1e-9)


def test_a_placed_sun_shares_the_light_as_the_2d_relight_does(clean_scene, tmp_path):
    """The environment mode places a new sun with relight.place_sun: the lamp, the environment's strength and
    (rendered) its SH are the placed lighting's, in the world frame."""
    built = build(clean_scene, sun_fraction=0.6)
    before = sh.from_equirect(world_panorama(clean_scene, built, tmp_path / "before.exr"))
    elevation, azimuth = 12.0, 200.0
    apply_relight(clean_scene, built, RelightSettings(sun_angles=(elevation, azimuth)))
    direction, irradiance, sky = world_lighting(LIGHT, 0.6)
    placed = place_sun(Lighting(sky, Sun(direction, irradiance)), sun_direction(elevation, azimuth),
                       up=(0.0, 0.0, 1.0), sun_to_sky=DEFAULT_SUN_TO_SKY)
    lamp = built.sun.data.energy * np.array(built.sun.data.color) / math.pi
    np.testing.assert_allclose(lamp, placed.sun.irradiance, rtol=1e-5)
    assert lamp[0] > 1.5 * lamp[2]  # a low sun is red
    sun_lum, sky_mean = lamp @ sh.LUMINANCE, sh.C4 * placed.sky[0] @ sh.LUMINANCE
    air = relight.sun_transmittance(elevation) @ sh.LUMINANCE / (relight.sun_transmittance(90.0) @ sh.LUMINANCE)
    assert sun_lum / sky_mean == pytest.approx(DEFAULT_SUN_TO_SKY * air, rel=0.05)  # the ratio, air aside
    after = sh.from_equirect(world_panorama(clean_scene, built, tmp_path / "after.exr"))
    np.testing.assert_allclose(after, placed.sky, atol=0.02 * np.abs(before).max())
    assert np.abs(after - before).max() > 0.1 * np.abs(before).max()  # turned and scaled
    # A ratio of 0 places no sun: the environment alone lights the scene.
    energy = built.sun.data.energy
    apply_relight(clean_scene, built, RelightSettings(sun_angles=(elevation, azimuth), sun_to_sky=0.0))
    assert built.sun.data.energy == 0.0 and energy > 0.0


def test_an_import_without_its_lighting_turns_but_places_no_sun(clean_scene):
    camera = Camera.from_fov(32, 24, 50.0)
    depth, normals, *_ = ground_scene(camera)
    assets = scene_assets(estimate_of(camera, depth, normals, LIGHT), "old", environment_height=32)
    built = build_scene(SceneAssets(**assets), clean_scene)  # as an older InvRender recorded it
    before = snapshot(built)
    with pytest.raises(ValueError, match="import the photo again"):
        apply_relight(clean_scene, built, RelightSettings(sun_angles=(30.0, 10.0)))
    assert snapshot(built) == before
    apply_relight(clean_scene, built, RelightSettings(rotation_deg=45.0))
    assert mapping_z(built) == pytest.approx(-math.pi / 4)


def test_strength_and_tint(clean_scene):
    built = build(clean_scene)
    energy, colour = built.sun.data.energy, np.array(built.sun.data.color)
    background = built.world.node_tree.nodes["Background"]
    strength = background.inputs["Strength"].default_value
    settings = RelightSettings(environment_strength=0.5, environment_tint=(1.0, 0.8, 0.6), sun_strength=2.0,
                               sun_tint=(1.0, 0.5, 0.25))
    apply_relight(clean_scene, built, settings)
    apply_relight(clean_scene, built, settings)  # not compounded
    assert built.sun.data.energy == pytest.approx(2.0 * energy)
    np.testing.assert_allclose(built.sun.data.color, colour * [1.0, 0.5, 0.25], rtol=1e-6)
    assert background.inputs["Strength"].default_value == pytest.approx(0.5 * strength)
    tint = background.inputs["Color"].links[0].from_node
    np.testing.assert_allclose(tint.inputs[1].default_value, [1.0, 0.8, 0.6], rtol=1e-6)
    assert tint.inputs[0].links[0].from_node.name == ENVIRONMENT_NODE


def test_cast_shadow_moves_to_the_other_side_with_the_sun(clean_scene, tmp_path):
    camera = Camera.from_fov(64, 48, 50.0)
    _, _, on_sphere, _ = ground_scene(camera)
    built = build(clean_scene, camera=camera)
    assert built.mesh.visible_shadow  # the reconstructed geometry casts the shadows
    u, _ = camera.pixel_grid()
    ground = ~on_sphere
    dark_pixels = {}
    for azimuth in (90.0, 270.0):  # from the right, then from the left
        apply_relight(clean_scene, built, RelightSettings(sun_angles=(30.0, azimuth)))
        image = render(clean_scene, tmp_path / f"shadow_{azimuth:g}.exr", 64, 48, 8).mean(-1)
        # The ground faces neither side, so it is lit alike from both: dark ground is shadow.
        dark = ground & (image < 0.6 * np.median(image[ground]))
        dark_pixels[azimuth] = (dark & (u < camera.cx)).sum(), (dark & (u > camera.cx)).sum()
    (left_90, right_90), (left_270, right_270) = dark_pixels[90.0], dark_pixels[270.0]
    assert left_90 >= 20 and right_90 <= left_90 // 10  # lit from the right: the shadow falls to the left
    assert right_270 >= 20 and left_270 <= right_270 // 10  # and to the right when lit from the left


# -------------------------------------------------------------------------------------------- sky mode


def test_sky_mode_and_back_to_the_environment(clean_scene, tmp_path):
    built = build(clean_scene)
    nodes = built.world.node_tree.nodes
    background = nodes["Background"]
    strength = background.inputs["Strength"].default_value
    energy = built.sun.data.energy
    apply_relight(clean_scene, built, RelightSettings(mode="sky", sun_angles=(20.0, 120.0), sky_strength=2.0))
    sky = nodes[SKY_NODE]
    assert sky.sky_type in SKY_TYPES and sky.sky_type == next(
        t for t in SKY_TYPES if t in {i.identifier for i in sky.bl_rna.properties["sky_type"].enum_items})
    assert background.inputs["Color"].links[0].from_node.inputs[0].links[0].from_node == sky
    assert sky.sun_elevation == pytest.approx(math.radians(20.0))
    assert not sky.sun_disc  # the lamp is the sun
    np.testing.assert_allclose(sun_axis(built), sun_direction(20.0, 120.0), atol=1e-6)
    assert background.inputs["Strength"].default_value == pytest.approx(2.0 * energy / 140.0)
    assert nodes.get(ENVIRONMENT_NODE) is not None and nodes.get(ENVIRONMENT_MAPPING_NODE) is not None

    # The sky's sun is where the lamp is: a narrow camera aimed along sun_direction sees the disc, one aimed
    # at the opposite azimuth does not (checks the sky's rotation convention against ours).
    sky.sun_disc = True
    built.mesh.hide_render = True
    data = bpy.data.cameras.new("window")
    data.sensor_fit, data.angle = "HORIZONTAL", math.radians(2.0)
    window = bpy.data.objects.new("window", data)
    clean_scene.collection.objects.link(window)
    clean_scene.camera = window
    peaks = []
    for azimuth in (120.0, 300.0):
        look = Vector(sun_direction(20.0, azimuth))
        window.rotation_euler = look.to_track_quat("-Z", "Y").to_euler()  # a camera looks along its -z
        peaks.append(render(clean_scene, tmp_path / f"window_{azimuth:g}.exr", 8, 8, 2).max())
    assert peaks[0] > 100.0 * peaks[1]
    bpy.data.objects.remove(window)
    built.mesh.hide_render = False

    apply_relight(clean_scene, built, RelightSettings())
    source = background.inputs["Color"].links[0].from_node.inputs[0].links[0].from_node
    assert source.name == ENVIRONMENT_NODE and source.image.name == "relit environment"
    assert source.inputs["Vector"].links[0].from_node.name == ENVIRONMENT_MAPPING_NODE
    assert background.inputs["Strength"].default_value == pytest.approx(strength)
    assert built.sun.data.energy == pytest.approx(energy)


# ------------------------------------------------------------------------------------------- keyframes


@pytest.mark.parametrize("mode", ["environment", "sky"])
def test_time_of_day_keyframes(clean_scene, mode):
    built = build(clean_scene)
    _, azimuth0 = base_angles(built)
    start, end = (50.0, 30.0), (5.0, 150.0)
    animate_time_of_day(clean_scene, built, start, end, 11, 31, RelightSettings(mode=mode))
    sky = built.world.node_tree.nodes.get(SKY_NODE)
    for frame, (elevation, azimuth) in ((11, start), (31, end), (21, (27.5, 90.0)), (40, end)):
        clean_scene.frame_set(frame)
        np.testing.assert_allclose(sun_axis(built), sun_direction(elevation, azimuth), atol=1e-5)
        assert mapping_z(built) == pytest.approx(-math.radians(azimuth - azimuth0), abs=1e-5)
        if mode == "sky":
            assert sky.sun_elevation == pytest.approx(math.radians(elevation), abs=1e-5)
            assert sky.sun_rotation == pytest.approx(math.pi - math.radians(azimuth), abs=1e-5)
    paths = {(fc.data_path, fc.array_index) for fc in action_fcurves(built.sun)}
    assert paths == {("rotation_euler", i) for i in range(3)}
    tree_paths = {fc.data_path for fc in action_fcurves(built.world.node_tree)}
    assert f'nodes["{ENVIRONMENT_MAPPING_NODE}"].inputs[2].default_value' in tree_paths
    assert (f'nodes["{SKY_NODE}"].sun_elevation' in tree_paths) == (mode == "sky")
    for fc in action_fcurves(built.sun):
        assert [tuple(p.co) for p in fc.keyframe_points][0][0] == 11 and len(fc.keyframe_points) == 2
    # The sun's light: in the environment mode the placed sun's at every frame (the air it crosses), else as set.
    light_keys = {(fc.data_path, fc.array_index): len(fc.keyframe_points) for fc in action_fcurves(built.sun.data)}
    assert set(light_keys) == {("energy", 0), ("color", 0), ("color", 1), ("color", 2)}
    assert set(light_keys.values()) == {21 if mode == "environment" else 2}
    clean_scene.frame_set(21)
    if mode == "environment":
        energy, colour, _ = placed_sun(LIGHT, 1.0, 27.5, 90.0, DEFAULT_SUN_TO_SKY)
        assert built.sun.data.energy == pytest.approx(energy, rel=1e-5)
        np.testing.assert_allclose(built.sun.data.color, colour, rtol=1e-5)
        clean_scene.frame_set(11)
        assert built.sun.data.energy == pytest.approx(placed_sun(LIGHT, 1.0, *start, DEFAULT_SUN_TO_SKY)[0], rel=1e-5)

    # A static relight replaces the animation: it holds at every frame.
    apply_relight(clean_scene, built, RelightSettings(sun_angles=(40.0, 10.0)))
    assert action_fcurves(built.sun) == []
    clean_scene.frame_set(31)
    np.testing.assert_allclose(sun_axis(built), sun_direction(40.0, 10.0), atol=1e-6)


# ------------------------------------------------------------------------------------------ errors, ops


def test_time_of_day_again_reuses_its_actions(clean_scene):
    """Each run replaces the previous keys; no unused action is left behind (Blender 4.2 left one per ID)."""
    built = build(clean_scene)
    counts = []
    for _ in range(3):
        animate_time_of_day(clean_scene, built, (40.0, 0.0), (10.0, 90.0), 1, 20)
        counts.append(len(bpy.data.actions))
        assert all(action.users >= 1 for action in bpy.data.actions)
    # The world's, the sun object's and its light's (4.4+ may key the light in the object's action, in a slot).
    assert counts[0] in (2, 3) and counts == [counts[0]] * 3
    apply_relight(clean_scene, built, RelightSettings())
    assert all(action.users >= 1 for action in bpy.data.actions)


def snapshot(built) -> tuple:
    """What a relight may change, as numbers: sun rotation (3), energy, colour (3), Mapping z, world strength,
    number of world nodes, whether the estimate was recorded."""
    nodes = built.world.node_tree.nodes
    return (*built.sun.rotation_euler, built.sun.data.energy, *built.sun.data.color, mapping_z(built),
            nodes["Background"].inputs["Strength"].default_value, len(nodes), RELIGHT_BASE_KEY in built.collection)


@pytest.mark.parametrize("settings, message", [
    (RelightSettings(mode="studio"), "mode"),
    (RelightSettings(sun_angles=(95.0, 0.0)), "elevation"),
    (RelightSettings(sun_strength=-1.0), "sun_strength"),
    (RelightSettings(sun_angles=(30.0, 0.0), sun_to_sky=-1.0), "sun_to_sky"),
    (RelightSettings(environment_tint=(1.0, float("nan"), 1.0)), "environment_tint"),
])
def test_bad_settings_change_nothing(clean_scene, settings, message):
    built = build(clean_scene)
    before = snapshot(built)
    with pytest.raises(ValueError, match=message):
        apply_relight(clean_scene, built, settings)
    with pytest.raises(ValueError, match="end frame"):
        animate_time_of_day(clean_scene, built, (10.0, 0.0), (20.0, 0.0), 10, 10)
    assert snapshot(built) == before


SKY_ANIMATED = (
    dict(mode="SKY", use_sun_angles=True, sun_elevation=math.radians(35.0), sun_azimuth=math.radians(70.0),
         sun_strength=1.5, sun_tint=(1.0, 0.9, 0.8), sky_strength=0.7, animate=True, frame_start=5, frame_end=25,
         end_elevation=math.radians(8.0), end_azimuth=math.radians(160.0)),
    lambda scene, built: animate_time_of_day(
        scene, built, (35.0, 70.0), (8.0, 160.0), 5, 25,
        RelightSettings(mode="sky", sun_angles=(35.0, 70.0), sun_strength=1.5, sun_tint=(1.0, 0.9, 0.8),
                        sky_strength=0.7)))
ENVIRONMENT_PLACED = (
    dict(use_sun_angles=True, sun_elevation=math.radians(25.0), sun_azimuth=math.radians(-60.0), sun_to_sky=7.0),
    lambda scene, built: apply_relight(scene, built, RelightSettings(sun_angles=(25.0, -60.0), sun_to_sky=7.0)))
ENVIRONMENT_TURNED = (
    dict(rotation=math.radians(-40.0), environment_strength=0.8, environment_tint=(0.9, 0.9, 1.0),
         sun_strength=0.5),
    lambda scene, built: apply_relight(scene, built, RelightSettings(
        rotation_deg=-40.0, environment_strength=0.8, environment_tint=(0.9, 0.9, 1.0), sun_strength=0.5)))


@pytest.mark.parametrize("kwargs, api", [SKY_ANIMATED, ENVIRONMENT_PLACED, ENVIRONMENT_TURNED],
                         ids=["sky-animated", "environment-placed", "environment"])
def test_relight_operator_equals_api(registered_addon, clean_scene, kwargs, api):
    build(clean_scene)
    assert bpy.ops.invr.relight(**kwargs) == {"FINISHED"}
    by_operator = []
    for frame in (5, 15, 25):
        clean_scene.frame_set(frame)
        by_operator.append(snapshot(find_import(clean_scene)))

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    built = build(scene)
    api(scene, built)
    for frame, expected in zip((5, 15, 25), by_operator, strict=True):
        scene.frame_set(frame)
        np.testing.assert_allclose(snapshot(built), expected, atol=1e-6)  # radians -> degrees -> radians


def test_relight_operator_accepts_the_elevations_own_limits(registered_addon, clean_scene):
    """±90° typed into the sliders come back through float32 radians a hair past 90 and are still accepted."""
    built = build(clean_scene)
    for sign in (1.0, -1.0):
        assert bpy.ops.invr.relight(use_sun_angles=True, sun_elevation=sign * math.pi / 2) == {"FINISHED"}
        np.testing.assert_allclose(sun_axis(built), [0.0, 0.0, sign], atol=1e-6)
    assert bpy.ops.invr.relight(animate=True, sun_elevation=math.pi / 2, end_elevation=-math.pi / 2) == {"FINISHED"}
    with pytest.raises(ValueError, match="sun elevation"):
        RelightSettings(sun_angles=(90.01, 0.0)).check()


def test_relight_operator_without_import_reports_and_changes_nothing(registered_addon, clean_scene):
    counts = {k: len(getattr(bpy.data, k)) for k in ("objects", "worlds", "collections", "lights")}
    with pytest.raises(RuntimeError, match="no InvRender import"):  # bpy.ops turns an ERROR report into this
        bpy.ops.invr.relight(mode="SKY")
    assert counts == {k: len(getattr(bpy.data, k)) for k in counts} and clean_scene.world is None
