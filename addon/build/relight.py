"""Relight a built import: turn the estimated lighting, place the sun, or switch to Blender's physical sky, and
keyframe a time of day. The shadows are cast by the reconstructed mesh, lit by the sun lamp.

Angles follow `invrender_core.scene.sun_direction`: elevation above the horizon, azimuth from behind the photo
camera (0: front light) towards its right (90: light from the right). An azimuth change of Δ turns the world
counter-clockwise seen from above by Δ, so the environment turns with the sun by the same angle.

Settings are absolute, relative to the estimate as built: the first relight records the estimated sun and world
strength on the import's collection (RELIGHT_BASE_KEY), and every later relight starts from that record, so
applying the same settings twice (or redoing the operator) gives the same scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import bpy

from invrender_core import sh
from invrender_core.relight import DEFAULT_SUN_TO_SKY, Lighting, Sun, place_sun
from invrender_core.scene import sun_direction, world_lighting

from .bpy_io import action_fcurves
from .scene import (
    ENVIRONMENT_MAPPING_NODE,
    ENVIRONMENT_NODE,
    IMPORT_KEY,
    BuiltScene,
    find_import,
    require_editable,
)

RELIGHT_BASE_KEY = "invrender_relight_base"  # collection ID property: the estimate's sun and world strength
SKY_NODE, WORLD_TINT_NODE = "InvRender Sky", "InvRender World Tint"
MODES = ("environment", "sky")
# Physical sky models, best first: 5.0 added multiple scattering and renamed Nishita to single scattering.
SKY_TYPES = ("MULTIPLE_SCATTERING", "NISHITA", "SINGLE_SCATTERING")
# Irradiance (W/m², normal incidence) of the Nishita sun disc at strength 1 and sun_intensity 1 for elevations
# of 40-80 degrees, measured by datagen/render_skies.py (datagen/out/skies/index.json: 130-150 W/m²). Scaling
# the sky by reference / this keeps Nishita's own sky-to-sun ratio next to a lamp of the estimate's energy.
NISHITA_SUN_IRRADIANCE = 140.0
TINT_WHITE = (1.0, 1.0, 1.0)
# Angles come from float32 radian properties: a slider's own limit arrives in degrees a few float32 steps past it
# (90 -> 90.0000025), and is still the limit.
FLOAT32_SLACK = 1e-6  # relative


def within(value: float, limit: float) -> bool:
    """|value| <= limit, give or take float32 rounding of the limit."""
    return abs(value) <= limit * (1.0 + FLOAT32_SLACK)


@dataclass
class RelightSettings:
    """mode: "environment" (the estimated environment and sun) or "sky" (Blender's physical sky and the sun).

    rotation_deg: turn the estimated lighting (environment and sun) about the world's vertical axis,
    counter-clockwise seen from above (the sun's azimuth grows by it). sun_angles: (elevation, azimuth) degrees
    to put the sun at instead; the environment then turns by the azimuth change and rotation_deg is not used.
    In the environment mode a sun put there is a new sun, placed as the 2D relight places it
    (`invrender_core.relight.place_sun`): `sun_to_sky` times as bright as the environment's mean, the two sharing
    the estimate's light, dimmed and reddened by the air at its elevation. (The estimate's own sun cannot be
    measured from a photo and comes out about as bright as the sky: its shadows were faint.)
    environment_strength, environment_tint: the environment's strength (a factor) and RGB tint.
    sun_strength, sun_tint: factor on the sun's energy (the estimate's, or the placed sun's), and RGB tint of its
    colour (both modes). sky_strength: the physical sky's strength; 1 keeps the sky as bright next to the sun as
    Nishita's own.
    """

    mode: str = "environment"
    rotation_deg: float = 0.0
    sun_angles: tuple[float, float] | None = None
    environment_strength: float = 1.0
    environment_tint: tuple[float, float, float] = TINT_WHITE
    sun_strength: float = 1.0
    sun_tint: tuple[float, float, float] = TINT_WHITE
    sky_strength: float = 1.0
    sun_to_sky: float = DEFAULT_SUN_TO_SKY

    def check(self) -> None:
        """ValueError naming the bad setting."""
        if self.mode not in MODES:
            raise ValueError(f"relight mode must be one of {MODES}, got {self.mode!r}")
        numbers = {"rotation_deg": self.rotation_deg, "environment_strength": self.environment_strength,
                   "sun_strength": self.sun_strength, "sky_strength": self.sky_strength,
                   "sun_to_sky": self.sun_to_sky}
        if self.sun_angles is not None:
            if len(self.sun_angles) != 2:
                raise ValueError(f"sun_angles must be (elevation, azimuth) in degrees, got {self.sun_angles}")
            numbers.update(sun_elevation=self.sun_angles[0], sun_azimuth=self.sun_angles[1])
            if not within(self.sun_angles[0], 90.0):
                raise ValueError(f"sun elevation must be in [-90, 90] degrees, got {self.sun_angles[0]}")
        for name, value in numbers.items():
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        for name in ("environment_strength", "sun_strength", "sky_strength", "sun_to_sky"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("environment_tint", "sun_tint"):
            tint = getattr(self, name)
            if len(tint) != 3 or not all(math.isfinite(c) and c >= 0 for c in tint):
                raise ValueError(f"{name} must be three non-negative numbers (RGB), got {tuple(tint)}")


@dataclass
class RelightState:
    """What a relight set: the sun's elevation and azimuth (degrees; None without a sun) and the environment's
    rotation about the vertical (degrees, counter-clockwise seen from above)."""

    sun_elevation: float | None
    sun_azimuth: float | None
    rotation_deg: float


def sky_type_available() -> str | None:
    """The best physical sky model this Blender has (SKY_TYPES order), None when it has none."""
    items = {item.identifier for item in bpy.types.ShaderNodeTexSky.bl_rna.properties["sky_type"].enum_items}
    return next((t for t in SKY_TYPES if t in items), None)


def apply_relight(scene: bpy.types.Scene, built: BuiltScene | None, settings: RelightSettings) -> RelightState:
    """Relight `built` (None: `scene.find_import(scene)`) with `settings`. Any time-of-day keyframes on the
    channels it sets are removed first, so the result holds at every frame. ValueError (scene unchanged) for bad
    settings, no import, a linked import, or an import whose world or environment nodes are missing."""
    built = built or find_import(scene)
    _check(built, settings)
    _clear_time_of_day_keys(built)
    return _apply(built, settings)


def animate_time_of_day(scene: bpy.types.Scene, built: BuiltScene | None, start: tuple[float, float],
                        end: tuple[float, float], frame_start: int, frame_end: int,
                        settings: RelightSettings | None = None) -> RelightState:
    """Keyframe the sun moving from start to end ((elevation, azimuth) degrees) over frame_start..frame_end,
    with linear interpolation: the sun lamp's rotation (whose Euler angles are 90° - elevation and azimuth, so
    they move linearly in elevation and azimuth), the environment's Mapping rotation (turning with the
    azimuth) and, in sky mode, the sky's sun angles; in the environment mode also the placed sun's energy and
    colour at every frame (`_key_placed_sun`). The other settings (mode, strengths, tints) come from
    `settings` and hold for the whole range. Earlier time-of-day keys on these channels are replaced; the
    scene's frame range is left to the caller. built None: `scene.find_import(scene)`. Returns the state at
    frame_end."""
    built = built or find_import(scene)
    settings = settings or RelightSettings()
    if int(frame_end) <= int(frame_start):
        raise ValueError(f"the end frame ({frame_end}) must come after the start frame ({frame_start})")
    first, last = replace(settings, sun_angles=tuple(start)), replace(settings, sun_angles=tuple(end))
    _check(built, first)
    _check(built, last)
    _clear_time_of_day_keys(built)
    for frame, frame_settings in ((int(frame_start), first), (int(frame_end), last)):
        state = _apply(built, frame_settings)
        for struct, prop, index in _time_of_day_channels(built, settings.mode == "sky"):
            struct.keyframe_insert(prop, index=index, frame=frame)
    if _places_sun(built, first):
        _key_placed_sun(built, settings, tuple(start), tuple(end), int(frame_start), int(frame_end))
    for struct, prop, index in _time_of_day_channels(built, settings.mode == "sky"):
        for fcurve in channel_fcurves(struct, prop, index):
            for point in fcurve.keyframe_points:
                point.interpolation = "LINEAR"  # a steady sun: the angles change at a constant rate
    scene.frame_set(scene.frame_current)  # show the current frame's state, not the last keyed one
    return state


# ------------------------------------------------------------------------------------------------- internals


def _world_nodes(built: BuiltScene):
    """(mapping, environment, background) nodes of the import's world; ValueError when one is missing."""
    world = built.world
    if world is None or world.node_tree is None:
        raise ValueError("the import's world is missing: import the photo again")
    nodes = world.node_tree.nodes
    mapping, env, background = nodes.get(ENVIRONMENT_MAPPING_NODE), nodes.get(ENVIRONMENT_NODE), nodes.get("Background")
    if mapping is None or env is None or background is None or background.type != "BACKGROUND":
        raise ValueError(f"the world {world.name!r} lost its InvRender environment nodes "
                         f"({ENVIRONMENT_MAPPING_NODE!r}, {ENVIRONMENT_NODE!r}, 'Background'): import the photo again")
    return mapping, env, background


