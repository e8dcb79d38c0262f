"""Scene builder: a camera-matched, relightable Blender scene from numpy arrays (no maths here).

Placement: the camera sits at the world origin looking along +y with +z up, so the DESIGN.md camera
frame maps to the world by sh.CAMERA_TO_WORLD. The mesh object shares the camera's transform, so its
vertices and its object-space normal map are simply camera-frame data.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field

import bpy
import numpy as np

from .bpy_io import base_name, enable_nodes, image_from_array, image_to_array, mesh_from_arrays

SENSOR_WIDTH_MM = 36.0
# Names of the nodes the relight and export tools look for (labels are what the artist sees).
ALBEDO_NODE, NORMALS_NODE, SHADOW_NODE = "InvRender Albedo", "InvRender Normals", "InvRender Shadow"
TURNED_AWAY_NODE = "InvRender Turned away"  # 0 where geometry and normal map agree, 1 where they oppose
PHOTO_GAIN_NODE = "InvRender Photo gain"  # albedo x gain -> base colour, when the import matched the photo
ENVIRONMENT_NODE, ENVIRONMENT_MAPPING_NODE = "InvRender Environment", "InvRender Mapping"
SHADOW_AOV = "shadow"
IMPORT_KEY = "invrender_import"  # collection ID property: what an import built (datablocks) and its estimate
# Keys of the IMPORT_KEY record that refer to datablocks, with the bpy.data collection they belong to. The record
# holds ID references, which follow renames, append and link; records written before kept names instead.
RECORD_BLOCKS = {"camera": "objects", "mesh": "objects", "sun": "objects", "background": "objects", "world": "worlds",
                 "photo": "images", "albedo": "images", "normals": "images", "shadow": "images", "depth": "images"}
# Keys of the IMPORT_KEY record that the 2D relight preview needs (`stored_estimate`).
PREVIEW_KEYS = ("photo", "albedo", "normals", "depth", "intrinsics", "lighting_camera")
CAMERA_ROTATION_EULER = (math.pi / 2, 0.0, 0.0)  # Blender camera looking along +y, up = +z


@dataclass
class SceneAssets:
    """Arrays for one relightable scene.

    camera: dict with width, height, fx, fy, cx, cy (pixels); vertices (V, 3) camera frame; faces (F, 3);
    uvs (V, 2) image coordinates with v up; photo and albedo (H, W, 3) linear RGB; normals (H, W, 3)
    camera frame; environment (He, We, 3) equirect radiance in the world frame (Blender mapping);
    sun: optional (direction towards the sun in the world frame (3,), strength W/m², RGB colour);
    shadow: optional (H, W) in [0, 1], kept as an image and a Cycles AOV for compositing.
    background: optional layer behind the occluders (`invrender_core.scene.background_assets`): vertices, faces,
    uvs, albedo, normals and shadow (or None) as above, built as a second mesh, hidden from the photo's camera but
    where the main mesh is cut at outlines.

    Kept for the 2D relight preview (`stored_estimate`), which rebuilds the estimate from the .blend alone:
    depth_fused: optional (H, W) fused planar depth (non-finite or <= 0: unknown); sky: optional (H, W) bool;
    lighting_camera: optional (9, 3) SH lighting in the camera frame; sun_fraction: the sun's share of it.
    """

    name: str
    camera: dict
    vertices: np.ndarray
    faces: np.ndarray
    uvs: np.ndarray
    photo: np.ndarray
    albedo: np.ndarray
    normals: np.ndarray
    environment: np.ndarray
    sun: tuple | None = None
    shadow: np.ndarray | None = None
    depth_fused: np.ndarray | None = None
    sky: np.ndarray | None = None
    lighting_camera: np.ndarray | None = None
    source: str = ""  # the photo's file, resolved: a later import of the same file replaces this one in the view
    sun_fraction: float | None = None
    background: dict | None = None
    match_photo: bool = False  # set a gain on the albedo so that the scene renders as bright as the photo


@dataclass
class BuiltScene:
    collection: bpy.types.Collection
    camera: bpy.types.Object
    mesh: bpy.types.Object
    world: bpy.types.World
    sun: bpy.types.Object | None
    background: bpy.types.Object | None = None
    replaced: tuple[str, ...] = ()  # earlier imports of the same photo, now excluded from the view layers
    warnings: list[str] = field(default_factory=list)  # for the caller to report (a WARNING)
    photo_gain: tuple[float, float, float] | None = None  # the albedo's gain (`match_photo`), None: none set


def build_camera(name: str, cam: dict, scene: bpy.types.Scene) -> bpy.types.Object:
    """A Blender camera with the photo's intrinsics; sets the scene's render resolution to match."""
    width, height = int(cam["width"]), int(cam["height"])
    data = bpy.data.cameras.new(name)
    data.sensor_fit = "HORIZONTAL"
    data.sensor_width = SENSOR_WIDTH_MM
    data.lens = cam["fx"] * SENSOR_WIDTH_MM / width
    # Blender's shift is in units of the fitted (horizontal) image side; image v grows downwards.
    data.shift_x = (0.5 * width - cam["cx"]) / width
    data.shift_y = (cam["cy"] - 0.5 * height) / width
    obj = bpy.data.objects.new(name, data)
    obj.rotation_euler = CAMERA_ROTATION_EULER
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    # Non-square pixels: Blender scales the vertical focal by pixel_aspect_x / pixel_aspect_y.
    scene.render.pixel_aspect_x, scene.render.pixel_aspect_y = 1.0, float(cam["fx"]) / float(cam["fy"])
    return obj


def build_material(name: str, albedo_image, normal_image, shadow_image=None, roughness: float = 1.0
                   ) -> bpy.types.Material:
    """Principled material: albedo -> Base Color, object-space normal map -> Normal, diffuse by default.

    The shadow map, when given, is not part of the shading (the geometry casts its own shadows): it is kept
    as an image node feeding a Cycles AOV output named SHADOW_AOV, for compositing.
    """
    mat = bpy.data.materials.new(name)
    enable_nodes(mat)
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = nodes["Principled BSDF"]
    bsdf.inputs["Roughness"].default_value = roughness
    bsdf.inputs["Specular IOR Level"].default_value = 0.0  # the image model is Lambertian
    albedo = _image_node(nodes, ALBEDO_NODE, "Albedo", albedo_image, (-600, 300))
    links.new(albedo.outputs["Color"], bsdf.inputs["Base Color"])
    normal = _image_node(nodes, NORMALS_NODE, "Normals (object space)", normal_image, (-600, -100))
    normal_map = nodes.new("ShaderNodeNormalMap")
    normal_map.space, normal_map.location = "OBJECT", (-300, -100)
    links.new(normal.outputs["Color"], normal_map.inputs["Color"])
    links.new(normal_map.outputs["Normal"], bsdf.inputs["Normal"])
    # A single view's geometry has faces turned away from where their normal map says they face (a wall the
    # networks call floor becomes a staircase with risers facing down): Cycles reflects no light that arrives
    # behind a face's geometric normal, so those faces rendered black. Where the two disagree, a translucent BSDF on
    # the reversed normal map adds light from behind (faded in from 60 to 90 degrees of disagreement). Elsewhere it
    # is left out: Cycles bends a shading normal that faces away from the camera, and on faces that agree with their
    # normal map it let a fifth more light through (blender_tests/test_build_scene.py).
    geometry = nodes.new("ShaderNodeNewGeometry")
    geometry.location = (-300, -500)
    agreement = nodes.new("ShaderNodeVectorMath")
    agreement.operation, agreement.location = "DOT_PRODUCT", (-100, -450)
    links.new(normal_map.outputs["Normal"], agreement.inputs[0])
    links.new(geometry.outputs["True Normal"], agreement.inputs[1])
    turned = nodes.new("ShaderNodeMapRange")
    turned.name, turned.location, turned.clamp = TURNED_AWAY_NODE, (100, -450), True
    turned.inputs["From Min"].default_value, turned.inputs["From Max"].default_value = 0.5, 0.0
    links.new(agreement.outputs["Value"], turned.inputs["Value"])
    flip = nodes.new("ShaderNodeVectorMath")
    flip.operation, flip.location = "SCALE", (-100, -250)
    flip.inputs["Scale"].default_value = -1.0
    links.new(normal_map.outputs["Normal"], flip.inputs["Vector"])
    back = nodes.new("ShaderNodeBsdfTranslucent")
    back.location = (100, -250)
    links.new(albedo.outputs["Color"], back.inputs["Color"])
    links.new(flip.outputs["Vector"], back.inputs["Normal"])
    both = nodes.new("ShaderNodeAddShader")
    both.location = (300, -150)
    links.new(bsdf.outputs["BSDF"], both.inputs[0])
    links.new(back.outputs["BSDF"], both.inputs[1])
    surface = nodes.new("ShaderNodeMixShader")
    surface.location = (500, 0)
    links.new(turned.outputs["Result"], surface.inputs["Fac"])
    links.new(bsdf.outputs["BSDF"], surface.inputs[1])
    links.new(both.outputs["Shader"], surface.inputs[2])
    links.new(surface.outputs["Shader"], nodes["Material Output"].inputs["Surface"])
    if shadow_image is not None:
        shadow = _image_node(nodes, SHADOW_NODE, "Shadow (photo)", shadow_image, (-600, -450))
        aov = nodes.new("ShaderNodeOutputAOV")
        aov.aov_name, aov.location = SHADOW_AOV, (-300, -450)
        links.new(shadow.outputs["Color"], aov.inputs["Value"])
    return mat


def _image_node(nodes, name: str, label: str, image, location) -> bpy.types.ShaderNodeTexImage:
    node = nodes.new("ShaderNodeTexImage")
    node.name, node.label, node.image, node.location = name, label, image, location
    return node


def build_world(name: str, environment_image, strength: float = 1.0) -> bpy.types.World:
    """World lit by an equirect environment image (the SH lighting), with a strength control and a
    Mapping node (ENVIRONMENT_MAPPING_NODE) through which relighting rotates it."""
    world = bpy.data.worlds.new(name)
    enable_nodes(world)
    nodes, links = world.node_tree.nodes, world.node_tree.links
    coords = nodes.new("ShaderNodeTexCoord")
    coords.location = (-800, 300)
    mapping = nodes.new("ShaderNodeMapping")
    mapping.name, mapping.location = ENVIRONMENT_MAPPING_NODE, (-600, 300)
    links.new(coords.outputs["Generated"], mapping.inputs["Vector"])
    env = nodes.new("ShaderNodeTexEnvironment")
    env.name, env.image, env.location = ENVIRONMENT_NODE, environment_image, (-400, 300)
    links.new(mapping.outputs["Vector"], env.inputs["Vector"])
    background = nodes["Background"]
    background.inputs["Strength"].default_value = strength
    links.new(env.outputs["Color"], background.inputs["Color"])
    return world


def build_sun(name: str, direction, strength: float, colour) -> bpy.types.Object:
    """A sun lamp shining from `direction` (world frame, towards the sun)."""
    data = bpy.data.lights.new(name, "SUN")
    data.energy = float(strength)
    data.color = tuple(float(c) for c in colour)
    data.angle = math.radians(1.0)
    obj = bpy.data.objects.new(name, data)
    aim_sun(obj, direction)
    return obj


def aim_sun(sun: bpy.types.Object, direction) -> None:
    """Point a sun lamp (which shines along its local -z) so that light comes from `direction`."""
    from mathutils import Vector

    sun.rotation_euler = Vector(direction).to_track_quat("Z", "Y").to_euler()


DATA_COLLECTIONS = ("collections", "objects", "meshes", "materials", "images", "worlds", "cameras", "lights")


def build_scene(assets: SceneAssets, scene: bpy.types.Scene | None = None) -> BuiltScene:
    """Add a collection with camera, mesh, material, world (and sun) for `assets` to `scene`.

    All or nothing: if anything fails, every datablock added so far is removed and the scene's camera
    and world are restored before the error propagates.
    """
    scene = scene or bpy.context.scene
    before = {kind: set(getattr(bpy.data, kind)) for kind in DATA_COLLECTIONS}
    camera_before, world_before = scene.camera, scene.world
    aovs_before = {aov.name for aov in scene.view_layers[0].aovs}
    resolution_before = (scene.render.resolution_x, scene.render.resolution_y,
                         scene.render.resolution_percentage, scene.render.pixel_aspect_x,
                         scene.render.pixel_aspect_y)
    try:
        return _build_scene(assets, scene)
    except BaseException:
        scene.camera, scene.world = camera_before, world_before
        for aov in [a for a in scene.view_layers[0].aovs if a.name not in aovs_before]:
            scene.view_layers[0].aovs.remove(aov)
        (scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage,
         scene.render.pixel_aspect_x, scene.render.pixel_aspect_y) = resolution_before
        for kind in DATA_COLLECTIONS:
            blocks = getattr(bpy.data, kind)
            for block in set(blocks) - before[kind]:
                blocks.remove(block)
        raise


def _check_preview_maps(assets: SceneAssets) -> None:
    size = np.shape(assets.photo)[:2]
    for name, value, shape in (("depth_fused", assets.depth_fused, size), ("sky", assets.sky, size),
                               ("lighting_camera", assets.lighting_camera, (9, 3))):
        if value is not None and np.shape(value) != shape:
            raise ValueError(f"{name} has shape {np.shape(value)}, expected {shape}")


def _build_scene(assets: SceneAssets, scene: bpy.types.Scene) -> BuiltScene:
    _check_preview_maps(assets)
    name = base_name(assets.name)
    collection = bpy.data.collections.new(name)
    scene.collection.children.link(collection)

    camera = build_camera(f"{name} camera", assets.camera, scene)
    photo = image_from_array(f"{name} photo", assets.photo)
    camera.data.show_background_images = True
    camera.data.background_images.new().image = photo
    collection.objects.link(camera)
    scene.camera = camera

    mesh, albedo, normals, shadow = _build_surface(name, assets.vertices, assets.faces, assets.uvs,
                                                   assets.albedo, assets.normals, assets.shadow, collection)
    background = None
    if assets.background is not None:
        layer = assets.background
        background = _build_surface(f"{name} background", layer["vertices"], layer["faces"], layer["uvs"],
                                    layer["albedo"], layer["normals"], layer["shadow"], collection)[0]

    world = build_world(f"{name} world",
                        image_from_array(f"{name} environment", assets.environment))
    scene.world = world

    sun = None
    if assets.sun is not None:
        direction, strength, colour = assets.sun
        sun = build_sun(f"{name} sun", direction, strength, colour)
        collection.objects.link(sun)
    warnings, photo_gain = [], None
    if assets.match_photo:
        unmatched = "the scene keeps the estimate's albedo, and may render darker than the photo"
        try:  # the match is a refinement: without it, the scene is still built
            photo_gain = match_photo(assets, collection, world, mesh)
        except ValueError as e:
            warnings.append(f"{e}: {unmatched}")
        except RuntimeError as e:
            warnings.append(f"Cycles could not bake the light to match the photo ({str(e).strip()}): {unmatched}")
        if photo_gain is not None:
            for obj in (mesh, background):
                if obj is not None:
                    set_photo_gain(obj.data.materials[0], photo_gain)
    if shadow is not None and SHADOW_AOV not in scene.view_layers[0].aovs:
        aov = scene.view_layers[0].aovs.add()
        aov.name, aov.type = SHADOW_AOV, "VALUE"
    blocks = {"camera": camera, "mesh": mesh, "world": world, "sun": sun, "background": background,
              "photo": photo, "albedo": albedo, "normals": normals, "shadow": shadow}
    record = {key: block for key, block in blocks.items() if block is not None}  # absent: none built
    # What the 2D relight preview reads back (`stored_estimate`); a new id per import so that cached relighters of
    # an earlier import are never taken for this one.
    record["import_id"] = uuid.uuid4().hex
    record["intrinsics"] = {k: assets.camera[k] for k in ("width", "height", "fx", "fy", "cx", "cy")}
    if assets.depth_fused is not None:
        record["depth"] = _depth_image(f"{name} depth", assets.depth_fused, assets.sky)
        record["sky"] = assets.sky is not None
    if assets.lighting_camera is not None:
        record["lighting_camera"] = np.asarray(assets.lighting_camera, np.float64).tolist()  # (9, 3) doubles
    if assets.sun_fraction is not None:
        record["sun_fraction"] = float(assets.sun_fraction)
    if assets.source:
        record["source"] = assets.source
    if photo_gain is not None:
        record["photo_gain"] = list(photo_gain)
    collection[IMPORT_KEY] = record
    replaced = exclude_earlier_builds(scene, collection, IMPORT_KEY, assets.source)
    warnings += user_objects_in_the_way(scene, collection, camera, mesh)
    return BuiltScene(collection, camera, mesh, world, sun, background, replaced, warnings, photo_gain)


# The bake that `match_photo` measures the render's light with: small and quick (about a second on two cores),
# since only a median over it counts.
GAIN_BAKE_SIDE, GAIN_BAKE_SAMPLES = 128, 16


def match_photo(assets: SceneAssets, collection: bpy.types.Collection, world: bpy.types.World,
                mesh: bpy.types.Object) -> tuple[float, float, float]:
    """The gain on the albedo (RGB) that makes the built scene render as bright as the photo under the photo's own
    light (`invrender_core.scene.photo_gain`), measured on `mesh` (the import's main mesh) with `bake_irradiance`.
    ValueError when too little of the mesh is lit to measure it; RuntimeError when Cycles cannot bake."""
    from invrender_core.scene import photo_gain

    unmatched = ValueError("too little of the photo is lit surface to match its brightness")
    if len(mesh.data.polygons) == 0:
        raise unmatched
    height, width = np.shape(assets.photo)[:2]
    scale = min(1.0, GAIN_BAKE_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    gain = photo_gain(assets.photo, assets.albedo, bake_irradiance(collection, world, mesh, size))
    if gain is None:
        raise unmatched
    return tuple(float(g) for g in gain)


def bake_irradiance(collection: bpy.types.Collection, world: bpy.types.World, mesh: bpy.types.Object,
                    size: tuple[int, int], samples: int = GAIN_BAKE_SAMPLES) -> np.ndarray:
    """The light Cycles gives `mesh`'s surface in its UV layout, as an image of `size` (width, height):
    (height, width, 3), top row first, 0 where no face covers a texel (a Diffuse bake, direct and indirect light,
    without colour). It is baked in a temporary scene that holds only `collection` lit by `world`, so the artist's
    objects (the startup file's Cube around the photo camera) neither shadow nor light it; that scene and the bake's
    image and node are removed afterwards."""
    material = mesh.data.materials[0]
    nodes = material.node_tree.nodes
    active_before = nodes.active
    image = bpy.data.images.new(f"{mesh.name} bake", *size, float_buffer=True)
    target = nodes.new("ShaderNodeTexImage")  # Cycles bakes into the material's active image node
    target.image = image
    nodes.active = target
    bake_scene = bpy.data.scenes.new(f"{mesh.name} bake")
    try:
        bake_scene.render.engine = "CYCLES"
        bake_scene.cycles.device = "CPU"
        bake_scene.cycles.samples = samples
        bake_scene.world = world
        bake_scene.collection.children.link(collection)
        view_layer = bake_scene.view_layers[0]
        for obj in view_layer.objects:
            obj.select_set(obj == mesh, view_layer=view_layer)
        view_layer.objects.active = mesh
        with bpy.context.temp_override(scene=bake_scene, view_layer=view_layer, active_object=mesh, object=mesh,
                                       selected_objects=[mesh], selected_editable_objects=[mesh]):
            bpy.ops.object.bake(type="DIFFUSE", pass_filter={"DIRECT", "INDIRECT"}, margin=0, use_clear=True)
        return image_to_array(image)
    finally:
        bpy.data.scenes.remove(bake_scene)
        nodes.remove(target)
        nodes.active = active_before
        bpy.data.images.remove(image)


def set_photo_gain(material: bpy.types.Material, gain) -> None:
    """Multiply the material's albedo by `gain` (RGB) wherever it goes (the base colour, the light from behind):
    a PHOTO_GAIN_NODE (Mix, Multiply, clamped to 1) after the albedo image, which the artist can change or mute."""
    nodes, links = material.node_tree.nodes, material.node_tree.links
    albedo = nodes[ALBEDO_NODE].outputs["Color"]
    targets = [link.to_socket for link in albedo.links]
    mix = nodes.new("ShaderNodeMix")
    mix.name, mix.label, mix.location = PHOTO_GAIN_NODE, "Photo gain", (-300, 350)
    mix.data_type, mix.blend_type, mix.clamp_result = "RGBA", "MULTIPLY", True
    sockets = {socket.identifier: socket for socket in mix.inputs}
    sockets["Factor_Float"].default_value = 1.0
    sockets["B_Color"].default_value = (*gain, 1.0)
    links.new(albedo, sockets["A_Color"])
    result = next(socket for socket in mix.outputs if socket.identifier == "Result_Color")
    for socket in targets:
        links.new(result, socket)


NEAR = 1e-3  # metres: nearer the camera, a box is not in front of it
# Object types that render surfaces (and so can hide the import from its camera).
SURFACE_TYPES = {"MESH", "CURVE", "CURVES", "SURFACE", "META", "FONT", "VOLUME", "POINTCLOUD", "GPENCIL",
                 "GREASEPENCIL"}


def user_objects_in_the_way(scene: bpy.types.Scene, collection: bpy.types.Collection, camera: bpy.types.Object,
                            mesh: bpy.types.Object) -> list[str]:
    """Warnings naming the scene's rendered objects outside the import `collection` that spoil its render (the
    photo camera sits at the world origin, inside the startup file's Cube): surfaces whose bounding box holds the
    camera or lies in its view nearer than the import's farthest vertex, and lights that light it too. They are
    the artist's, so they are only named, never moved or hidden."""
    from mathutils import Vector

    view_layer = scene.view_layers[0]
    view_layer.update()  # matrix_world of the objects just built
    ours = set(collection.all_objects)
    others = [o for o in scene.objects if o not in ours and not o.hide_render and o.visible_get(view_layer=view_layer)]
    co = np.empty(len(mesh.data.vertices) * 3, np.float32)
    mesh.data.vertices.foreach_get("co", co)
    farthest = float(-co[2::3].min()) if co.size else 0.0  # the mesh is in the camera's frame, looking along -z
    to_camera = camera.matrix_world.inverted()
    frame = [v.xy / -v.z for v in camera.data.view_frame(scene=scene)]  # the image's corners at depth 1
    low, high = Vector(map(min, *frame)), Vector(map(max, *frame))
    blocking = []
    for obj in others:
        if obj.type not in SURFACE_TYPES:
            continue
        box = [Vector(c) for c in obj.bound_box]  # object space
        inside = obj.matrix_world.inverted_safe() @ camera.matrix_world.translation  # the camera, object space
        if all(min(c[i] for c in box) <= inside[i] <= max(c[i] for c in box) for i in range(3)):
            blocking.append(obj.name)
            continue
        # The box's part in front of the camera (depth >= NEAR): its corners there, and where the lines between
        # corners cross depth NEAR; its projection's bounding rectangle against the image's.
        corners = [to_camera @ obj.matrix_world @ c for c in box]
        front = [c for c in corners if -c.z >= NEAR]
        front += [a.lerp(b, (-NEAR - a.z) / (b.z - a.z)) for i, a in enumerate(corners) for b in corners[i + 1:]
                  if (-a.z - NEAR) * (-b.z - NEAR) < 0]
        if not front or min(-c.z for c in front) >= farthest:
            continue
        projected = [c.xy / -c.z for c in front]
        lo, hi = Vector(map(min, *projected)), Vector(map(max, *projected))
        if lo.x < high.x and hi.x > low.x and lo.y < high.y and hi.y > low.y:  # overlaps the image
            blocking.append(obj.name)
    warnings = []
    if blocking:
        warnings.append(f"{', '.join(blocking)}: around the photo camera or in its view in front of the import, so "
                        "they cover it in the render: hide them or move them away")
    lights = [o.name for o in others if o.type == "LIGHT"]
    if lights:
        warnings.append(f"{', '.join(lights)}: lights outside the import that light it too: hide them to light "
                        "it as the photo was lit")
    return warnings


def exclude_earlier_builds(scene: bpy.types.Scene, built: bpy.types.Collection, key: str,
                           source: str) -> tuple[str, ...]:
    """Exclude from the view layers the scene's other collections built from the same file (their ID property
    `key` records it as "source"); their names. Building again (say with other settings) then replaces what is
    rendered and lit (two suns, two overlapping meshes otherwise) without deleting anything the artist may have
    changed there; ticking a collection back on brings it back."""
    if not source:
        return ()
    earlier = tuple(c.name for c in scene.collection.children
                    if c != built and key in c and c[key].get("source") == source)
    for view_layer in scene.view_layers:
        for layer_collection in view_layer.layer_collection.children:
            if layer_collection.name in earlier:
                layer_collection.exclude = True
    return earlier


def _build_surface(name: str, vertices, faces, uvs, albedo, normals, shadow, collection):
    """A mesh object (in the camera's frame) with its albedo, object-space normal map and optional shadow images
    in a `build_material`, linked to collection: (object, albedo image, normals image, shadow image or None)."""
    albedo = image_from_array(f"{name} albedo", albedo)
    normal_colour = 0.5 * (np.asarray(normals) + 1.0)  # object-space normal map encoding
    normals = image_from_array(f"{name} normals", normal_colour, non_color=True)
    obj = bpy.data.objects.new(f"{name} mesh", mesh_from_arrays(f"{name} mesh", vertices, faces, uvs))
    obj.rotation_euler = CAMERA_ROTATION_EULER
    shadow = None if shadow is None else image_from_array(f"{name} shadow", shadow, non_color=True)
    obj.data.materials.append(build_material(f"{name} material", albedo, normals, shadow))
    collection.objects.link(obj)
    return obj, albedo, normals, shadow


def _depth_image(name: str, depth_fused: np.ndarray, sky: np.ndarray | None) -> bpy.types.Image:
    """A packed float image: R = fused depth (0 where unknown), G = sky mask (1 on sky), B = 0.

    Unknown depth is stored as 0 (the image bridge cannot keep NaN); the preview treats both alike. Only the
    import's record refers to it, so it also gets a fake user: saving keeps it even if the record loses it.
    """
    depth = np.asarray(depth_fused, np.float32)
    channels = np.zeros((*depth.shape, 3), np.float32)
    channels[..., 0] = np.where(np.isfinite(depth), depth, 0.0)
    if sky is not None:
        channels[..., 1] = np.asarray(sky, bool)
    image = image_from_array(name, channels, non_color=True)
    image.use_fake_user = True
    return image


def record_block(collection: bpy.types.Collection, key: str):
    """The datablock that `collection`'s import record refers to under `key` (RECORD_BLOCKS); None when the
    import has none or it was deleted. Names in records of earlier versions are looked up in the collection's
    library (None: this file)."""
    value = collection[IMPORT_KEY].get(key)
    if not isinstance(value, str):
        return value
    if not value:
        return None
    library = collection.library.filepath if collection.library else None
    return getattr(bpy.data, RECORD_BLOCKS[key]).get((value, library))


def find_import(scene: bpy.types.Scene, name: str | None = None) -> BuiltScene:
    """The InvRender import of `scene` that a tool works on: the collection named `name`, else the import whose
    world the scene uses, else the only import, with a warning saying so (BuiltScene.warnings). ValueError with
    what to do when there is none, or several and the scene's world is none of theirs (no guessing which one the
    artist means)."""
    imports = [c for c in scene.collection.children_recursive if IMPORT_KEY in c]
    if name is not None:
        imports = [c for c in imports if c.name == name]
    if not imports:
        raise ValueError("no InvRender import in this scene: import a photo first (InvRender > Photo → Scene)")
    world = scene.world
    warnings = []
    chosen = next((c for c in reversed(imports) if world is not None and record_block(c, "world") == world), None)
    if chosen is None and (name is not None or len(imports) == 1):
        chosen = imports[-1]
        own = record_block(chosen, "world")
        if name is None:
            warnings.append(f"the scene's world ({world.name if world else 'none'}) is not the import's: using "
                            f"{chosen.name!r}, the only import; its lighting shows with the world "
                            f"{own.name if own else '(missing)'!r}")
    elif chosen is None:
        raise ValueError(f"the scene's world ({world.name if world else 'none'}) belongs to none of the InvRender "
                         f"imports ({', '.join(c.name for c in imports)}): set the scene's world to the world of "
                         "the import to use")
    blocks = {key: record_block(chosen, key) for key in ("camera", "mesh", "world", "sun", "background")}
    return BuiltScene(chosen, blocks["camera"], blocks["mesh"], blocks["world"], blocks["sun"], blocks["background"],
                      warnings=warnings)


def require_editable(built: BuiltScene, blocks) -> None:
    """ValueError when one of `blocks` (datablocks of the import `built`, None: skipped) cannot be edited here:
    linked from a library (the edits would be lost on save)."""
    for block in blocks:
        if block is None or (block.library is None and block.is_editable):
            continue
        reference = block.override_library.reference if block.override_library else None
        library = block.library or (reference.library if reference else None)
        where = f"linked from {library.filepath}" if library else "not editable"
        raise ValueError(f"the import {built.collection.name!r} is {where}: relight and add views in that file, or "
                         "make it local (Object > Relations > Make Local, or Library Override)")


def stored_estimate(collection: bpy.types.Collection):
    """The `invrender_core.scene.SceneEstimate` an import was built from, read back from its packed images and
    ID properties (no networks): what `invrender_core.relight.Relighter` needs.

    image, albedo, normals (H, W, 3), depth_fused (H, W), sky (H, W) bool or None, shadow (H, W) or None,
    lighting (9, 3) camera frame, camera. Not stored: the network depth (depth_fused stands in), confidence
    (ones) and shading (NaN). metadata["sun_fraction"]: the import's sun share. ValueError (one line) when the
    import predates the preview or one of its images is gone.
    """
    from invrender_core.camera import Camera
    from invrender_core.scene import DEFAULT_SUN_FRACTION, SceneEstimate

    record = collection[IMPORT_KEY].to_dict()
    missing = [key for key in PREVIEW_KEYS if key not in record or record[key] == ""]  # an older import
    if missing:
        raise ValueError(f"{collection.name!r} does not keep what the 2D preview needs ({', '.join(missing)}): "
                         "import the photo again")
    camera = Camera.from_dict(record["intrinsics"])
    size = (camera.height, camera.width)
    maps = {}
    for key in ("photo", "albedo", "normals", "depth", "shadow"):
        if record.get(key, "") == "":  # no shadow map
            continue
        image = record_block(collection, key)
        if image is None:
            raise ValueError(f"the {key} image of {collection.name!r} is missing: import the photo again")
        maps[key] = image_to_array(image)  # (h, w, 3)
        if maps[key].shape[:2] != size:
            raise ValueError(f"image {image.name!r} is {image.size[0]}x{image.size[1]}, expected {camera.width}x"
                             f"{camera.height} (the import's camera): import the photo again")
    depth_fused = np.ascontiguousarray(maps["depth"][..., 0])  # (H, W)
    return SceneEstimate(
        image=maps["photo"], albedo=maps["albedo"], shading=np.full((*size, 3), np.nan, np.float32),
        normals=2.0 * maps["normals"] - 1.0,  # object-space normal map encoding, as built
        depth=depth_fused, depth_fused=depth_fused, confidence=np.ones(size, np.float32),
        lighting=np.asarray(record["lighting_camera"], np.float64), camera=camera,
        metadata={"source": f"stored import {collection.name!r}",
                  "sun_fraction": record.get("sun_fraction", DEFAULT_SUN_FRACTION)},
        shadow=np.ascontiguousarray(maps["shadow"][..., 0]) if "shadow" in maps else None,
        sky=maps["depth"][..., 1] > 0.5 if record.get("sky") else None)


# Cycles' pixel filter width for renders of an import (pixels; Blender's default is 1.5). The photo's texture lies
# one texel per pixel in the photo's view, and the default filter blurred it: a render of a 640x480 Berlin street
# kept 13 % of the photo's Laplacian variance at 1.5, 25 % at 0.7, 29 % at 0.5 and 33 % at 0.3 (16 samples,
# denoised); narrower filters alias geometry edges in novel views more.
PIXEL_FILTER_WIDTH = 0.5


def set_cycles(scene: bpy.types.Scene, samples: int = 32, denoise: bool = False) -> None:
    """Cycles on the CPU with the plain sRGB view transform, so renders compare with linear maps, and a pixel filter
    that keeps the photo's detail (PIXEL_FILTER_WIDTH); denoise: with OpenImageDenoise (a few tens of samples are
    grainy without it; tests compare undenoised renders)."""
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.filter_width = PIXEL_FILTER_WIDTH
    scene.cycles.use_denoising = denoise
    if denoise:
        scene.cycles.denoiser = "OPENIMAGEDENOISE"
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
