"""Fit Face Rig: the operator (synchronous and on a worker thread) equals `pipeline.fit_face` + `build_face_rig`
run directly; a cancel or bad input reports an ERROR and leaves bpy.data and the scene as they were."""

import math
import shutil
import time
from pathlib import Path

import bpy
import numpy as np
import pytest
from invrender_addon import jobs
from invrender_addon.build.rig import RIG_KEY, build_face_rig
from invrender_addon.build.scene import SENSOR_WIDTH_MM
from invrender_addon.operators import fit_face as fit_ops

from invrender_core.face import pipeline
from invrender_core.face.morphable_model import load_model
from invrender_core.face.video import open_source
from invrender_core.nets import weights

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SURREY = DATA / "eos" / "sfm_shape_3448.bin"
VIDEO = DATA / "videos" / "liveportrait_d3.mp4"
# The development checkpoint of the correspondence network, used until "face-corr-small" ships.
DEV_CHECKPOINT = Path("/tmp/invr/face_ckpt.safetensors")
FRAMES = {"start": 0, "end": 5, "step": 2}  # source frames 0, 2, 4: keeps each fit to a few seconds
KEYED_SCENE_FRAME = 3  # source frame 2 (scene frame 1 is the first fitted frame)
COUNTED = ("collections", "objects", "meshes", "materials", "images", "actions", "cameras", "movieclips",
           "shape_keys", "textures")

pytestmark = pytest.mark.skipif(not (SURREY.is_file() and VIDEO.is_file()),
                                reason="needs ../shared/data (Surrey face model, face video)")


def _face_weights_file() -> Path | None:
    """The shipped face-corr-small weights when registered, else the development checkpoint, else None."""
    shipped = weights.shipped_weights_dir()
    entry = weights.read_registry(shipped / weights.REGISTRY_FILE).get(pipeline.DEFAULT_FACE_WEIGHTS)
    if entry is not None:
        return shipped / entry.file
    return DEV_CHECKPOINT if DEV_CHECKPOINT.is_file() else None


@pytest.fixture(scope="module")
def face_weights_dir(tmp_path_factory) -> Path:
    """A weights folder registering a copy of the correspondence network as "face-corr-small"."""
    source = _face_weights_file()
    if source is None:
        pytest.skip(f"no face correspondence weights ({pipeline.DEFAULT_FACE_WEIGHTS} or {DEV_CHECKPOINT})")
    folder = tmp_path_factory.mktemp("face_weights")
    copy = folder / f"{pipeline.DEFAULT_FACE_WEIGHTS}.safetensors"
    shutil.copyfile(source, copy)  # a copy: the training run may replace the checkpoint meanwhile
    described, _ = weights.describe(copy)
    weights.register(weights.WeightsEntry(
        name=pipeline.DEFAULT_FACE_WEIGHTS, file=copy.name, sha256=weights.sha256_of(copy), licence="test",
        card="face correspondence network under test", architecture=described.architecture,
        config=described.config), folder / weights.REGISTRY_FILE)
    return folder


@pytest.fixture
def test_weights(face_weights_dir, monkeypatch):
    """The operator finds "face-corr-small" in the user's weights folder, as import_photo's test_nets does."""
    monkeypatch.setenv(weights.WEIGHTS_DIR_ENV, str(face_weights_dir))
    return face_weights_dir


def set_panel(scene, input_path=VIDEO, model_path=SURREY, fov_deg=0.0) -> None:
    props = scene.invr
    props.face_input_path, props.face_model_path = str(input_path), str(model_path)
    props.face_frame_start, props.face_frame_end, props.face_frame_step = FRAMES["start"], FRAMES["end"], FRAMES["step"]
    props.face_fov = math.radians(fov_deg)


def api_rig(weights_dir: Path, focal: float | None = None):
    """The FaceRig of the core API with the panel's settings (FRAMES, default smoothing)."""
    settings = pipeline.FaceSettings(**FRAMES, focal=focal, weights_dir=weights_dir, device="cpu")
    return pipeline.fit_face(VIDEO, load_model(SURREY), settings)


def rig_snapshot(collection) -> dict:
    """What a built rig shows at a keyed frame: basis vertices (V*3,), shape-key values (E,), the head object's
    matrix_world (4, 4), the camera lens and the scene's frame range."""
    scene = bpy.context.scene
    record = collection[RIG_KEY]
    mesh, camera = record["mesh"], record["camera"]
    scene.frame_set(KEYED_SCENE_FRAME)
    co = np.empty(len(mesh.data.vertices) * 3, np.float32)
    mesh.data.vertices.foreach_get("co", co)
    return {"co": co, "keys": np.array([block.value for block in mesh.data.shape_keys.key_blocks[1:]]),
            "matrix": np.array(mesh.matrix_world), "lens": camera.data.lens,
            "range": (scene.frame_start, scene.frame_end)}


def assert_same_rig(actual: dict, expected: dict) -> None:
    assert actual["range"] == expected["range"]
    np.testing.assert_allclose(actual["co"], expected["co"], atol=1e-5)
    np.testing.assert_allclose(actual["keys"], expected["keys"], atol=1e-5)
    np.testing.assert_allclose(actual["matrix"], expected["matrix"], atol=1e-5)
    assert actual["lens"] == pytest.approx(expected["lens"], abs=1e-5)


def data_state(scene) -> dict:
    """Names of every datablock a rig build adds, and the scene settings it changes."""
    render = scene.render
    return {**{kind: sorted(block.name for block in getattr(bpy.data, kind)) for kind in COUNTED},
            "scene": (scene.camera, scene.active_clip, scene.frame_start, scene.frame_end, scene.frame_current,
                      render.fps, render.fps_base, render.resolution_x, render.resolution_y)}



