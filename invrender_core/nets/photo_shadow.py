"""The photo's own cast shadows: a shadow map for `scene.decompose`, so that the albedo is free of them.

InverseRenderNet explains a photo as albedo · shadow · shading, but the shipped IRN's shadow map is empty
(irn-small.md): a cast shadow's darkness stays in the albedo, and a relit photo or a Blender material keeps the
old shadows under any new light. This small U-Net (`shadow_refine.SmallUNet`) predicts that shadow map from the
photo and the IRN's maps at decompose's working resolution:

    shadow = sigmoid(network(features)),  image ≈ albedo · shadow · shading

where the shadow map is the cast shadow's share of the light: 1 where the sun reaches the pixel, E_sky / (E_sun +
E_sky) in full shadow (`true_shadow_map`, a cast shadow still receives the sky's light). Inputs (INPUT_CHANNELS):
the photo's log luminance less its median (halved, clipped to ±2), its log chromaticity (3, the log of each
channel over the luminance, clipped to ±2; the shadows of a clear sky are blue), the IRN's camera-frame normals (3),
the log of the photo over the IRN's shading (luminance, less its median, halved, clipped to ±2: what the shading does
not explain), the log relative depth (0 on sky) and the sky mask. Trained on the synthetic two-light renders
against the true shadow map (`train/photo_shadow_task.py`): the supervision is rendered, like the shadow
refiner's.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .shadow_refine import SmallUNet

INPUT_CHANNELS = 10
NORMAL_X = 4  # the feature channel that changes sign in a left-right mirror
DEFAULT_WIDTH = 16
DEFAULT_LEVELS = 3
LUMINANCE_FLOOR = 1e-4


class PhotoShadowNet(SmallUNet):
    """features (B, INPUT_CHANNELS, h, w), h and w multiples of 2^levels -> the shadow map's logit (B, 1, h, w)."""

    def __init__(self, width: int = DEFAULT_WIDTH, levels: int = DEFAULT_LEVELS):
        super().__init__(INPUT_CHANNELS, width, levels)

    @torch.inference_mode()
    def _padded_logits(self, features: np.ndarray, mirror_average: bool) -> torch.Tensor:
        """The network on `photo_shadow_features` (h, w, INPUT_CHANNELS), and with mirror_average on its mirror
        image too, each padded (edge pixels repeated) to multiples of side_multiple: logits (n, 1, h', w')."""
        features = np.asarray(features, np.float32)
        h, w = features.shape[:2]
        inputs = [features]
        if mirror_average:
            mirrored = features[:, ::-1].copy()
            mirrored[..., NORMAL_X] *= -1.0
            inputs.append(mirrored)
        m = self.side_multiple
        x = np.stack([np.pad(f, ((0, -h % m), (0, -w % m), (0, 0)), mode="edge") for f in inputs])
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(next(self.parameters()).device)
        return self(x).float()

    def pass_logits(self, features: np.ndarray, mirror_average: bool = False) -> np.ndarray:
        """The logits (n, h, w) float32 of `photo_shadow_features` (h, w, INPUT_CHANNELS): of the photo, and with
        mirror_average of its mirror image too (flipped back)."""
        h, w = np.shape(features)[:2]
        logits = self._padded_logits(features, mirror_average)[:, 0, :h, :w].cpu().numpy()
        return np.stack([logits[0], logits[1, :, ::-1]]) if mirror_average else logits

    def apply(self, features: np.ndarray, mirror_average: bool = False) -> np.ndarray:
        """Shadow map (h, w) float32 in [0, 1] of `photo_shadow_features` (h, w, INPUT_CHANNELS), 1 on sky.
        mirror_average: the mean of the maps of the photo and of its mirror image (`pass_logits`), exactly
        mirror-symmetric as decompose's other maps are."""
        h, w = np.shape(features)[:2]
        maps = torch.sigmoid(self._padded_logits(features, mirror_average))[:, 0, :h, :w].cpu().numpy()
        shadow = 0.5 * (maps[0] + maps[1, :, ::-1]) if mirror_average else maps[0]
        shadow[np.asarray(features)[..., -1] > 0.5] = 1.0  # the sky channel
        return shadow.astype(np.float32)


