"""Operators: properties -> settings dataclass -> one core call -> builder. No maths here."""

from pathlib import Path

import bpy


def _settings_from_props(props, with_maps: bool):
    """ImportSettings from the panel; with_maps: use the chosen depth and normal maps instead of the networks."""
    from .build.import_photo import ImportSettings

    return ImportSettings(
        photo=Path(bpy.path.abspath(props.photo_path)),
        depth=Path(bpy.path.abspath(props.depth_path)) if with_maps else None,
        normals=Path(bpy.path.abspath(props.normal_path)) if with_maps else None,
        fov_deg=props.fov_override or None,
        max_side=props.max_side,
        mesh_step=props.mesh_step,
        discontinuity_threshold=props.discontinuity_threshold,
        sun_fraction=props.sun_fraction,
    )


def _import(operator, context, with_maps: bool) -> set[str]:
    """Run the import with a progress bar; an error becomes an ERROR report and leaves the scene as it was."""
    # Heavy imports (torch, numpy maths, OpenCV) only when the operator runs, not when the add-on is enabled.
    from .build.import_photo import import_photo

    wm = context.window_manager
    wm.progress_begin(0, 100)
    try:
        built = import_photo(_settings_from_props(context.scene.invr, with_maps), context.scene,
                             progress=lambda stage, fraction: wm.progress_update(int(100 * fraction)))
    except (ValueError, OSError, MemoryError) as e:
        operator.report({"ERROR"}, str(e))
        return {"CANCELLED"}
    finally:
        wm.progress_end()
    operator.report({"INFO"}, f"Built {built.collection.name}: {len(built.mesh.data.vertices)} vertices")
    return {"FINISHED"}


class INVR_OT_import_photo(bpy.types.Operator):
    """Estimate albedo, normals, shadow, lighting and depth of a photo with the networks and build a
    camera-matched, relightable scene from them"""

    bl_idname = "invr.import_photo"
    bl_label = "Import Photo as Relightable Scene"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        if not context.scene.invr.photo_path:
            self.report({"ERROR"}, "No photo chosen: pick one in the InvRender panel")
            return {"CANCELLED"}
        return _import(self, context, with_maps=False)


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
        return _import(self, context, with_maps=True)


classes = (INVR_OT_import_photo, INVR_OT_import_rgbd)
