"""InvRender Blender extension: registration only (flat class list, one Scene.invr pointer, PyTorch's folder)."""

import bpy

from . import deps, operators, panels, prefs, props

classes = (*props.classes, *prefs.classes, *operators.classes, *panels.classes)


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.invr = bpy.props.PointerProperty(type=props.INVR_PG_settings)
    deps.add_to_sys_path(prefs.torch_folder())  # a PyTorch installed by "Install PyTorch" becomes importable


def unregister():
    operators.relight_preview._RELIGHTERS.clear()  # the cached 2D relighter holds full-resolution maps
    deps.remove_from_sys_path(prefs.torch_folder())
    del bpy.types.Scene.invr
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
