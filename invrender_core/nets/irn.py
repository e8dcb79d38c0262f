"""InverseRenderNet (Yu & Smith, CVPR 2019) with the InverseRenderNet++ shadow decoder (T-PAMI).

One linear-RGB photo (B, 3, H, W) -> albedo, camera-frame normals, shadow, and order-2 SH lighting.

Architecture: a 15-layer encoder (five stages of three 3x3 convolutions, each followed by GroupNorm and
ReLU, with a 2x2 max-pool between stages: four poolings, so H and W must be divisible by 16) and three
decoders of the same shape (albedo, normals, shadow). Each decoder stage upsamples x2 (bilinear), concatenates
the encoder features of that resolution (skip connection) and applies two 3x3 conv + GroupNorm + ReLU; a
final 3x3 convolution gives the output channels. Widths are 64, 128, 256, 512, 512 times `width`.
GroupNorm (not the paper's BatchNorm) because training batches are small and inference is batch-free.

Lighting is not predicted: as in the paper it is solved inside `forward` by differentiable linear least
squares (`sh.fit_lighting_torch`) from image ≈ albedo * shadow * E(normal), so gradients of a re-rendering
loss reach the albedo, normal and shadow decoders also through the lighting.

Outputs follow DESIGN.md: albedo in [0, 1]; normals unit, camera frame (x right, y up, z towards the
viewer) with z > 0 by construction (the net predicts (u, v) and n = (u, v, 1) / ‖(u, v, 1)‖); shadow in
[0, 1]; lighting (B, 9, 3) camera frame, Ramamoorthi-Hanrahan convention; shading E(n) (B, 3, H, W).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import sh

if TYPE_CHECKING:
    from ..illumination_prior import IlluminationPrior

SIDE_MULTIPLE = 16  # four 2x2 max-pools
BASE_WIDTHS = (64, 128, 256, 512, 512)  # encoder stage channels at width 1 (paper)
CONVS_PER_STAGE = 3  # 5 stages x 3 = 15 encoder convolutions
PRIOR_SCALE_ITERATIONS = 3  # refinements of the prior's exposure scale, as in sh.fit_lighting


class IRNOutput(NamedTuple):
    """InverseRenderNet outputs (all float, batch-first).

    albedo (B, 3, H, W) in [0, 1]; normals (B, 3, H, W) unit, camera frame, z > 0; shadow (B, 1, H, W) in
    [0, 1]; lighting (B, 9, 3) SH coefficients (camera frame, radiance / π); shading (B, 3, H, W) = E(normals).
    """

    albedo: torch.Tensor
    normals: torch.Tensor
    shadow: torch.Tensor
    lighting: torch.Tensor
    shading: torch.Tensor


def group_count(channels: int, max_groups: int = 8) -> int:
    """GroupNorm groups for `channels`: the largest divisor of `channels` that is <= `max_groups`."""
    if channels < 1 or max_groups < 1:
        raise ValueError(f"channels and max_groups must be positive, got {channels}, {max_groups}")
    return max(d for d in range(1, min(max_groups, channels) + 1) if channels % d == 0)


def _conv_gn_relu(cin: int, cout: int, max_groups: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),  # bias is redundant before GroupNorm
        nn.GroupNorm(group_count(cout, max_groups), cout),
        nn.ReLU(inplace=True),
    )


class _Decoder(nn.Module):
    """Bottleneck (B, widths[-1], H/16, W/16) + skips [(B, widths[k], H/2^k, W/2^k), k=0..3] -> (B, out, H, W)."""

    def __init__(self, widths: tuple[int, ...], out_channels: int, max_groups: int):
        super().__init__()
        blocks = []
        cin = widths[-1]
        for k in range(len(widths) - 2, -1, -1):  # levels 3, 2, 1, 0
            blocks.append(nn.Sequential(_conv_gn_relu(cin + widths[k], widths[k], max_groups),
                                        _conv_gn_relu(widths[k], widths[k], max_groups)))
            cin = widths[k]
        self.blocks = nn.ModuleList(blocks)
        self.out = nn.Conv2d(widths[0], out_channels, 3, padding=1)  # raw output, no norm / activation

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for block, skip in zip(self.blocks, reversed(skips), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.out(x)


def re_render(output: IRNOutput) -> torch.Tensor:
    """Re-rendered linear image albedo * shadow * shading: (B, 3, H, W)."""
    return output.albedo * output.shadow * output.shading


class InverseRenderNet(nn.Module):
    """InverseRenderNet / IRN++: image (B, 3, H, W) linear RGB, H and W divisible by 16 -> `IRNOutput`.

    Args:
        width: channel multiplier; 1.0 gives the paper's 64..512 channels, 0.125 a small CPU variant.
        groups: maximum GroupNorm groups; each layer uses the largest divisor of its channels <= groups.
        prior: optional `IlluminationPrior` (camera frame) regularising the lighting solve (see
            `prior_terms` for its scale); None solves plain least squares.
        albedo_gain: optional (3,) positive factors that multiply the albedo before the lighting solve, so that
            the lighting takes their inverse and albedo * shading is unchanged. Re-rendering leaves the albedo's
            colour free (any per-channel scale moves into the light); trained weights fix it with a calibrated
            gain (`train/colour_gauge.py`). Not a learned weight: not in the state dict.
        prior_pixel_noise: assumed pixel noise (linear image units) weighing the prior against the data,
            default `sh.PRIOR_PIXEL_NOISE` as in `sh.fit_lighting`.
        albedo_weight: in (0, 1], how far `scene.decompose` trusts this network's albedo against the photo's
            ratio to the model, image / (shadow · shading): its albedo is exp(w log albedo + (1 - w) log ratio).
            1 takes the network's albedo as it is. A calibration of trained weights, set in their registry config
            (irn-small.md, "Albedo"); not in the state dict.
    """

    def __init__(self, width: float = 1.0, groups: int = 8, prior: IlluminationPrior | None = None,
                 prior_pixel_noise: float = sh.PRIOR_PIXEL_NOISE, albedo_gain=None, albedo_weight: float = 1.0):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        if groups < 1:
            raise ValueError(f"groups must be >= 1, got {groups}")
        if not prior_pixel_noise > 0:
            raise ValueError(f"prior_pixel_noise must be positive, got {prior_pixel_noise}")
        self.width = width
        self.widths = tuple(max(1, round(c * width)) for c in BASE_WIDTHS)
        stages = []
        cin = 3
        for c in self.widths:
            convs = []
            for _ in range(CONVS_PER_STAGE):
                convs.append(_conv_gn_relu(cin, c, groups))
                cin = c
            stages.append(nn.Sequential(*convs))
        self.encoder = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(2)
        self.albedo_decoder = _Decoder(self.widths, 3, groups)
        self.normal_decoder = _Decoder(self.widths, 2, groups)
        self.shadow_decoder = _Decoder(self.widths, 1, groups)

        gain = np.ones(3) if albedo_gain is None else np.asarray(albedo_gain, dtype=np.float64)
        if gain.shape != (3,) or not (np.isfinite(gain) & (gain > 0)).all():
            raise ValueError(f"albedo_gain must be 3 positive numbers, got {albedo_gain!r}")
        self.register_buffer("albedo_gain", torch.as_tensor(gain, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.albedo_weight = albedo_weight  # checked by its setter

        self.prior_pixel_noise = float(prior_pixel_noise)
        self.has_prior = prior is not None
        if prior is not None:
            # The prior at unit exposure; non-persistent so state_dicts hold only learned weights.
            mean1, precision1 = prior.gaussian(scale=1.0)
            self.register_buffer("prior_mean1", torch.as_tensor(np.asarray(mean1), dtype=torch.float32),
                                 persistent=False)
            self.register_buffer("prior_precision1", torch.as_tensor(np.asarray(precision1), dtype=torch.float32),
                                 persistent=False)

    @property
    def albedo_weight(self) -> float:
        """See the class docstring; set it to recalibrate loaded weights (e.g. `evaluate --albedo-weight`)."""
        return self._albedo_weight

    @albedo_weight.setter
    def albedo_weight(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
            raise ValueError(f"albedo_weight must be in (0, 1], got {value!r}")
        self._albedo_weight = float(value)

    # ------------------------------------------------------------------------------------- lighting

    def prior_terms(self, image, albedo, normals, mask=None, shadow=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior (mean (B, 27), precision (B, 27, 27)) in `sh.fit_lighting_torch`'s units, for these maps.

        Same choice as `sh.fit_lighting` with an `IlluminationPrior`: the prior describes lighting of unit
        DC luminance, so it is scaled to the photo's exposure s (``prior.gaussian(scale=s)``: mean · s,
        precision / s²) and its precision multiplied by ``prior_pixel_noise²`` to be in the units of the
        summed squared pixel residuals. s starts as the DC luminance of the unregularised fit (or of a DC-only
        fit when that is not positive) and is refined `PRIOR_SCALE_ITERATIONS` times from the regularised fit.
        s is computed without gradient: it is an exposure estimate, not something the network should learn
        to move. Shapes as `forward`; raises RuntimeError when the net has no prior.
        """
        if not self.has_prior:
            raise RuntimeError("this InverseRenderNet was built without an illumination prior")
        lum = torch.as_tensor(sh.LUMINANCE, dtype=image.dtype, device=image.device)
        mean1 = self.prior_mean1.to(image.dtype)
        prec1 = self.prior_precision1.to(image.dtype) * self.prior_pixel_noise**2

        def terms(s):  # s (B,) -> mean (B, 27), precision (B, 27, 27)
            return s[:, None] * mean1, prec1 / (s * s)[:, None, None]

        with torch.no_grad():
            args = (image.detach(), albedo.detach(), normals.detach(), mask,
                    None if shadow is None else shadow.detach())
            s = sh.fit_lighting_torch(*args)[:, 0] @ lum  # (B,)
            bad = ~(s > 0)  # also catches NaN from a degenerate item
            if bad.any():
                # DC-only fit: L00 = <a y> / (C4 <a a>) per channel, over valid pixels.
                a = args[1] if args[4] is None else args[1] * args[4]
                w = torch.ones_like(image[:, :1]) if mask is None else mask.to(image.dtype)
                dc = (w * a * args[0]).sum((2, 3)) / (sh.C4 * (w * a * a).sum((2, 3))).clamp_min(1e-12)
                s = torch.where(bad, dc @ lum, s)
            s = s.clamp_min(1e-6)  # an all-dark item keeps a finite (very loose) prior
            for _ in range(PRIOR_SCALE_ITERATIONS - 1):
                s_new = sh.fit_lighting_torch(*args, *terms(s))[:, 0] @ lum
                s = torch.where(s_new > 0, s_new, s)
        return terms(s)

    def solve_lighting(self, image, albedo, normals, mask=None, shadow=None) -> torch.Tensor:
        """Differentiable SH lighting (B, 9, 3) for image, albedo, normals (B, 3, H, W), mask / shadow (B, 1, H, W)."""
        if self.has_prior:
            mean, precision = self.prior_terms(image, albedo, normals, mask, shadow)
            return sh.fit_lighting_torch(image, albedo, normals, mask, shadow, mean, precision)
        return sh.fit_lighting_torch(image, albedo, normals, mask, shadow)

    # -------------------------------------------------------------------------------------- forward

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> IRNOutput:
        """image (B, 3, H, W) linear RGB (H, W divisible by 16); mask (B, 1, H, W) optional pixel weights for
        the lighting solve (e.g. sky = 0) -> `IRNOutput`."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must have shape (B, 3, H, W), got {tuple(image.shape)}")
        h, w = image.shape[-2:]
        if h % SIDE_MULTIPLE or w % SIDE_MULTIPLE or h == 0 or w == 0:
            raise ValueError(f"image height and width must be positive multiples of {SIDE_MULTIPLE}, "
                             f"got shape {tuple(image.shape)}")
        if mask is not None and tuple(mask.shape) != (image.shape[0], 1, h, w):
            raise ValueError(f"mask must have shape {(image.shape[0], 1, h, w)} for image "
                             f"{tuple(image.shape)}, got {tuple(mask.shape)}")

        skips = []
        x = image
        for i, stage in enumerate(self.encoder):
            if i > 0:
                x = self.pool(x)
            x = stage(x)
            skips.append(x)  # (B, widths[i], H / 2^i, W / 2^i)
        bottleneck, skips = skips[-1], skips[:-1]

        albedo = torch.sigmoid(self.albedo_decoder(bottleneck, skips)) * self.albedo_gain  # (B, 3, H, W)
        uv = self.normal_decoder(bottleneck, skips)  # (B, 2, H, W)
        n = torch.cat([uv, torch.ones_like(uv[:, :1])], dim=1)
        normals = n / n.norm(dim=1, keepdim=True)  # norm >= 1: z = 1 / norm > 0, never divides by 0
        shadow = torch.sigmoid(self.shadow_decoder(bottleneck, skips))  # (B, 1, H, W)

        lighting = self.solve_lighting(image, albedo, normals, mask, shadow)  # (B, 9, 3)
        shading = sh.shading_torch(normals, lighting)  # (B, 3, H, W)
        return IRNOutput(albedo, normals, shadow, lighting, shading)


LIT_QUANTILE = 0.99  # `normalise_shadow`: this share of the pixels is at most as lit as "fully lit"


def normalise_shadow(shadow: np.ndarray, lighting: np.ndarray, quantile: float = LIT_QUANTILE):
    """Fix the gauge of the shadow map: (shadow (H, W) / c clipped to 1, lighting (9, 3) * c), c = its quantile.

    Only the product shadow * E(n; lighting) is observed, so the network's shadow is known up to a scale that
    the lighting absorbs (trained weights may, for example, leave every pixel at a visibility of 0.005). Dividing
    by the `quantile` of the map makes the most lit pixels 1 and keeps the product (bar the clipped top share).
    """
    shadow = np.asarray(shadow, dtype=np.float64)
    if shadow.ndim != 2 or np.shape(lighting) != (9, 3):
        raise ValueError(f"shadow must have shape (H, W) and lighting (9, 3), got {shadow.shape} and "
                         f"{np.shape(lighting)}")
    c = max(float(np.quantile(shadow, quantile)), 1e-12)
    return np.clip(shadow / c, 0.0, 1.0).astype(np.float32), np.asarray(lighting, dtype=np.float64) * c


def parameter_count(module: nn.Module) -> int:
    """Number of learnable parameters."""
    return sum(p.numel() for p in module.parameters())


__all__ = ["IRNOutput", "InverseRenderNet", "group_count", "normalise_shadow", "parameter_count", "re_render",
           "SIDE_MULTIPLE"]
