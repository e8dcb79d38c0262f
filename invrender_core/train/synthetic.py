"""A tiny analytic multiview world for tests and smoke runs without Blender: a ground plane z = 0 and a unit
sphere at (0, 0, 1) (world z up), a checker albedo and one fixed light, seen by rolled cameras on a circle.

`make_dataset(root, ...)` writes it in the multiview format (`train/data.py`) with exact ground truth;
`register_untrained_networks` registers randomly initialised networks, for smoke runs of the pipeline.
"""

from __future__ import annotations

import math

import numpy as np

from ..io import linear_to_srgb
from .data import write_scene_json, write_view

SPHERE_C, SPHERE_R = np.array([0.0, 0.0, 1.0]), 1.0


def look_at(eye, target=(0.0, 0.0, 0.5), roll=0.0) -> np.ndarray:
    """cam_to_world (4, 4) of a camera at eye looking at target, rolled by `roll` radians about its axis
    (DESIGN.md frame: looks down -z, y up)."""
    eye = np.asarray(eye, float)
    z = eye - np.asarray(target, float)
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, np.cross(z, x), z, eye
    c, s = math.cos(roll), math.sin(roll)
    m[:3, :2] = m[:3, :2] @ np.array([[c, s], [-s, c]])
    return m


def intrinsics(w, h, fov_x_deg=60.0) -> np.ndarray:
    f = 0.5 * w / math.tan(math.radians(fov_x_deg) / 2)
    return np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])


LIGHT = (0.3, 0.2, 0.93)  # world direction towards the light
SECOND_LIGHT = (-0.6, 0.3, 0.74)  # `make_dataset(second_light=True)`


def render(K, c2w, w, h, sphere=True, light=LIGHT):
    """Exact planar depth (0 = sky), camera-frame normals and a shaded albedo of the plane (+ sphere) scene, lit
    from world direction `light` (unit)."""
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], -(v - K[1, 2]) / K[1, 1], -np.ones_like(u)], -1)  # z = -1: t = depth
    d = d_cam @ c2w[:3, :3].T
    o = c2w[:3, 3]
    t_plane = np.where(d[..., 2] < -1e-9, -o[2] / np.minimum(d[..., 2], -1e-9), np.inf)
    oc = o - SPHERE_C
    a, b, c = (d * d).sum(-1), 2 * (d @ oc), oc @ oc - SPHERE_R**2
    disc = b * b - 4 * a * c
    t_sphere = np.where(disc > 0, (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a), np.inf)
    t_sphere = np.where((t_sphere > 0) & sphere, t_sphere, np.inf)
    t = np.minimum(t_plane, t_sphere)
    hit = np.isfinite(t)
    p = o + d * np.where(hit, t, 0)[..., None]
    n_world = np.where((t_sphere < t_plane)[..., None], (p - SPHERE_C) / SPHERE_R, [0.0, 0.0, 1.0])
    n_cam = n_world @ c2w[:3, :3]
    checker = ((np.floor(p[..., 0] * 2) + np.floor(p[..., 1] * 2)) % 2)[..., None]
    albedo = np.where(checker > 0, [0.6, 0.5, 0.4], [0.3, 0.35, 0.2])
    shade = np.clip(n_world @ np.asarray(light), 0, None)[..., None] * 0.9 + 0.1
    linear = np.where(hit[..., None], albedo * shade, [0.5, 0.7, 0.95])
    return np.where(hit, t, 0.0), np.where(hit[..., None], n_cam, 0.0), albedo, linear


def to_srgb8(linear):
    """Linear RGB (H, W, 3) -> uint8 sRGB."""
    return np.round(np.clip(linear_to_srgb(np.clip(linear, 0, 1)), 0, 1) * 255).astype(np.uint8)


