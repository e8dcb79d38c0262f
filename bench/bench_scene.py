"""Benchmark of the Blender side: the scene builder on a 1-megapixel mesh, and `invrender scene` stage by stage.

    .venv/bin/python bench/bench_scene.py [--quick]

1. Builder: the mesh (1224x816 = 1.0 MP grid, one vertex a pixel, about 2 M triangles with UVs) and its
   material (albedo, normal and shadow images, 1 MP each) built through addon/build (attribute API), against
   the same mesh through a naive per-vertex Python path (one RNA assignment per vertex, loop and UV) and
   through `Mesh.from_pydata` (what most scripts use). The depth is that of samples/sample_photo (upscaled),
   so the mesh has the discontinuities of a real scene.
2. Whole `invrender scene` on a 1 MP photo (samples/sample_photo.png upscaled to 1224x816) with the shipped
   networks, in the steps that `addon/build/headless.build_and_render` takes: load + decompose (its own
   stages), scene assets (meshing, lighting split), build, the photo match (a small Cycles bake), save .blend,
   Cycles render (CPU, 16 samples, full resolution).

Each part runs in a fresh child process (imports and first-call costs paid by a warm-up on a tiny input).
Prints markdown tables and the machine, and writes bench/results/scene.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402 - bench/common.py, beside this script

PHOTO_SIZE = (1224, 816)
RENDER_SAMPLES = 16


def sample_assets(width: int, height: int) -> dict:
    """SceneAssets arguments at width x height from the sample photo's shipped depth and normal maps."""
    import numpy as np

    from invrender_core import scene
    from invrender_core.camera import Camera
    from invrender_core.io import load_image, read_exr, resize_linear

    photo = resize_linear(load_image(ROOT / "samples" / "sample_photo.png").rgb, width, height)
    depth = resize_linear(read_exr(ROOT / "samples" / "sample_photo_depth.exr"), width, height)
    normals = resize_linear(read_exr(ROOT / "samples" / "sample_photo_normal.exr"), width, height)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    camera = Camera.from_fov(width, height, 60.0)
    estimate = scene.estimate_from_geometry(photo, depth, normals, camera)
    estimate.shadow = np.ones((height, width), np.float32)
    return scene.scene_assets(estimate, "bench")


def naive_mesh(name, vertices, faces, uvs):
    """The per-vertex way: one Python assignment per vertex, loop, polygon and UV (for comparison only)."""
    import bpy

    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    for vertex, co in zip(mesh.vertices, vertices.tolist(), strict=True):
        vertex.co = co
    flat = faces.ravel().tolist()
    mesh.loops.add(len(flat))
    for loop, index in zip(mesh.loops, flat, strict=True):
        loop.vertex_index = index
    mesh.polygons.add(len(faces))
    for i, polygon in enumerate(mesh.polygons):
        polygon.loop_start = 3 * i
    uv_layer = mesh.uv_layers.new(name="UVMap")
    for uv, index in zip(uv_layer.data, flat, strict=True):
        uv.uv = uvs[index].tolist()
    mesh.update()
    return mesh


def pydata_mesh(name, vertices, faces, uvs):
    import bpy
    import numpy as np

    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata(vertices.tolist(), [], faces.tolist())
    mesh.uv_layers.new(name="UVMap").data.foreach_set("uv", np.asarray(uvs, np.float32)[faces.ravel()].ravel())
    mesh.update()
    return mesh


