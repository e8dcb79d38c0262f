"""Operators: properties -> settings dataclass -> one core call -> builder. No maths here."""

from pathlib import Path

import bpy


def _settings_from_props(props):
    from .build.import_photo import ImportSettings

    return ImportSettings(
        photo=Path(bpy.path.abspath(props.photo_path)),
        depth=Path(bpy.path.abspath(props.depth_path)),
        normals=Path(bpy.path.abspath(props.normal_path)),
        fov_deg=props.fov_override or None,
        mesh_step=props.mesh_step,
        discontinuity_threshold=props.discontinuity_threshold,
        sun_fraction=props.sun_fraction,
    )


class INVR_OT_import_rgbd(bpy.types.Operator):
    """Build a camera-matched, relightable scene from a photo with its depth and normal maps"""

    bl_idname = "invr.import_rgbd"
    bl_label = "Import Photo with Depth and Normals"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        props = context.scene.invr
        for label, path in (("photo", props.photo_path), ("depth map", props.depth_path),
                            ("normal map", props.normal_path)):
            if not path:
                self.report({"ERROR"}, f"No {label} chosen: pick one in the InvRender panel")
                return {"CANCELLED"}
        # Heavy imports (numpy maths, OpenCV) only when the operator runs, not when the add-on is enabled.
        from .build.import_photo import import_photo

        wm = context.window_manager
        wm.progress_begin(0, 1)
        try:
            built = import_photo(_settings_from_props(props), context.scene)
        except (ValueError, OSError, MemoryError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        finally:
            wm.progress_end()
        self.report({"INFO"}, f"Built {built.collection.name}: {len(built.mesh.data.vertices)} vertices")
        return {"FINISHED"}


classes = (INVR_OT_import_rgbd,)
