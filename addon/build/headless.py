"""`invrender scene`: build the scene in a fresh Blender session with the bpy module, save, render."""

from __future__ import annotations

import time

import bpy

from invrender_core.scene import write_estimate

from .import_photo import ImportSettings, estimate, import_photo
from .scene import set_cycles


def build_and_render(args, atomic_output, progress) -> None:
    """args: the parsed `invrender scene` arguments; atomic_output and progress come from the CLI."""
    settings = ImportSettings(
        photo=args.photo, depth=args.depth, normals=args.normal, camera_json=args.camera, fov_deg=args.fov,
        irn=args.irn, depth_net=args.depth_net, device=args.device, max_side=args.max_side,
        weights_dir=args.weights_dir, fusion_lambda=args.lam, mesh_step=args.mesh_step,
        relight_sun=tuple(args.relight_sun) if args.relight_sun else None)
    source = "the given depth and normal maps" if args.depth is not None else "the networks"
    progress(f"estimating geometry and lighting for {args.photo} from {source}")

    def stage_progress(stage: str, fraction: float) -> None:
        if stage != "done":
            progress(f"{stage} ({fraction:.0%})")

    result = estimate(settings, progress=stage_progress)
    if args.maps_dir:
        write_estimate(result, args.maps_dir)
        progress(f"wrote maps to {args.maps_dir}")

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    built = import_photo(settings, scene, estimate_result=result)
    set_cycles(scene, samples=args.samples)
    progress(f"built {built.collection.name}: {len(built.mesh.data.vertices)} vertices, "
             f"{len(built.mesh.data.polygons)} faces")
    # Both files appear together or not at all: the .blend is renamed only after the render succeeded.
    with atomic_output(args.output) as tmp_blend:
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp_blend.resolve()), check_existing=False, copy=True)
        if args.render:
            progress(f"rendering with Cycles ({args.samples} samples)")
            start = time.perf_counter()
            with atomic_output(args.render) as tmp_png:
                scene.render.image_settings.file_format = "PNG"
                scene.render.filepath = str(tmp_png.resolve())
                bpy.ops.render.render(write_still=True)
            progress(f"rendered {args.render} in {time.perf_counter() - start:.1f} s")
    progress(f"saved {args.output}")
