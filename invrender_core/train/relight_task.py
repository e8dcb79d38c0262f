"""Relighting on the synthetic two-light pairs (`datagen/render_multiview.py --second-light`): training the
refinement network (`invrender train relight`) and measuring relighting (`python -m
invrender_core.train.relight_task --data DIR`).

A pair is one view rendered under light A (the input photo) and light B (the target). The photo is decomposed
by the shipped networks (`scene.decompose`), and B is handed to `relight.Relighter` only as what a user would
give: its sun (direction, irradiance) and its sky's SH, scaled to the photo's lighting. The target photo
is used as the training target and for scoring, never as an input. Both photos are compared as the decomposition
sees a photo: sRGB decoded to linear.

Metrics (held-out split):
- si_log_lum: scale-invariant RMSE of log luminance, relit vs the target photo, over pixels where both are
  above 1e-4 (sky included: it is recoloured); "unchanged" scores the input photo itself against the target,
  "unchanged_sqrt" its square root (the photo's contrast halved in log space: shrinking any noisy answer's
  contrast lowers this metric, a trivial baseline that beats the unchanged photo by far).
- shadow_iou: cast shadow of B, relit (visibility < 0.5) vs truth (relight_gt_shadow < 0.5), over non-sky
  pixels that face B's sun (n · s > 0.1 with the true normals), pooled over all views; with the shadow refiner
  (`nets/shadow_refine.py`, the default), "marched" scores the shadows as marched through the fused depth.
- the same with the true albedo, normals and depth instead of the networks' ("oracle"): what the relighting
  itself achieves when the decomposition is right.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .. import relight, sh
from ..camera import Camera
from ..io import srgb_to_linear
from ..nets.relight_refine import LOG_RATIO_LIMIT, RelightRefiner, features
from ..scene import DEFAULT_DEPTH, DEFAULT_IRN, SceneEstimate, decompose
from .data import list_scenes, read_view
from .metrics import print_and_write

SUN_FACING_COS = 0.1
SHADOW_THRESHOLD = 0.5
MIN_LUMINANCE = 1e-4


def _linear(image_u8: np.ndarray) -> np.ndarray:
    return srgb_to_linear(image_u8.astype(np.float32) / 255.0).astype(np.float32)


def target_lighting(view: dict) -> relight.Lighting:
    """Light B of a pair view as a user would give it: sky SH (9, 3) and sun, camera frame."""
    sun = relight.Sun(view["relight_sun_camera"], view["relight_sun_irradiance"] / math.pi)  # E units
    return relight.Lighting(sky=view["relight_sky_sh_camera"], sun=sun)


def oracle_estimate(view: dict, camera: Camera) -> SceneEstimate:
    """The view's true maps as a SceneEstimate (albedo, normals, depth, sky, light A): relighting alone."""
    sky = view["sky_mask"].astype(bool)
    normals = view["gt_normal"].astype(np.float32)
    albedo = view["gt_albedo"].astype(np.float32)
    depth = np.where(sky, np.nan, view["gt_depth"]).astype(np.float32)
    lighting = view["gt_sh_camera"].astype(np.float64)
    shading = np.maximum(sh.shading(normals, lighting), 0.0).astype(np.float32)
    return SceneEstimate(image=_linear(view["image"]), albedo=albedo, shading=shading, normals=normals,
                         depth=depth, depth_fused=depth, confidence=np.ones(sky.shape, np.float32), lighting=lighting,
                         camera=camera, shadow=view["gt_shadow"].astype(np.float32), sky=sky)


def pair_views(root, split: str) -> list[Path]:
    """Every view file of the split's scenes that holds a second light."""
    paths = []
    for scene_dir, meta in list_scenes(root, split):
        for name in meta["views"]:
            with np.load(scene_dir / name, allow_pickle=False) as z:
                if "relight_image" in z.files:
                    paths.append(scene_dir / name)
    if not paths:
        raise ValueError(f"no two-light views in the {split!r} split of {root}: render them with "
                         f"datagen/render_multiview.py --second-light")
    return paths


@functools.cache
def _networks(irn: str = DEFAULT_IRN, depth: str = DEFAULT_DEPTH, device: str = "cpu") -> tuple:
    """InverseRenderNet and depth network (registry names or paths), loaded once (decompose would load them per
    call)."""
    from ..nets import weights

    return (weights.load_named(irn, expect="irn", device=device),
            weights.load_named(depth, expect="megadepth", device=device))


