"""Shadow refinement for 2D relighting: which of the new sun's marched cast shadows are real.

`relight.cast_shadow` marches rays towards the sun through the fused depth. A monocular depth map is bumpy and
only 2.5D, so the march finds the big shadows of buildings, but also blobs on walls where the depth bulges and
misses shadows whose casters the depth flattened. A small U-Net looks at the marched visibility together with
the geometry and the photo, and predicts a correction to its logit:

    visibility = sigmoid(BASE_LOGIT_GAIN · (marched - 0.5) + correction)

(a zero-initialised head: an untrained network keeps the marched shadows, softened). It runs at a working
resolution of at most `max_side` pixels (the marched visibility area-averaged to it), and its visibility is
brought to the march's grid by `filtering.guided_upsample` with the marched visibility as the guide: where the
network keeps a marched shadow, the shadow's edge is the march's, to the grid's pixel; where it removed one, the
result is smooth but for a faint line along the marched edge.

Inputs, (B, INPUT_CHANNELS, h, w): the marched visibility (1), the cosine between the normal and the sun (1),
camera-frame normals (3), the sun's direction in the camera frame (3, constant), the log of the fused depth
over its median (1; 0 on sky), the sky mask (1) and the photo's log luminance less its median (1, halved,
clipped to ±2). Trained on the two-light renders against the true visibility of the second sun
(`train/shadow_task.py`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

INPUT_CHANNELS = 11
DEFAULT_WIDTH = 16
DEFAULT_LEVELS = 3
DEFAULT_MAX_SIDE = 256
BASE_LOGIT_GAIN = 4.0  # the marched visibility's logit before the correction
LOG_LUMINANCE_FLOOR = 1e-4


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU())


class SmallUNet(nn.Module):
    """features (B, in_channels, h, w), h and w multiples of 2^levels -> one map (B, 1, h, w), from a zero-initialised
    head. Levels of two 3x3 convolutions with GroupNorm and SiLU, width doubling per level, average pooling down,
    bilinear up, skip connections."""

    def __init__(self, in_channels: int, width: int, levels: int):
        super().__init__()
        if width < 4 or width % 4:
            raise ValueError(f"width must be a positive multiple of 4, got {width}")
        if not 1 <= levels <= 5:
            raise ValueError(f"levels must be 1 to 5, got {levels}")
        self.in_channels, self.levels = int(in_channels), int(levels)
        channels = [int(width) * 2 ** i for i in range(self.levels)]  # per level, finest first
        self.encoders = nn.ModuleList(_block(self.in_channels if i == 0 else channels[i - 1], c)
                                      for i, c in enumerate(channels))
        self.middle = _block(channels[-1], channels[-1])
        # decoder i sees the level below (middle, or decoder i + 1) upsampled, and encoder i's skip
        self.decoders = nn.ModuleList(_block((channels[i + 1] if i + 1 < self.levels else channels[i]) + c, c)
                                      for i, c in enumerate(channels))
        self.head = nn.Conv2d(channels[0], 1, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @property
    def side_multiple(self) -> int:
        return 2 ** self.levels

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        m, c = self.side_multiple, self.in_channels
        if features.ndim != 4 or features.shape[1] != c or features.shape[2] % m or features.shape[3] % m:
            raise ValueError(f"features must have shape (B, {c}, h, w) with h, w multiples of {m}, "
                             f"got {tuple(features.shape)}")
        skips, x = [], features
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else nn.functional.avg_pool2d(x, 2))
            skips.append(x)
        x = self.middle(nn.functional.avg_pool2d(x, 2))
        for i in reversed(range(self.levels)):
            x = nn.functional.interpolate(x, size=skips[i].shape[-2:], mode="bilinear")
            x = self.decoders[i](torch.cat([x, skips[i]], 1))
        return self.head(x)


class ShadowRefiner(SmallUNet):
    """features (B, INPUT_CHANNELS, h, w), h and w multiples of 2^levels -> logit correction (B, 1, h, w)."""

    def __init__(self, width: int = DEFAULT_WIDTH, levels: int = DEFAULT_LEVELS, max_side: int = DEFAULT_MAX_SIDE):
        super().__init__(INPUT_CHANNELS, width, levels)
        self.max_side = int(max_side)

    def working_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) at most max_side on the longer side, multiples of side_multiple."""
        m = self.side_multiple
        scale = min(1.0, self.max_side / max(width, height))
        return max(m, round(width * scale / m) * m), max(m, round(height * scale / m) * m)

    @torch.inference_mode()
    def apply(self, marched: np.ndarray, sun_direction, photo_inputs: np.ndarray) -> np.ndarray:
        """Refined visibility (H, W) float32 in [0, 1] of marched visibility (H, W) (the march's grid);
        photo_inputs: `photo_features` at this network's `working_size` of (W, H)."""
        from ..filtering import guided_upsample
        from ..io import resize_linear

        H, W = marched.shape
        w, h = self.working_size(W, H)
        if photo_inputs.shape[:2] != (h, w):
            raise ValueError(f"photo inputs are {photo_inputs.shape[1]}x{photo_inputs.shape[0]}, expected the "
                             f"working size {w}x{h}")
        marched = np.asarray(marched, np.float32)
        small = resize_linear(marched, w, h).reshape(h, w)
        x = light_features(small, photo_inputs, sun_direction)
        device = next(self.parameters()).device
        logit = visibility_logit(self, torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1))[None]).to(device))
        visibility = torch.sigmoid(logit)[0, 0].cpu().numpy()  # (h, w)
        if (w, h) == (W, H):
            return visibility
        # Edge-aware, guided by the marched visibility: shadows the network keeps get the march's edges back at
        # the grid's resolution; where it removed one, at most a faint line is left along the marched edge.
        return np.clip(guided_upsample(visibility, marched), 0.0, 1.0)


