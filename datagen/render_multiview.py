"""Render the synthetic multiview training set (format "invrender-multiview-1", invrender_core/train/data.py).

Reproduce (seeds: scene i uses `--seed + i` = 1000 + i for everything random in it):
    .venv/bin/python datagen/render_multiview.py --out datagen/out/multiview --scenes 420 --views 8 \\
        --width 192 --height 128 --seed 1000 --heldout-fraction 0.1
    .venv/bin/python datagen/render_multiview.py --out datagen/out/multiview_smoke --scenes 3 --views 8 \\
        --width 192 --height 128 --seed 1000 --heldout-fraction 0.1 --preview
Any scene can be regenerated alone (`--start i --end i+1`, same --scenes); the last --heldout-fraction of
the scene indices (at least one) form the "heldout" split. Finished scenes (scene.json present) are
skipped, so a killed run resumes where it stopped; a scene is written into a hidden temporary folder and
renamed when complete, so a killed run leaves no half scene. --start/--end also split a run across
processes.
The shipped weights (invrender_core/data/weights/*.md) were trained on scenes 0-248 of the first command's
set (its run was stopped there to leave the 2 CPU cores to training) and evaluated on its held-out scenes
378-419, rendered separately: the same command with `--start 0 --end 249`, then `--start 378 --end 420`.

Relight pairs (`--second-light`; photo relighting evaluation and training), 60 scenes, 15 held out:
    .venv/bin/python datagen/render_multiview.py --out datagen/out/relight --scenes 60 --views 4 \\
        --width 192 --height 128 --seed 5000 --heldout-fraction 0.25 --category clear --second-light
Every scene then also gets light B, drawn from the scene's rng after everything else (so the other arrays are
those of the same command without the flag): a "clear" sky whose sun elevation is in SUN_ELEVATION_DEG and whose
azimuth is at least RELIGHT_MIN_AZIMUTH_DEG from light A's sun (new cast shadows). Its sky is baked like A's,
which empties Blender's scene, so the scene is rebuilt by replaying its rng (checked: same poses and objects),
lit by B (sky_with_ground, sun lamp of A's angle) and rendered in the "main" and "light" MODES; the geometry
pass is A's. Each view gains the RELIGHT_ARRAYS of train/data.py: relight_image (B's photo with A's exposure
and tone curve: same camera settings), relight_gt_shadow (B's sun visibility), and for each light the sun
direction and RGB irradiance and the sun-less sky SH in the camera frame, times exposure (sun_camera,
sun_irradiance, sky_sh_camera for A; relight_* for B, with relight_sh_camera = sky + sh.directional(sun)).
scene.json's "description" -> "second_light" records B's sky parameters, sun and SH (world frame).

Measured (Blender 4.5 Cycles on this machine's 2 shared CPU cores, one process, 2 threads, 192x128,
8 views per scene, another job using about one core meanwhile): 0.67 s per view overall (about 5 s per
scene: 0.5 s sky, 0.2 s building, 4.3 s renders, the rest writing); 0.45 s per view on an idle machine.
Every scene.json records its own timings ("description" -> "render_seconds").

What a scene is (world frame z up, metres, scene centre at the origin):
- Ground: a grid reaching 1 km (dense near the centre) so that it meets the horizon; flat or gently
  rolling (three long sinusoids, slope below 8 degrees everywhere, so the terrain never shadows anything
  at the sun elevations used, >= 10 degrees). Grass / dirt / paving / asphalt textures with patches.
- Buildings (boxes on the far side of the centre from the cameras) with brick / plaster / stone / siding
  colour textures, darker window rectangles and a roof colour; low walls; props near the centre: crates,
  columns, spheres, barrels/bollards, primitive cars; vegetation: bushes (clusters of blobs), trees
  (trunk + blob crown), conifers (cones). Every object's oriented bounding box is in scene.json
  ("description" -> "objects").
- Materials: Principled BSDF, procedural colour textures (noise, voronoi, checker, wave, brick) into Base
  Color only (no bump: the geometric normal is the shading normal; smooth shading on curved primitives).
  Mostly Lambertian (Specular IOR Level 0, so DiffCol is the whole reflectance); glossy only some car
  bodies and spheres ("glossy": true in "objects"). Albedo within 0.03..0.85.
- Light: Blender's Nishita sky (+ CIE overcast layer) with the categories and ranges of
  datagen/render_skies.py (sun elevation restricted to 10..75 degrees), baked into an equirect image
  (PANO_SIZE) with the sun disc removed, which lights the scene as an Environment Texture, plus a SUN
  lamp (angle 0.5..1 degree: hard shadows) whose RGB irradiance is the Nishita disc as measured by
  render_skies.measure_sun, times the category's sun visibility (weak in "cloudy", none in "overcast").
  The baked image's lower half is the ground's bounce radiance rho * E_horizontal / pi.
- Cameras: V views on an arc around the centre (radius 6.5..10 m, total baseline 2.5..6 m, eye height
  1.5..3 m, horizontal FOV 45..70 degrees), half pitched down (no sky) and half level or up (sky).

Three Cycles renders per view (MODES), all views of a scene in one Blender session with persistent data:
- "main", the photo: 1 px box filter, 8 samples, 3 bounces, OpenImageDenoise. image = sRGB(tone_curve(
  render * exposure)) in 8 bits; exposure: mean luminance (capped at the 98th percentile) -> 0.18, times
  2^U(-0.7, 0.7); `tone_curve` is the identity below TONE_KNEE and an exponential shoulder above it
  (`--no-tone-curve`: clipping only).
- "light": the sun alone (world black), no bounces, the same box filter: DiffCol = gt_albedo and
  DiffDir = visibility * S * c / pi * max(n . l, 0) for a sun of strength S and colour c, so gt_shadow =
  DiffDir / (S * c / pi * n . l) (luminance-weighted) where n . l > SHADOW_MIN_COS, 1 elsewhere (attached
  shadow is E(n)'s job) and on sky. Both are pixel means, like the photo. gt_shadow is sun visibility
  only: in cast shadow the photo still shows the sky's light, which albedo * shadow * E(n) leaves out.
- "geometry": a 0.01 px filter, i.e. every sample on the pixel centre ray of Camera.rays(): Depth (planar;
  1e10 where the ray leaves the scene -> sky_mask) and Normal (world -> camera, flipped to face the
  viewer) = gt_depth, gt_normal.
gt_sh_camera = exposure * rotation(R_world->camera) @ sh_world with sh_world = from_equirect(baked sky) +
directional(sun direction, sun irradiance); it omits what order-2 SH cannot hold (up to 9 % of the
sun's peak), sky occlusion and interreflections other than the ground bounce
(blender_tests/test_render_multiview.py measures the resulting error).
depth_mvs = gt_depth * (1 + sigma (0.6 white + 0.8 smooth noise)), sigma = 1..2 % per scene, 0.3 %
outliers of +-10..30 %; holes (0) on sky, beyond a far limit (40..120 m), at grazing angles (|n . v| <
0.15), in low-texture regions (local contrast of albedo * shading below a per-scene threshold), in a
1..2 px band around depth discontinuities, in random blobs and 1 % speckle.
"""

from __future__ import annotations

import argparse
import colorsys
import contextlib
import importlib.util
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import bpy  # isort: skip  (bmesh can only be imported after bpy)
import bmesh
import numpy as np
from invrender_addon.build.bpy_io import enable_nodes, use_multilayer_exr
from invrender_addon.build.passes import BLENDER_PASS_NAMES
from mathutils import Matrix, Vector
from scipy import ndimage

from invrender_core import sh
from invrender_core.camera import Camera
from invrender_core.geometry import depth_discontinuities
from invrender_core.io import linear_to_srgb, read_exr_channels, read_exr_header, save_preview_sheet
from invrender_core.train.data import write_scene_json, write_view


def _load_sibling(name: str):
    """Import datagen/<name>.py (datagen is a folder of scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_skies = _load_sibling("render_skies")

# Main render: box filter 1 px, 8 samples + OpenImageDenoise (albedo + normal guided, no prefilter). Measured
# against 256 samples on a sunny scene: median pixel error 1.2 %, 90th percentile 7 %, high-pass energy kept
# (ratio 1.03), 0.30 s; 12 samples without denoising: 2.4 % / 26 % in 0.26 s; 32 samples: 1.2 % / 14 % in 0.68 s.
SAMPLES = 8
LIGHT_SAMPLES = 8  # 'light' render: pixel means of albedo and of sun visibility (penumbrae, texture)
MAX_BOUNCES, DIFFUSE_BOUNCES, GLOSSY_BOUNCES = 3, 2, 1
PANO_SIZE = (512, 256)  # baked sky, 0.7 degree pixels
PANO_SAMPLES = 1  # the sky is smooth at 0.7 degree pixels; more samples cost 0.6 s per scene
DISC_MASK_DEG = 1.2  # disc radius 0.27 degrees + a pixel diagonal (0.5 degrees)
SUN_ELEVATION_DEG = (10.0, 75.0)
SUN_ANGLE_DEG = (0.5, 1.0)
TONE_KNEE = 0.7
SHADOW_MIN_COS = 0.05
EXPOSURE_KEY = 0.18
EXPOSURE_JITTER_EV = 0.7
BACKGROUND_DEPTH = 1e9  # Cycles writes 1e10 in the Depth pass where the ray leaves the scene
MAX_TERRAIN_SLOPE = math.tan(math.radians(7.0))
ALBEDO_RANGE = (0.03, 0.85)
RELIGHT_MIN_AZIMUTH_DEG = 60.0  # light B's sun at least this far in azimuth from light A's: new shadows


@contextlib.contextmanager
def _quiet_stdout():
    """Silence Blender's render status lines (written to fd 1 by C code); our progress lines stay."""
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _check(name: str, a, shape: tuple) -> np.ndarray:
    """a as an array whose shape matches `shape` (None = any size there); ValueError naming both shapes."""
    a = np.asarray(a)
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape, strict=False)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    return a


