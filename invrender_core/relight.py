"""Relight a decomposed photo under a new sun and sky in 2D (Yu et al., ECCV 2020): seconds, no Blender.

The photo's decomposition (`scene.decompose`) gives albedo, normals, the shadow map and fused depth. The
albedo holds no shading and no shadows (the network's, with the photo's fine detail), and the photo is rendered
again under the new light as

    relit = albedo · (sun irradiance · max(n · s, 0) · visibility + E_sky(n))

where visibility is the new sun's cast shadow, found by marching rays towards the sun through the fused depth
(`cast_shadow`; soft shadows by averaging directions within the sun's disc) and E_sky is the sky's SH shading.
Sky pixels are scaled by the ratio of the new lighting's mean to the photo's, and recoloured by the ratio of
the skies' colours, so clouds keep their texture. `nets/relight_refine.py` optionally corrects what this simple
model misses.

Frames and units follow DESIGN.md: the camera frame (x right, y up, z towards the viewer), linear RGB, SH
lighting (9, 3) in the irradiance convention, and a sun given by its direction (towards the sun) and RGB
irradiance in the same units as E(n), i.e. it adds ``irradiance · max(n · s, 0)`` to the shading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import geometry, sh
from .camera import Camera
from .io import resize_linear
from .scene import DEFAULT_SUN_FRACTION, SceneEstimate, sun_direction

DEFAULT_SUN_ANGLE_DEG = 0.53  # the real sun's angular diameter
DEFAULT_SHADOW_SAMPLES = 4
DEFAULT_SHADOW_STEPS = 40
DEFAULT_SHADOW_MAX_SIDE = 640
DEFAULT_REFINER = "relight-refine-small"
DEFAULT_SHADOW_REFINER = "shadow-refine-small"
# Rays start this far from the surface (relative to its depth) so that a surface does not shadow itself.
SHADOW_START = 0.004
# Rays go this far (relative to the depth of the surface they start from): far enough for a building to
# shadow the street in front of it, not so far that the sky-facing rays of every pixel are marched forever.
SHADOW_REACH = 2.0
# A ray point is hidden by the visible surface when it is behind it by more than this (relative to its depth):
# nearest-pixel lookups of a slanted surface's depth are off by up to half a pixel's depth change.
SHADOW_BIAS = 0.01
# A ray point behind the visible surface counts as inside an object when it is at most this far behind it
# (relative to its depth): objects are solid but not infinitely deep, so a ray passing far behind a thin
# foreground pole is not shadowed by it.
SHADOW_THICKNESS = 0.2
# The scene goes on past the photo's edges: a ray leaving the frame keeps marching, up to this many frame
# sizes beyond it, against the depth of the nearest border pixel (a building cut by the frame's edge still
# casts its shadow; a sky border pixel never occludes). On the relight validation views (scenes 0-44 of the
# README's second-light set) cast-shadow IoU rose from 0.23 to 0.27 with the networks' depth, 0.47 to 0.53
# with the true depth; 0.5 frame sizes gave 0.26 and 0.53.
SHADOW_BEYOND_FRAME = 1.0
SKY_RATIO_LIMITS = (0.05, 20.0)  # how far a sky pixel's colour may be scaled per channel
# A sky's shading is at least this share of its mean (per channel). Order-2 SH of a sky whose sun was taken out
# dips below zero for surfaces turned away from it (illumination-prior samples: up to a fifth of a photo's pixels),
# and those went black in the sun's shadow; real skylight (and the ground's bounce) never reaches zero.
SKY_SHADING_FLOOR = 0.2
# The strength of a new sun (`with_sun_to_sky`) unless one is given. A photo's own sun cannot be measured: an
# order-1 lighting (`sh.observed_lighting`) keeps it at most about as bright as the sky (estimated 0.4-1.0 on the
# relighting held-out photos, whose true ratio is 5-13, median 9.9), and new suns that took it cast shadows 5-10 %
# darker than the light around them. Chosen on the relighting validation views (90 of the 180 of
# datagen/out/relight's train split, light B's direction, sky and colour at the photo's mean level), refined SI
# log-luminance RMSE at ratios 0.5 / 1 / 2 / 3 / 4 / 6 / 9: 0.852 / 0.825 / 0.795 / 0.781 / 0.774 / 0.773 / 0.781,
# and 0.782 with each view's true strength: the marched shadows are often wrong, and a moderate sun shows them less
# (4 and 6 tie; the weaker one shows the wrong ones less).
DEFAULT_SUN_TO_SKY = 4.0
# Sunlight dims and reddens towards the horizon (a sun at 5 degrees keeps 30 / 13 / 2 % of its red / green / blue).
# Zenith optical depths of a clear atmosphere at 680 / 550 / 440 nm: Rayleigh scattering, 0.0088 λ^-4.05 (λ in µm),
# plus aerosol of optical depth 0.1 at 550 nm with Ångström exponent 1.3; crossed along the relative air mass of
# Kasten & Young (1989).
SUN_OPTICAL_DEPTH = np.array([0.118, 0.199, 0.379])


def air_mass(elevation_deg: float) -> float:
    """Relative optical air mass towards a sun `elevation_deg` above the horizon (Kasten & Young 1989): 1 at the
    zenith, about 38 at the horizon; elevations below the horizon count as on it."""
    e = max(float(elevation_deg), 0.0)
    return 1.0 / (math.sin(math.radians(e)) + 0.50572 * (e + 6.07995) ** -1.6364)


def sun_transmittance(elevation_deg: float) -> np.ndarray:
    """(3,) share of the sun's red, green and blue light that crosses a clear atmosphere at `elevation_deg`."""
    return np.exp(-SUN_OPTICAL_DEPTH * air_mass(elevation_deg))


