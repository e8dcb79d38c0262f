"""The photo's cast shadows taken out of the albedo by photo-shadow-small: docs/photo_shadow.png.

    .venv/bin/python docs/photo_shadow.py --data datagen/out/multiview

One row per held-out view (the first five of the 40 spread over the split that `EvalViews` picks): the photo,
the true sun visibility (ground truth, for display only), decompose's shadow map with the shipped photo-shadow
network, the albedo without that network (`--shadow-net none`: the IRN's empty shadow map), the albedo with it,
and the true albedo. Albedos are shown at one exposure per row (the true albedo's median).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from invrender_core.camera import Camera
from invrender_core.io import linear_to_srgb
from invrender_core.scene import DEFAULT_SHADOW_NET, decompose
from invrender_core.train.datasets import EvalViews

ROOT = Path(__file__).resolve().parents[1]
VIEWS, ROWS = 40, 5


def _shown(albedo: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """An albedo scaled to the reference's median luminance (albedos are known up to scale), sRGB-encoded."""
    scale = np.median(reference.mean(-1)) / max(float(np.median(albedo.mean(-1))), 1e-6)
    return linear_to_srgb(np.clip(albedo * scale, 0.0, 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="multiview dataset (its held-out split)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "photo_shadow.png")
    args = parser.parse_args()
    rows = []
    for view in list(EvalViews(args.data, "heldout", VIEWS))[:ROWS]:
        h, w = view["image"].shape[:2]
        camera = Camera.from_K(view["K"], w, h)
        with_net, without = (decompose(view["image"], camera=camera, device="cpu", max_side=max(w, h), shadow=s)
                             for s in (DEFAULT_SHADOW_NET, None))
        grey = lambda m: np.repeat(m[..., None], 3, -1)  # noqa: E731
        truth = view["gt_albedo"]
        rows.append([linear_to_srgb(np.clip(view["image"], 0.0, 1.0)), grey(view["gt_shadow"]),
                     grey(with_net.shadow), _shown(without.albedo, truth), _shown(with_net.albedo, truth),
                     _shown(truth, truth)])
    sheet = np.concatenate([np.concatenate(r, axis=1) for r in rows], axis=0)
    Image.fromarray((np.clip(sheet, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
