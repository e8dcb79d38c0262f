"""Render physical sky environments (Blender's Nishita sky, CIE overcast) for the illumination prior.

Reproduce (about 7 minutes on 2 CPU cores; then run datagen/fit_illumination_prior.py):
    .venv/bin/python datagen/render_skies.py --out datagen/out/skies --count 400 --seed 0

Writes into --out:
    sky_0000.npy ...  (H, W, 3) float32 linear radiance, Blender's equirectangular mapping in the world frame
                      (z up, row 0 = top = +z, image centre = +x), rendered WITHOUT the sun disc
    index.json        render settings, parameter ranges and one record per sky: category, sky parameters,
                      sun direction (world, towards the sun) and sun irradiance (RGB)

How the sun is handled: the Nishita sun disc is 0.545 degrees wide and about 10^5 times brighter than the
sky, so a 64x32 panorama would catch it in a sample or miss it (noise of 100 % of the lighting). Each sky
is rendered without the disc, and the disc is measured separately: a perspective camera aimed at the sun
(field of view = 2 disc diameters, 32x32 pixels, 16 samples, box filter) renders the sky with the disc
on; the disc's irradiance at normal incidence is sum((pixel - sky level) * pixel solid angle), the sky
level being the median of the pixels outside 1.3 disc radii. The sun then enters the SH as a delta
(datagen/fit_illumination_prior.py), exact for order 2 up to the disc's 0.27 degree radius. The script
checks that the disc lands in the centre of that window (i.e. that the sun direction formula below is
Blender's).

Sky categories (fractions, parameter ranges in SKY_RANGES, sampled uniformly):
    clear     Nishita sky + sun
    hazy      Nishita sky with heavy dust; the sun is dimmed by a visibility factor in the fit
    cloudy    Nishita sky + sun (visibility 0..1) + a CIE overcast layer, tinted
    overcast  CIE overcast sky (1 + 2 cos(theta)) / 3, tinted, no sun
Below the horizon all renders are dark; the fit replaces that half with ground bounce.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import bpy
import numpy as np
from invrender_addon.build.bpy_io import enable_nodes
from mathutils import Vector

CATEGORY_FRACTIONS = {"clear": 0.45, "hazy": 0.15, "cloudy": 0.2, "overcast": 0.2}

SKY_RANGES = {
    "clear": {"sun_elevation_deg": [3.0, 85.0], "air_density": [0.5, 2.0], "dust_density": [0.0, 3.0],
              "ozone_density": [0.5, 3.0], "altitude_m": [0.0, 2000.0]},
    "hazy": {"sun_elevation_deg": [3.0, 85.0], "air_density": [1.0, 3.0], "dust_density": [3.0, 10.0],
             "ozone_density": [0.5, 3.0], "altitude_m": [0.0, 500.0], "sun_visibility": [0.3, 1.0]},
    "cloudy": {"sun_elevation_deg": [3.0, 85.0], "air_density": [0.5, 2.0], "dust_density": [0.0, 5.0],
               "ozone_density": [0.5, 3.0], "altitude_m": [0.0, 1000.0], "sun_visibility": [0.0, 1.0],
               "cloud_strength": [0.5, 4.0], "tint_t": [-0.05, 0.15]},
    "overcast": {"cloud_strength": [1.0, 1.0], "tint_t": [-0.05, 0.15]},
}
# sun_rotation is uniform in [0, 360) degrees for every category with a sun.

WINDOW_SIZE = 32  # pixels of the square sun window
WINDOW_SAMPLES = 16


def sun_direction(elevation: float, rotation: float) -> np.ndarray:
    """World direction towards the Nishita sun (radians): rotation 0 -> +y, 90 degrees -> +x."""
    return np.array([math.cos(elevation) * math.sin(rotation), math.cos(elevation) * math.cos(rotation),
                     math.sin(elevation)])


def nishita_sky_type() -> str:
    """Blender's Nishita sky model: "NISHITA" up to 4.5, the same model renamed "SINGLE_SCATTERING" in 5.0."""
    items = {item.identifier for item in bpy.types.ShaderNodeTexSky.bl_rna.properties["sky_type"].enum_items}
    return "NISHITA" if "NISHITA" in items else "SINGLE_SCATTERING"


def set_dust_density(sky, value: float) -> None:
    """The Nishita sky's dust density, renamed aerosol_density in Blender 5.0."""
    setattr(sky, "dust_density" if hasattr(sky, "dust_density") else "aerosol_density", value)


