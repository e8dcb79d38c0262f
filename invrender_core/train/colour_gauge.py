"""The colour gauge of a trained InverseRenderNet's albedo, from training photos and the illumination prior.

A photo is explained as albedo * shading, and any per-channel factor g moves between the two (albedo * g,
lighting / g) without changing the re-rendering, the losses or the scale-invariant albedo metric. Training
leaves g wherever the optimisation drifted: irn-small's albedo came out magenta and its light green. This
module fixes g without ground truth, from the illumination prior (the light of sunlit and overcast outdoor
skies): per training photo, the ratio of the network's mean shading to the mean shading the prior's mean light
gives the same normals (non-sky pixels, sky from the MVS depth), and g is the median ratio over the photos.
The result is the network's `albedo_gain` (registry config), applied before its lighting solve.

One step, not iterated to a fixed point: with the prior inside the network's lighting solve the light follows
the gain only partly, so iterating keeps pushing the gain (tried with the light's DC term instead of the
shading: after 4 iterations the albedo's blue was 25 % too strong on validation views).

    python -m invrender_core.train.colour_gauge --data datagen/out/relight_train --irn irn-small --max-views 660
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from .. import sh
from ..illumination_prior import IlluminationPrior
from .datasets import MultiviewScenes, sky_from_mvs


@torch.no_grad()
def shading_ratios(model, views, target_lighting) -> np.ndarray:
    """Per view (N, 3): the mean shading of `model`'s decomposition over the view's non-sky pixels, divided by
    the mean shading `target_lighting` (9, 3) gives its normals there. views: dicts with "image" (H, W, 3)
    linear, sides multiples of 16, and "sky" (H, W) bool."""
    rows = []
    for view in views:
        x = torch.from_numpy(np.ascontiguousarray(np.clip(view["image"], 0.0, 1.0).transpose(2, 0, 1)))[None]
        out = model(x.float())
        ground = ~view["sky"]
        if ground.sum() < 16:
            continue
        shading = out.shading[0].permute(1, 2, 0).double().numpy()[ground]  # (P, 3)
        normals = out.normals[0].permute(1, 2, 0).double().numpy()[ground]
        rows.append(shading.mean(0) / sh.shading(normals, target_lighting).mean(0))
    return np.array(rows).reshape(-1, 3)


def median_colour(ratios: np.ndarray) -> np.ndarray:
    """Per-channel median (3,) of ratios (N, 3), taken in log, over the rows positive in every channel, divided by
    its largest channel; ValueError when no row is positive."""
    ok = (ratios > 0).all(1)
    if not ok.any():
        raise ValueError("the network's shading is not positive in all channels on any photo: nothing to calibrate")
    colour = np.exp(np.median(np.log(ratios[ok]), axis=0))
    return colour / colour.max()


def calibrate(model, views, target_lighting) -> tuple[np.ndarray, np.ndarray]:
    """Multiply the albedo gain of `model` (an InverseRenderNet) by the median colour of its shading relative to
    `target_lighting`'s (`shading_ratios`): the light divided by that colour is the target's. Returns the new
    gain (3,) (largest channel 1, so that the albedo stays in [0, 1]) and the colour measured (3,)."""
    colour = median_colour(shading_ratios(model, views, target_lighting))
    gain = model.albedo_gain.view(3).double().numpy() * colour
    gain /= gain.max()
    model.albedo_gain.copy_(torch.as_tensor(gain, dtype=torch.float32).view(1, 3, 1, 1))
    return gain, colour


def training_views(data, max_views: int | None = None) -> list[dict[str, np.ndarray]]:
    """The photos (linear, float32) of a multiview dataset's train split with their sky from the MVS depth,
    `max_views` of them spread over the split."""
    source = MultiviewScenes(data, "train")
    keys = [(s, v) for s, (_, views) in enumerate(source.scenes) for v in range(len(views))]
    if max_views is not None and len(keys) > max_views:
        keys = [keys[k] for k in np.linspace(0, len(keys) - 1, max_views).round().astype(int)]
    views = [source.load(s, v) for s, v in keys]
    return [{"image": view["image"], "sky": sky_from_mvs(view["depth_mvs"])} for view in views]


def main(argv: list[str] | None = None) -> int:
    from ..nets import weights

    parser = argparse.ArgumentParser(description="Calibrate an InverseRenderNet's albedo colour gauge.")
    parser.add_argument("--data", required=True, help="multiview dataset folder (its train split is used)")
    parser.add_argument("--irn", required=True, help="InverseRenderNet weights: registry name or .safetensors path")
    parser.add_argument("--max-views", type=int, help="use this many photos, spread over the split")
    args = parser.parse_args(argv)
    model = weights.load_named(args.irn)
    views = training_views(args.data, args.max_views)
    target = IlluminationPrior.load().mean_lighting
    gain, colour = calibrate(model, views, target)
    after = median_colour(shading_ratios(model, views, target))
    print(json.dumps({"albedo_gain": [round(float(g), 4) for g in gain], "views": len(views),
                      "shading_colour_before": colour.round(4).tolist(),
                      "shading_colour_after": after.round(4).tolist()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