# ------------------------------------------------------------------------------------------------ results


def test_operator_equals_api(test_weights, registered_addon, clean_scene):
    fov_deg = 50.0
    set_panel(clean_scene, fov_deg=fov_deg)
    assert bpy.ops.invr.fit_face() == {"FINISHED"}
    collection = bpy.data.collections[VIDEO.stem]
    by_operator = rig_snapshot(collection)
    # The field of view fixes the focal: lens = (sensor width / 2) / tan(fov / 2), whatever the frame width.
    assert by_operator["lens"] == pytest.approx(SENSOR_WIDTH_MM / 2 / math.tan(math.radians(fov_deg / 2)), rel=1e-5)
    assert by_operator["range"] == (1, 5)  # source frames 0 .. 4
    fov = clean_scene.invr.face_fov  # radians as stored (float32): the fit is that sensitive to the focal

    bpy.ops.wm.read_factory_settings(use_empty=True)
    rig = api_rig(test_weights, focal=open_source(VIDEO).width / (2 * math.tan(fov / 2)))
    built = build_face_rig(rig, bpy.context)
    assert_same_rig(by_operator, rig_snapshot(built.collection))


def test_panel_face_box_reaches_the_settings(registered_addon, clean_scene):
    set_panel(clean_scene)
    assert fit_ops.request_from_props(bpy.context).settings.face_box is None  # width 0: the detector picks
    clean_scene.invr.face_box = (120, 40, 200, 240)
    assert fit_ops.request_from_props(bpy.context).settings.face_box == (120.0, 40.0, 200.0, 240.0)


def test_worker_thread_equals_api(test_weights, registered_addon, clean_scene, poll_job, report_recorder):
    set_panel(clean_scene)
    request = fit_ops.request_from_props(bpy.context)
    job = fit_ops.start_fit(request)
    stages = poll_job(job)
    assert job.state == jobs.FINISHED, job.error
    recorder = report_recorder
    assert fit_ops.finish_job(recorder, bpy.context, job) == {"FINISHED"}
    assert recorder.reports[-1] == ({"INFO"}, f"Fitted 3 frames: {VIDEO.stem}")
    assert jobs.active_job() is None
    assert stages & {"tracking the face", "finding correspondences"}  # progress reached the main thread
    by_worker = rig_snapshot(bpy.data.collections[VIDEO.stem])

    bpy.ops.wm.read_factory_settings(use_empty=True)
    built = build_face_rig(api_rig(test_weights), bpy.context)
    assert_same_rig(by_worker, rig_snapshot(built.collection))


# ------------------------------------------------------------------------------------- cancel and failures


def test_cancel_reports_and_changes_nothing(test_weights, registered_addon, clean_scene, report_recorder):
    set_panel(clean_scene)
    before = data_state(clean_scene)
    job = fit_ops.start_fit(fit_ops.request_from_props(bpy.context))
    while job.poll() == jobs.RUNNING:
        if job.stage not in ("starting", "loading the face model"):  # the fit itself runs: press Esc
            job.cancel()
        time.sleep(0.005)
    assert job.state == jobs.CANCELLED, job.error
    assert isinstance(job.error, pipeline.Cancelled)
    recorder = report_recorder
    assert fit_ops.finish_job(recorder, bpy.context, job) == {"CANCELLED"}
    assert recorder.reports == [({"ERROR"}, "Face fit cancelled: the scene is unchanged")]
    assert data_state(clean_scene) == before and jobs.active_job() is None


def _grey_video(folder: Path) -> Path:
    """5 frames of uniform grey, 64 x 64: an mp4 when OpenCV can write one, else a folder of PNGs."""
    import cv2

    grey = np.full((64, 64, 3), 128, np.uint8)
    path = folder / "grey.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (64, 64))
    if writer.isOpened():
        for _ in range(5):
            writer.write(grey)
        writer.release()
        if path.is_file() and path.stat().st_size > 0:
            return path
    frames = folder / "grey_frames"
    frames.mkdir()
    for k in range(5):
        cv2.imwrite(str(frames / f"{k:04d}.png"), grey)
    return frames


@pytest.mark.parametrize("case", ["text model", "corrupt video", "no face", "face box outside", "no input"])
def test_failure_reports_one_line_and_changes_nothing(case, test_weights, registered_addon, clean_scene, tmp_path):
    if case == "text model":
        model = tmp_path / "model.bin"
        model.write_text("this is a text file, not a morphable model\n")
        set_panel(clean_scene, model_path=model)
        expected = "model.bin"
    elif case == "corrupt video":
        video = tmp_path / "noise.mp4"
        video.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
        set_panel(clean_scene, input_path=video)
        expected = "noise.mp4"
    elif case == "no face":
        set_panel(clean_scene, input_path=_grey_video(tmp_path))
        expected = "no face found"
    elif case == "face box outside":
        set_panel(clean_scene)
        clean_scene.invr.face_box = (5000, 0, 100, 100)
        expected = "reaches outside"
    else:
        set_panel(clean_scene)
        clean_scene.invr.face_input_path = ""
        expected = "No video, image or folder chosen"
    before = data_state(clean_scene)
    with pytest.raises(RuntimeError, match=expected) as raised:  # bpy.ops turns an ERROR report into this
        bpy.ops.invr.fit_face()
    message = str(raised.value).strip()
    assert message.startswith("Error: ") and "\n" not in message, message
    assert data_state(clean_scene) == before
