"""Photo -> SceneEstimate: the one pipeline the add-on and the CLI call.

`decompose` runs the networks on one photo: InverseRenderNet (albedo, normals, shadow, SH lighting) and the
MegaDepth-style hourglass (relative depth) at a working resolution, edge-aware upsampling to the photo's
resolution (`filtering`), the IRN's SH lighting reduced to what the photo observes (order 1), the sky (found
in the photo, `sky.detect_sky`, and where the depth is far; grown to its edges at the photo's resolution,
`sky.extend_sky`), the IRN's albedo with the photo's detail above the working resolution (so texture survives),
and Nehab fusion of the network depth with the network normals, weighted
by how well the two networks agree. `estimate_from_geometry` is the RGB-D path: depth and normal maps from
the caller (e.g. a capture) are fused, SH lighting is fitted and albedo derived.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from . import filtering, fusion, geometry, sh
from .camera import Camera
from .illumination_prior import IlluminationPrior
from .io import LoadedImage, linear_to_srgb, load_image, resize_linear, save_preview_sheet, srgb_to_linear, write_exr
from .io.folders import missing_folders, remove_empty_folders
from .sky import SKY_EDGE_REACH, detect_sky, extend_sky

# Albedo and light intensity are only known up to a common scale; we fix it by giving the median
# albedo this luminance (a typical outdoor material).
MEDIAN_ALBEDO_LUMINANCE = 0.4
MIN_SHADING = 1e-3
# Share of the lighting's directional part that becomes a sun lamp (the rest stays in the environment).
DEFAULT_SUN_FRACTION = 0.6
# How far the background layer reaches in behind occluders, as a share of the photo's longer side.
DEFAULT_BACKGROUND_BAND = 0.04
BACKGROUND_MAX_SIDE = 640


@dataclass
class SceneEstimate:
    """Everything the scene builder needs, at the photo's resolution.

    image (H, W, 3) linear RGB; albedo (H, W, 3); shading (H, W, 3) = E(normal); normals (H, W, 3)
    camera frame; depth (H, W) input depth; depth_fused (H, W); confidence (H, W) in [0, 1];
    lighting (9, 3) SH in the camera frame; camera the photo's intrinsics; shadow (H, W) in [0, 1]
    (None: no shadow, written as ones), so that image ≈ albedo * shadow * shading; sky (H, W) bool pixels
    that show the sky (None: none known).
    """

    image: np.ndarray
    albedo: np.ndarray
    shading: np.ndarray
    normals: np.ndarray
    depth: np.ndarray
    depth_fused: np.ndarray
    confidence: np.ndarray
    lighting: np.ndarray
    camera: Camera
    metadata: dict = field(default_factory=dict)
    shadow: np.ndarray | None = None
    sky: np.ndarray | None = None


def _check_maps(image, depth, normals, camera):
    h, w = camera.height, camera.width
    for name, arr, shape in (("image", image, (h, w, 3)), ("depth", depth, (h, w)),
                             ("normals", normals, (h, w, 3))):
        if arr.shape != shape:
            raise ValueError(f"{name} has shape {arr.shape}, expected {shape} to match the camera ({w}x{h})")


def estimate_from_geometry(image: np.ndarray, depth: np.ndarray, normals: np.ndarray, camera: Camera,
                           confidence: np.ndarray | None = None, lam: float = fusion.DEFAULT_LAMBDA,
                           use_prior: bool = True,
                           source: str = "depth and normal maps") -> SceneEstimate:
    """Fuse depth with normals, fit SH lighting (reduced to order 1, `sh.observed_lighting`), derive albedo.

    image (H, W, 3) linear RGB; depth (H, W) planar depth (<= 0 or non-finite = unknown); normals
    (H, W, 3) unit, camera frame; confidence (H, W) in [0, 1] weights the depth (default 1).
    Lighting is fitted with albedo taken as constant (so it absorbs the mean albedo), as a MAP estimate
    under the natural-illumination prior unless use_prior is False (a photo rarely shows enough
    distinct normals to pin down all 9 coefficients by least squares alone), then
    albedo = image / shading and both are rescaled so the median albedo luminance is 0.4. A colour
    shared by the whole photo is thereby attributed to the light (the usual albedo/light ambiguity).
    """
    image = np.asarray(image, dtype=np.float32)
    depth = np.asarray(depth, dtype=np.float32)
    normals = np.asarray(normals, dtype=np.float32)
    _check_maps(image, depth, normals, camera)
    if confidence is None:
        confidence = np.ones(depth.shape, np.float32)
    valid = geometry.valid_mask(depth) & np.isfinite(normals).all(-1)

    depth_fused = fusion.fuse(depth, normals, camera, confidence=confidence, lam=lam, mask=valid)

    prior = IlluminationPrior.load() if use_prior else None
    lighting = sh.fit_lighting(image, np.ones_like(image), normals, mask=valid, prior=prior)
    # Reduced to what the photo's normals pin down (order 1, no negative light), as `decompose` does: the order-2
    # terms of a least-squares fit are wild outside the camera-facing normals, and the world built from them
    # (negative light clipped to 0) rendered the sample, given its own exact maps, 1.2 / 2.0 / 2.4 times too bright.
    lighting = sh.observed_lighting(normals, lighting, valid)
    shading = sh.shading(normals, lighting).astype(np.float32)  # (H, W, 3)
    albedo = image / np.maximum(shading, MIN_SHADING)
    median = float(np.median(albedo[valid] @ sh.LUMINANCE))
    scale = MEDIAN_ALBEDO_LUMINANCE / max(median, 1e-6)
    albedo = np.clip(albedo * scale, 0.0, 1.0).astype(np.float32)
    lighting = (lighting / scale).astype(np.float32)
    shading = (shading / scale).astype(np.float32)

    return SceneEstimate(image=image, albedo=albedo, shading=shading, normals=normals, depth=depth,
                         depth_fused=depth_fused.astype(np.float32), confidence=confidence.astype(np.float32),
                         lighting=lighting, camera=camera, shadow=np.ones(depth.shape, np.float32),
                         metadata={"geometry_source": source, "depth_scale": "as given (the depth map's units)",
                                   "fusion_lambda": lam})


CONTRACT_FILES = ("albedo.exr", "shading.exr", "shadow.exr", "normal.exr", "depth.exr", "depth_fused.exr",
                  "confidence.exr", "lighting.json", "camera.json", "preview.png")


def check_replaceable(out_dir: Path) -> None:
    """An existing out_dir may be replaced only when it is empty or a previous output (contract files only)."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a folder: choose another output folder")
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in CONTRACT_FILES)
    if others:
        raise ValueError(f"{out_dir} exists and holds files that are not invrender output (e.g. {others[0]}): "
                         f"choose a new or empty output folder")


def _shadow_map(estimate: SceneEstimate) -> np.ndarray:
    """The estimate's shadow (H, W), or all lit when it has none (maps given by the user carry no shadow)."""
    return estimate.shadow if estimate.shadow is not None else np.ones(estimate.depth.shape, np.float32)


def write_estimate(estimate: SceneEstimate, out_dir: str | Path) -> Path:
    """Write the DESIGN.md file contract (`CONTRACT_FILES`) into out_dir, atomically: all files or none.

    Files go to a temporary sibling folder that is renamed at the end, so a failure leaves no partial
    output. An existing out_dir is replaced only after everything was written, and only when it is empty or
    holds nothing but a previous output (anything else raises ValueError before writing).
    """
    out_dir = Path(out_dir)
    check_replaceable(out_dir)
    shadow = _shadow_map(estimate)
    created = missing_folders(out_dir.parent)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    except BaseException:
        remove_empty_folders(created)
        raise
    try:
        maps = {"albedo": estimate.albedo, "shading": estimate.shading, "shadow": shadow, "normal": estimate.normals,
                "depth": estimate.depth, "depth_fused": estimate.depth_fused, "confidence": estimate.confidence}
        # Encoding (EXR, PNG) releases the GIL and is most of the writing time: one file per core.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            jobs = [pool.submit(write_exr, tmp / f"{name}.exr", array) for name, array in maps.items()]
            jobs.append(pool.submit(lambda: save_preview_sheet(tmp / "preview.png", preview_tiles(estimate))))
            for job in jobs:
                job.result()  # re-raises a failed write
        (tmp / "lighting.json").write_text(json.dumps(
            {"sh": np.asarray(estimate.lighting).tolist(), "frame": "camera", "convention": "ramamoorthi-hanrahan"},
            indent=2) + "\n")
        (tmp / "camera.json").write_text(json.dumps(
            {**estimate.camera.to_dict(), "depth_scale": "relative", **estimate.metadata}, indent=2) + "\n")
        publish_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_empty_folders(created)
        raise
    return out_dir


