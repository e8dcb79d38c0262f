"""Photo + maps -> scene through the CLI and the operator: same result, nothing left on failure."""

import json
import threading

import bpy
import numpy as np
import pytest
from invrender_addon.build.import_photo import ImportSettings, import_photo
from invrender_addon.build.relight import placed_sun
from invrender_addon.build.scene import IMPORT_KEY, PHOTO_GAIN_NODE
from mathutils import Vector

from invrender_core import cli, sh
from invrender_core.camera import Camera
from invrender_core.io import write_exr, write_png
from invrender_core.relight import DEFAULT_SUN_TO_SKY
from invrender_core.scene import sun_direction

LIGHT = np.zeros((9, 3))
LIGHT[0] = [1.0, 0.95, 0.9]
LIGHT[1] = [0.3, 0.3, 0.3]
LIGHT[3] = [0.3, 0.25, 0.2]


@pytest.fixture
def photo_with_maps(tmp_path):
    """A small photo of a tilted checkered plane with its exact depth and normals, as files."""
    camera = Camera.from_fov(40, 30, 60.0)
    normal = np.array([0.3, 0.2, 1.0]) / np.linalg.norm([0.3, 0.2, 1.0])
    depth = -3.0 / (camera.rays() @ normal)  # plane n . X = -3 along each ray
    normals = np.broadcast_to(normal, (30, 40, 3)).astype(np.float32)
    u, v = camera.pixel_grid()
    albedo = 0.3 + 0.4 * ((u // 5 + v // 5) % 2)[..., None] * np.ones(3)
    photo = albedo * sh.shading(normals, LIGHT)
    write_png(tmp_path / "photo.png", (photo / photo.max()).astype(np.float32))
    write_exr(tmp_path / "photo_depth.exr", depth.astype(np.float32))
    write_exr(tmp_path / "photo_normal.exr", normals)
    (tmp_path / "camera.json").write_text(json.dumps(camera.to_dict()))
    return tmp_path


def test_cli_scene_builds_blend_and_render(photo_with_maps, capfd):
    d = photo_with_maps
    code = cli.main(["scene", str(d / "photo.png"), "--depth", str(d / "photo_depth.exr"),
                     "--normal", str(d / "photo_normal.exr"), "--camera", str(d / "camera.json"),
                     "-o", str(d / "out" / "scene.blend"), "--render", str(d / "out" / "relit.png"),
                     "--samples", "4", "--relight-sun", "40", "200", "--sun-to-sky", "6",
                     "--maps-dir", str(d / "out" / "maps")])
    assert code == 0
    assert sorted(p.name for p in (d / "out").iterdir()) == ["maps", "relit.png", "scene.blend"]
    # Blender's own console lines (130 'Fra:' lines a frame, temporary names) are hidden; the progress stays.
    out, err = capfd.readouterr()
    assert "Fra:" not in out + err and "Saved:" not in out + err and "rendered" in err
    assert "matched the photo's brightness: albedo gain" in err
    bpy.ops.wm.open_mainfile(filepath=str(d / "out" / "scene.blend"))
    mesh = bpy.data.objects["photo mesh"].data
    assert len(mesh.vertices) == 40 * 30  # one vertex per pixel: a plane has no discontinuities
    assert len(mesh.polygons) == 2 * 39 * 29
    assert bpy.context.scene.render.resolution_x == 40
    rendered = bpy.data.images.load(str(d / "out" / "relit.png"))
    assert tuple(rendered.size) == (40, 30)
    # --relight-sun placed the sun as the Relight panel places it.
    record = bpy.data.collections["photo"][IMPORT_KEY].to_dict()
    energy, colour, _ = placed_sun(record["lighting_camera"], record["sun_fraction"], 40.0, 200.0, 6.0)
    assert energy > 1.1 * placed_sun(record["lighting_camera"], record["sun_fraction"], 40.0, 200.0,
                                     DEFAULT_SUN_TO_SKY)[0]
    sun = bpy.data.objects["photo sun"]
    np.testing.assert_allclose(sun.rotation_euler.to_matrix() @ Vector((0.0, 0.0, 1.0)), sun_direction(40.0, 200.0),
                               atol=1e-6)
    assert sun.data.energy == pytest.approx(energy, rel=1e-5)
    np.testing.assert_allclose(sun.data.color, colour, rtol=1e-5)
    # A plane hides no sky from itself, and the lighting fitted to its exact maps explains the photo.
    np.testing.assert_allclose(record["photo_gain"], 1.0, atol=0.05)


def test_cli_scene_background_layer(tmp_path, capsys):
    """A box in front of a wall: the layer behind the box is built as its own mesh on the wall's plane, unless
    --background-band is 0; a share outside (0, 1] is refused with nothing written. The photo match's gain goes
    on both meshes' albedo, and --no-match-photo sets none."""
    depth = np.full((30, 40), 4.0, np.float32)
    depth[10:20, 15:25] = 2.0
    write_png(tmp_path / "photo.png", np.full((30, 40, 3), 0.5, np.float32))
    write_exr(tmp_path / "depth.exr", depth)
    write_exr(tmp_path / "normal.exr", np.broadcast_to(np.float32([0, 0, 1]), (30, 40, 3)).copy())
    maps = ["--depth", str(tmp_path / "depth.exr"), "--normal", str(tmp_path / "normal.exr"), "--fov", "60"]
    for band, expected, match in (("0.25", True, []), ("0", False, ["--no-match-photo"])):
        blend = tmp_path / f"scene{band}.blend"
        assert cli.main(["scene", str(tmp_path / "photo.png"), *maps, "-o", str(blend),
                         "--background-band", band, *match]) == 0
        bpy.ops.wm.open_mainfile(filepath=str(blend))
        layer = bpy.data.objects.get("photo background mesh")
        assert (layer is not None) == expected
        gain_nodes = [o.active_material.node_tree.nodes.get(PHOTO_GAIN_NODE) for o in bpy.data.objects
                      if o.type == "MESH"]
        record = bpy.data.collections["photo"][IMPORT_KEY]
        if expected:
            co = np.empty(len(layer.data.vertices) * 3, np.float32)
            layer.data.vertices.foreach_get("co", co)
            np.testing.assert_allclose(co[2::3], -4.0, rtol=1e-5)  # camera frame: on the wall behind the box
            assert len(gain_nodes) == 2
            for node in gain_nodes:
                assert tuple(node.inputs[7].default_value)[:3] == pytest.approx(tuple(record["photo_gain"]))
        else:
            assert gain_nodes == [None] and "photo_gain" not in record
    assert cli.main(["scene", str(tmp_path / "photo.png"), *maps, "-o", str(tmp_path / "bad.blend"),
                     "--background-band", "-0.1"]) == cli.EXIT_FAILURE
    assert "share of the photo's longer side" in capsys.readouterr().err
    assert not (tmp_path / "bad.blend").exists()


def test_cli_scene_bad_photo_writes_nothing(photo_with_maps, capsys):
    d = photo_with_maps
    (d / "broken.png").write_bytes(b"this is not a png")
    code = cli.main(["scene", str(d / "broken.png"), "--depth", str(d / "photo_depth.exr"),
                     "--normal", str(d / "photo_normal.exr"), "-o", str(d / "out.blend")])
    assert code == cli.EXIT_FAILURE
    assert "broken.png" in capsys.readouterr().err
    assert not (d / "out.blend").exists()


def test_operator_equals_api(photo_with_maps, registered_addon, clean_scene):
    d = photo_with_maps
    props = clean_scene.invr
    props.photo_path = str(d / "photo.png")
    props.depth_path = str(d / "photo_depth.exr")
    props.normal_path = str(d / "photo_normal.exr")
    props.fov_override = 60.0
    assert bpy.ops.invr.import_rgbd() == {"FINISHED"}
    by_operator = bpy.data.objects["photo mesh"].data
    ops_co = np.empty(len(by_operator.vertices) * 3, np.float32)
    by_operator.vertices.foreach_get("co", ops_co)
    ops_gain = list(bpy.data.collections["photo"][IMPORT_KEY]["photo_gain"])

    bpy.ops.wm.read_factory_settings(use_empty=True)
    built = import_photo(ImportSettings(photo=d / "photo.png", depth=d / "photo_depth.exr",
                                        normals=d / "photo_normal.exr", fov_deg=60.0))
    api_co = np.empty(len(built.mesh.data.vertices) * 3, np.float32)
    built.mesh.data.vertices.foreach_get("co", api_co)
    np.testing.assert_array_equal(ops_co, api_co)
    assert built.photo_gain is not None and ops_gain == pytest.approx(built.photo_gain, rel=1e-5)


def test_importing_a_photo_again_excludes_the_earlier_import_from_the_view(photo_with_maps, clean_scene):
    """Re-importing the same file (say with other settings) leaves one import rendered and lit, and deletes
    nothing: the earlier one is excluded from the view layer. Another photo's import stays as it was."""
    d = photo_with_maps
    (d / "other.png").write_bytes((d / "photo.png").read_bytes())
    maps = {"depth": d / "photo_depth.exr", "normals": d / "photo_normal.exr", "fov_deg": 60.0}
    first = import_photo(ImportSettings(photo=d / "photo.png", **maps))
    other = import_photo(ImportSettings(photo=d / "other.png", **maps))
    again = import_photo(ImportSettings(photo=d / "photo.png", mesh_step=2, **maps))
    layers = clean_scene.view_layers[0].layer_collection.children
    assert layers[first.collection.name].exclude and first.mesh.name in bpy.data.objects
    assert not layers[again.collection.name].exclude and not layers[other.collection.name].exclude
    assert again.replaced == (first.collection.name,) and other.replaced == ()
    assert clean_scene.world == again.world and clean_scene.camera == again.camera


def test_operator_failure_reports_and_changes_nothing(photo_with_maps, registered_addon, clean_scene):
    d = photo_with_maps
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    props = clean_scene.invr
    props.photo_path = str(d / "broken.png")
    props.depth_path = str(d / "photo_depth.exr")
    props.normal_path = str(d / "photo_normal.exr")
    objects_before = len(bpy.data.objects)
    with pytest.raises(RuntimeError, match="broken.png"):  # bpy.ops turns an ERROR report into this
        bpy.ops.invr.import_rgbd()
    assert len(bpy.data.objects) == objects_before and clean_scene.camera is None


# ------------------------------------------------------------------------- Import Photo (the networks)


@pytest.fixture
def test_nets(tmp_path, monkeypatch):
    """Random-init width-1/16 networks registered under the default names in the user's weights folder, which
    `decompose` searches before the shipped weights."""
    from invrender_core.nets import weights
    from invrender_core.scene import DEFAULT_DEPTH, DEFAULT_IRN
    from invrender_core.train.synthetic import register_untrained_networks

    folder = register_untrained_networks(tmp_path / "weights", DEFAULT_IRN, DEFAULT_DEPTH)
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(folder))
    return folder


def test_import_photo_operator_equals_api(photo_with_maps, test_nets, registered_addon, clean_scene):
    d = photo_with_maps
    props = clean_scene.invr
    props.photo_path = str(d / "photo.png")
    props.fov_override = 60.0
    props.max_side = 32
    assert bpy.ops.invr.import_photo() == {"FINISHED"}
    by_operator = bpy.data.objects["photo mesh"].data
    ops_co = np.empty(len(by_operator.vertices) * 3, np.float32)
    by_operator.vertices.foreach_get("co", ops_co)
    assert bpy.data.images  # albedo and the environment were built from the networks' estimate

    bpy.ops.wm.read_factory_settings(use_empty=True)
    built = import_photo(ImportSettings(photo=d / "photo.png", fov_deg=60.0, max_side=32))
    api_co = np.empty(len(built.mesh.data.vertices) * 3, np.float32)
    built.mesh.data.vertices.foreach_get("co", api_co)
    np.testing.assert_array_equal(ops_co, api_co)


def test_import_reports_the_estimates_warnings(photo_with_maps, test_nets, registered_addon, clean_scene):
    """A photo the networks can say little about (uniform grey) is built, with a WARNING saying why."""
    from invrender_addon.build.import_photo import estimate
    from invrender_addon.operators.import_photo import _build

    grey = photo_with_maps / "grey.png"
    write_png(grey, np.full((30, 40, 3), 0.2, np.float32))
    settings = ImportSettings(photo=grey, fov_deg=60.0, max_side=32)
    reports = []

    class Operator:
        def report(self, kind, message):
            reports.append((set(kind), message))

    assert _build(Operator(), bpy.context, settings, estimate(settings)) == {"FINISHED"}
    assert any(kind == {"WARNING"} and "almost uniform" in message for kind, message in reports)


def test_import_photo_without_weights_reports_and_changes_nothing(photo_with_maps, registered_addon, clean_scene,
                                                                  tmp_path, monkeypatch):
    from invrender_core.nets import weights

    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(tmp_path / "empty"))
    monkeypatch.setattr(weights, "SHIPPED_WEIGHTS_DIR", tmp_path / "no-shipped-weights")
    clean_scene.invr.photo_path = str(photo_with_maps / "photo.png")
    objects_before, images_before = len(bpy.data.objects), len(bpy.data.images)
    with pytest.raises(RuntimeError, match="weights"):
        bpy.ops.invr.import_photo()
    assert len(bpy.data.objects) == objects_before and len(bpy.data.images) == images_before
    assert clean_scene.camera is None


