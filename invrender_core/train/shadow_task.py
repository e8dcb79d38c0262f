"""`invrender train shadow`: the shadow refiner (`nets/shadow_refine.py`) on the two-light pairs.

Each pair's photo (light A) is decomposed by the shipped networks and light B's sun is marched through the fused
depth exactly as `relight.Relighter` does for a user (`relight_task.prepare`); the network learns to correct
that marched visibility towards B's true visibility (`relight_gt_shadow`, rendered by Cycles). The true
visibility and normals are training targets only, never inputs.

Loss: binary cross-entropy against the true visibility over non-sky pixels, plus one minus the soft IoU of the
cast shadow over sun-facing non-sky pixels (the region `relight_task.shadow_counts` scores): shadows cover a
tenth of that region, and cross-entropy alone would learn to predict none.
"""

from __future__ import annotations

import numpy as np
import torch

from ..io import resize_linear
from ..nets.shadow_refine import ShadowRefiner, light_features, photo_features, visibility_logit
from .relight_task import PairItems, iou_counts, shadow_region

NORMAL_X, SUN_X = 2, 5  # feature channels that flip sign in a left-right mirror
IOU_WEIGHT = 1.0


class ShadowPairs(PairItems):
    """Training items of a split's pairs at `model`'s working size: features (INPUT_CHANNELS, h, w), target
    visibility (1, h, w), ground (1, h, w) non-sky pixels, region (1, h, w) sun-facing ground. Decomposed once,
    in memory; shadows as marched."""

    def __init__(self, root, split: str, model: ShadowRefiner, max_views: int | None = None, augment: bool = True,
                 seed: int = 0):
        super().__init__(root, split, lambda pair: shadow_item(pair, model), max_views, augment, seed)

    @staticmethod
    def mirror_features(features: torch.Tensor) -> torch.Tensor:
        features[[NORMAL_X, SUN_X]] *= -1.0
        return features


def shadow_item(pair: dict, model: ShadowRefiner) -> dict[str, np.ndarray]:
    """One training item (`ShadowPairs`) from a `relight_task.prepare` pair."""
    view, estimate, relighter = pair["view"], pair["estimate"], pair["relighter"]
    H, W = view["image"].shape[:2]
    w, h = model.working_size(W, H)

    def small(m):
        return resize_linear(np.asarray(m, np.float32), w, h).reshape(h, w)

    sky = view["sky_mask"].astype(bool)
    photo = photo_features(estimate.normals, estimate.depth_fused, relighter.sky, estimate.image, size=(w, h))
    features = light_features(small(pair["relit"].visibility), photo, pair["lighting"].sun.direction)
    return {"features": features.transpose(2, 0, 1).copy(),
            "target": np.clip(small(view["relight_gt_shadow"]), 0.0, 1.0)[None],
            "ground": (small(~sky) > 0.5)[None].astype(np.float32),
            "region": (small(shadow_region(view)) > 0.5)[None].astype(np.float32)}


def shadow_loss(logit: torch.Tensor, target: torch.Tensor, ground: torch.Tensor, region: torch.Tensor
                ) -> dict[str, torch.Tensor]:
    """The module docstring's loss; all (B, 1, h, w), logit of the visibility."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, target, reduction="none")
    bce = (bce * ground).sum() / ground.sum().clamp(min=1.0)
    shadow, true_shadow = (1.0 - torch.sigmoid(logit)) * region, (1.0 - target) * region
    inter = (shadow * true_shadow).sum()
    union = (shadow + true_shadow - shadow * true_shadow).sum().clamp(min=1.0)
    soft_iou = inter / union
    return {"total": bce + IOU_WEIGHT * (1.0 - soft_iou), "bce": bce, "soft_iou": soft_iou.detach()}


class ShadowTask:
    """`invrender train shadow`: the shadow refiner on the two-light pairs of `data`'s train split; evaluated on
    the held-out split of `eval_data` (default `data`)."""

    default_lr = 2e-3

    def __init__(self, data, width: float = 16, seed: int = 0, eval_data=None, eval_views: int = 60):
        self.data, self.seed = data, int(seed)
        self.model = ShadowRefiner(width=width)  # the net refuses a width that is not a multiple of 4
        self.eval_data = data if eval_data is None else eval_data
        self.eval_views = int(eval_views)
        self._eval = None

    def make_dataset(self) -> ShadowPairs:
        return ShadowPairs(self.data, "train", self.model, seed=self.seed)

    def compute_losses(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return shadow_loss(visibility_logit(model, batch["features"]), batch["target"], batch["ground"],
                           batch["region"])

    def evaluate(self, model) -> dict[str, float]:
        """Cast-shadow IoU (as `relight_task.shadow_counts`, at the working size), refined and marched, on up
        to eval_views held-out pairs."""
        if self._eval is None:
            try:
                self._eval = ShadowPairs(self.eval_data, "heldout", self.model, max_views=self.eval_views,
                                         augment=False)
            except ValueError:
                self._eval = []
        if len(self._eval) == 0:
            return {}
        device = next(model.parameters()).device
        counts = {"refined": np.zeros(2), "marched": np.zeros(2)}
        with torch.no_grad():
            for item in self._eval.items:
                x = torch.from_numpy(item["features"][None]).to(device)
                refined = torch.sigmoid(visibility_logit(model, x))[0, 0].cpu().numpy()
                for name, visibility in (("refined", refined), ("marched", item["features"][0])):
                    counts[name] += iou_counts(visibility, item["target"][0], item["region"][0] > 0)
        return {f"shadow_iou_{name}": float(c[0] / max(c[1], 1.0)) for name, c in counts.items()}