# ------------------------------------------------------------------------------------------------ tone curve


def tone_curve(x, knee: float = TONE_KNEE) -> np.ndarray:
    """Camera-like highlight roll-off on linear values (any shape): x below `knee` unchanged, above it
    knee + (1 - knee) (1 - exp(-(x - knee) / (1 - knee))), which is C1 at the knee and tends to 1."""
    x = np.asarray(x, dtype=np.float32)
    over = np.maximum(x - knee, 0.0) / (1.0 - knee)
    return np.where(x <= knee, x, knee + (1.0 - knee) * (1.0 - np.exp(-over))).astype(np.float32)


def inverse_tone_curve(y, knee: float = TONE_KNEE) -> np.ndarray:
    """Inverse of `tone_curve` for values (any shape) below 1 (1 itself maps to a large finite value)."""
    y = np.asarray(y, dtype=np.float32)
    rest = np.clip((np.maximum(y, knee) - knee) / (1.0 - knee), 0.0, 1.0 - 1e-6)
    return np.where(y <= knee, y, knee - (1.0 - knee) * np.log1p(-rest)).astype(np.float32)


# ---------------------------------------------------------------------------------------- EXR reading


def read_multilayer_exr(path) -> dict[str, np.ndarray]:
    """Passes of a multilayer EXR written by Blender -> {pass: (H, W, C) float32}.

    Channels "ViewLayer.<pass>.<component>" are grouped by pass, under the short names of Blender 4.x ("DiffCol"
    also for 5.0's "Diffuse Color"); components are ordered R, G, B, A or X, Y, Z (a Depth pass is (H, W, 1)).
    Row 0 is the top of the image.
    """
    channels = read_exr_channels(path)
    order = {c: i for i, c in enumerate("RGBAXYZ")}
    short_name = {names[-1]: names[0] for names in BLENDER_PASS_NAMES.values()}
    passes: dict[str, list[str]] = {}
    for n in channels:
        name = n.rsplit(".", 2)[-2]
        passes.setdefault(short_name.get(name, name), []).append(n)
    return {p: np.stack([channels[n] for n in sorted(ch, key=lambda n: order.get(n[-1], 9))], axis=-1)
            .astype(np.float32) for p, ch in passes.items()}


# ------------------------------------------------------------------------------------------ materials


def _colour(rng: np.random.Generator, family: str) -> np.ndarray:
    """A linear RGB albedo (3,) typical of a material family."""
    hue, sat, val = {
        "brick": ((0.0, 0.08), (0.35, 0.7), (0.15, 0.45)),
        "plaster": ((0.0, 1.0), (0.03, 0.3), (0.35, 0.8)),
        "stone": ((0.05, 0.15), (0.0, 0.2), (0.2, 0.6)),
        "roof": ((0.0, 0.08), (0.0, 0.6), (0.06, 0.3)),
        "grass": ((0.18, 0.32), (0.4, 0.75), (0.08, 0.3)),
        "dirt": ((0.05, 0.11), (0.25, 0.6), (0.12, 0.4)),
        "asphalt": ((0.0, 1.0), (0.0, 0.08), (0.05, 0.18)),
        "paving": ((0.0, 0.12), (0.0, 0.25), (0.2, 0.55)),
        "paint": ((0.0, 1.0), (0.3, 0.9), (0.1, 0.7)),
        "foliage": ((0.17, 0.36), (0.35, 0.8), (0.05, 0.3)),
        "wood": ((0.05, 0.1), (0.35, 0.7), (0.1, 0.4)),
        "glass": ((0.5, 0.65), (0.1, 0.4), (0.04, 0.1)),
        "dark": ((0.0, 1.0), (0.0, 0.1), (0.03, 0.06)),
    }[family]
    rgb = np.array(colorsys.hsv_to_rgb(rng.uniform(*hue), rng.uniform(*sat), rng.uniform(*val)))
    return np.clip(rgb, *ALBEDO_RANGE)


def _vary(rng, c, amount):
    return np.clip(c * (1.0 + rng.uniform(-amount, amount, 3)), *ALBEDO_RANGE)


class _Shader:
    """Builds one Principled material: colour textures on metric UVs into Base Color."""

    def __init__(self, name: str, roughness: float = 0.9, specular: float = 0.0):
        self.mat = bpy.data.materials.new(name)
        enable_nodes(self.mat)
        self.nt = self.mat.node_tree
        self.bsdf = self.nt.nodes["Principled BSDF"]
        self.bsdf.inputs["Roughness"].default_value = roughness
        self.bsdf.inputs["Specular IOR Level"].default_value = specular
        self.uv = self.nt.nodes.new("ShaderNodeTexCoord").outputs["UV"]
        self.mean = np.full(3, 0.5)  # estimated mean albedo of the texture
        self.glossy = specular > 0.2

    def node(self, kind: str, **inputs):
        n = self.nt.nodes.new(kind)
        for key, value in inputs.items():
            sock = n.inputs[key]
            if hasattr(value, "is_output"):  # a socket: link it
                self.nt.links.new(value, sock)
            elif sock.type == "RGBA":
                sock.default_value = (*value, 1.0)
            else:
                sock.default_value = value
        return n

    def offset_uv(self, rng):
        add = self.node("ShaderNodeVectorMath")
        add.operation = "ADD"
        self.nt.links.new(self.uv, add.inputs[0])
        add.inputs[1].default_value = (*rng.uniform(-50.0, 50.0, 2), 0.0)
        return add.outputs["Vector"]

    def mix(self, factor, a, b):
        n = self.nt.nodes.new("ShaderNodeMix")
        n.data_type = "RGBA"
        for sock, value in ((n.inputs[0], factor), (n.inputs[6], a), (n.inputs[7], b)):
            if hasattr(value, "is_output"):
                self.nt.links.new(value, sock)
            elif sock.type == "RGBA":
                sock.default_value = (*value, 1.0)
            else:
                sock.default_value = value
        return n.outputs[2]

    def contrast(self, fac, lo: float, hi: float):
        return self.node("ShaderNodeMapRange", Value=fac, **{"From Min": lo, "From Max": hi}).outputs["Result"]

    def finish(self, colour_socket_or_rgb):
        if hasattr(colour_socket_or_rgb, "is_output"):
            self.nt.links.new(colour_socket_or_rgb, self.bsdf.inputs["Base Color"])
        else:
            self.bsdf.inputs["Base Color"].default_value = (*colour_socket_or_rgb, 1.0)
        return self


def texture(rng, sh_: _Shader, kind: str, c1, c2, size: float):
    """Colour socket of a procedural texture mixing c1 and c2, features about `size` metres."""
    uv = sh_.offset_uv(rng)
    c1, c2 = np.asarray(c1), np.asarray(c2)
    sh_.mean = 0.5 * (c1 + c2)
    if kind == "noise":
        n = sh_.node("ShaderNodeTexNoise", Vector=uv, Scale=1.0 / size, Detail=float(rng.uniform(1, 3)),
                     Roughness=float(rng.uniform(0.4, 0.7)))
        return sh_.mix(sh_.contrast(n.outputs["Fac"], 0.3, 0.7), c1, c2)
    if kind == "checker":
        return sh_.node("ShaderNodeTexChecker", Vector=uv, Color1=c1, Color2=c2, Scale=0.5 / size).outputs["Color"]
    if kind == "voronoi":
        v = sh_.node("ShaderNodeTexVoronoi", Vector=uv, Scale=1.0 / size)
        sep = sh_.node("ShaderNodeSeparateColor", Color=v.outputs["Color"])
        return sh_.mix(sep.outputs[0], c1, c2)
    if kind == "wave":
        w = sh_.node("ShaderNodeTexWave", Vector=uv, Scale=1.0 / size, Distortion=float(rng.uniform(0, 4)),
                     Detail=2.0)
        return sh_.mix(sh_.contrast(w.outputs["Fac"], 0.2, 0.8), c1, c2)
    if kind == "brick":
        mortar = _vary(rng, _colour(rng, "plaster") * 0.8, 0.1)
        bw = size * rng.uniform(1.5, 3.0)
        b = sh_.node("ShaderNodeTexBrick", Vector=uv, Color1=c1, Color2=c2, Mortar=mortar, Scale=1.0,
                     **{"Mortar Size": bw * rng.uniform(0.03, 0.08), "Brick Width": bw, "Row Height": size,
                        "Bias": float(rng.uniform(-0.3, 0.3))})
        sh_.mean = 0.85 * sh_.mean + 0.15 * mortar
        return b.outputs["Color"]
    raise ValueError(f"unknown texture kind {kind!r}")


