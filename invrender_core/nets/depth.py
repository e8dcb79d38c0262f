"""Single-image depth: the hourglass network released with MegaDepth (Li & Snavely, CVPR 2018).

The architecture is the "depth in the wild" hourglass of Chen et al. (NIPS 2016): a 7x7 stem, then four
nested levels, each the sum of a full-resolution branch and a branch that average-pools by 2, runs the
next level between inception modules, and upsamples back (nearest). Inception modules concatenate a 1x1
convolution with three 1x1 -> kxk convolutions; every convolution is followed by BatchNorm (affine=False)
and ReLU. The last 3x3 convolution gives one channel: log depth (relative scale; depth = exp(output)).

The module tree reproduces the parameter names of the released `best_generalization_net_G.pth` (after
`strip_dataparallel`): the top level is a Sequential `0..4`, each level is a Sequential holding one
two-branch sum, and each inception module's children are its branches. Four levels of pooling mean the
input sides must be divisible by 16.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

DATAPARALLEL_PREFIX = "module."
SIDE_MULTIPLE = 16  # four AvgPool2d(2) levels

# An inception configuration, as in Chen et al.: first the 1x1 branch's output channels, then one
# (kernel, bottleneck channels, output channels) triple per larger branch. Channel counts are at width 1.
InceptionConfig = tuple[int, Sequence[tuple[int, int, int]]]


def _inc(out_1x1: int, *branches: tuple[int, int, int]) -> InceptionConfig:
    return out_1x1, branches


# The seven configurations the hourglass uses, named I<branch output>_K<kernels>_MID<bottleneck> (width 1).
I16_K3711_MID64 = _inc(16, (3, 64, 16), (7, 64, 16), (11, 64, 16))
I16_K3711_MID32 = _inc(16, (3, 32, 16), (7, 32, 16), (11, 32, 16))
I32_K357_MID32 = _inc(32, (3, 32, 32), (5, 32, 32), (7, 32, 32))
I32_K357_MID64 = _inc(32, (3, 64, 32), (5, 64, 32), (7, 64, 32))
I32_K3711_MID64 = _inc(32, (3, 64, 32), (7, 64, 32), (11, 64, 32))
I64_K357_MID32 = _inc(64, (3, 32, 64), (5, 32, 64), (7, 32, 64))
I64_K3711_MID64 = _inc(64, (3, 64, 64), (7, 64, 64), (11, 64, 64))


class _BatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d without the `num_batches_tracked` counter, which the released checkpoint predates.

    The momentum is fixed (0.1), so the counter is never read; dropping it keeps `state_dict()` equal to
    the checkpoint's layout, and loading ignores the key when a re-saved checkpoint carries it.
    """

    def __init__(self, num_features: int, affine: bool = False):
        super().__init__(num_features, affine=affine, track_running_stats=True)
        self.num_batches_tracked = None  # a None buffer is neither saved nor expected

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        # Skip _NormBase's hook: for version-less dicts it would re-insert the counter as an unexpected key.
        nn.Module._load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                                        unexpected_keys, error_msgs)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int) -> list[nn.Module]:
    """Conv (same padding) + BatchNorm(affine=False) + ReLU, as three Sequential entries."""
    return [nn.Conv2d(in_ch, out_ch, kernel, padding=(kernel - 1) // 2), _BatchNorm2d(out_ch), nn.ReLU(inplace=True)]


class Inception(nn.ModuleList):
    """Concatenation of a 1x1 branch and 1x1 -> kxk branches: (B, C_in, H, W) -> (B, sum of outputs, H, W).

    Children `0..n` are the branches (Sequential conv, bn, relu[, conv, bn, relu]), as in the checkpoint.
    """

    def __init__(self, in_ch: int, config: InceptionConfig, width: float = 1.0):
        out_1x1, larger = config
        branches = [nn.Sequential(*_conv_bn_relu(in_ch, _scaled(out_1x1, width), 1))]
        for kernel, mid, out in larger:
            branches.append(nn.Sequential(*_conv_bn_relu(in_ch, _scaled(mid, width), 1),
                                          *_conv_bn_relu(_scaled(mid, width), _scaled(out, width), kernel)))
        super().__init__(branches)
        self.out_channels = sum(branch[-3].out_channels for branch in branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self], dim=1)


class _SumOfBranches(nn.ModuleList):
    """Children `0` and `1` see the same input; their (equal-shaped) outputs are added."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[0](x) + self[1](x)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


LevelBuilder = Callable[[int, float], tuple[nn.Module, int]]


def _chain(in_ch: int, items: Sequence[InceptionConfig | nn.Module | LevelBuilder],
           width: float) -> tuple[list[nn.Module], int]:
    """Build a branch from inception configs and ready modules, threading the channel count through.

    A level builder (a function `(in_ch, width) -> (module, out_ch)`) may also appear; it is called in place.
    """
    modules, ch = [], in_ch
    for item in items:
        if isinstance(item, nn.Module):  # pooling / upsampling: channel count unchanged
            modules.append(item)
        elif callable(item):
            module, ch = item(ch, width)
            modules.append(module)
        else:
            module = Inception(ch, item, width)
            ch = module.out_channels
            modules.append(module)
    return modules, ch


def _level(in_ch: int, width: float, full_res: Sequence, inner: Sequence,
           half_res_first: bool) -> tuple[nn.Sequential, int]:
    """One hourglass level: full-resolution branch + (pool, inner, upsample) branch, summed.

    `half_res_first` keeps the released child order (Channels3/4 list the pooled branch first).
    """
    full, full_ch = _chain(in_ch, full_res, width)
    half, half_ch = _chain(in_ch, [nn.AvgPool2d(2), *inner, nn.Upsample(scale_factor=2, mode="nearest")], width)
    if full_ch != half_ch:  # cannot happen for the built-in configurations: both branches end alike
        raise ValueError(f"hourglass branches disagree: {full_ch} vs {half_ch} channels")
    branches = [nn.Sequential(*half), nn.Sequential(*full)] if half_res_first else \
        [nn.Sequential(*full), nn.Sequential(*half)]
    return nn.Sequential(_SumOfBranches(branches)), full_ch


def level1(in_ch: int, width: float) -> tuple[nn.Sequential, int]:
    """Innermost level (1/16 resolution inside), 256 channels at width 1 ("Channels1")."""
    return _level(in_ch, width,
                  full_res=[I64_K357_MID32, I64_K357_MID32],
                  inner=[I64_K357_MID32, I64_K357_MID32, I64_K357_MID32], half_res_first=False)


def level2(in_ch: int, width: float) -> tuple[nn.Sequential, int]:
    """Third level (1/8 inside), 256 channels at width 1 ("Channels2")."""
    return _level(in_ch, width,
                  full_res=[I64_K357_MID32, I64_K3711_MID64],
                  inner=[I64_K357_MID32, I64_K357_MID32, level1, I64_K357_MID32, I64_K3711_MID64],
                  half_res_first=False)


def level3(in_ch: int, width: float) -> tuple[nn.Sequential, int]:
    """Second level (1/4 inside), 128 channels at width 1 ("Channels3")."""
    return _level(in_ch, width,
                  full_res=[I32_K357_MID32, I32_K3711_MID64],
                  inner=[I32_K357_MID32, I64_K357_MID32, level2, I64_K357_MID32, I32_K357_MID32],
                  half_res_first=True)


def level4(in_ch: int, width: float) -> tuple[nn.Sequential, int]:
    """Outer level (1/2 inside), 128 -> 64 channels at width 1 ("Channels4")."""
    return _level(in_ch, width,
                  full_res=[I16_K3711_MID64],
                  inner=[I32_K357_MID32, I32_K357_MID32, level3, I32_K357_MID64, I16_K3711_MID32],
                  half_res_first=True)


class MegaDepthHourglass(nn.Sequential):
    """MegaDepth's hourglass: (B, 3, H, W) image in [0, 1] -> (B, 1, H, W) log depth (relative scale).

    Args:
        width: channel multiplier. 1.0 is the released layout (loads `best_generalization_net_G.pth` after
            `strip_dataparallel`); smaller values (e.g. 0.25) keep the design with fewer channels.

    The input is sRGB-encoded RGB in [0, 1] (MegaDepth trained on photos divided by 255); H and W must be
    multiples of 16.
    """

    def __init__(self, width: float = 1.0):
        if not width > 0:
            raise ValueError(f"width must be positive, got {width}")
        stem_ch = _scaled(128, width)
        hourglass, out_ch = level4(stem_ch, width)
        super().__init__(
            nn.Conv2d(3, stem_ch, 7, padding=3),  # 0
            _BatchNorm2d(stem_ch, affine=True),  # 1: the only affine BatchNorm in the released net
            nn.ReLU(inplace=True),  # 2
            hourglass,  # 3
            nn.Conv2d(out_ch, 1, 3, padding=1),  # 4: log depth
        )
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1, H, W) log depth; raises ValueError unless H, W are multiples of 16."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected an image batch of shape (B, 3, H, W), got {tuple(x.shape)}")
        if x.shape[2] % SIDE_MULTIPLE or x.shape[3] % SIDE_MULTIPLE:
            raise ValueError(f"image sides must be multiples of {SIDE_MULTIPLE}, got shape {tuple(x.shape)} "
                             f"(pad or resize to e.g. (B, 3, {_round_up(x.shape[2])}, {_round_up(x.shape[3])}))")
        return super().forward(x)  # (B, 1, H, W)


def _round_up(side: int) -> int:
    return -(-side // SIDE_MULTIPLE) * SIDE_MULTIPLE


def strip_dataparallel(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the `module.` prefix that `nn.DataParallel` adds to every key (keys without it are kept)."""
    return {k.removeprefix(DATAPARALLEL_PREFIX): v for k, v in state_dict.items()}


def add_dataparallel(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reverse of `strip_dataparallel`: prefix every key with `module.` (for comparing with released files)."""
    return {k if k.startswith(DATAPARALLEL_PREFIX) else DATAPARALLEL_PREFIX + k: v for k, v in state_dict.items()}