def child_builder(naive: bool) -> dict:
    import bpy
    import numpy as np
    from invrender_addon.build import bpy_io
    from invrender_addon.build.scene import SceneAssets, build_scene

    bpy.ops.wm.read_factory_settings(use_empty=True)
    build_scene(SceneAssets(**sample_assets(64, 48)), bpy.context.scene)  # warm-up
    assets = sample_assets(*PHOTO_SIZE)
    v, f, uv = assets["vertices"], assets["faces"], assets["uvs"]
    row = {"vertices": len(v), "faces": len(f)}

    bpy.ops.wm.read_factory_settings(use_empty=True)
    start = time.perf_counter()
    bpy_io.mesh_from_arrays("mesh", v, f, uv)
    row["mesh_foreach_set_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for name in ("albedo", "normals", "shadow"):
        bpy_io.image_from_array(name, assets["albedo"] if name != "shadow" else assets["shadow"])
    row["three_images_s"] = time.perf_counter() - start

    bpy.ops.wm.read_factory_settings(use_empty=True)
    start = time.perf_counter()
    built = build_scene(SceneAssets(**assets), bpy.context.scene)
    row["build_scene_s"] = time.perf_counter() - start  # camera, mesh, 4 images, material, world, sun
    assert len(built.mesh.data.vertices) == len(v)

    start = time.perf_counter()
    pydata_mesh("pydata", v, f, uv)
    row["mesh_from_pydata_s"] = time.perf_counter() - start
    if naive:
        start = time.perf_counter()
        mesh = naive_mesh("naive", v, f, uv)
        row["mesh_naive_s"] = time.perf_counter() - start
        check = np.empty(len(v) * 3, np.float32)
        mesh.vertices.foreach_get("co", check)
        assert np.allclose(check.reshape(-1, 3), v)
    return row


def child_scene() -> dict:
    import bpy
    from invrender_addon.build.import_photo import ImportSettings, estimate, import_photo
    from invrender_addon.build.scene import set_cycles

    from invrender_core import scene as core_scene
    from invrender_core.io import load_image, resize_linear, write_png

    folder = Path(tempfile.mkdtemp(prefix="bench-scene-"))
    photo = folder / "photo.png"
    write_png(photo, resize_linear(load_image(ROOT / "samples" / "sample_photo.png").rgb, *PHOTO_SIZE))
    small = folder / "small.png"
    write_png(small, resize_linear(load_image(photo).rgb, 96, 64))
    import_photo(ImportSettings(photo=small))  # warm-up: imports, weights, first calls

    settings = ImportSettings(photo=photo)
    stages = {}
    start = time.perf_counter()
    result = estimate(settings)
    stages["load + decompose"] = time.perf_counter() - start
    decompose_stages = {k: v for k, v in result.metadata["timings_s"].items() if k != "total"}

    bpy.ops.wm.read_factory_settings(use_empty=True)
    t = time.perf_counter()
    assets = core_scene.scene_assets(result, name="photo")
    stages["scene assets (mesh, lighting)"] = time.perf_counter() - t
    from invrender_addon.build.scene import GAIN_BAKE_SAMPLES, SceneAssets, build_scene, match_photo, set_photo_gain

    t = time.perf_counter()
    built = build_scene(SceneAssets(**assets), bpy.context.scene)
    stages["build in Blender"] = time.perf_counter() - t
    t = time.perf_counter()  # what build_scene adds when it matches the photo, as the import does
    set_photo_gain(built.mesh.data.materials[0], match_photo(SceneAssets(**assets), built.collection, built.world,
                                                             built.mesh))
    stages[f"match photo (bake, {GAIN_BAKE_SAMPLES} samples)"] = time.perf_counter() - t
    set_cycles(bpy.context.scene, samples=RENDER_SAMPLES)
    t = time.perf_counter()
    bpy.ops.wm.save_as_mainfile(filepath=str(folder / "scene.blend"), check_existing=False, copy=True)
    stages["save .blend"] = time.perf_counter() - t
    t = time.perf_counter()
    bpy.context.scene.render.filepath = str(folder / "relit.png")
    bpy.ops.render.render(write_still=True)
    stages[f"Cycles render ({RENDER_SAMPLES} samples)"] = time.perf_counter() - t
    stages["total"] = time.perf_counter() - start
    return {"stages_s": stages, "decompose_stages_s": decompose_stages,
            "vertices": len(built.mesh.data.vertices), "faces": len(built.mesh.data.polygons),
            "blend_mb": (folder / "scene.blend").stat().st_size / 2**20}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the naive per-vertex mesh (a minute or more)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "scene.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind = args.child[0]
        print(json.dumps(child_builder(args.child[1] == "naive") if kind == "builder" else child_scene()))
        return

    info = common.machine()
    print(f"machine: {info['cpu']}, {info['usable_cpus']} usable of {info['logical_cpus']} logical CPUs, "
          f"load average {info['load_average_at_start'][0]:.2f} at start; python {info['python']}\n")
    builder = common.run_child(__file__, ["builder", "fast" if args.quick else "naive"], 1800.0)
    print(f"Builder, {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} grid: {builder['vertices']} vertices, {builder['faces']} "
          "triangles\n\n| step | seconds |\n|---|---|")
    for key, label in (("build_scene_s", "build_scene: camera, mesh, 4 images, material, world, sun"),
                       ("mesh_foreach_set_s", "mesh through the attribute API (bpy_io.mesh_from_arrays)"),
                       ("three_images_s", "three 1 MP float images, packed"),
                       ("mesh_from_pydata_s", "mesh through Mesh.from_pydata"),
                       ("mesh_naive_s", "mesh through per-vertex Python assignments")):
        if key in builder:
            print(f"| {label} | {builder[key]:.2f} |")
    whole = common.run_child(__file__, ["scene"], 1800.0)
    print(f"\n`invrender scene` on a {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} photo ({whole['vertices']} vertices, "
          f"{whole['faces']} triangles, .blend {whole['blend_mb']:.0f} MB)\n\n| stage | seconds |\n|---|---|")
    for stage, seconds in whole["stages_s"].items():
        print(f"| {stage} | {seconds:.2f} |")
        if stage == "load + decompose":
            for sub, sub_s in whole["decompose_stages_s"].items():
                print(f"| &nbsp;&nbsp;decompose: {sub} | {sub_s:.2f} |")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": info, "photo_size": PHOTO_SIZE, "builder": builder,
                                       "invrender_scene": whole}, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
