"""`invrender train shadow`: the shadow refiner (`nets/shadow_refine.py`) on the two-light pairs.

Each pair's photo (light A) is decomposed by the shipped networks and light B's sun is marched through the fused
depth exactly as `relight.Relighter` does for a user (`relight_task.prepare`); the network learns to correct
that marched visibility towards B's true visibility (`relight_gt_shadow`, rendered by Cycles). The true
visibility and normals are training targets only, never inputs.

Loss: binary cross-entropy against the true visibility over non-sky pixels, plus IOU_WEIGHT times one minus the
soft IoU of the cast shadow over sun-facing non-sky pixels (the region `relight_task.shadow_counts` scores):
shadows cover a tenth of that region, and cross-entropy alone would learn to predict none.

Calibration (`python -m invrender_core.train.shadow_task`, after training): a cast shadow is where the visibility
is below 0.5, but a network trained on cross-entropy is sure of a pixel's shadow only where most similar pixels
are shadowed, and the IoU of a rare class is highest when its unsure pixels count too. `calibrate` finds the
visibility threshold that maximises the pooled IoU on validation pairs and moves it to 0.5 by an offset of the
head's bias, so the relit image's shadows are the ones that score best.

    python -m invrender_core.train.shadow_task --weights runs/X/model.safetensors --data datagen/out/relight \
        --split train --out runs/X/calibrated.safetensors
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ..io import resize_linear
from ..nets.shadow_refine import ShadowRefiner, light_features, photo_features, visibility_logit
from .relight_task import SHADOW_THRESHOLD, PairItems, iou_counts, prepare, shadow_region
from .trainer import checked_loss_weights, save_safetensors

NORMAL_X, SUN_X = 2, 5  # feature channels that flip sign in a left-right mirror
# Chosen on the validation views (shadow-refine-small.md): IoU 0.422 / 0.446 at weights 1 / 3 in short runs.
IOU_WEIGHT = 3.0
CALIBRATION_THRESHOLDS = tuple(round(0.3 + 0.05 * k, 2) for k in range(13))  # visibility thresholds 0.3 ... 0.9
# IoUs this close to the best count as equal: the IoU is flat around its best (0.4643-0.4662 from 0.6 to 0.8 on
# shadow-refine-small's 180 validation views), and the smallest shift of the visibility among them is kept.
CALIBRATION_TOLERANCE = 0.002


class ShadowPairs(PairItems):
    """Training items of a split's pairs at `model`'s working size: features (INPUT_CHANNELS, h, w), target
    visibility (1, h, w), ground (1, h, w) non-sky pixels, region (1, h, w) sun-facing ground. Decomposed once,
    in memory; shadows as marched."""

    def __init__(self, root, split: str, model: ShadowRefiner, max_views: int | None = None, augment: bool = True,
                 seed: int = 0):
        super().__init__(root, split, lambda path: [shadow_item(prepare(path), model)], max_views, augment, seed)

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


def shadow_loss(logit: torch.Tensor, target: torch.Tensor, ground: torch.Tensor, region: torch.Tensor,
                iou_weight: float = IOU_WEIGHT) -> dict[str, torch.Tensor]:
    """The module docstring's loss, the soft IoU term weighted by iou_weight; all (B, 1, h, w), logit of the
    visibility."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, target, reduction="none")
    bce = (bce * ground).sum() / ground.sum().clamp(min=1.0)
    shadow, true_shadow = (1.0 - torch.sigmoid(logit)) * region, (1.0 - target) * region
    inter = (shadow * true_shadow).sum()
    union = (shadow + true_shadow - shadow * true_shadow).sum().clamp(min=1.0)
    soft_iou = inter / union
    return {"total": bce + iou_weight * (1.0 - soft_iou), "bce": bce, "soft_iou": soft_iou.detach()}