def textured(rng, name: str, family: str, kinds=("noise", "voronoi", "checker", "wave"),
             size=(0.1, 0.6), contrast=(0.1, 0.35), roughness=(0.7, 1.0), specular=0.0) -> _Shader:
    """A material of a colour family with one random procedural texture."""
    sh_ = _Shader(name, float(rng.uniform(*roughness)), specular)
    c = _colour(rng, family)
    k = float(rng.uniform(*contrast))
    colour = texture(rng, sh_, str(rng.choice(kinds)), _vary(rng, c * (1 - k), 0.05), _vary(rng, c * (1 + k), 0.05),
                     float(rng.uniform(*size)))
    return sh_.finish(colour)


def facade(rng, name: str) -> _Shader:
    """Building wall: brick / plaster / stone / siding colours, with darker window rectangles (70 %)."""
    style = str(rng.choice(["brick", "plaster", "stone", "siding"]))
    sh_ = _Shader(name, float(rng.uniform(0.75, 1.0)))
    if style == "brick":
        c = _colour(rng, "brick")
        wall = texture(rng, sh_, "brick", _vary(rng, c, 0.15), _vary(rng, c, 0.15), float(rng.uniform(0.08, 0.25)))
    elif style == "plaster":
        c = _colour(rng, "plaster")
        wall = texture(rng, sh_, "noise", _vary(rng, c * 0.9, 0.03), _vary(rng, c * 1.08, 0.03),
                       float(rng.uniform(0.2, 2.0)))
    elif style == "stone":
        c = _colour(rng, "stone")
        wall = texture(rng, sh_, str(rng.choice(["voronoi", "brick"])), _vary(rng, c * 0.8, 0.1),
                       _vary(rng, c * 1.2, 0.1), float(rng.uniform(0.25, 0.6)))
    else:
        c = _colour(rng, str(rng.choice(["paint", "wood", "plaster"])))
        wall = texture(rng, sh_, "wave", _vary(rng, c * 0.85, 0.05), _vary(rng, c * 1.1, 0.05),
                       float(rng.uniform(0.1, 0.3)))
    if rng.random() < 0.7:
        mortar = float(rng.uniform(0.4, 0.8))  # wall margin around each window, both sides
        glass = _colour(rng, "glass")
        b = sh_.node("ShaderNodeTexBrick", Vector=sh_.offset_uv(rng), Color1=glass, Color2=_vary(rng, glass, 0.3),
                     Mortar=wall, Scale=1.0, **{"Mortar Size": mortar,
                                                "Brick Width": 2 * mortar + float(rng.uniform(0.7, 1.8)),
                                                "Row Height": 2 * mortar + float(rng.uniform(1.0, 1.8))})
        b.offset = 0.0  # aligned columns of windows
        wall = b.outputs["Color"]
        sh_.mean = 0.75 * sh_.mean + 0.25 * glass
    return sh_.finish(wall)


def ground_material(rng) -> _Shader:
    """Ground: a base texture with large patches of a second one."""
    kinds = {"grass": ("noise", (0.05, 0.3)), "dirt": ("noise", (0.05, 0.5)), "asphalt": ("noise", (0.05, 0.3)),
             "paving": (str(rng.choice(["checker", "brick", "voronoi"])), (0.25, 0.8))}
    fam_a, fam_b = rng.choice(list(kinds), size=2)
    sh_ = _Shader("ground", float(rng.uniform(0.8, 1.0)))
    colours, means = [], []
    for fam in (fam_a, fam_b):
        c = _colour(rng, str(fam))
        kind, size = kinds[str(fam)]
        colours.append(texture(rng, sh_, kind, _vary(rng, c * 0.8, 0.05), _vary(rng, c * 1.2, 0.05),
                               float(rng.uniform(*size))))
        means.append(sh_.mean)
    patches = sh_.node("ShaderNodeTexNoise", Vector=sh_.offset_uv(rng), Scale=float(rng.uniform(0.03, 0.15)),
                       Detail=2.0)
    lo = float(rng.uniform(0.45, 0.6))
    sh_.mean = np.mean(means, axis=0)
    return sh_.finish(sh_.mix(sh_.contrast(patches.outputs["Fac"], lo, lo + 0.04), colours[0], colours[1]))


# --------------------------------------------------------------------------------------------- geometry


def _box_uv(bm) -> None:
    """Metric box-projection UVs: each face maps its two non-dominant axes (walls: (horizontal, z))."""
    uv_layer = bm.loops.layers.uv.verify()
    for face in bm.faces:
        n = face.normal
        axis = max(range(3), key=lambda a: abs(n[a]))
        a, b = {0: (1, 2), 1: (0, 2), 2: (0, 1)}[axis]
        for loop in face.loops:
            loop[uv_layer].uv = (loop.vert.co[a], loop.vert.co[b])


class SceneBuilder:
    """Adds objects to the scene and records an oriented bounding box of each (for tests and metadata)."""

    def __init__(self, scene, rng, height_fn):
        self.scene, self.rng, self.height = scene, rng, height_fn
        self.records: list[dict] = []

    def add(self, name: str, bm, materials: list[_Shader], location, yaw: float, kind: str, smooth=False):
        bm.normal_update()
        _box_uv(bm)
        if smooth:
            for f in bm.faces:
                f.smooth = abs(f.normal.z) < 0.99 or smooth == "all"
        mesh = bpy.data.meshes.new(name)
        bm.to_mesh(mesh)
        lo = np.min([v.co for v in bm.verts], axis=0)
        hi = np.max([v.co for v in bm.verts], axis=0)
        bm.free()
        for m in materials:
            mesh.materials.append(m.mat)
        obj = bpy.data.objects.new(name, mesh)
        obj.location = location
        obj.rotation_euler = (0.0, 0.0, yaw)
        self.scene.collection.objects.link(obj)
        c, s = math.cos(yaw), math.sin(yaw)
        centre_local = 0.5 * (lo + hi)
        centre = np.asarray(location) + np.array([c * centre_local[0] - s * centre_local[1],
                                                  s * centre_local[0] + c * centre_local[1], centre_local[2]])
        self.records.append({"name": name, "kind": kind, "centre": centre.round(4).tolist(),
                             "half_size": (0.5 * (hi - lo)).round(4).tolist(), "yaw": round(yaw, 6),
                             "glossy": any(m.glossy for m in materials)})
        return obj

    def ground_z(self, x, y, footprint: float = 0.0) -> float:
        """Lowest terrain height within `footprint` metres of (x, y), so bases never float."""
        pts = [(x, y)] + [(x + footprint * math.cos(a), y + footprint * math.sin(a))
                          for a in np.linspace(0, 2 * math.pi, 8, endpoint=False)]
        return min(float(self.height(np.array(px), np.array(py))) for px, py in pts)


def _cube(bm, size, centre=(0.0, 0.0, 0.0), material: int = 0):
    mat = Matrix.Translation(Vector(centre)) @ Matrix.Diagonal((*size, 1.0))
    geom = bmesh.ops.create_cube(bm, size=1.0, matrix=mat)
    for f in {f for v in geom["verts"] for f in v.link_faces}:
        f.material_index = material
    return geom


def _cylinder(bm, radius, depth, centre, segments=32, radius2=None, material=0, axis="z"):
    rot = {"z": Matrix.Identity(4), "y": Matrix.Rotation(math.pi / 2, 4, "X"),
           "x": Matrix.Rotation(math.pi / 2, 4, "Y")}[axis]
    geom = bmesh.ops.create_cone(bm, cap_ends=True, cap_tris=False, segments=segments, radius1=radius,
                                 radius2=radius if radius2 is None else radius2, depth=depth,
                                 matrix=Matrix.Translation(Vector(centre)) @ rot)
    for f in {f for v in geom["verts"] for f in v.link_faces}:
        f.material_index = material
    return geom


def _blob(bm, radius, centre, material=0, subdivisions=3):
    geom = bmesh.ops.create_icosphere(bm, subdivisions=subdivisions, radius=radius,
                                      matrix=Matrix.Translation(Vector(centre)))
    for f in {f for v in geom["verts"] for f in v.link_faces}:
        f.material_index = material
    return geom