def _check(built: BuiltScene, settings: RelightSettings) -> None:
    """Every check, before anything changes."""
    settings.check()
    require_editable(built, (built.collection, built.world, built.sun, built.sun.data if built.sun else None))
    _world_nodes(built)
    if built.sun is None and settings.mode == "environment" and settings.sun_angles is not None:
        raise ValueError("this import has no sun lamp to place (its lighting had no dominant direction): turn the "
                         "environment with the rotation instead, or use the physical sky")
    if built.sun is None and settings.mode == "sky" and settings.sun_angles is None:
        raise ValueError("this import has no estimated sun: give the sky's sun elevation and azimuth")
    if settings.mode == "sky" and sky_type_available() is None:
        raise ValueError("this Blender has no physical sky texture (Nishita or newer): use the environment mode")
    if _places_sun(built, settings):
        _placed_sun(built, settings, *settings.sun_angles)  # its own errors, before anything changes


def _places_sun(built: BuiltScene, settings: RelightSettings) -> bool:
    """Whether these settings put a new sun (`place_sun`) in the environment mode."""
    return settings.mode == "environment" and settings.sun_angles is not None and built.sun is not None


def placed_sun(lighting_camera, sun_fraction: float, elevation: float, azimuth: float, sun_to_sky: float
               ) -> tuple[float, tuple[float, float, float], float]:
    """(lamp energy, lamp colour, factor on the environment's strength) of a new sun at (elevation, azimuth)
    degrees placed (`place_sun`, world frame, up +z) in the lighting an import built from the estimate's SH
    lighting_camera (9, 3) and sun_fraction (`world_lighting`), before sun_strength and the tints."""
    direction, irradiance, sky = world_lighting(lighting_camera, sun_fraction)
    estimate = Lighting(sky=sky, sun=Sun(direction, irradiance) if irradiance.max() > 0 else None)
    placed = place_sun(estimate, sun_direction(elevation, azimuth), up=(0.0, 0.0, 1.0), sun_to_sky=sun_to_sky)
    # The environment image is the estimate's sky: place_sun turned it (the Mapping node does that) and scaled it.
    sky_scale = float(placed.sky[0] @ sh.LUMINANCE) / float(sky[0] @ sh.LUMINANCE)
    peak = float(placed.sun.irradiance.max())
    colour = tuple(float(c) for c in placed.sun.irradiance / peak) if peak > 0 else (1.0, 1.0, 1.0)
    # A Blender sun of strength S and colour c adds albedo / pi * S * c * cos: S * c = pi * irradiance.
    return math.pi * peak, colour, sky_scale


