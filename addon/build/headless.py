"""`invrender scene` and `invrender face`: build in a fresh Blender session with the bpy module, save, render."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import bpy

from invrender_core.scene import publish_folder, write_estimate

from .import_photo import ImportSettings, estimate, import_photo
from .novel_view import NovelViewSettings, add_novel_view_camera
from .rig import build_face_rig
from .scene import set_cycles

VIEW_FILE = "view_{:04d}.png"
_VIEW_FILE_RE = re.compile(r"view_\d{4,}\.png")


def check_view_args(args) -> NovelViewSettings | None:
    """The novel views asked for by --novel-views, --views-dir and --orbit-deg (None: none), checked before any
    work: ValueError with a one-line message otherwise."""
    if args.novel_views is None and args.views_dir is None:
        return None
    if args.novel_views is None:
        raise ValueError("--views-dir needs --novel-views N, the number of views to render")
    if args.novel_views < 1:
        raise ValueError(f"--novel-views must be at least 1, got {args.novel_views}")
    if args.views_dir is None:
        raise ValueError("--novel-views needs --views-dir DIR, the folder to write the views to")
    settings = NovelViewSettings(kind="orbit", angle_deg=args.orbit_deg, frames=args.novel_views, frame_start=1)
    try:
        settings.check()
    except ValueError as e:
        raise ValueError(f"--orbit-deg: {e}") from e
    views_dir = Path(args.views_dir)
    if views_dir.exists():
        if not views_dir.is_dir():
            raise ValueError(f"{views_dir} exists and is not a folder: choose another --views-dir")
        others = sorted(p.name for p in views_dir.iterdir() if not _VIEW_FILE_RE.fullmatch(p.name))
        if others:
            raise ValueError(f"{views_dir} holds files that are not views (e.g. {others[0]}): choose a new or empty "
                             f"--views-dir")
    return settings


def render_views(scene: bpy.types.Scene, camera: bpy.types.Object, settings: NovelViewSettings, views_dir: Path,
                 progress, first_view: Path | None = None) -> None:
    """Render frames frame_start .. frame_start + frames - 1 through `camera` as views_dir/view_0001.png ...,
    atomically: into a temporary folder beside views_dir, renamed at the end (an existing views_dir, checked by
    `check_view_args`, is replaced). The scene's camera and frame are restored. first_view: a PNG of the scene
    rendered already from the views' first pose (the photo camera's, `--render`): copied as the first view
    instead of rendered again (the same pixels; 40 s of a 0.5-megapixel run's 160)."""
    views_dir = Path(views_dir)
    views_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{views_dir.name}.", dir=views_dir.parent))
    camera_before, frame_before, path_before = scene.camera, scene.frame_current, scene.render.filepath
    try:
        scene.camera = camera
        scene.render.image_settings.file_format = "PNG"
        for i in range(settings.frames):
            if i == 0 and first_view is not None:
                shutil.copyfile(first_view, tmp / VIEW_FILE.format(1))
                progress(f"view 1/{settings.frames} is the render from the photo camera: copied")
                continue
            start = time.perf_counter()
            scene.frame_set(settings.frame_start + i)
            scene.render.filepath = str((tmp / VIEW_FILE.format(i + 1)).resolve())
            bpy.ops.render.render(write_still=True)
            progress(f"rendered view {i + 1}/{settings.frames} in {time.perf_counter() - start:.1f} s")
        publish_folder(tmp, views_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        scene.camera, scene.render.filepath = camera_before, path_before
        scene.frame_set(frame_before)


@contextmanager
def blender_console_hidden():
    """Blender's own console lines, which it prints to the process's stdout from C (a 'Fra:' line per render stage,
    130 a frame, and 'Saved:' with the hidden temporary names), are dropped while this is open; the command's own
    progress goes to stderr. `--verbose` keeps them."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
        yield
    finally:
        _flush_c_stdout()  # what Blender buffered goes to /dev/null, not to the terminal afterwards
        os.dup2(saved, 1)
        os.close(saved)


def _flush_c_stdout() -> None:
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library to reach (Windows): its buffer flushes later
        pass


def build_and_render(args, atomic_output, progress) -> None:
    """args: the parsed `invrender scene` arguments; atomic_output and progress come from the CLI."""
    views = check_view_args(args)
    settings = ImportSettings(
        photo=args.photo, depth=args.depth, normals=args.normal, camera_json=args.camera, fov_deg=args.fov,
        irn=args.irn, depth_net=args.depth_net, shadow_net=args.shadow_net, device=args.device, max_side=args.max_side,
        weights_dir=args.weights_dir, fusion_lambda=args.lam, mesh_step=args.mesh_step,
        background_band=args.background_band,
        relight_sun=tuple(args.relight_sun) if args.relight_sun else None, sun_to_sky=args.sun_to_sky,
        match_photo=args.match_photo)
    source = "the given depth and normal maps" if args.depth is not None else "the networks"
    progress(f"estimating geometry and lighting for {args.photo} from {source}")

    def stage_progress(stage: str, fraction: float) -> None:
        if stage != "done":
            progress(f"{stage} ({fraction:.0%})")

    result = estimate(settings, progress=stage_progress)
    for warning in result.metadata.get("warnings", []):
        progress(f"warning: {warning}")

    def quiet():
        return nullcontext() if getattr(args, "verbose", False) else blender_console_hidden()

    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    with quiet():  # the photo match's bake prints an 'Info:' line
        built = import_photo(settings, scene, estimate_result=result)
    set_cycles(scene, samples=args.samples, denoise=True)
    progress(f"built {built.collection.name}: {len(built.mesh.data.vertices)} vertices, "
             f"{len(built.mesh.data.polygons)} faces")
    for warning in built.warnings:
        progress(f"warning: {warning}")
    if built.photo_gain is not None:
        progress("matched the photo's brightness: albedo gain " + " ".join(f"{g:.2f}" for g in built.photo_gain)
                 + " (red, green, blue)")
    novel_camera = None
    if views is not None:
        novel_camera = add_novel_view_camera(scene, built, views)
        # The .blend plays the novel views; the photo camera stays the active one.
        scene.frame_start, scene.frame_end = views.frame_start, views.frame_start + views.frames - 1
        progress(f"added {novel_camera.name} ({views.frames} frames, {views.angle_deg:g} degree orbit)")
    # All outputs appear together or not at all: the .blend is renamed only after the renders succeeded.
    with atomic_output(args.output) as tmp_blend, quiet():
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp_blend.resolve()), check_existing=False, copy=True)
        if args.render:
            progress(f"rendering with Cycles ({args.samples} samples)")
            start = time.perf_counter()
            with atomic_output(args.render) as tmp_png:
                scene.render.image_settings.file_format = "PNG"
                scene.render.filepath = str(tmp_png.resolve())
                bpy.ops.render.render(write_still=True)
            progress(f"rendered {args.render} in {time.perf_counter() - start:.1f} s")
        if views is not None:
            progress(f"rendering {views.frames} novel views with Cycles ({args.samples} samples)")
            render_views(scene, novel_camera, views, args.views_dir, progress,
                         first_view=Path(args.render) if args.render else None)
            progress(f"wrote {views.frames} views to {args.views_dir}")
        if args.maps_dir:
            write_estimate(result, args.maps_dir)
            progress(f"wrote maps to {args.maps_dir}")
    progress(f"saved {args.output}")


def save_face_rig(rig, output: Path, atomic_output, progress) -> None:
    """`invrender face -o RIG.blend`: the FaceRig built in an empty scene, saved atomically."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    built = build_face_rig(rig, bpy.context)
    for warning in built.warnings:
        progress(f"warning: {warning}")
    progress(f"built {built.collection.name}: {len(built.mesh.data.vertices)} vertices, "
             f"{len(built.mesh.data.shape_keys.key_blocks) - 1} expression shape keys, {rig.num_frames} keyed frames")
    with atomic_output(output) as tmp_blend, blender_console_hidden():
        bpy.ops.wm.save_as_mainfile(filepath=str(tmp_blend.resolve()), check_existing=False, copy=True)
    progress(f"saved {output}")
