"""The `invrender` command.

Conventions: a failure prints one line to stderr and exits with status 2 (`--verbose` shows the
traceback); outputs are written to a temporary name and renamed at the end, so nothing partial is left.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import traceback
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .face.pipeline import FaceSettings
from .fusion import DEFAULT_LAMBDA
from .io.folders import missing_folders, remove_empty_folders, temporary_beside
from .relight import DEFAULT_REFINER, DEFAULT_SHADOW_REFINER, DEFAULT_SHADOW_SAMPLES, DEFAULT_SUN_TO_SKY
from .scene import (  # scene imports torch only when it runs
    DEFAULT_BACKGROUND_BAND,
    DEFAULT_DEPTH,
    DEFAULT_IRN,
    DEFAULT_MAX_SIDE,
    DEFAULT_SHADOW_NET,
    NETWORK_FUSION_LAMBDA,
    at_input_exposure,
)

EXIT_FAILURE = 2


class CLIError(Exception):
    """A failure whose message is already the one line the user should read."""


def _cannot_write(path: Path, error: OSError) -> CLIError:
    """The one line for a failed write, naming the output (not a temporary name) and the system's reason."""
    cause = error
    while cause is not None and not getattr(cause, "strerror", None):
        cause = cause.__cause__
    reason = cause.strerror if cause is not None else str(error)
    return CLIError(f"cannot write {path}: {reason}; choose a place with room that you can write to")


@contextmanager
def atomic_output(path: Path):
    """Yield a temporary path beside `path`; rename it to `path` only if the block succeeds. Folders it had to
    create for `path` are removed again when the block fails."""
    from .io.errors import ImageWriteError

    if path.is_dir():
        raise CLIError(f"{path} is a folder: give a file name")
    created = missing_folders(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_beside(path)
    except OSError as e:
        remove_empty_folders(created)
        raise _cannot_write(path, e) from e
    tmp.unlink()  # only the unique name is wanted: an existing file makes Blender keep a .blend1 backup
    done = False
    try:
        try:
            yield tmp
            os.replace(tmp, path)
        except ImageWriteError as e:  # names the temporary file: say which output failed instead
            raise _cannot_write(path, e) from e
        except OSError as e:
            if e.filename is not None and str(tmp) in (str(e.filename), str(e.filename2)):
                raise _cannot_write(path, e) from e
            raise
        done = True
    finally:
        tmp.unlink(missing_ok=True)
        if not done:
            remove_empty_folders(created)


def check_distinct(outputs, inputs) -> None:
    """CLIError unless no output (paths or None) is one of the inputs: a command never overwrites what it reads."""
    inputs = [Path(p).resolve() for p in inputs if p is not None]
    for output in outputs:
        if output is not None and Path(output).resolve() in inputs:
            raise CLIError(f"the output {output} is also an input: give another output path")


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cmd_fuse(args) -> None:
    import numpy as np

    from . import fusion, geometry
    from .camera import Camera
    from .io import read_exr, write_exr
    from .scene import read_json

    check_distinct([args.output, args.mesh], [args.depth, args.normal, args.camera, args.confidence])
    depth = read_exr(args.depth)
    normals = read_exr(args.normal)
    camera = Camera.from_dict(read_json(args.camera))
    confidence = read_exr(args.confidence) if args.confidence else None
    if depth.ndim != 2 or normals.ndim != 3:
        raise CLIError(f"{args.depth} must be a one-channel (Y) EXR and {args.normal} an RGB EXR; "
                       f"got shapes {depth.shape} and {normals.shape}")
    _progress(f"fusing {depth.shape[1]}x{depth.shape[0]} depth with normals (lambda={args.lam})")
    start = time.perf_counter()
    fused = fusion.fuse(depth, normals, camera, confidence=confidence, lam=args.lam)
    _progress(f"fused in {time.perf_counter() - start:.2f} s")
    with atomic_output(args.output) as tmp:
        write_exr(tmp, fused.astype(np.float32))
        if args.mesh:
            with atomic_output(args.mesh) as tmp_mesh:
                geometry.write_ply(tmp_mesh, geometry.grid_mesh(fused, camera))
    _progress(f"wrote {args.output}" + (f" and {args.mesh}" if args.mesh else ""))


def _decompose(args, image, irn: str, depth: str, camera=None):
    """scene.decompose with the shared network options of `args`, reporting each stage as a progress line."""
    from .scene import decompose

    def progress(stage: str, fraction: float) -> None:
        if stage != "done":
            _progress(f"{stage} ({fraction:.0%})")

    estimate = decompose(image, fov_deg=args.fov, camera=camera, device=args.device, max_side=args.max_side,
                         irn=irn, depth=depth, shadow=args.shadow_net,
                         weights_dir=args.weights_dir, fusion_lambda=args.lam, progress=progress)
    _print_warnings(estimate.metadata.get("warnings", []))  # in camera.json too
    return estimate


def _print_warnings(warnings: list[str]) -> None:
    """Warnings (an estimate's: unreliable input, fusion; a face fit's) on stderr."""
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr, flush=True)