# ------------------------------------------------------------------ the worker-thread path of Import Photo



def test_import_on_a_worker_thread_equals_api(photo_with_maps, test_nets, registered_addon, clean_scene, poll_job,
                                              report_recorder):
    from invrender_addon import jobs
    from invrender_addon.operators import import_photo as import_ops

    settings = ImportSettings(photo=photo_with_maps / "photo.png", fov_deg=60.0, max_side=32)
    job = import_ops.start_estimate(settings)
    stages = poll_job(job)
    assert job.state == jobs.FINISHED, job.error
    recorder = report_recorder
    assert import_ops.finish_job(recorder, bpy.context, job, settings) == {"FINISHED"}
    assert jobs.active_job() is None and recorder.reports[0][0] == {"INFO"}
    assert stages & {"models", "irn", "depth", "fusion"}  # progress reached the main thread
    by_worker = bpy.data.objects["photo mesh"].data
    worker_co = np.empty(len(by_worker.vertices) * 3, np.float32)
    by_worker.vertices.foreach_get("co", worker_co)

    bpy.ops.wm.read_factory_settings(use_empty=True)
    built = import_photo(settings)
    api_co = np.empty(len(built.mesh.data.vertices) * 3, np.float32)
    built.mesh.data.vertices.foreach_get("co", api_co)
    np.testing.assert_array_equal(worker_co, api_co)


