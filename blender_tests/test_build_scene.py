"""Scene builder on scenes with known maps: camera match, mesh, material, world, a Cycles render."""

import dataclasses

import bpy
import numpy as np
import pytest
from bpy_extras.object_utils import world_to_camera_view
from invrender_addon.build.bpy_io import image_from_array, image_to_array, mesh_from_arrays
from invrender_addon.build.scene import SceneAssets, build_scene, set_cycles
from mathutils import Vector

from invrender_core import geometry
from invrender_core.camera import Camera
from invrender_core.scene import SceneEstimate, scene_assets
from invrender_core.train.synthetic import exact_estimate


def synthetic_estimate(camera: Camera, lighting: np.ndarray) -> SceneEstimate:
    depth, normals, _ = geometry.synthetic_sphere_plane(camera)
    u, v = camera.pixel_grid()
    checker = ((u // 8 + v // 8) % 2).astype(np.float32)
    albedo = np.stack([0.3 + 0.4 * checker, 0.5 * np.ones_like(checker), 0.6 - 0.3 * checker], -1)
    return exact_estimate(camera, depth, normals, lighting, albedo)


SKY = np.zeros((9, 3), np.float32)
SKY[0] = [0.9, 0.95, 1.0]  # DC
SKY[1] = [0.25, 0.25, 0.25]  # L1-1: light from above (camera +y)
SKY[3] = [0.15, 0.12, 0.1]  # L11: from the right
SKY[2] = [0.2, 0.2, 0.2]  # L10: from the viewer's side


def test_camera_matches_intrinsics(clean_scene):
    camera = Camera(width=160, height=100, fx=150.0, fy=150.0, cx=70.0, cy=58.0)
    est = synthetic_estimate(camera, SKY)
    built = build_scene(SceneAssets(**scene_assets(est, "cam")), clean_scene)
    bpy.context.view_layer.update()
    assert (clean_scene.render.resolution_x, clean_scene.render.resolution_y) == (160, 100)
    cam_to_world = np.array(built.camera.matrix_world)
    rng = np.random.default_rng(0)
    points = np.column_stack([rng.uniform(-1, 1, 20), rng.uniform(-1, 1, 20), rng.uniform(-6, -2, 20)])
    pixels, depth = camera.project(points)
    for point, pixel, d in zip(points, pixels, depth, strict=True):
        world = cam_to_world[:3, :3] @ point + cam_to_world[:3, 3]
        ndc = world_to_camera_view(clean_scene, built.camera, Vector(world))
        # Blender's normalised view coordinates: x right from the left edge, y up from the bottom edge.
        assert ndc.x * 160 == pytest.approx(pixel[0], abs=1e-3)
        assert (1.0 - ndc.y) * 100 == pytest.approx(pixel[1], abs=1e-3)
        assert ndc.z == pytest.approx(d, rel=1e-5)


def test_mesh_material_world_links(clean_scene):
    camera = Camera.from_fov(48, 32, 60.0)
    est = synthetic_estimate(camera, SKY)
    assets = scene_assets(est, "links")
    built = build_scene(SceneAssets(**assets), clean_scene)
    mesh = built.mesh.data
    assert len(mesh.vertices) == len(assets["vertices"])
    assert len(mesh.polygons) == len(assets["faces"])
    uv = np.empty(len(mesh.loops) * 2, np.float32)
    mesh.uv_layers["UVMap"].data.foreach_get("uv", uv)
    np.testing.assert_allclose(uv.reshape(-1, 2), assets["uvs"][assets["faces"].ravel()], atol=1e-6)
    tree = mesh.materials[0].node_tree
    bsdf = tree.nodes["Principled BSDF"]
    assert bsdf.inputs["Base Color"].links[0].from_node.image.name == "links albedo"
    normal_map = bsdf.inputs["Normal"].links[0].from_node
    assert normal_map.type == "NORMAL_MAP" and normal_map.space == "OBJECT"
    assert normal_map.inputs["Color"].links[0].from_node.image.colorspace_settings.name == "Non-Color"
    background = built.world.node_tree.nodes["Background"]
    assert background.inputs["Color"].links[0].from_node.type == "TEX_ENVIRONMENT"
    assert clean_scene.world == built.world and clean_scene.camera == built.camera


def test_a_long_photo_name_keeps_every_datablock_name_whole(clean_scene):
    camera = Camera.from_fov(48, 32, 60.0)
    name = "Straße am Fluss, Abendlicht, Blick nach Westen über die Brücke 2026"  # 71 bytes of UTF-8
    assets = scene_assets(synthetic_estimate(camera, SKY), name, background_band=0.5)
    built = build_scene(SceneAssets(**assets), clean_scene)
    base = built.collection.name
    assert name.startswith(base) and len(base.encode()) <= 39
    names = {(kind, block.name) for kind in ("objects", "images", "materials", "worlds")
             for block in getattr(bpy.data, kind) if block.name.startswith(base)}
    images = ("photo", "albedo", "normals", "environment", "background albedo", "background normals")
    objects = ("camera", "mesh", "background mesh", "sun")
    expected = ({("images", f"{base} {suffix}") for suffix in images} | {("objects", f"{base} {s}") for s in objects}
                | {("materials", f"{base} material"), ("materials", f"{base} background material"),
                   ("worlds", f"{base} world")})
    assert names == expected


def test_image_and_mesh_round_trip(clean_scene):
    rng = np.random.default_rng(1)
    pixels = rng.uniform(0, 4, (7, 5, 3)).astype(np.float32)  # float values above 1 survive
    np.testing.assert_array_equal(image_to_array(image_from_array("rt", pixels)), pixels)
    with pytest.raises(ValueError, match=r"\(4, 4, 2\)"):
        image_from_array("bad", np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="faces"):
        mesh_from_arrays("bad", np.zeros((3, 3)), np.zeros((1, 4)))

    # Two triangles of a square: positions, corners, UVs and the computed edges read back through bpy.
    vertices = rng.normal(size=(4, 3)).astype(np.float32)
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    uvs = rng.uniform(size=(4, 2)).astype(np.float32)
    mesh = mesh_from_arrays("square", vertices, faces, uvs)
    co = np.empty(12, np.float32)
    mesh.vertices.foreach_get("co", co)
    np.testing.assert_array_equal(co.reshape(4, 3), vertices)
    corners = np.empty(6, np.int32)
    mesh.loops.foreach_get("vertex_index", corners)
    np.testing.assert_array_equal(corners, faces.ravel())
    uv = np.empty(12, np.float32)
    mesh.uv_layers["UVMap"].data.foreach_get("uv", uv)
    np.testing.assert_array_equal(uv.reshape(6, 2), uvs[faces.ravel()])
    assert len(mesh.edges) == 5 and not mesh.validate(verbose=False)  # nothing for validate to fix
    for bad_faces, message in (([[0, 1, 4]], "indices"), ([[0, 1, 1]], "repeat"), ([[0, -1, 2]], "indices")):
        with pytest.raises(ValueError, match=message):
            mesh_from_arrays("bad", vertices, np.array(bad_faces))
    with pytest.raises(ValueError, match="finite"):
        mesh_from_arrays("bad", np.full((3, 3), np.nan), np.array([[0, 1, 2]]))


def test_save_reload_keeps_images(clean_scene, tmp_path):
    camera = Camera.from_fov(32, 24, 60.0)
    est = synthetic_estimate(camera, SKY)
    build_scene(SceneAssets(**scene_assets(est, "keep")), clean_scene)
    albedo_before = image_to_array(bpy.data.images["keep albedo"])
    path = tmp_path / "moved" / "scene.blend"
    path.parent.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(path))
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.wm.open_mainfile(filepath=str(path))
    for name in ("keep albedo", "keep normals", "keep photo", "keep environment"):
        assert bpy.data.images[name].packed_file is not None, name
    np.testing.assert_allclose(image_to_array(bpy.data.images["keep albedo"]), albedo_before, atol=1e-6)


def test_failed_build_leaves_scene_unchanged(clean_scene):
    camera = Camera.from_fov(32, 24, 60.0)
    assets = scene_assets(synthetic_estimate(camera, SKY), "fail")
    assets["environment"] = np.zeros((4, 4, 2))  # invalid: the world is built after the mesh
    counts = {k: len(getattr(bpy.data, k)) for k in ("objects", "meshes", "images", "materials", "collections")}
    with pytest.raises(ValueError):
        build_scene(SceneAssets(**assets), clean_scene)
    assert counts == {k: len(getattr(bpy.data, k)) for k in counts}
    assert clean_scene.camera is None and clean_scene.world is None


@pytest.mark.parametrize("sun_fraction", [0.0, 0.6])
def test_cycles_render_reproduces_the_photo(clean_scene, sun_fraction):
    """Ground-truth maps in, Cycles render out: it must match albedo * E(n), the image model."""
    camera = Camera.from_fov(64, 48, 50.0)
    est = synthetic_estimate(camera, SKY)
    build_scene(SceneAssets(**scene_assets(est, "render", sun_fraction=sun_fraction,
                                           environment_height=64)), clean_scene)
    set_cycles(clean_scene, samples=64)
    rendered = _render_exr(clean_scene)
    photo = est.image
    inside = ~geometry.depth_discontinuities(est.depth, 0.05)  # silhouette pixels mix sphere and plane
    corr = np.corrcoef(rendered[inside].ravel(), photo[inside].ravel())[0, 1]
    assert corr >= 0.9
    ratio = np.median(rendered[inside] / np.maximum(photo[inside], 1e-3))
    assert ratio == pytest.approx(1.0, abs=0.15)


def _render_exr(scene) -> np.ndarray:
    scene.render.image_settings.file_format = "OPEN_EXR"
    bpy.ops.render.render()
    path = bpy.app.tempdir + "render.exr"
    bpy.data.images["Render Result"].save_render(path)
    return image_to_array(bpy.data.images.load(path))


def test_denoised_renders_lose_their_grain(clean_scene):
    camera = Camera.from_fov(48, 32, 50.0)
    est = exact_estimate(camera, np.full((32, 48), 3.0), np.broadcast_to(np.float32([0, 0, 1]), (32, 48, 3)), SKY,
                         np.full((32, 48, 3), 0.5, np.float32))  # a uniformly lit grey wall
    build_scene(SceneAssets(**scene_assets(est, "grain", sun_fraction=0.0, environment_height=16)), clean_scene)
    spread = {}
    for denoise in (False, True):
        set_cycles(clean_scene, samples=2, denoise=denoise)
        spread[denoise] = float(np.std(_render_exr(clean_scene)[4:-4, 4:-4]))
    assert spread[True] < 0.3 * spread[False]


def test_renders_keep_the_photos_pixel_detail(clean_scene):
    # The photo lies one texel per pixel in its own view; Cycles' default 1.5 px filter blurred it (a real street
    # kept 13 % of its Laplacian variance). A one-pixel checker on a wall must keep most of its contrast.
    camera = Camera.from_fov(48, 32, 50.0)
    u, v = camera.pixel_grid()
    checker = ((u + v) % 2).astype(np.float32)[..., None] * np.ones(3, np.float32)
    est = exact_estimate(camera, np.full((32, 48), 3.0), np.broadcast_to(np.float32([0, 0, 1]), (32, 48, 3)), SKY,
                         0.3 + 0.4 * checker)
    build_scene(SceneAssets(**scene_assets(est, "detail", sun_fraction=0.0, environment_height=16)), clean_scene)
    set_cycles(clean_scene, samples=16)
    rendered = _render_exr(clean_scene)[4:-4, 4:-4, 1]
    photo = est.image[4:-4, 4:-4, 1]
    contrast = np.std(rendered - rendered.mean()) / np.std(photo - photo.mean())
    assert contrast > 0.6


def test_faces_turned_away_from_their_normal_map_are_lit_as_the_normal_map_says(clean_scene):
    """A wall whose geometry faces down (as the risers of a staircase that the networks' normals build) under a
    normal map facing up, lit from above: Cycles reflects no light arriving behind a face's geometric normal, so
    without the material's light from behind it rendered at 0.37 times albedo * E(normal map); with it 0.8 (Cycles
    bends the reversed normal map a little, see build_material)."""
    camera = Camera.from_fov(48, 32, 50.0)
    down = np.array([0.0, -0.6, 0.8])
    depth = -3.0 / (camera.rays() @ down)  # the plane n . X = -3 (n . (d r) = -3), facing down and to the camera
    normals = np.broadcast_to(np.float32([0.0, 0.8, 0.6]), (32, 48, 3))  # the normal map: facing up, 90 deg away
    est = exact_estimate(camera, depth, normals, SKY, np.full((32, 48, 3), 0.5, np.float32))
    build_scene(SceneAssets(**scene_assets(est, "turned", sun_fraction=0.0, environment_height=64)), clean_scene)
    set_cycles(clean_scene, samples=64)
    rendered = _render_exr(clean_scene)
    ratio = np.median(rendered / np.maximum(est.image, 1e-3))
    assert 0.7 <= ratio <= 1.1


def _render_alpha(scene, camera_object) -> np.ndarray:
    """(H, W) alpha of a Cycles render of `scene` through camera_object on a transparent film."""
    scene.camera = camera_object
    scene.render.film_transparent = True
    scene.render.image_settings.file_format = "OPEN_EXR"
    bpy.ops.render.render()
    path = bpy.app.tempdir + "alpha.exr"
    bpy.data.images["Render Result"].save_render(path)
    image = bpy.data.images.load(path)
    width, height = image.size
    rgba = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(rgba)
    bpy.data.images.remove(image)
    return rgba.reshape(height, width, 4)[::-1, :, 3]


def test_background_layer_fills_what_a_new_viewpoint_uncovers(clean_scene):
    """The sphere in front of the plane seen from a camera moved sideways: without the background layer the plane
    has holes beside the sphere (the world shows through); the layer fills them."""
    camera = Camera.from_fov(64, 48, 50.0)
    assets = scene_assets(synthetic_estimate(camera, SKY), "layer", background_band=0.5)
    built = build_scene(SceneAssets(**assets), clean_scene)
    layer = built.background
    assert layer is not None and len(layer.data.polygons) == len(assets["background"]["faces"])
    assert layer.users_collection[0] == built.collection and layer.matrix_world == built.mesh.matrix_world
    assert built.collection["invrender_import"]["background"] == layer
    nodes = layer.active_material.node_tree.nodes
    np.testing.assert_allclose(image_to_array(nodes["InvRender Albedo"].image), assets["background"]["albedo"],
                               atol=1e-6)
    set_cycles(clean_scene, samples=1)
    moved = built.camera.copy()
    moved.location = (0.6, 0.0, 0.0)  # sideways: the camera's x is the world's x
    clean_scene.collection.objects.link(moved)
    holes = {}
    for hidden in (True, False):
        layer.hide_render = hidden
        # Away from the frame's edges (the moved camera sees past the photo's right edge).
        holes[hidden] = int((_render_alpha(clean_scene, moved)[4:-4, 4:-12] < 0.5).sum())
    assert holes[True] > 100  # the plane uncovered beside the sphere, and the cuts at its outline
    assert holes[False] == 0


def test_matching_the_photo_gains_what_the_render_misses():
    """A photo brighter than the estimate explains (albedo * E(n) times 1.3 / 1.2 / 1.1): the built scene rendered
    under the photo's own light is darker by that much, unless the import matches the photo, which multiplies the
    albedo by the gain (a node after the albedo image) so that the render is as bright as the photo. The artist's
    objects play no part: a cube around the photo camera leaves the gain exactly as it is."""
    camera = Camera.from_fov(64, 48, 50.0)
    est = synthetic_estimate(camera, SKY)
    brighter = np.float32([1.3, 1.2, 1.1])
    est = dataclasses.replace(est, image=est.image * brighter)
    inside = ~geometry.depth_discontinuities(est.depth, 0.05)
    ratios = {}
    for match in (False, True):
        bpy.ops.wm.read_factory_settings(use_empty=True)
        scene = bpy.context.scene
        built = build_scene(SceneAssets(**scene_assets(est, "match", sun_fraction=0.6, environment_height=64),
                                        match_photo=match), scene)
        set_cycles(scene, samples=64)
        rendered = _render_exr(scene)
        ratios[match] = np.median(rendered[inside] / np.maximum(est.image[inside], 1e-3), axis=0)  # (3,)
    np.testing.assert_allclose(ratios[False], 1.0 / brighter, rtol=0.15)
    np.testing.assert_allclose(ratios[True], 1.0, atol=0.05)
    gain = np.array(built.photo_gain)
    np.testing.assert_allclose(gain / gain[2], brighter / brighter[2], rtol=0.03)
    assert list(built.collection["invrender_import"]["photo_gain"]) == pytest.approx(gain.tolist())
    bsdf = built.mesh.active_material.node_tree.nodes["Principled BSDF"]
    mix = bsdf.inputs["Base Color"].links[0].from_node
    assert mix.name == "InvRender Photo gain" and mix.inputs["Factor"].default_value == 1.0
    assert tuple(mix.inputs[7].default_value)[:3] == pytest.approx(tuple(gain))
    assert mix.inputs[6].links[0].from_node.name == "InvRender Albedo"
    assert len(bpy.data.scenes) == 1 and not [i for i in bpy.data.images if i.name.endswith(" bake")]

    bpy.ops.mesh.primitive_cube_add(size=4.0)  # the camera at the origin inside it, as in the startup file
    again = build_scene(SceneAssets(**scene_assets(est, "cube", sun_fraction=0.6, environment_height=64),
                                    match_photo=True), scene)
    assert again.photo_gain == built.photo_gain


def test_a_scene_too_dark_to_match_is_built_unmatched_with_a_warning(clean_scene):
    camera = Camera.from_fov(32, 24, 50.0)
    assets = scene_assets(synthetic_estimate(camera, SKY), "black", background_band=0)
    assets["albedo"] = np.zeros_like(assets["albedo"])  # no albedo: no lit surface to compare the render with
    built = build_scene(SceneAssets(**assets, match_photo=True), clean_scene)
    assert built.photo_gain is None and "photo_gain" not in built.collection["invrender_import"]
    assert built.warnings == ["too little of the photo is lit surface to match its brightness: the scene keeps the "
                              "estimate's albedo, and may render darker than the photo"]
    assert "InvRender Photo gain" not in built.mesh.active_material.node_tree.nodes
