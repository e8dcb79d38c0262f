"""The pipeline on real photos: depth against measured depth, and a contact sheet of decompositions.

    python -m invrender_core.train.evaluate_real --shared ../shared/data --out bench/results/real_depth.json \
        --sheet docs/real_decompose.png

- Middlebury 2014 Motorcycle (`skimage.data.stereo_motorcycle`, dense depth from measured disparity) and KITTI
  frame 000002 (projected LiDAR, sparse): scale-invariant log RMSE of the network depth and of the fused depth,
  next to a constant depth.
- A contact sheet (input, albedo, normals, shadow, shading, sphere lit by the estimated SH) of KITTI 000002,
  OpenSfM's Berlin facade and MegaDepth's demo photo.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from ..io import load_image, save_preview_sheet, srgb_to_linear
from .depth_losses import si_log_rmse
from .real_data import kitti_camera, kitti_lidar_depth, middlebury_motorcycle, read_kitti_calib

SHEET_PHOTOS = ("kitti_outdoor/000002_image_2.png", "opensfm_berlin/01.jpg", "megadepth_demo/demo.jpg")


def depth_scores(estimate, gt: np.ndarray) -> dict[str, float]:
    """SI-log RMSE of the estimate's network and fused depth vs gt (H, W) (0 = unknown), and of a constant."""
    valid = gt > 0
    fused = estimate.depth_fused
    ok = valid & np.isfinite(fused) & (fused > 0)
    return {
        "depth_silog": si_log_rmse(estimate.depth, gt, valid),
        "fused_silog": si_log_rmse(np.where(ok, fused, 1.0), gt, ok),
        "constant_silog": si_log_rmse(np.ones_like(gt), gt, valid),
        "pixels_scored": int(valid.sum()),
    }


def evaluate_real(shared: Path, irn: str, depth: str, max_side: int) -> dict[str, dict]:
    """Depth scores on Motorcycle (always available through scikit-image) and KITTI 000002 (when shared has it)."""
    from ..scene import decompose

    results = {}
    image, gt, camera = middlebury_motorcycle()
    estimate = decompose(srgb_to_linear(image / 255.0).astype(np.float32), camera=camera, irn=irn, depth=depth,
                         max_side=max_side, device="cpu")
    results["middlebury_motorcycle"] = depth_scores(estimate, gt)
    kitti = shared / "kitti_outdoor"
    if kitti.is_dir():
        photo = load_image(kitti / "000002_image_2.png")
        h, w = photo.rgb.shape[:2]
        camera = kitti_camera(read_kitti_calib(kitti / "000002_calib.txt"), w, h)
        gt = kitti_lidar_depth(kitti / "000002_calib.txt", kitti / "000002_velodyne.bin", w, h)
        estimate = decompose(photo, camera=camera, irn=irn, depth=depth, max_side=max_side, device="cpu")
        results["kitti_000002"] = depth_scores(estimate, gt)
    return results


def contact_sheet(shared: Path, out: Path, irn: str, depth: str, max_side: int, tile_width: int = 256) -> None:
    """One row per real photo: input, albedo, normals, shadow, shading, lit sphere."""
    from ..scene import decompose, preview_tiles

    tiles = []
    for name in SHEET_PHOTOS:
        estimate = decompose(shared / name, irn=irn, depth=depth, max_side=max_side, device="cpu")
        by_label = dict(preview_tiles(estimate))
        label = Path(name).parent.name
        for key in ("photo", "albedo", "normals", "shadow", "shading", "lighting (sphere)"):
            tiles.append((f"{label}: {key}" if key == "photo" else key, by_label[key]))
    save_preview_sheet(out, tiles, tile_width=tile_width, columns=6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Depth metrics and a contact sheet on real photos.")
    parser.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data")
    parser.add_argument("--irn", default="irn-small")
    parser.add_argument("--depth", default="depth-small")
    parser.add_argument("--max-side", type=int, default=320)
    parser.add_argument("--out", type=Path, help="write the depth metrics here as JSON")
    parser.add_argument("--sheet", type=Path, help="write the contact sheet PNG here (needs --shared)")
    args = parser.parse_args(argv)
    results = evaluate_real(args.shared, args.irn, args.depth, args.max_side)
    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    if args.sheet:
        if not args.shared.is_dir():
            print(f"no shared data at {args.shared}: no contact sheet", file=sys.stderr)
            return 2
        contact_sheet(args.shared, args.sheet, args.irn, args.depth, args.max_side)
    return 0


if __name__ == "__main__":
    sys.exit(main())