def _stored_lighting(built: BuiltScene) -> tuple[list, float]:
    """(lighting_camera, sun_fraction) the import stored for `placed_sun`; ValueError for an import without them."""
    record = built.collection[IMPORT_KEY].to_dict()
    if "lighting_camera" not in record or "sun_fraction" not in record:
        raise ValueError("this import did not store its estimated lighting (an older InvRender built it): import "
                         "the photo again to place the sun, or turn the lighting with the rotation")
    return record["lighting_camera"], float(record["sun_fraction"])


def _placed_sun(built: BuiltScene, settings: RelightSettings, elevation: float, azimuth: float
                ) -> tuple[float, tuple[float, float, float], float]:
    """`placed_sun` in the lighting the import stored (`_stored_lighting`)."""
    return placed_sun(*_stored_lighting(built), elevation, azimuth, settings.sun_to_sky)


def _sun_axis(sun: bpy.types.Object):
    """World direction towards the sun: a sun lamp shines along its local -z."""
    from mathutils import Vector

    return sun.rotation_euler.to_matrix() @ Vector((0.0, 0.0, 1.0))


def _base(built: BuiltScene) -> dict:
    """The estimate as built (recorded on the first relight): sun elevation/azimuth, energy and colour, world
    strength."""
    collection = built.collection
    if RELIGHT_BASE_KEY not in collection:
        _, _, background = _world_nodes(built)
        record = {"world_strength": float(background.inputs["Strength"].default_value)}
        if built.sun is not None:
            x, y, z = _sun_axis(built.sun).normalized()
            record.update(sun_elevation=math.degrees(math.asin(max(-1.0, min(1.0, z)))),
                          sun_azimuth=math.degrees(math.atan2(x, -y)),  # inverse of sun_direction
                          sun_energy=float(built.sun.data.energy), sun_color=list(built.sun.data.color))
        collection[RELIGHT_BASE_KEY] = record
    return collection[RELIGHT_BASE_KEY].to_dict()


