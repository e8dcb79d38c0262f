"""InvRender Blender extension: registration only (flat class list, one Scene.invr pointer)."""

import bpy

from . import operators, panels, props

classes = (*props.classes, *operators.classes, *panels.classes)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.invr = bpy.props.PointerProperty(type=props.INVR_PG_settings)


def unregister():
    del bpy.types.Scene.invr
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