def setup_scene(width: int, height: int, samples: int):
    """Empty scene with Cycles on CPU, a world (Nishita sky + CIE overcast layer) and two cameras."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.cycles.device = "CPU"
    scene.cycles.samples = samples
    scene.cycles.use_denoising = False
    scene.cycles.use_adaptive_sampling = False
    # Box filter of one pixel: each pixel is the mean radiance over its area, which the solid-angle
    # quadrature of from_equirect assumes.
    scene.cycles.pixel_filter_type = "BOX"
    scene.cycles.filter_width = 1.0
    scene.render.threads_mode = "FIXED"
    scene.render.threads = 2
    scene.render.resolution_percentage = 100
    settings = scene.render.image_settings
    settings.file_format = "OPEN_EXR"
    settings.color_depth = "32"
    settings.color_mode = "RGB"

    world = bpy.data.worlds.new("sky")
    scene.world = world
    enable_nodes(world)
    nodes, links = world.node_tree.nodes, world.node_tree.links
    nodes.clear()
    sky = nodes.new("ShaderNodeTexSky")
    sky.sky_type = nishita_sky_type()
    bg_sky = nodes.new("ShaderNodeBackground")
    links.new(sky.outputs["Color"], bg_sky.inputs["Color"])
    # CIE overcast: radiance ∝ (1 + 2 cos θ) / 3 with cos θ = z of the (unit) world direction.
    coords = nodes.new("ShaderNodeTexCoord")
    xyz = nodes.new("ShaderNodeSeparateXYZ")
    links.new(coords.outputs["Generated"], xyz.inputs["Vector"])
    zpos = nodes.new("ShaderNodeMath")
    zpos.operation = "MAXIMUM"
    zpos.inputs[1].default_value = 0.0
    links.new(xyz.outputs["Z"], zpos.inputs[0])
    grad = nodes.new("ShaderNodeMath")
    grad.operation = "MULTIPLY_ADD"
    grad.inputs[1].default_value = 2.0 / 3.0
    grad.inputs[2].default_value = 1.0 / 3.0
    links.new(zpos.outputs[0], grad.inputs[0])
    tint = nodes.new("ShaderNodeVectorMath")
    tint.operation = "SCALE"
    links.new(grad.outputs[0], tint.inputs["Scale"])
    bg_cloud = nodes.new("ShaderNodeBackground")
    links.new(tint.outputs["Vector"], bg_cloud.inputs["Color"])
    add = nodes.new("ShaderNodeAddShader")
    links.new(bg_sky.outputs[0], add.inputs[0])
    links.new(bg_cloud.outputs[0], add.inputs[1])
    out = nodes.new("ShaderNodeOutputWorld")
    links.new(add.outputs[0], out.inputs["Surface"])

    pano_data = bpy.data.cameras.new("pano")
    pano_data.type = "PANO"
    pano_data.panorama_type = "EQUIRECTANGULAR"
    pano = bpy.data.objects.new("pano", pano_data)
    # This orientation makes the render's row 0 = +z and its centre = +x: the same mapping as Blender's
    # Environment Texture (checked in blender_tests/test_sky_render.py).
    pano.rotation_euler = (math.pi / 2, 0.0, -math.pi / 2)
    scene.collection.objects.link(pano)
    window_data = bpy.data.cameras.new("sun_window")
    window_data.type = "PERSP"
    window_data.sensor_fit = "HORIZONTAL"
    window = bpy.data.objects.new("sun_window", window_data)
    scene.collection.objects.link(window)
    return {"scene": scene, "sky": sky, "bg_sky": bg_sky, "bg_cloud": bg_cloud, "tint": tint,
            "pano": pano, "window": window, "width": width, "height": height, "samples": samples}


def render_to_array(scene, path: Path) -> np.ndarray:
    """Render the scene's camera to a float EXR and read it back as (H, W, 3) float32, row 0 = top."""
    scene.render.filepath = str(path)
    bpy.ops.render.render(write_still=True)
    img = bpy.data.images.load(str(path))
    try:
        w, h = img.size
        px = np.empty(w * h * 4, dtype=np.float32)
        img.pixels.foreach_get(px)
    finally:
        bpy.data.images.remove(img)
    return px.reshape(h, w, 4)[::-1, :, :3].copy()  # Blender stores rows bottom-up


def render_panorama(rig, tmp: Path) -> np.ndarray:
    """(H, W, 3) equirect radiance of the current world, sun disc off."""
    scene = rig["scene"]
    rig["sky"].sun_disc = False
    scene.camera = rig["pano"]
    scene.render.resolution_x, scene.render.resolution_y = rig["width"], rig["height"]
    scene.cycles.samples = rig["samples"]
    return render_to_array(scene, tmp)


