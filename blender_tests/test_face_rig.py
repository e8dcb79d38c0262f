"""The face-rig builder against its FaceRig: evaluated vertices (shape keys + head transform through the
depsgraph) equal rig.vertices(frame) in metres through the camera, shape keys and sliders, bulk keyframes,
camera, timing, texture and UV round trips, the movie clip, and all-or-nothing failure."""

import math
from pathlib import Path

import bpy
import numpy as np
import pytest
from invrender_addon.build.bpy_io import action_fcurves, image_to_array
from invrender_addon.build.rig import (
    EXPRESSION_SCALE_KEY,
    METRES_PER_MM,
    RIG_KEY,
    build_face_rig,
    expression_key_name,
    hidden_stretches,
    scene_frames,
)
from invrender_addon.build.scene import ALBEDO_NODE, ENVIRONMENT_NODE, SENSOR_WIDTH_MM
from mathutils import Matrix

from invrender_core.face.rig import FaceRig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SURREY = DATA / "eos" / "sfm_shape_3448.bin"
VIDEO = DATA / "videos" / "liveportrait_d3.mp4"
COUNTED = ("collections", "objects", "meshes", "materials", "images", "actions", "cameras", "movieclips",
           "shape_keys", "textures", "worlds")


def rotation(x_deg: float, y_deg: float, z_deg: float) -> np.ndarray:
    """(3, 3) rotation Rz @ Ry @ Rx."""
    return np.array(Matrix.Rotation(math.radians(z_deg), 3, "Z") @ Matrix.Rotation(math.radians(y_deg), 3, "Y")
                    @ Matrix.Rotation(math.radians(x_deg), 3, "X"))


def grid_rig(name="grid face", source="", frames=(10, 12, 14, 15, 18), fps=29.97) -> FaceRig:
    """A 5 x 4 vertex grid (millimetres) with 3 expression components over 5 frames (with a step).

    Component 1's weights pass 3σ (sliders must widen), component 2's 3σ = 15 passes Blender's slider cap of 10
    (the key is stored scaled); the head turns through more than 180° about y (quaternion hemispheres).
    """
    rng = np.random.default_rng(0)
    xs, ys = np.meshgrid(np.linspace(-60.0, 60.0, 5), np.linspace(-80.0, 80.0, 4))  # (4, 5) mm
    neutral = np.stack([xs.ravel(), ys.ravel(), 20.0 * np.cos(xs.ravel() / 60.0)], axis=1)  # (20, 3)
    quads = [(r * 5 + c, r * 5 + c + 1, (r + 1) * 5 + c + 1, (r + 1) * 5 + c) for r in range(3) for c in range(4)]
    triangles = np.array([t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))], np.int32)  # (24, 3)
    uvs = np.stack([(xs.ravel() + 60.0) / 120.0, (ys.ravel() + 80.0) / 160.0], axis=1)  # (20, 2), v up = +y
    sigma = np.array([0.5, 1.0, 5.0], np.float32)
    expression = (rng.uniform(-2.0, 2.0, (5, 3)) * sigma).astype(np.float32)  # (5, 3)
    expression[2, 1] = 3.6  # beyond 3σ = 3
    angles = [(0, 0, 0), (10, 60, -5), (-15, 130, 8), (5, 200, 0), (20, 250, -10)]
    f = len(frames)
    return FaceRig(
        name=name, neutral=neutral.astype(np.float32), triangles=triangles, uvs=uvs.astype(np.float32),
        expression_basis=rng.normal(0.0, 3.0, (20, 3, 3)).astype(np.float32),
        expression_names=np.array(["anger", "", "jaw open"]), expression_sigma=sigma,
        identity=np.zeros(4, np.float32), expression=expression[:f],
        rotation=np.array([rotation(*a) for a in angles[:f]], np.float32),
        translation=np.array([[10.0 * i, -5.0 * i, -600.0 - 20.0 * i] for i in range(f)], np.float32),
        focal=np.array([500.0, 510.0, 505.0, 500.0, 520.0][:f], np.float32),
        frames=np.array(frames, np.int64), sh=np.zeros((f, 9, 3), np.float32),
        albedo=rng.uniform(0.0, 1.0, (8, 8, 3)).astype(np.float32), image_size=(64, 48), fps=fps, source=source)