def prepare(path: Path, oracle: bool = False, device: str = "cpu", irn: str = DEFAULT_IRN,
            depth: str = DEFAULT_DEPTH, shadow_refine=None) -> dict:
    """Decompose one pair's photo (with the networks `irn` and `depth`) and relight it under light B
    (unrefined; cast shadows corrected by `shadow_refine`, a `nets.shadow_refine.ShadowRefiner`, when given):
    everything training and scoring need."""
    view = read_view(path, ground_truth=True)
    h, w = view["image"].shape[:2]
    camera = Camera.from_K(view["K"], w, h)
    if oracle:
        estimate = oracle_estimate(view, camera)
    else:
        irn_net, depth_net = _networks(irn, depth, device)
        estimate = decompose(_linear(view["image"]), camera=camera, device=device, irn=irn_net, depth=depth_net)
    relighter = relight.Relighter(estimate, shadow_refine=shadow_refine)
    lighting = relighter.scaled_like_photo(target_lighting(view))  # light B as the relighting gets it
    return {"view": view, "estimate": estimate, "relighter": relighter, "lighting": lighting,
            "relit": relighter.render(lighting), "target": _linear(view["relight_image"])}


def si_log_luminance(a: np.ndarray, b: np.ndarray) -> float:
    """Scale-invariant RMSE of log luminance between linear images (H, W, 3), over pixels above MIN_LUMINANCE."""
    la, lb = a @ sh.LUMINANCE, b @ sh.LUMINANCE
    ok = (la > MIN_LUMINANCE) & (lb > MIN_LUMINANCE)
    d = np.log(la[ok]) - np.log(lb[ok])
    return float(np.sqrt(max(np.mean(d * d) - np.mean(d) ** 2, 0.0))) if d.size else float("nan")


def shadow_region(view: dict) -> np.ndarray:
    """(H, W) bool non-sky pixels that face light B's sun (true normals): where cast shadows are scored."""
    facing = (view["gt_normal"].astype(np.float32) @ view["relight_sun_camera"]) > SUN_FACING_COS
    return facing & ~view["sky_mask"].astype(bool)


def iou_counts(visibility: np.ndarray, truth: np.ndarray, region: np.ndarray) -> tuple[int, int]:
    """(intersection, union) of the cast shadows (visibility below SHADOW_THRESHOLD) of two visibilities (H, W)
    within region (H, W) bool."""
    est = (np.asarray(visibility) < SHADOW_THRESHOLD) & region
    true = (np.asarray(truth, np.float32) < SHADOW_THRESHOLD) & region
    return int((est & true).sum()), int((est | true).sum())


def shadow_counts(visibility: np.ndarray, view: dict) -> tuple[int, int]:
    """(intersection, union) of relit vs true cast shadow of light B over sun-facing non-sky pixels."""
    return iou_counts(visibility, view["relight_gt_shadow"], shadow_region(view))


def refine_image(model: RelightRefiner, pair: dict) -> np.ndarray:
    r = pair["relighter"]
    return model.apply(pair["estimate"], pair["relit"], r.exposure, r.own_render)


def evaluate(root, split: str = "heldout", model: RelightRefiner | None = None, oracle: bool = True,
             progress=None, irn: str = DEFAULT_IRN, depth: str = DEFAULT_DEPTH, shadow_refine=None) -> dict:
    """The module docstring's metrics over a split, photos decomposed with the networks `irn` and `depth`;
    `model` adds the refined relit image's score; `shadow_refine` corrects the networks' marched shadows (and
    adds the marched shadows' IoU, "shadow_iou_marched")."""
    rows = {"unchanged": [], "unchanged_sqrt": [], "relit": [], "refined": [], "oracle_relit": []}
    counts = {"relit": [0, 0], "marched": [0, 0], "oracle_relit": [0, 0]}
    paths = pair_views(root, split)
    for k, path in enumerate(paths):
        pair = prepare(path, irn=irn, depth=depth, shadow_refine=shadow_refine)
        if shadow_refine is not None:
            marched = pair["relighter"].visibility(pair["lighting"].sun, refine=False)
            counts["marched"] = np.add(counts["marched"], shadow_counts(marched, pair["view"]))
        photo = _linear(pair["view"]["image"])
        rows["unchanged"].append(si_log_luminance(photo, pair["target"]))
        rows["unchanged_sqrt"].append(si_log_luminance(np.sqrt(np.maximum(photo, 0.0)), pair["target"]))
        rows["relit"].append(si_log_luminance(pair["relit"].image, pair["target"]))
        counts["relit"] = np.add(counts["relit"], shadow_counts(pair["relit"].visibility, pair["view"]))
        if model is not None:
            rows["refined"].append(si_log_luminance(refine_image(model, pair), pair["target"]))
        if oracle:
            o = prepare(path, oracle=True)
            rows["oracle_relit"].append(si_log_luminance(o["relit"].image, o["target"]))
            counts["oracle_relit"] = np.add(counts["oracle_relit"], shadow_counts(o["relit"].visibility, o["view"]))
        if progress is not None:
            progress(k + 1, len(paths))
    out = {"views": len(paths)}
    for name, values in rows.items():
        if values:
            out[f"si_log_lum_{name}"] = round(float(np.nanmean(values)), 4)
    for name, (inter, union) in counts.items():
        if union:
            out[f"shadow_iou_{name}"] = round(inter / union, 4)
    return out


