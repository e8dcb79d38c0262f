"""The InvRender tab in the 3D viewport's sidebar."""

import bpy

from . import jobs, prefs
from .operators.import_photo import OPTION_NAMES


class _InvRenderPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "InvRender"


class VIEW3D_PT_invr_photo(_InvRenderPanel, bpy.types.Panel):
    bl_label = "Photo → Scene"
    bl_idname = "VIEW3D_PT_invr_photo"

    def draw(self, context):
        props = context.scene.invr
        layout = self.layout
        layout.use_property_split = True
        layout.prop(props, "photo_path")
        for name in OPTION_NAMES:
            layout.prop(props, name)
        job = jobs.active_job()
        if job is not None:
            layout.progress(factor=job.fraction, type="BAR", text=job.status_text)
        layout.operator("invr.import_photo", icon="IMPORT")
        maps = layout.column(heading="From an RGB-D capture")
        maps.prop(props, "depth_path")
        maps.prop(props, "normal_path")
        maps.operator("invr.import_rgbd", icon="IMPORT")


class VIEW3D_PT_invr_relight(_InvRenderPanel, bpy.types.Panel):
    bl_label = "Relight"
    bl_idname = "VIEW3D_PT_invr_relight"

    def draw(self, context):
        layout = self.layout
        col = layout.column(align=True)
        op = col.operator("invr.relight", text="Estimated Lighting", icon="WORLD")
        op.mode, op.use_sun_angles = "ENVIRONMENT", False
        op = col.operator("invr.relight", text="Physical Sky", icon="LIGHT_SUN")
        op.mode, op.use_sun_angles = "SKY", True
        op = col.operator("invr.relight", text="Animate Time of Day", icon="TIME")
        op.animate, op.frame_start, op.frame_end = True, context.scene.frame_start, context.scene.frame_end
        layout.label(text="Fine-tune in Adjust Last Operation (F9)", icon="INFO")
        # The quick 2D relight beside the path-traced scene: the photo relit from its maps, in seconds.
        props = context.scene.invr
        box = layout.box()
        box.label(text="2D Preview (seconds)", icon="IMAGE_DATA")
        col = box.column(align=True)
        col.prop(props, "preview_sun_elevation")
        col.prop(props, "preview_sun_azimuth")
        op = box.operator("invr.relight_preview", text="Preview 2D Relight", icon="RENDER_STILL")
        op.sun_elevation, op.sun_azimuth = props.preview_sun_elevation, props.preview_sun_azimuth


class VIEW3D_PT_invr_novel_views(_InvRenderPanel, bpy.types.Panel):
    bl_label = "Novel Views"
    bl_idname = "VIEW3D_PT_invr_novel_views"

    def draw(self, context):
        layout = self.layout
        row = layout.row(align=True)
        for kind, icon in (("ORBIT", "ORIENTATION_GIMBAL"), ("DOLLY", "VIEW_CAMERA"),
                           ("CRANE", "EMPTY_SINGLE_ARROW")):
            op = row.operator("invr.add_novel_view_camera", text=kind.title(), icon=icon)
            op.kind, op.frame_start = kind, context.scene.frame_start
        layout.operator("invr.export_passes", text="Export Passes (EXR)", icon="RENDERLAYERS")


FACE_OPTION_NAMES = ("face_smoothing", "face_fov", "face_box")


class VIEW3D_PT_invr_face(_InvRenderPanel, bpy.types.Panel):
    bl_label = "Face Rig"
    bl_idname = "VIEW3D_PT_invr_face"

    def draw(self, context):
        props = context.scene.invr
        layout = self.layout
        layout.use_property_split = True
        layout.prop(props, "face_input_path")
        layout.prop(props, "face_model_path")
        layout.prop(props, "face_expressions_path")
        frames = layout.column(align=True, heading="Frames")
        frames.prop(props, "face_frame_start")
        frames.prop(props, "face_frame_end", text="End (0: last)")
        frames.prop(props, "face_frame_step")
        for name in FACE_OPTION_NAMES:
            layout.prop(props, name)
        job = jobs.active_job()
        if job is not None:
            layout.progress(factor=job.fraction, type="BAR", text=job.status_text)
        layout.operator("invr.fit_face", icon="MONKEY")


class VIEW3D_PT_invr_device(_InvRenderPanel, bpy.types.Panel):
    bl_label = "Device & Models"
    bl_idname = "VIEW3D_PT_invr_device"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        layout.use_property_split = True
        prefs.draw_device_and_models(layout, context)


classes = (VIEW3D_PT_invr_photo, VIEW3D_PT_invr_relight, VIEW3D_PT_invr_novel_views, VIEW3D_PT_invr_face,
           VIEW3D_PT_invr_device)
