"""Builders: numpy arrays -> Blender data. Imported only where bpy exists."""