@dataclass(frozen=True)
class Sun:
    """A distant sun: direction (3,) unit vector towards it (camera frame), irradiance (3,) RGB, angular
    diameter in degrees (0: hard shadows)."""

    direction: np.ndarray
    irradiance: np.ndarray
    angle_deg: float = DEFAULT_SUN_ANGLE_DEG

    def __post_init__(self):
        d = np.asarray(self.direction, dtype=np.float64)
        e = np.broadcast_to(np.asarray(self.irradiance, dtype=np.float64), (3,)).copy()
        if d.shape != (3,) or not np.isfinite(d).all() or not np.linalg.norm(d) > 0:
            raise ValueError(f"sun direction must be a finite non-zero (3,) vector, got {self.direction!r}")
        if not (np.isfinite(e).all() and (e >= 0).all()):
            raise ValueError(f"sun irradiance must be finite and non-negative (3,), got {self.irradiance!r}")
        if not 0.0 <= self.angle_deg < 30.0:
            raise ValueError(f"sun angle must be in [0, 30) degrees, got {self.angle_deg}")
        object.__setattr__(self, "direction", d / np.linalg.norm(d))
        object.__setattr__(self, "irradiance", e)


@dataclass(frozen=True)
class Lighting:
    """New lighting: sky (9, 3) SH in the camera frame without the sun, and an optional sun."""

    sky: np.ndarray
    sun: Sun | None = None

    def __post_init__(self):
        sky = np.asarray(self.sky, dtype=np.float64)
        if sky.shape != (9, 3) or not np.isfinite(sky).all():
            raise ValueError(f"sky must be finite SH coefficients of shape (9, 3), got {np.shape(self.sky)}")
        object.__setattr__(self, "sky", sky)

    def sh(self) -> np.ndarray:
        """The whole lighting as SH (9, 3): sky plus the sun's order-2 projection."""
        if self.sun is None:
            return self.sky.copy()
        return self.sky + np.outer(sh.radiance_basis(self.sun.direction), self.sun.irradiance)

    def mean_luminance(self) -> float:
        """Luminance of the whole lighting's SH coefficient 0 (sky and sun): its mean, in coefficient units."""
        return float(self.sh()[0] @ sh.LUMINANCE)


