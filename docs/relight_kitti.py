"""Relight the real KITTI frame 000002 (sunlit street, hard shadows) through a time of day: docs/relight_kitti/.

    .venv/bin/python docs/relight_kitti.py [--shared ../shared/data] [--frames 8]

The photo is decomposed once with the shipped networks (camera 2's calibrated intrinsics), then relit by
`invrender_core.relight.Relighter` with the sun moving from low in the east-ish right (elevation 12, azimuth
70) over to the left (elevation 55, azimuth 250), the photo's own sky turning with it and the sun
`relight.DEFAULT_SUN_TO_SKY` times as bright as the sky's mean and its cast shadows corrected by the shipped shadow
refiner, as `invrender relight IMAGE --sun 12 70 --to 55 250 --frames N` does. Writes frame_NN.png (half size) and
sheet.png (the photo, its shadow map and the frames, quarter size) into docs/relight_kitti/.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

START, END = (12.0, 70.0), (55.0, 250.0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "relight_kitti")
    ap.add_argument("--refine", default=None,
                    help="refiner weights, or 'none' (default: the shipped relight-refine-small)")
    ap.add_argument("--shadow-refine", default=None,
                    help="shadow refiner weights, or 'none' (default: the shipped shadow-refine-small)")
    args = ap.parse_args(argv)

    from invrender_core import relight, scene
    from invrender_core.io import load_image, resize_linear, save_preview_sheet, write_png
    from invrender_core.nets import relight_refine, shadow_refine
    from invrender_core.train.real_data import kitti_camera, read_kitti_calib

    folder = args.shared / "kitti_outdoor"
    photo_file = folder / "000002_image_2.png"
    if not photo_file.exists():
        print(f"error: {photo_file} not found: give --shared the folder of the shared data", file=sys.stderr)
        return 2
    photo = load_image(photo_file)
    height, width = photo.rgb.shape[:2]
    camera = kitti_camera(read_kitti_calib(folder / "000002_calib.txt"), width, height)
    estimate = scene.decompose(photo, camera=camera, device="cpu")
    refiner = None if args.refine == "none" else relight_refine.load(args.refine or relight.DEFAULT_REFINER)
    shadow_refiner = None if args.shadow_refine == "none" else shadow_refine.load(
        args.shadow_refine or relight.DEFAULT_SHADOW_REFINER)
    start = time.perf_counter()
    relighter = relight.Relighter(estimate, refine=refiner, shadow_refine=shadow_refiner)
    args.out.mkdir(parents=True, exist_ok=True)
    half = (width // 2, height // 2)
    tiles = [("photo", resize_linear(photo.rgb, *half)), ("shadow map", resize_linear(estimate.shadow, *half))]
    for k, (sun, relit) in enumerate(relighter.time_of_day(START, END, args.frames)):
        frame = resize_linear(relit.image, *half)
        write_png(args.out / f"frame_{k + 1:02d}.png", frame)
        tiles.append((f"sun {sun[0]:.0f} / {sun[1]:.0f} deg", frame))
    seconds = time.perf_counter() - start
    save_preview_sheet(args.out / "sheet.png", tiles, tile_width=half[0] // 2, columns=2)
    print(f"wrote {args.frames} frames and sheet.png to {args.out} ({seconds:.1f} s relighting, "
          f"{'refined' if refiner is not None else 'not refined'}, shadows "
          f"{'refined' if shadow_refiner is not None else 'as marched'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