def make_dataset(root, scenes=2, views=3, w=48, h=32, heldout=1, noise=0.0, holes=0.0, seed=0, eyes=None,
                 sphere=True, second_light=False):
    """Write `scenes` train scenes (+ `heldout` held-out ones) of `views` views each; return the root.

    second_light: also write the relight arrays (`data.RELIGHT_ARRAYS`), the second photo lit from
    SECOND_LIGHT (no cast shadows: the shadow maps are ones; the SH arrays are zeros, as gt_sh_camera is)."""
    rng = np.random.default_rng(seed)
    for s in range(scenes + heldout):
        scene_dir = root / f"scene_{s:05d}"
        scene_dir.mkdir(parents=True)
        names = []
        for k in range(views):
            if eyes is not None:
                eye = eyes[k]
            else:
                angle = 2 * math.pi * (0.08 * k + 0.1 * s)
                eye = (5 * math.cos(angle), 5 * math.sin(angle), 2.5)
            # Rolled cameras: a level camera sees the ground's depth vary along rows only, which would hide
            # errors in the horizontal geometry (cx, flips) from the pair tests.
            K, c2w = intrinsics(w, h), look_at(eye, roll=0.25 + 0.15 * k)
            depth, normal, albedo, linear = render(K, c2w, w, h, sphere)
            mvs = depth * (1 + noise * rng.standard_normal(depth.shape))
            mvs[rng.random(depth.shape) < holes] = 0
            name = f"view_{k:02d}.npz"
            arrays = {
                "image": to_srgb8(linear), "depth_mvs": mvs.astype(np.float32), "K": K, "cam_to_world": c2w,
                "exposure": np.float32(1.0), "gt_depth": depth.astype(np.float32),
                "gt_normal": normal.astype(np.float16), "gt_albedo": albedo.astype(np.float16),
                "gt_shadow": np.ones((h, w), np.float16), "sky_mask": depth == 0,
                "gt_sh_camera": np.zeros((9, 3), np.float32)}
            if second_light:
                second = render(K, c2w, w, h, sphere, SECOND_LIGHT)[3]
                to_camera = c2w[:3, :3].T
                no_sh = np.zeros((9, 3), np.float32)
                arrays.update({
                    "sun_camera": (to_camera @ LIGHT).astype(np.float32), "sun_irradiance": np.ones(3, np.float32),
                    "sky_sh_camera": no_sh, "relight_image": to_srgb8(second),
                    "relight_gt_shadow": np.ones((h, w), np.float16),
                    "relight_sun_camera": (to_camera @ SECOND_LIGHT).astype(np.float32),
                    "relight_sun_irradiance": np.ones(3, np.float32), "relight_sky_sh_camera": no_sh,
                    "relight_sh_camera": no_sh})
            write_view(scene_dir / name, arrays)
            names.append(name)
        write_scene_json(scene_dir, {"seed": s, "split": "train" if s < scenes else "heldout", "width": w,
                                     "height": h, "views": names, "sh_world": np.zeros((9, 3)).tolist()})
    return root


def register_untrained_networks(folder, irn_name: str = "irn-test", depth_name: str = "depth-test",
                                width: float = 0.0625, seed: int = 0):
    """Register randomly initialised InverseRenderNet and MegaDepth hourglass weights (channel multiplier
    `width`) under the given names in the weights folder `folder`; returns the folder."""
    from pathlib import Path

    import torch
    from safetensors.torch import save_file

    from ..nets import weights
    from ..nets.depth import MegaDepthHourglass
    from ..nets.irn import InverseRenderNet

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    for name, arch, model in ((irn_name, "irn", InverseRenderNet(width=width)),
                              (depth_name, "megadepth", MegaDepthHourglass(width=width))):
        path = folder / f"{name}-source.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        weights.register_shipped(path, name, arch, {"width": width}, licence="untrained (tests)",
                                 card_markdown="random initialisation", folder=folder)
        path.unlink()
    return folder


def exact_estimate(camera, depth, normals, lighting, albedo=0.5, shadow=None):
    """A SceneEstimate that is exactly right for its maps: the image is the image model's rendering
    albedo * E(normals) (the shadow, if given, is carried but not applied). albedo: (H, W, 3) or a grey level.
    For building scenes with known answers in tests."""
    from .. import sh
    from ..scene import SceneEstimate

    depth, normals = np.asarray(depth, np.float32), np.asarray(normals, np.float32)
    albedo = np.broadcast_to(np.asarray(albedo, np.float32), normals.shape).copy()
    shading = sh.shading(normals, lighting).astype(np.float32)
    return SceneEstimate(image=albedo * shading, albedo=albedo, shading=shading, normals=normals, depth=depth,
                         depth_fused=depth, confidence=np.ones_like(depth), lighting=np.asarray(lighting, np.float32),
                         camera=camera, shadow=shadow)
