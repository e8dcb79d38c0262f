"""Face-rig builder: an animated, textured face in Blender from a `invrender_core.face.rig.FaceRig`.

What `build_face_rig` adds, in a new collection named after the rig:
- a camera at the world origin, turned like the scene builder's (`scene.CAMERA_ROTATION_EULER`: looking along
  world +y, up = +z) so that the face stands upright in Blender's z-up world. Its local frame IS the DESIGN.md
  camera frame (x right, y up, z towards the viewer). Focal, principal point (image centre) and render
  resolution match the source frames (`scene.build_camera`, 36 mm sensor, horizontal fit); a per-frame focal
  that changes is keyframed on the camera's lens.
- when the scene has no world (a scene of its own, as the command line's): a world lit by the fitted SH lighting
  averaged over the frames, so that the rig renders as lit in the video.
- the face mesh: identity baked into the basis, UVs (FaceRig uvs are v up, as Blender's), the albedo texture
  (packed) -> Principled Base Color, one shape key per expression component.
- keyframes at every fitted frame: the shape-key values and the head pose. Where no face was fitted for longer
  than MIN_GAP_SECONDS (a cut, the person turned away or left), the mesh is hidden (hide_viewport and
  hide_render keyed, constant) from the frame after the last fitted one to the next fitted one: keys
  interpolated across such a gap would slide the head between two unrelated poses. For the same reason a key
  before a frame of another track (rig.tracks: the tracker moved to another face or shot) is constant.

Units: the model's units (millimetres for the Surrey model) become metres in the mesh data: vertices and
shape-key offsets are multiplied by `metres_per_unit` (0.001), so the face object keeps scale 1 and a rigid
transform. Per frame, the object's matrix_world = camera.matrix_world @ [R | t * metres_per_unit], stored as
a quaternion (rotation_mode "QUATERNION") and a location in metres.

Shape keys: "Exp00 anger", "Exp01 disgust", ... ("ExpNN" then the blendshape name; just "ExpNN" when the
model has no name for it); the key value is the expression weight. Sliders span ±3σ (expression_sigma),
widened to the largest fitted |weight| when that is larger, because Blender clamps a key's value to its slider
range. Blender caps slider ranges at ±10: a component whose range passes that is stored scaled (offsets × k,
value = weight / k); k per component is kept on the Key datablock (EXPRESSION_SCALE_KEY, 1 almost always).

Time: the fitted source frame rig.frames[i] is scene frame rig.frames[i] - rig.frames[0] + 1, so frames
skipped by a step stay skipped (keys are linear in between) and the animation lines up with the movie clip
(frame_start 1, frame_offset rig.frames[0]: scene frame k shows source frame rig.frames[0] + k - 1). Scene
range 1 .. rig.frames[-1] - rig.frames[0] + 1; scene fps = rig.fps when known (fractional rates via fps_base).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import bpy
import numpy as np

from .bpy_io import base_name, enable_nodes, ensure_fcurves, image_from_array, keyframes_from_arrays, mesh_from_arrays
from .scene import ALBEDO_NODE, SENSOR_WIDTH_MM, build_camera, build_world, exclude_earlier_builds

RIG_KEY = "invrender_face_rig"  # collection ID property: what the build made (datablocks), units, first frame
EXPRESSION_SCALE_KEY = "invrender_expression_scale"  # Key ID property: (E,) model weight = key value × scale
METRES_PER_MM = 0.001
SIGMA_RANGE = 3.0  # slider range in standard deviations
SLIDER_LIMIT = 10.0  # Blender's hard limit on ShapeKey.slider_min / slider_max
MIN_SLIDER_RANGE = 0.01  # Blender needs slider_max - slider_min > 0.001
MIN_GAP_SECONDS = 0.5  # longer stretches without a fitted face hide the head
GAP_FPS = 25.0  # frame rate assumed for MIN_GAP_SECONDS when the rig has none (a folder of frames)
ROTATION_TOLERANCE = 1e-3  # |R^T R - I| allowed for float32 rotations
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ogv", ".wmv")
# bpy.data collections whose new blocks a failed build removes (Key blocks go with their mesh).
DATA_COLLECTIONS = ("collections", "objects", "meshes", "materials", "images", "actions", "cameras", "movieclips",
                    "worlds")


@dataclass
class BuiltRig:
    """What `build_face_rig` made. warnings: what was left out, for the caller to report (e.g. a video that
    Blender cannot read: the rig is built without its background clip)."""

    collection: bpy.types.Collection
    mesh: bpy.types.Object
    camera: bpy.types.Object
    clip: bpy.types.MovieClip | None
    material: bpy.types.Material
    warnings: list[str] = field(default_factory=list)
    replaced: tuple[str, ...] = ()  # earlier rigs from the same source, now excluded from the view layers


def expression_key_name(index: int, name: str = "") -> str:
    """Shape-key name of expression component `index`: "Exp00 anger", or "Exp00" without a name."""
    name = str(name).strip()
    return f"Exp{index:02d} {name}" if name else f"Exp{index:02d}"


def scene_frames(source_frames: np.ndarray) -> np.ndarray:
    """(F,) scene frame of each fitted source frame (F,): the first one is scene frame 1."""
    source_frames = np.asarray(source_frames, dtype=np.int64)
    return source_frames - source_frames[0] + 1


def hidden_stretches(source_frames: np.ndarray, fps: float) -> list[tuple[int, int]]:
    """(first, last) scene frames (inclusive) where the head is hidden: the gaps between consecutive fitted
    frames that are longer than MIN_GAP_SECONDS and than twice the step the frames were fitted with (the
    smallest distance between them)."""
    frames = scene_frames(source_frames)
    if len(frames) < 2:
        return []
    steps = np.diff(frames)
    longest = max(2 * int(steps.min()), MIN_GAP_SECONDS * (fps if fps > 0 else GAP_FPS))
    return [(int(frames[k]) + 1, int(frames[k + 1]) - 1) for k in np.flatnonzero(steps > longest)]


def build_face_rig(rig, context=None, metres_per_unit: float = METRES_PER_MM) -> BuiltRig:
    """Add the animated face rig of `rig` (a FaceRig) to the context's scene (default: bpy.context).

    `metres_per_unit`: size of one model unit in metres (0.001: millimetres, the Surrey model).
    All or nothing: a bad rig raises ValueError before anything changes; if building fails later, every
    datablock added so far is removed and the scene's camera, clip, world, resolution, fps and frame range are
    restored before the error propagates.
    """
    _check(rig, metres_per_unit)
    scene = (context or bpy.context).scene
    before = {kind: set(getattr(bpy.data, kind)) for kind in DATA_COLLECTIONS}
    settings = _scene_settings(scene)
    try:
        return _build(rig, scene, float(metres_per_unit))
    except BaseException:
        _restore_scene_settings(scene, settings)
        created = [block for kind in DATA_COLLECTIONS for block in set(getattr(bpy.data, kind)) - before[kind]]
        bpy.data.batch_remove(created)
        raise


# ------------------------------------------------------------------------------------------------- internals


def _check(rig, metres_per_unit: float) -> None:
    """Every check that needs no bpy data, so that a bad rig changes nothing."""
    rig.validate()
    if not (np.isfinite(metres_per_unit) and metres_per_unit > 0):
        raise ValueError(f"metres_per_unit must be a positive number, got {metres_per_unit}")
    for name in ("neutral", "expression_basis", "expression", "rotation", "translation", "focal"):
        if not np.isfinite(getattr(rig, name)).all():
            raise ValueError(f"FaceRig.{name} must be finite")
    if (rig.focal <= 0).any():
        raise ValueError(f"FaceRig.focal must be positive pixels, got min {rig.focal.min()}")
    sigma = np.asarray(rig.expression_sigma, np.float64)
    if not (np.isfinite(sigma).all() and (sigma > 0).all()):
        raise ValueError(f"FaceRig.expression_sigma must be positive and finite, got {sigma}")
    if (np.diff(np.asarray(rig.frames, np.int64)) <= 0).any():
        raise ValueError(f"FaceRig.frames must increase, got {np.asarray(rig.frames)}")
    width, height = rig.image_size
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"FaceRig.image_size must be positive (width, height), got {rig.image_size}")
    if not np.isfinite(rig.fps) or rig.fps < 0:
        raise ValueError(f"FaceRig.fps must be >= 0 (0: unknown), got {rig.fps}")
    rotation = np.asarray(rig.rotation, np.float64)  # (F, 3, 3)
    error = np.abs(np.einsum("fji,fjk->fik", rotation, rotation) - np.eye(3)).max(axis=(1, 2))  # (F,)
    bad = np.flatnonzero((error > ROTATION_TOLERANCE) | (np.linalg.det(rotation) <= 0))
    if bad.size:
        raise ValueError(f"FaceRig.rotation[{bad[0]}] is not a rotation (R^T R - I up to {error[bad[0]]:.2g}); "
                         "the rig needs a rigid head pose")
    if rig.albedo is not None and rig.uvs is None:
        raise ValueError("FaceRig.albedo is given but FaceRig.uvs is None: the texture needs UVs")


def _scene_settings(scene: bpy.types.Scene) -> dict:
    render = scene.render
    return {"camera": scene.camera, "active_clip": scene.active_clip, "world": scene.world,
            "render": {k: getattr(render, k) for k in ("resolution_x", "resolution_y", "resolution_percentage",
                                                        "pixel_aspect_x", "pixel_aspect_y", "fps", "fps_base")},
            "frames": (scene.frame_start, scene.frame_end, scene.frame_current)}


def _restore_scene_settings(scene: bpy.types.Scene, settings: dict) -> None:
    scene.camera, scene.active_clip, scene.world = settings["camera"], settings["active_clip"], settings["world"]
    for key, value in settings["render"].items():
        setattr(scene.render, key, value)
    scene.frame_start, scene.frame_end, scene.frame_current = settings["frames"]


def _build(rig, scene: bpy.types.Scene, metres_per_unit: float) -> BuiltRig:
    name = base_name(rig.name or "Face rig")
    frames = scene_frames(rig.frames)  # (F,) scene frames
    collection = bpy.data.collections.new(name)
    scene.collection.children.link(collection)

    camera = _camera(name, rig, scene, frames)
    collection.objects.link(camera)
    scene.camera = camera
    scene.frame_start, scene.frame_end = 1, int(frames[-1])
    if rig.fps > 0:  # Blender's rate is fps / fps_base with an integer fps: 29.97 = 30 / 1.001
        fps = max(1, round(rig.fps))
        scene.render.fps, scene.render.fps_base = fps, fps / rig.fps
    warnings = []
    clip = _movie_clip(rig, camera, scene, warnings)

    material = _material(name, rig.albedo)
    if scene.world is None:  # a scene of its own (the command line's): lit as the video was; a user's world stays
        scene.world = _world(name, rig, camera)
    vertices = rig.neutral * metres_per_unit  # (V, 3) metres
    mesh = bpy.data.objects.new(f"{name} mesh", mesh_from_arrays(f"{name} mesh", vertices, rig.triangles, rig.uvs))
    mesh.data.materials.append(material)
    collection.objects.link(mesh)
    # Keys hold their values up to the first frame of another track (the tracker moved to another face or shot):
    # a head sliding across the frame between two people, at sub-frames (motion blur, retiming), means nothing.
    tracks = np.asarray(rig.tracks)
    interpolation = ["CONSTANT" if switch else "LINEAR" for switch in np.append(tracks[1:] != tracks[:-1], False)]
    _expressions(mesh, rig, metres_per_unit, frames, name, interpolation)
    _head_pose(mesh, camera, rig, metres_per_unit, frames, name, interpolation)
    _hide_in_gaps(mesh, hidden_stretches(rig.frames, rig.fps), name)

    source = str(Path(rig.source).resolve()) if rig.source else ""
    # Datablocks as ID references (they follow renames, append and link); no "clip" without a clip.
    blocks = {"mesh": mesh, "camera": camera} | ({"clip": clip} if clip else {})
    collection[RIG_KEY] = {**blocks, "metres_per_unit": metres_per_unit, "first_source_frame": int(rig.frames[0]),
                           "expression_names": [str(n) for n in np.asarray(rig.expression_names).reshape(-1)],
                           "source": source}
    replaced = exclude_earlier_builds(scene, collection, RIG_KEY, source)
    scene.frame_set(1)  # show the first fitted frame
    return BuiltRig(collection, mesh, camera, clip, material, warnings, replaced)


def _camera(name: str, rig, scene: bpy.types.Scene, frames: np.ndarray) -> bpy.types.Object:
    """The source camera: principal point at the image centre, lens from the focal (keyed when it changes)."""
    width, height = (int(v) for v in rig.image_size)
    focal = np.asarray(rig.focal, np.float64)  # (F,) pixels
    intrinsics = {"width": width, "height": height, "fx": focal[0], "fy": focal[0], "cx": 0.5 * width,
                  "cy": 0.5 * height}
    camera = build_camera(f"{name} camera", intrinsics, scene)
    if not np.allclose(focal, focal[0], rtol=1e-6, atol=0.0):
        fcurves = ensure_fcurves(camera.data, f"{name} lens")
        keyframes_from_arrays(fcurves, "lens", frames, focal * SENSOR_WIDTH_MM / width)
    return camera


def _movie_clip(rig, camera: bpy.types.Object, scene: bpy.types.Scene, warnings: list[str]):
    """The source video as the camera's background clip; None (no warning) when the source is not a video file
    that exists, None with a warning when Blender cannot read it."""
    path = Path(rig.source) if rig.source else None
    if path is None or path.suffix.lower() not in VIDEO_SUFFIXES or not path.is_file():
        return None
    offset = int(rig.frames[0])  # scene frame k shows source frame frames[0] + k - 1
    # A rig fitted again from the same video (and first frame) shares the clip loaded for the earlier one.
    clip = next((c for c in bpy.data.movieclips if Path(bpy.path.abspath(c.filepath)) == path.resolve()
                 and c.frame_start == 1 and c.frame_offset == offset), None)
    if clip is None:
        clip = bpy.data.movieclips.load(str(path.resolve()))
        if clip.frame_duration <= 0:  # Blender loads unreadable files as an empty clip rather than failing
            bpy.data.movieclips.remove(clip)
            warnings.append(f"Blender cannot read the video {path}: the rig has no background clip")
            return None
        clip.frame_start = 1
        clip.frame_offset = offset
    background = camera.data.background_images.new()
    background.source = "MOVIE_CLIP"
    background.clip = clip
    background.use_camera_clip = False
    camera.data.show_background_images = True
    scene.active_clip = clip
    return clip


def _world(name: str, rig, camera: bpy.types.Object) -> bpy.types.World:
    """A world lit by the fitted SH lighting averaged over the frames, turned from the camera frame to the world
    (`scene.build_world`): the rig renders as lit in the video, rather than black."""
    from invrender_core import sh

    to_world = np.array(camera.matrix_basis, np.float64)[:3, :3]  # the camera has no parent
    lighting = sh.rotation(to_world) @ np.asarray(rig.sh, np.float64).mean(axis=0)  # (9, 3) world frame
    return build_world(f"{name} world", image_from_array(f"{name} environment", sh.to_equirect(lighting, 128, 64)))


def _material(name: str, albedo: np.ndarray | None) -> bpy.types.Material:
    """Principled material; the albedo (S, S, 3), when given, as a packed image -> Base Color."""
    material = bpy.data.materials.new(f"{name} material")
    enable_nodes(material)
    if albedo is not None:
        nodes = material.node_tree.nodes
        node = nodes.new("ShaderNodeTexImage")
        node.name, node.label, node.location = ALBEDO_NODE, "Albedo", (-600, 300)
        node.image = image_from_array(f"{name} albedo", albedo)
        material.node_tree.links.new(node.outputs["Color"], nodes["Principled BSDF"].inputs["Base Color"])
    return material


def _expressions(obj: bpy.types.Object, rig, metres_per_unit: float, frames: np.ndarray, name: str,
                 interpolation: list[str]) -> None:
    """One shape key per expression component (module docstring: names, sliders, scale) and its value keys."""
    sigma = np.asarray(rig.expression_sigma, np.float64)  # (E,)
    if sigma.size == 0:
        return
    weights = np.asarray(rig.expression, np.float64)  # (F, E)
    ranges = np.maximum(np.maximum(SIGMA_RANGE * sigma, np.abs(weights).max(axis=0)), MIN_SLIDER_RANGE)  # (E,)
    scale = np.maximum(1.0, ranges / SLIDER_LIMIT)  # (E,) key value = weight / scale
    basis = np.asarray(rig.neutral, np.float64) * metres_per_unit  # (V, 3) metres
    offsets = np.asarray(rig.expression_basis, np.float64) * (metres_per_unit * scale)  # (V, 3, E) metres
    names = np.asarray(rig.expression_names).reshape(-1)
    obj.shape_key_add(name="Basis", from_mix=False)
    blocks = []
    for e in range(sigma.size):
        block = obj.shape_key_add(name=expression_key_name(e, names[e]), from_mix=False)
        block.data.foreach_set("co", (basis + offsets[..., e]).astype(np.float32).ravel())
        block.slider_max = min(ranges[e] / scale[e], SLIDER_LIMIT)  # max first: min must stay below it
        block.slider_min = -block.slider_max
        blocks.append(block)
    key = obj.data.shape_keys
    key[EXPRESSION_SCALE_KEY] = scale.tolist()
    fcurves = ensure_fcurves(key, f"{name} expressions")
    for e, block in enumerate(blocks):
        keyframes_from_arrays(fcurves, block.path_from_id("value"), frames, weights[:, e] / scale[e], interpolation)


def _head_pose(obj: bpy.types.Object, camera: bpy.types.Object, rig, metres_per_unit: float, frames: np.ndarray,
               name: str, interpolation: list[str]) -> None:
    """Key the object's world transform camera.matrix_world @ [R | t] per frame: quaternion + location."""
    from mathutils import Matrix

    to_world = np.array(camera.matrix_basis, np.float64)  # (4, 4); the camera has no parent
    rotation = np.einsum("ij,fjk->fik", to_world[:3, :3], rig.rotation)  # (F, 3, 3) model -> world
    location = (np.asarray(rig.translation, np.float64) * metres_per_unit) @ to_world[:3, :3].T + to_world[:3, 3]
    quaternions = np.array([Matrix(r.tolist()).to_quaternion() for r in rotation])  # (F, 4) w, x, y, z
    # q and -q are the same rotation: keep neighbours on one hemisphere so linear keys take the short way.
    flips = np.cumprod(np.where((quaternions[1:] * quaternions[:-1]).sum(axis=1) < 0, -1.0, 1.0))  # (F-1,)
    quaternions[1:] *= flips[:, None]
    obj.rotation_mode = "QUATERNION"
    fcurves = ensure_fcurves(obj, f"{name} head")
    keyframes_from_arrays(fcurves, "location", frames, location, interpolation)
    keyframes_from_arrays(fcurves, "rotation_quaternion", frames, quaternions, interpolation)


def _hide_in_gaps(obj: bpy.types.Object, stretches: list[tuple[int, int]], name: str) -> None:
    """Key hide_viewport and hide_render (constant): hidden over each (first, last) stretch, shown elsewhere."""
    if not stretches:
        return
    frames = np.array([1] + [frame for first, last in stretches for frame in (first, last + 1)], np.float64)
    hidden = np.array([0.0] + [1.0, 0.0] * len(stretches))
    fcurves = ensure_fcurves(obj, f"{name} head")
    for path in ("hide_viewport", "hide_render"):
        keyframes_from_arrays(fcurves, path, frames, hidden, interpolation="CONSTANT")