class ShadowTask:
    """`invrender train shadow`: the shadow refiner on the two-light pairs of `data`'s train split; evaluated on
    the held-out split of `eval_data` (default `data`)."""

    default_lr = 2e-3
    network = ShadowRefiner

    def __init__(self, data, width: float = 16, seed: int = 0, eval_data=None, eval_views: int = 60,
                 loss_weights: dict[str, float] | None = None):
        self.iou_weight = checked_loss_weights(loss_weights, {"iou"}).get("iou", IOU_WEIGHT)
        self.data, self.seed = data, int(seed)
        self.model = self.network(width=width)  # the net refuses a width that is not a multiple of 4
        self.eval_data = data if eval_data is None else eval_data
        self.eval_views = int(eval_views)
        self._eval = None

    def make_dataset(self) -> ShadowPairs:
        return ShadowPairs(self.data, "train", self.model, seed=self.seed)

    def compute_losses(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return shadow_loss(visibility_logit(model, batch["features"]), batch["target"], batch["ground"],
                           batch["region"], self.iou_weight)

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
        counts = {"refined": np.zeros(2), "marched": np.zeros(2)}
        for item in self._eval.items:
            for name, visibility in (("refined", refined_visibility(model, item)), ("marched", item["features"][0])):
                counts[name] += iou_counts(visibility, item["target"][0], item["region"][0] > 0)
        return {f"shadow_iou_{name}": float(c[0] / max(c[1], 1.0)) for name, c in counts.items()}


def refined_visibility(model, item: dict[str, np.ndarray]) -> np.ndarray:
    """(h, w) refined visibility of one `ShadowPairs` item at the working size."""
    device = next(model.parameters()).device
    with torch.no_grad():
        x = torch.from_numpy(item["features"][None]).to(device)
        return torch.sigmoid(visibility_logit(model, x))[0, 0].cpu().numpy()


def iou_by_threshold(model, items, thresholds=CALIBRATION_THRESHOLDS) -> dict[float, float]:
    """Pooled cast-shadow IoU of `items` (`ShadowPairs` items) with the shadow cut at each visibility threshold."""
    counts = {t: np.zeros(2) for t in thresholds}
    for item in items:
        visibility = refined_visibility(model, item)
        for t in thresholds:
            # iou_counts cuts at SHADOW_THRESHOLD: the visibility moved so that t falls there
            counts[t] += iou_counts(visibility + (SHADOW_THRESHOLD - t), item["target"][0], item["region"][0] > 0)
    return {t: float(c[0] / max(c[1], 1.0)) for t, c in counts.items()}


def calibrate(model: ShadowRefiner, items, thresholds=CALIBRATION_THRESHOLDS) -> tuple[float, dict[float, float]]:
    """Move the visibility threshold of the best pooled IoU on `items` to SHADOW_THRESHOLD (0.5), by adding a
    logit offset to `model`'s head bias in place. Returns (offset, {threshold: IoU}); of the thresholds whose IoU
    is within CALIBRATION_TOLERANCE of the best, the one nearest 0.5 wins."""
    table = iou_by_threshold(model, items, thresholds)
    top = max(table.values())
    best = min((t for t in table if table[t] >= top - CALIBRATION_TOLERANCE), key=lambda t: abs(t - SHADOW_THRESHOLD))
    offset = math.log(SHADOW_THRESHOLD / (1.0 - SHADOW_THRESHOLD)) - math.log(best / (1.0 - best))
    with torch.no_grad():
        model.head.bias += offset
    return offset, table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Calibrate a trained shadow refiner's cast-shadow threshold on "
                                 "validation pairs (module docstring).")
    ap.add_argument("--weights", type=Path, required=True, help="the trained refiner (.safetensors)")
    ap.add_argument("--data", type=Path, required=True, help="dataset rendered with --second-light")
    ap.add_argument("--split", default="train", choices=("train", "heldout"),
                    help="the pairs to calibrate on (default train: validation pairs no training used)")
    ap.add_argument("--out", type=Path, required=True, help="calibrated weights to write (.safetensors)")
    args = ap.parse_args(argv)
    if args.out.resolve() == args.weights.resolve():
        ap.error("--out must differ from --weights: the trained weights are kept")
    from safetensors import safe_open

    from ..nets import shadow_refine

    model = shadow_refine.load(args.weights)
    items = ShadowPairs(args.data, args.split, model, augment=False).items
    offset, table = calibrate(model, items)
    with safe_open(str(args.weights), "pt") as f:
        metadata = dict(f.metadata() or {})
    metadata["logit_offset"] = f"{offset:.6f}"
    save_safetensors(model, args.out, metadata)
    print(json.dumps({"iou_by_threshold": table, "logit_offset": round(offset, 4), "pairs": len(items)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
