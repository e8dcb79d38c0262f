"""Photo -> relightable scene: the one call the operator and the CLI share.

Geometry and lighting come from the networks (`scene.decompose`), or from given depth and normal maps (an
RGB-D capture) when the settings name both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import bpy

from invrender_core import fusion, geometry
from invrender_core import scene as core_scene
from invrender_core.camera import Camera
from invrender_core.io import load_image, read_exr
from invrender_core.relight import DEFAULT_SUN_TO_SKY

from .relight import RelightSettings, apply_relight, placed_sun
from .scene import BuiltScene, SceneAssets, build_scene


@dataclass
class ImportSettings:
    """What an import needs. depth and normals: maps to use instead of the networks (both or neither); irn,
    depth_net, shadow_net: network weights (registry names or paths; shadow_net None: the IRN's shadow map);
    fov_deg overrides EXIF and the default; relight_sun = (elevation, azimuth): a new sun placed there as the
    Relight panel places it (`relight.apply_relight`), sun_to_sky times as bright as the sky; background_band:
    how far the background layer reaches in behind occluders, a share of the photo's longer side (0: no layer);
    match_photo: a gain on the albedo so that the scene renders as bright as the photo (`scene.match_photo`)."""

    photo: Path
    depth: Path | None = None
    normals: Path | None = None
    camera_json: Path | None = None
    irn: str = core_scene.DEFAULT_IRN
    depth_net: str = core_scene.DEFAULT_DEPTH
    shadow_net: str | None = core_scene.DEFAULT_SHADOW_NET
    device: str = "auto"
    max_side: int = core_scene.DEFAULT_MAX_SIDE
    weights_dir: Path | None = None
    fov_deg: float | None = None
    fusion_lambda: float | None = None  # None: scene.NETWORK_FUSION_LAMBDA, or fusion.DEFAULT_LAMBDA with maps
    mesh_step: int = 1
    discontinuity_threshold: float = geometry.DEFAULT_DISCONTINUITY_THRESHOLD
    sun_fraction: float = core_scene.DEFAULT_SUN_FRACTION
    background_band: float = core_scene.DEFAULT_BACKGROUND_BAND
    relight_sun: tuple[float, float] | None = None
    sun_to_sky: float = DEFAULT_SUN_TO_SKY
    match_photo: bool = True


def estimate(settings: ImportSettings, progress=None, cancel=None) -> core_scene.SceneEstimate:
    """The bpy-free part: load the files and run the core pipeline (progress, cancel: see `scene.decompose`)."""
    if (settings.depth is None) != (settings.normals is None):
        raise ValueError("give both a depth and a normal map, or neither to estimate them with the networks")
    image = load_image(settings.photo)
    camera = None
    if settings.camera_json is not None:
        camera = Camera.from_dict(core_scene.read_json(settings.camera_json))
    lam = settings.fusion_lambda
    if settings.depth is None:
        return core_scene.decompose(image, fov_deg=settings.fov_deg, camera=camera, device=settings.device,
                                    max_side=settings.max_side, irn=settings.irn, depth=settings.depth_net,
                                    shadow=settings.shadow_net,
                                    weights_dir=settings.weights_dir,
                                    fusion_lambda=core_scene.NETWORK_FUSION_LAMBDA if lam is None else lam,
                                    progress=progress, cancel=cancel)
    camera = camera or image.camera(settings.fov_deg)
    depth = read_exr(settings.depth)
    normals = read_exr(settings.normals)
    return core_scene.estimate_from_geometry(image.rgb, depth, normals, camera,
                                            lam=fusion.DEFAULT_LAMBDA if lam is None else lam)


def import_photo(settings: ImportSettings, scene: bpy.types.Scene | None = None,
                 estimate_result: core_scene.SceneEstimate | None = None, progress=None) -> BuiltScene:
    """Estimate (unless given; progress(stage, fraction) as `scene.decompose`) and build the scene; the scene is
    untouched if anything fails."""
    relight = None
    if settings.relight_sun is not None:
        relight = RelightSettings(sun_angles=tuple(settings.relight_sun), sun_to_sky=settings.sun_to_sky)
        relight.check()
    result = estimate_result if estimate_result is not None else estimate(settings, progress=progress)
    assets = core_scene.scene_assets(result, name=Path(settings.photo).stem, mesh_step=settings.mesh_step,
                                     discontinuity_threshold=settings.discontinuity_threshold,
                                     sun_fraction=settings.sun_fraction, background_band=settings.background_band)
    if relight is not None:  # what could stop the relight below stops the import before it builds anything
        if assets["sun"] is None:
            raise ValueError("the photo's estimated lighting has no dominant direction, so there is no sun to "
                             "place: import it without a new sun and light it with the physical sky")
        placed_sun(result.lighting, settings.sun_fraction, *relight.sun_angles, relight.sun_to_sky)
    # The fused depth, sky and camera-frame lighting are kept so the 2D relight preview works from the .blend.
    scene = scene or bpy.context.scene
    built = build_scene(SceneAssets(**assets, depth_fused=result.depth_fused, sky=result.sky,
                                    lighting_camera=result.lighting, sun_fraction=settings.sun_fraction,
                                    source=str(Path(settings.photo).resolve()), match_photo=settings.match_photo),
                        scene)
    if relight is not None:  # the sun goes where the Relight panel would put it
        apply_relight(scene, built, relight)
    return built
