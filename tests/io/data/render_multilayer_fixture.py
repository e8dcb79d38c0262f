"""Render the multilayer EXR fixtures of tests/io: the default cube, 12x20 pixels (two ZIP chunks per pass).
Run with each Blender's bpy: .venv/bin/python tests/io/data/render_multilayer_fixture.py OUT.exr"""
import sys

import bpy

bpy.ops.wm.read_factory_settings(use_empty=False)
scene = bpy.context.scene
scene.render.engine = "CYCLES"
scene.cycles.samples, scene.cycles.device, scene.cycles.use_denoising = 1, "CPU", False
scene.cycles.filter_width = 0.01  # rays through pixel centres: Depth and Normal equal in every Blender
scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 12, 20, 100
scene.view_layers[0].use_pass_z = scene.view_layers[0].use_pass_normal = True
settings = scene.render.image_settings
if hasattr(settings, "media_type"):  # Blender 5.0
    settings.media_type = "MULTI_LAYER_IMAGE"
settings.file_format, settings.color_depth, settings.exr_codec = "OPEN_EXR_MULTILAYER", "32", "ZIP"
scene.render.filepath = sys.argv[-1]
bpy.ops.render.render(write_still=True)
