"""Export Passes: file browser -> one `export_passes` call (render + multilayer EXR). No maths here."""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy_extras.io_utils import ExportHelper

from .import_photo import USER_ERRORS, report_warnings


class INVR_OT_export_passes(bpy.types.Operator, ExportHelper):
    """Render the scene with Cycles from the scene camera and write beauty, albedo, normal (world), depth
    (planar), the photo's shadow and shading passes to one multilayer OpenEXR for compositing"""

    bl_idname = "invr.export_passes"
    bl_label = "Export Passes (EXR)"
    bl_options = {"REGISTER"}  # writes a file and leaves the scene as it was: nothing to undo

    filename_ext = ".exr"
    filter_glob: bpy.props.StringProperty(default="*.exr", options={"HIDDEN"}, maxlen=255)
    samples: bpy.props.IntProperty(
        name="Samples", description="Cycles samples per pixel for the passes: more gives less noise in the "
        "beauty and shading passes and takes longer", default=64, min=1, max=1 << 24, soft_max=4096)
    separate_files: bpy.props.BoolProperty(
        name="Also one file per pass", description="Also write <name>_<pass>.exr with standard channel names "
        "(R,G,B or Y), for tools that cannot read multilayer EXR", default=False)

    @classmethod
    def poll(cls, context):
        if context.scene.camera is None:
            cls.poll_message_set("The scene has no camera: import a photo or set a scene camera")
            return False
        return True

    def execute(self, context):
        from ..build.passes import export_passes
        from ..build.scene import find_import

        if not self.filepath:
            self.report({"ERROR"}, "No file chosen: pick an .exr file in the file browser")
            return {"CANCELLED"}
        if self.filepath.startswith("//") and not bpy.data.filepath:  # it would land in the working directory
            self.report({"ERROR"}, f"{self.filepath} is relative to the .blend file, which is not saved yet: save "
                        "the file first or give an absolute path")
            return {"CANCELLED"}
        path = bpy.path.abspath(self.filepath)
        if not Path(path).is_dir():  # a folder stays as it is, for export_passes to refuse
            path = bpy.path.ensure_ext(path, self.filename_ext)
        try:
            built = find_import(context.scene)
            out = export_passes(context.scene, built, path, samples=self.samples, separate_files=self.separate_files)
        except USER_ERRORS as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        report_warnings(self, built.warnings)
        self.report({"INFO"}, f"Wrote passes to {out}")
        return {"FINISHED"}


classes = (INVR_OT_export_passes,)
