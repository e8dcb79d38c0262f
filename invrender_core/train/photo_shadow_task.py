"""`invrender train photo-shadow`: the photo-shadow network (`nets/photo_shadow.py`) on the two-light pairs.

Both photos of a pair view are training photos: the photo under light A with A's true shadow map, the photo
under light B with B's (`photo_shadow.true_shadow_map` of the true normals, the sun's true visibility and its
light). Each is run through the shipped IRN and depth network at decompose's working resolution
(`scene.working_maps`), so that the inputs are the ones `decompose` gives the network. The true maps are
training targets only, never inputs.

Loss (`shadow_task.shadow_loss` with the shadow map as the target and the non-sky pixels as the region):
binary cross-entropy against the true shadow map, plus shadow_task.IOU_WEIGHT times one minus the soft IoU of the cast
shadow (shadow map below 0.5): shadows cover a tenth of the ground, and cross-entropy alone would learn to
predict none.

Scores (`evaluate`, held-out photos under light A, the photo a user relights): the IoU of the cast shadow (map
below 0.5) against the true one, pooled over non-sky pixels, and the mean absolute log error of the map over
non-sky pixels, against a map lit everywhere (the IRN's):

    python -m invrender_core.train.photo_shadow_task --data datagen/out/relight [--split train] [--weights W]

Calibration (after training, on validation photos: `--split train --calibrate OUT`): the soft-IoU term pushes a
shadow's map towards 0, deeper than the sky's share of the light that a shadow keeps, and `decompose`'s albedo
takes the map's depth; `calibrate` scales and shifts the logit to the least log error (photo-shadow-small.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from ..nets.photo_shadow import NORMAL_X, PhotoShadowNet, photo_shadow_features, true_shadow_map
from ..scene import DEFAULT_DEPTH, DEFAULT_IRN, DEFAULT_SHADOW_NET, WORK_MULTIPLE, working_maps
from .data import read_view
from .metrics import print_and_write
from .relight_task import PairItems, _linear, _networks, iou_counts
from .shadow_task import ShadowTask, shadow_loss
from .trainer import save_safetensors

# A view's two photos: (photo, sun visibility, sun direction, sun irradiance, sky SH) keys of its arrays.
LIGHTS = {"A": ("image", "gt_shadow", "sun_camera", "sun_irradiance", "sky_sh_camera"),
          "B": ("relight_image", "relight_gt_shadow", "relight_sun_camera", "relight_sun_irradiance",
                "relight_sky_sh_camera")}
LOG_FLOOR = 0.02  # shadow maps are floored here in the log error (a full shadow is 0.07-0.2 in the renders)
CALIBRATION_GAINS = tuple(round(0.1 * k, 1) for k in range(2, 16))  # the logit's gain, 0.2 ... 1.5
CALIBRATION_OFFSETS = tuple(round(0.5 * k, 1) for k in range(-4, 9))  # and offset, -2 ... 4


def photo_items(path, lights=("A", "B"), irn: str = DEFAULT_IRN, depth: str = DEFAULT_DEPTH) -> list[dict]:
    """Training items of one pair view, one per light in `lights`: features (INPUT_CHANNELS, h, w), target shadow
    map (1, h, w), ground (1, h, w) non-sky pixels."""
    view = read_view(path, ground_truth=True)
    h, w = view["image"].shape[:2]
    if h % WORK_MULTIPLE or w % WORK_MULTIPLE:
        raise ValueError(f"{path}: {w}x{h} is not decompose's working size (sides multiples of {WORK_MULTIPLE}); "
                         "render the pairs at such a size")
    irn_net, depth_net = _networks(irn, depth)
    sky = view["sky_mask"].astype(bool)
    items = []
    for light in lights:
        photo, visibility, sun, irradiance, sky_sh = (view[k] for k in LIGHTS[light])
        image = _linear(photo)
        maps = working_maps(image, irn_net, depth_net)
        features = photo_shadow_features(image, maps["normals"], maps["shading"], maps["depth"], maps["sky"])
        target = true_shadow_map(view["gt_normal"], visibility, sun, irradiance, sky_sh, sky)
        items.append({"features": features.transpose(2, 0, 1).copy(), "target": target[None],
                      "ground": (~sky)[None].astype(np.float32)})
    return items


class PhotoShadowViews(PairItems):
    """`photo_items` of a split's pair views, in memory (both lights' photos, or `lights`)."""

    def __init__(self, root, split: str, max_views: int | None = None, augment: bool = True, seed: int = 0,
                 lights=("A", "B")):
        super().__init__(root, split, lambda path: photo_items(path, lights), max_views, augment, seed)

    @staticmethod
    def mirror_features(features: torch.Tensor) -> torch.Tensor:
        features[NORMAL_X] *= -1.0
        return features


def scores(shadow_maps, items) -> dict[str, float]:
    """The module docstring's scores of shadow maps (list of (h, w)) against `items`' targets."""
    inter = union = 0
    log_errors = []
    for shadow, item in zip(shadow_maps, items, strict=True):
        ground = item["ground"][0] > 0
        target = item["target"][0]
        i, u = iou_counts(shadow, target, ground)
        inter, union = inter + i, union + u
        log_errors.append(np.abs(np.log(np.maximum(shadow, LOG_FLOOR)) - np.log(np.maximum(target, LOG_FLOOR)))[ground])
    return {"shadow_iou": inter / max(union, 1), "log_error": float(np.concatenate(log_errors).mean())}


def predicted_map(model: PhotoShadowNet, item: dict) -> np.ndarray:
    """(h, w) shadow map of one item, averaged with its mirror image's as `decompose` does (model in eval())."""
    return model.apply(item["features"].transpose(1, 2, 0), mirror_average=True)


