"""Novel views of a built import: a new camera, a copy of the photo camera, animated around the reconstruction.

The pivot is the reconstruction's centre on the photo camera's optical axis: the median depth of the mesh's
vertices along the view axis. Orbit and crane turn the camera rigidly about an axis through the pivot, so the
pivot stays at the same pixel (the camera keeps looking at it); dolly slides the camera along its view axis.
The photo camera and the scene's active camera are left alone: the caller picks the active camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import bpy
import numpy as np

from .relight import action_fcurves, within
from .scene import BuiltScene, find_import, require_editable

KINDS = ("orbit", "dolly", "crane")
MAX_ORBIT_DEG = 360.0
MAX_CRANE_DEG = 89.0  # beyond straight down the camera would turn upside down
DOLLY_RANGE = (-1.0, 0.95)  # fraction of the pivot distance; 1 would put the camera on the pivot


@dataclass
class NovelViewSettings:
    """kind: "orbit" (about the vertical through the pivot; a positive angle moves the camera to its right,
    counter-clockwise seen from above), "crane" (about the horizontal through the pivot; positive: up, looking
    down at the pivot) or "dolly" (along the view axis; `distance` > 0 towards the pivot, < 0 away, as a
    fraction of the pivot's distance). The camera moves from the photo's pose at frame_start to the full
    angle or distance at frame_start + frames - 1, evenly per frame."""

    kind: str = "orbit"
    angle_deg: float = 20.0
    distance: float = 0.3
    frames: int = 48
    frame_start: int = 1

    def check(self) -> None:
        """ValueError naming the bad setting."""
        if self.kind not in KINDS:
            raise ValueError(f"novel view kind must be one of {KINDS}, got {self.kind!r}")
        if int(self.frames) != self.frames or self.frames < 1:
            raise ValueError(f"frames must be a whole number >= 1, got {self.frames}")
        if int(self.frame_start) != self.frame_start:
            raise ValueError(f"frame_start must be a whole number, got {self.frame_start}")
        if self.kind == "orbit" and not within(self.angle_deg, MAX_ORBIT_DEG):
            raise ValueError(f"the orbit angle must be within ±{MAX_ORBIT_DEG:g} degrees, got {self.angle_deg}")
        if self.kind == "crane" and not within(self.angle_deg, MAX_CRANE_DEG):
            raise ValueError(f"the crane angle must be within ±{MAX_CRANE_DEG:g} degrees, got {self.angle_deg}")
        if self.kind == "dolly" and not DOLLY_RANGE[0] <= self.distance <= DOLLY_RANGE[1]:
            raise ValueError(f"the dolly distance must be a fraction of the pivot distance in "
                             f"[{DOLLY_RANGE[0]:g}, {DOLLY_RANGE[1]:g}], got {self.distance}")


def pivot(scene: bpy.types.Scene, built: BuiltScene):
    """World-space centre of the reconstruction on the photo camera's optical axis (a mathutils Vector): the
    camera's position plus the median vertex depth along its view axis. ValueError when no vertex is in front."""
    from mathutils import Vector

    if built.mesh is None or built.camera is None:
        raise ValueError("the import's mesh or camera is missing: import the photo again")
    scene.view_layers[0].update()  # matrix_world of objects built in this call
    mesh = built.mesh.data
    co = np.empty(len(mesh.vertices) * 3, np.float64)
    mesh.vertices.foreach_get("co", co)
    m = np.array(built.mesh.matrix_world)  # (4, 4)
    world = co.reshape(-1, 3) @ m[:3, :3].T + m[:3, 3]  # (V, 3)
    c = np.array(built.camera.matrix_world)
    view = -c[:3, 2] / np.linalg.norm(c[:3, 2])  # a camera looks along its local -z
    depth = (world - c[:3, 3]) @ view  # (V,)
    depth = depth[np.isfinite(depth) & (depth > 0)]
    if depth.size == 0:
        raise ValueError("the import's mesh has no vertex in front of its camera: import the photo again")
    return Vector(c[:3, 3] + float(np.median(depth)) * view)


def camera_poses(scene: bpy.types.Scene, built: BuiltScene, settings: NovelViewSettings) -> list:
    """World matrices (mathutils 4x4) of the novel-view camera at each of settings.frames frames."""
    from mathutils import Matrix, Vector

    settings.check()
    p = pivot(scene, built)
    start = built.camera.matrix_world.copy()
    around = (Matrix.Translation(p), Matrix.Translation(-p))
    if settings.kind == "crane":
        right = start.to_3x3() @ Vector((1.0, 0.0, 0.0))
        right.z = 0.0  # the horizontal axis through the pivot, to the camera's right
        if right.length < 1e-6:
            raise ValueError("the photo camera is rolled 90 degrees, so it has no horizontal right axis to crane "
                             "about: use an orbit or a dolly")
        axis = -right.normalized()  # turning about -right raises the camera
    else:
        axis = Vector((0.0, 0.0, 1.0))
    view = (start.to_3x3() @ Vector((0.0, 0.0, -1.0))).normalized()
    distance = (p - start.translation).length
    poses = []
    for i in range(settings.frames):
        t = i / (settings.frames - 1) if settings.frames > 1 else 0.0
        if settings.kind == "dolly":
            poses.append(Matrix.Translation(t * settings.distance * distance * view) @ start)
        else:
            turn = Matrix.Rotation(math.radians(t * settings.angle_deg), 4, axis)
            poses.append(around[0] @ turn @ around[1] @ start)
    return poses


def add_novel_view_camera(scene: bpy.types.Scene, built: BuiltScene | None,
                          settings: NovelViewSettings) -> bpy.types.Object:
    """A new camera in the import's collection (`built`; None: `scene.find_import(scene)`), with the photo
    camera's lens, shift and sensor, keyframed at every frame from frame_start (the photo camera's pose) to
    frame_start + frames - 1 along the settings' path. The photo camera and scene.camera are unchanged.
    ValueError (nothing added) for bad settings, a linked import or an import without mesh or camera."""
    built = built or find_import(scene)
    require_editable(built, (built.collection,))  # the camera goes into the import's collection
    poses = camera_poses(scene, built, settings)  # every check happens here, before anything is added
    data = built.camera.data.copy()
    data.name = f"{built.collection.name} {settings.kind} camera"
    # The photo lines up with the view only from the photo camera: no background image on the new one.
    data.show_background_images = False
    obj = bpy.data.objects.new(data.name, data)
    try:
        built.collection.objects.link(obj)
        obj.rotation_mode = "XYZ"
        keyed = []
        for i, pose in enumerate(poses):
            location, rotation, _ = pose.decompose()
            # Compatible Euler angles (closest to the previous key): no 360-degree flips between keys.
            euler = rotation.to_euler("XYZ") if not keyed else rotation.to_euler("XYZ", keyed[-1][1])
            keyed.append((location, euler))
            obj.location, obj.rotation_euler = location, euler
            obj.keyframe_insert("location", frame=settings.frame_start + i)
            obj.keyframe_insert("rotation_euler", frame=settings.frame_start + i)
        # Show the pose of the current frame until the next frame change evaluates the keys.
        current = min(max(scene.frame_current - settings.frame_start, 0), len(keyed) - 1)
        obj.location, obj.rotation_euler = keyed[current]
        for fcurve in action_fcurves(obj):
            for point in fcurve.keyframe_points:
                point.interpolation = "LINEAR"  # a key every frame: no overshoot between them (motion blur)
    except BaseException:
        action = obj.animation_data.action if obj.animation_data else None
        bpy.data.objects.remove(obj)
        bpy.data.cameras.remove(data)
        if action is not None:
            bpy.data.actions.remove(action)
        raise
    return obj