def cmd_decompose(args) -> None:
    from .scene import check_replaceable, write_estimate

    check_replaceable(args.output)  # before the networks run, not after
    _progress(f"decomposing {args.image}")
    estimate = _decompose(args, args.image, args.irn, args.depth)
    try:
        write_estimate(estimate, args.output)  # atomic: the folder appears complete or not at all
    except OSError as e:
        raise _cannot_write(args.output, e) from e
    timings = estimate.metadata["timings_s"]
    w, h = estimate.metadata["working_size"]
    _progress(f"wrote {args.output} ({estimate.camera.width}x{estimate.camera.height}, networks at {w}x{h} on "
              f"{estimate.metadata['device']}, {timings['total']:.1f} s)")


def cmd_scene(args) -> None:
    if (args.depth is None) != (args.normal is None):
        raise CLIError("give both --depth and --normal for the photo, or neither to estimate them with the networks")
    if args.output.suffix.lower() != ".blend":
        raise CLIError(f"-o must name a .blend file, got {args.output}")
    if args.render is not None and args.render.suffix.lower() != ".png":
        raise CLIError(f"--render must name a .png file, got {args.render}")
    check_distinct([args.output, args.render], [args.photo, args.depth, args.normal, args.camera])
    _check_sun(args.relight_sun, "--relight-sun")
    try:  # the Blender side lives in the add-on package; the core itself never imports bpy
        from invrender_addon.build import headless
    except ImportError as e:
        raise CLIError(f"`invrender scene` needs Blender's Python module ({e}): "
                       "pip install 'invrender[blender]'") from e
    headless.build_and_render(args, atomic_output=atomic_output, progress=_progress)


def cmd_face(args) -> None:
    from .face import pipeline, rig
    from .scene import resolve_device

    if args.output is None and args.export_npz is None:
        raise CLIError("give -o RIG.blend, --export-npz PARAMS.npz or both")
    if args.output is not None and args.output.suffix.lower() != ".blend":
        raise CLIError(f"-o must name a .blend file, got {args.output}")
    check_distinct([args.output, args.export_npz], [args.input, args.model, args.expressions])
    build_rig_file = None
    if args.output is not None:
        try:  # the Blender side lives in the add-on package; the core itself never imports bpy
            from invrender_addon.build.headless import save_face_rig as build_rig_file
        except ImportError as e:
            raise CLIError(f"writing a .blend needs Blender's Python module ({e}): pip install 'invrender[blender]', "
                           "or write only --export-npz") from e
    settings = FaceSettings(start=args.start, end=args.end, step=args.step, smoothing=args.smoothing,
                            weights=args.weights, weights_dir=args.weights_dir,
                            device=str(resolve_device(args.device)), face_box=args.face_box)
    last = [-1.0]

    def progress(stage: str, fraction: float) -> None:
        if fraction - last[0] >= 0.1 or stage == "done":
            last[0] = fraction
            _progress(f"{stage} ({fraction:.0%})")

    start = time.perf_counter()
    fitted = pipeline.fit_face_files(args.input, args.model, settings, args.expressions, args.fov, progress=progress)
    _progress(f"fitted {fitted.num_frames} frames in {time.perf_counter() - start:.1f} s "
              f"(focal {fitted.focal[0]:.0f} px)")
    _print_warnings(fitted.warnings)
    with ExitStack() as outputs:  # both files appear together, or neither
        if args.export_npz is not None:
            rig.save_npz(fitted, outputs.enter_context(atomic_output(args.export_npz)))
        if build_rig_file is not None:
            build_rig_file(fitted, args.output, atomic_output=atomic_output, progress=_progress)
    if args.export_npz is not None:
        _progress(f"wrote {args.export_npz}")