def test_cancelled_import_reports_and_changes_nothing(photo_with_maps, test_nets, registered_addon, clean_scene,
                                                      report_recorder):
    from invrender_addon import jobs
    from invrender_addon.build.import_photo import estimate
    from invrender_addon.operators import import_photo as import_ops

    settings = ImportSettings(photo=photo_with_maps / "photo.png", fov_deg=60.0, max_side=32)
    pressed_esc = threading.Event()

    def estimate_after_esc(progress, cancel):
        pressed_esc.wait(5)
        return estimate(settings, progress=progress, cancel=cancel)

    job = jobs.start(estimate_after_esc, "Importing photo.png")
    job.cancel()
    pressed_esc.set()
    assert job.wait(30) == jobs.CANCELLED
    before = {kind: len(getattr(bpy.data, kind)) for kind in ("objects", "images", "meshes", "worlds")}
    recorder = report_recorder
    assert import_ops.finish_job(recorder, bpy.context, job, settings) == {"CANCELLED"}
    assert recorder.reports == [({"ERROR"}, "Import cancelled: the scene is unchanged")]
    assert {kind: len(getattr(bpy.data, kind)) for kind in before} == before
    assert clean_scene.camera is None and jobs.active_job() is None


def test_import_into_the_startup_scene_names_what_is_in_its_way(photo_with_maps, registered_addon, report_recorder):
    """Blender's startup scene: the photo camera (at the origin) sits inside the Cube, and the Light lights the
    import too. Both are named in WARNING reports, and left as they were."""
    from invrender_addon.build.import_photo import estimate
    from invrender_addon.operators.import_photo import _build

    bpy.ops.wm.read_factory_settings(use_empty=False)  # Cube, Light, Camera
    d = photo_with_maps
    settings = ImportSettings(photo=d / "photo.png", depth=d / "photo_depth.exr", normals=d / "photo_normal.exr",
                              fov_deg=60.0)
    result = estimate(settings)
    objects = {o.name: (tuple(o.location), o.hide_render, o.hide_get()) for o in bpy.data.objects}
    assert _build(report_recorder, bpy.context, settings, result) == {"FINISHED"}
    warnings = [message for kind, message in report_recorder.reports if kind == {"WARNING"}]
    assert warnings == ["Cube: around the photo camera or in its view in front of the import, so they cover it in "
                        "the render: hide them or move them away",
                        "Light: lights outside the import that light it too: hide them to light it as the photo "
                        "was lit"]
    assert {name: objects[name] for name in ("Cube", "Light", "Camera")} == {
        o.name: (tuple(o.location), o.hide_render, o.hide_get()) for o in bpy.data.objects if o.name in objects}

    # Beside the camera, out of its view, behind the import or hidden from renders: not in the way.
    cube, light = bpy.data.objects["Cube"], bpy.data.objects["Light"]
    for location, expected in (((0.0, -3.0, 0.0), False), ((5.0, 2.0, 0.0), False), ((0.0, 20.0, 0.0), False),
                               ((0.0, 2.0, 0.0), True), ((0.0, 1.0, 0.4), True)):
        cube.location = location
        built = import_photo(settings, bpy.context.scene, estimate_result=result)
        assert any(w.startswith("Cube:") for w in built.warnings) == expected, location
    light.hide_render = True
    cube.location = (0.0, 2.0, 0.0)
    cube.hide_render = True
    assert import_photo(settings, bpy.context.scene, estimate_result=result).warnings == []
