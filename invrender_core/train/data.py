"""The multiview training-data format ("invrender-multiview-1"): what `datagen/render_multiview.py` writes and
the trainers and evaluation read.

Layout of a dataset folder::

    ROOT/scene_00012/scene.json   {"format": "invrender-multiview-1", "seed": int, "split": "train" | "heldout",
                                   "width": W, "height": H, "views": ["view_00.npz", ...],
                                   "sh_world": 9x3 (scene lighting, world frame, before exposure),
                                   "description": {... free-form: generator parameters ...}}
    ROOT/scene_00012/view_00.npz  one view, arrays below

Arrays of a view (all images H x W, row 0 at the top; camera frame of DESIGN.md: x right, y up, z towards
the viewer, which is also Blender's camera frame):

    image         uint8 (H, W, 3)  the photo, sRGB-encoded after exposure and a camera-like tone curve
    depth_mvs     float32 (H, W)   planar depth as multi-view stereo gives it: noisy, 0 = missing
    K             float64 (3, 3)   intrinsics [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] (pixel centres at j + 0.5)
    cam_to_world  float64 (4, 4)   camera-to-world rigid transform
    exposure      float32 ()       factor applied to the linear render before the tone curve

Ground truth, for evaluation ONLY (never read by the self-supervised losses; `read_view(..., ground_truth=False)`
does not even load it):

    gt_depth      float32 (H, W)   exact planar depth, 0 on sky
    gt_normal     float16 (H, W, 3) unit camera-frame normals, 0 on sky
    gt_albedo     float16 (H, W, 3) linear diffuse albedo
    gt_shadow     float16 (H, W)   sun visibility in [0, 1] (1 = lit, cast shadows only), 1 on sky
    sky_mask      bool (H, W)      True where the ray leaves the scene
    gt_sh_camera  float32 (9, 3)   the lighting in the camera frame, times exposure: the SH for which
                                   linear(image) ≈ albedo · shadow · E(normal) up to the tone curve

Relight pairs, OPTIONAL (`render_multiview.py --second-light`; all of them or none; read with the ground truth
when present). Light A is the photo's, light B a second clear sky with a sun; the scene, cameras and exposure
are the same, so the pair differs only by its light. Camera frame, times the view's exposure, like gt_sh_camera:

    sun_camera              float32 (3,)     unit direction towards A's sun (zeros when A has no sun)
    sun_irradiance          float32 (3,)     A's sun RGB irradiance at normal incidence (zeros: no sun)
    sky_sh_camera           float32 (9, 3)   A's lighting without the sun: gt_sh_camera =
                                             sky_sh_camera + sh.directional(sun_camera, sun_irradiance)
    relight_image           uint8 (H, W, 3)  the photo under B, same exposure and tone curve as `image`
    relight_gt_shadow       float16 (H, W)   B's sun visibility, like gt_shadow
    relight_sun_camera      float32 (3,)     unit direction towards B's sun
    relight_sun_irradiance  float32 (3,)     B's sun RGB irradiance
    relight_sky_sh_camera   float32 (9, 3)   B's lighting without the sun
    relight_sh_camera       float32 (9, 3)   B's full lighting: relight_sky_sh_camera + sh.directional(sun)
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

FORMAT = "invrender-multiview-1"
SPLITS = ("train", "heldout")

# name -> (dtype, shape with "H"/"W" placeholders)
INPUT_ARRAYS = {
    "image": (np.uint8, ("H", "W", 3)),
    "depth_mvs": (np.float32, ("H", "W")),
    "K": (np.float64, (3, 3)),
    "cam_to_world": (np.float64, (4, 4)),
    "exposure": (np.float32, ()),
}
GROUND_TRUTH_ARRAYS = {
    "gt_depth": (np.float32, ("H", "W")),
    "gt_normal": (np.float16, ("H", "W", 3)),
    "gt_albedo": (np.float16, ("H", "W", 3)),
    "gt_shadow": (np.float16, ("H", "W")),
    "sky_mask": (np.bool_, ("H", "W")),
    "gt_sh_camera": (np.float32, (9, 3)),
}
ALL_ARRAYS = {**INPUT_ARRAYS, **GROUND_TRUTH_ARRAYS}
# Optional group: a view has all of these or none (older datasets have none).
RELIGHT_ARRAYS = {
    "sun_camera": (np.float32, (3,)),
    "sun_irradiance": (np.float32, (3,)),
    "sky_sh_camera": (np.float32, (9, 3)),
    "relight_image": (np.uint8, ("H", "W", 3)),
    "relight_gt_shadow": (np.float16, ("H", "W")),
    "relight_sun_camera": (np.float32, (3,)),
    "relight_sun_irradiance": (np.float32, (3,)),
    "relight_sky_sh_camera": (np.float32, (9, 3)),
    "relight_sh_camera": (np.float32, (9, 3)),
}
SECOND_LIGHT_PHOTO = "relight_image"


def _expected_shape(template: tuple, height: int, width: int) -> tuple[int, ...]:
    return tuple({"H": height, "W": width}.get(d, d) for d in template)


def _specs_of(arrays) -> dict:
    """ALL_ARRAYS, plus RELIGHT_ARRAYS when `arrays` (names) holds any of them."""
    return {**ALL_ARRAYS, **RELIGHT_ARRAYS} if set(RELIGHT_ARRAYS) & set(arrays) else ALL_ARRAYS


def check_view(arrays: dict, height: int, width: int, source: str = "view") -> None:
    """Raise ValueError unless `arrays` holds every array of the format with its dtype and shape (and, when it
    holds any relight array, every one of RELIGHT_ARRAYS)."""
    specs = _specs_of(arrays)
    missing = sorted(set(specs) - set(arrays))
    if missing:
        raise ValueError(f"{source}: missing arrays {missing}")
    for name, (dtype, template) in specs.items():
        a = np.asarray(arrays[name])
        shape = _expected_shape(template, height, width)
        if a.dtype != dtype or a.shape != shape:
            raise ValueError(f"{source}: {name} is {a.dtype} {a.shape}, expected {np.dtype(dtype)} {shape}")


def write_view(path: str | Path, arrays: dict) -> None:
    """Write one view (every array of the format, and the relight group when present, checked) as a compressed
    .npz."""
    image = np.asarray(arrays["image"])
    check_view(arrays, image.shape[0], image.shape[1], str(path))
    np.savez_compressed(path, **{name: np.asarray(arrays[name]) for name in _specs_of(arrays)})


def read_view(path: str | Path, ground_truth: bool = False, second_light: bool = False) -> dict[str, np.ndarray]:
    """Read one view: the input arrays, plus the ground-truth ones and, when the file has them, the relight
    ones (RELIGHT_ARRAYS) when `ground_truth` (evaluation only). With `second_light`, also the photo under the
    second light when the file has it (`relight_image`: a photo, as a capture under two lights has, not ground
    truth)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            names = _specs_of(z.files) if ground_truth else dict(INPUT_ARRAYS)
            if second_light and SECOND_LIGHT_PHOTO in z.files:
                names[SECOND_LIGHT_PHOTO] = RELIGHT_ARRAYS[SECOND_LIGHT_PHOTO]
            missing = sorted(set(names) - set(z.files))
            arrays = {} if missing else {name: z[name] for name in names}
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:  # truncated, not an .npz, pickled objects
        raise ValueError(f"{path} cannot be read ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
                         "render the scene again or remove it") from e
    if missing:
        raise ValueError(f"{path}: not an {FORMAT} view, missing {missing}")
    return arrays


def write_scene_json(scene_dir: str | Path, meta: dict) -> None:
    """Write scene.json (adds the format tag); `meta` needs seed, split, width, height, views, sh_world."""
    for key in ("seed", "split", "width", "height", "views", "sh_world"):
        if key not in meta:
            raise ValueError(f"scene.json needs {key!r}")
    if meta["split"] not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {meta['split']!r}")
    Path(scene_dir, "scene.json").write_text(json.dumps({"format": FORMAT, **meta}, indent=1) + "\n")


def list_scenes(root: str | Path, split: str | None = None) -> list[tuple[Path, dict]]:
    """(scene folder, scene.json contents) for every scene under `root`, sorted, optionally of one split."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no dataset folder at {root}")
    scenes = []
    for meta_path in sorted(root.glob("scene_*/scene.json")):
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{meta_path} is not valid JSON ({e}): render the scene again or remove it") from e
        if meta.get("format") != FORMAT:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        if split is None or meta["split"] == split:
            scenes.append((meta_path.parent, meta))
    return scenes
