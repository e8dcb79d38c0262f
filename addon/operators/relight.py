"""Relight and Novel View: properties -> RelightSettings / NovelViewSettings -> one builder call."""

from __future__ import annotations

import math

import bpy

from ..build.novel_view import MAX_CRANE_DEG, MAX_ORBIT_DEG
from .import_photo import report_warnings

ANGLE_LIMIT = 4.0 * math.pi  # azimuths may go past a full turn so that a time of day can sweep beyond 360°


class INVR_OT_relight(bpy.types.Operator):
    """Relight the imported photo: turn the estimated lighting or place the sun (the environment turns with it),
    or switch to a physical sky; optionally keyframe the sun's course over a frame range"""

    bl_idname = "invr.relight"
    bl_label = "Relight Scene"
    bl_options = {"REGISTER", "UNDO"}

    mode: bpy.props.EnumProperty(
        name="Lighting", description="What lights the scene besides the sun lamp",
        items=(("ENVIRONMENT", "Estimated environment", "The lighting estimated from the photo"),
               ("SKY", "Physical sky", "Blender's physical sky (Nishita or newer), its sun on the sun lamp")),
        default="ENVIRONMENT")
    rotation: bpy.props.FloatProperty(
        name="Rotation", description="Turn the estimated lighting (environment and sun) about the vertical, "
        "counter-clockwise seen from above", default=0.0, min=-ANGLE_LIMIT, max=ANGLE_LIMIT,
        soft_min=-math.pi, soft_max=math.pi, subtype="ANGLE", unit="ROTATION")
    use_sun_angles: bpy.props.BoolProperty(
        name="Place sun", description="Put a new sun at the elevation and azimuth below instead of turning the "
        "estimate by the rotation: as bright next to the environment as the 2D Preview's sun, reddened near the "
        "horizon (the environment turns with the azimuth)", default=False)
    sun_elevation: bpy.props.FloatProperty(
        name="Sun elevation", description="Sun height above the horizon", default=math.radians(45.0),
        min=-math.pi / 2, max=math.pi / 2, subtype="ANGLE", unit="ROTATION")
    sun_azimuth: bpy.props.FloatProperty(
        name="Sun azimuth", description="Sun direction: 0 behind the photo camera (front light), 90° from its "
        "right, 180° in front of it (back light)", default=0.0, min=-ANGLE_LIMIT, max=ANGLE_LIMIT,
        soft_min=-math.pi, soft_max=2.0 * math.pi, subtype="ANGLE", unit="ROTATION")
    environment_strength: bpy.props.FloatProperty(
        name="Environment strength", description="Factor on the estimated environment's brightness",
        default=1.0, min=0.0, max=100.0, soft_max=5.0, subtype="FACTOR")
    environment_tint: bpy.props.FloatVectorProperty(
        name="Environment tint", description="Colour multiplying the estimated environment", size=3,
        default=(1.0, 1.0, 1.0), min=0.0, max=10.0, soft_max=1.0, subtype="COLOR")
    sun_to_sky: bpy.props.FloatProperty(
        name="Sun to sky", description="A placed sun's irradiance as a multiple of the environment's mean, the "
        "two sharing the estimated light (clear day: 5 to 13, hazy: 1 to 3); the 2D Preview's default",
        default=4.0, min=0.0, max=100.0, soft_max=15.0)  # relight.DEFAULT_SUN_TO_SKY
    sun_strength: bpy.props.FloatProperty(
        name="Sun strength", description="Factor on the sun's energy (the estimated or the placed sun's)",
        default=1.0, min=0.0, max=100.0, soft_max=5.0, subtype="FACTOR")
    sun_tint: bpy.props.FloatVectorProperty(
        name="Sun tint", description="Colour multiplying the sun's colour", size=3,
        default=(1.0, 1.0, 1.0), min=0.0, max=10.0, soft_max=1.0, subtype="COLOR")
    sky_strength: bpy.props.FloatProperty(
        name="Sky strength", description="Physical sky brightness; 1 keeps the sky as bright next to the sun "
        "as Blender's physical sky is next to its own sun", default=1.0, min=0.0, max=100.0, soft_max=5.0,
        subtype="FACTOR")
    animate: bpy.props.BoolProperty(
        name="Animate time of day", description="Keyframe the sun from the sun angles above at the start frame "
        "to the end angles at the end frame", default=False, options={"SKIP_SAVE"})  # never carried to the next call
    frame_start: bpy.props.IntProperty(
        name="Start frame", description="Frame where the sun is at the sun angles", default=1,
        min=-1048574, max=1048574)
    frame_end: bpy.props.IntProperty(
        name="End frame", description="Frame where the sun reaches the end angles", default=100,
        min=-1048574, max=1048574)
    end_elevation: bpy.props.FloatProperty(
        name="End elevation", description="Sun height above the horizon at the end frame",
        default=math.radians(10.0), min=-math.pi / 2, max=math.pi / 2, subtype="ANGLE", unit="ROTATION")
    end_azimuth: bpy.props.FloatProperty(
        name="End azimuth", description="Sun azimuth at the end frame (past 360° to sweep further round)",
        default=math.radians(90.0), min=-ANGLE_LIMIT, max=ANGLE_LIMIT, soft_min=-math.pi,
        soft_max=2.0 * math.pi, subtype="ANGLE", unit="ROTATION")

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.prop(self, "mode")
        layout.prop(self, "use_sun_angles")
        col = layout.column()
        col.active = self.use_sun_angles or self.animate
        col.prop(self, "sun_elevation")
        col.prop(self, "sun_azimuth")
        row = layout.row()
        row.active = not (self.use_sun_angles or self.animate)
        row.prop(self, "rotation")
        if self.mode == "ENVIRONMENT":
            row = layout.row()
            row.active = self.use_sun_angles or self.animate
            row.prop(self, "sun_to_sky")
            layout.prop(self, "environment_strength")
            layout.prop(self, "environment_tint")
        else:
            layout.prop(self, "sky_strength")
        layout.prop(self, "sun_strength")
        layout.prop(self, "sun_tint")
        layout.prop(self, "animate")
        col = layout.column()
        col.active = self.animate
        for name in ("frame_start", "frame_end", "end_elevation", "end_azimuth"):
            col.prop(self, name)

    def relight_settings(self):
        from ..build.relight import RelightSettings

        place = self.use_sun_angles or self.animate
        return RelightSettings(
            mode=self.mode.lower(), rotation_deg=math.degrees(self.rotation),
            sun_angles=(math.degrees(self.sun_elevation), math.degrees(self.sun_azimuth)) if place else None,
            environment_strength=self.environment_strength, environment_tint=tuple(self.environment_tint),
            sun_strength=self.sun_strength, sun_tint=tuple(self.sun_tint), sky_strength=self.sky_strength,
            sun_to_sky=self.sun_to_sky)

    def execute(self, context):
        from ..build import relight
        from ..build.scene import find_import

        settings = self.relight_settings()
        try:
            built = find_import(context.scene)
            if self.animate:
                relight.animate_time_of_day(
                    context.scene, built, start=settings.sun_angles,
                    end=(math.degrees(self.end_elevation), math.degrees(self.end_azimuth)),
                    frame_start=self.frame_start, frame_end=self.frame_end, settings=settings)
            else:
                relight.apply_relight(context.scene, built, settings)
        except ValueError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        report_warnings(self, built.warnings)
        return {"FINISHED"}