class PairItems(torch.utils.data.Dataset):
    """Training items made once from the pair views of a split, in memory: `items_of(path)` -> list of dicts of
    arrays (for the relighting and shadow tasks, one item made from the view's decomposed pair, `prepare`), their
    "features" (C, h, w) mirrored with the rest in left-right flips by `mirror_features` (the channels whose sign
    a mirror changes)."""

    def __init__(self, root, split: str, items_of, max_views: int | None = None, augment: bool = True, seed: int = 0):
        self.items = []
        self.augment, self.seed, self.epoch = augment, seed, 0
        paths = pair_views(root, split)[:max_views]
        t0 = time.time()
        for k, path in enumerate(paths):
            self.items.extend(items_of(path))
            if (k + 1) % 20 == 0 or k + 1 == len(paths):
                print(f"prepared {k + 1}/{len(paths)} {split} pair views ({time.time() - t0:.0f} s)", file=sys.stderr,
                      flush=True)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {k: torch.from_numpy(v) for k, v in self.items[index].items()}
        if self.augment and np.random.default_rng((self.seed, self.epoch, index)).random() < 0.5:
            item = {k: v.flip(-1) for k, v in item.items()}
            item["features"] = self.mirror_features(item["features"].clone())
        return item

    @staticmethod
    def mirror_features(features: torch.Tensor) -> torch.Tensor:
        return features


class RelightPairs(PairItems):
    """Training items from the pairs of a split: features (20, h, w), simple relit (3, h, w), target (3, h, w),
    mask (1, h, w) of the pixels the loss uses (non-sky, target not saturated). Decomposed once, in memory."""

    def __init__(self, root, split: str = "train", max_views: int | None = None, augment: bool = True,
                 seed: int = 0, shadow_refine=None):
        super().__init__(root, split, lambda path: [relight_item(prepare(path, shadow_refine=shadow_refine))],
                         max_views, augment, seed)

    @staticmethod
    def mirror_features(features: torch.Tensor) -> torch.Tensor:
        features[3] = 1.0 - features[3]  # the normals' x (channel 3, stored as n * 0.5 + 0.5)
        return features


def relight_item(pair: dict) -> dict[str, np.ndarray]:
    """One training item (`RelightPairs`) from a `prepare` pair."""
    r = pair["relighter"]
    feats = features(pair["estimate"], pair["relit"], r.exposure, r.own_render)  # (H, W, 20)
    mask = ~pair["relit"].sky & (pair["view"]["relight_image"].max(-1) < 250)
    return {"features": feats.transpose(2, 0, 1).copy(), "relit": pair["relit"].image.transpose(2, 0, 1).copy(),
            "target": pair["target"].transpose(2, 0, 1).copy(), "mask": mask[None].astype(np.float32)}


