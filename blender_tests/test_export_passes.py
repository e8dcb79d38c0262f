"""Export Passes on a scene built from exact maps (a sphere before a tilted plane): every pass against ground
truth, the user's settings restored exactly, operator == API, errors that write nothing."""

import os

import bpy
import numpy as np
import pytest
from invrender_addon.build import passes
from invrender_addon.build.bpy_io import use_multilayer_exr
from invrender_addon.build.passes import export_passes
from invrender_addon.build.scene import (
    ALBEDO_NODE,
    NORMALS_NODE,
    SHADOW_AOV,
    SHADOW_NODE,
    SceneAssets,
    build_scene,
    set_cycles,
)
from invrender_addon.operators.export_passes import classes as operator_classes

from invrender_core import geometry, sh
from invrender_core.camera import Camera
from invrender_core.io import read_exr_header
from invrender_core.io.exr import read_exr_channels
from invrender_core.scene import SceneEstimate, scene_assets
from invrender_core.train.synthetic import exact_estimate

CAMERA = Camera.from_fov(48, 32, 50.0)
LIGHT = np.zeros((9, 3), np.float32)
LIGHT[0], LIGHT[1], LIGHT[2], LIGHT[3] = [0.9, 0.95, 1.0], [0.25] * 3, [0.2] * 3, [0.15, 0.12, 0.1]
PLANE_N, PLANE_OFFSET = np.array([0.0, 0.3, 1.0]) / np.linalg.norm([0.0, 0.3, 1.0]), -5.0  # synthetic_sphere_plane
SPHERE_C, SPHERE_R = np.array([0.1, -0.05, -3.0]), 0.8
SAMPLES = 4
LAYER_CHANNELS = ["A", "B", "G", "R", "albedo.B", "albedo.G", "albedo.R", "depth.Z", "normal.X", "normal.Y",
                  "normal.Z", "shading.B", "shading.G", "shading.R"]