class INVR_OT_add_novel_view_camera(bpy.types.Operator):
    """Add a camera that moves from the photo's viewpoint around the reconstruction (orbit, dolly or crane),
    keyframed over a frame range; the photo camera is left as it is"""

    bl_idname = "invr.add_novel_view_camera"
    bl_label = "Add Novel View Camera"
    bl_options = {"REGISTER", "UNDO"}

    kind: bpy.props.EnumProperty(
        name="Move", description="How the camera moves away from the photo's viewpoint",
        items=(("ORBIT", "Orbit", "Turn about the vertical through the scene's centre"),
               ("DOLLY", "Dolly", "Move along the view axis towards (or away from) the scene's centre"),
               ("CRANE", "Crane", "Rise about the horizontal through the scene's centre, looking at it")),
        default="ORBIT")
    # One angle per move, each with the limits NovelViewSettings.check accepts.
    orbit_angle: bpy.props.FloatProperty(
        name="Orbit angle", description="Turn about the vertical (positive: the camera moves to its right)",
        default=math.radians(20.0), min=-math.radians(MAX_ORBIT_DEG), max=math.radians(MAX_ORBIT_DEG),
        soft_min=-math.pi / 2, soft_max=math.pi / 2, subtype="ANGLE", unit="ROTATION")
    crane_angle: bpy.props.FloatProperty(
        name="Crane angle", description="Rise about the horizontal (positive: up, looking down at the scene)",
        default=math.radians(20.0), min=-math.radians(MAX_CRANE_DEG), max=math.radians(MAX_CRANE_DEG),
        subtype="ANGLE", unit="ROTATION")
    distance: bpy.props.FloatProperty(
        name="Distance", description="Dolly: share of the distance to the scene's centre to move (negative: "
        "away from it)", default=0.3, min=-1.0, max=0.95, subtype="FACTOR")
    frames: bpy.props.IntProperty(
        name="Frames", description="Length of the move in frames, from the photo's viewpoint to the end",
        default=48, min=1, max=100000)
    frame_start: bpy.props.IntProperty(
        name="Start frame", description="Frame where the camera is at the photo's viewpoint", default=1,
        min=-1048574, max=1048574)
    make_active: bpy.props.BoolProperty(
        name="Make active", description="Render through the new camera (the scene's active camera)",
        default=False)

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        layout.prop(self, "kind")
        layout.prop(self, {"ORBIT": "orbit_angle", "CRANE": "crane_angle", "DOLLY": "distance"}[self.kind])
        for name in ("frames", "frame_start", "make_active"):
            layout.prop(self, name)

    def execute(self, context):
        from ..build.novel_view import NovelViewSettings, add_novel_view_camera
        from ..build.scene import find_import

        angle = self.crane_angle if self.kind == "CRANE" else self.orbit_angle
        settings = NovelViewSettings(kind=self.kind.lower(), angle_deg=math.degrees(angle),
                                     distance=self.distance, frames=self.frames, frame_start=self.frame_start)
        try:
            built = find_import(context.scene)
            camera = add_novel_view_camera(context.scene, built, settings)
        except ValueError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        report_warnings(self, built.warnings)
        if self.make_active:
            context.scene.camera = camera
        self.report({"INFO"}, f"Added {camera.name} (frames {self.frame_start}-{self.frame_start + self.frames - 1})")
        return {"FINISHED"}


classes = (INVR_OT_relight, INVR_OT_add_novel_view_camera)