def _apply(built: BuiltScene, settings: RelightSettings) -> RelightState:
    base = _base(built)
    mapping, env, background = _world_nodes(built)
    tree = built.world.node_tree
    has_base_sun = "sun_azimuth" in base
    if settings.sun_angles is not None:
        elevation, azimuth = (float(a) for a in settings.sun_angles)
        rotation = azimuth - base["sun_azimuth"] if has_base_sun else settings.rotation_deg
    elif has_base_sun:
        rotation = settings.rotation_deg
        elevation, azimuth = base["sun_elevation"], base["sun_azimuth"] + rotation
    else:
        rotation, elevation, azimuth = settings.rotation_deg, None, None

    # The Mapping node (Point) looks the texture up at R·d, so turning the lighting by +θ needs R = Rz(-θ).
    mapping.inputs["Rotation"].default_value[2] = -math.radians(rotation)
    energy, colour, sky_scale = base.get("sun_energy"), base.get("sun_color"), 1.0
    if _places_sun(built, settings):
        energy, colour, sky_scale = _placed_sun(built, settings, elevation, azimuth)
    if built.sun is not None:
        sun = built.sun
        sun.rotation_mode = "XYZ"
        # Rz(azimuth)·Rx(90° - elevation) takes local +z to sun_direction(elevation, azimuth); keyframes of these
        # Euler angles then move the sun linearly in elevation and azimuth.
        sun.rotation_euler = (math.radians(90.0 - elevation), 0.0, math.radians(azimuth))
        _set_sun_light(sun.data, energy, colour, settings)

    tint = tree.nodes.get(WORLD_TINT_NODE)
    if tint is None:  # environment (or sky) -> tint -> Background, added on the first relight
        tint = tree.nodes.new("ShaderNodeVectorMath")
        tint.name, tint.label, tint.operation = WORLD_TINT_NODE, "Tint", "MULTIPLY"
        tint.location = (env.location.x + 300, env.location.y - 250)
    if settings.mode == "environment":
        tree.links.new(env.outputs["Color"], tint.inputs[0])
        tint.inputs[1].default_value = tuple(settings.environment_tint)
        background.inputs["Strength"].default_value = base["world_strength"] * sky_scale * settings.environment_strength
    else:
        sky = _sky_node(tree, env)
        sky.sun_elevation = math.radians(elevation)
        sky.sun_rotation = math.pi - math.radians(azimuth)  # Nishita: rotation 0 puts the sun at +y, 90° at +x
        # With a lamp, the sky's own sun disc is off: the lamp casts the shadows (sampled directly, so they are
        # clean at a few samples where a 0.5° disc in the world would be noise) and is not counted twice.
        sky.sun_disc = built.sun is None
        tree.links.new(sky.outputs["Color"], tint.inputs[0])
        tint.inputs[1].default_value = TINT_WHITE
        reference = base["sun_energy"] if has_base_sun else math.pi  # pi: a sun lighting albedo 1 to 1
        background.inputs["Strength"].default_value = settings.sky_strength * reference / NISHITA_SUN_IRRADIANCE
    tree.links.new(tint.outputs["Vector"], background.inputs["Color"])
    return RelightState(elevation, azimuth, rotation)