def estimate(with_shadow=True) -> SceneEstimate:
    depth, normals, _ = geometry.synthetic_sphere_plane(CAMERA, centre=SPHERE_C, radius=SPHERE_R,
                                                        plane_normal=PLANE_N, plane_offset=PLANE_OFFSET)
    u, v = CAMERA.pixel_grid()
    checker = ((u // 8 + v // 8) % 2).astype(np.float32)
    albedo = np.stack([0.3 + 0.4 * checker, np.full_like(checker, 0.5), 0.6 - 0.3 * checker], -1)
    shadow = (0.5 + 0.5 * np.sin(u / 5.0) * np.cos(v / 7.0)).astype(np.float32) if with_shadow else None
    return exact_estimate(CAMERA, depth, normals, LIGHT, albedo, shadow)


def build(scene, est):
    built = build_scene(SceneAssets(**scene_assets(est, "shot", environment_height=16)), scene)
    set_cycles(scene, samples=SAMPLES)
    # Cycles' narrowest pixel filter: every sample goes through the pixel centre, where the mesh has its vertex,
    # so geometry and texture passes are exact rather than blurred across edges.
    scene.cycles.filter_width = 0.01
    # Texel lookups without blending: with Linear, a sample now and then mixes in a neighbouring texel (seen:
    # isolated errors of 4e-3 on the shadow map), which says nothing about the passes.
    nodes = built.mesh.data.materials[0].node_tree.nodes
    for name in (ALBEDO_NODE, NORMALS_NODE, SHADOW_NODE):
        if name in nodes:
            nodes[name].interpolation = "Closest"
    return built


def interior(est) -> np.ndarray:
    """(H, W) pixels whose vertex is inside the mesh: rays through a boundary vertex hit or miss by a hair, and
    a pass averaged over the samples would then mix surface and background."""
    cut = geometry.depth_discontinuities(est.depth)
    near = np.zeros_like(cut)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near |= np.roll(cut, (dy, dx), axis=(0, 1))
    near[[0, -1]], near[:, [0, -1]] = True, True
    return ~near


def stack(channels, layer, components):
    return np.stack([channels[f"{layer}.{c}" if layer else c] for c in components], -1)


def test_passes_match_ground_truth(clean_scene, tmp_path):
    est = estimate()
    built = build(clean_scene, est)
    out = export_passes(clean_scene, built, tmp_path / "shot.exr", samples=SAMPLES)
    assert out == tmp_path / "shot.exr" and sorted(os.listdir(tmp_path)) == ["shot.exr"]
    channels = read_exr_channels(out)
    assert sorted(channels) == sorted(LAYER_CHANNELS + ["shadow.Y"])
    assert read_exr_header(out).attributes["compression"][1] == b"\x03"  # ZIP
    inside = interior(est)
    assert inside.mean() > 0.5

    # Depth is planar (along the view axis), not the distance to the eye, which is |ray| times larger.
    depth = channels["depth.Z"]
    np.testing.assert_allclose(depth[inside], est.depth[inside], rtol=1e-5)
    ray_length = np.linalg.norm(CAMERA.rays(), axis=-1)
    assert (ray_length[inside] - 1).max() > 0.05  # large enough that a radial depth would fail above

    np.testing.assert_allclose(stack(channels, "albedo", "RGB")[inside], est.albedo[inside], atol=1e-5)
    # World-frame normals: the camera-frame normals rotated by the camera's rotation.
    rotation = np.array(built.camera.matrix_world)[:3, :3]
    np.testing.assert_allclose(stack(channels, "normal", "XYZ")[inside], (est.normals @ rotation.T)[inside],
                               atol=1e-3)
    assert np.abs(rotation - sh.CAMERA_TO_WORLD).max() < 1e-6  # an import's camera: world != camera frame
    np.testing.assert_allclose(channels["shadow.Y"][inside], est.shadow[inside], atol=1e-5)

    beauty, shading = stack(channels, "", "RGB"), stack(channels, "shading", "RGB")
    np.testing.assert_allclose(beauty[inside], (est.albedo * shading)[inside], rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(channels["A"], 1.0)
    # Shading is the light itself: the image model's E(n), up to the sampling noise of a few samples.
    assert np.median(shading[inside] / est.shading[inside]) == pytest.approx(1.0, abs=0.1)
    # Blender reads the file back as layers: what an artist gets from the compositor's Image node.
    node = bpy.data.node_groups.new("read", "CompositorNodeTree").nodes.new("CompositorNodeImage")
    node.image = bpy.data.images.load(str(out))
    assert node.image.type == "MULTILAYER"
    sockets = {socket.name: socket.type for socket in node.outputs}
    assert {"albedo", "normal", "depth", "shadow", "shading"} <= sockets.keys()
    # Blender before 4.5 reads every 3-channel layer of a file as a colour, its own Normal pass included.
    vector = "VECTOR" if bpy.app.version >= (4, 5, 0) else "RGBA"
    assert (sockets["normal"], sockets["depth"]) == (vector, "VALUE")
    camera_to_world = read_exr_header(out).attributes["invrender/camera_to_world"][1].decode().split()
    np.testing.assert_allclose(np.array(camera_to_world, float).reshape(4, 4), built.camera.matrix_world,
                               atol=1e-6)


def test_novel_view_camera(clean_scene, tmp_path):
    """A camera turned about the photo camera's centre sees the (exactly meshed) plane at a depth known in closed
    form; the scene camera stays the photo's."""
    est = estimate()
    built = build(clean_scene, est)
    turned = bpy.data.objects.new("turned", built.camera.data)
    clean_scene.collection.objects.link(turned)
    turned.rotation_euler = (built.camera.rotation_euler[0] + 0.08, 0.0, 0.12)
    bpy.context.view_layer.update()
    export_passes(clean_scene, built, tmp_path / "novel.exr", samples=SAMPLES, camera=turned)
    assert clean_scene.camera == built.camera
    channels = read_exr_channels(tmp_path / "novel.exr")
    to_photo = np.array(built.camera.matrix_world)[:3, :3].T @ np.array(turned.matrix_world)[:3, :3]
    rays = CAMERA.rays() @ to_photo.T  # the turned camera's pixel rays (depth 1 in its frame), photo frame
    expected = PLANE_OFFSET / (rays @ PLANE_N)  # n . (t r) = offset; t is the planar depth in the turned frame
    points = rays * expected[..., None]
    pixels, _ = CAMERA.project(points.reshape(-1, 3))
    pixels = pixels.reshape(*expected.shape, 2)
    # Plane points the photo saw well inside its frame, and rays that pass the sphere by a margin.
    seen = ((pixels[..., 0] > 2) & (pixels[..., 0] < CAMERA.width - 2) & (pixels[..., 1] > 2)
            & (pixels[..., 1] < CAMERA.height - 2))
    unit = rays / np.linalg.norm(rays, axis=-1, keepdims=True)
    miss = np.linalg.norm(np.cross(unit, SPHERE_C), axis=-1) > SPHERE_R + 0.15
    check = seen & miss
    assert check.mean() > 0.1 and (~seen).any()  # the view really moved: part of it lies outside the photo
    np.testing.assert_allclose(channels["depth.Z"][check], expected[check], rtol=1e-4)


def _dump(struct, depth=0):
    """Every property of an RNA struct, nested structs and collections included (IDs by name; the depsgraph, an
    evaluated copy that catches up at its next update, left out)."""

    def nested(value):
        if isinstance(value, bpy.types.ID):
            return value.name
        return _dump(value, depth + 1) if value is not None and depth < 4 else repr(value)

    out = {}
    for prop in struct.bl_rna.properties:
        if prop.identifier in ("rna_type", "depsgraph"):
            continue
        value = getattr(struct, prop.identifier)
        if prop.type == "POINTER":
            out[prop.identifier] = nested(value)
        elif prop.type == "COLLECTION":
            out[prop.identifier] = [nested(item) for item in value]
        else:
            out[prop.identifier] = tuple(value) if hasattr(value, "__len__") and not isinstance(value, str) else value
    return out


def _state(scene):
    datablocks = {kind: sorted(b.name for b in getattr(bpy.data, kind) if getattr(b, "type", "") != "RENDER_RESULT")
                  for kind in ("objects", "images", "materials", "worlds", "cameras", "collections")}
    return {"render": _dump(scene.render), "cycles": _dump(scene.cycles), "camera": scene.camera.name,
            "view_layers": [_dump(layer) for layer in scene.view_layers], "data": datablocks}


def _unusual_user_settings(scene):
    """Settings the export has to change, set to values that differ from what it sets."""
    scene.render.engine = "BLENDER_WORKBENCH"
    scene.cycles.samples = 7
    image = scene.render.image_settings
    image.file_format, image.color_mode, image.color_depth, image.compression = "PNG", "RGB", "16", 42
    scene.render.use_compositing, scene.render.use_sequencer = True, True
    scene.render.use_single_layer = True
    scene.render.use_multiview = True
    image.color_management = "OVERRIDE"
    layer = scene.view_layers[0]
    layer.samples = 3
    layer.use_pass_z = layer.use_pass_normal = layer.use_pass_diffuse_color = False
    layer.aovs.remove(layer.aovs[SHADOW_AOV])  # the export adds it back for its render only
    other = scene.view_layers.new("Other")
    other.use = True


def test_settings_restored_exactly(clean_scene, tmp_path):
    est = estimate()
    build(clean_scene, est)
    _unusual_user_settings(clean_scene)
    before = _state(clean_scene)
    out = export_passes(clean_scene, None, tmp_path / "p.exr", samples=SAMPLES)
    assert _state(clean_scene) == before
    assert "shadow.Y" in read_exr_channels(out)  # the import's shadow, through the AOV added for the render
    assert read_exr_header(out).attributes["invrender/camera"] == ("string", b"shot camera")


def test_failure_after_render_restores_and_writes_nothing(clean_scene, tmp_path, monkeypatch):
    build(clean_scene, estimate())
    _unusual_user_settings(clean_scene)
    before = _state(clean_scene)

    def broken(path):
        raise OSError("disk full")

    monkeypatch.setattr(passes, "read_exr_channels", broken)
    with pytest.raises(OSError, match="disk full"):
        export_passes(clean_scene, None, tmp_path / "p.exr", samples=SAMPLES, separate_files=True)
    assert _state(clean_scene) == before
    assert os.listdir(tmp_path) == []  # no file, no temporary left


def test_separate_files_and_no_shadow(clean_scene, tmp_path):
    est = estimate(with_shadow=False)
    build(clean_scene, est)
    out = export_passes(clean_scene, None, tmp_path / "p.exr", samples=SAMPLES, separate_files=True)
    channels = read_exr_channels(out)
    assert sorted(channels) == LAYER_CHANNELS  # no shadow layer without a shadow map
    names = ["beauty", "albedo", "normal", "depth", "shading"]
    assert sorted(os.listdir(tmp_path)) == sorted(["p.exr"] + [f"p_{n}.exr" for n in names])
    plain = {n: read_exr_channels(tmp_path / f"p_{n}.exr") for n in names}
    np.testing.assert_array_equal(stack(plain["beauty"], "", "RGBA"), stack(channels, "", "RGBA"))
    np.testing.assert_array_equal(stack(plain["albedo"], "", "RGB"), stack(channels, "albedo", "RGB"))
    np.testing.assert_array_equal(stack(plain["normal"], "", "RGB"), stack(channels, "normal", "XYZ"))
    np.testing.assert_array_equal(plain["depth"]["Y"], channels["depth.Z"])
    np.testing.assert_array_equal(stack(plain["shading"], "", "RGB"), stack(channels, "shading", "RGB"))


def test_reader_reads_blender_zip_and_uncompressed(clean_scene, tmp_path):
    """Blender's own multilayer files (the export reads them uncompressed) decode the same with ZIP."""
    build(clean_scene, estimate())
    layer = clean_scene.view_layers[0]
    layer.use_pass_z = layer.use_pass_normal = True
    assert bpy.ops.render.render() == {"FINISHED"}
    result = next(image for image in bpy.data.images if image.type == "RENDER_RESULT")
    settings = clean_scene.render.image_settings
    use_multilayer_exr(settings)
    settings.color_depth = "32"
    decoded = {}
    for codec in ("NONE", "ZIP", "ZIPS"):
        settings.exr_codec = codec
        result.save_render(str(tmp_path / f"{codec}.exr"), scene=clean_scene)
        decoded[codec] = read_exr_channels(tmp_path / f"{codec}.exr")
    assert {"ViewLayer.Depth.Z", "ViewLayer.Normal.X", "ViewLayer.Combined.R", "ViewLayer.shadow.X"} <= set(
        decoded["NONE"])
    for codec in ("ZIP", "ZIPS"):
        assert decoded[codec].keys() == decoded["NONE"].keys()
        for name, values in decoded["NONE"].items():
            np.testing.assert_array_equal(decoded[codec][name], values)


@pytest.fixture
def operator_registered():
    for cls in operator_classes:
        bpy.utils.register_class(cls)
    yield
    for cls in reversed(operator_classes):
        bpy.utils.unregister_class(cls)


def test_operator_equals_api(clean_scene, tmp_path, operator_registered):
    build(clean_scene, estimate())
    assert bpy.ops.invr.export_passes(filepath=str(tmp_path / "op"), samples=SAMPLES) == {"FINISHED"}
    export_passes(clean_scene, None, tmp_path / "api.exr", samples=SAMPLES)
    by_operator, by_api = read_exr_channels(tmp_path / "op.exr"), read_exr_channels(tmp_path / "api.exr")
    assert by_operator.keys() == by_api.keys()
    for name, values in by_api.items():
        np.testing.assert_array_equal(by_operator[name], values)


@pytest.mark.filterwarnings("ignore:.*does not support blend relative")  # Blender 4.5's note on "//rel.exr"
def test_errors_write_nothing(clean_scene, tmp_path, operator_registered, monkeypatch):
    # No import: a camera alone is not enough.
    camera = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    clean_scene.collection.objects.link(camera)
    clean_scene.camera = camera
    with pytest.raises(ValueError, match="import a photo"):
        export_passes(clean_scene, None, tmp_path / "a.exr")
    with pytest.raises(RuntimeError, match="import a photo"):  # bpy.ops turns the ERROR report into this
        bpy.ops.invr.export_passes(filepath=str(tmp_path / "a.exr"), samples=SAMPLES)

    built = build(clean_scene, estimate())
    clean_scene.camera = None
    with pytest.raises(ValueError, match="no camera"):
        export_passes(clean_scene, built, tmp_path / "a.exr")
    with pytest.raises(RuntimeError, match="camera"):  # the operator's poll says why it is unavailable
        bpy.ops.invr.export_passes(filepath=str(tmp_path / "a.exr"))
    with pytest.raises(ValueError, match="not a camera"):
        export_passes(clean_scene, built, tmp_path / "a.exr", camera=built.mesh)
    clean_scene.camera = built.camera
    with pytest.raises(OSError, match="does not exist"):
        export_passes(clean_scene, built, tmp_path / "missing" / "a.exr")
    with pytest.raises(OSError, match="is a folder"):
        export_passes(clean_scene, built, tmp_path)
    with pytest.raises(ValueError, match="samples"):
        export_passes(clean_scene, built, tmp_path / "a.exr", samples=0)
    # A folder named without its trailing slash, a path relative to a .blend not saved yet (it would be written
    # wherever Blender was started from).
    with pytest.raises(RuntimeError, match="is a folder: give a file name ending in .exr"):
        bpy.ops.invr.export_passes(filepath=str(tmp_path), samples=SAMPLES)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="//rel.exr is relative to the .blend file, which is not saved yet: save "
                       "the file first or give an absolute path"):
        bpy.ops.invr.export_passes(filepath="//rel.exr", samples=SAMPLES)
    # An import left out of the render: the passes would hold none of it.
    layer = clean_scene.view_layers[0].layer_collection.children[built.collection.name]
    layer.exclude = True
    with pytest.raises(RuntimeError, match="the import 'shot' is excluded from the view layer 'ViewLayer': tick its "
                       "checkbox in the Outliner, then export"):
        bpy.ops.invr.export_passes(filepath=str(tmp_path / "a.exr"), samples=SAMPLES)
    layer.exclude = False
    for hidden in (built.collection, built.mesh):
        hidden.hide_render = True
        with pytest.raises(RuntimeError, match=r"the import 'shot' is disabled in renders: enable it \(the camera "
                           r"icon in the Outliner\), then export"):
            bpy.ops.invr.export_passes(filepath=str(tmp_path / "a.exr"), samples=SAMPLES)
        hidden.hide_render = False
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OSError, match="writable folder"):
            export_passes(clean_scene, built, locked / "a.exr")
    assert sorted(os.listdir(tmp_path)) == (["locked"] if os.geteuid() != 0 else [])
    assert clean_scene.camera == built.camera and clean_scene.render.engine == "CYCLES"
