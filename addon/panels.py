"""The InvRender tab in the 3D viewport's sidebar."""

import bpy


class VIEW3D_PT_invr_photo(bpy.types.Panel):
    bl_label = "Photo → Scene"
    bl_idname = "VIEW3D_PT_invr_photo"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "InvRender"

    def draw(self, context):
        props = context.scene.invr
        layout = self.layout
        layout.use_property_split = True
        for name in ("photo_path", "fov_override", "max_side", "mesh_step", "discontinuity_threshold",
                     "sun_fraction"):
            layout.prop(props, name)
        layout.operator("invr.import_photo", icon="IMPORT")
        maps = layout.column(heading="From an RGB-D capture")
        maps.prop(props, "depth_path")
        maps.prop(props, "normal_path")
        maps.operator("invr.import_rgbd", icon="IMPORT")


classes = (VIEW3D_PT_invr_photo,)
