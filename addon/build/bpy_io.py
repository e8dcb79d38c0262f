"""The one bridge between numpy arrays and bpy data: images and meshes, all through foreach_set."""

from __future__ import annotations

import bpy
import numpy as np

# Blender cuts datablock names at 63 bytes (before 5.0): a build's names are its base name plus suffixes of up to 20
# bytes (" background material"), and Blender may add ".001", so the base name keeps at most this many.
MAX_BASE_NAME_BYTES = 39


def base_name(name: str) -> str:
    """name shortened to MAX_BASE_NAME_BYTES of UTF-8 (whole characters), so that every "<base> <suffix>" a build
    makes stays whole and datablocks of one build stay apart ("<long name> albedo" and "<long name> normals")."""
    return name.encode("utf-8")[:MAX_BASE_NAME_BYTES].decode("utf-8", errors="ignore").rstrip() or "InvRender"


def enable_nodes(block) -> bpy.types.NodeTree:
    """The shader node tree of a new material or world (block). Blender before 5.0 creates them without one
    until `use_nodes` is set; 5.0 always gives them one and deprecates `use_nodes` (removed in 6.0)."""
    if bpy.app.version < (5, 0, 0):
        block.use_nodes = True
    return block.node_tree


def image_from_array(name: str, pixels: np.ndarray, non_color: bool = False) -> bpy.types.Image:
    """A packed float image from (H, W, 3) or (H, W) linear data; row 0 of the array is the TOP row.

    Blender stores rows bottom-up as RGBA floats, hence the flip. The image is packed as OpenEXR so the
    .blend keeps full float precision and nothing is lost when the file is saved, reloaded or moved.
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=-1)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"image {name!r} must have shape (H, W, 3) or (H, W), got {pixels.shape}")
    height, width = pixels.shape[:2]
    rgba = np.ones((height, width, 4), np.float32)
    rgba[..., :3] = np.nan_to_num(pixels[::-1])
    image = bpy.data.images.new(name, width, height, alpha=False, float_buffer=True)
    image.colorspace_settings.name = "Non-Color" if non_color else "Linear Rec.709"
    image.pixels.foreach_set(rgba.ravel())
    image.file_format = "OPEN_EXR"
    image.pack()
    return image


def image_to_array(image: bpy.types.Image) -> np.ndarray:
    """(H, W, 3) float32 pixels of a Blender image, row 0 = top (inverse of image_from_array)."""
    width, height = image.size
    rgba = np.empty(width * height * 4, np.float32)
    image.pixels.foreach_get(rgba)
    return rgba.reshape(height, width, 4)[::-1, :, :3].copy()


def mesh_from_arrays(name: str, vertices: np.ndarray, faces: np.ndarray, uvs: np.ndarray | None = None
                     ) -> bpy.types.Mesh:
    """A mesh from vertices (V, 3), triangles (F, 3) and per-vertex UVs (V, 2), without Python loops.

    Corners and UVs go through the generic attribute API (".corner_vert", the UV map's "vector"), which takes
    numpy buffers about 100x faster than MeshLoop/MeshUVLoop foreach_set (0.4 s against 3 ms for 6 M corners).
    The indices are checked in numpy first, because Mesh.validate costs a second on a megapixel mesh.
    """
    vertices = np.ascontiguousarray(vertices, dtype=np.float32)
    faces = np.ascontiguousarray(faces, dtype=np.int32)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"vertices must be (V, 3) and faces (F, 3), got {vertices.shape} and {faces.shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"mesh {name!r}: face indices must lie in [0, {len(vertices)}), got "
                         f"[{faces.min()}, {faces.max()}]")
    degenerate = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 0] == faces[:, 2])
    if degenerate.any():
        raise ValueError(f"mesh {name!r}: {int(degenerate.sum())} faces repeat a vertex")
    if not np.isfinite(vertices).all():
        raise ValueError(f"mesh {name!r}: vertices must be finite")
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(vertices))
    mesh.attributes["position"].data.foreach_set("vector", vertices.ravel())
    mesh.loops.add(faces.size)
    mesh.attributes[".corner_vert"].data.foreach_set("value", faces.ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    if uvs is not None:
        uvs = np.asarray(uvs, dtype=np.float32)
        if uvs.shape != (len(vertices), 2):
            raise ValueError(f"uvs must have shape {(len(vertices), 2)}, got {uvs.shape}")
        layer = mesh.uv_layers.new(name="UVMap")
        mesh.attributes[layer.name].data.foreach_set("vector", np.ascontiguousarray(uvs[faces.ravel()]).ravel())
    mesh.update(calc_edges=True)
    return mesh


# ------------------------------------------------------------------------ animation, version-robust, in bulk


def use_multilayer_exr(settings: bpy.types.ImageFormatSettings) -> None:
    """Make render output settings write multilayer OpenEXR (all passes in one file)."""
    if hasattr(settings, "media_type"):  # Blender 5.0: multilayer is a media type of its own
        settings.media_type = "MULTI_LAYER_IMAGE"
    settings.file_format = "OPEN_EXR_MULTILAYER"


def action_fcurves(id_data: bpy.types.ID) -> list[bpy.types.FCurve]:
    """The F-curves animating `id_data` through its action: the action slot's channel bag in Blender 4.4+
    (slotted actions; 5.0 removed Action.fcurves), Action.fcurves before. [] when it is not animated."""
    anim = getattr(id_data, "animation_data", None)
    if anim is None or anim.action is None:
        return []
    action = anim.action
    if not hasattr(action, "layers"):  # before 4.4
        return list(action.fcurves)
    slot = anim.action_slot
    if slot is None:
        return []
    fcurves = []
    for layer in action.layers:
        for strip in layer.strips:
            channelbag = strip.channelbag(slot)
            if channelbag is not None:
                fcurves.extend(channelbag.fcurves)
    return fcurves


def ensure_fcurves(id_data: bpy.types.ID, action_name: str):
    """The collection that new F-curves of `id_data` go into (its `.new(data_path, index=)` adds one).

    Gives `id_data` an action named `action_name` when it has none. Blender 4.4+ (slotted actions): a slot for
    `id_data`, the first layer's keyframe strip and that slot's channel bag, each created when missing; before
    4.4: Action.fcurves.
    """
    anim = id_data.animation_data or id_data.animation_data_create()
    if anim.action is None:
        anim.action = bpy.data.actions.new(action_name)
    action = anim.action
    if not hasattr(action, "layers"):  # before 4.4
        return action.fcurves
    if anim.action_slot is None:
        anim.action_slot = action.slots.new(id_data.id_type, id_data.name)
    layer = action.layers[0] if len(action.layers) else action.layers.new("Layer")
    strip = layer.strips[0] if len(layer.strips) else layer.strips.new(type="KEYFRAME")
    return strip.channelbag(anim.action_slot, ensure=True).fcurves


def keyframes_from_arrays(fcurves, data_path: str, frames: np.ndarray, values: np.ndarray,
                          interpolation: str | list[str] = "LINEAR") -> list[bpy.types.FCurve]:
    """New F-curves keyed at `frames` (N,) with `values` (N,) or (N, C) (one F-curve per column, array index =
    column), all keys set at once (keyframe_points.add + foreach_set): hundreds of frames cost no Python loop.

    `fcurves`: from `ensure_fcurves`. The curves must not exist yet (F-curves are unique per path and index).
    interpolation: one mode for every key, or one per key (a key's mode is that of the segment after it).
    """
    frames = np.asarray(frames, dtype=np.float32)
    values = np.asarray(values, dtype=np.float32)
    if frames.ndim != 1 or values.ndim not in (1, 2) or len(values) != len(frames):
        raise ValueError(f"keyframes of {data_path!r}: frames must be (N,) and values (N,) or (N, C), "
                         f"got {frames.shape} and {values.shape}")
    columns = values.reshape(len(values), -1)  # (N, C)
    items = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items
    modes = [interpolation] * len(frames) if isinstance(interpolation, str) else list(interpolation)
    if len(modes) != len(frames):
        raise ValueError(f"keyframes of {data_path!r}: {len(modes)} interpolation modes for {len(frames)} keys")
    mode = np.array([items[m].value for m in modes], np.int32)  # (N,)
    created = []
    for index in range(columns.shape[1]):
        fcurve = fcurves.new(data_path, index=index)
        points = fcurve.keyframe_points
        points.add(len(frames))
        co = np.stack([frames, columns[:, index]], axis=-1).ravel()  # (2N,) frame, value pairs
        points.foreach_set("co", co)
        points.foreach_set("interpolation", mode)
        fcurve.update()  # sorts the keys and recomputes the handles
        created.append(fcurve)
    return created
