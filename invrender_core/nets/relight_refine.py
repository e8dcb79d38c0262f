"""Refinement network for 2D relighting, in the spirit of the rendering network of Yu et al. (ECCV 2020).

The simple image model (`relight.Relighter`: albedo · (sun · visibility + sky)) misses interreflections, the
sky light that cast shadows still receive, glossy highlights and the decomposition's own errors. A small U-Net
looks at what the model knows about the photo and the new light and predicts a per-pixel, per-channel
log-ratio that multiplies the simple relit image (zero-initialised: an untrained network changes nothing).
It runs at a working resolution of at most `max_side` pixels and the correction is resized to the photo, so
the photo's texture (carried by the albedo) is never blurred by it.

Inputs, (B, INPUT_CHANNELS, h, w), all in the photo's exposure: albedo (3), camera-frame normals (3), the new
sun's shading with cast shadows (3), the new sky's shading (3), the new sun's visibility (1), the photo (3),
the photo as the model re-renders it under its own estimated lighting (3; photo minus this is what the model
does not explain) and the network's shadow map of the photo (1). Values are compressed by log1p.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

INPUT_CHANNELS = 20
DEFAULT_WIDTH = 24
DEFAULT_MAX_SIDE = 256
LOG_RATIO_LIMIT = 2.0  # the correction scales a pixel by at most e^2 either way
SIDE_MULTIPLE = 4  # two poolings


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(4, cout), nn.SiLU())


class RelightRefiner(nn.Module):
    """features (B, INPUT_CHANNELS, h, w), h and w multiples of 4 -> log-ratio (B, 3, h, w) in
    [-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT]."""

    def __init__(self, width: int = DEFAULT_WIDTH, max_side: int = DEFAULT_MAX_SIDE):
        super().__init__()
        if width < 4 or width % 4:
            raise ValueError(f"width must be a positive multiple of 4, got {width}")
        self.max_side = int(max_side)
        c = int(width)
        self.enc1 = _block(INPUT_CHANNELS, c)
        self.enc2 = _block(c, 2 * c)
        self.mid = _block(2 * c, 2 * c)
        self.dec2 = _block(4 * c, c)
        self.dec1 = _block(2 * c, c)
        self.head = nn.Conv2d(c, 3, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 4 or features.shape[1] != INPUT_CHANNELS or features.shape[2] % SIDE_MULTIPLE \
                or features.shape[3] % SIDE_MULTIPLE:
            raise ValueError(f"features must have shape (B, {INPUT_CHANNELS}, h, w) with h, w multiples of "
                             f"{SIDE_MULTIPLE}, got {tuple(features.shape)}")
        x = torch.log1p(features.clamp(min=0.0) * 4.0)
        e1 = self.enc1(x)  # (B, c, h, w)
        e2 = self.enc2(nn.functional.avg_pool2d(e1, 2))  # (B, 2c, h/2, w/2)
        m = self.mid(nn.functional.avg_pool2d(e2, 2))  # (B, 2c, h/4, w/4)
        d2 = self.dec2(torch.cat([nn.functional.interpolate(m, scale_factor=2.0, mode="bilinear"), e2], 1))
        d1 = self.dec1(torch.cat([nn.functional.interpolate(d2, scale_factor=2.0, mode="bilinear"), e1], 1))
        return LOG_RATIO_LIMIT * torch.tanh(self.head(d1) / LOG_RATIO_LIMIT)

    def working_size(self, width: int, height: int) -> tuple[int, int]:
        """(w, h) at most max_side on the longer side, multiples of SIDE_MULTIPLE."""
        scale = min(1.0, self.max_side / max(width, height))
        return (max(SIDE_MULTIPLE, round(width * scale / SIDE_MULTIPLE) * SIDE_MULTIPLE),
                max(SIDE_MULTIPLE, round(height * scale / SIDE_MULTIPLE) * SIDE_MULTIPLE))

    @torch.inference_mode()
    def apply(self, estimate, relit, exposure: float, own_render: np.ndarray, photo_inputs: dict | None = None
              ) -> np.ndarray:
        """The refined relit image (H, W, 3) float32 for a `relight.Relighter` render: the correction is
        predicted at `working_size` and resized to (H, W); sky pixels are left as they are. photo_inputs: as
        for `features` (a dict kept per photo, so a sequence resizes the photo's own inputs once)."""
        from ..io import resize_linear

        H, W = relit.image.shape[:2]
        w, h = self.working_size(W, H)
        small = features(estimate, relit, exposure, own_render, size=(w, h), photo_inputs=photo_inputs)
        device = next(self.parameters()).device
        x = torch.from_numpy(np.ascontiguousarray(small.transpose(2, 0, 1))[None]).to(device)
        log_ratio = self(x)[0].permute(1, 2, 0).float().cpu().numpy()  # (h, w, 3)
        ground = resize_linear((~np.asarray(relit.sky, bool)).astype(np.float32), w, h) > 0.5
        if ground.any():
            # Trained scale-free (refine_loss removes each image's mean log error), the correction's mean is
            # arbitrary: it had darkened images to 0.6-0.8 of the photo under its own light. The simple model's
            # exposure stands; the refiner corrects relative brightness and colour only.
            log_ratio -= log_ratio[ground].mean()
        ratio = resize_linear(log_ratio, W, H)  # (H, W, 3) float32, made the refined image in place
        np.exp(ratio, out=ratio)
        ratio[relit.sky] = 1.0
        ratio *= relit.image
        return ratio


def features(estimate, relit, exposure: float, own_render: np.ndarray, size: tuple[int, int] | None = None,
             photo_inputs: dict | None = None) -> np.ndarray:
    """(H, W, INPUT_CHANNELS) float32 network inputs (module docstring) for a relit image of `estimate`;
    own_render (H, W, 3) is the simple model's image under the photo's own lighting. size (w, h): the inputs
    area-resized to it, (h, w, INPUT_CHANNELS), one map at a time (a 24-megapixel photo's full-resolution
    stack of 20 channels would take 1.9 GB and most of a frame's time). photo_inputs: a dict (empty at first)
    that keeps the inputs which do not depend on the new light (albedo, normals, photo, own render, shadow map)
    as prepared for each size, for the next call with the same estimate and own_render."""
    from ..io import resize_linear

    def prepared(m, scale=1.0, offset=0.0):
        m = np.asarray(m, np.float32)
        if size is not None:
            m = resize_linear(m, *size).reshape(size[1], size[0], -1)
        return m if (scale, offset) == (1.0, 0.0) else m * np.float32(scale) + np.float32(offset)

    def of_photo(name, m, scale=1.0, offset=0.0):
        if photo_inputs is None:
            return prepared(m, scale, offset)
        key = (name, size)
        if key not in photo_inputs:
            photo_inputs[key] = prepared(m, scale, offset)
        return photo_inputs[key]

    if estimate.shadow is not None:
        shadow = of_photo("shadow", estimate.shadow[..., None])
    else:  # no shadow map (an RGB-D scene): all lit, made at the inputs' size rather than resized
        height, width = relit.visibility.shape if size is None else size[::-1]
        shadow = np.ones((height, width, 1), np.float32)
    # Each input is scale * map + offset, applied after resizing (an area average commutes with it), so no
    # full-resolution temporaries are made for the scaled maps.
    parts = [of_photo("albedo", estimate.albedo), of_photo("normals", estimate.normals, 0.5, 0.5),
             prepared(relit.sun_shading, exposure), prepared(relit.sky_shading, exposure),
             prepared(relit.visibility[..., None]), of_photo("photo", estimate.image),
             of_photo("own_render", own_render), shadow]
    out = np.concatenate(parts, axis=-1)
    if out.shape[-1] != INPUT_CHANNELS:
        raise ValueError(f"features have {out.shape[-1]} channels, expected {INPUT_CHANNELS}")
    return out


def load(name_or_path, weights_dir=None, device="cpu") -> RelightRefiner:
    """The registered refiner (name) or a .safetensors file (path), loaded strictly, in eval()."""
    from . import weights

    return weights.load_named(name_or_path, weights_dir, expect="relight_refine", device=device)
