"""Benchmark of 2D relighting (`invrender_core.relight`) on a 1-megapixel photo once it is decomposed.

    .venv/bin/python bench/bench_relight.py [--frames N]

Photo: samples/sample_photo.png (384x256) upscaled bilinearly to 1224x816 (1.0 megapixels), decomposed once
with the shipped networks (not timed here: bench_decompose.py covers it). Then, timed:
- "setup": `Relighter(estimate)`: the photo's lighting and its own re-rendering (exposure), once per photo;
- "frame": one `render` under a moved sun (cast shadows marched on the default grid and corrected by the shadow
  refiner, sky recolouring, the refiner), the median of N frames of a time-of-day sequence that reuses the
  decomposition;
- the same frame without the refiner, without the shadow refiner, and with shadows marched at full resolution.
The target is a frame <= 2 s on 2 CPU cores. Prints a markdown table and the machine, and writes
bench/results/relight.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402 - bench/common.py, beside this script

PHOTO_SIZE = (1224, 816)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=5, help="frames of the time-of-day sequence (default 5)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from invrender_core import relight, scene
    from invrender_core.io import load_image, resize_linear
    from invrender_core.nets import relight_refine, shadow_refine

    photo = resize_linear(load_image(ROOT / "samples" / "sample_photo.png").rgb, *PHOTO_SIZE)
    estimate = scene.decompose(photo, fov_deg=60.0, device="cpu")
    refiner = relight_refine.load(relight.DEFAULT_REFINER)
    shadow_refiner = shadow_refine.load(relight.DEFAULT_SHADOW_REFINER)
    rows = []

    def measure(label: str, **options):
        relighter, setup_s = timed(lambda: relight.Relighter(estimate, **options))
        frames = relighter.time_of_day((15.0, 60.0), (60.0, 200.0), args.frames)
        times = []
        for _ in range(args.frames):
            _, t = timed(lambda: next(frames))
            times.append(t)
        rows.append({"config": label, "setup_s": round(setup_s, 3), "frame_median_s": round(float(np.median(times)), 3),
                     "frame_max_s": round(max(times), 3), "frames": args.frames})

    measure("default (both refiners)", refine=refiner, shadow_refine=shadow_refiner)
    measure("without refiner", shadow_refine=shadow_refiner)
    measure("without shadow refiner", refine=refiner)
    measure(f"shadows at full resolution ({PHOTO_SIZE[0]} px)", refine=refiner, shadow_refine=shadow_refiner,
            shadow_max_side=max(PHOTO_SIZE))

    machine = common.machine()
    machine["torch"] = torch.__version__
    machine["torch_threads"] = torch.get_num_threads()
    print(f"relighting a {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]} photo (decomposed once), target: frame <= 2 s\n")
    print("| configuration | setup (s) | frame median (s) | frame max (s) |")
    print("| --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['config']} | {r['setup_s']:.2f} | {r['frame_median_s']:.2f} | {r['frame_max_s']:.2f} |")
    print(f"\nmachine: {json.dumps(machine)}")
    out = ROOT / "bench" / "results" / "relight.json"
    out.write_text(json.dumps({"photo_size": PHOTO_SIZE, "rows": rows, "machine": machine}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
