"""Render the demo's sample photo: a small sunlit outdoor scene, with the depth and normal maps an RGB-D
capture (or, later, the networks) would give.

Reproduce (about a minute on 2 CPU cores):
    .venv/bin/python datagen/render_sample.py --out samples --seed 7

Writes into --out:
    sample_photo.png         8-bit sRGB photo (Cycles, "Standard" view transform, so sRGB is the plain curve)
    sample_photo_depth.exr   planar depth (Y), with 1 % multiplicative noise as a depth sensor / MVS gives
    sample_photo_normal.exr  camera-frame unit normals (R,G,B = x,y,z; DESIGN.md frame), exact
    sample_photo_camera.json intrinsics (camera.json contract)
Depth and normals come from ray casts against the scene geometry, one ray per pixel centre.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import bpy
import numpy as np
from invrender_addon.build.bpy_io import enable_nodes
from mathutils import Vector
from render_skies import nishita_sky_type  # a sibling: the script runs from datagen/

from invrender_core.camera import Camera
from invrender_core.io import write_exr

WIDTH, HEIGHT, FOV_X_DEG = 384, 256, 55.0


def _material(name, colour, roughness=0.8, checker=None):
    mat = bpy.data.materials.new(name)
    enable_nodes(mat)
    bsdf = mat.node_tree.nodes["Principled BSDF"]
    bsdf.inputs["Roughness"].default_value = roughness
    if checker is None:
        bsdf.inputs["Base Color"].default_value = (*colour, 1.0)
    else:
        nodes, links = mat.node_tree.nodes, mat.node_tree.links
        tex = nodes.new("ShaderNodeTexChecker")
        tex.inputs["Scale"].default_value = checker
        tex.inputs["Color1"].default_value = (*colour, 1.0)
        tex.inputs["Color2"].default_value = (*(0.6 * c for c in colour), 1.0)
        links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def build_scene(rng: np.random.Generator):
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene

    def add(obj_op, mat, **kw):
        obj_op(**kw)
        obj = bpy.context.active_object
        obj.name = mat.name  # ray_cast_maps recognises the smooth primitives by name
        obj.data.materials.append(mat)
        return obj

    add(bpy.ops.mesh.primitive_plane_add, _material("ground", (0.45, 0.38, 0.3), checker=6.0), size=40)
    wall = add(bpy.ops.mesh.primitive_cube_add, _material("wall", (0.7, 0.55, 0.45), checker=4.0),
               location=(0.5, 9.0, 2.5))
    wall.scale = (9.0, 0.4, 2.5)
    for i in range(3):
        box = add(bpy.ops.mesh.primitive_cube_add,
                  _material(f"box{i}", tuple(rng.uniform(0.2, 0.8, 3))),
                  size=1.0, location=(-2.5 + 2.2 * i, 4.0 + rng.uniform(-1, 1), 0.5))
        box.rotation_euler.z = rng.uniform(0, math.pi / 2)
    add(bpy.ops.mesh.primitive_uv_sphere_add, _material("sphere", (0.6, 0.6, 0.58), roughness=0.5),
        radius=0.8, location=(1.2, 2.2, 0.8), segments=128, ring_count=64)
    bpy.ops.object.shade_smooth()
    add(bpy.ops.mesh.primitive_cylinder_add, _material("column", (0.6, 0.62, 0.65)),
        radius=0.35, depth=3.0, location=(-2.0, 6.5, 1.5), vertices=128)
    bpy.ops.object.shade_smooth()

    sun_data = bpy.data.lights.new("sun", "SUN")
    sun_data.energy = 3.0
    sun_data.angle = math.radians(1.0)
    sun = bpy.data.objects.new("sun", sun_data)
    sun.rotation_euler = (math.radians(50), 0.0, math.radians(-35))
    scene.collection.objects.link(sun)

    world = bpy.data.worlds.new("sky")
    enable_nodes(world)
    sky = world.node_tree.nodes.new("ShaderNodeTexSky")
    sky.sky_type = nishita_sky_type()
    sky.sun_disc = False
    sky.sun_elevation = math.radians(40)
    background = world.node_tree.nodes["Background"]
    background.inputs["Strength"].default_value = 0.12
    world.node_tree.links.new(sky.outputs["Color"], background.inputs["Color"])
    scene.world = world

    cam_data = bpy.data.cameras.new("camera")
    cam_data.sensor_fit = "HORIZONTAL"
    cam_data.angle = math.radians(FOV_X_DEG)
    cam = bpy.data.objects.new("camera", cam_data)
    cam.location = (0.0, -3.0, 1.6)
    cam.rotation_euler = (math.radians(82), 0.0, 0.0)
    scene.collection.objects.link(cam)
    scene.camera = cam

    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = 96
    scene.cycles.use_denoising = True
    scene.render.resolution_x, scene.render.resolution_y = WIDTH, HEIGHT
    scene.render.resolution_percentage = 100
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.render.image_settings.file_format = "PNG"
    scene.render.image_settings.color_depth = "8"
    return scene, cam


def _smooth_normal(obj, location: np.ndarray, face_normal: np.ndarray) -> np.ndarray:
    """World normal of the smooth surface the primitive stands for (ray casts return facet normals)."""
    centre = np.array(obj.location)
    if obj.name.startswith("sphere"):
        radial = location - centre
    elif obj.name.startswith("column") and abs(face_normal[2]) < 0.5:  # the side, not the caps
        radial = (location - centre) * np.array([1.0, 1.0, 0.0])
    else:
        return face_normal
    return radial / np.linalg.norm(radial)


def ray_cast_maps(scene, cam, camera: Camera):
    """Planar depth (H, W) and camera-frame normals (H, W, 3) by one ray cast per pixel centre."""
    depsgraph = bpy.context.evaluated_depsgraph_get()
    cam_to_world = np.array(cam.matrix_world)  # Blender camera frame = DESIGN.md camera frame
    rotation, origin = cam_to_world[:3, :3], cam_to_world[:3, 3]
    rays = camera.rays().reshape(-1, 3)  # depth-1 points, camera frame
    depth = np.full(len(rays), np.nan)
    normals = np.tile([0.0, 0.0, 1.0], (len(rays), 1))
    world_dirs = rays @ rotation.T
    for k, direction in enumerate(world_dirs):
        hit, location, normal, _, obj, _ = scene.ray_cast(depsgraph, Vector(origin), Vector(direction))
        if hit:
            location = np.array(location)
            local = rotation.T @ (location - origin)
            depth[k] = -local[2]
            n = rotation.T @ _smooth_normal(obj, location, np.array(normal))
            normals[k] = n if n @ local < 0 else -n  # face the viewer
    shape = (camera.height, camera.width)
    return depth.reshape(shape), normals.reshape(*shape, 3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("samples"))
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    scene, cam = build_scene(rng)
    camera = Camera.from_fov(WIDTH, HEIGHT, FOV_X_DEG)
    scene.render.filepath = str((args.out / "sample_photo.png").resolve())
    bpy.ops.render.render(write_still=True)

    depth, normals = ray_cast_maps(scene, cam, camera)
    if not np.isfinite(depth).all():
        raise SystemExit("some camera rays miss the scene: the sample must be covered by geometry")
    noisy_depth = depth * (1.0 + 0.01 * rng.standard_normal(depth.shape))
    write_exr(args.out / "sample_photo_depth.exr", noisy_depth.astype(np.float32))
    write_exr(args.out / "sample_photo_normal.exr", normals.astype(np.float32))
    (args.out / "sample_photo_camera.json").write_text(json.dumps(camera.to_dict(), indent=2) + "\n")
    print(f"wrote sample photo and maps to {args.out}")


if __name__ == "__main__":
    main()