def world_vertices(obj) -> np.ndarray:
    """(V, 3) vertices of `obj` as evaluated (shape keys, animation) in world coordinates."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    evaluated = obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    co = np.empty(len(mesh.vertices) * 3, np.float32)
    mesh.vertices.foreach_get("co", co)
    evaluated.to_mesh_clear()
    matrix = np.array(evaluated.matrix_world)  # (4, 4)
    return co.reshape(-1, 3) @ matrix[:3, :3].T + matrix[:3, 3]


def expected_world(rig: FaceRig, index: int, camera) -> np.ndarray:
    """rig.vertices(index) (camera frame, mm) in world metres: camera.matrix_world @ x."""
    to_world = np.array(camera.matrix_world)
    return (rig.vertices(index) * METRES_PER_MM) @ to_world[:3, :3].T + to_world[:3, 3]


def data_counts() -> dict:
    return {kind: len(getattr(bpy.data, kind)) for kind in COUNTED}


def check_evaluated_vertices(rig: FaceRig, built, scene) -> None:
    for index, frame in enumerate(scene_frames(rig.frames)):
        scene.frame_set(int(frame))
        np.testing.assert_allclose(world_vertices(built.mesh), expected_world(rig, index, built.camera), atol=1e-4,
                                   err_msg=f"frame {frame}")


def test_evaluated_vertices_match_the_rig_at_every_fitted_frame(clean_scene):
    rig = grid_rig()
    built = build_face_rig(rig)
    check_evaluated_vertices(rig, built, clean_scene)
    # The camera looks along world +y with +z up, so the head (camera z = -600 mm) lies 0.6 m in front of it.
    clean_scene.frame_set(1)
    assert np.array(built.mesh.matrix_world)[1, 3] == pytest.approx(0.6, abs=1e-6)


def test_shape_keys_names_sliders_and_linear_keys(clean_scene):
    rig = grid_rig()
    built = build_face_rig(rig)
    key = built.mesh.data.shape_keys
    blocks = key.key_blocks
    assert [b.name for b in blocks] == ["Basis", "Exp00 anger", "Exp01", "Exp02 jaw open"]
    assert expression_key_name(3, "smile") == "Exp03 smile" and expression_key_name(4, " ") == "Exp04"
    np.testing.assert_allclose(key[EXPRESSION_SCALE_KEY], [1.0, 1.0, 1.5], rtol=1e-6)  # 3σ = 15 -> 10 × 1.5
    assert (blocks[1].slider_min, blocks[1].slider_max) == pytest.approx((-1.5, 1.5))  # ∓3σ
    assert (blocks[2].slider_min, blocks[2].slider_max) == pytest.approx((-3.6, 3.6))  # widened to |w| = 3.6
    assert (blocks[3].slider_min, blocks[3].slider_max) == pytest.approx((-10.0, 10.0))
    # Basis = identity in metres.
    basis = np.empty(len(rig.neutral) * 3, np.float32)
    blocks[0].data.foreach_get("co", basis)
    np.testing.assert_allclose(basis.reshape(-1, 3), rig.neutral * METRES_PER_MM, atol=1e-7)

    frames = scene_frames(rig.frames)
    assert list(frames) == [1, 3, 5, 6, 9]
    fcurves = action_fcurves(key)
    assert sorted(fc.data_path for fc in fcurves) == [f'key_blocks["{b.name}"].value' for b in blocks[1:]]
    for fc in fcurves:
        assert len(fc.keyframe_points) == rig.num_frames
        assert {p.interpolation for p in fc.keyframe_points} == {"LINEAR"}
    # Between fitted frames 1 and 3, frame 2 holds the mean weight.
    clean_scene.frame_set(2)
    np.testing.assert_allclose(blocks[1].value, rig.expression[:2, 0].mean(), atol=1e-6)


def test_head_is_hidden_where_no_face_was_fitted_for_long(clean_scene):
    """Fitted source frames 10-13, then none until 50 (a cut at 25 fps): hidden at scene frames 5-40."""
    rig = grid_rig(frames=(10, 11, 12, 13, 50), fps=25.0)
    built = build_face_rig(rig)
    for frame in range(1, 43):
        clean_scene.frame_set(frame)
        hidden = 5 <= frame <= 40
        assert (built.mesh.hide_render, built.mesh.hide_viewport) == (hidden, hidden), frame
    check_evaluated_vertices(rig, built, clean_scene)
    assert hidden_stretches(np.array([10, 11, 12, 13, 50]), fps=0.0) == [(5, 40)]  # 25 fps assumed
    assert hidden_stretches(np.array([10, 11, 12, 13, 20]), fps=25.0) == []  # 6 frames missed: interpolated
    assert hidden_stretches(np.array([0, 20, 40, 100]), fps=25.0) == [(42, 100)]  # fitted every 20th frame
    assert hidden_stretches(np.array([7]), fps=25.0) == []
    assert not any(fc.data_path.startswith("hide") for fc in action_fcurves(build_face_rig(grid_rig()).mesh))


def test_head_camera_and_timing(clean_scene):
    rig = grid_rig()
    built = build_face_rig(rig)
    head = action_fcurves(built.mesh)
    assert sorted((fc.data_path, fc.array_index) for fc in head) == (
        [("location", i) for i in range(3)] + [("rotation_quaternion", i) for i in range(4)])
    assert all(len(fc.keyframe_points) == rig.num_frames for fc in head)
    assert built.mesh.rotation_mode == "QUATERNION" and tuple(built.mesh.scale) == (1.0, 1.0, 1.0)
    # Quaternion keys stay on one hemisphere although the head turns through 250°.
    quaternions = np.array([[fc.keyframe_points[i].co[1] for fc in sorted(
        (fc for fc in head if fc.data_path == "rotation_quaternion"), key=lambda fc: fc.array_index)]
        for i in range(rig.num_frames)])  # (F, 4)
    assert ((quaternions[1:] * quaternions[:-1]).sum(axis=1) > 0).all()

    scene, render = clean_scene, clean_scene.render
    assert (scene.frame_start, scene.frame_end) == (1, 9)  # source frames 10..18
    assert (render.fps, render.fps / render.fps_base) == (30, pytest.approx(29.97, abs=1e-6))
    assert (render.resolution_x, render.resolution_y, render.resolution_percentage) == (64, 48, 100)
    assert scene.camera == built.camera and built.camera.data.sensor_fit == "HORIZONTAL"
    assert (built.camera.data.shift_x, built.camera.data.shift_y) == (0.0, 0.0)
    lens = action_fcurves(built.camera.data)
    assert [fc.data_path for fc in lens] == ["lens"] and len(lens[0].keyframe_points) == rig.num_frames
    for index, frame in enumerate(scene_frames(rig.frames)):
        scene.frame_set(int(frame))
        expected = built.camera.data.sensor_width * rig.focal[index] / 64
        assert built.camera.data.lens == pytest.approx(expected, rel=1e-6)
    assert built.camera.data.sensor_width == SENSOR_WIDTH_MM

    record = built.collection[RIG_KEY].to_dict()
    assert record["mesh"] == built.mesh and record["camera"] == built.camera and "clip" not in record
    assert record["first_source_frame"] == 10
    assert record["expression_names"] == ["anger", "", "jaw open"]
    assert built.collection.name == "grid face" and built.clip is None and built.warnings == []
    assert set(built.collection.objects) == {built.mesh, built.camera}


def test_record_follows_renames_and_reopening(clean_scene, tmp_path):
    built = build_face_rig(grid_rig())
    built.mesh.name, built.camera.name = "actor head", "witness camera"  # the Outliner's names are the artist's
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "rig.blend"))
    bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "rig.blend"))
    record = bpy.data.collections["grid face"][RIG_KEY]
    assert record["mesh"] == bpy.data.objects["actor head"] and record["camera"] == bpy.data.objects["witness camera"]


def test_keys_hold_until_the_tracker_moves_to_another_face(clean_scene):
    rig = grid_rig()
    rig.tracks = np.array([0, 0, 1, 1, 1])  # source frames 10, 12 | 14, 15, 18: another face from 14
    built = build_face_rig(rig)
    for fcurve in action_fcurves(built.mesh) + action_fcurves(built.mesh.data.shape_keys):
        assert [k.interpolation for k in fcurve.keyframe_points] == ["LINEAR", "CONSTANT", "LINEAR", "LINEAR",
                                                                     "LINEAR"], fcurve.data_path
    scene = clean_scene
    scene.frame_set(4, subframe=0.5)  # between source frames 12 and 14: still the first face
    np.testing.assert_allclose(world_vertices(built.mesh), expected_world(rig, 1, built.camera), atol=1e-4)
    check_evaluated_vertices(rig, built, scene)


def test_constant_focal_and_unknown_fps_leave_lens_and_rate_alone(clean_scene):
    rig = grid_rig(fps=0.0)
    rig.focal[:] = 400.0
    built = build_face_rig(rig)
    assert action_fcurves(built.camera.data) == []
    assert built.camera.data.lens == pytest.approx(SENSOR_WIDTH_MM * 400.0 / 64, rel=1e-6)
    assert (clean_scene.render.fps, clean_scene.render.fps_base) == (24, 1.0)  # factory default kept


def test_a_long_video_name_keeps_every_datablock_name_whole(clean_scene):
    name = "interview_2026-12-07_camera-B_take-14_graded_final_v3"  # 52 bytes
    built = build_face_rig(grid_rig(name=name))
    base = built.collection.name
    assert name.startswith(base) and len(base.encode()) <= 39
    assert (built.mesh.name, built.material.name) == (f"{base} mesh", f"{base} material")
    assert built.material.node_tree.nodes[ALBEDO_NODE].image.name == f"{base} albedo"


def test_an_empty_scene_gets_a_world_lit_as_the_video_a_users_world_stays(clean_scene):
    rig = grid_rig()
    rig.sh = np.zeros_like(rig.sh)
    rig.sh[:, 0] = 0.5
    rig.sh[:, 1] = [0.3, 0.3, 0.3]  # L1-1, along the camera's y: light from above the face
    built = build_face_rig(rig)
    world = clean_scene.world
    assert world is not None and world.name == "grid face world"
    environment = image_to_array(world.node_tree.nodes[ENVIRONMENT_NODE].image)  # (64, 128, 3), row 0 = world +z
    assert environment[:8].mean() > 2 * environment[-8:].mean()  # camera up is world up: brighter at the top
    assert environment.mean() == pytest.approx(np.pi * 0.5 * 0.2820948, rel=0.15)  # radiance = pi * L00 * Y00
    assert built.collection.name == "grid face"
    users_world = bpy.data.worlds.new("mine")
    clean_scene.world = users_world
    build_face_rig(grid_rig(name="second"))
    assert clean_scene.world == users_world and "second world" not in bpy.data.worlds


def test_albedo_packed_and_uv_round_trip(clean_scene):
    rig = grid_rig()
    built = build_face_rig(rig)
    node = built.material.node_tree.nodes[ALBEDO_NODE]
    base = built.material.node_tree.nodes["Principled BSDF"].inputs["Base Color"]
    assert base.links[0].from_node == node
    image = node.image
    assert image.packed_file is not None and image.colorspace_settings.name == "Linear Rec.709"
    np.testing.assert_allclose(image_to_array(image), rig.albedo, atol=1e-6)
    assert built.mesh.data.materials[0] == built.material

    mesh = built.mesh.data
    corners = np.empty(len(mesh.loops) * 2, np.float32)
    mesh.attributes[mesh.uv_layers[0].name].data.foreach_get("vector", corners)
    np.testing.assert_allclose(corners.reshape(-1, 2), rig.uvs[rig.triangles.ravel()], atol=1e-7)
    corner_verts = np.empty(len(mesh.loops), np.int32)
    mesh.attributes[".corner_vert"].data.foreach_get("value", corner_verts)
    np.testing.assert_array_equal(corner_verts, rig.triangles.ravel())


def test_failure_midway_leaves_nothing(clean_scene):
    """Invalid triangles fail at the mesh, after the collection, camera, lens action, clip, material and image."""
    rig = grid_rig(source=str(VIDEO) if VIDEO.is_file() else "")
    valid = rig.triangles.copy()
    rig.triangles = valid.copy()
    rig.triangles[3, 1] = len(rig.neutral)  # out of range
    render = clean_scene.render
    before = data_counts()
    settings = (clean_scene.camera, clean_scene.active_clip, render.resolution_x, render.resolution_y, render.fps,
                render.fps_base, clean_scene.frame_start, clean_scene.frame_end, clean_scene.frame_current)
    with pytest.raises(ValueError, match="face indices"):
        build_face_rig(rig)
    assert data_counts() == before
    assert settings == (clean_scene.camera, clean_scene.active_clip, render.resolution_x, render.resolution_y,
                        render.fps, render.fps_base, clean_scene.frame_start, clean_scene.frame_end,
                        clean_scene.frame_current)
    # The same rig with valid triangles builds in the same session.
    rig.triangles = valid
    assert build_face_rig(rig).mesh is not None


@pytest.mark.parametrize("change, message", [
    (lambda r: setattr(r, "uvs", None), "needs UVs"),
    (lambda r: setattr(r, "frames", r.frames[::-1].copy()), "must increase"),
    (lambda r: r.rotation.__setitem__(2, 2.0 * r.rotation[2]), r"rotation\[2\]"),
    (lambda r: setattr(r, "albedo", np.zeros((8, 8, 4), np.float32)), "albedo must have shape"),
    (lambda r: r.expression_sigma.__setitem__(0, 0.0), "expression_sigma"),
])
def test_bad_rigs_are_refused_before_anything_changes(clean_scene, change, message):
    rig = grid_rig()
    change(rig)
    before = data_counts()
    with pytest.raises(ValueError, match=message):
        build_face_rig(rig)
    assert data_counts() == before


@pytest.mark.skipif(not VIDEO.is_file(), reason="needs ../shared/data/videos/liveportrait_d3.mp4")
def test_movie_clip_lines_up_with_the_keys(clean_scene):
    cv2 = pytest.importorskip("cv2")
    capture = cv2.VideoCapture(str(VIDEO))
    frame_count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    rig = grid_rig(source=str(VIDEO), frames=(3, 5, 7), fps=30.0)
    built = build_face_rig(rig)
    clip = built.clip
    assert clip is not None and clip.source == "MOVIE" and tuple(clip.size) == (512, 512)
    # Scene frame k shows source frame frame_offset + k - frame_start = frames[0] + k - 1.
    assert (clip.frame_start, clip.frame_offset, clip.frame_duration) == (1, 3, frame_count)
    assert clip.fps == pytest.approx(rig.fps)
    background = built.camera.data.background_images[0]
    assert background.source == "MOVIE_CLIP" and background.clip == clip and built.camera.data.show_background_images
    assert clean_scene.active_clip == clip and built.collection[RIG_KEY]["clip"] == clip


@pytest.mark.skipif(not VIDEO.is_file(), reason="needs ../shared/data/videos/liveportrait_d3.mp4")
def test_fitting_a_video_again_reuses_its_clip_and_excludes_the_earlier_rig(clean_scene):
    first = build_face_rig(grid_rig(source=str(VIDEO), frames=(3, 5, 7)))
    again = build_face_rig(grid_rig(source=str(VIDEO), frames=(3, 5, 7)))
    later_start = build_face_rig(grid_rig(source=str(VIDEO), frames=(4, 6, 8)))
    assert again.clip == first.clip and later_start.clip != first.clip  # a clip's offset is its first frame
    assert len(bpy.data.movieclips) == 2 and clean_scene.active_clip == later_start.clip
    layers = clean_scene.view_layers[0].layer_collection.children
    assert again.replaced == (first.collection.name,)
    assert set(later_start.replaced) == {first.collection.name, again.collection.name}
    assert layers[first.collection.name].exclude and layers[again.collection.name].exclude
    assert not layers[later_start.collection.name].exclude and first.mesh.name in bpy.data.objects
    assert build_face_rig(grid_rig(name="no video")).replaced == ()


def test_unreadable_video_builds_without_clip_and_warns(clean_scene, tmp_path):
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"\0" * 1024)
    before = len(bpy.data.movieclips)
    built = build_face_rig(grid_rig(source=str(video)))
    assert built.clip is None and len(bpy.data.movieclips) == before
    assert len(built.warnings) == 1 and "broken.mp4" in built.warnings[0]


@pytest.mark.skipif(not SURREY.is_file(), reason="needs ../shared/data/eos/sfm_shape_3448.bin")
def test_surrey_model_rig(clean_scene):
    from invrender_core.face.morphable_model import load_model

    model = load_model(SURREY)
    rng = np.random.default_rng(1)
    e, f = model.num_expressions, 3
    uvs = model.uvs.copy()  # v up, like a FaceRig's (the loader flips eos' v-down file coordinates)
    rig = FaceRig(
        name="surrey", neutral=model.vertices(identity=rng.normal(0.0, 1.0, 10)), triangles=model.triangles,
        uvs=uvs, expression_basis=model.expression_basis, expression_names=model.expression_names,
        expression_sigma=np.full(e, 0.4, np.float32), identity=np.zeros(10, np.float32),
        expression=rng.uniform(0.0, 1.0, (f, e)).astype(np.float32),
        rotation=np.array([rotation(5, -20, 0), rotation(0, 0, 0), rotation(-5, 25, 3)], np.float32),
        translation=np.array([[0, 0, -700], [15, 5, -650], [-10, 0, -720]], np.float32),
        focal=np.full(f, 900.0, np.float32), frames=np.array([0, 1, 2]), sh=np.zeros((f, 9, 3), np.float32),
        albedo=np.full((16, 16, 3), 0.5, np.float32), image_size=(640, 480), fps=25.0)
    built = build_face_rig(rig)
    names = [b.name for b in built.mesh.data.shape_keys.key_blocks[1:]]
    assert names == [expression_key_name(i, n) for i, n in enumerate(model.expression_names)]
    assert names[0] == "Exp00 anger" and len(names) == 6
    assert len(built.mesh.data.vertices) == model.num_vertices and len(built.mesh.data.polygons) == len(
        model.triangles)
    check_evaluated_vertices(rig, built, clean_scene)