@dataclass
class RelitImage:
    """image (H, W, 3) linear RGB; visibility (H, W) of the new sun in [0, 1] (1 on sky); sun_shading (H, W, 3)
    = irradiance · max(n · s, 0) · visibility; sky_shading (H, W, 3) = E_sky(n); sky (H, W) bool."""

    image: np.ndarray
    visibility: np.ndarray
    sun_shading: np.ndarray
    sky_shading: np.ndarray
    sky: np.ndarray
    metadata: dict = field(default_factory=dict)


def sun_direction_camera(elevation_deg: float, azimuth_deg: float, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """Unit (3,) camera-frame direction towards a sun at `elevation_deg` above the horizon.

    The horizon is the plane perpendicular to `up` (3,) (camera frame; default the camera's own y axis, i.e.
    a level camera). Azimuth as in `scene.sun_direction`: 0 puts the sun behind the camera (front light),
    90 to the camera's right, 180 in front of it (backlight).
    """
    up = np.asarray(up, dtype=np.float64)
    if up.shape != (3,) or not np.linalg.norm(up) > 0:
        raise ValueError(f"up must be a non-zero (3,) vector, got {up!r}")
    up = up / np.linalg.norm(up)
    back = np.array([0.0, 0.0, 1.0]) - up[2] * up  # the viewer's side, in the horizon plane
    if np.linalg.norm(back) < 1e-6:
        raise ValueError("up must not point along the viewing direction")
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    # scene.sun_direction gives (right, forward, up) components in the world frame of a level camera.
    r, f, u = sun_direction(elevation_deg, azimuth_deg)
    return r * right - f * back + u * up


def lighting_from_estimate(L, sun_fraction: float = DEFAULT_SUN_FRACTION,
                           angle_deg: float = DEFAULT_SUN_ANGLE_DEG) -> Lighting:
    """Split estimated SH lighting L (9, 3) into a sun (a share `sun_fraction` of its directional part, as the
    scene builder does) and the sky that remains."""
    direction, irradiance, rest = sh.extract_sun(L, sun_fraction)
    sun = Sun(direction, irradiance, angle_deg) if irradiance.max() > 0 else None
    return Lighting(sky=rest, sun=sun)


def with_sun_to_sky(lighting: Lighting, ratio: float) -> Lighting:
    """`lighting` with its sun's irradiance set to `ratio` times the sky's mean shading (luminance; the sky's
    DC term), colour kept. Clear days give about 5 to 13 (hard shadows), hazy ones 1 to 3."""
    if not ratio >= 0:
        raise ValueError(f"the sun-to-sky ratio must be >= 0, got {ratio}")
    if lighting.sun is None:
        raise ValueError("the lighting has no sun whose strength could be set")
    sky_mean = float(sh.C4 * lighting.sky[0] @ sh.LUMINANCE)
    sun_lum = float(lighting.sun.irradiance @ sh.LUMINANCE)
    if not (sky_mean > 0 and sun_lum > 0):
        raise ValueError("the sun-to-sky ratio needs a sky and a sun that are both bright")
    sun = lighting.sun
    return Lighting(sky=lighting.sky, sun=Sun(sun.direction, sun.irradiance * ratio * sky_mean / sun_lum,
                                              sun.angle_deg))


def move_sun(lighting: Lighting, direction, up=(0.0, 1.0, 0.0)) -> Lighting:
    """The same lighting with the sun moved to `direction` (3,) and the sky turned about `up` (camera frame) by
    the sun's change of azimuth, as the 3D scene's Relight turns its environment (addon/build/relight.py): the
    sky's bright side follows the sun around the horizon and the sky stays upright (turned along the shortest arc
    from the old sun to the new, a lowered sun tilted the sky and lit surfaces from below). Without a sun only
    the sky turns, by the azimuth of its dominant direction."""
    target = np.asarray(direction, dtype=np.float64)
    source = lighting.sun.direction if lighting.sun is not None else sh.dominant_direction(lighting.sky)
    R = geometry.azimuth_turn(source, target, up)
    sun = None if lighting.sun is None else Sun(target, lighting.sun.irradiance, lighting.sun.angle_deg)
    return Lighting(sky=sh.rotation(R) @ lighting.sky, sun=sun)


def place_sun(base: Lighting, direction, up=(0.0, 1.0, 0.0), sun_to_sky: float | None = DEFAULT_SUN_TO_SKY
              ) -> Lighting:
    """`base` with the sun moved to `direction` (3,) and the sky turned about `up` with it (`move_sun`); the 2D
    relight and the 3D scene's Relight both place their suns with it. With `sun_to_sky` (not None), a new sun: made
    that many times as bright as the sky's mean, both then scaled to the base's mean (DC) luminance (the ratio
    shares the light between sun and sky, it does not add light: a photo of a strong sun is not brighter than its
    exposure says), then dimmed and reddened by the air it crosses at its elevation above the horizon of `up`,
    `sun_transmittance` relative to the zenith's. A base without a sun gets one of its sky's colour. Any frame
    will do (camera or world) as long as `direction`, `up` and the base share it."""
    lighting = move_sun(base, direction, up)
    if sun_to_sky is None:
        return lighting
    if lighting.sun is None:
        sun = Sun(direction, np.maximum(lighting.sky[0], 0.0), DEFAULT_SUN_ANGLE_DEG)
        lighting = Lighting(sky=lighting.sky, sun=sun)
    lighting = _scaled_to(with_sun_to_sky(lighting, sun_to_sky), base)
    up = np.asarray(up, dtype=np.float64) / np.linalg.norm(up)
    elevation = math.degrees(math.asin(float(np.clip(lighting.sun.direction @ up, -1.0, 1.0))))
    air = sun_transmittance(elevation) / sun_transmittance(90.0)
    sun = lighting.sun
    return Lighting(sky=lighting.sky, sun=Sun(sun.direction, sun.irradiance * air, sun.angle_deg))


def _disc_directions(direction: np.ndarray, angle_deg: float, samples: int) -> np.ndarray:
    """(samples, 3) unit directions spread over the sun's disc (a Vogel spiral; the centre when samples == 1)."""
    if samples == 1 or angle_deg == 0.0:
        return direction[None]
    a = np.cross(direction, np.eye(3)[np.argmin(np.abs(direction))])
    a /= np.linalg.norm(a)
    b = np.cross(direction, a)
    k = np.arange(samples) + 0.5
    radius = math.tan(math.radians(angle_deg) / 2.0) * np.sqrt(k / samples)
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    d = direction + radius[:, None] * (np.cos(phi)[:, None] * a + np.sin(phi)[:, None] * b)
    return d / np.linalg.norm(d, axis=1, keepdims=True)


def cast_shadow(depth, camera: Camera, direction, sky=None, angle_deg: float = DEFAULT_SUN_ANGLE_DEG,
                samples: int = DEFAULT_SHADOW_SAMPLES, steps: int = DEFAULT_SHADOW_STEPS,
                thickness: float = SHADOW_THICKNESS, reach: float = SHADOW_REACH,
                beyond_frame: float = SHADOW_BEYOND_FRAME, seed: int = 0) -> np.ndarray:
    """Sun visibility (H, W) float32 in [0, 1] by marching rays towards the sun through a depth map.

    depth (H, W) planar depth (<= 0 or non-finite: unknown, never occludes, visible); camera its intrinsics;
    direction (3,) towards the sun, camera frame; sky (H, W) bool pixels that never occlude (visible).
    From each pixel's 3D point a ray towards the sun is sampled at `steps` distances growing geometrically from
    SHADOW_START to `reach` times the point's depth (jittered per pixel against banding); a sample is
    occluded when the surface seen at its pixel is in front of it by more than SHADOW_BIAS and by less than
    `thickness` times its depth (plus the last step's depth change, so thin objects are not stepped over).
    Beyond the image's edges the scene is taken to continue as its border pixels (for `beyond_frame` times the
    image's width and height on each side); rays leaving that or passing behind the camera are unoccluded.
    Soft shadows: the mean over `samples` directions within the sun's disc of `angle_deg`.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.shape != (camera.height, camera.width):
        raise ValueError(f"depth has shape {depth.shape}, expected {(camera.height, camera.width)} of the camera")
    sky = np.zeros(depth.shape, bool) if sky is None else np.asarray(sky, bool)
    if sky.shape != depth.shape:
        raise ValueError(f"sky has shape {sky.shape}, expected {depth.shape} to match depth")
    if samples < 1 or steps < 1:
        raise ValueError(f"samples and steps must be >= 1, got {samples} and {steps}")
    if not beyond_frame >= 0:
        raise ValueError(f"beyond_frame must be >= 0, got {beyond_frame}")
    direction = np.asarray(direction, dtype=np.float64)
    if direction.shape != (3,) or not np.linalg.norm(direction) > 0:
        raise ValueError(f"direction must be a non-zero (3,) vector, got {direction!r}")
    direction = direction / np.linalg.norm(direction)

    H, W = depth.shape
    known = geometry.valid_mask(depth) & ~sky
    # float32 throughout the march: half the memory traffic of float64, and depth ratios need no more.
    occluder_depth = np.where(known, depth, np.inf).astype(np.float32).ravel()  # (H*W,): unknown, sky never occlude
    start = np.flatnonzero(known)  # pixels whose visibility we march
    points = geometry.backproject(np.where(known, depth, 0.0), camera).reshape(-1, 3)[start]  # (N, 3)
    px, py, pz = (np.ascontiguousarray(points[:, c], np.float32) for c in range(3))  # (N,) each
    d0 = depth.ravel()[start].astype(np.float32)  # (N,)
    rng = np.random.default_rng(seed)
    ratio = (reach / SHADOW_START) ** (1.0 / max(steps - 1, 1))
    occluded_sum = np.zeros(start.size, np.float32)
    directions = _disc_directions(direction, angle_deg, samples)  # (S, 3)
    f32 = np.float32
    for s in directions:
        sx, sy, sz = f32(s[0]), f32(s[1]), f32(s[2])
        # (N,) distance along the ray at step 0, jittered per pixel against banding
        t0 = d0 * f32(SHADOW_START) * (f32(ratio) ** rng.uniform(0.0, 1.0, start.size).astype(np.float32))
        active = np.arange(start.size)  # rays still marching
        for k in range(steps):
            if active.size == 0:
                break
            t = t0[active] * f32(ratio ** k)  # (n,) distance along the ray
            step_depth = t * f32((1.0 - 1.0 / ratio) * abs(s[2]))  # (n,) depth change over the last step
            qd = -(pz[active] + t * sz)  # (n,) planar depth of the ray point
            with np.errstate(divide="ignore", invalid="ignore"):
                u = f32(camera.cx) + f32(camera.fx) * (px[active] + t * sx) / qd
                v = f32(camera.cy) - f32(camera.fy) * (py[active] + t * sy) / qd
            in_scene = ((qd > 0) & (u >= -beyond_frame * W) & (u < (1 + beyond_frame) * W)
                      & (v >= -beyond_frame * H) & (v < (1 + beyond_frame) * H))
            j = np.clip(u, 0, W - 1).astype(np.int64)
            i = np.clip(v, 0, H - 1).astype(np.int64)
            gap = qd - occluder_depth[i * W + j]  # (n,) how far the surface seen at the ray point's pixel is in front
            hit = in_scene & (gap > f32(SHADOW_BIAS) * qd) & (gap < f32(thickness) * qd + step_depth)
            occluded_sum[active[hit]] += 1.0
            active = active[in_scene & ~hit]
    visibility = np.ones(H * W, np.float32)
    visibility[start] = 1.0 - occluded_sum / f32(len(directions))
    return visibility.reshape(H, W)


def sky_mask(estimate: SceneEstimate) -> np.ndarray:
    """(H, W) bool sky pixels of an estimate (stored by decompose; none for other estimates)."""
    if estimate.sky is not None:
        return np.asarray(estimate.sky, bool)
    return np.zeros(estimate.depth.shape, bool)


def recolour_sky(image, old_lighting: Lighting, new_lighting: Lighting) -> np.ndarray:
    """Sky pixels (N, 3) linear RGB scaled by the ratio of the new lighting's mean luminance (sky and sun: SH
    coefficient 0) to the old one's, and per channel by the ratio of the new sky's colour to the old one's
    (clipped to SKY_RATIO_LIMITS): clouds and gradients keep their look.

    The mean is what a photo pins down of its light; how it splits between sun and sky is not (an order-1 estimate
    keeps the sun at most about as bright as the sky, DEFAULT_SUN_TO_SKY). Scaled by the skies' own means, the sky
    pixels of the relighting held-out views came out 0.9 (log) darker than the ground around them; by their
    order-1/2 radiance along each ray (what the sun's removal left), a moved sun turned real skies maroon or grey.
    Held out, refined SI log-luminance RMSE 0.718 (the lighting's mean) against 0.776 (the skies' means)."""
    def level_and_colour(lighting: Lighting) -> tuple[float, np.ndarray]:
        level = max(lighting.mean_luminance(), 1e-6)
        sky = np.maximum(lighting.sky[0], 0.0)
        sky_level = float(sky @ sh.LUMINANCE)
        return level, (sky / sky_level if sky_level > 1e-6 else np.ones(3))

    old_level, old_colour = level_and_colour(old_lighting)
    new_level, new_colour = level_and_colour(new_lighting)
    ratio = new_level / old_level * new_colour / np.maximum(old_colour, 1e-6)
    return (np.asarray(image) * np.clip(ratio, *SKY_RATIO_LIMITS).astype(np.float32)).astype(np.float32)


def _shadow_grid(camera: Camera, max_side: int) -> Camera:
    scale = min(1.0, max_side / max(camera.width, camera.height))
    return camera.resized(max(1, round(camera.width * scale)), max(1, round(camera.height * scale)))


def _scaled_to(lighting: Lighting, reference: Lighting) -> Lighting:
    """`lighting` (sky and sun together) scaled so its mean (DC) luminance is `reference`'s."""
    dc = lighting.mean_luminance()
    if not dc > 0:
        raise ValueError("the lighting has no positive mean (DC) luminance: it lights nothing")
    scale = reference.mean_luminance() / dc
    sun = lighting.sun
    if sun is not None:
        sun = Sun(sun.direction, sun.irradiance * scale, sun.angle_deg)
    return Lighting(sky=lighting.sky * scale, sun=sun)


def _luminance(image: np.ndarray) -> np.ndarray:
    return image @ sh.LUMINANCE.astype(np.float32)


class Relighter:
    """Relights one decomposed photo under any number of new lightings (one decomposition, one exposure).

    estimate: `scene.decompose`'s SceneEstimate. `lighting` is the photo's lighting, the starting point of
    `sun_at`; by default the estimate's SH lighting reduced to what the photo pins down (`sh.observed_lighting`)
    and split into a sun and a sky (`lighting_from_estimate`). `sun_to_sky` sets the strength of the suns that
    `sun_at` and `sun_towards` place (`place_sun`; None: the photo's own, which an estimate cannot measure,
    see DEFAULT_SUN_TO_SKY); the photo's own lighting keeps its estimated sun.
    Cast shadows are marched on a grid of at most `shadow_max_side` pixels on the longer side. The exposure
    is matched once: a single factor makes the relit image under the photo's own lighting as bright as the
    photo (median over non-sky pixels), because the network's shadow map and lighting are only known up to a
    common scale. `refine`, a `nets.relight_refine.RelightRefiner` (or None), corrects what the simple image
    model misses.
    """

    def __init__(self, estimate: SceneEstimate, *, lighting: Lighting | None = None,
                 sun_fraction: float = DEFAULT_SUN_FRACTION,
                 sun_angle_deg: float = DEFAULT_SUN_ANGLE_DEG, shadow_samples: int = DEFAULT_SHADOW_SAMPLES,
                 shadow_steps: int = DEFAULT_SHADOW_STEPS, shadow_max_side: int = DEFAULT_SHADOW_MAX_SIDE,
                 thickness: float = SHADOW_THICKNESS, sun_to_sky: float | None = DEFAULT_SUN_TO_SKY, refine=None,
                 shadow_refine=None, seed: int = 0):
        self.estimate = estimate
        self.sun_fraction = sun_fraction
        self.sky = sky_mask(estimate)
        if lighting is None:
            observed = sh.observed_lighting(estimate.normals, estimate.lighting, ~self.sky)
            lighting = lighting_from_estimate(observed, sun_fraction, sun_angle_deg)
        if sun_to_sky is not None and not sun_to_sky >= 0:
            raise ValueError(f"the sun-to-sky ratio must be >= 0, got {sun_to_sky}")
        self.original = lighting
        self.sun_to_sky = sun_to_sky
        self.refine = refine
        self._refiner_photo_inputs = {}  # the refiner's inputs that no new light changes, kept per size
        self.shadow_refine = shadow_refine
        self._shadow_photo_inputs = None  # the shadow refiner's inputs that no sun changes
        self.shadow_options = {"samples": shadow_samples, "steps": shadow_steps, "thickness": thickness, "seed": seed}
        cam = estimate.camera
        self.grid = _shadow_grid(cam, shadow_max_side)
        self.grid_depth = estimate.depth_fused
        self.grid_sky = self.sky
        if (self.grid.width, self.grid.height) != (cam.width, cam.height):
            self.grid_depth = resize_linear(estimate.depth_fused, self.grid.width, self.grid.height)
            self.grid_sky = resize_linear(self.sky.astype(np.float32), self.grid.width, self.grid.height) > 0.5
        self.exposure = 1.0
        # The photo as the model re-renders it under its own lighting: sets the exposure, and what it fails
        # to explain is one of the refiner's inputs.
        self.own_render = self.render(self.original, refine=False).image  # (H, W, 3)
        ground = ~self.sky
        if ground.any():
            # Luminance first, then the ground's pixels: indexing a 24-megapixel RGB map copies 288 MB.
            own = _luminance(self.own_render)[ground]
            photo = _luminance(np.asarray(estimate.image, np.float32))[ground]
            ok = own > 1e-6
            self.exposure = float(np.median(photo[ok] / own[ok])) if ok.any() else 1.0
            np.multiply(self.own_render, np.float32(self.exposure), out=self.own_render, where=ground[..., None])

    def sun_at(self, elevation_deg: float, azimuth_deg: float, up=(0.0, 1.0, 0.0),
               base: Lighting | None = None) -> Lighting:
        """`sun_towards` the sun at (elevation, azimuth) (`sun_direction_camera`)."""
        return self.sun_towards(sun_direction_camera(elevation_deg, azimuth_deg, up), base, up)

    def sun_towards(self, direction, base: Lighting | None = None, up=(0.0, 1.0, 0.0)) -> Lighting:
        """`place_sun` in `base` (default: the photo's own lighting) at `direction` (3,) (camera frame, `up` the
        camera frame's up), with this relighter's `sun_to_sky`."""
        return place_sun(self.original if base is None else base, direction, up, self.sun_to_sky)

    def scaled_like_photo(self, lighting: Lighting) -> Lighting:
        """`lighting` (sky and sun together) scaled so its mean (DC) luminance is the photo's lighting's: lights
        from elsewhere (another photo, a prior sample, a renderer) come in arbitrary units."""
        return _scaled_to(lighting, self.original)

    def lighting_like_photo(self, L) -> Lighting:
        """Other SH lighting L (9, 3) (camera frame; e.g. another photo's lighting.json or an illumination-prior
        sample) split into sun and sky like the photo's, then `scaled_like_photo`."""
        L = np.asarray(L, dtype=np.float64)
        if L.shape != (9, 3) or not np.isfinite(L).all():
            raise ValueError(f"lighting must be finite SH coefficients of shape (9, 3), got {L.shape}")
        sun = self.original.sun
        angle = sun.angle_deg if sun is not None else DEFAULT_SUN_ANGLE_DEG
        return self.scaled_like_photo(lighting_from_estimate(L, self.sun_fraction, angle))

    def visibility(self, sun: Sun, refine: bool = True) -> np.ndarray:
        """(H, W) float32 visibility of `sun` at the photo's resolution (1 on sky): marched, then corrected by
        the shadow refiner when there is one and `refine`."""
        est = self.estimate
        cam = est.camera
        v = cast_shadow(self.grid_depth, self.grid, sun.direction, sky=self.grid_sky, angle_deg=sun.angle_deg,
                        **self.shadow_options)
        if refine and self.shadow_refine is not None:
            if self._shadow_photo_inputs is None:
                from .nets.shadow_refine import photo_features

                size = self.shadow_refine.working_size(self.grid.width, self.grid.height)
                self._shadow_photo_inputs = photo_features(est.normals, est.depth_fused, self.sky, est.image, size)
            v = self.shadow_refine.apply(v, sun.direction, self._shadow_photo_inputs)
        if (self.grid.width, self.grid.height) != (cam.width, cam.height):
            v = np.clip(resize_linear(v, cam.width, cam.height), 0.0, 1.0)
        v[self.sky] = 1.0
        return v

    def render(self, lighting: Lighting, refine: bool = True) -> RelitImage:
        """The photo under `lighting` (camera frame) as a RelitImage at the photo's (H, W)."""
        est = self.estimate
        H, W = est.camera.height, est.camera.width
        normals = np.asarray(est.normals, dtype=np.float32)
        sky_shading = sh.shading_image(normals, lighting.sky)  # (H, W, 3) float32
        floor = np.maximum(SKY_SHADING_FLOOR * sh.C4 * lighting.sky[0], 0.0).astype(np.float32)
        np.maximum(sky_shading, floor, out=sky_shading)
        sun_shading = np.zeros((H, W, 3), np.float32)
        visibility = np.ones((H, W), np.float32)
        if lighting.sun is not None:
            rows = 256  # in row blocks: bounded temporaries
            visibility = self.visibility(lighting.sun)
            s = lighting.sun.direction.astype(np.float32)
            irradiance = lighting.sun.irradiance.astype(np.float32)
            for r in range(0, H, rows):
                cos = np.maximum(normals[r:r + rows] @ s, 0.0)  # (rows, W)
                sun_shading[r:r + rows] = (cos * visibility[r:r + rows])[..., None] * irradiance
        # exposure * albedo * (sun + sky), in place: a 24-megapixel photo's temporaries are 288 MB each
        image = np.add(sun_shading, sky_shading)
        image *= np.asarray(est.albedo, np.float32)
        image *= np.float32(self.exposure)
        if self.sky.any():
            image[self.sky] = recolour_sky(est.image[self.sky], self.original, lighting)
        relit = RelitImage(image=image, visibility=visibility, sun_shading=sun_shading,
                           sky_shading=sky_shading, sky=self.sky,
                           metadata={"shadow_grid": [self.grid.width, self.grid.height], "exposure": self.exposure,
                                     **self.shadow_options, "refined": bool(refine and self.refine is not None)})
        if refine and self.refine is not None:
            relit.image = self.refine.apply(est, relit, self.exposure, self.own_render, self._refiner_photo_inputs)
        return relit

    def time_of_day(self, start: tuple[float, float], end: tuple[float, float], frames: int,
                    up=(0.0, 1.0, 0.0), base: Lighting | None = None):
        """Yield ((elevation, azimuth), RelitImage) for `frames` suns moving linearly from `start` to `end`
        ((elevation_deg, azimuth_deg) each), the sky (`base`'s, default the photo's) turning with the sun. The
        azimuth goes the shorter way round (350 to 10 passes 0, not 180), in the given sense at 180 degrees."""
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        turn = end[1] - start[1]
        if abs(turn) > 180.0:
            turn -= math.copysign(360.0, turn)
        for k in range(frames):
            f = k / max(frames - 1, 1)
            sun = (start[0] + f * (end[0] - start[0]), (start[1] + f * turn) % 360.0)
            yield sun, self.render(self.sun_at(*sun, up=up, base=base))