def terrain(scene, rng, material: _Shader):
    """Ground grid to 1 km and its height function h(x, y) (arrays -> array)."""
    flat = rng.random() < 0.4
    waves = []
    if not flat:
        budget = MAX_TERRAIN_SLOPE * rng.uniform(0.3, 1.0)
        for _ in range(3):
            lam = rng.uniform(15.0, 40.0)
            amp = budget / 3.0 * lam / (2.0 * math.pi)  # slope contribution 2 pi A / lambda
            theta, phase = rng.uniform(0, 2 * math.pi, 2)
            waves.append((amp, 2 * math.pi / lam * math.cos(theta), 2 * math.pi / lam * math.sin(theta), phase))

    def height(x, y):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        z = np.zeros(np.broadcast(x, y).shape)
        for amp, kx, ky, ph in waves:
            z += amp * np.sin(kx * x + ky * y + ph)
        r = np.hypot(x, y)
        taper = np.clip((80.0 - r) / 50.0, 0.0, 1.0)  # 1 inside 30 m, 0 beyond 80 m: adds < 0.5 degree of slope
        return z * (taper * taper * (3 - 2 * taper))

    t = np.linspace(-1.0, 1.0, 121)
    s = 30.0 * t + 970.0 * t**7  # 0.5 m spacing at the centre, 1 km at the edge
    X, Y = np.meshgrid(s, s)
    Z = height(X, Y)
    verts = np.stack([X, Y, Z], axis=-1).reshape(-1, 3)
    n = len(s)
    i, j = np.meshgrid(np.arange(n - 1), np.arange(n - 1), indexing="ij")
    q = i * n + j
    faces = np.stack([q, q + 1, q + n + 1, q + n], axis=-1).reshape(-1, 4)
    mesh = bpy.data.meshes.new("ground")
    mesh.from_pydata(verts.tolist(), [], faces.tolist())
    uv = mesh.uv_layers.new(name="UVMap")
    loop_verts = np.empty(len(mesh.loops), dtype=np.int64)
    mesh.loops.foreach_get("vertex_index", loop_verts)
    uv.data.foreach_set("uv", verts[loop_verts, :2].astype(np.float32).ravel())
    if not flat:
        mesh.shade_smooth()
    mesh.materials.append(material.mat)
    obj = bpy.data.objects.new("ground", mesh)
    scene.collection.objects.link(obj)
    return height, {"flat": flat, "waves": [[round(float(v), 5) for v in w] for w in waves]}


def _clear_of(points, x, y, radius, margin):
    return all(math.hypot(x - px, y - py) > radius + margin for px, py in points)


def populate(b: SceneBuilder, rng, cam_xy: list, away_azimuth: float) -> None:
    """Buildings, walls, props and vegetation around the centre, clear of the cameras."""
    taken: list[tuple[float, float, float]] = []  # (x, y, radius) of placed footprints

    def free(x, y, r, cam_margin):
        return _clear_of(cam_xy, x, y, r, cam_margin) and all(math.hypot(x - a, y - c) > r + rr for a, c, rr in taken)

    # Buildings on the far side of the centre, facing it.
    for k in range(int(rng.integers(2, 7))):
        for _ in range(30):
            az = away_azimuth + rng.uniform(-1.5, 1.5)
            d = rng.uniform(10.0, 22.0)
            w, dep, hgt = rng.uniform(5, 14), rng.uniform(4, 10), rng.uniform(3, 15)
            x, y = d * math.cos(az), d * math.sin(az)
            r = 0.5 * math.hypot(w, dep)
            if free(x, y, r, 2.5) and math.hypot(x, y) - r > 5.5:
                break
        else:
            continue
        taken.append((x, y, r))
        bm = bmesh.new()
        _cube(bm, (w, dep, hgt + 0.3), (0, 0, hgt / 2 - 0.15))
        bm.normal_update()
        for f in bm.faces:  # roof faces get the roof material
            f.material_index = 1 if f.normal.z > 0.5 else 0
        roof = textured(rng, f"roof{k}", "roof", kinds=("noise", "checker"), size=(0.2, 0.6))
        b.add(f"building{k}", bm, [facade(rng, f"facade{k}"), roof], (x, y, b.ground_z(x, y, r)),
              az + math.pi / 2 + rng.uniform(-0.3, 0.3), "building")

    # Low walls.
    for k in range(int(rng.integers(0, 4))):
        length, hgt, thick = rng.uniform(2, 7), rng.uniform(0.6, 2.0), rng.uniform(0.25, 0.4)
        for _ in range(30):
            d, az = rng.uniform(3, 9), rng.uniform(0, 2 * math.pi)
            x, y = d * math.cos(az), d * math.sin(az)
            if free(x, y, length / 2, 1.5):
                break
        else:
            continue
        taken.append((x, y, length / 2))
        bm = bmesh.new()
        _cube(bm, (length, thick, hgt + 0.2), (0, 0, hgt / 2 - 0.1))
        fam = str(rng.choice(["stone", "brick", "plaster"]))
        mat = textured(rng, f"wall{k}", fam, kinds=("brick", "voronoi", "noise"), size=(0.1, 0.4))
        b.add(f"wall{k}", bm, [mat], (x, y, b.ground_z(x, y, length / 2)), rng.uniform(0, math.pi), "wall")

    # Props and vegetation near the centre.
    kinds = ["crate", "column", "sphere", "barrel", "car", "bush", "tree", "conifer"]
    weights = np.array([3, 2, 2, 2, 1, 3, 1.5, 1.5])
    for k in range(int(rng.integers(5, 13))):
        kind = str(rng.choice(kinds, p=weights / weights.sum()))
        radius = {"car": 2.3, "tree": 2.0, "bush": 1.6, "conifer": 1.2}.get(kind, 0.8)
        for _ in range(30):
            d, az = rng.uniform(0, 6.0), rng.uniform(0, 2 * math.pi)
            x, y = d * math.cos(az), d * math.sin(az)
            if free(x, y, radius, 2.5):  # no prop fills a view from up close
                break
        else:
            continue
        taken.append((x, y, radius * 0.7))
        z = b.ground_z(x, y, radius * 0.7)
        yaw = float(rng.uniform(0, 2 * math.pi))
        name = f"{kind}{k}"
        bm = bmesh.new()
        if kind == "crate":
            s = rng.uniform(0.4, 1.5, 3)
            s[2] = min(s[2], 1.2)
            _cube(bm, (s[0], s[1], s[2] + 0.1), (0, 0, s[2] / 2 - 0.05))
            mat = textured(rng, name, str(rng.choice(["wood", "paint", "stone"])), size=(0.05, 0.3))
            b.add(name, bm, [mat], (x, y, z), yaw, "box")
        elif kind == "column":
            r, h = rng.uniform(0.15, 0.4), rng.uniform(1.5, 4.0)
            _cylinder(bm, r, h + 0.1, (0, 0, h / 2 - 0.05))
            if rng.random() < 0.5:
                _cube(bm, (3 * r, 3 * r, 0.3), (0, 0, 0.1))
            mat = textured(rng, name, str(rng.choice(["stone", "plaster", "paint"])), kinds=("noise", "voronoi"))
            b.add(name, bm, [mat], (x, y, z), yaw, "column", smooth=True)
        elif kind == "sphere":
            r = rng.uniform(0.25, 0.9)
            bmesh.ops.create_uvsphere(bm, u_segments=48, v_segments=24, radius=r,
                                      matrix=Matrix.Translation(Vector((0, 0, r - 0.03))))
            glossy = rng.random() < 0.3
            mat = textured(rng, name, str(rng.choice(["paint", "stone", "plaster"])), kinds=("noise", "checker"),
                           roughness=(0.15, 0.4) if glossy else (0.7, 1.0), specular=0.5 if glossy else 0.0)
            b.add(name, bm, [mat], (x, y, z), yaw, "sphere", smooth="all")
        elif kind == "barrel":
            r, h = rng.uniform(0.2, 0.6), rng.uniform(0.4, 1.2)
            _cylinder(bm, r, h + 0.1, (0, 0, h / 2 - 0.05))
            mat = textured(rng, name, str(rng.choice(["paint", "wood", "stone"])), kinds=("noise", "wave"))
            b.add(name, bm, [mat], (x, y, z), yaw, "cylinder", smooth=True)
        elif kind == "car":
            L, W = rng.uniform(3.5, 4.8), rng.uniform(1.6, 1.9)
            _cube(bm, (L, W, 0.7), (0, 0, 0.75), material=0)
            _cube(bm, (L * rng.uniform(0.45, 0.6), W * 0.9, 0.55), (-0.1 * L, 0, 1.37), material=1)
            for sx in (-0.32 * L, 0.32 * L):
                for sy in (-W / 2 + 0.12, W / 2 - 0.12):
                    _cylinder(bm, 0.33, 0.24, (sx, sy, 0.33), segments=24, material=2, axis="y")
            glossy = rng.random() < 0.5
            body = textured(rng, name, "paint", kinds=("noise",), contrast=(0.02, 0.08),
                            roughness=(0.2, 0.4) if glossy else (0.6, 0.9), specular=0.5 if glossy else 0.0)
            glass = _Shader(name + "_glass", 0.6).finish(_colour(rng, "glass"))
            tyre = _Shader(name + "_tyre", 0.9).finish(_colour(rng, "dark"))
            b.add(name, bm, [body, glass, tyre], (x, y, z), yaw, "car", smooth=True)
        elif kind == "bush":
            for _ in range(int(rng.integers(4, 14))):
                r = rng.uniform(0.2, 0.55)
                c = rng.normal(0, 0.45, 3) * (1, 1, 0.4)
                _blob(bm, r, (c[0], c[1], r * 0.8 + abs(c[2])))
            mat = textured(rng, name, "foliage", kinds=("noise", "voronoi"), size=(0.03, 0.15), contrast=(0.2, 0.45))
            b.add(name, bm, [mat], (x, y, z), yaw, "vegetation", smooth="all")
        elif kind == "tree":
            h = rng.uniform(2.0, 4.0)
            _cylinder(bm, rng.uniform(0.08, 0.2), h + 0.1, (0, 0, h / 2 - 0.05), segments=16, material=1)
            crown = rng.uniform(0.8, 1.6)
            for _ in range(int(rng.integers(6, 16))):
                r = rng.uniform(0.3, 0.7) * crown
                c = rng.normal(0, 0.5 * crown, 3)
                _blob(bm, r, (c[0], c[1], h + 0.5 * crown + 0.6 * c[2]))
            leaves = textured(rng, name, "foliage", kinds=("noise", "voronoi"), size=(0.03, 0.15),
                              contrast=(0.2, 0.45))
            trunk = textured(rng, name + "_trunk", "wood", kinds=("wave", "noise"))
            b.add(name, bm, [leaves, trunk], (x, y, z), yaw, "vegetation", smooth="all")
        else:  # conifer
            h, r = rng.uniform(1.5, 4.5), rng.uniform(0.5, 1.2)
            _cylinder(bm, r, h, (0, 0, h / 2 + 0.3), segments=24, radius2=0.0)
            _cylinder(bm, 0.1, 0.5, (0, 0, 0.2), segments=12, material=1)
            leaves = textured(rng, name, "foliage", kinds=("noise",), size=(0.03, 0.1), contrast=(0.2, 0.45))
            trunk = textured(rng, name + "_trunk", "wood", kinds=("noise",))
            b.add(name, bm, [leaves, trunk], (x, y, z), yaw, "vegetation", smooth=True)


