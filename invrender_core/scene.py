"""Photo -> SceneEstimate: the one pipeline the add-on and the CLI call.

Until the inverse-rendering and depth networks land, geometry comes from the caller (depth and normal
maps, e.g. from an RGB-D capture); `estimate_from_geometry` fuses them (Nehab et al. 2005), fits SH
lighting and derives albedo. The networks will supply depth and normals to the same function.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import fusion, geometry, sh
from .camera import Camera
from .illumination_prior import IlluminationPrior
from .io import save_preview_sheet, srgb_to_linear, write_exr

# Albedo and light intensity are only known up to a common scale; we fix it by giving the median
# albedo this luminance (a typical outdoor material).
MEDIAN_ALBEDO_LUMINANCE = 0.4
MIN_SHADING = 1e-3
# Share of the lighting's directional part that becomes a sun lamp (the rest stays in the environment).
DEFAULT_SUN_FRACTION = 0.6


@dataclass
class SceneEstimate:
    """Everything the scene builder needs, at the photo's resolution.

    image (H, W, 3) linear RGB; albedo (H, W, 3); shading (H, W, 3) = E(normal); normals (H, W, 3)
    camera frame; depth (H, W) input depth; depth_fused (H, W); confidence (H, W) in [0, 1];
    lighting (9, 3) SH in the camera frame; camera the photo's intrinsics.
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
    """Fuse depth with normals, fit order-2 SH lighting, derive albedo.

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
    shading = sh.shading(normals, lighting).astype(np.float32)  # (H, W, 3)
    albedo = image / np.maximum(shading, MIN_SHADING)
    median = float(np.median(albedo[valid] @ sh.LUMINANCE))
    scale = MEDIAN_ALBEDO_LUMINANCE / max(median, 1e-6)
    albedo = np.clip(albedo * scale, 0.0, 1.0).astype(np.float32)
    lighting = (lighting / scale).astype(np.float32)
    shading = (shading / scale).astype(np.float32)

    return SceneEstimate(image=image, albedo=albedo, shading=shading, normals=normals, depth=depth,
                         depth_fused=depth_fused.astype(np.float32), confidence=confidence.astype(np.float32),
                         lighting=lighting, camera=camera,
                         metadata={"geometry_source": source, "depth_scale": "relative", "fusion_lambda": lam})


def write_estimate(estimate: SceneEstimate, out_dir: str | Path) -> Path:
    """Write the DESIGN.md file contract into out_dir, atomically: all files or none.

    Files go to a temporary sibling folder that is renamed at the end, so a failure leaves no partial
    output. An existing out_dir is replaced only after everything was written.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        write_exr(tmp / "albedo.exr", estimate.albedo)
        write_exr(tmp / "shading.exr", estimate.shading)
        write_exr(tmp / "normal.exr", estimate.normals)
        write_exr(tmp / "depth.exr", estimate.depth)
        write_exr(tmp / "depth_fused.exr", estimate.depth_fused)
        write_exr(tmp / "confidence.exr", estimate.confidence)
        (tmp / "lighting.json").write_text(json.dumps(
            {"sh": estimate.lighting.tolist(), "frame": "camera", "convention": "ramamoorthi-hanrahan"},
            indent=2) + "\n")
        (tmp / "camera.json").write_text(json.dumps(
            {**estimate.camera.to_dict(), **estimate.metadata}, indent=2) + "\n")
        save_preview_sheet(tmp / "preview.png", [
            ("photo", estimate.image), ("albedo", estimate.albedo), ("shading", _for_display(estimate.shading)),
            ("normals", srgb_to_linear(0.5 * (estimate.normals + 1.0))),  # shown as a normal map's colours
            ("depth (fused)", _depth_for_display(estimate)),
        ])
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes a private folder; the output is an ordinary one
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


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


def scene_assets(estimate: SceneEstimate, name: str, mesh_step: int = 1,
                 discontinuity_threshold: float = geometry.DEFAULT_DISCONTINUITY_THRESHOLD,
                 environment_height: int = 128, sun_fraction: float = DEFAULT_SUN_FRACTION,
                 relight_sun: tuple[float, float] | None = None) -> dict:
    """Everything addon/build/scene.SceneAssets needs, computed without bpy.

    The SH lighting is moved to the world frame and split into a sun lamp (a share `sun_fraction` of
    its directional part, for sharp cast shadows) and an environment image holding the rest. With
    `relight_sun=(elevation_deg, azimuth_deg)` the sun is moved there and the environment rotated with it.
    """
    mesh = geometry.grid_mesh(estimate.depth_fused, estimate.camera,
                              discontinuity_threshold=discontinuity_threshold, step=mesh_step)
    lighting_world = sh.rotation(sh.CAMERA_TO_WORLD) @ estimate.lighting
    direction, irradiance, rest = sh.extract_sun(lighting_world, sun_fraction)
    if relight_sun is not None:
        target = sun_direction(*relight_sun)
        rest = sh.rotation(geometry.rotation_between(direction, target)) @ rest
        direction = target
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
    }


def read_json(path: str | Path) -> dict:
    """A JSON file as a dict, with a one-line error that names the file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as e:
        raise ValueError(f"{path} does not exist: check the path") from e
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON ({e}): give a camera.json written by invrender") from e