def _numbers(text: str, count: int, form: str) -> tuple[float, ...]:
    """`count` comma-separated numbers, or argparse's error naming the expected `form`."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise argparse.ArgumentTypeError(f"expected {count} comma-separated numbers {form}, got {text!r}")
    return values


def _face_box(text: str) -> tuple[float, float, float, float]:
    values = _numbers(text, 4, "X,Y,WIDTH,HEIGHT (pixels)")
    if not (values[2] > 0 and values[3] > 0):
        raise argparse.ArgumentTypeError(f"the face box needs a positive width and height, got {text!r}")
    return values


def _vector3(text: str) -> tuple[float, float, float]:
    values = _numbers(text, 3, "X,Y,Z")
    if not all(math.isfinite(v) for v in values) or not any(values):
        raise argparse.ArgumentTypeError(f"expected a finite, non-zero direction X,Y,Z, got {text!r}")
    return values


def _number_type(kind, minimum, inclusive: bool):
    """An argparse type: a finite `kind` (int or float) >= minimum (or > minimum when not inclusive)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
            bound = f">= {minimum}" if inclusive else f"> {minimum}"
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} {bound}, "
                                             f"got {text!r}")
        return value
    return parse


_positive_int = _number_type(int, 0, inclusive=False)
_non_negative_int = _number_type(int, 0, inclusive=True)
_positive_float = _number_type(float, 0.0, inclusive=False)
_non_negative_float = _number_type(float, 0.0, inclusive=True)


def _check_sun(values, flag: str) -> None:
    """CLIError unless (elevation, azimuth) in degrees are finite and the sun is above the horizon (elevation in
    [0, 90], as the add-on's sliders): neither relighting models night, a sun below it would still light."""
    if values is None:
        return
    elevation, azimuth = values
    if not (math.isfinite(elevation) and math.isfinite(azimuth) and 0.0 <= elevation <= 90.0):
        raise CLIError(f"{flag} takes the elevation in [0, 90] degrees (the sun above the horizon) and a finite "
                       f"azimuth, got {elevation:g} {azimuth:g}")


