"""Export passes: one Cycles render of an imported photo's scene -> one multilayer OpenEXR for compositing.

Layers of the file (float32, ZIP), by channel name:

    R, G, B, A      beauty: Cycles Combined, scene-linear, before the compositor
    albedo.R/G/B    Cycles Diffuse Color (the material's base colour as rendered: the albedo times the import's
                    photo gain, when it has one)
    normal.X/Y/Z    Cycles Normal: shading normals (after the normal map) in the WORLD frame, averaged over the
                    pixel's samples; the camera's rotation (header "invrender/camera_to_world") takes camera-frame
                    normals there
    depth.Z         Cycles Depth: planar depth along the camera's viewing axis (not the distance to the eye),
                    in scene units, for a perspective camera; 1e10 where no surface is hit
    shadow.Y        the photo's shadow map (the import's AOV "shadow"; 0 on other objects), only when the
                    import has one
    shading.R/G/B   Cycles Diffuse Direct + Diffuse Indirect: the light the albedo is multiplied by, so that on
                    diffuse surfaces beauty = albedo x shading (without denoising; imports have no glossy or
                    emission to add)

With `separate_files` every layer is also written as its own plain EXR next to the multilayer file
(`<name>_<layer>.exr`: R,G,B(,A) or Y; normals as R,G,B) for tools that read no multilayer files.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import bpy
import numpy as np

from invrender_core.io.exr import read_exr_channels, write_exr_channels
from invrender_core.io.folders import temporary_beside

from .bpy_io import use_multilayer_exr
from .scene import SHADOW_AOV, SHADOW_NODE, BuiltScene, find_import

DEFAULT_SAMPLES = 64
LAYERS = ("beauty", "albedo", "normal", "depth", "shadow", "shading")
# Blender's pass names in its EXR files; 5.0 spells them out ("Diffuse Color"), earlier versions abbreviate.
BLENDER_PASS_NAMES = {"combined": ("Combined",), "depth": ("Depth",), "normal": ("Normal",),
                   "albedo": ("DiffCol", "Diffuse Color"), "direct": ("DiffDir", "Diffuse Direct"),
                   "indirect": ("DiffInd", "Diffuse Indirect")}
_PASS_FLAGS = ("use_pass_combined", "use_pass_z", "use_pass_normal", "use_pass_diffuse_color",
               "use_pass_diffuse_direct", "use_pass_diffuse_indirect")
# Per-layer files: channel renames for tools that know only R, G, B, A and Y.
_PLAIN_NAMES = {"X": "R", "Y": "G", "Z": "B"}


def export_passes(scene: bpy.types.Scene, built: BuiltScene | None, out_path, samples: int | None = DEFAULT_SAMPLES,
                  camera: bpy.types.Object | None = None, separate_files: bool = False) -> Path:
    """Render `scene` with Cycles from `camera` (default: the scene camera) and write the passes listed in this
    module's docstring to the multilayer EXR `out_path`; returns its path.

    built: the import whose shadow map becomes the shadow layer (None: find_import(scene)). samples: Cycles
    samples (None: the scene's). separate_files: also write each layer as `<name>_<layer>.exr`. Renders the
    scene's first view layer at the scene's resolution, with its pixel filter and denoiser. Every render
    setting, pass flag and the scene camera are restored afterwards, also on failure; files appear complete or
    not at all (written under a temporary name, then renamed). ValueError without an import or a camera, or when
    the import is not rendered (excluded from the view layer, disabled in renders), OSError when the folder
    cannot be written, RuntimeError when Cycles fails.
    """
    out = Path(out_path).absolute()
    built = built if built is not None else find_import(scene)
    camera = camera if camera is not None else scene.camera
    if camera is None:
        raise ValueError("the scene has no camera: set one in Scene Properties > Camera, or import a photo again")
    if camera.type != "CAMERA":
        raise ValueError(f"{camera.name!r} is a {camera.type.lower()}, not a camera: pick a camera object")
    if samples is not None and not 1 <= samples <= 1 << 24:
        raise ValueError(f"samples must be between 1 and {1 << 24}, got {samples}")
    if out.is_dir():
        raise OSError(f"{out} is a folder: give a file name ending in .exr")
    _check_rendered(scene, built)
    has_shadow = _has_shadow(built)
    names = [name for name in LAYERS if has_shadow or name != "shadow"]
    targets = {"": out} | ({name: out.with_name(f"{out.stem}_{name}.exr") for name in names} if separate_files
                           else {})
    temporaries: dict[str, Path] = {}
    try:
        for key, target in targets.items():  # before rendering: a folder that cannot be written fails at once
            temporaries[key] = _reserve(target)
        with tempfile.TemporaryDirectory(prefix="invr_passes_") as folder:
            rendered = Path(folder) / "render.exr"
            view_layer = _render(scene, camera, samples, has_shadow, rendered)
            layers = _layers(read_exr_channels(rendered), view_layer, has_shadow)
        metadata = {"invrender/layers": "R,G,B,A beauty; albedo; normal (world frame); depth (planar, along the "
                                        "view axis); shadow (the photo's shadow map); shading (diffuse direct + "
                                        "indirect, beauty = albedo x shading)",
                    "invrender/camera": camera.name,
                    "invrender/camera_to_world": " ".join(f"{v:.9g}" for row in camera.matrix_world for v in row)}
        write_exr_channels(temporaries[""], {(c if name == "beauty" else f"{name}.{c}"): values
                                             for name, channels in layers.items() for c, values in channels.items()},
                           metadata=metadata)
        for name in targets.keys() - {""}:
            write_exr_channels(temporaries[name], _plain(layers[name]), metadata=metadata)
        for key, target in targets.items():
            os.replace(temporaries[key], target)
    finally:
        for tmp in temporaries.values():
            tmp.unlink(missing_ok=True)
    return out


def _check_rendered(scene: bpy.types.Scene, built: BuiltScene) -> None:
    """ValueError when the import is left out of the render of the first view layer (the one rendered): the passes
    would hold nothing of it (depth 1e10 everywhere)."""
    name = built.collection.name
    path = _layer_path(scene.view_layers[0].layer_collection, built.collection)
    if not path or any(layer.exclude for layer in path):
        raise ValueError(f"the import {name!r} is excluded from the view layer {scene.view_layers[0].name!r}: tick "
                         "its checkbox in the Outliner, then export")
    if any(layer.collection.hide_render for layer in path) or built.mesh is None or built.mesh.hide_render:
        raise ValueError(f"the import {name!r} is disabled in renders: enable it (the camera icon in the Outliner), "
                         "then export")


def _layer_path(layer: bpy.types.LayerCollection, collection: bpy.types.Collection) -> list:
    """The layer collections from `layer` down to the one of `collection` ([] when it is not under `layer`)."""
    if layer.collection == collection:
        return [layer]
    for child in layer.children:
        path = _layer_path(child, collection)
        if path:
            return [layer, *path]
    return []


def _reserve(target: Path) -> Path:
    """An empty temporary file next to `target` (same folder, so the final rename is atomic)."""
    try:
        return temporary_beside(target)
    except FileNotFoundError as e:
        raise OSError(f"the folder {target.parent} does not exist: create it or choose another") from e
    except OSError as e:
        raise OSError(f"cannot write to {target.parent} ({e.strerror or e}): choose a writable folder") from e


def _has_shadow(built: BuiltScene) -> bool:
    """Whether the import's material carries the photo's shadow map into the SHADOW_AOV output."""
    mesh = built.mesh
    return mesh is not None and any(slot.material is not None and slot.material.node_tree is not None
                                    and SHADOW_NODE in slot.material.node_tree.nodes
                                    for slot in mesh.material_slots)


def _render(scene, camera, samples, has_shadow: bool, path: Path) -> str:
    """Render the first view layer with the passes on and save Blender's multilayer EXR to `path`; every
    setting changed here is put back before returning (or raising). Returns the view layer's name."""
    layer = scene.view_layers[0]
    changes = _Changes()
    image_settings = _snapshot(scene.render.image_settings)
    added_aov = None
    try:
        changes.set(scene, "camera", camera)
        changes.set(scene.render, "engine", "CYCLES")
        if samples is not None:
            changes.set(scene.cycles, "samples", int(samples))
            changes.set(layer, "samples", 0)  # a per-layer override would win over the samples asked for
        changes.set(scene.render, "use_compositing", False)
        changes.set(scene.render, "use_sequencer", False)
        changes.set(scene.render, "use_single_layer", False)
        changes.set(scene.render, "use_multiview", False)  # stereo would make a multi-view file of other names
        for other in scene.view_layers:
            changes.set(other, "use", other == layer)
        for flag in _PASS_FLAGS:
            changes.set(layer, flag, True)
        if has_shadow and SHADOW_AOV not in layer.aovs:
            added_aov = layer.aovs.add()
            added_aov.name, added_aov.type = SHADOW_AOV, "VALUE"
        settings = scene.render.image_settings
        use_multilayer_exr(settings)
        settings.color_depth = "32"
        settings.exr_codec = "NONE"  # read back at once: no need to compress
        if hasattr(settings, "color_management"):
            settings.color_management = "FOLLOW_SCENE"  # the beauty stays scene-linear, like the other passes
        try:
            result = bpy.ops.render.render(scene=scene.name)
        except RuntimeError as e:
            raise RuntimeError(f"Cycles could not render {scene.name!r} ({' '.join(str(e).split())}): see the "
                               f"console") from e
        if result != {"FINISHED"}:
            raise RuntimeError(f"Cycles did not render {scene.name!r} ({result}): see the console")
        render_result = next(image for image in bpy.data.images if image.type == "RENDER_RESULT")
        render_result.save_render(str(path), scene=scene)
    finally:
        if added_aov is not None:
            layer.aovs.remove(added_aov)
        _restore(scene.render.image_settings, image_settings)
        changes.restore()
    return layer.name


def _layers(channels: dict[str, np.ndarray], layer: str, has_shadow: bool) -> dict[str, dict[str, np.ndarray]]:
    """Blender's channels {"ViewLayer.DiffCol.R": (H, W)} -> our layers {"albedo": {"R": (H, W), ...}}."""

    def get(kind: str, components: str) -> list[np.ndarray]:
        for name in BLENDER_PASS_NAMES[kind]:
            keys = [f"{layer}.{name}.{c}" for c in components]
            if all(k in channels for k in keys):
                return [channels[k] for k in keys]
        raise RuntimeError(f"Blender's render has no {BLENDER_PASS_NAMES[kind][0]} pass (channels: "
                           f"{sorted(channels)[:8]}...): report this with your Blender version")

    combined, albedo, normal = get("combined", "RGBA"), get("albedo", "RGB"), get("normal", "XYZ")
    shading = [d + i for d, i in zip(get("direct", "RGB"), get("indirect", "RGB"), strict=True)]
    layers = {"beauty": dict(zip("RGBA", combined, strict=True)), "albedo": dict(zip("RGB", albedo, strict=True)),
              "normal": dict(zip("XYZ", normal, strict=True)), "depth": {"Z": get("depth", "Z")[0]}}
    if has_shadow:
        # A value AOV has one channel ("X" in Blender 4.x); take it whatever its letter.
        aov = [k for k in channels if k.startswith(f"{layer}.{SHADOW_AOV}.")]
        if len(aov) != 1:
            raise RuntimeError(f"Blender's render has no {SHADOW_AOV!r} AOV: report this with your Blender version")
        layers["shadow"] = {"Y": channels[aov[0]]}
    layers["shading"] = dict(zip("RGB", shading, strict=True))
    return layers


def _plain(channels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A layer's channels under the names every EXR reader knows: X, Y, Z -> R, G, B; one channel -> Y."""
    if len(channels) == 1:
        return {"Y": next(iter(channels.values()))}
    return {_PLAIN_NAMES.get(c, c): values for c, values in channels.items()}


class _Changes:
    """Attribute changes that can be undone in reverse order."""

    def __init__(self):
        self._undo: list[tuple[object, str, object]] = []

    def set(self, owner, name: str, value) -> None:
        self._undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def restore(self) -> None:
        while self._undo:
            owner, name, value = self._undo.pop()
            if getattr(owner, name) != value:
                setattr(owner, name, value)


def _snapshot(struct) -> dict[str, object]:
    """Every writable plain property of an RNA struct (the output format settings)."""
    return {p.identifier: _value(getattr(struct, p.identifier)) for p in struct.bl_rna.properties
            if not p.is_readonly and p.type in {"BOOLEAN", "INT", "FLOAT", "STRING", "ENUM"}}


def _value(v):
    return tuple(v) if hasattr(v, "__len__") and not isinstance(v, (str, set)) else v


def _restore(struct, values: dict[str, object]) -> None:
    """Put a _snapshot back: the media type and format first, since they decide which depths and codecs exist."""
    order = [k for k in ("media_type", "file_format") if k in values] + sorted(set(values) - {"media_type",
                                                                                            "file_format"})
    for name in order:
        if _value(getattr(struct, name)) != values[name]:
            setattr(struct, name, values[name])
