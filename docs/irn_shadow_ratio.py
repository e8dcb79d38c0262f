"""Shadow maps of InverseRenderNet weights on validation views: docs/irn_shadow_ratio.png.

    .venv/bin/python docs/irn_shadow_ratio.py --data datagen/out/mv_val --split train \
        --irn runs/irn_ratio3/model.safetensors runs/irn_r3n4/model.safetensors

One row per view (the first five of the 40 spread over the split that `EvalViews` picks): the photo, the true
shadow (ground truth, for display only), then each network's raw shadow map with its gauge fixed as `decompose`
fixes it (`normalise_shadow`). Prints each network's shadow IoU over the 40 views. The weights are the twelfth,
unkept stage's runs in irn-small.md (not shipped).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from invrender_core.io import linear_to_srgb
from invrender_core.nets import weights
from invrender_core.nets.irn import normalise_shadow
from invrender_core.train import metrics
from invrender_core.train.datasets import EvalViews

ROOT = Path(__file__).resolve().parents[1]
VIEWS, ROWS = 40, 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--irn", nargs="+", required=True, help="InverseRenderNet weights (names or paths)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "irn_shadow_ratio.png")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    views = list(EvalViews(args.data, args.split, VIEWS))
    rows = [[linear_to_srgb(np.clip(v["image"], 0.0, 1.0)), np.repeat(v["gt_shadow"][..., None], 3, -1)]
            for v in views[:ROWS]]
    for spec in args.irn:
        model = weights.load_named(spec)
        ious = []
        for k, view in enumerate(views):
            x = torch.from_numpy(np.ascontiguousarray(view["image"].transpose(2, 0, 1)))[None].float()
            out = model(x)
            shadow, _ = normalise_shadow(out.shadow[0, 0].numpy(), out.lighting[0].numpy())
            ious.append(metrics.shadow_iou(shadow, view["gt_shadow"], ~view["sky_mask"]))
            if k < ROWS:
                rows[k].append(np.repeat(shadow[..., None], 3, -1))
        print(f"{spec}: shadow IoU {np.nanmean(ious):.3f} over {len(views)} views")
    sheet = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    Image.fromarray((np.clip(sheet, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)).save(args.out, optimize=True)


if __name__ == "__main__":
    main()