def _centred_log(values: np.ndarray, ground: np.ndarray) -> np.ndarray:
    """log(values) less its median over ground, halved, clipped to ±2."""
    log = np.log(np.maximum(values, LUMINANCE_FLOOR))
    return np.clip((log - np.median(log[ground])) / 2.0, -2.0, 2.0)


def photo_shadow_features(image: np.ndarray, normals: np.ndarray, shading: np.ndarray, depth: np.ndarray,
                          sky: np.ndarray) -> np.ndarray:
    """(h, w, INPUT_CHANNELS) float32 network inputs (module docstring) from the linear photo (h, w, 3), the IRN's
    normals (h, w, 3), its shading max(E(n), 0) (h, w, 3), the relative depth (h, w) (median 1 over ground; non-finite
    or <= 0: unknown) and the sky (h, w) bool, all at decompose's working resolution."""
    from ..sh import LUMINANCE

    lum_weights = LUMINANCE.astype(np.float32)
    image = np.maximum(np.asarray(image, np.float32), 0.0)
    sky = np.asarray(sky, bool)
    ground = ~sky if (~sky).any() else np.ones(sky.shape, bool)
    lum = image @ lum_weights
    chroma = np.clip(np.log(np.maximum(image, LUMINANCE_FLOOR) / np.maximum(lum, LUMINANCE_FLOOR)[..., None]),
                     -2.0, 2.0)
    unexplained = lum / np.maximum(np.asarray(shading, np.float32) @ lum_weights, LUMINANCE_FLOOR)
    depth = np.asarray(depth, np.float32)
    known = np.isfinite(depth) & (depth > 0) & ~sky
    log_depth = np.zeros(depth.shape, np.float32)
    log_depth[known] = np.clip(np.log(depth[known]), -4.0, 4.0)
    maps = [_centred_log(lum, ground)[..., None], chroma, np.asarray(normals, np.float32),
            _centred_log(unexplained, ground)[..., None], log_depth[..., None], sky[..., None]]
    return np.concatenate(maps, axis=-1).astype(np.float32)


def true_shadow_map(normals: np.ndarray, visibility: np.ndarray, sun_direction, sun_irradiance, sky_sh,
                    sky: np.ndarray) -> np.ndarray:
    """The shadow map (h, w) float32 that a rendered view's light gives: luminance of (E_sun · visibility + E_sky)
    over (E_sun + E_sky), with E_sun = max(n · s, 0) · irradiance / pi and E_sky the sky SH's irradiance; 1 on sky.
    normals (h, w, 3), visibility (h, w) of the sun, sun_direction (3,) and sun_irradiance (3,) RGB at normal
    incidence, sky_sh (9, 3), all in the camera frame (the datasets' sun_camera, sun_irradiance, sky_sh_camera)."""
    from ..sh import LUMINANCE, shading

    n = np.asarray(normals, np.float32)
    e_sun = np.maximum(n @ np.asarray(sun_direction, np.float32), 0.0) * float(
        np.asarray(sun_irradiance, np.float64) @ LUMINANCE) / math.pi
    e_sky = np.maximum(shading(n, sky_sh) @ LUMINANCE, LUMINANCE_FLOOR)
    out = (e_sun * np.asarray(visibility, np.float32) + e_sky) / (e_sun + e_sky)
    out[np.asarray(sky, bool)] = 1.0
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def load(name_or_path, weights_dir=None, device="cpu") -> PhotoShadowNet:
    """The registered photo-shadow network (name) or a .safetensors file (path), loaded strictly, in eval()."""
    from . import weights

    return weights.load_named(name_or_path, weights_dir, expect="photo_shadow", device=device)