def visibility_logit(model: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The refined visibility's logit (B, 1, h, w) at the working size: BASE_LOGIT_GAIN · (marched - 0.5) plus
    the correction `model` (a ShadowRefiner, or one wrapped for training) predicts from features (B, C, h, w)."""
    return BASE_LOGIT_GAIN * (features[:, :1] - 0.5) + model(features).float()


def photo_features(normals: np.ndarray, depth: np.ndarray, sky: np.ndarray, image: np.ndarray,
                   size: tuple[int, int] | None = None) -> np.ndarray:
    """The inputs that no sun changes, (h, w, 6): normals (3), log relative depth, sky, log luminance; from
    camera-frame normals (H, W, 3), fused depth (H, W) (non-finite or <= 0: unknown), sky (H, W) bool and the
    linear photo (H, W, 3), all at one resolution; size (w, h): area-resized to it (the depth's log first)."""
    from ..io import resize_linear
    from ..sh import LUMINANCE

    sky = np.asarray(sky, bool)
    depth = np.asarray(depth, np.float32)
    known = np.isfinite(depth) & (depth > 0) & ~sky
    median = float(np.median(depth[known])) if known.any() else 1.0
    log_depth = np.zeros(depth.shape, np.float32)
    log_depth[known] = np.log(depth[known] / np.float32(median))
    log_lum = np.log(np.maximum(np.asarray(image, np.float32) @ LUMINANCE.astype(np.float32), LOG_LUMINANCE_FLOOR))
    ground = ~sky if (~sky).any() else np.ones(sky.shape, bool)
    log_lum = np.clip((log_lum - np.median(log_lum[ground])) / 2.0, -2.0, 2.0)
    maps = [np.asarray(normals, np.float32), log_depth[..., None], sky[..., None].astype(np.float32),
            log_lum[..., None].astype(np.float32)]
    if size is not None:
        maps = [resize_linear(m, *size).reshape(size[1], size[0], -1) for m in maps]
    return np.concatenate(maps, axis=-1)


def light_features(marched: np.ndarray, photo_inputs: np.ndarray, sun_direction) -> np.ndarray:
    """(h, w, INPUT_CHANNELS) network inputs (module docstring) from marched visibility (h, w), `photo_features`
    (h, w, 6) and the sun's direction (3,) (camera frame)."""
    s = np.asarray(sun_direction, np.float32)
    s = s / np.linalg.norm(s)
    normals = photo_inputs[..., :3]
    h, w = marched.shape
    parts = [np.asarray(marched, np.float32)[..., None], np.clip(normals @ s, -1.0, 1.0)[..., None], normals,
             np.broadcast_to(s, (h, w, 3)), photo_inputs[..., 3:]]
    out = np.concatenate(parts, axis=-1).astype(np.float32)
    if out.shape[-1] != INPUT_CHANNELS:
        raise ValueError(f"features have {out.shape[-1]} channels, expected {INPUT_CHANNELS}")
    return out


def load(name_or_path, weights_dir=None, device="cpu") -> ShadowRefiner:
    """The registered shadow refiner (name) or a .safetensors file (path), loaded strictly, in eval()."""
    from . import weights

    return weights.load_named(name_or_path, weights_dir, expect="shadow_refine", device=device)