def measure_sun(rig, direction: np.ndarray, tmp: Path) -> np.ndarray:
    """RGB irradiance of the sun disc at normal incidence: ∫ (radiance - sky) dω over a window on it."""
    scene, sky = rig["scene"], rig["sky"]
    sky.sun_disc = True
    fov = 2.0 * 2.0 * (sky.sun_size / 2.0)  # two disc diameters
    rig["window"].data.angle = fov
    rig["window"].rotation_euler = Vector(direction.tolist()).to_track_quat("-Z", "Y").to_euler()
    scene.camera = rig["window"]
    scene.render.resolution_x = scene.render.resolution_y = WINDOW_SIZE
    scene.cycles.samples = WINDOW_SAMPLES
    img = render_to_array(scene, tmp).astype(np.float64)
    sky.sun_disc = False

    # Image-plane coordinates at focal distance 1 and the exact solid angle of each pixel.
    half = math.tan(fov / 2.0)
    step = 2.0 * half / WINDOW_SIZE
    c = (np.arange(WINDOW_SIZE) + 0.5) * step - half
    X, Y = np.meshgrid(c, -c)
    domega = step * step / (1.0 + X * X + Y * Y) ** 1.5
    r = np.hypot(X, Y)
    disc_r = math.tan(sky.sun_size / 2.0)
    ring = r > 1.3 * disc_r
    level = np.median(img[ring], axis=0)
    excess = img - level
    lum = excess.sum(-1)
    inside = lum > 0.5 * lum.max()
    centre = np.argwhere(inside).mean(axis=0) - (WINDOW_SIZE - 1) / 2.0
    if lum.max() <= 0 or np.hypot(*centre) > 2.0:
        raise RuntimeError(f"sun disc not centred in its window (offset {centre} px): sun direction formula wrong?")
    return (excess * domega[..., None]).sum(axis=(0, 1))


def sample_sky(rng: np.random.Generator, category: str) -> dict:
    ranges = SKY_RANGES[category]
    p = {"category": category}
    for key, (lo, hi) in ranges.items():
        p[key] = float(rng.uniform(lo, hi))
    if category != "overcast":
        p["sun_rotation_deg"] = float(rng.uniform(0.0, 360.0))
        p.setdefault("sun_visibility", 1.0)
    return p


def apply_sky(rig, p: dict) -> None:
    sky = rig["sky"]
    has_sky = p["category"] != "overcast"
    rig["bg_sky"].inputs["Strength"].default_value = 1.0 if has_sky else 0.0
    if has_sky:
        sky.sun_elevation = math.radians(p["sun_elevation_deg"])
        sky.sun_rotation = math.radians(p["sun_rotation_deg"])
        sky.air_density = p["air_density"]
        set_dust_density(sky, p["dust_density"])
        sky.ozone_density = p["ozone_density"]
        sky.altitude = p["altitude_m"]
    has_cloud = "cloud_strength" in p
    rig["bg_cloud"].inputs["Strength"].default_value = p["cloud_strength"] if has_cloud else 0.0
    t = p.get("tint_t", 0.0)
    rig["tint"].inputs["Vector"].default_value = (1.0 - t, 1.0, 1.0 + t)  # bluish overcast for t > 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("datagen/out/skies"))
    ap.add_argument("--count", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--samples", type=int, default=16)
    args = ap.parse_args(argv)
    if args.height % 2 or args.width != 2 * args.height:
        ap.error("use an even height and width = 2 * height (the horizon then lies between two rows)")

    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    counts = {k: int(round(f * args.count)) for k, f in CATEGORY_FRACTIONS.items()}
    counts["clear"] += args.count - sum(counts.values())
    categories = [k for k, n in counts.items() for _ in range(n)]
    rng.shuffle(categories)

    rig = setup_scene(args.width, args.height, args.samples)
    tmp = args.out / "_render.exr"
    records = []
    t0 = time.time()
    for i, category in enumerate(categories):
        p = sample_sky(rng, category)
        apply_sky(rig, p)
        img = render_panorama(rig, tmp)
        if category != "overcast":
            d = sun_direction(math.radians(p["sun_elevation_deg"]), math.radians(p["sun_rotation_deg"]))
            p["sun_direction"] = d.tolist()
            p["sun_irradiance"] = measure_sun(rig, d, tmp).tolist()
        name = f"sky_{i:04d}.npy"
        np.save(args.out / name, img)
        records.append({"index": i, "file": name, **p})
        if (i + 1) % 50 == 0 or i + 1 == len(categories):
            print(f"{i + 1}/{len(categories)} skies, {time.time() - t0:.0f} s", flush=True)
    tmp.unlink(missing_ok=True)

    index = {
        "command": f"datagen/render_skies.py --out {args.out} --count {args.count} --seed {args.seed} "
                   f"--width {args.width} --height {args.height} --samples {args.samples}",
        "blender": bpy.app.version_string,
        "seed": args.seed, "count": len(records), "width": args.width, "height": args.height,
        "samples": args.samples, "sun_window": {"pixels": WINDOW_SIZE, "samples": WINDOW_SAMPLES,
                                                "fov": "2 sun disc diameters"},
        "category_counts": counts, "sky_ranges": SKY_RANGES,
        "sun_rotation_deg": [0.0, 360.0],
        "frame": "world (Blender, z up); equirect row 0 = +z, centre = +x",
        "render_seconds": round(time.time() - t0, 1),
        "skies": records,
    }
    (args.out / "index.json").write_text(json.dumps(index, indent=1))
    print(f"wrote {len(records)} skies to {args.out} in {index['render_seconds']} s")


if __name__ == "__main__":
    main()