class PhotoShadowTask(ShadowTask):
    """`invrender train photo-shadow`: the photo-shadow network on both photos of `data`'s train-split pairs;
    evaluated on the photos under light A of the held-out split of `eval_data` (default `data`). The shadow
    refiner's task but for the network, its data, its loss's region and its scores."""

    network = PhotoShadowNet

    def make_dataset(self) -> PhotoShadowViews:
        return PhotoShadowViews(self.data, "train", seed=self.seed)

    def compute_losses(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logit = model(batch["features"]).float()
        return shadow_loss(logit, batch["target"], batch["ground"], batch["ground"], self.iou_weight)

    def evaluate(self, model) -> dict[str, float]:
        """`scores` of the network and of a map lit everywhere on up to eval_views held-out photos (light A)."""
        if self._eval is None:
            try:
                self._eval = PhotoShadowViews(self.eval_data, "heldout", max_views=self.eval_views, augment=False,
                                              lights=("A",)).items
            except ValueError:
                self._eval = []
        return network_scores(model, self._eval) if self._eval else {}


def network_scores(model, items) -> dict[str, float]:
    """`scores` of the network's maps of `items` (`photo_items`), and the log error of a map lit everywhere."""
    net = scores([predicted_map(model, item) for item in items], items)
    lit = scores([np.ones_like(item["target"][0]) for item in items], items)
    return {**net, "log_error_lit": lit["log_error"]}


def calibrate(model: PhotoShadowNet, items, gains=CALIBRATION_GAINS, offsets=CALIBRATION_OFFSETS):
    """Scale and shift the network's logit, in place (its head), to the (gain, offset) of the grid whose maps have
    the least `scores` log error on `items` (validation photos): the soft-IoU term of the loss pushes a shadow's
    map towards 0, deeper than the light a shadow keeps, and the albedo takes the depth of the map. Returns
    (gain, offset, log error before, log error after)."""
    logits = [model.pass_logits(item["features"].transpose(1, 2, 0), mirror_average=True) for item in items]
    ground = [item["ground"][0] > 0 for item in items]
    target = np.concatenate([np.log(np.maximum(item["target"][0][g], LOG_FLOOR))
                             for item, g in zip(items, ground, strict=True)])
    z = np.concatenate([zk[:, g] for zk, g in zip(logits, ground, strict=True)], axis=1)  # (2, N) ground pixels

    def log_error(gain: float, offset: float) -> float:
        shadow = 0.5 * (1.0 / (1.0 + np.exp(-(gain * z[0] + offset))) + 1.0 / (1.0 + np.exp(-(gain * z[1] + offset))))
        return float(np.abs(np.log(np.maximum(shadow, LOG_FLOOR)) - target).mean())

    table = {(g, o): log_error(g, o) for g in gains for o in offsets}
    gain, offset = min(table, key=table.get)
    with torch.no_grad():
        model.head.weight *= gain
        model.head.bias.mul_(gain).add_(offset)
    return gain, offset, log_error(1.0, 0.0), table[(gain, offset)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Score the photo-shadow network on the photos under light A of a "
                                 "split's two-light pairs, or calibrate its logit there (module docstring).")
    ap.add_argument("--data", type=Path, required=True, help="dataset rendered with --second-light")
    ap.add_argument("--split", default="heldout", choices=("train", "heldout"),
                    help="heldout (default), or train: validation pairs no training used (calibrate there)")
    ap.add_argument("--weights", default=DEFAULT_SHADOW_NET, help="weights (name or path)")
    ap.add_argument("--calibrate", type=Path, metavar="OUT",
                    help="calibrate the logit on these photos (`calibrate`) and write the weights here")
    ap.add_argument("--json", type=Path, help="also write the scores here")
    args = ap.parse_args(argv)
    if args.calibrate is not None and Path(args.weights).resolve() == args.calibrate.resolve():
        ap.error("--calibrate must differ from --weights: the trained weights are kept")
    from ..nets.photo_shadow import load

    model = load(args.weights)
    items = PhotoShadowViews(args.data, args.split, augment=False, lights=("A",)).items
    out = {"photos": len(items), "split": args.split, "weights": str(args.weights), **network_scores(model, items)}
    if args.calibrate is not None:
        gain, offset, before, after = calibrate(model, items)
        save_safetensors(model, args.calibrate, {"logit_gain": f"{gain:g}", "logit_offset": f"{offset:g}"})
        out["calibration"] = {"logit_gain": gain, "logit_offset": offset, "log_error_before": before,
                              "log_error_after": after, "calibrated": network_scores(model, items)}
    print_and_write(out, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
