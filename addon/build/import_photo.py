"""Photo (+ depth and normal maps) -> relightable scene: the one call the operator and the CLI share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bpy

from invrender_core import fusion, geometry
from invrender_core import scene as core_scene
from invrender_core.camera import Camera
from invrender_core.io import load_image, read_exr

from .scene import BuiltScene, SceneAssets, build_scene


@dataclass
class ImportSettings:
    """What an import needs. fov_deg overrides EXIF and the default; relight_sun = (elevation, azimuth)."""

    photo: Path
    depth: Path
    normals: Path
    camera_json: Path | None = None
    fov_deg: float | None = None
    fusion_lambda: float = fusion.DEFAULT_LAMBDA
    mesh_step: int = 1
    discontinuity_threshold: float = geometry.DEFAULT_DISCONTINUITY_THRESHOLD
    sun_fraction: float = core_scene.DEFAULT_SUN_FRACTION
    relight_sun: tuple[float, float] | None = None


def estimate(settings: ImportSettings) -> core_scene.SceneEstimate:
    """The bpy-free part: load the files and run the core pipeline."""
    image = load_image(settings.photo)
    if settings.camera_json is not None:
        camera = Camera.from_dict(core_scene.read_json(settings.camera_json))
    else:
        camera = image.camera(settings.fov_deg)
    depth = read_exr(settings.depth)
    normals = read_exr(settings.normals)
    return core_scene.estimate_from_geometry(image.rgb, depth, normals, camera, lam=settings.fusion_lambda)


def import_photo(settings: ImportSettings, scene: bpy.types.Scene | None = None,
                 estimate_result: core_scene.SceneEstimate | None = None) -> BuiltScene:
    """Estimate (unless given) and build the scene; the scene is untouched if anything fails."""
    result = estimate_result if estimate_result is not None else estimate(settings)
    assets = core_scene.scene_assets(result, name=Path(settings.photo).stem, mesh_step=settings.mesh_step,
                                     discontinuity_threshold=settings.discontinuity_threshold,
                                     sun_fraction=settings.sun_fraction, relight_sun=settings.relight_sun)
    return build_scene(SceneAssets(**assets), scene or bpy.context.scene)
