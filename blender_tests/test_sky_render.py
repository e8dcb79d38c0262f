"""Sky rendering for the illumination prior, and sh.py's environment-map conventions, in real Blender.

- A panorama render of a world built from `sh.to_equirect(L)` projects back to L (the equirect mapping
  of sh.py = Blender's Environment Texture = datagen/render_skies.py's panorama camera).
- A diffuse sphere lit by that world renders to albedo * E(n) (the π factor of to_equirect).
- A tiny Nishita sky (datagen/render_skies.py) projects to plausible SH: light comes from the sun.
"""

import importlib.util
import math
from pathlib import Path

import bpy
import numpy as np
import pytest
from invrender_addon.build.bpy_io import enable_nodes

from invrender_core import sh

_spec = importlib.util.spec_from_file_location(
    "render_skies", Path(__file__).resolve().parents[1] / "datagen" / "render_skies.py")
render_skies = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render_skies)

LIGHT = np.zeros((9, 3))
LIGHT[0] = [1.2, 1.1, 1.0]
LIGHT[2] = [0.3, 0.3, 0.35]  # brighter from +z
LIGHT[3] = [0.25, 0.15, 0.1]  # and from +x (reddish)
LIGHT[1] = [-0.1, -0.1, -0.05]  # dimmer from +y
LIGHT[4] = [0.05, 0.04, 0.03]


def float_image(name, pixels):
    """Blender float image from (H, W, 3) linear pixels, row 0 = top."""
    h, w, _ = pixels.shape
    rgba = np.ones((h, w, 4), np.float32)
    rgba[..., :3] = pixels[::-1]
    img = bpy.data.images.new(name, w, h, alpha=False, float_buffer=True)
    img.colorspace_settings.name = "Linear Rec.709"
    img.pixels.foreach_set(rgba.ravel())
    return img


def environment_world(scene, pixels):
    world = bpy.data.worlds.new("env")
    scene.world = world
    enable_nodes(world)
    nodes, links = world.node_tree.nodes, world.node_tree.links
    env = nodes.new("ShaderNodeTexEnvironment")
    env.image = float_image("env", pixels)
    env.interpolation = "Closest"
    links.new(env.outputs["Color"], nodes["Background"].inputs["Color"])
    return world


def test_panorama_of_environment_texture_round_trips(clean_scene, tmp_path):
    assert sh.to_equirect(LIGHT, 64, 32, clamp_negative=False).min() > 0  # no clamping involved
    rig = render_skies.setup_scene(64, 32, 4)
    scene = rig["scene"]
    environment_world(scene, sh.to_equirect(LIGHT, 64, 32))
    rendered = render_skies.render_panorama(rig, tmp_path / "pano.exr")
    assert rendered.shape == (32, 64, 3)
    np.testing.assert_allclose(sh.from_equirect(rendered), LIGHT, atol=0.01 * np.abs(LIGHT).max())


def test_diffuse_sphere_lit_by_environment_is_albedo_times_E(clean_scene, tmp_path):
    scene = clean_scene
    environment_world(scene, sh.to_equirect(LIGHT, 128, 64))
    scene.world.node_tree.nodes["Environment Texture"].interpolation = "Linear"
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 128
    scene.cycles.use_denoising = False
    scene.render.threads_mode = "FIXED"
    scene.render.threads = 2
    size = 24
    scene.render.resolution_x = scene.render.resolution_y = size
    scene.render.image_settings.file_format = "OPEN_EXR"
    scene.render.image_settings.color_depth = "32"
    bpy.ops.mesh.primitive_uv_sphere_add(radius=1.0, segments=96, ring_count=48)
    sphere = bpy.context.active_object
    bpy.ops.object.shade_smooth()
    mat = bpy.data.materials.new("diffuse")
    enable_nodes(mat)
    nodes = mat.node_tree.nodes
    nodes.remove(nodes["Principled BSDF"])
    bsdf = nodes.new("ShaderNodeBsdfDiffuse")
    albedo = np.array([0.6, 0.5, 0.4])
    bsdf.inputs["Color"].default_value = (*albedo, 1.0)
    mat.node_tree.links.new(bsdf.outputs[0], nodes["Material Output"].inputs["Surface"])
    sphere.data.materials.append(mat)
    cam_data = bpy.data.cameras.new("ortho")
    cam_data.type = "ORTHO"
    cam_data.ortho_scale = 2.0
    cam = bpy.data.objects.new("ortho", cam_data)
    cam.location = (0.0, 0.0, 5.0)  # looks down -z, image up = +y
    scene.collection.objects.link(cam)
    scene.camera = cam
    rendered = render_skies.render_to_array(scene, tmp_path / "sphere.exr")

    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(c, -c)
    r2 = x * x + y * y
    inside = r2 < 0.8  # away from the silhouette
    normals = np.stack([x, y, np.sqrt(np.clip(1 - r2, 0, None))], axis=-1)
    expected = albedo * sh.shading(normals, LIGHT)
    ratio = rendered[inside] / expected[inside]
    assert np.median(ratio) == pytest.approx(1.0, abs=0.02)  # π factor and mapping are right
    assert np.abs(ratio - 1.0).max() < 0.1  # per pixel, within Monte Carlo noise


def test_nishita_sky_projects_to_plausible_sh(clean_scene, tmp_path):
    rig = render_skies.setup_scene(32, 16, 4)
    directions, elevations = [], []
    for elevation in (15.0, 60.0):
        p = {"category": "clear", "sun_elevation_deg": elevation, "sun_rotation_deg": 90.0, "air_density": 1.0,
             "dust_density": 1.0, "ozone_density": 1.0, "altitude_m": 0.0, "sun_visibility": 1.0}
        render_skies.apply_sky(rig, p)
        sky = render_skies.render_panorama(rig, tmp_path / "sky.exr")
        sun_dir = render_skies.sun_direction(math.radians(elevation), math.radians(90.0))
        np.testing.assert_allclose(sun_dir[:2], [math.cos(math.radians(elevation)), 0.0], atol=1e-12)  # +x
        sun = render_skies.measure_sun(rig, sun_dir, tmp_path / "sun.exr")
        assert np.all(sun > 0) and sun[0] > sun[2]  # the direct sun is yellowish
        L_sky = sh.from_equirect(sky)
        assert (L_sky[0] > 0).all() and L_sky[2] @ sh.LUMINANCE > 0  # the sky lights from above
        L = L_sky + sh.directional(sun_dir, sun)
        d = sh.dominant_direction(L)
        directions.append(d)
        elevations.append(math.degrees(math.asin(d[2])))
        assert d @ sun_dir > math.cos(math.radians(20.0))  # light mostly comes from the sun
        assert d[0] > 0 and abs(d[1]) < 0.1
    assert elevations[1] > elevations[0] + 20.0  # sun elevation sets the dominant direction
