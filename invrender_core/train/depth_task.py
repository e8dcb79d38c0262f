"""The depth network's training task (for `trainer.Trainer`): MegaDepth's hourglass supervised by MVS depth.

Losses (Li & Snavely, CVPR 2018), on the network's log depth against the view's MVS depth where it exists:
    total = L_si + grad_weight * L_grad + ordinal_weight * L_ord
with L_si `scale_invariant_log_loss`, L_grad the multi-scale `gradient_matching_loss` and L_ord the robust
`ordinal_loss` on pairs drawn by `sample_ordinal_pairs` from the MVS depth (pairs whose depths differ by more
than `ordinal_min_ratio`, so MVS noise rarely flips a label). MegaDepth's weights: 0.5 and 0.1.

Input encoding: `MegaDepthHourglass` takes sRGB-encoded images in [0, 1] (the released weights were trained on
photos / 255), so the task encodes the dataset's linear images with `depth_input`; the same function must
prepare images at inference so trained and released weights see the same input.

Evaluation: `si_log_rmse` of exp(network output) against the ground-truth depth of held-out views on non-sky
pixels, next to the constant-depth baseline (the spread of log gt depth).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..nets.depth import SIDE_MULTIPLE, MegaDepthHourglass
from .datasets import DepthDataset, EvalViews
from .depth_losses import (
    gradient_matching_loss,
    ordinal_loss,
    sample_ordinal_pairs,
    scale_invariant_log_loss,
    si_log_rmse,
    sky_far_loss,
)
from .irn_losses import srgb_encode
from .trainer import checked_loss_weights

__all__ = ["DepthTask", "depth_input"]



def depth_input(image_linear: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) linear RGB -> (B, 3, H, W) sRGB-encoded in [0, 1]: the input `MegaDepthHourglass` expects."""
    if image_linear.ndim != 4 or image_linear.shape[1] != 3:
        raise ValueError(f"image must have shape (B, 3, H, W), got {tuple(image_linear.shape)}")
    return srgb_encode(image_linear.clamp(0.0, 1.0))


def _centre_crop16(a: np.ndarray) -> np.ndarray:
    """Centre crop of an (H, W, ...) array to sides that are multiples of 16 (the hourglass's pooling)."""
    h, w = a.shape[:2]
    ch, cw = h - h % SIDE_MULTIPLE, w - w % SIDE_MULTIPLE
    r, c = (h - ch) // 2, (w - cw) // 2
    return a[r:r + ch, c:c + cw]


