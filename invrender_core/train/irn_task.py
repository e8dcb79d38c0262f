"""Self-supervised training of InverseRenderNet on pairs of views (the `Trainer` task for `invrender train irn`).

Per pair (i, j) of overlapping views of one scene, both photos go through the network in one batch; each
view's lighting is solved inside the forward pass from its own photo. The terms (`irn_losses`):

- re-rendering of each photo from its own albedo, shadow and shading, over all pixels (sky included, as at
  inference, where no sky mask is known: the network learns to explain sky pixels too);
- normals supervised by the normals of the (box-smoothed) MVS depth where that depth exists;
- albedo and shadow of view j warped into view i through i's MVS depth and both cameras (and i into j):
  cross-view albedo consistency, cross-rendering of i with j's albedo, shadow consistency (pairs under one
  light) or the shadow ratio (one view under two lights: the photos' ratio, free of albedo, is for the shadows
  and shading to explain);
- chromaticity-weighted albedo smoothness, the illumination prior's likelihood, a sparse-shadow prior.

Only inputs a real multiview capture has are used (photos, MVS depth, cameras); never ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from ..illumination_prior import IlluminationPrior
from ..nets.irn import InverseRenderNet
from . import irn_losses as L
from .datasets import ViewPairDataset
from .multiview import warp_to_view
from .trainer import checked_loss_weights

# The loss weights training uses: `IRNLossWeights` defaults, except that the normal term counts double (of all
# terms it converged slowest in a 400-step CPU trial: 46 degrees held-out error vs 59 for flat normals, while
# albedo already beat the photo baseline) and the sparse-shadow prior is weaker (at 0.05 it had pushed the
# shadow map to "all lit", shadow IoU 0).
TRAINING_WEIGHTS = L.IRNLossWeights(normal_angular=2.0, shadow_prior=0.02)


@dataclass
class IRNTask:
    """InverseRenderNet training task.

    data: multiview dataset folder (or COLMAP workspace); width: the net's channel multiplier; crop:
    (height, width) training crop or None; weights: loss weights; eval_views: held-out views scored by
    `evaluate` (0: no evaluation).
    """

    data: str
    width: float = 0.125
    crop: tuple[int, int] | None = None
    seed: int = 0
    weights: L.IRNLossWeights = field(default_factory=lambda: TRAINING_WEIGHTS)
    eval_views: int = 48
    normal_smoothing: int = 2  # radius of `smooth_depth` before MVS normals are computed
    second_light: float = 0.0  # share of pairs that are one view under two lights (`ViewPairDataset`)
    loss_weights: dict[str, float] | None = None  # overrides of single weights, e.g. {"shadow_sparsity": 0.1}

    def __post_init__(self):
        overrides = checked_loss_weights(self.loss_weights, {f.name for f in fields(L.IRNLossWeights)})
        self.weights = replace(self.weights, **overrides)
        self.prior = IlluminationPrior.load()
        self.model = InverseRenderNet(width=self.width, prior=self.prior)

    def make_dataset(self):
        return ViewPairDataset(self.data, "train", crop=self.crop, seed=self.seed, second_light=self.second_light)

    def compute_losses(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        b = batch["image_i"].shape[0]
        images = torch.cat([batch["image_i"], batch["image_j"]])  # (2B, 3, H, W)
        depth = torch.cat([batch["depth_i"], batch["depth_j"]])  # (2B, 1, H, W), 0 = no MVS depth
        K = torch.cat([batch["K_i"], batch["K_j"]])  # (2B, 3, 3)
        pose = torch.cat([batch["cam_to_world_i"], batch["cam_to_world_j"]])  # (2B, 4, 4)
        out = model(images)
        albedo, normals, shadow = out.albedo.float(), out.normals.float(), out.shadow.float()
        shading, lighting = out.shading.float(), out.lighting.float()
        everywhere = torch.ones_like(depth)

        mvs_normals, mvs_valid = L.normals_from_depth_torch(L.smooth_depth(depth, self.normal_smoothing), K)
        # Each view's partner: the other half of the batch (i <-> j).
        swap = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(images.device)
        partner_maps = torch.cat([albedo, shadow, images, shading], dim=1)[swap]  # (2B, 10, H, W)
        warped, overlap = warp_to_view(partner_maps, depth, K, pose, K[swap], pose[swap], depth_src=depth[swap])
        albedo_other, shadow_other, image_other, shading_other = warped.split([3, 1, 3, 3], dim=1)
        # Shadows agree between the two photos of a pair only when they share the light.
        same_light = batch.get("same_light", torch.ones(b)).to(images.device).repeat(2).view(-1, 1, 1, 1)

        terms = {
            "rerender": L.rerender_loss(images, albedo, shadow, shading, everywhere),
            "normal_angular": L.normal_angular_loss(normals, mvs_normals, mvs_valid),
            "normal_gradient": L.normal_gradient_loss(normals, mvs_normals, mvs_valid),
            "albedo_consistency": L.albedo_consistency_loss(albedo, albedo_other, overlap),
            "cross_render": L.cross_render_loss(images, albedo_other, shadow, shading, overlap),
            "albedo_smoothness": L.albedo_smoothness_loss(albedo, images, everywhere),
            "illumination_prior": L.illumination_prior_loss(lighting, self.prior),
            "shadow_consistency": L.shadow_consistency_loss(shadow, shadow_other, overlap * same_light),
            "shadow_prior": L.shadow_prior_loss(shadow, everywhere),
            "shadow_sparsity": L.shadow_sparsity_loss(shadow, everywhere),
            "shading_smoothness": L.shading_smoothness_loss(shading, everywhere),
            "shadow_ratio": L.shadow_ratio_loss(images, image_other, shadow, shadow_other, shading, shading_other,
                                                overlap * (1.0 - same_light)),
        }
        terms["total"] = L.combine(terms, self.weights)
        return terms

    def evaluate(self, model) -> dict[str, float]:
        """Held-out normal error, albedo si-MSE, lighting error and shadow IoU on `eval_views` views."""
        from .data import list_scenes
        from .evaluate import evaluate

        if not self.eval_views or not isinstance(self.data, str | Path) or not list_scenes(self.data, "heldout"):
            # a COLMAP capture (a folder or ColmapScenes): no ground truth to score against
            return {}
        mean = evaluate(self.data, irn=model, max_views=self.eval_views)["mean"]
        return {k: v for k, v in mean.items() if k in ("normal_deg", "albedo_simse", "albedo_simse_photo",
                                                         "albedo_simse_constant", "lighting_err", "shadow_iou")}