def refine_loss(log_ratio: torch.Tensor, relit: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
    """Scale-invariant squared log error of relit · exp(log_ratio) vs target, all (B, 3, H, W), mask (B, 1, H, W):
    per image, the mean log difference (over masked pixels and channels) is removed first (exposure is free)."""
    d = torch.log(relit.clamp(min=MIN_LUMINANCE)) + log_ratio - torch.log(target.clamp(min=MIN_LUMINANCE))
    m = mask.expand_as(d)
    n = m.sum(dim=(1, 2, 3)).clamp(min=1.0)
    mean = (d * m).sum(dim=(1, 2, 3)) / n
    return (((d - mean[:, None, None, None]) ** 2) * m).sum(dim=(1, 2, 3)).div(n).mean()


class RelightTask:
    """`invrender train relight`: the refinement network on the two-light pairs of `data`'s train split, their
    cast shadows corrected by the shipped shadow refiner as `invrender relight` does."""

    default_lr = 2e-3

    def __init__(self, data, width: float = 24, seed: int = 0, eval_data=None, eval_views: int = 16):
        from ..nets import shadow_refine

        self.data, self.seed = data, int(seed)
        self.model = RelightRefiner(width=width)  # the net checks it counts channels (a multiple of 4)
        self.eval_data = data if eval_data is None else eval_data
        self.eval_views = int(eval_views)
        self._eval = None
        self.shadow_refine = shadow_refine.load(relight.DEFAULT_SHADOW_REFINER)

    def make_dataset(self) -> RelightPairs:
        return RelightPairs(self.data, "train", seed=self.seed, shadow_refine=self.shadow_refine)

    def compute_losses(self, model, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        log_ratio = model(batch["features"]).float()
        unrefined = refine_loss(torch.zeros_like(log_ratio), batch["relit"], batch["target"], batch["mask"])
        loss = refine_loss(log_ratio, batch["relit"], batch["target"], batch["mask"])
        smooth = (log_ratio.diff(dim=-1).abs().mean() + log_ratio.diff(dim=-2).abs().mean())
        total = loss + 0.05 * smooth
        return {"total": total, "si_log": loss, "si_log_unrefined": unrefined.detach(), "smooth": smooth}

    def evaluate(self, model) -> dict[str, float]:
        """Mean scale-invariant log error, refined and not, on up to eval_views held-out pairs."""
        if self._eval is None:
            try:
                self._eval = RelightPairs(self.eval_data, "heldout", max_views=self.eval_views, augment=False,
                                          shadow_refine=self.shadow_refine)
            except ValueError:
                self._eval = []
        if len(self._eval) == 0:
            return {}
        device = next(model.parameters()).device
        refined, plain = [], []
        for k in range(len(self._eval)):
            b = {key: v[None].to(device) for key, v in self._eval[k].items()}
            log_ratio = model(b["features"]).float().clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
            refined.append(float(refine_loss(log_ratio, b["relit"], b["target"], b["mask"])))
            plain.append(float(refine_loss(torch.zeros_like(log_ratio), b["relit"], b["target"], b["mask"])))
        return {"si_log_refined": float(np.mean(refined)), "si_log_unrefined": float(np.mean(plain))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Score 2D relighting on the held-out two-light pairs.")
    ap.add_argument("--data", type=Path, required=True, help="dataset rendered with --second-light")
    ap.add_argument("--split", default="heldout", choices=("train", "heldout"))
    ap.add_argument("--refine", default=relight.DEFAULT_REFINER, help="refiner weights (name or path), or 'none'")
    ap.add_argument("--shadow-refine", default=relight.DEFAULT_SHADOW_REFINER,
                    help="shadow refiner weights (name or path), or 'none'")
    ap.add_argument("--irn", default=DEFAULT_IRN, help="InverseRenderNet weights (name or path)")
    ap.add_argument("--depth", default=DEFAULT_DEPTH, help="depth network weights (name or path)")
    ap.add_argument("--no-oracle", action="store_true", help="skip the scores with the true maps")
    ap.add_argument("--json", type=Path, help="also write the metrics here")
    args = ap.parse_args(argv)
    model = None
    if args.refine != "none":
        from ..nets.relight_refine import load

        model = load(args.refine)
    shadow_refine = None
    if args.shadow_refine != "none":
        from ..nets import shadow_refine as shadow_net

        shadow_refine = shadow_net.load(args.shadow_refine)
    t0 = time.time()
    metrics = evaluate(args.data, args.split, model, oracle=not args.no_oracle,
                       progress=lambda k, n: print(f"\r{k}/{n} views", end="", file=sys.stderr, flush=True),
                       irn=args.irn, depth=args.depth, shadow_refine=shadow_refine)
    print(file=sys.stderr)
    metrics["seconds"] = round(time.time() - t0, 1)
    metrics["refiner"], metrics["shadow_refiner"] = args.refine, args.shadow_refine
    metrics["irn"], metrics["depth"] = args.irn, args.depth
    print_and_write(metrics, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