class DepthTask:
    """Train `MegaDepthHourglass(width)` on the MVS depth of a dataset's train split.

    Args:
        data: multiview dataset folder, COLMAP workspace folder or scene source (see `datasets.open_source`).
        width: the hourglass's channel multiplier (1.0 = the released layout; 0.25 trains fast on a CPU).
        crop: (height, width) training crop, multiples of 16 (None: full views, which must then be multiples
            of 16 and all of one size).
        seed: dataset augmentation seed.
        eval_data: multiview dataset with a "heldout" split for `evaluate` (default: `data` when it is a folder
            with held-out scenes; evaluation is skipped, returning {}, when there is none).
        eval_views: how many held-out views `evaluate` scores (spread over the split).
        grad_weight, ordinal_weight, sky_weight: loss weights (sky: `sky_far_loss` on the input-derived sky);
        loss_weights: overrides of those by the names of `compute_losses`' terms ("gradient", "ordinal", "sky"),
            as the command line's `--loss-weight TERM=W` gives them;
        grad_scales: scales of the gradient term;
        num_pairs: ordinal pairs per image; ordinal_min_ratio: their minimum depth ratio.
        augment: dataset augmentation (random crop offset, flips, exposure).
    """

    def __init__(self, data, width: float = 0.25, crop: tuple[int, int] | None = None, seed: int = 0,
                 eval_data: str | Path | None = None, eval_views: int = 16, grad_weight: float = 0.5,
                 ordinal_weight: float = 0.1, grad_scales: int = 4, num_pairs: int = 256,
                 ordinal_min_ratio: float = 1.1, augment: bool = True, sky_weight: float = 0.01,
                 loss_weights: dict[str, float] | None = None):
        if crop is not None and (len(crop) != 2 or any(int(c) != c or c < 1 or c % SIDE_MULTIPLE for c in crop)):
            raise ValueError(f"crop must be (height, width) multiples of {SIDE_MULTIPLE}, got {crop!r}")
        overrides = checked_loss_weights(loss_weights, {"gradient", "ordinal", "sky"})
        grad_weight = overrides.get("gradient", grad_weight)
        ordinal_weight = overrides.get("ordinal", ordinal_weight)
        sky_weight = overrides.get("sky", sky_weight)
        if grad_weight < 0 or ordinal_weight < 0 or sky_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got {grad_weight}, {ordinal_weight}, {sky_weight}")
        self.sky_weight = float(sky_weight)
        self.data, self.crop, self.seed, self.augment = data, crop, int(seed), bool(augment)
        self.grad_weight, self.ordinal_weight, self.grad_scales = float(grad_weight), float(ordinal_weight), grad_scales
        self.num_pairs, self.ordinal_min_ratio = int(num_pairs), float(ordinal_min_ratio)
        self.model = MegaDepthHourglass(width=width)
        self.eval_views_count = int(eval_views)
        if eval_data is None and isinstance(data, str | Path) and any(Path(data).glob("scene_*/scene.json")):
            eval_data = data
        self.eval_data = eval_data
        self._eval_views: EvalViews | None = None

    def make_dataset(self) -> DepthDataset:
        return DepthDataset(self.data, "train", crop=self.crop, seed=self.seed, augment=self.augment)

    def compute_losses(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """batch: image (B, 3, H, W) linear, depth (B, 1, H, W) MVS depth, mask (B, 1, H, W) -> loss terms."""
        image, depth, mask = batch["image"], batch["depth"], batch["mask"]
        if image.ndim != 4 or depth.shape != (image.shape[0], 1, *image.shape[2:]) or mask.shape != depth.shape:
            raise ValueError(f"batch shapes image {tuple(image.shape)}, depth {tuple(depth.shape)}, mask "
                             f"{tuple(mask.shape)}: expected (B, 3, H, W), (B, 1, H, W), (B, 1, H, W)")
        log_depth = model(depth_input(image)).float()  # (B, 1, H, W); float32 even under autocast
        si = scale_invariant_log_loss(log_depth, depth, mask)
        grad = gradient_matching_loss(log_depth, depth, mask, scales=self.grad_scales)
        pairs_i, pairs_j, labels = sample_ordinal_pairs(depth, mask, self.num_pairs, self.ordinal_min_ratio)
        ordinal = ordinal_loss(log_depth, pairs_i, pairs_j, labels)
        sky = sky_far_loss(log_depth, batch["sky"], mask)
        total = si + self.grad_weight * grad + self.ordinal_weight * ordinal + self.sky_weight * sky
        return {"total": total, "si_log": si, "gradient": grad, "ordinal": ordinal, "sky": sky}

    def evaluate(self, model, batch_size: int = 8) -> dict[str, float]:
        """SI log RMSE on up to `eval_views` held-out views (non-sky pixels with gt depth); {} without any."""
        if self.eval_data is None:
            return {}
        if self._eval_views is None:  # listed once: scene.json files are read a single time per run
            self._eval_views = EvalViews(self.eval_data, "heldout", max_views=self.eval_views_count)
        views = self._eval_views
        if len(views) == 0:
            return {}
        device = next(model.parameters()).device
        net, constant = [], []
        was_training = model.training
        model.eval()
        try:
            for start in range(0, len(views), batch_size):
                chunk = [views[k] for k in range(start, min(start + batch_size, len(views)))]
                by_shape: dict[tuple, list] = {}
                for v in chunk:  # views of one batch must share a size
                    by_shape.setdefault(_centre_crop16(v["image"]).shape, []).append(v)
                for group in by_shape.values():
                    image = np.stack([_centre_crop16(v["image"]) for v in group]).transpose(0, 3, 1, 2)
                    gt = np.stack([_centre_crop16(v["gt_depth"]) for v in group])[:, None]  # (B, 1, H, W)
                    ok = np.stack([_centre_crop16(~v["sky_mask"] & (v["gt_depth"] > 0)) for v in group])[:, None]
                    with torch.no_grad():
                        x = depth_input(torch.from_numpy(np.ascontiguousarray(image)).to(device))
                        pred = torch.exp(model(x).float()).cpu().numpy()
                    for p, g, m in zip(pred, gt, ok, strict=True):
                        if m.any():
                            net.append(si_log_rmse(p[0], g[0], m[0]))
                            constant.append(si_log_rmse(np.ones_like(g[0]), g[0], m[0]))
        finally:
            model.train(was_training)
        if not net:
            return {}
        return {"si_log_rmse": float(np.mean(net)), "si_log_rmse_constant": float(np.mean(constant)),
                "eval_views": float(len(net))}
