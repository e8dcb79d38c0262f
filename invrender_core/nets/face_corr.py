"""Face correspondence network (Koizumi & Smith, ECCV 2020, "backwards rasterisation").

An image-to-image U-Net: from a face crop it predicts, per pixel, the point of the morphable model's mean
shape that the pixel sees ("template coordinates", `face.render.TemplateFrame`, about [-1, 1]), whether the
pixel is face at all, and how sure it is. The least-squares fitting (`face.fit`) turns these dense
correspondences into shape, pose and camera.

Input (B, 3, S, S) sRGB in [0, 1], S a multiple of 16. Output (B, 5, S, S): template x, y, z, the face-mask
logit and the log of the template error scale b (a Laplace distribution: training minimises
|error| / b + log b over face pixels), so `confidence` = P(face) / (1 + b / CONFIDENT_SCALE).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

DEFAULT_WIDTH = 16
DEFAULT_SIZE = 128
LEVELS = 4  # poolings: input sides must be multiples of 2**LEVELS
OUTPUT_CHANNELS = 5
TEMPLATE_LIMIT = 1.5  # template coordinates lie in about [-1, 1]
LOG_SCALE_RANGE = (-7.0, 1.0)
CONFIDENT_SCALE = 0.02  # template units (about 2 mm on a human face model): confidence 0.5 at this error scale


def _block(cin: int, cout: int) -> nn.Sequential:
    groups = 4 if cout % 4 == 0 else 1
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU())


class FaceCorrespondenceNet(nn.Module):
    """crop (B, 3, S, S) sRGB in [0, 1] -> (B, 5, S, S): template xyz, mask logit, log error scale."""

    def __init__(self, width: int = DEFAULT_WIDTH, size: int = DEFAULT_SIZE):
        super().__init__()
        if width < 4 or width % 4:
            raise ValueError(f"width must be a positive multiple of 4, got {width}")
        if size % (1 << LEVELS):
            raise ValueError(f"size must be a multiple of {1 << LEVELS}, got {size}")
        self.size = int(size)
        channels = [int(width) * m for m in (1, 2, 4, 8, 8)]  # per level, the last is the bottleneck
        self.down = nn.ModuleList([_block(3, channels[0])])
        self.down.extend(_block(channels[i], channels[i + 1]) for i in range(LEVELS))
        self.up = nn.ModuleList(_block(channels[i + 1] + channels[i], channels[i]) for i in reversed(range(LEVELS)))
        self.head = nn.Conv2d(channels[0], OUTPUT_CHANNELS, 1)

    def forward(self, crop: torch.Tensor) -> torch.Tensor:
        side = 1 << LEVELS
        if crop.ndim != 4 or crop.shape[1] != 3 or crop.shape[2] % side or crop.shape[3] % side:
            raise ValueError(f"crop must have shape (B, 3, S, S) with sides multiples of {side}, "
                             f"got {tuple(crop.shape)}")
        x = crop * 2.0 - 1.0
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else nn.functional.avg_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = block(torch.cat([nn.functional.interpolate(x, size=skip.shape[2:], mode="bilinear"), skip], 1))
        out = self.head(x)  # (B, 5, S, S)
        template = TEMPLATE_LIMIT * torch.tanh(out[:, :3] / TEMPLATE_LIMIT)
        log_scale = out[:, 4:5].clamp(*LOG_SCALE_RANGE)
        return torch.cat([template, out[:, 3:4], log_scale], 1)

    def predict(self, crops: np.ndarray) -> dict[str, np.ndarray]:
        """crops (N, S, S, 3) uint8 sRGB -> template (N, S, S, 3), mask probability (N, S, S) and
        confidence (N, S, S) in [0, 1], float32."""
        if crops.ndim != 4 or crops.shape[3] != 3:
            raise ValueError(f"crops must have shape (N, S, S, 3), got {crops.shape}")
        device = next(self.parameters()).device
        # Channels-last (NHWC) tensors run the convolutions about 40 % faster on a CPU (bench_face.py). The
        # weights are converted outside inference mode: made inside it, they could no longer be trained (a
        # training run that scored its network here failed at its next step).
        with torch.no_grad():
            self.to(memory_format=torch.channels_last)
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2))).to(device).float() / 255.0
            return output_to_numpy(self(x.contiguous(memory_format=torch.channels_last)))


def output_to_numpy(out: torch.Tensor) -> dict[str, np.ndarray]:
    """Network output (B, 5, S, S) -> template (B, S, S, 3), mask probability and confidence (B, S, S), float32
    numpy arrays (what `predict` returns)."""
    template, mask, confidence = split_output(out.detach().float())
    return dict(template=template.permute(0, 2, 3, 1).cpu().numpy(), mask=mask[:, 0].cpu().numpy(),
                confidence=confidence[:, 0].cpu().numpy())


def split_output(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, 5, S, S) -> template (B, 3, S, S), mask probability (B, 1, S, S), confidence (B, 1, S, S)."""
    mask = torch.sigmoid(out[:, 3:4])
    scale = torch.exp(out[:, 4:5])
    return out[:, :3], mask, mask / (1.0 + scale / CONFIDENT_SCALE)


def correspondence_loss(out: torch.Tensor, template: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Training losses for network output `out` (B, 5, S, S) against the true `template` (B, 3, S, S) and
    face `mask` (B, 1, S, S) in {0, 1}: mask cross-entropy, and on face pixels the Laplace negative
    log-likelihood of the template error (teaches both the coordinates and their error scale) plus the plain
    L1 error (keeps the coordinates learning while the scale is still large)."""
    if out.shape[1] != OUTPUT_CHANNELS or template.shape[1] != 3 or mask.shape[1] != 1:
        raise ValueError(f"out (B, 5, S, S), template (B, 3, S, S), mask (B, 1, S, S) expected, got "
                         f"{tuple(out.shape)}, {tuple(template.shape)}, {tuple(mask.shape)}")
    mask_loss = nn.functional.binary_cross_entropy_with_logits(out[:, 3:4], mask)
    error = (out[:, :3] - template).abs().sum(1, keepdim=True)  # (B, 1, S, S) L1 over xyz
    log_scale = out[:, 4:5]
    count = mask.sum().clamp(min=1.0)
    nll = ((error / torch.exp(log_scale) + 3.0 * log_scale) * mask).sum() / count
    l1 = (error * mask).sum() / count
    return {"mask": mask_loss, "nll": 0.1 * nll, "l1": l1}


def load(name_or_path, weights_dir=None, device="cpu") -> FaceCorrespondenceNet:
    """The registered network (name) or a .safetensors file (path), loaded strictly, in eval()."""
    from . import weights

    return weights.load_named(name_or_path, weights_dir, expect="face_corr", device=device)