def _read_sky(path: Path):
    """The SH lighting (9, 3) in the camera frame of a lighting.json (`--sky`)."""
    import numpy as np

    from . import sh
    from .scene import read_json

    data = read_json(path)
    try:
        L = np.asarray(data["sh"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as e:
        raise CLIError(f"{path} has no 9x3 \"sh\" list: give a lighting.json written by `invrender decompose`") from e
    if L.shape != (9, 3):
        raise CLIError(f"{path}: \"sh\" must be 9x3, got {L.shape}")
    return sh.rotation(sh.CAMERA_TO_WORLD.T) @ L if data.get("frame", "camera") == "world" else L


def _sky_lighting(relighter, args, sky_sh=None):
    """The Lighting whose sky (and sun colour) the relit photo gets: sky_sh (9, 3) read from --sky, --sky-sample,
    or the photo's."""
    from .illumination_prior import IlluminationPrior

    if sky_sh is not None:
        return relighter.lighting_like_photo(sky_sh)
    if args.sky_sample is not None:
        return relighter.lighting_like_photo(IlluminationPrior.load().sample(1, args.sky_sample)[0])
    return relighter.original


def _refiners(args, device) -> tuple:
    """(relighting refiner, shadow refiner) as --refine / --shadow-refine name them, None where turned off."""
    from .nets import relight_refine, shadow_refine

    return (None if args.no_refine else relight_refine.load(args.refine, args.weights_dir, device),
            None if args.no_shadow_refine else shadow_refine.load(args.shadow_refine, args.weights_dir, device))


def cmd_relight(args) -> None:
    import numpy as np

    from . import relight
    from .camera import Camera
    from .io import load_image, write_png
    from .scene import read_json, resolve_device

    if args.frames is not None and (args.frames < 1 or args.to is None or args.sun is None):
        raise CLIError("--frames N needs N >= 1, --sun ELEV AZIM (the first frame) and --to ELEV AZIM (the last)")
    if args.frames is None and args.to is not None:
        raise CLIError("--to needs --frames N (the number of frames from --sun to --to)")
    video = args.output.suffix.lower() == ".mp4"
    if video and args.frames is None:
        raise CLIError("an .mp4 output needs --frames N; give a .png for one frame")
    if not video and args.output.suffix.lower() != ".png":
        raise CLIError(f"write a .png (or an .mp4 with --frames), not {args.output.name}")
    _check_sun(args.sun, "--sun")
    _check_sun(args.to, "--to")
    if args.sun_dir is not None and np.dot(args.sun_dir, args.up) < 0:
        raise CLIError(f"--sun-dir {','.join(f'{v:g}' for v in args.sun_dir)} points below the horizon (against "
                       "--up): relighting does not model night; give a direction towards the sky")
    outputs = [args.output] if args.frames is None or video else _frame_paths(args.output, args.frames)
    check_distinct(outputs, [args.image, args.camera, args.sky])
    image = load_image(args.image)
    camera = Camera.from_dict(read_json(args.camera)) if args.camera else None
    sky_sh = _read_sky(args.sky) if args.sky is not None else None  # files and weights fail before the networks run
    refine, shadow_refine = _refiners(args, resolve_device(args.device))
    _progress(f"decomposing {args.image}")
    estimate = _decompose(args, image, args.irn, args.depth_net, camera=camera)
    start = time.perf_counter()
    relighter = relight.Relighter(estimate, shadow_samples=args.shadow_samples, sun_to_sky=args.sun_to_sky,
                                  refine=refine, shadow_refine=shadow_refine)
    base = _sky_lighting(relighter, args, sky_sh)
    if args.frames is not None:
        frames = relighter.time_of_day(tuple(args.sun), tuple(args.to), args.frames, up=args.up, base=base)
        written = _write_sequence(args.output, frames, args.frames, args.fps, estimate.metadata)
    else:
        if args.sun_dir is not None:
            lighting = relighter.sun_towards(np.asarray(args.sun_dir), base, up=args.up)
        else:
            lighting = relighter.sun_at(*args.sun, up=args.up, base=base)
        with atomic_output(args.output) as tmp:
            write_png(tmp, at_input_exposure(relighter.render(lighting).image, estimate.metadata))
        written = str(args.output)
    _progress(f"wrote {written} ({time.perf_counter() - start:.1f} s relighting"
              + (", refined" if refine is not None else ", not refined")
              + (", shadows as marched" if shadow_refine is None else "") + ")")


def _write_sequence(output: Path, frames, count: int, fps: float, metadata: dict) -> str:
    """Frames as OUTPUT_0001.png ... beside `output` (a .png) or as one MP4 (`output` .mp4), each at the photo's
    exposure for the networks (`scene.at_input_exposure` with the estimate's metadata); says what it wrote."""
    import numpy as np

    from .io import write_png
    from .io._cv import cv2
    from .io.images import _to_srgb8

    def announce(k, sun):
        _progress(f"frame {k + 1}/{count}: sun at elevation {sun[0]:.1f}, azimuth {sun[1]:.1f}")

    if output.suffix.lower() == ".png":
        # All frames appear together or none: each is renamed into place only after the last was written.
        with ExitStack() as outputs:
            for k, ((sun, relit), path) in enumerate(zip(frames, _frame_paths(output, count), strict=True)):
                announce(k, sun)
                write_png(outputs.enter_context(atomic_output(path)), at_input_exposure(relit.image, metadata))
        last = f" ... {output.stem}_{count:04d}.png" if count > 1 else ""
        return f"{output.stem}_0001.png{last} in {output.parent}"
    writer = None
    padded = ""
    with atomic_output(output) as tmp:
        try:
            for k, (sun, relit) in enumerate(frames):
                announce(k, sun)
                rgb = _to_srgb8(at_input_exposure(relit.image, metadata))  # (H, W, 3) uint8 sRGB
                h, w = rgb.shape[:2]
                if h % 2 or w % 2:
                    # MPEG-4 holds even sizes only: the writer dropped an odd last row and column, so they are
                    # repeated instead and the video keeps every pixel of the photo.
                    rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
                    padded = f" ({w}x{h} padded to {rgb.shape[1]}x{rgb.shape[0]}: MPEG-4 needs even sizes)"
                if writer is None:
                    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                             (rgb.shape[1], rgb.shape[0]))
                    if not writer.isOpened():
                        raise CLIError(f"OpenCV cannot write MP4 video to {output}: write PNG frames instead "
                                       f"(-o relit.png)")
                writer.write(np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV wants BGR
        finally:
            if writer is not None:
                writer.release()
        # OpenCV's writer reports no failed write (a full disk leaves an unplayable file): read the video back.
        reader = cv2.VideoCapture(str(tmp))
        try:
            written = int(reader.get(cv2.CAP_PROP_FRAME_COUNT)) if reader.isOpened() else 0
        finally:
            reader.release()
        if written != count:
            raise CLIError(f"the MP4 video written to {output} holds {written} of {count} frames (a full disk?): "
                           "make room, or write PNG frames instead (-o relit.png)")
    return f"{output}{padded}"


def _frame_paths(output: Path, count: int) -> list[Path]:
    """OUTPUT_0001.png ... for a sequence written as PNG frames beside `output`."""
    return [output.with_name(f"{output.stem}_{k + 1:04d}.png") for k in range(count)]


def cmd_weights_import(args) -> None:
    from .nets import weights

    _progress(f"importing {args.model} weights from {args.checkpoint}")
    out = weights.import_megadepth_checkpoint(args.checkpoint, args.weights_dir)  # atomic; registers it
    _progress(f"wrote {out} and registered it as {weights.MEGADEPTH_NAME!r}")


def cmd_weights_list(args) -> None:
    from .nets import weights

    folder = args.weights_dir if args.weights_dir is not None else weights.user_weights_dir()
    # The user's folder first, as loading searches it first; then the weights shipped with the package.
    for where, label in [(folder, ""), (weights.shipped_weights_dir(), "  (shipped)")]:
        entries = weights.read_registry(where / weights.REGISTRY_FILE)
        if not entries:
            print(f"no weights registered in {where}")
        for entry in entries.values():
            present = "" if (where / entry.file).is_file() else "  (file missing)"
            print(f"{entry.name}\t{where / entry.file}\tsha256 {entry.sha256[:12]}\t{entry.licence}{label}{present}")


def _add_weights_options(parser: argparse.ArgumentParser, depth_flag: str, when: str = "") -> None:
    """--irn, the depth network's option (`depth_flag`: `scene` and `relight` keep --depth for other uses) and
    --shadow-net."""
    parser.add_argument("--irn", default=DEFAULT_IRN, metavar="NAME|PATH", help=f"{when}InverseRenderNet "
                        f"weights: registry name or .safetensors file (default {DEFAULT_IRN})")
    parser.add_argument(depth_flag, default=DEFAULT_DEPTH, metavar="NAME|PATH", help=f"{when}depth network "
                        f"weights: registry name or .safetensors file (default {DEFAULT_DEPTH})")
    parser.add_argument("--shadow-net", default=DEFAULT_SHADOW_NET, metavar="NAME|PATH|none",
                        type=lambda value: None if value == "none" else value, help=f"{when}"
                        "network that finds the photo's cast shadows, so that the albedo is free of them: registry "
                        f"name or .safetensors file, or none for the IRN's shadow map (default {DEFAULT_SHADOW_NET})")


def _add_sun_to_sky(parser, when: str = "") -> None:
    """--sun-to-sky, shared by relight and scene (`relight.place_sun`); `when` starts its help."""
    parser.add_argument("--sun-to-sky", type=_non_negative_float, default=DEFAULT_SUN_TO_SKY, metavar="RATIO",
                        help=f"{when}the new sun's irradiance as a multiple of the sky's mean (clear day: 5 to 13, "
                        f"hazy: 1 to 3; default {DEFAULT_SUN_TO_SKY:g}: a photo does not show its own)")


def _add_network_options(parser: argparse.ArgumentParser, with_lambda: bool = True) -> None:
    """Options shared by the commands that run the networks (decompose, scene without maps)."""
    parser.add_argument("--fov", type=float, help="horizontal field of view in degrees (default: EXIF focal "
                        "length, else 60)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where the networks run (default auto: CUDA when available)")
    parser.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE,
                        help=f"longer side of the networks' working resolution (default {DEFAULT_MAX_SIDE}; "
                        "rounded to a multiple of 16)")
    parser.add_argument("--weights-dir", type=Path, help="weights folder searched before the shipped weights "
                        "(default $INVRENDER_WEIGHTS_DIR or ~/.local/share/invrender/models)")
    if with_lambda:
        parser.add_argument("--lambda", dest="lam", type=float, default=NETWORK_FUSION_LAMBDA,
                            help="fusion weight of the networks' depth against their normals (default "
                            f"{NETWORK_FUSION_LAMBDA})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invrender", description="Photos to relightable 3D scenes.")
    parser.add_argument("--verbose", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fuse = sub.add_parser("fuse", help="fuse a depth map with a normal map (Nehab et al. 2005)")
    fuse.add_argument("--depth", type=Path, required=True, help="planar depth, one-channel EXR")
    fuse.add_argument("--normal", type=Path, required=True, help="camera-frame normals, RGB EXR")
    fuse.add_argument("--camera", type=Path, required=True, help="camera.json (width, height, fx, fy, cx, cy)")
    fuse.add_argument("--confidence", type=Path, help="per-pixel depth confidence in [0, 1], one-channel EXR")
    fuse.add_argument("-o", "--output", type=Path, required=True, help="fused depth EXR to write")
    fuse.add_argument("--lambda", dest="lam", type=float, default=DEFAULT_LAMBDA,
                      help=f"weight of the depth against the normals (default {DEFAULT_LAMBDA})")
    fuse.add_argument("--mesh", type=Path, help="also write the fused mesh as a binary PLY")
    fuse.set_defaults(func=cmd_fuse)

    decompose = sub.add_parser("decompose", help="one photo -> albedo, shading, shadow, normals, depth, lighting "
                               "(EXR + JSON) with the networks")
    decompose.add_argument("image", type=Path, help="the photo (PNG, JPEG, TIFF, WebP, EXR, HDR)")
    decompose.add_argument("-o", "--output", type=Path, required=True,
                           help="output folder (written atomically; an existing one is replaced only if it holds "
                           "a previous output)")
    _add_weights_options(decompose, "--depth")
    _add_network_options(decompose)
    decompose.set_defaults(func=cmd_decompose)

    scene = sub.add_parser("scene", help="build a relightable .blend from a photo (networks, or depth and normal maps)")
    scene.add_argument("photo", type=Path)
    scene.add_argument("--depth", type=Path, help="planar depth of the photo, one-channel EXR (default: estimated "
                       "by the networks)")
    scene.add_argument("--normal", type=Path, help="camera-frame normals of the photo, RGB EXR (default: estimated)")
    _add_weights_options(scene, "--depth-net", when="without maps: ")
    scene.add_argument("--camera", type=Path, help="camera.json with the photo's intrinsics")
    scene.add_argument("-o", "--output", type=Path, required=True, help=".blend file to write")
    scene.add_argument("--render", type=Path, help="render the scene with Cycles to this PNG")
    scene.add_argument("--samples", type=_positive_int, default=32, help="Cycles samples for --render (default 32)")
    scene.add_argument("--relight-sun", type=float, nargs=2, metavar=("ELEV_DEG", "AZIM_DEG"),
                       help="a new sun at this elevation and azimuth (0 = behind the camera, 90 = right), placed "
                       "as `invrender relight` and the add-on's Relight place it")
    _add_sun_to_sky(scene, "with --relight-sun: ")
    scene.add_argument("--no-match-photo", dest="match_photo", action="store_false",
                       help="keep the estimate's albedo as it is; by default a gain on it makes the scene render as "
                       "bright as the photo under the photo's own light")
    scene.add_argument("--lambda", dest="lam", type=float,
                       help=f"fusion weight of the depth against the normals (default {DEFAULT_LAMBDA} with "
                       f"--depth and --normal maps, {NETWORK_FUSION_LAMBDA} with the networks'; lower for noisier "
                       "depth)")
    scene.add_argument("--mesh-step", type=int, default=1, help="one vertex every N pixels (default 1)")
    scene.add_argument("--background-band", type=float, default=DEFAULT_BACKGROUND_BAND, metavar="SHARE",
                       help="how far a hidden background layer continues the background in behind foreground "
                            "objects, for new viewpoints, as a share of the photo's longer side (default "
                            f"{DEFAULT_BACKGROUND_BAND}; 0: none)")
    scene.add_argument("--maps-dir", type=Path, help="also write the estimated maps (EXR + JSON) here")
    scene.add_argument("--novel-views", type=int, metavar="N", help="also render N frames of a camera orbiting "
                       "the reconstruction, starting at the photo's viewpoint (needs --views-dir)")
    scene.add_argument("--views-dir", type=Path, help="folder for the --novel-views PNGs view_0001.png ... "
                       "(written atomically; an existing one is replaced only if it holds nothing but views)")
    scene.add_argument("--orbit-deg", type=float, default=20.0, help="orbit angle of the novel views in degrees "
                       "(positive: the camera moves to its right; default 20)")
    _add_network_options(scene, with_lambda=False)
    scene.set_defaults(func=cmd_scene)

    relight = sub.add_parser("relight", help="relight a photo under a new sun and sky in 2D (seconds, no Blender)")
    relight.add_argument("image", type=Path, help="the photo (PNG, JPEG, TIFF, WebP, EXR, HDR)")
    relight.add_argument("-o", "--output", type=Path, required=True,
                         help="relit PNG; with --frames N: OUT.png writes OUT_0001.png ... or OUT.mp4 one video")
    where = relight.add_mutually_exclusive_group(required=True)
    where.add_argument("--sun-dir", type=_vector3, metavar="X,Y,Z",
                       help="direction towards the sun in the camera frame (x right, y up, z towards the viewer)")
    where.add_argument("--sun", type=float, nargs=2, metavar=("ELEV_DEG", "AZIM_DEG"),
                       help="sun elevation above the horizon and azimuth (0 = behind the camera, 90 = right, "
                       "180 = facing the camera)")
    relight.add_argument("--up", type=_vector3, default=(0.0, 1.0, 0.0), metavar="X,Y,Z",
                         help="the world's up in the camera frame, for --sun and the horizon of --sun-dir (default "
                         "0,1,0: a level camera)")
    relight.add_argument("--camera", type=Path, help="camera.json with the photo's intrinsics (else --fov, EXIF, 60)")
    sky = relight.add_mutually_exclusive_group()
    sky.add_argument("--sky", type=Path, metavar="LIGHTING_JSON",
                     help="take sky and sun colour from this lighting.json (default: the photo's own, turned with "
                     "the sun)")
    sky.add_argument("--sky-sample", type=_non_negative_int, metavar="SEED",
                     help="take sky and sun colour from a sample of the natural-illumination prior")
    _add_sun_to_sky(relight)
    relight.add_argument("--frames", type=int, metavar="N",
                         help="a time-of-day sequence of N frames from --sun to --to")
    relight.add_argument("--to", type=float, nargs=2, metavar=("ELEV_DEG", "AZIM_DEG"),
                         help="the last frame's sun (the azimuth turns the shorter way round)")
    relight.add_argument("--fps", type=_positive_float, default=12.0, help="frame rate of an MP4 output (default 12)")
    relight.add_argument("--shadow-samples", type=_positive_int, default=DEFAULT_SHADOW_SAMPLES,
                         help="sun directions per pixel for soft shadows (default "
                         f"{DEFAULT_SHADOW_SAMPLES})")
    relight.add_argument("--refine", default=DEFAULT_REFINER, metavar="NAME|PATH",
                         help=f"refinement network weights (default {DEFAULT_REFINER})")
    relight.add_argument("--no-refine", action="store_true", help="the simple image model only, no network")
    relight.add_argument("--shadow-refine", default=DEFAULT_SHADOW_REFINER, metavar="NAME|PATH",
                         help=f"shadow refiner weights: which marched cast shadows to keep (default "
                         f"{DEFAULT_SHADOW_REFINER})")
    relight.add_argument("--no-shadow-refine", action="store_true",
                         help="cast shadows as marched through the depth, no network")
    _add_weights_options(relight, "--depth-net")
    _add_network_options(relight)
    relight.set_defaults(func=cmd_relight)

    face = sub.add_parser("face", help="fit a 3D morphable face model to a video, image or folder of frames and "
                          "build an animated face rig (.blend) and/or its parameters (.npz)")
    face.add_argument("input", type=Path, help="a video (.mp4, .mov, ...), an image or a folder of frames")
    face.add_argument("--model", type=Path, required=True, help="the morphable model: Surrey .bin (eos), BFM 2009 "
                      ".mat, BFM 2017 .h5, FLAME .pkl or InvRender .npz")
    face.add_argument("--expressions", type=Path, help="Surrey expression blendshapes (default: "
                      "expression_blendshapes_<V>.bin beside the model)")
    face.add_argument("-o", "--output", type=Path, help="the face rig .blend to write")
    face.add_argument("--export-npz", type=Path, metavar="PARAMS.npz", help="also write the fitted parameters "
                      "(identity, per-frame expression, pose, focal, vertices, SH) as .npz")
    face.add_argument("--start", type=int, default=0, help="first frame (default 0)")
    face.add_argument("--end", type=int, help="frame to stop before (default: the last frame)")
    face.add_argument("--step", type=int, default=1, help="use every N-th frame (default 1)")
    face.add_argument("--smoothing", type=_non_negative_float, default=FaceSettings().smoothing,
                      help="temporal smoothing, Gaussian sigma in frames (0 = none; default %(default)s)")
    face.add_argument("--fov", type=float, help="horizontal field of view of the camera in degrees (default: "
                      "estimated from the fit)")
    face.add_argument("--face-box", type=_face_box, metavar="X,Y,W,H",
                      help="rectangle around the face to fit in the first frame, in pixels from the top-left corner "
                      "(brows to chin, ear to ear): when the frame shows several faces or the detector misses it")
    face.add_argument("--weights", default=FaceSettings().weights, metavar="NAME|PATH",
                      help="correspondence network weights (default %(default)s)")
    face.add_argument("--weights-dir", type=Path, help="weights folder searched before the shipped weights")
    face.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                      help="where the network runs (default auto: CUDA when available)")
    face.set_defaults(func=cmd_face)

    weights = sub.add_parser("weights", help="import and list network weights (safetensors registry)")
    weights_sub = weights.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    w_import = weights_sub.add_parser("import", help="convert a released checkpoint to safetensors and register it")
    w_import.add_argument("model", choices=["megadepth"], help="which network the checkpoint is for")
    w_import.add_argument("checkpoint", type=Path, help="the released .pth (e.g. best_generalization_net_G.pth)")
    w_import.add_argument("--weights-dir", type=Path, help="weights folder (default $INVRENDER_WEIGHTS_DIR or "
                          "~/.local/share/invrender/models)")
    w_import.set_defaults(func=cmd_weights_import)
    w_list = weights_sub.add_parser("list", help="list the registered weights")
    w_list.add_argument("--weights-dir", type=Path, help="weights folder (default as for import)")
    w_list.set_defaults(func=cmd_weights_list)
    from .train.cli import add_train_parser  # argparse only: torch is imported when training runs

    add_train_parser(sub)
    return parser


def _checkpoint_file() -> str:
    from .train.trainer import CHECKPOINT_FILE  # torch is loaded already when training was interrupted

    return CHECKPOINT_FILE


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # --verbose is the top-level parser's, but is taken anywhere: users add it at the end of a failed command.
    verbose = "--verbose" in argv
    args = build_parser().parse_args((["--verbose"] if verbose else []) + [a for a in argv if a != "--verbose"])
    try:
        args.func(args)
    except KeyboardInterrupt:
        if args.command != "train":
            note = "; no output was written"
        elif (Path(args.out) / _checkpoint_file()).exists():
            note = "; the last checkpoint is kept (resume with --resume)"
        else:
            note = "; before the first checkpoint, so there is nothing to resume"
        print("invrender: interrupted" + note, file=sys.stderr)
        return EXIT_FAILURE
    except (CLIError, ValueError, OSError, MemoryError, FloatingPointError) as e:
        if args.verbose:
            traceback.print_exc()
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"invrender {args.command}: error: {message}", file=sys.stderr)
        return EXIT_FAILURE
    return 0


if __name__ == "__main__":
    sys.exit(main())
