"""2D Relight Preview: sun angles -> the import's stored maps -> `invrender_core.relight.Relighter` -> an image.

Seconds, beside the path-traced relight: the photo is relit in 2D (Yu et al., ECCV 2020) from the maps the import
packed into the .blend (`build.scene.stored_estimate`), its cast shadows corrected by the shadow refiner
(`invrender_core.nets.shadow_refine`, a small network run on the CPU) as `invrender relight` does; the relighting
refiner is left out to keep it quick. Without PyTorch the cast shadows are as marched, with a warning.
"""

from __future__ import annotations

import math

import bpy

PREVIEW_SUFFIX = " 2D Relight"
MAX_NAME_BYTES = 63  # Blender's longest datablock name
# (collection session_uid, import id, shadow samples, weights folder) -> Relighter. Only the latest is kept (it holds
# the full-resolution maps). session_uid changes when a file is opened, the import id with every new import, so a
# stale relighter is never reused; the key survives undo, so redoing the operator (F9) stays quick.
_RELIGHTERS: dict = {}


def preview_image_name(import_name: str) -> str:
    """The preview image's name: the import's name + PREVIEW_SUFFIX, shortened to fit a datablock name."""
    room = MAX_NAME_BYTES - len(PREVIEW_SUFFIX.encode())
    return import_name.encode()[:room].decode(errors="ignore") + PREVIEW_SUFFIX


def shadow_refiner(weights_dir=None):
    """The shadow refiner of the weights folder `weights_dir` (else the shipped one), None when PyTorch is not
    installed or failed to load; ValueError when its weights are missing."""
    from .. import deps

    status = deps.torch_status()
    if status.version is None or status.error is not None:
        return None
    from invrender_core.nets import shadow_refine
    from invrender_core.relight import DEFAULT_SHADOW_REFINER

    return shadow_refine.load(DEFAULT_SHADOW_REFINER, weights_dir)


def relighter_for(collection: bpy.types.Collection, shadow_samples: int, weights_dir=None):
    """The (cached) Relighter of an import, built from its stored maps, with the `shadow_refiner` of `weights_dir`;
    ValueError when the maps or the weights are missing."""
    from invrender_core.relight import Relighter

    from ..build.scene import IMPORT_KEY, stored_estimate

    key = (collection.session_uid, collection[IMPORT_KEY].get("import_id", ""), shadow_samples, str(weights_dir))
    relighter = _RELIGHTERS.get(key)
    if relighter is None:
        estimate = stored_estimate(collection)
        relighter = Relighter(estimate, sun_fraction=estimate.metadata["sun_fraction"],
                              shadow_samples=shadow_samples, shadow_refine=shadow_refiner(weights_dir))
        _RELIGHTERS.clear()
        _RELIGHTERS[key] = relighter
    return relighter


def write_preview_image(name: str, pixels) -> bpy.types.Image:
    """Store (H, W, 3) linear RGB as the packed float image `name` (linear, shown like the photo).

    An existing image of that name is replaced everywhere it is used (Image Editors, nodes) by remapping its
    users, so the preview updates in place whatever its size.
    """
    from ..build.bpy_io import image_from_array

    old = bpy.data.images.get(name)
    image = image_from_array(name if old is None else f"{name} (new)", pixels)
    if old is not None:
        old.user_remap(image)
        bpy.data.images.remove(old)
        image.name = name
    image.use_fake_user = True  # kept in the .blend even when no editor shows it
    return image


def show_in_image_editors(context, image: bpy.types.Image) -> None:
    """Show `image` in every open Image Editor (none in background mode)."""
    for window in context.window_manager.windows:
        for area in window.screen.areas:
            if area.type == "IMAGE_EDITOR":
                area.spaces.active.image = image


class INVR_OT_relight_preview(bpy.types.Operator):
    """Relight the imported photo in 2D under a sun at the given angles, in seconds: the result goes to the image
    "<import> 2D Relight", shown in open Image Editors (the path-traced scene is left as it is)"""

    bl_idname = "invr.relight_preview"
    bl_label = "2D Relight Preview"
    bl_options = {"REGISTER", "UNDO"}

    sun_elevation: bpy.props.FloatProperty(
        name="Sun elevation", description="Sun height above the photo camera's horizon",
        default=math.radians(45.0), min=0.0, max=math.pi / 2, subtype="ANGLE", unit="ROTATION")
    sun_azimuth: bpy.props.FloatProperty(
        name="Sun azimuth", description="Sun direction: 0 behind the photo camera (front light), 90° from its "
        "right, 180° in front of it (back light)", default=math.radians(90.0), min=-math.pi,
        max=2.0 * math.pi, subtype="ANGLE", unit="ROTATION")
    sun_to_sky: bpy.props.FloatProperty(
        name="Sun to sky", description="The sun's irradiance as a multiple of the sky's mean, the two sharing the "
        "photo's light (clear day: 5 to 13, hazy: 1 to 3)", default=4.0, min=0.0, max=100.0,
        soft_max=15.0)  # relight.DEFAULT_SUN_TO_SKY
    shadow_samples: bpy.props.IntProperty(
        name="Shadow samples", description="Directions within the sun's disc averaged for soft cast shadows "
        "(more: smoother penumbrae, slower)", default=4, min=1, max=64)  # relight.DEFAULT_SHADOW_SAMPLES

    def execute(self, context):
        from invrender_core.relight import place_sun, sun_direction_camera

        from ..build.scene import find_import
        from ..prefs import get_preferences
        from .import_photo import report_warnings

        try:
            built = find_import(context.scene)
            relighter = relighter_for(built.collection, self.shadow_samples, get_preferences(context).weights_dir)
            direction = sun_direction_camera(math.degrees(self.sun_elevation), math.degrees(self.sun_azimuth))
            lighting = place_sun(relighter.original, direction, sun_to_sky=self.sun_to_sky)
            relit = relighter.render(lighting).image  # (H, W, 3) linear RGB
        except (ValueError, MemoryError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        image = write_preview_image(preview_image_name(built.collection.name), relit)
        show_in_image_editors(context, image)
        report_warnings(self, built.warnings)
        if relighter.shadow_refine is None:
            self.report({"WARNING"}, "PyTorch is not available: cast shadows as marched through the depth (install "
                        "it in the add-on's preferences to have them refined)")
        self.report({"INFO"}, f"2D relight in {image.name!r}")
        return {"FINISHED"}


classes = (INVR_OT_relight_preview,)
