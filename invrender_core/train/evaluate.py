"""Held-out evaluation of the inverse-rendering and depth networks against the synthetic ground truth.

    python -m invrender_core.train.evaluate --data datagen/out/multiview --irn irn-small --depth depth-small \
        --out metrics.json

With both networks, every view of the held-out split goes through the shipped pipeline (`scene.decompose`, at
the view's own resolution) and is scored on the pixels that are not sky, next to trivial baselines; with the
InverseRenderNet alone (as during training) its raw outputs are scored:

- normals: mean angular error; baseline "flat normals facing the camera" (0, 0, 1).
- albedo: scale-invariant MSE (`metrics.scale_invariant_mse`); baselines "albedo = linearised photo", its square
  root (the photo's contrast halved in log space: the metric rewards shrinking any noisy estimate's contrast, and
  this trivial answer beats the photo by far) and "one colour everywhere" (the variance of the true albedo: a
  decoder that collapsed to a constant scores this).
  Also its colour cast, which that metric forgives (`metrics.colour_balance_error`); baseline the photo's.
- lighting: `metrics.lighting_error` of the solved SH vs the true sky's; baselines "uniform light" (DC only) and the
  illumination prior's mean light (one light for every photo).
- shadow: IoU of the shadowed regions; baseline "no shadow" (IoU 0 whenever there is a shadow).
- sky (whole pipeline): IoU of the detected sky with the true sky (views with no sky in either are skipped).
- depth: scale-invariant log RMSE of the network depth and of the fused depth; baseline "constant depth";
  also the angular error of the fused geometry's normals next to the network's normals on the same pixels. The
  same on "interior" pixels, more than INTERIOR_MARGIN pixels (city-block) from a discontinuity of the true
  depth, so that what fusion does on surfaces and at occlusion boundaries can be told apart.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from .. import geometry
from ..camera import Camera
from ..illumination_prior import IlluminationPrior
from ..nets.irn import normalise_shadow
from ..scene import DEFAULT_SHADOW_NET
from . import metrics
from .datasets import EvalViews
from .depth_losses import si_log_rmse

FLAT = np.array([0.0, 0.0, 1.0])
INTERIOR_MARGIN = 4  # pixels; at the synthetic views' 192x128, about 30 % of the ground is nearer an occlusion


@torch.no_grad()
def predict_irn(model, image: np.ndarray) -> dict[str, np.ndarray]:
    """InverseRenderNet outputs for one linear image (H, W, 3) (sides multiples of 16), as numpy maps, with the
    shadow's gauge fixed as `scene.decompose` fixes it (`normalise_shadow`)."""
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].float()
    out = model(x)
    shadow, lighting = normalise_shadow(out.shadow[0, 0].numpy(), out.lighting[0].numpy())  # as decompose does
    return {"albedo": out.albedo[0].permute(1, 2, 0).numpy(), "normals": out.normals[0].permute(1, 2, 0).numpy(),
            "shadow": shadow, "lighting": lighting}


def predict_pipeline(irn, depth, image: np.ndarray, camera: Camera, shadow=DEFAULT_SHADOW_NET) -> dict[str, np.ndarray]:
    """What `scene.decompose` ships for one linear image (H, W, 3), at the image's own resolution (shadow: its
    photo-shadow network, None for the IRN's shadow map)."""
    from ..scene import decompose

    est = decompose(image, camera=camera, device="cpu", max_side=max(camera.width, camera.height), irn=irn,
                    depth=depth, shadow=shadow)
    return {"albedo": est.albedo, "normals": est.normals, "shadow": est.shadow, "lighting": est.lighting,
            "depth": est.depth, "depth_fused": est.depth_fused, "sky": est.sky}


@functools.cache
def _prior_mean_lighting() -> np.ndarray:
    """The illumination prior's mean light (a level camera's frame): one light for every photo, loaded once."""
    return IlluminationPrior.load().mean_lighting