# ------------------------------------------------------------------------------------------------ sky


def sample_sky(rng, category: str | None) -> dict:
    """Sky parameters: render_skies' categories and ranges, sun elevation within SUN_ELEVATION_DEG."""
    cats = list(render_skies.CATEGORY_FRACTIONS)
    if category is None:
        p = np.array([render_skies.CATEGORY_FRACTIONS[c] for c in cats])
        category = str(rng.choice(cats, p=p / p.sum()))
    params = render_skies.sample_sky(rng, category)
    if "sun_elevation_deg" in params:
        params["sun_elevation_deg"] = float(rng.uniform(*SUN_ELEVATION_DEG))
    return params


def remove_sun_disc(pano: np.ndarray, direction) -> np.ndarray:
    """Copy of an equirect pano (H, W, 3) with the pixels within DISC_MASK_DEG of the sun direction (3,)
    replaced by the median of the ring out to twice that angle (the disc-free sky there)."""
    h, w, _ = _check("pano", pano, (None, None, 3)).shape
    _check("direction", direction, (3,))
    cos_angle = sh._equirect_directions(w, h) @ np.asarray(direction, dtype=np.float64)  # (H, W)
    inner = cos_angle > math.cos(math.radians(DISC_MASK_DEG))
    ring = (cos_angle > math.cos(math.radians(2.0 * DISC_MASK_DEG))) & ~inner
    out = pano.copy()
    if inner.any():
        if not ring.any():
            raise ValueError(f"pano {w}x{h} is too coarse to tell the sun disc from the sky around it")
        out[inner] = np.median(pano[ring], axis=0)
    return out


def bake_sky(params: dict, tmp: Path, threads: int):
    """Render the sky into an equirect image (sun disc removed) and measure the sun disc.

    Returns (pano (PANO_H, PANO_W, 3) float32 world-frame radiance, sun direction (3,) or None, sun
    irradiance RGB (3,) at normal incidence times the category's visibility, or None). The pano is rendered
    WITH the disc and the disc's pixels are then replaced (`remove_sun_disc`): Cycles takes 1.4 s for a
    Nishita render without the disc and 0.35 s with it (Blender 4.5, any resolution).
    """
    rig = render_skies.setup_scene(PANO_SIZE[0], PANO_SIZE[1], PANO_SAMPLES)
    scene = rig["scene"]
    scene.render.threads = threads
    render_skies.apply_sky(rig, params)
    rig["sky"].sun_disc = True
    scene.camera = rig["pano"]
    scene.render.resolution_x, scene.render.resolution_y = PANO_SIZE
    with _quiet_stdout():
        pano = render_skies.render_to_array(scene, tmp / "pano.exr")
    direction = irradiance = None
    if "sun_rotation_deg" in params:
        sky_sun = render_skies.sun_direction(math.radians(params["sun_elevation_deg"]),
                                             math.radians(params["sun_rotation_deg"]))
        pano = remove_sun_disc(pano, sky_sun)
        if params.get("sun_visibility", 1.0) > 0:
            direction = sky_sun
            with _quiet_stdout():
                disc = render_skies.measure_sun(rig, direction, tmp / "sun.exr")
            irradiance = params.get("sun_visibility", 1.0) * disc
    return pano, direction, irradiance