def publish_folder(tmp: Path, out_dir: Path) -> None:
    """Move a finished temporary folder (from tempfile.mkdtemp beside out_dir) to out_dir, replacing it."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes a private folder; the output is an ordinary one
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def lit_sphere(lighting: np.ndarray, size: int = 128, albedo: float = 0.6) -> np.ndarray:
    """A grey sphere seen by the camera under SH lighting (9, 3) (camera frame): (size, size, 3) linear RGB,
    scaled so its brightest pixel is 1; black around it. Shows what light the estimate found."""
    c = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(c, -c)  # row 0 at the top: y up
    inside = x * x + y * y < 1.0
    normals = np.stack([x, y, np.sqrt(np.clip(1.0 - x * x - y * y, 0.0, None))], axis=-1)  # (size, size, 3)
    rgb = np.where(inside[..., None], albedo * np.maximum(sh.shading(normals, lighting), 0.0), 0.0)
    return (rgb / max(float(rgb.max()), 1e-12)).astype(np.float32)


def at_input_exposure(image: np.ndarray, metadata: dict) -> np.ndarray:
    """`image` (linear, in the photo's units) at the exposure `decompose` gave the networks (metadata
    "input_exposure": an HDR photo's 99th percentile of luminance at 1), as previews and 8-bit files show it; the
    image itself, not a copy, for an ordinary photo (exposure 1)."""
    exposure = float(metadata.get("input_exposure", 1.0))
    return image if exposure == 1.0 else image * np.float32(exposure)


def preview_tiles(estimate: SceneEstimate) -> list[tuple[str, np.ndarray]]:
    """The contact-sheet tiles of an estimate (`io.save_preview_sheet`): photo, albedo, shading, shadow, normals,
    fused depth, confidence and a sphere lit by the estimated lighting."""
    shadow = _shadow_map(estimate)
    return [
        ("photo", at_input_exposure(estimate.image, estimate.metadata)),  # an HDR photo as the networks saw it
        ("albedo", estimate.albedo), ("shading", _for_display(estimate.shading)),
        ("shadow", shadow),
        ("normals", srgb_to_linear(0.5 * (estimate.normals + 1.0))),  # shown as a normal map's colours
        ("depth (fused)", _depth_for_display(estimate)), ("confidence", estimate.confidence),
        ("lighting (sphere)", lit_sphere(estimate.lighting)),
    ]


def _for_display(image: np.ndarray) -> np.ndarray:
    """Scaled so its 99th percentile is 1: shading is an irradiance, often well above 1."""
    return image / max(float(np.nanpercentile(image, 99)), 1e-12)


def _depth_for_display(estimate: SceneEstimate) -> np.ndarray:
    """Inverse depth scaled to [0, 1] (near = bright), unknown = 0."""
    d = estimate.depth_fused
    inv = np.where(np.isfinite(d) & (d > 0), 1.0 / np.where(d > 0, d, 1.0), 0.0)
    return (inv / max(float(inv.max()), 1e-12)).astype(np.float32)


def sun_direction(elevation_deg: float, azimuth_deg: float) -> np.ndarray:
    """Unit vector towards the sun in the WORLD frame of the built scene (camera looks along +y, z up).

    Elevation is above the horizon; azimuth is measured from behind the camera (0: the sun at the
    camera's back, front lighting) towards the camera's right (90: light from the right, 180: backlight).
    """
    e, a = np.radians(elevation_deg), np.radians(azimuth_deg)
    return np.array([np.sin(a) * np.cos(e), -np.cos(a) * np.cos(e), np.sin(e)])


def world_lighting(lighting_camera, sun_fraction: float = DEFAULT_SUN_FRACTION
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The scene's lighting as built: SH lighting (9, 3) of the camera frame moved to the world frame and split
    (`sh.extract_sun`) into the sun lamp's direction (3,) and irradiance (3,) and the environment's SH (9, 3)."""
    return sh.extract_sun(sh.rotation(sh.CAMERA_TO_WORLD) @ np.asarray(lighting_camera, np.float64), sun_fraction)


def scene_assets(estimate: SceneEstimate, name: str, mesh_step: int = 1,
                 discontinuity_threshold: float = geometry.DEFAULT_DISCONTINUITY_THRESHOLD,
                 environment_height: int = 128, sun_fraction: float = DEFAULT_SUN_FRACTION,
                 background_band: float = DEFAULT_BACKGROUND_BAND) -> dict:
    """Everything addon/build/scene.SceneAssets needs, computed without bpy.

    The SH lighting is moved to the world frame and split into a sun lamp (a share `sun_fraction` of
    its directional part, for sharp cast shadows) and an environment image holding the rest (`world_lighting`).
    Placing another sun is the add-on's Relight (addon/build/relight.py), on the built scene.
    "background" is `background_assets` with `background_band` (0: none). Where the main mesh is cut at a
    discontinuity and the layer does not fill the gap (it is not continued where it would come out in front of the
    occluder), a patch at the far side's depth fills it (`geometry.far_patches`), so that the photo's camera sees a
    surface at every pixel but the sky.
    """
    background = None
    if background_band != 0:
        background = background_assets(estimate, background_band, mesh_step, discontinuity_threshold)
    mesh = geometry.grid_mesh(estimate.depth_fused, estimate.camera, mask=_ground(estimate),
                              discontinuity_threshold=discontinuity_threshold, step=mesh_step, reach_edges=True)
    if background is not None:
        mesh = _fill_layer_gaps(estimate, mesh, background["covered"], mesh_step)
    direction, irradiance, rest = world_lighting(estimate.lighting, sun_fraction)
    peak = float(irradiance.max())
    # A Blender sun of strength S and colour c adds albedo / pi * S * c * cos to a diffuse surface,
    # while our image model adds albedo * irradiance * cos: hence S * c = pi * irradiance.
    sun = (direction, np.pi * peak, irradiance / peak) if peak > 0 else None
    return {
        "name": name,
        "camera": estimate.camera.to_dict(),
        "vertices": mesh.vertices,
        "faces": mesh.faces,
        "uvs": mesh.uvs,
        "photo": estimate.image,
        "albedo": estimate.albedo,
        "normals": estimate.normals,
        "environment": sh.to_equirect(rest, 2 * environment_height, environment_height),
        "sun": sun,
        "shadow": estimate.shadow,
        "background": background,
    }


# Texels that `photo_gain` reads: a model image below this (linear) is too dark to compare (uncovered texels bake
# to 0), and fewer than MIN_GAIN_TEXELS usable ones give no gain.
MIN_MODEL_VALUE = 1e-3
MIN_GAIN_TEXELS = 16


def photo_gain(photo: np.ndarray, albedo: np.ndarray, irradiance: np.ndarray) -> np.ndarray | None:
    """Per-channel gain (3,) on the albedo that makes a render of the built scene under the photo's own light as
    bright as the photo: the median over texels of photo / (albedo · irradiance). None when fewer than
    MIN_GAIN_TEXELS texels are lit and covered.

    photo, albedo (H, W, 3) linear RGB at the photo's resolution; irradiance (h, w, 3): the light the renderer
    gives the scene's surface (a Cycles diffuse bake without colour, top row first), at any resolution up to the
    photo's, 0 where no surface covers the texel. The render falls short of the photo because the decomposition
    does not explain all of it, and because the mesh hides part of the sky from itself that the SH shading counted
    in full (the photo's light already held that occlusion); the median keeps what the geometry gets wrong (cast
    shadows of its bumps) from deciding.
    """
    photo, albedo, irradiance = (np.asarray(a, np.float32) for a in (photo, albedo, irradiance))
    if photo.ndim != 3 or photo.shape[2] != 3 or albedo.shape != photo.shape:
        raise ValueError(f"photo {photo.shape} and albedo {albedo.shape} must both be (H, W, 3)")
    if irradiance.ndim != 3 or irradiance.shape[2] != 3 or irradiance.shape[0] > photo.shape[0] \
            or irradiance.shape[1] > photo.shape[1]:
        raise ValueError(f"irradiance {irradiance.shape} must be (h, w, 3) no larger than the photo {photo.shape}")
    h, w = irradiance.shape[:2]
    model = resize_linear(albedo, w, h) * irradiance  # (h, w, 3)
    usable = (model > MIN_MODEL_VALUE).all(axis=-1)  # (h, w)
    if usable.sum() < MIN_GAIN_TEXELS:
        return None
    return np.median(resize_linear(photo, w, h)[usable] / model[usable], axis=0)  # (3,)


def _fill_layer_gaps(estimate: SceneEstimate, mesh: geometry.Mesh, layer_covered: np.ndarray, mesh_step: int
                     ) -> geometry.Mesh:
    """The main mesh with `geometry.far_patches` on its grid's cells that neither it nor the layer covers
    (layer_covered (H-1, W-1) bool as `geometry.covered_cells`); the same mesh when there are none."""
    camera, m = estimate.camera, mesh_step
    seen = geometry.covered_cells(mesh, camera.width, camera.height, m) | layer_covered  # (H-1, W-1)
    rows, cols = (camera.height - 1) // m, (camera.width - 1) // m  # the main grid's cells
    gaps = ~seen[:rows * m, :cols * m].reshape(rows, m, cols, m).all(axis=(1, 3))
    if not gaps.any():
        return mesh
    patches = geometry.far_patches(estimate.depth_fused, camera, gaps, mask=_ground(estimate), step=m,
                                   reach_edges=True)
    return geometry.join_meshes(mesh, patches)


def _ground(estimate: SceneEstimate) -> np.ndarray | None:
    """(H, W) bool pixels that may carry geometry: not the sky, which the world shows (and relights), and which
    neither casts nor receives shadows."""
    return None if estimate.sky is None else ~np.asarray(estimate.sky, bool)


def background_assets(estimate: SceneEstimate, band: float = DEFAULT_BACKGROUND_BAND, mesh_step: int = 1,
                      discontinuity_threshold: float = geometry.DEFAULT_DISCONTINUITY_THRESHOLD) -> dict | None:
    """The background layer behind the occluders of the fused depth (`geometry.background_layer`), reaching
    `band` x the photo's longer side in behind each, as mesh and maps; None where nothing is occluded.

    vertices (V, 3), faces (F, 3), uvs (V, 2) as `geometry.grid_mesh` (faces that lie only on the visible
    background beside the occluder are left out: the main mesh has them); covered (H-1, W-1) bool, the cells
    between pixel centres its faces cover (`geometry.covered_cells`); albedo (H, W, 3), normals (H, W, 3)
    and shadow (H, W) or None: the photo's maps, continued over the hidden part from the background beside it.
    The layer is hidden from the photo's camera, so it is worked out on every s-th pixel, s = mesh_step or more,
    so that its grid has at most BACKGROUND_MAX_SIDE pixels a side.
    """
    camera = estimate.camera
    H, W = camera.height, camera.width
    if not 0 < band <= 1:
        raise ValueError(f"the background band is a share of the photo's longer side in (0, 1], got {band}")
    s = max(mesh_step, math.ceil(max(W, H) / BACKGROUND_MAX_SIDE))
    ground = _ground(estimate)
    layer = geometry.background_layer(estimate.depth_fused[::s, ::s],
                                      mask=None if ground is None else ground[::s, ::s],
                                      band=max(1, round(band * max(W, H) / s)),
                                      discontinuity_threshold=discontinuity_threshold)
    layer_depth = np.full((H, W), np.nan)  # (H, W) known on the grid of every s-th pixel only
    layer_depth[::s, ::s] = layer.depth
    mesh = geometry.grid_mesh(layer_depth, camera, discontinuity_threshold=discontinuity_threshold, step=s,
                              reach_edges=True)
    hidden = np.zeros((H, W), bool)
    hidden[::s, ::s] = layer.region
    mesh = geometry.keep_faces(mesh, hidden.ravel()[mesh.pixel_index][mesh.faces].any(axis=1))
    if not len(mesh.faces):
        return None
    grid = layer.region.shape  # (h, w)
    region = resize_linear(layer.region.astype(np.float32), W, H) > 0.5  # (H, W) the layer's part of the maps

    def continued(values: np.ndarray) -> np.ndarray:
        """values (H, W[, C]) with the region replaced by the layer's continuation of them."""
        filled = resize_linear(layer.fill(values[::s, ::s]).astype(np.float32), W, H)
        return np.where(region if values.ndim == 2 else region[..., None], filled, values).astype(np.float32)

    normals = geometry.normals_from_depth(layer.depth, camera.resized(grid[1], grid[0]),
                                          discontinuity_threshold=discontinuity_threshold)  # (h, w, 3)
    normals = filtering.renormalise_normals(resize_linear(normals, W, H))
    return {
        "vertices": mesh.vertices,
        "faces": mesh.faces,
        "uvs": mesh.uvs,
        "covered": geometry.covered_cells(mesh, W, H, s),
        "albedo": continued(estimate.albedo),
        "normals": np.where(region[..., None], normals, estimate.normals),
        "shadow": None if estimate.shadow is None else continued(estimate.shadow),
    }


def read_json(path: str | Path) -> dict:
    """A JSON file as a dict, with a one-line error that names the file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise ValueError(f"{path} does not exist: check the path") from e
    except IsADirectoryError as e:
        raise ValueError(f"{path} is a folder: give the JSON file") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}): give a file written by invrender "
                         "(camera.json, lighting.json)") from e


# ----------------------------------------------------------------------------------------------------
# decompose: one photo through the networks

DEFAULT_IRN = "irn-small"
DEFAULT_DEPTH = "depth-small"
# The photo's shadow map (`nets/photo_shadow.py`): the shipped IRN's own is empty (irn-small.md).
DEFAULT_SHADOW_NET = "photo-shadow-small"
# Fusion weight of the networks' depth against their normals (`fusion.DEFAULT_LAMBDA`, 0.1, is for measured depth).
# The small depth net is far less reliable than its normals: on validation views, lam 0.1 -> 0.001 takes the
# fused geometry's normal error from 43.8 to 35.9 degrees at the same depth error and the relit cast shadows' IoU
# from 0.268 to 0.281; 3e-4 starts losing depth (depth-small.md).
NETWORK_FUSION_LAMBDA = 0.001
# Working resolution of the networks (longer side). 320 keeps both small nets well under a second on a CPU.
DEFAULT_MAX_SIDE = 320
# Fusion runs at the photo's resolution up to this longer side, above it on a downscaled grid (then the
# fused depth is upsampled edge-aware): the network depth has no detail finer than the working resolution,
# and the normals' extra detail beyond ~1 MP does not pay for the solver's time and memory.
DEFAULT_FUSION_MAX_SIDE = 1024
WORK_MULTIPLE = 16  # both networks pool four times
# Network log depth is centred on its median and clipped to +-ln(1e4): depth stays finite and positive.
MAX_LOG_DEPTH = math.log(1e4)
# Sky: `sky.detect_sky` of the photo, and pixels the depth net puts more than SKY_DEPTH_RATIO times further than
# the 10th-percentile depth.
SKY_DEPTH_RATIO = 30.0
SKY_REFERENCE_PERCENTILE = 10.0
# The lighting's order-1 fit is shrunk towards the illumination prior's mean (`sh.observed_lighting`) with this
# weight: the network's normals mislead it about the light's direction. Validation lighting error 0.72 / 0.56 /
# 0.54 at weights 0 / 1 / 10 (the prior's mean alone 0.53); 1 keeps about half of the photo's own light.
LIGHTING_PRIOR_WEIGHT = 1.0
SHADOW_UPSAMPLE_EPS = 1e-3  # shadow edges should follow the photo's edges closely (normals and depth: default)
NOISE_JUMPS = 5.0  # discontinuities jump this many noise spreads at least (discontinuity_threshold)
# The depth network runs at these multiples of the working size (and on their mirror images; `_averaged_depth`): it
# does better on the enlarged photo, and averaging cancels part of its error. Validation views (depth-small.md):
# SI log RMSE 0.335 one pass, 0.330 mirror-averaged, 0.3215 with 1 and 1.25, 0.320 with 1, 1.25 and 1.5.
DEPTH_SCALES = (1.0, 1.25)
BAND_RADIUS = 1  # pixels on each side of a depth discontinuity that get zero confidence and are not fused
# A band pixel moved onto a neighbouring surface's plane stays within the depths found this many (network) pixels
# around it: a plane extended along one pixel's noisy normal overshoots (validation: fused SI log RMSE 0.345 ->
# 0.336 with depth-small round 2, the fused geometry's normals 27.7 -> 28.5 degrees; depth-small.md).
BAND_REACH = 3
# The band's pixels, each moved onto the plane of its nearest fused pixel, form streaks across an outline (each
# follows another pixel's noisy plane, and the streaks cast shadows in a render): a second fusion over the band and
# the fused pixels together, with the first result as the positions (confidence 1, this weight) and tangent rows
# cut at its steps, lets the band follow its own normals. Validation views (depth-small.md), lam 0.001 / 0.003 /
# 0.01 / 0.03 / 0.1: the fused geometry's normal error 27.0 / 26.9 / 26.9 / 27.0 / 27.3 degrees (28.4 without),
# SI log RMSE 0.3355 / 0.3343 / 0.3334 / 0.3329 / 0.3325 (0.3322 without).
SECOND_PASS_LAMBDA = 0.01
MIN_FUSED_PIXELS = 16
STAGES = ("models", "irn", "depth", "upsample", "lighting", "fusion", "done")
# Overall progress fraction at the start of each stage (roughly their share of a CPU run at 1 MP).
_STAGE_START = {"models": 0.0, "irn": 0.05, "depth": 0.2, "upsample": 0.4, "lighting": 0.55, "fusion": 0.65,
                "done": 1.0}


class Cancelled(Exception):
    """decompose was cancelled: its `cancel` check was true between two stages. Nothing is returned."""


def resolve_device(device: str = "auto"):
    """torch.device for "auto" (CUDA, else Apple MPS, else CPU), "cpu", "cuda", "cuda:N" or "mps".

    Raises ValueError (one line) for an unknown name or a GPU asked for where it is not available.
    """
    import torch

    mps_available = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}: use auto, cpu, cuda or mps") from e
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is not supported: use auto, cpu, cuda or mps")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": mps_available}[dev.type]
    if not available:
        raise ValueError(f"device {device!r} was asked for but {dev.type.upper()} is not available on this "
                         f"machine: use device cpu (or auto)")
    return dev


def working_size(width: int, height: int, max_side: int = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """(w, h) the networks run at for a width x height photo: both multiples of 16, longer side <= max_side.

    The photo is resized (not padded: padding would show the networks borders that are not in the photo and
    give the lighting solve pixels to explain). The longer side is min(max_side, the photo's) rounded down
    to a multiple of 16, the shorter one scaled alike and rounded to the nearest multiple of 16 (at least
    16), so the aspect ratio changes by at most half a multiple (3 % at 256 x 170); the camera is resized
    with the same per-axis factors, so geometry stays exact.
    """
    if int(max_side) != max_side or max_side < WORK_MULTIPLE:
        raise ValueError(f"max_side must be an integer >= {WORK_MULTIPLE}, got {max_side}")
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    longer, shorter = max(width, height), min(width, height)
    long_w = max(WORK_MULTIPLE, min(int(max_side), longer) // WORK_MULTIPLE * WORK_MULTIPLE)
    short_w = _multiple_of_work(shorter * long_w / longer)
    return (long_w, short_w) if width >= height else (short_w, long_w)


def _fusion_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    if max(width, height) <= max_side:
        return width, height
    s = max_side / max(width, height)
    return max(2, round(width * s)), max(2, round(height * s))


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) bool grown by `radius` pixels (square neighbourhood)."""
    if radius <= 0 or not mask.any():
        return mask
    return filtering.box_filter(mask.astype(np.float32), radius) > 1e-6


def discontinuity_threshold(depth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Relative depth jump (see geometry.py) above which neighbours of depth (H, W) count as discontinuous.

    geometry's default (5 %), raised for noisy depth to NOISE_JUMPS times the spread of the pixel-to-pixel
    log-depth noise: a threshold inside the noise would cut the tangent rows that let fusion remove it. The
    noise is measured on second differences along rows and columns (of three valid pixels; mask (H, W) bool
    limits them), which a sloping surface does not raise: for white noise of spread s in log depth they
    spread by s √6 and first differences by s √2, so the jump spread is 1.4826 median(|Δ²|) / √3.
    """
    d = np.asarray(depth, dtype=np.float64)
    valid = geometry.valid_mask(d, mask)
    log_d = np.log(np.where(valid, d, 1.0))
    second = np.concatenate([np.abs(np.diff(log_d, 2, axis=1))[valid[:, 2:] & valid[:, 1:-1] & valid[:, :-2]],
                             np.abs(np.diff(log_d, 2, axis=0))[valid[2:] & valid[1:-1] & valid[:-2]]])
    if second.size == 0:
        return geometry.DEFAULT_DISCONTINUITY_THRESHOLD
    jump_spread = 1.4826 * float(np.median(second)) / np.sqrt(3.0)
    return max(geometry.DEFAULT_DISCONTINUITY_THRESHOLD, float(np.expm1(NOISE_JUMPS * jump_spread)))


def depth_confidence(depth: np.ndarray, normals: np.ndarray, camera: Camera, exclude: np.ndarray | None = None,
                     threshold: float | None = None, radius: int = BAND_RADIUS) -> np.ndarray:
    """How far network depth (H, W) can be trusted against network normals (H, W, 3): (H, W) float32 in [0, 1].

    The agreement of the two networks: max(0, cos) of the angle between the normals of the depth map
    (`geometry.normals_from_depth`) and the predicted normals, averaged over a (2 radius + 1)² window; zero
    within `radius` pixels of a depth discontinuity (relative jump > threshold, default
    `discontinuity_threshold(depth)`; depth networks blur foreground into background there), at invalid depth
    and where `exclude` (H, W) bool (e.g. sky) is set.
    """
    d = np.asarray(depth, dtype=np.float64)
    if d.shape != (camera.height, camera.width) or np.shape(normals) != d.shape + (3,):
        raise ValueError(f"depth {d.shape} and normals {np.shape(normals)} must be (H, W) and (H, W, 3) with "
                         f"(H, W) = {(camera.height, camera.width)} of the camera")
    valid = geometry.valid_mask(d, None if exclude is None else ~np.asarray(exclude, bool))
    if threshold is None:
        threshold = discontinuity_threshold(d, valid)
    n_depth = geometry.normals_from_depth(d, camera, mask=valid, discontinuity_threshold=threshold)
    agree = np.clip((n_depth * np.asarray(normals, np.float32)).sum(-1), 0.0, 1.0)
    agree[~valid] = 0.0
    confidence = filtering.box_filter(agree, radius) if radius > 0 else agree
    band = _dilate(geometry.depth_discontinuities(d, threshold, mask=valid), radius)
    confidence[band | ~valid] = 0.0
    return np.clip(confidence, 0.0, 1.0).astype(np.float32)


def fuse_network_depth(depth: np.ndarray, normals: np.ndarray, camera: Camera, lam: float = NETWORK_FUSION_LAMBDA,
                       confidence: np.ndarray | None = None, exclude: np.ndarray | None = None,
                       threshold: float | None = None, band: np.ndarray | None = None,
                       band_reach: int = BAND_REACH) -> np.ndarray:
    """Nehab fusion of a network's depth (H, W) with a network's unit normals (H, W, 3): (H, W) float32.

    confidence (H, W) weights the depth per pixel (default `depth_confidence`). Pixels within BAND_RADIUS of a
    depth discontinuity (relative jump > threshold, default `discontinuity_threshold(depth)`), those in `band`
    (H, W) bool (e.g. the network's own discontinuities, found at its resolution) and those in `exclude` (H, W)
    bool (sky) are not fused, so no tangent row links the two sides of a discontinuity (the step is kept).
    Excluded pixels keep the input depth; band pixels, where depth networks blur foreground into background, get
    the surfaces on either side (`_extend_surfaces`, within the depths `band_reach` pixels around), then a second
    fusion of all but the excluded pixels smooths them along their normals (SECOND_PASS_LAMBDA). The output is
    finite wherever the input depth is valid (finite, > 0), NaN elsewhere.
    """
    d = np.asarray(depth, dtype=np.float32)
    if d.shape != (camera.height, camera.width) or np.shape(normals) != d.shape + (3,):
        raise ValueError(f"depth {d.shape} and normals {np.shape(normals)} must be (H, W) and (H, W, 3) with "
                         f"(H, W) = {(camera.height, camera.width)} of the camera")
    exclude = np.zeros(d.shape, bool) if exclude is None else np.asarray(exclude, bool)
    band = np.zeros(d.shape, bool) if band is None else np.asarray(band, bool)
    if exclude.shape != d.shape or band.shape != d.shape:
        raise ValueError(f"exclude {exclude.shape} and band {band.shape} must match depth {d.shape}")
    valid = geometry.valid_mask(d)
    if threshold is None:
        threshold = discontinuity_threshold(d, valid & ~exclude & ~band)
    if confidence is None:
        confidence = depth_confidence(d, normals, camera, exclude | band, threshold)
    band = band | _dilate(geometry.depth_discontinuities(d, threshold, mask=valid & ~exclude), BAND_RADIUS)
    mask = valid & ~exclude & ~band
    out = np.where(valid, d, np.nan).astype(np.float32)
    if mask.sum() >= MIN_FUSED_PIXELS:
        fused = fusion.fuse(d, normals, camera, confidence=confidence, lam=lam, mask=mask,
                            discontinuity_threshold=threshold)
        ok = mask & np.isfinite(fused) & (fused > 0)
        out[ok] = fused[ok]
        out = _extend_surfaces(out, ok, valid & ~exclude & ~ok, normals, camera, band_reach)
        surface = valid & ~exclude
        # Positions weigh 0.01 here, enough for plain CG, which needs no AMG set-up: 1 MP 0.74 -> 0.48 s.
        again = fusion.fuse(np.where(valid, out, 1.0), normals, camera, confidence=np.ones(d.shape, np.float32),
                            lam=SECOND_PASS_LAMBDA, mask=surface, discontinuity_threshold=threshold,
                            solver="cg-jacobi")
        ok = surface & np.isfinite(again) & (again > 0)
        out[ok] = again[ok]
    return out


def _extend_surfaces(depth: np.ndarray, source: np.ndarray, target: np.ndarray, normals: np.ndarray,
                     camera: Camera, reach: int) -> np.ndarray:
    """depth (H, W) with each `target` pixel moved onto the plane of its nearest `source` pixel (that pixel's
    point and normal), along its own ray: a band between two surfaces takes each side's surface and meets the
    other in a step half-way, instead of the depth network's blurred ramp (on validation views the fused geometry's
    normal error went 35.9 -> 29.6 degrees, depth-small.md). Where the plane is seen within about 3 degrees of
    grazing, or would move the pixel by more than a factor of 2, it takes the source pixel's depth instead. The
    result is clipped to the range of `depth` within `reach` pixels (a (2 reach + 1)² window; NaN ignored)."""
    if not target.any() or not source.any():
        return depth
    _, (row, col) = ndimage.distance_transform_edt(~source, return_indices=True)
    src_row, src_col = row[target], col[target]
    rays = camera.rays()  # (H, W, 3) at depth 1
    n = normals[src_row, src_col].astype(np.float64)  # (N, 3)
    d_src = depth[src_row, src_col].astype(np.float64)
    facing = (n * rays[target]).sum(-1)  # plane: n . (P - d_src r_src) = 0 with P = d r
    seen = np.abs(facing) > fusion.MIN_FACING_COS * np.linalg.norm(rays[target], axis=-1)
    on_plane = d_src * (n * rays[src_row, src_col]).sum(-1) / np.where(seen, facing, 1.0)
    ratio = on_plane / d_src
    extended = np.where(seen & (ratio > 0.5) & (ratio < 2.0), on_plane, d_src)
    window, finite = 2 * reach + 1, np.isfinite(depth)
    low = ndimage.minimum_filter(np.where(finite, depth, np.inf), window)[target]
    high = ndimage.maximum_filter(np.where(finite, depth, -np.inf), window)[target]
    out = depth.copy()
    out[target] = np.clip(extended, low, high)
    return out


class _Stages:
    """Progress, cancel checks and per-stage timings for decompose."""

    def __init__(self, progress, cancel):
        self.progress, self.cancel = progress, cancel
        self.timings: dict[str, float] = {}
        self.current, self.t0, self.start = None, time.perf_counter(), time.perf_counter()

    def cancelled(self) -> bool:
        if self.cancel is None:
            return False
        if isinstance(self.cancel, threading.Event):
            return self.cancel.is_set()
        return bool(self.cancel())

    def enter(self, stage: str) -> None:
        now = time.perf_counter()
        if self.current is not None:
            self.timings[self.current] = round(now - self.t0, 4)
        if stage != "done" and self.cancelled():
            raise Cancelled(f"cancelled before the {stage} stage")
        self.current, self.t0 = (None if stage == "done" else stage), now
        if stage == "done":
            self.timings["total"] = round(now - self.start, 4)
        if self.progress is not None:
            self.progress(stage, _STAGE_START[stage])


def _load_network(spec, expect: str, weights_dir, device):
    """(model in eval() on device, description for the metadata) for a name, a path or a ready nn.Module."""
    from torch import nn

    from .nets import weights

    if isinstance(spec, nn.Module):
        return spec.to(device).eval(), {"name": type(spec).__name__, "source": "module given by the caller"}
    model, entry, path = weights.load_named(spec, weights_dir, expect=expect, device=device, return_entry=True)
    arch, config = weights.architecture_of(entry)
    return model, {"name": entry.name, "architecture": arch, "config": config, "sha256": entry.sha256,
                   "file": str(path)}


def _mirror_averaged_irn(irn, x):
    """IRNOutput averaged over the image and its left-right mirror (normals' x, lighting's x-odd terms
    negated back): the prediction is then exactly mirror-symmetric, and more accurate (irn-small.md)."""
    import torch

    from .nets.irn import IRNOutput

    out, mirrored = irn(x), irn(x.flip(-1))
    normals_m = mirrored.normals.flip(-1) * x.new_tensor([-1.0, 1.0, 1.0])[None, :, None, None]
    lighting_m = mirrored.lighting.clone()
    lighting_m[:, list(sh.X_ODD)] *= -1.0
    normals = torch.nn.functional.normalize(out.normals + normals_m, dim=1)
    lighting = 0.5 * (out.lighting + lighting_m)
    return IRNOutput(0.5 * (out.albedo + mirrored.albedo.flip(-1)), normals,
                     0.5 * (out.shadow + mirrored.shadow.flip(-1)), lighting, sh.shading_torch(normals, lighting))


def _averaged_depth(depth_net, x):
    """The depth network's log depth (1, 1, h, w) for the sRGB image x (1, 3, h, w), averaged over the image and
    its mirror image (the depth of the mirror image is the mirror image of the depth) at each of DEPTH_SCALES
    times the working size, resampled back to it."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    total = 0.0
    for scale in DEPTH_SCALES:
        size = (_multiple_of_work(h * scale), _multiple_of_work(w * scale))
        xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False,
                                                    antialias=True)
        log_depth = 0.5 * (depth_net(xs) + depth_net(xs.flip(-1)).flip(-1))
        if size != (h, w):
            log_depth = F.interpolate(log_depth, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        total = total + log_depth
    return total / len(DEPTH_SCALES)


def _multiple_of_work(length: float) -> int:
    """`length` in pixels rounded to the nearest multiple of WORK_MULTIPLE, at least one multiple."""
    return max(WORK_MULTIPLE, int(round(length / WORK_MULTIPLE)) * WORK_MULTIPLE)


def _run_networks(irn, depth_net, image_w: np.ndarray, device, stages: _Stages, mirror_average: bool) -> dict:
    """Both networks on the working-resolution image (h, w, 3) linear -> numpy maps, NaN-free. mirror_average:
    the IRN's outputs averaged over the image and its mirror image (`_mirror_averaged_irn`), the depth network's
    also over DEPTH_SCALES (`_averaged_depth`)."""
    import torch

    from .nets.irn import normalise_shadow

    h, w = image_w.shape[:2]
    # Channels-last (NHWC) tensors run both convolutional networks 15-30 % faster on a CPU (bench_decompose).
    nhwc = torch.channels_last
    irn.to(memory_format=nhwc)
    depth_net.to(memory_format=nhwc)
    x = torch.from_numpy(np.ascontiguousarray(np.clip(image_w, 0.0, 1.0).transpose(2, 0, 1))[None]).to(device)
    x = x.contiguous(memory_format=nhwc)
    try:
        with torch.inference_mode():
            out = _mirror_averaged_irn(irn, x) if mirror_average else irn(x)
            albedo = out.albedo[0].permute(1, 2, 0).float().cpu().numpy()  # (h, w, 3)
            normals = out.normals[0].permute(1, 2, 0).float().cpu().numpy()  # (h, w, 3)
            shadow, lighting = normalise_shadow(out.shadow[0, 0].float().cpu().numpy(),  # (h, w)
                                                out.lighting[0].double().cpu().numpy())  # (9, 3)
            stages.enter("depth")
            # The depth net takes sRGB-encoded input, as it was trained (train/depth_task.depth_input).
            xd = torch.from_numpy(np.ascontiguousarray(linear_to_srgb(np.clip(image_w, 0.0, 1.0)).transpose(2, 0, 1))
                                  [None].astype(np.float32)).to(device).contiguous(memory_format=nhwc)
            log_depth = _averaged_depth(depth_net, xd) if mirror_average else depth_net(xd)
            if tuple(log_depth.shape) != (1, 1, h, w):
                raise ValueError(f"the depth network returned shape {tuple(log_depth.shape)}, expected {(1, 1, h, w)}")
            log_depth = log_depth[0, 0].double().cpu().numpy()  # (h, w)
    except torch.OutOfMemoryError as e:  # also torch.cuda.OutOfMemoryError
        if device.type == "cuda":
            torch.cuda.empty_cache()
        raise MemoryError(f"out of {device.type.upper()} memory running the networks at {w}x{h}: lower max_side "
                          f"(--max-side) or use the CPU (--device cpu)") from e
    # Untrained or broken weights can give non-finite values: neutral stand-ins keep the outputs usable.
    return {"albedo": np.nan_to_num(albedo, nan=0.5, posinf=1.0, neginf=0.0),
            "normals": filtering.renormalise_normals(normals),
            "shadow": np.clip(np.nan_to_num(shadow, nan=1.0), 0.0, 1.0),
            "lighting": np.nan_to_num(lighting),
            "log_depth": np.nan_to_num(log_depth, nan=0.0, posinf=MAX_LOG_DEPTH, neginf=-MAX_LOG_DEPTH)}


def _working_ground(sky_w: np.ndarray) -> np.ndarray | None:
    """The non-sky pixels (h, w) bool the lighting is fitted on, or None (every pixel) when fewer than 16."""
    return ~sky_w if (~sky_w).sum() >= 16 else None


def _working_lighting(net: dict, ground_w: np.ndarray | None) -> tuple[np.ndarray, bool, np.ndarray]:
    """(SH lighting (9, 3), whether it is the order-1 reduction, shading max(E(n), 0) (h, w, 3)) at the working
    resolution, from `_run_networks`' maps and the pixels to fit on (`_working_ground`).

    The network's lighting is reduced to what the photo's own normals pin down (order 1, no negative light;
    `sh.observed_lighting`): the IRN solves order 2 by least squares, whose order-2 terms are wild outside the
    camera-facing normals (held-out lighting error 0.76 against 0.60 for a uniform light; reduced: 0.57), pulled
    towards the illumination prior's mean light, as the network's normals mislead the fit about the light's
    direction (held out 0.69 -> 0.51, irn-small.md). Fitted at the working resolution, not on the upsampled
    normals, which carry texture and mixed pixels."""
    lighting = sh.observed_lighting(net["normals"], net["lighting"], ground_w,
                                    toward=IlluminationPrior.load().mean_lighting,
                                    weight=LIGHTING_PRIOR_WEIGHT)  # (9, 3) camera frame
    observed = bool((lighting[0] > 0).all())
    if not observed:  # a colour channel left without light (nets that explain the photo badly): keep the IRN's
        lighting = net["lighting"]
    return lighting, observed, np.maximum(sh.shading(net["normals"], lighting), 0.0)


def working_maps(image_w: np.ndarray, irn, depth_net, device="cpu", mirror_average: bool = True) -> dict:
    """What `decompose` computes at the working resolution before its shadow map, for a linear photo (h, w, 3)
    already at that size (sides multiples of WORK_MULTIPLE) and ready networks: the IRN's maps (albedo, normals,
    shadow, lighting), relative depth and sky (`_relative_depth`), and the reduced lighting with its shading
    (`_working_lighting`). The photo-shadow network's training inputs (`train/photo_shadow_task.py`)."""
    dev = resolve_device(device)
    net = _run_networks(irn.to(dev).eval(), depth_net.to(dev).eval(), image_w, dev, _Stages(None, None),
                        mirror_average)
    depth_w, sky_w = _relative_depth(net["log_depth"], detect_sky(image_w))
    lighting, _, shading_w = _working_lighting(net, _working_ground(sky_w))
    return {**net, "depth": depth_w, "sky": sky_w, "lighting": lighting, "shading": shading_w}


# The shadow map is one number a pixel, but a shadow is lit by the sky alone, which is bluer than the sun: dividing
# the photo by it left the sky's colour in shadowed albedo (held out: a magenta cast of 0.23 in log chroma in
# shadows against 0.03 in lit pixels). `shadow_tint` measures that cast against the lit band beside the shadows.
SHADOWED_BELOW, LIT_ABOVE = 0.5, 0.9  # shadow map values of shadowed and of lit pixels
SHADOW_TINT_RING = 8  # working-resolution pixels: how far out the lit band reaches
MIN_TINT_PIXELS = 20


def shadow_tint(albedo_w: np.ndarray, shadow_w: np.ndarray, ground_w: np.ndarray | None
                ) -> tuple[np.ndarray, float] | None:
    """(tint (3,), full_shadow): the log chroma (log colour less its channel mean) of the albedo (h, w, 3) in the
    shadowed pixels of shadow_w (h, w) (below SHADOWED_BELOW) less that in the lit band around them (above LIT_ABOVE,
    within SHADOW_TINT_RING pixels), as medians; and the median shadow value there (what a full shadow is). Only
    over ground_w (h, w) bool (None: every pixel). None when either set has fewer than MIN_TINT_PIXELS pixels.
    Shadows fall on the same materials as their surroundings, on the whole, so the difference is the light's."""
    ground = np.ones(shadow_w.shape, bool) if ground_w is None else ground_w
    shadowed = ground & (shadow_w < SHADOWED_BELOW)
    around = ndimage.binary_dilation(shadowed, iterations=SHADOW_TINT_RING) & ~ndimage.binary_dilation(shadowed)
    lit = around & ground & (shadow_w > LIT_ABOVE)
    if shadowed.sum() < MIN_TINT_PIXELS or lit.sum() < MIN_TINT_PIXELS:
        return None
    log_albedo = np.log(np.maximum(albedo_w, MIN_SHADING))  # (h, w, 3)
    chroma = log_albedo - log_albedo.mean(axis=-1, keepdims=True)
    tint = np.median(chroma[shadowed], axis=0) - np.median(chroma[lit], axis=0)
    return tint, float(np.median(shadow_w[shadowed]))


def without_shadow_tint(albedo: np.ndarray, shadow: np.ndarray, ground: np.ndarray | None, tint: np.ndarray,
                        full_shadow: float) -> np.ndarray:
    """The albedo (H, W, 3) with `shadow_tint`'s tint (3,) taken out of its shadowed pixels, in proportion to how
    deep their shadow (H, W) is (all of it at full_shadow and below, none at 1), in place. The albedo's colour balance
    over ground (H, W) bool (None: every pixel), weighted by brightness, stays as it was: the tint moves colour
    between shadowed and lit pixels, not the whole image's (`_photo_colour_scale` set that)."""
    depth = np.clip((1.0 - shadow) / max(1.0 - full_shadow, MIN_SHADING), 0.0, 1.0)  # (H, W)
    weight = albedo.mean(axis=-1)  # (H, W): the balance that stays, brightness-weighted
    if ground is not None:
        weight = np.where(ground, weight, 0.0)
    depth -= float((depth * weight).sum() / max(float(weight.sum()), 1e-12))
    for c in range(3):
        albedo[..., c] *= np.exp(-tint[c] * depth)
    return albedo


def _photo_colour_scale(image_w, model_w, ground_w) -> np.ndarray:
    """Per-channel factor (3,) that takes the model image (h, w, 3), albedo · shadow · max(E(n), 0) at the
    working resolution, to the photo (h, w, 3) in the least-squares sense over ground_w (h, w) bool (None: every
    pixel); ones where a channel's factor is not positive and finite.

    Applied to the lighting. The IRN solves its light with the illumination prior, whose colour is that of
    synthetic skies; on white-balanced photos the re-rendering took a colour cast (about 25 % magenta on the real
    photos of docs/real_decompose.png), which a Blender scene built from the estimate would show. The albedo
    keeps the network's colours (its calibrated gauge, `train/colour_gauge.py`)."""
    ground = np.ones(image_w.shape[:2], bool) if ground_w is None else ground_w
    m, y = model_w[ground], image_w[ground]  # (N, 3)
    scale = (m * y).sum(0) / np.maximum((m * m).sum(0), 1e-12)
    return scale if (np.isfinite(scale) & (scale > 0)).all() else np.ones(3)


def _full_resolution_albedo(rgb, shadow, shading, image_w, net, shading_w, guide, network_weight: float = 1.0
                            ) -> np.ndarray:
    """The network's albedo (h, w, 3), blended with the photo's ratio to the model and with the photo's detail
    above the working resolution: (H, W, 3) in [0, 1]. guide: the photo's `filtering.Guide` for (w, h).

    The photo's ratio to the model, rgb / (shadow · shading), carries every texture detail at full resolution but
    also whatever the model's shadow and shading miss (cast shadows, a wrong light), at every scale; the
    network's albedo misses texture and keeps some shading. At the working resolution the albedo is their
    weighted geometric mean, exp(w log albedo_net + (1 - w) log ratio_w), w = network_weight (1: the network's
    albedo as it is). So the albedo is the ratio times a gain, exp(guided_upsample(w (log albedo_net - log
    ratio_w))): that mean where the photo is at the working resolution, and the full-resolution ratio's detail
    above it.
    """
    floor = MIN_SHADING * MIN_SHADING  # keeps logs finite for black pixels; they stay black at any gain
    ratio = rgb / np.maximum(shadow[..., None] * shading, MIN_SHADING)  # (H, W, 3)
    ratio_w = image_w / np.maximum(net["shadow"][..., None] * shading_w, MIN_SHADING)  # (h, w, 3)
    log_gain_w = network_weight * (np.log(np.maximum(net["albedo"], floor)) - np.log(np.maximum(ratio_w, floor)))
    log_gain = filtering.guided_upsample(log_gain_w.astype(np.float32), guide)  # (H, W, 3)
    return np.clip(ratio * np.exp(log_gain), 0.0, 1.0).astype(np.float32)


def _relative_depth(log_depth: np.ndarray, image_sky: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Network log depth (h, w) and the photo's own sky (h, w) bool (`sky.detect_sky`) -> depth (h, w) float64
    with median 1 over non-sky pixels, and the sky (h, w) bool.

    Sky: the photo's sky, and depth above SKY_DEPTH_RATIO times the SKY_REFERENCE_PERCENTILE-th percentile
    (depth nets put the sky far, when they see it).
    """
    log_d = np.clip(log_depth - np.median(log_depth), -MAX_LOG_DEPTH, MAX_LOG_DEPTH)
    d = np.exp(log_d)
    sky = image_sky | (d > SKY_DEPTH_RATIO * float(np.percentile(d, SKY_REFERENCE_PERCENTILE)))
    scale = float(np.median(d[~sky])) if not sky.all() else 1.0
    return d / scale, sky


def _load_input(image, fov_deg) -> tuple[np.ndarray, Camera, str, list[str]]:
    """(linear RGB, camera, source name, warnings about the input)."""
    if isinstance(image, str | Path):
        image = load_image(image)
    if isinstance(image, LoadedImage):
        notes = []
        if image.alpha is not None and (image.alpha < 1.0).any():
            notes.append(f"{100 * float((image.alpha < 1.0).mean()):.1f} % of the photo is transparent: the alpha is "
                         "ignored and the colours stored there are decomposed as scene; flatten it onto a background")
        return image.rgb, image.camera(fov_deg), str(image.path), notes
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise ValueError(f"image must have shape (H, W, 3) (linear RGB), got {image.shape}")
        h, w = image.shape[:2]
        return image, Camera.from_fov(w, h, fov_deg) if fov_deg is not None else Camera.from_fov(w, h), "array", []
    raise TypeError(f"image must be a LoadedImage, a path or an (H, W, 3) array, got {type(image).__name__}")


def _input_exposure(rgb: np.ndarray) -> float:
    """1 for a photo whose light is within [0, 1]; 1 / (99th percentile of its luminance) for an HDR one, whose
    light the networks (trained on photos) would otherwise see clipped to white."""
    lum = (rgb[::7, ::7] @ sh.LUMINANCE.astype(np.float32)).ravel()  # a subsample: a percentile, not every pixel
    high = float(np.percentile(lum, 99)) if lum.size else 0.0
    return 1.0 / high if high > 1.0 else 1.0


def _input_warnings(rgb: np.ndarray, non_finite: int) -> list[str]:
    """What makes a photo's estimate unreliable, in words (empty for an ordinary photo)."""
    notes = []
    if non_finite:
        notes.append(f"{non_finite} pixel values were not finite (NaN or infinite) and were taken as black")
    srgb = linear_to_srgb(np.clip(rgb[::7, ::7], 0.0, 1.0))
    if float(srgb.std()) < 0.02 or float(np.median(srgb)) < 0.02:
        notes.append("the photo is almost uniform or black: the estimate has nothing to go on and is unreliable")
    return notes


def decompose(image: LoadedImage | str | Path | np.ndarray, *, fov_deg: float | None = None,
              camera: Camera | None = None, device: str = "auto",
              max_side: int = DEFAULT_MAX_SIDE, irn=DEFAULT_IRN, depth=DEFAULT_DEPTH,
              weights_dir: str | Path | None = None, fusion_lambda: float = NETWORK_FUSION_LAMBDA,
              fusion_max_side: int = DEFAULT_FUSION_MAX_SIDE,
              progress: Callable[[str, float], None] | None = None,
              cancel: threading.Event | Callable[[], bool] | None = None,
              mirror_average: bool = True, shadow=DEFAULT_SHADOW_NET) -> SceneEstimate:
    """One photo -> SceneEstimate (albedo, shading, shadow, normals, depth, fused depth, confidence, lighting).

    image: a LoadedImage, a file path (`io.load_image`), or a linear RGB array (H, W, 3). Camera: `camera`
    (intrinsics for the photo's W x H) if given, else fov_deg (horizontal, degrees), else the photo's EXIF
    focal length, else 60 degrees.
    irn / depth: registry names (user weights folder `weights_dir` first, then the shipped weights), paths to
    .safetensors files, or ready nn.Modules (InverseRenderNet-like: image (1, 3, h, w) -> IRNOutput;
    depth: sRGB image (1, 3, h, w) -> log depth (1, 1, h, w)). shadow: the photo-shadow network likewise
    (`nets.photo_shadow`; None: the IRN's own shadow map, which the shipped IRN leaves empty): it finds the
    photo's cast shadows at the working resolution from the photo and the IRN's maps (after "lighting" below,
    averaged with its mirror image's like the IRN), so that the albedo is free of them. device: "auto", "cpu",
    "cuda".
    Steps (stage names for `progress(stage, fraction)`): "models" load the weights; "irn" and "depth" run the
    networks at `working_size(W, H, max_side)` (each on the photo and its mirror image, averaged, the depth network
    also at DEPTH_SCALES times that size, unless `mirror_average` is False: networks that ignore their input,
    such as test oracles, need it off); "upsample" brings normals (renormalised) and log depth to (H, W)
    with the photo as guide (`filtering.guided_upsample`), and the sky found in the photo (`sky.detect_sky`) and far
    in the depth; "lighting": the IRN's SH lighting (solved in its forward pass, camera frame) reduced to order 1
    over the non-sky pixels (`sh.observed_lighting`, pulled towards the illumination prior's mean with weight
    LIGHTING_PRIOR_WEIGHT), the shadow map (the photo-shadow network's, else the IRN's) brought to (H, W) like the
    normals, the lighting scaled per channel to the photo's colour (`_photo_colour_scale`),
    shading = max(E(normals), 0) and the albedo: at the working resolution the IRN's, blended (in log, with the
    network's `albedo_weight`) with the photo's ratio image / (shadow · shading), with that ratio's detail above it
    (`_full_resolution_albedo`), so image ≈ albedo · shadow · shading up to albedo_weight times (in log) what the
    network's albedo leaves unexplained at the working resolution, and up to the sky's colour, which shadowed
    pixels keep under a one-number shadow map and which is taken out of their albedo (`shadow_tint`, in metadata
    "shadow_tint"); "fusion" fuses
    the depth with the normals (`fuse_network_depth`, at most `fusion_max_side` pixels on the longer side, lam =
    fusion_lambda) weighted by `depth_confidence`; "done" at fraction 1. `cancel` (a threading.Event or a callable
    returning True) is checked between stages and raises `Cancelled`.
    Returns maps at the photo's (H, W); depth is relative (median 1 over non-sky pixels); metadata holds the
    models, sizes, sky fraction and per-stage timings (seconds). Errors: ValueError (bad image, missing or
    mismatched weights, unavailable device), MemoryError (out of GPU memory: lower max_side or use the CPU).
    """
    if not 0.0 < fusion_lambda <= 1.0:  # checked before anything runs
        raise ValueError(f"fusion_lambda must be in (0, 1], got {fusion_lambda}")
    if int(fusion_max_side) != fusion_max_side or fusion_max_side < WORK_MULTIPLE:
        raise ValueError(f"fusion_max_side must be an integer >= {WORK_MULTIPLE}, got {fusion_max_side}")
    stages = _Stages(progress, cancel)
    stages.enter("models")
    rgb, photo_camera, source, notes = _load_input(image, fov_deg)
    camera = photo_camera if camera is None else camera
    rgb = np.maximum(np.asarray(rgb, dtype=np.float32), 0.0)  # a new array: the caller's stays as it was
    non_finite = ~np.isfinite(rgb)
    rgb[non_finite] = 0.0  # (np.nan_to_num takes ten times as long at 24 MP)
    # An HDR photo is brought into the range the networks know; lighting and shading return to its units at the end.
    exposure = _input_exposure(rgb)
    if exposure != 1.0:
        rgb *= np.float32(exposure)
    notes += _input_warnings(rgb, int(non_finite.sum()))
    del non_finite
    H, W = rgb.shape[:2]
    if (camera.width, camera.height) != (W, H):
        raise ValueError(f"the camera is {camera.width}x{camera.height} but the photo is {W}x{H}: give intrinsics "
                         f"for the photo as loaded (after EXIF orientation)")
    w, h = working_size(W, H, max_side)
    dev = resolve_device(device)
    irn_model, irn_info = _load_network(irn, "irn", weights_dir, dev)
    depth_model, depth_info = _load_network(depth, "megadepth", weights_dir, dev)
    shadow_model, shadow_info = (None, None) if shadow is None else _load_network(shadow, "photo_shadow",
                                                                                  weights_dir, dev)

    stages.enter("irn")
    image_w = rgb if (w, h) == (W, H) else resize_linear(rgb, w, h)  # (h, w, 3), area average
    net = _run_networks(irn_model, depth_model, image_w, dev, stages, mirror_average)
    depth_w, sky_w = _relative_depth(net["log_depth"], detect_sky(image_w))  # (h, w) each

    stages.enter("upsample")
    guide = linear_to_srgb(np.clip(rgb, 0.0, 1.0)).astype(np.float32)  # (H, W, 3): edges as seen, not linear
    guide_up = filtering.Guide(guide, w, h)  # prepared once for the five maps upsampled from (h, w)
    normals = filtering.upsample_normals(net["normals"], guide_up)  # (H, W, 3)
    log_depth_full = filtering.guided_upsample(np.log(depth_w), guide_up)  # (H, W)
    depth_full = np.exp(log_depth_full).astype(np.float32)
    sky = filtering.guided_upsample(sky_w.astype(np.float32), guide_up) > 0.5  # (H, W), along the photo's edges
    sky = extend_sky(rgb, sky, math.ceil(SKY_EDGE_REACH * W / w))  # up to the sky's edges

    stages.enter("lighting")
    ground_w = _working_ground(sky_w)
    lighting, observed, shading_w = _working_lighting(net, ground_w)
    if shadow_model is not None:  # the photo's cast shadows, which the IRN's map misses
        from .nets.photo_shadow import photo_shadow_features

        features = photo_shadow_features(image_w, net["normals"], shading_w, depth_w, sky_w)
        net["shadow"] = shadow_model.apply(features, mirror_average)
    shadow = np.clip(filtering.guided_upsample(net["shadow"], guide_up, eps=SHADOW_UPSAMPLE_EPS), 0.0, 1.0)
    scale = _photo_colour_scale(image_w, net["albedo"] * net["shadow"][..., None] * shading_w, ground_w)
    lighting, shading_w = lighting * scale, shading_w * scale
    shading = sh.shading_image(normals, lighting)  # (H, W, 3) float32
    np.maximum(shading, 0.0, out=shading)  # in place: a 24-megapixel map is 288 MB
    albedo_weight = getattr(irn_model, "albedo_weight", 1.0)  # the network's calibration (registry config)
    albedo = _full_resolution_albedo(rgb, shadow, shading, image_w, net, shading_w, guide_up, albedo_weight)
    tint = shadow_tint(resize_linear(albedo, w, h), net["shadow"], ground_w)
    if tint is not None:
        without_shadow_tint(albedo, shadow, ~sky, *tint)

    stages.enter("fusion")
    fw, fh = _fusion_size(W, H, fusion_max_side)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        depth_fused, confidence = _fuse_at(fw, fh, camera, guide, normals, depth_w, log_depth_full, sky,
                                           fusion_lambda)
    stages.enter("done")
    if exposure != 1.0:
        rgb /= np.float32(exposure)
        shading /= np.float32(exposure)
        lighting = lighting / exposure

    metadata = {
        "source": source, "geometry_source": "networks", "depth_scale": "relative",
        "models": {"irn": irn_info, "depth": depth_info, "shadow": shadow_info}, "device": str(dev),
        "working_size": [w, h], "fusion_size": [fw, fh], "fusion_lambda": fusion_lambda,
        "albedo_network_weight": albedo_weight,
        "shadow_tint": None if tint is None else [round(float(t), 4) for t in tint[0]],
        "lighting_source": "network (least squares at the working resolution" + (
            ", reduced to order 1 as observed)" if observed else "; its order-1 reduction left a channel dark)"),
        "sky_fraction": round(float(sky.mean()), 6),
        "input_exposure": exposure,
        "timings_s": stages.timings,
    }
    notes += [str(c.message) for c in caught]
    if notes:
        metadata["warnings"] = notes
    return SceneEstimate(image=rgb, albedo=albedo, shading=shading, normals=normals, depth=depth_full,
                         depth_fused=depth_fused, confidence=confidence, lighting=lighting.astype(np.float32),
                         camera=camera, metadata=metadata, shadow=shadow.astype(np.float32), sky=sky)


def _fuse_at(fw, fh, camera, guide, normals, depth_w, log_depth_full, sky, lam):
    """Fused depth and confidence at (H, W), computed on a (fh, fw) grid; sky (H, W) bool is not fused."""
    H, W = guide.shape[:2]
    cam_f = camera.resized(fw, fh)
    if (fw, fh) == (W, H):
        normals_f, log_depth_f, sky_f = normals, log_depth_full, sky
    else:
        normals_f = filtering.renormalise_normals(resize_linear(normals, fw, fh))
        log_depth_f = filtering.guided_upsample(np.log(depth_w), resize_linear(guide, fw, fh))
        sky_f = resize_linear(sky.astype(np.float32), fw, fh) > 0.5
    depth_f = np.exp(log_depth_f).astype(np.float32)
    # Discontinuities the network drew at its own resolution, carried to the fusion grid (slightly dilated).
    band_w = _dilate(geometry.depth_discontinuities(depth_w, discontinuity_threshold(depth_w)),
                     BAND_RADIUS).astype(np.float32)
    band = resize_linear(band_w, fw, fh) > 1e-6
    threshold = discontinuity_threshold(depth_f, ~(sky_f | band))  # the fusion's own, computed once for both
    confidence = depth_confidence(depth_f, normals_f, cam_f, exclude=sky_f | band, threshold=threshold)
    fused = fuse_network_depth(depth_f, normals_f, cam_f, lam=lam, confidence=confidence, exclude=sky_f,
                               threshold=threshold, band=band, band_reach=BAND_REACH * math.ceil(fw / depth_w.shape[1]))
    fused = np.where(np.isfinite(fused) & (fused > 0), fused, depth_f)  # finite everywhere
    if (fw, fh) != (W, H):
        # What fusion changed (in log: ratios, as depth errors are) is upsampled bilinearly onto the network's depth,
        # which `guided_upsample` already brought to the photo's edges: a colour guided filter computed on the
        # large fusion grid itself cost 0.3-0.6 s more at 1 MP for the same depth (KITTI 000002 fused 0.4854).
        change = resize_linear((np.log(fused) - log_depth_f).astype(np.float32), W, H)
        fused = np.exp(log_depth_full + change)
        fused[sky] = np.exp(log_depth_full[sky])  # not fused: the network's depth, as on the fusion grid
        confidence = np.clip(resize_linear(confidence, W, H), 0.0, 1.0)
        confidence[sky] = 0.0
    if W > depth_w.shape[1]:
        # The network's discontinuities came up as ramps a few pixels wide, which no relative-jump test between
        # neighbours (meshing, the background layer) would cut: make them steps again.
        near_step = resize_linear(band_w, W, H) > 1e-6
        fused = np.exp(filtering.snap_to_steps(np.log(fused), near_step, radius=math.ceil(W / depth_w.shape[1]),
                                               min_step=np.log1p(geometry.DEFAULT_DISCONTINUITY_THRESHOLD),
                                               ignore=sky))
    return fused.astype(np.float32), confidence.astype(np.float32)