def score_view(view: dict, pred: dict) -> dict[str, float]:
    """Metrics of one view's predictions (maps at the view's resolution) against its ground truth; view: an
    `EvalViews` item (linear image, float32 ground truth)."""
    image = view["image"]
    ground = ~view["sky_mask"] & (view["gt_depth"] > 0)
    gt_normal = view["gt_normal"].astype(np.float64)
    gt_albedo = view["gt_albedo"].astype(np.float64)
    uniform = np.zeros((9, 3))
    uniform[0] = view["gt_sh_camera"][0]
    row = {
        "normal_deg": metrics.normal_angular_error(pred["normals"], gt_normal, ground),
        "normal_deg_flat": metrics.normal_angular_error(np.broadcast_to(FLAT, gt_normal.shape), gt_normal, ground),
        "albedo_simse": metrics.scale_invariant_mse(pred["albedo"], gt_albedo, ground),
        "albedo_simse_photo": metrics.scale_invariant_mse(image, gt_albedo, ground),
        "albedo_simse_photo_sqrt": metrics.scale_invariant_mse(np.sqrt(np.maximum(image, 0.0)), gt_albedo, ground),
        "albedo_simse_constant": metrics.scale_invariant_mse(np.ones_like(gt_albedo), gt_albedo, ground),
        "albedo_colour_err": metrics.colour_balance_error(pred["albedo"], gt_albedo, ground),
        "albedo_colour_err_photo": metrics.colour_balance_error(image, gt_albedo, ground),
        "lighting_err": metrics.lighting_error(pred["lighting"], view["gt_sh_camera"]),
        "lighting_err_uniform": metrics.lighting_error(uniform, view["gt_sh_camera"]),
        "lighting_err_prior_mean": metrics.lighting_error(_prior_mean_lighting(), view["gt_sh_camera"]),
        "shadow_iou": metrics.shadow_iou(pred["shadow"], view["gt_shadow"], ground),
    }
    if "sky" in pred:
        row["sky_iou"] = metrics.mask_iou(pred["sky"], view["sky_mask"])
    if "depth" in pred:
        gt = view["gt_depth"]
        row["depth_silog"] = si_log_rmse(pred["depth"], gt, ground)
        row["depth_silog_constant"] = si_log_rmse(np.ones_like(gt), gt, ground)
        fused = pred["depth_fused"]
        ok = ground & np.isfinite(fused) & (fused > 0)
        row["fused_silog"] = si_log_rmse(np.where(ok, fused, 1.0), gt, ok)
        h, w = gt.shape
        camera = Camera.from_K(view["K"], w, h)
        fused_normals = geometry.normals_from_depth(np.where(ok, fused, np.nan), camera)
        has = ok & np.isfinite(fused_normals).all(-1)
        row["fused_normal_deg"] = metrics.normal_angular_error(fused_normals, gt_normal, has)
        row["net_normal_deg_same_pixels"] = metrics.normal_angular_error(pred["normals"], gt_normal, has)
        edges = geometry.depth_discontinuities(np.where(gt > 0, gt, np.nan))
        interior = ~ndimage.binary_dilation(edges, iterations=INTERIOR_MARGIN)
        if not (has & interior).any():  # si_log_rmse scores an empty mask 0, which would flatter the mean
            return row
        row["depth_silog_interior"] = si_log_rmse(pred["depth"], gt, ground & interior)
        row["fused_silog_interior"] = si_log_rmse(np.where(ok, fused, 1.0), gt, ok & interior)
        row["fused_normal_deg_interior"] = metrics.normal_angular_error(fused_normals, gt_normal, has & interior)
        row["net_normal_deg_interior"] = metrics.normal_angular_error(pred["normals"], gt_normal, has & interior)
    return row


def _summary(rows: list[dict]) -> dict:
    keys = sorted({k for r in rows for k in r if k != "view"})
    return {k: float(np.nanmean([r.get(k, np.nan) for r in rows])) for k in keys}


def evaluate(root, irn, depth=None, split: str = "heldout", max_views: int | None = None, progress=None,
             shadow=DEFAULT_SHADOW_NET) -> dict:
    """Score an InverseRenderNet alone (raw outputs) or with a depth net (the whole `decompose` pipeline, with the
    photo-shadow network `shadow`) on a split's views (`max_views` of them spread over the split, or all); returns
    the per-view rows and their means (NaN-skipping)."""
    rows = []
    for view in EvalViews(root, split, max_views):
        image = view["image"]
        if depth is None:
            pred = predict_irn(irn, image)
        else:
            h, w = image.shape[:2]
            pred = predict_pipeline(irn, depth, image, Camera.from_K(view["K"], w, h), shadow)
        rows.append({"view": view["name"], **score_view(view, pred)})
        if progress is not None:
            progress(len(rows))
    if not rows:
        raise ValueError(f"no {split} views under {root}")
    return {"split": split, "views": len(rows), "mean": _summary(rows), "per_view": rows}


@torch.no_grad()  # for this call only: callers in the same process keep their autograd mode
def main(argv: list[str] | None = None) -> int:
    from ..nets import weights

    parser = argparse.ArgumentParser(description="Held-out metrics of the shipped (or given) networks.")
    parser.add_argument("--data", type=Path, required=True, help="multiview dataset folder (datagen output)")
    parser.add_argument("--irn", required=True, help="InverseRenderNet weights: registry name or .safetensors path")
    parser.add_argument("--depth", help="depth network weights: registry name or .safetensors path")
    parser.add_argument("--split", default="heldout")
    parser.add_argument("--max-views", type=int)
    parser.add_argument("--albedo-weight", type=float,
                        help="with --depth: how far decompose trusts the IRN's albedo against the photo's ratio to "
                             "the model, in (0, 1] (default: the weights' registry config; 1 for a .safetensors path)")
    parser.add_argument("--shadow-net", default=DEFAULT_SHADOW_NET,
                        help=f"with --depth: decompose's photo-shadow network, or none for the IRN's shadow map "
                             f"(default {DEFAULT_SHADOW_NET})")
    parser.add_argument("--out", type=Path, help="write the metrics here as JSON")
    args = parser.parse_args(argv)
    for option, given in (("--albedo-weight", args.albedo_weight is not None),
                          ("--shadow-net", args.shadow_net != DEFAULT_SHADOW_NET)):
        if given and not args.depth:
            parser.error(f"{option} needs --depth: without it the IRN's raw outputs are scored, not decompose's")
    irn = weights.load_named(args.irn)
    if args.albedo_weight is not None:
        try:
            irn.albedo_weight = args.albedo_weight
        except ValueError as e:
            parser.error(f"--albedo-weight: {e}")
    depth = weights.load_named(args.depth) if args.depth else None
    start = time.perf_counter()
    result = evaluate(args.data, irn, depth, args.split, args.max_views,
                      progress=lambda n: print(f"\r{n} views", end="", file=sys.stderr, flush=True),
                      shadow=None if args.shadow_net == "none" else args.shadow_net)
    print(file=sys.stderr)
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["albedo_weight"] = irn.albedo_weight
    result["shadow_net"] = args.shadow_net if args.depth else None
    print(json.dumps(result["mean"], indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