def _set_sun_light(light: bpy.types.SunLight, energy: float, colour, settings: RelightSettings) -> None:
    light.energy = energy * settings.sun_strength
    light.color = [c * t for c, t in zip(colour, settings.sun_tint, strict=True)]


def _sky_node(tree, env) -> bpy.types.ShaderNodeTexSky:
    sky = tree.nodes.get(SKY_NODE)
    if sky is None:  # kept after switching back, so the sky's settings survive
        sky = tree.nodes.new("ShaderNodeTexSky")
        sky.name, sky.label = SKY_NODE, "Physical sky"
        sky.location = (env.location.x, env.location.y - 350)
    sky.sky_type = sky_type_available()
    return sky


def _key_placed_sun(built: BuiltScene, settings: RelightSettings, start: tuple[float, float],
                    end: tuple[float, float], frame_start: int, frame_end: int) -> None:
    """Key the placed sun's energy and colour at every frame between the two ends (keyed already): the air the
    sun crosses changes them, and not linearly in its elevation, which moves linearly."""
    light = built.sun.data
    stored = _stored_lighting(built)  # read once, not per frame
    for frame in range(frame_start + 1, frame_end):
        t = (frame - frame_start) / (frame_end - frame_start)
        elevation, azimuth = (a + t * (b - a) for a, b in zip(start, end, strict=True))
        energy, colour, _ = placed_sun(*stored, elevation, azimuth, settings.sun_to_sky)
        _set_sun_light(light, energy, colour, settings)
        light.keyframe_insert("energy", frame=frame)
        light.keyframe_insert("color", frame=frame)


def _time_of_day_channels(built: BuiltScene, sky: bool) -> list[tuple[bpy.types.bpy_struct, str, int]]:
    """(struct, property, index) of what a time of day animates; index -1: every element."""
    mapping, _, _ = _world_nodes(built)
    channels = [(mapping.inputs["Rotation"], "default_value", 2)]
    if built.sun is not None:
        channels += [(built.sun, "rotation_euler", -1), (built.sun.data, "energy", -1), (built.sun.data, "color", -1)]
    sky_node = built.world.node_tree.nodes.get(SKY_NODE)
    if sky and sky_node is not None:
        channels += [(sky_node, "sun_elevation", -1), (sky_node, "sun_rotation", -1)]
    return channels


def _clear_time_of_day_keys(built: BuiltScene) -> None:
    channels = _time_of_day_channels(built, sky=True)
    animated = {struct.id_data for struct, _, _ in channels if struct.id_data.animation_data}
    actions = {block.animation_data.action for block in animated} - {None}
    for struct, prop, index in channels:
        is_array = struct.bl_rna.properties[prop].is_array
        for fcurve in channel_fcurves(struct, prop, index):
            frames = [point.co[0] for point in fcurve.keyframe_points]
            array_index = fcurve.array_index if is_array else -1
            for frame in frames:  # the F-curve goes away with its last key
                struct.keyframe_delete(prop, index=array_index, frame=frame)
    # Blender 4.2 unassigns an action whose last key went, leaving it unused: each new time of day added another.
    for action in actions:
        if action.users == 0 and not action.use_fake_user:
            bpy.data.actions.remove(action)


# ------------------------------------------------------------------------------- animation, version-robust


def channel_fcurves(struct: bpy.types.bpy_struct, prop: str, index: int = -1) -> list[bpy.types.FCurve]:
    """F-curves of `struct.prop` (element `index`, or all elements for -1) in the action of its ID."""
    path = struct.path_from_id(prop)
    return [fc for fc in action_fcurves(struct.id_data)
            if fc.data_path == path and (index < 0 or fc.array_index == index)]