def sky_with_ground(pano: np.ndarray, sun_direction, sun_irradiance, ground_albedo) -> np.ndarray:
    """Copy of the equirect pano (H, W, 3) whose lower half is the ground's Lambertian bounce radiance
    rho * (E_sky + E_sun) / pi on a horizontal plane; ground_albedo (3,)."""
    h, w, _ = _check("pano", pano, (None, None, 3)).shape
    _check("ground_albedo", ground_albedo, (3,))
    img = pano.astype(np.float64).copy()
    theta = math.pi * (np.arange(h) + 0.5) / h
    dw = sh._equirect_solid_angles(w, h)  # (H, 1)
    up = slice(0, h // 2)
    e_h = (img[up] * (np.cos(theta[up])[:, None, None] * dw[up, :, None])).sum(axis=(0, 1))
    if sun_direction is not None:
        e_h = e_h + np.asarray(sun_irradiance) * max(float(sun_direction[2]), 0.0)
    img[h // 2:] = np.asarray(ground_albedo) * e_h / math.pi
    return img.astype(np.float32)


def environment_world(pano: np.ndarray):
    """World lit by an equirect radiance image (H, W, 3) (Blender's mapping; row 0 = +z)."""
    h, w, _ = pano.shape
    rgba = np.ones((h, w, 4), np.float32)
    rgba[..., :3] = pano[::-1]  # Blender images are stored bottom-up
    img = bpy.data.images.new("sky", w, h, alpha=False, float_buffer=True)
    img.colorspace_settings.name = "Linear Rec.709"
    img.pixels.foreach_set(rgba.ravel())
    world = bpy.data.worlds.new("env")
    enable_nodes(world)
    # Not a light for next-event estimation: Cycles picks one light per shading point, so a sampled world
    # would leave the sun out of about half the samples (30 % noise at 12 samples). The disc-less sky is
    # smooth, so the BSDF-sampled rays that reach it light diffuse surfaces with little noise.
    world.cycles.sampling_method = "NONE"
    nodes = world.node_tree.nodes
    env = nodes.new("ShaderNodeTexEnvironment")
    env.image = img
    env.interpolation = "Linear"
    background = nodes["Background"]
    world.node_tree.links.new(env.outputs["Color"], background.inputs["Color"])
    return world, background


# --------------------------------------------------------------------------------------------- cameras


def camera_poses(rng, views: int, height_fn) -> tuple[list[dict], float]:
    """Views on an arc facing the centre; half pitched down, half level or up. Returns (poses, arc azimuth)."""
    radius = rng.uniform(6.5, 10.0)
    baseline = rng.uniform(2.5, 6.0)
    azimuth = rng.uniform(0, 2 * math.pi)
    span = baseline / radius
    fov = rng.uniform(45.0, 70.0)
    modes = np.array([i % 2 for i in range(views)])
    rng.shuffle(modes)
    poses = []
    for k in range(views):
        a = azimuth + span * ((k / max(views - 1, 1)) - 0.5) + rng.uniform(-0.02, 0.02)
        r = radius + rng.uniform(-0.5, 0.5)
        x, y = r * math.cos(a), r * math.sin(a)
        z = float(height_fn(x, y)) + rng.uniform(1.5, 3.0)
        yaw = math.atan2(-y, -x) + math.radians(rng.uniform(-10, 10))
        pitch = math.radians(rng.uniform(-25, -8) if modes[k] == 0 else rng.uniform(-5, 10))
        roll = math.radians(rng.uniform(-2, 2))
        poses.append({"location": (x, y, z), "yaw": yaw, "pitch": pitch, "roll": roll,
                      "fov_deg": float(np.clip(fov + rng.uniform(-3, 3), 45.0, 70.0))})
    return poses, azimuth


def pose_matrix(pose: dict) -> Matrix:
    """Camera-to-world matrix: looks along (yaw, pitch), rolled about its viewing axis."""
    d = Vector((math.cos(pose["pitch"]) * math.cos(pose["yaw"]), math.cos(pose["pitch"]) * math.sin(pose["yaw"]),
                math.sin(pose["pitch"])))
    rot = d.to_track_quat("-Z", "Y").to_matrix() @ Matrix.Rotation(pose["roll"], 3, "Z")
    return Matrix.Translation(Vector(pose["location"])) @ rot.to_4x4()


# ------------------------------------------------------------------------------------- per-view arrays


def sun_shadow(diffdir, normal_world, sky, sun_direction, sun_irradiance) -> np.ndarray:
    """Sun visibility (H, W) float32 from a sun-only, no-bounce DiffDir pass (H, W, 3) and world normals.

    DiffDir = visibility * irradiance / pi * max(n . l, 0); visibility = luminance ratio where
    n . l > SHADOW_MIN_COS, 1 elsewhere and on sky (sky (H, W) bool).
    """
    h, w = _check("sky", sky, (None, None)).shape
    _check("diffdir", diffdir, (h, w, 3))
    _check("normal_world", normal_world, (h, w, 3))
    if sun_direction is None:
        return np.ones(sky.shape, np.float32)
    ndl = normal_world @ np.asarray(sun_direction, dtype=np.float32)  # (H, W)
    expected = float(np.asarray(sun_irradiance) @ sh.LUMINANCE) / math.pi * ndl
    lit = (ndl > SHADOW_MIN_COS) & ~sky
    vis = np.ones(sky.shape, np.float32)
    vis[lit] = np.clip((diffdir[lit] @ sh.LUMINANCE.astype(np.float32)) / expected[lit], 0.0, 1.0)
    return vis


def auto_exposure(render: np.ndarray, rng) -> float:
    """Exposure for a linear render (H, W, 3): mean luminance (capped at the 98th percentile) -> EXPOSURE_KEY,
    times 2^U(-EXPOSURE_JITTER_EV, EXPOSURE_JITTER_EV)."""
    lum = _check("render", render, (None, None, 3)) @ sh.LUMINANCE.astype(np.float32)
    mean = float(np.mean(np.minimum(lum, np.quantile(lum, 0.98))))
    return EXPOSURE_KEY / max(mean, 1e-8) * 2.0 ** rng.uniform(-EXPOSURE_JITTER_EV, EXPOSURE_JITTER_EV)


def encode_photo(linear: np.ndarray, use_tone_curve: bool) -> np.ndarray:
    """Exposed linear (H, W, 3) -> uint8 sRGB (H, W, 3) through the tone curve (or plain clipping)."""
    _check("linear", linear, (None, None, 3))
    toned = tone_curve(np.maximum(linear, 0.0)) if use_tone_curve else linear
    return np.floor(linear_to_srgb(np.clip(toned, 0.0, 1.0)) * 255.0 + 0.5).astype(np.uint8)


def mvs_depth(gt_depth, sky, normal_cam, rays, texture_lum, rng, p: dict) -> np.ndarray:
    """Depth (H, W) as MVS gives it: multiplicative noise, outliers and holes (0).

    gt_depth (H, W) (0 on sky), sky (H, W) bool, normal_cam and rays (H, W, 3) camera frame, texture_lum
    (H, W) noise-free image luminance; p: sigma, far_limit, texture_threshold, band_px (module docstring).
    """
    h, w = _check("gt_depth", gt_depth, (None, None)).shape
    for name, a, shape in (("sky", sky, (h, w)), ("normal_cam", normal_cam, (h, w, 3)), ("rays", rays, (h, w, 3)),
                           ("texture_lum", texture_lum, (h, w))):
        _check(name, a, shape)
    scale = w / 192.0  # sizes below are in pixels of a 192-wide image
    white = rng.standard_normal((h, w))
    smooth = ndimage.gaussian_filter(rng.standard_normal((h, w)), 4.0 * scale)
    smooth /= max(float(smooth.std()), 1e-8)
    d = gt_depth * (1.0 + p["sigma"] * (0.6 * white + 0.8 * smooth))
    outlier = rng.random((h, w)) < 0.003
    d[outlier] *= 1.0 + rng.choice([-1.0, 1.0], outlier.sum()) * rng.uniform(0.1, 0.3, outlier.sum())
    hole = sky | (gt_depth > p["far_limit"])
    view = rays / np.linalg.norm(rays, axis=-1, keepdims=True)
    hole |= np.abs((normal_cam * view).sum(-1)) < 0.15
    # Low texture: local contrast std / mean of albedo * shadow luminance in a 5 px window.
    m = ndimage.uniform_filter(texture_lum, 5)
    m2 = ndimage.uniform_filter(texture_lum**2, 5)
    contrast = np.sqrt(np.maximum(m2 - m * m, 0.0)) / np.maximum(m, 1e-4)
    hole |= contrast < p["texture_threshold"]
    band = depth_discontinuities(np.where(sky, 0.0, gt_depth), 0.05)
    hole |= ndimage.binary_dilation(band, iterations=int(p["band_px"]))
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(0, 5))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(3, 15, 2) * scale
        hole |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1.0
    hole |= rng.random((h, w)) < 0.01
    return np.where(hole, 0.0, d).astype(np.float32)


def surface(geometry: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(depth (H, W) as rendered, sky mask (H, W) bool, unit world normals (H, W, 3) float64, 0 on sky) of the
    'geometry' render's passes."""
    depth = geometry["Depth"][..., 0]
    sky = ~((depth > 0) & (depth < BACKGROUND_DEPTH))
    n_world = geometry["Normal"].astype(np.float64)
    n_world /= np.maximum(np.linalg.norm(n_world, axis=-1, keepdims=True), 1e-12)
    n_world[sky] = 0.0
    return depth, sky, n_world


def assemble_view(render, light: dict, geometry: dict, pose_m: np.ndarray, camera: Camera, sun_direction,
                  sun_irradiance, sh_world, rng, mvs_params: dict, use_tone_curve: bool) -> dict:
    """All arrays of one view from the main render (H, W, 3), the 'light' render's DiffCol and DiffDir and
    the 'geometry' render's Depth and Normal passes ({name: (H, W, C)})."""
    depth, sky, n_world = surface(geometry)
    R = pose_m[:3, :3]  # camera -> world rotation
    n_cam = n_world @ R  # (H, W, 3): R^T n per pixel
    rays = camera.rays()
    flip = (n_cam * rays).sum(-1) > 0  # facing away from the viewer
    n_cam[flip] *= -1.0
    n_cam[sky] = 0.0
    albedo = np.where(sky[..., None], 0.0, light["DiffCol"])
    shadow = sun_shadow(light["DiffDir"], n_world.astype(np.float32), sky, sun_direction, sun_irradiance)
    exposure = auto_exposure(render, rng)
    gt_depth = np.where(sky, 0.0, depth).astype(np.float32)
    texture_lum = (albedo @ sh.LUMINANCE) * (0.3 + 0.7 * shadow)  # texture as the photo shows it, noise-free
    return {
        "image": encode_photo(render * exposure, use_tone_curve),
        "depth_mvs": mvs_depth(gt_depth, sky, n_cam, rays, texture_lum, rng, mvs_params),
        "K": camera.K.astype(np.float64),
        "cam_to_world": pose_m.astype(np.float64),
        "exposure": np.float32(exposure),
        "gt_depth": gt_depth,
        "gt_normal": n_cam.astype(np.float16),
        "gt_albedo": albedo.astype(np.float16),
        "gt_shadow": shadow.astype(np.float16),
        "sky_mask": sky,
        "gt_sh_camera": (exposure * sh.rotation(R.T) @ sh_world).astype(np.float32),
    }


def light_in_camera(sun_direction, sun_irradiance, sh_sky_world, R, exposure: float) -> dict:
    """One light as a view sees it: {"sun_camera": (3,) unit (zeros without a sun), "sun_irradiance": (3,),
    "sky_sh_camera": (9, 3), "sh_camera": (9, 3) = sky + sh.directional(sun)}, camera frame, times exposure.
    sun_direction (3,) world or None, sun_irradiance (3,), sh_sky_world (9, 3), R (3, 3) camera -> world."""
    _check("sh_sky_world", sh_sky_world, (9, 3))
    rot = sh.rotation(_check("R", R, (3, 3)).T)
    sky = exposure * rot @ np.asarray(sh_sky_world, dtype=np.float64)
    if sun_direction is None:
        sun_cam, irradiance, full = np.zeros(3), np.zeros(3), sky
    else:
        sun_cam = R.T @ np.asarray(sun_direction, dtype=np.float64)
        irradiance = exposure * np.asarray(sun_irradiance, dtype=np.float64)
        full = sky + sh.directional(sun_cam, irradiance)
    return {"sun_camera": sun_cam.astype(np.float32), "sun_irradiance": irradiance.astype(np.float32),
            "sky_sh_camera": sky.astype(np.float32), "sh_camera": full.astype(np.float32)}


def assemble_relight(view: dict, render_b, light_b: dict, geometry: dict, light_a: dict, light_b_world: dict,
                     use_tone_curve: bool) -> dict:
    """The RELIGHT_ARRAYS (train/data.py) of one view already assembled by `assemble_view` (its exposure and
    pose are reused: same camera settings): the main render under light B (H, W, 3), the 'light' render of
    B's sun (DiffDir (H, W, 3)), the 'geometry' passes; light_a / light_b_world: {"sun_direction": (3,) or
    None, "sun_irradiance": (3,) or None, "sh_sky_world": (9, 3)} (world frame, before exposure)."""
    _, sky, n_world = surface(geometry)
    R = view["cam_to_world"][:3, :3]
    exposure = float(view["exposure"])
    a = light_in_camera(light_a["sun_direction"], light_a["sun_irradiance"], light_a["sh_sky_world"], R, exposure)
    b = light_in_camera(light_b_world["sun_direction"], light_b_world["sun_irradiance"],
                        light_b_world["sh_sky_world"], R, exposure)
    shadow_b = sun_shadow(light_b["DiffDir"], n_world.astype(np.float32), sky, light_b_world["sun_direction"],
                          light_b_world["sun_irradiance"])
    return {
        "sun_camera": a["sun_camera"], "sun_irradiance": a["sun_irradiance"], "sky_sh_camera": a["sky_sh_camera"],
        "relight_image": encode_photo(render_b * exposure, use_tone_curve),
        "relight_gt_shadow": shadow_b.astype(np.float16),
        "relight_sun_camera": b["sun_camera"], "relight_sun_irradiance": b["sun_irradiance"],
        "relight_sky_sh_camera": b["sky_sh_camera"], "relight_sh_camera": b["sh_camera"],
    }


# --------------------------------------------------------------------------------------------- render


def _configure_render(scene, width: int, height: int, threads: int) -> None:
    scene.render.resolution_x, scene.render.resolution_y = width, height
    scene.render.resolution_percentage = 100
    scene.render.threads_mode = "FIXED"
    scene.render.threads = threads
    scene.render.use_persistent_data = True  # keeps the BVH and shaders between the views' renders
    scene.render.use_compositing = False
    scene.render.use_sequencer = False
    c = scene.cycles
    c.use_adaptive_sampling = False
    c.denoiser = "OPENIMAGEDENOISE"
    c.denoising_input_passes = "RGB_ALBEDO_NORMAL"
    c.denoising_prefilter = "NONE"  # measured: same error as ACCURATE here, 0.2 s less
    c.pixel_filter_type = "BOX"
    c.caustics_reflective = c.caustics_refractive = False
    c.blur_glossy = 1.0
    c.transparent_max_bounces = c.transmission_bounces = c.volume_bounces = 0
    settings = scene.render.image_settings
    use_multilayer_exr(settings)
    settings.color_depth = "32"
    settings.exr_codec = "NONE"
    layer = scene.view_layers[0]
    layer.use_pass_z = layer.use_pass_normal = True
    layer.use_pass_diffuse_color = layer.use_pass_diffuse_direct = True


MODES = {
    # Photo: sky + sun, bounces, 1 px box filter (pixel means, like a sensor), denoised.
    "main": {"world": 1.0, "bounces": (MAX_BOUNCES, DIFFUSE_BOUNCES, GLOSSY_BOUNCES), "filter": 1.0},
    # Albedo (DiffCol) and sun light (DiffDir): sun only, no bounces, the photo's pixel means.
    "light": {"world": 0.0, "bounces": (0, 0, 0), "filter": 1.0},
    # Depth and Normal at the pixel centre, the ray of Camera.rays(): 0.01 px is Cycles' smallest filter.
    "geometry": {"world": 0.0, "bounces": (0, 0, 0), "filter": 0.01},
}


def _set_mode(scene, background, mode: str, samples: int, denoise: bool) -> None:
    """Switch the render settings to one of MODES."""
    c = scene.cycles
    m = MODES[mode]
    background.inputs["Strength"].default_value = m["world"]
    c.samples = samples
    c.use_denoising = mode == "main" and denoise
    c.max_bounces, c.diffuse_bounces, c.glossy_bounces = m["bounces"]
    c.filter_width = m["filter"]
    # With persistent data Cycles only notices changed settings when the scene is tagged.
    scene.update_tag()


def _render(scene, path: Path, samples: int) -> dict[str, np.ndarray]:
    scene.render.filepath = str(path)
    with _quiet_stdout():
        bpy.ops.render.render(write_still=True)
    used = read_exr_header(path).attributes.get("cycles.ViewLayer.samples", ("", b""))[1]
    if used and int(used) != samples:
        raise RuntimeError(f"Cycles rendered {int(used)} samples instead of {samples}: settings not synced")
    return read_multilayer_exr(path)


def split_of(index: int, scenes: int, heldout_fraction: float) -> str:
    """"heldout" for the last round(fraction * scenes) scene indices (at least one when fraction > 0)."""
    n_heldout = max(1, int(round(heldout_fraction * scenes))) if heldout_fraction > 0 else 0
    return "heldout" if index >= scenes - n_heldout else "train"


def build_geometry(rng, args):
    """Render settings, ground, objects and camera poses in the current Blender scene (which bake_sky empties),
    drawing from rng in a fixed order, so that replaying the scene's rng rebuilds the same scene.
    Returns (scene, ground material, terrain info, poses, SceneBuilder with the objects' records)."""
    scene = bpy.context.scene
    _configure_render(scene, args.width, args.height, args.threads)
    ground_mat = ground_material(rng)
    height_fn, terrain_info = terrain(scene, rng, ground_mat)
    poses, arc_azimuth = camera_poses(rng, args.views, height_fn)
    builder = SceneBuilder(scene, rng, height_fn)
    populate(builder, rng, [p["location"][:2] for p in poses], arc_azimuth + math.pi)
    return scene, ground_mat, terrain_info, poses, builder


def set_light(scene, env: np.ndarray, sun_dir, sun_irr, sun_angle: float):
    """Light the scene by the equirect env (H, W, 3) and, when sun_dir (3,) is not None, a SUN lamp of RGB
    irradiance sun_irr (3,) and angular diameter sun_angle degrees. Returns the world's Background node."""
    world, background = environment_world(env)
    scene.world = world
    if sun_dir is not None:
        light = bpy.data.lights.new("sun", "SUN")
        peak = float(np.max(sun_irr))
        light.energy = peak  # strength S with colour c: S * c = irradiance (W/m^2)
        light.color = tuple(np.asarray(sun_irr) / peak)
        light.angle = math.radians(sun_angle)
        sun_obj = bpy.data.objects.new("sun", light)
        sun_obj.rotation_euler = Vector(sun_dir.tolist()).to_track_quat("Z", "Y").to_euler()  # emits along -Z
        scene.collection.objects.link(sun_obj)
    return background


def add_camera(scene):
    cam = bpy.data.objects.new("camera", bpy.data.cameras.new("camera"))
    cam.data.sensor_fit = "HORIZONTAL"
    cam.data.clip_start, cam.data.clip_end = 0.05, 5000.0
    scene.collection.objects.link(cam)
    scene.camera = cam
    return cam


def render_views(scene, background, cam, poses: list[dict], modes, args, tmp: Path, prefix: str = ""):
    """Render the given MODES for every pose, one settings change per mode (not per view).
    Returns ({mode: [passes {name: (H, W, C)} per view]}, camera-to-world (4, 4) per view, Camera per view)."""
    samples = {"main": args.samples, "light": LIGHT_SAMPLES, "geometry": 1}
    passes = {mode: [] for mode in modes}
    matrices, cameras = [], []
    for mode in modes:
        _set_mode(scene, background, mode, samples[mode], not args.no_denoise)
        for k, pose in enumerate(poses):
            cam.matrix_world = pose_matrix(pose)
            cam.data.angle = math.radians(pose["fov_deg"])
            passes[mode].append(_render(scene, tmp / f"{prefix}{mode}_{k}.exr", samples[mode]))
            if mode == "main":
                bpy.context.view_layer.update()
                matrices.append(np.array(cam.matrix_world, dtype=np.float64))
                cameras.append(Camera.from_fov(args.width, args.height, pose["fov_deg"]))
    return passes, matrices, cameras


def sample_second_sky(rng, sky_a: dict) -> dict:
    """Light B's sky: category "clear" (a visible sun), sun elevation in SUN_ELEVATION_DEG, sun azimuth at least
    RELIGHT_MIN_AZIMUTH_DEG from the sun of light A's sky `sky_a` (any azimuth when that sky has no sun)."""
    params = sample_sky(rng, "clear")
    if "sun_rotation_deg" in sky_a:
        offset = rng.uniform(RELIGHT_MIN_AZIMUTH_DEG, 360.0 - RELIGHT_MIN_AZIMUTH_DEG)
        params["sun_rotation_deg"] = float((sky_a["sun_rotation_deg"] + offset) % 360.0)
    return params


def render_second_light(rng, seed: int, args, tmp: Path, sky_a: dict, light_a: dict, poses: list[dict],
                        records: list[dict], geometry: list[dict], views: list[dict], sun_angle: float) -> dict:
    """Sample light B (after everything else the scene draws from rng), render the 'main' and 'light' MODES of
    every view under it and add the RELIGHT_ARRAYS to `views` (assembled under light A, modified in place).

    bake_sky empties the Blender scene, so the scene is rebuilt by replaying its rng from `seed`; `poses` and
    `records` (light A's) check that the replay gave the same scene. geometry: the 'geometry' passes per view
    (unchanged by the light); light_a: assemble_relight's light description. Returns scene.json's
    "second_light"."""
    params = sample_second_sky(rng, sky_a)
    pano, sun_dir, sun_irr = bake_sky(params, tmp, args.threads)
    if sun_dir is None:
        raise RuntimeError(f"second light {params} has no sun")
    replay = np.random.default_rng(seed)
    sample_sky(replay, args.category)  # light A's draws, as render_scene made them
    scene, ground_mat, _, poses_b, builder_b = build_geometry(replay, args)
    if poses_b != poses or builder_b.records != records:
        raise RuntimeError("replaying the scene's random numbers did not rebuild the same scene")
    env = sky_with_ground(pano, sun_dir, sun_irr, ground_mat.mean)
    L_sky = sh.from_equirect(env)
    background = set_light(scene, env, sun_dir, sun_irr, sun_angle)
    cam = add_camera(scene)
    passes, _, _ = render_views(scene, background, cam, poses, ("main", "light"), args, tmp, prefix="relight_")
    light_b = {"sun_direction": sun_dir, "sun_irradiance": sun_irr, "sh_sky_world": L_sky}
    for k, view in enumerate(views):
        view.update(assemble_relight(view, passes["main"][k]["Combined"][..., :3], passes["light"][k], geometry[k],
                                     light_a, light_b, not args.no_tone_curve))
    return {"sky": params, "sun": {"direction_world": sun_dir.tolist(), "irradiance": sun_irr.tolist(),
                                   "angle_deg": sun_angle},
            "sh_sky_world": L_sky.tolist(), "sh_world": (L_sky + sh.directional(sun_dir, sun_irr)).tolist()}


def render_scene(index: int, args, scene_dir: Path, tmp: Path) -> dict:
    """Build, render and write scene `index` into scene_dir (views + scene.json). Returns timings."""
    t0 = time.time()
    seed = args.seed + index
    rng = np.random.default_rng(seed)
    sky_params = sample_sky(rng, args.category)
    pano, sun_dir, sun_irr = bake_sky(sky_params, tmp, args.threads)
    t_sky = time.time() - t0

    scene, ground_mat, terrain_info, poses, builder = build_geometry(rng, args)
    env = sky_with_ground(pano, sun_dir, sun_irr, ground_mat.mean)
    L_sky = sh.from_equirect(env)
    sh_world = L_sky + (sh.directional(sun_dir, sun_irr) if sun_dir is not None else 0.0)
    sun_angle = float(rng.uniform(*SUN_ANGLE_DEG))
    background = set_light(scene, env, sun_dir, sun_irr, sun_angle)
    cam = add_camera(scene)
    mvs_params = {"sigma": float(rng.uniform(0.01, 0.02)), "far_limit": float(rng.uniform(40.0, 120.0)),
                  "texture_threshold": float(rng.uniform(0.01, 0.03)), "band_px": int(rng.integers(1, 3))}
    t_build = time.time() - t0 - t_sky

    passes, matrices, cameras = render_views(scene, background, cam, poses, MODES, args, tmp)
    t_render = time.time() - t0 - t_sky - t_build

    views = [assemble_view(passes["main"][k]["Combined"][..., :3], passes["light"][k], passes["geometry"][k],
                           matrices[k], cameras[k], sun_dir, sun_irr, sh_world, rng, mvs_params,
                           not args.no_tone_curve) for k in range(len(poses))]
    second_light, t_second = None, 0.0
    if args.second_light:
        t1 = time.time()
        light_a = {"sun_direction": sun_dir, "sun_irradiance": sun_irr, "sh_sky_world": L_sky}
        second_light = render_second_light(rng, seed, args, tmp, sky_params, light_a, poses, builder.records,
                                           passes["geometry"], views, sun_angle)
        t_second = time.time() - t1
    names = []
    for k, arrays in enumerate(views):
        names.append(f"view_{k:02d}.npz")
        write_view(scene_dir / names[-1], arrays)
    t_total = time.time() - t0
    seconds = {"sky": round(t_sky, 2), "build": round(t_build, 2), "render": round(t_render, 2)}
    if args.second_light:
        seconds["second_light"] = round(t_second, 2)
    seconds["total"] = round(t_total, 2)
    description = {
        "generator": "datagen/render_multiview.py", "blender": bpy.app.version_string, "index": index,
        "samples": args.samples, "denoiser": None if args.no_denoise else "OpenImageDenoise",
        "light_samples": LIGHT_SAMPLES, "bounces": [MAX_BOUNCES, DIFFUSE_BOUNCES, GLOSSY_BOUNCES],
        "tone_curve": None if args.no_tone_curve else {"type": "linear below knee, exponential shoulder above",
                                                       "knee": TONE_KNEE},
        "sky": sky_params,
        "sun": None if sun_dir is None else {"direction_world": sun_dir.tolist(), "irradiance": sun_irr.tolist(),
                                             "angle_deg": sun_angle},
        "sh_sky_world": L_sky.tolist(), "ground_albedo": np.asarray(ground_mat.mean).tolist(),
        "terrain": terrain_info, "poses": poses, "depth_mvs": mvs_params, "objects": builder.records,
        "render_seconds": seconds,
    }
    if second_light is not None:
        description["second_light"] = second_light
    write_scene_json(scene_dir, {"seed": seed, "split": split_of(index, args.scenes, args.heldout_fraction),
                                 "width": args.width, "height": args.height, "views": names,
                                 "sh_world": sh_world.tolist(), "description": description})
    return {"total": t_total, "sky": t_sky, "build": t_build, "render": t_render, "second_light": t_second}


def preview(scene_dir: Path, view: int, png: Path) -> None:
    """Contact sheet of one view: photo, albedo, normal, shadow, depth, MVS depth, shading, sky mask (and the
    relight photo and shadow when the view has them)."""
    from invrender_core.io import srgb_to_linear
    from invrender_core.train.data import read_view

    v = read_view(scene_dir / f"view_{view:02d}.npz", ground_truth=True)
    d = v["gt_depth"]
    far = float(np.quantile(d[d > 0], 0.95)) if (d > 0).any() else 1.0
    shading = sh.shading(v["gt_normal"].astype(np.float64), v["gt_sh_camera"]) * ~v["sky_mask"][..., None]
    tiles = [
        ("photo", srgb_to_linear(v["image"].astype(np.float32) / 255.0)),
        ("albedo", v["gt_albedo"].astype(np.float32)),
        ("normal", (v["gt_normal"].astype(np.float32) + 1.0) / 2.0 * ~v["sky_mask"][..., None]),
        ("shadow", v["gt_shadow"].astype(np.float32)),
        ("depth", np.clip(d / far, 0, 1)),
        ("depth_mvs", np.clip(v["depth_mvs"] / far, 0, 1)),
        ("albedo*shadow*E", v["gt_albedo"] * v["gt_shadow"][..., None] * shading),
        ("sky", v["sky_mask"].astype(np.float32)),
    ]
    if "relight_image" in v:  # --second-light
        tiles += [("relight photo", srgb_to_linear(v["relight_image"].astype(np.float32) / 255.0)),
                  ("relight shadow", v["relight_gt_shadow"].astype(np.float32))]
    save_preview_sheet(png, tiles, tile_width=192)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="dataset folder")
    ap.add_argument("--scenes", type=int, required=True, help="total number of scenes of the dataset")
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1000, help="base seed; scene i uses seed + i")
    ap.add_argument("--heldout-fraction", type=float, default=0.1)
    ap.add_argument("--start", type=int, default=0, help="first scene index to render")
    ap.add_argument("--end", type=int, default=None, help="one past the last scene index (default --scenes)")
    ap.add_argument("--samples", type=int, default=SAMPLES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-denoise", action="store_true", help="keep the main render's Monte Carlo noise")
    ap.add_argument("--no-tone-curve", action="store_true", help="encode exposed linear values with clipping only")
    ap.add_argument("--category", choices=sorted(render_skies.CATEGORY_FRACTIONS), default=None,
                    help="force one sky category (default: random per scene)")
    ap.add_argument("--second-light", action="store_true",
                    help="also render every view under a second, clear sky (relight pairs, RELIGHT_ARRAYS)")
    ap.add_argument("--preview", action="store_true", help="write OUT/previews/scene_NNNNN.png (view 0)")
    args = ap.parse_args(argv)
    end = args.scenes if args.end is None else args.end
    if args.width % 16 or args.height % 16:
        ap.error(f"use --width and --height divisible by 16 (the networks need it), got {args.width}x{args.height}")
    if args.views < 2:
        ap.error("use --views 2 or more: the data is multiview")
    if not 0.0 <= args.heldout_fraction < 1.0:
        ap.error("use a --heldout-fraction in [0, 1)")
    if not 0 <= args.start <= end <= args.scenes:
        ap.error(f"need 0 <= --start <= --end <= --scenes, got {args.start}, {end}, {args.scenes}")

    args.out.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(args.start, end) if not (args.out / f"scene_{i:05d}" / "scene.json").exists()]
    print(f"{len(todo)} of {end - args.start} scenes to render into {args.out} "
          f"({args.views} views, {args.width}x{args.height}, {args.samples} samples, {args.threads} threads)",
          flush=True)
    shm = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
    t_start, views_done = time.time(), 0
    with tempfile.TemporaryDirectory(dir=shm, prefix="invr_mv_") as tmp_name:
        tmp = Path(tmp_name)
        for n, index in enumerate(todo):
            final = args.out / f"scene_{index:05d}"
            staging = args.out / f".tmp_scene_{index:05d}_{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            times = render_scene(index, args, staging, tmp)
            shutil.rmtree(final, ignore_errors=True)  # a folder without scene.json is an old partial copy
            staging.rename(final)
            if args.preview:
                (args.out / "previews").mkdir(exist_ok=True)
                preview(final, 0, args.out / "previews" / f"scene_{index:05d}.png")
            views_done += args.views
            elapsed = time.time() - t_start
            per_view = elapsed / views_done
            eta = per_view * args.views * (len(todo) - n - 1)
            print(f"scene {n + 1}/{len(todo)} (index {index}): {times['total']:.1f} s (sky {times['sky']:.1f}, "
                  f"build {times['build']:.1f}, render {times['render']:.1f}, second light "
                  f"{times['second_light']:.1f}); {per_view:.2f} s/view overall, "
                  f"ETA {eta / 60:.1f} min", flush=True)
    print(f"done: {views_done} views in {(time.time() - t_start) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
