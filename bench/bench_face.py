"""End-to-end benchmark of the face tool (`invrender_core.face.pipeline.fit_face`) on a real video.

    .venv/bin/python bench/bench_face.py [--video ../shared/data/videos/WDA_AlexandriaOcasioCortez_000.mp4]

The default video is 512x512, 200 frames. Timed by stage (from the progress callback): tracking the face,
correspondences (crops + network + surface lookup), the least-squares fit, albedo and lighting, the albedo
texture; the whole call, and frames/s. The target: a 200-frame 512² video in <= 60 s on 2 CPU cores. Prints a
markdown table and the machine, and writes bench/results/face.json. Needs the Surrey model in
../shared/data/eos and the shipped face-corr-small weights.
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

DATA = ROOT.parent / "shared" / "data"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--video", type=Path, default=DATA / "videos" / "WDA_AlexandriaOcasioCortez_000.mp4")
    ap.add_argument("--model", type=Path, default=DATA / "eos" / "sfm_shape_3448.bin")
    args = ap.parse_args(argv)

    import torch

    from invrender_core.face import pipeline
    from invrender_core.face.morphable_model import load_model

    model = load_model(args.model)
    stamps: list[tuple[str, float]] = []

    def progress(stage: str, fraction: float) -> None:
        if not stamps or stamps[-1][0] != stage:
            stamps.append((stage, time.perf_counter()))

    start = time.perf_counter()
    rig = pipeline.fit_face(args.video, model, pipeline.FaceSettings(), progress=progress)
    total = time.perf_counter() - start
    stamps.append(("end", time.perf_counter()))
    rows = [{"stage": "loading the network", "seconds": round(stamps[0][1] - start, 2)}]
    rows += [{"stage": stage, "seconds": round(stamps[k + 1][1] - t, 2)} for k, (stage, t) in enumerate(stamps[:-1])
             if stage != "done"]
    machine = common.machine()
    machine["torch"] = torch.__version__
    machine["torch_threads"] = torch.get_num_threads()
    print(f"face tool on {args.video.name}: {rig.num_frames} frames fitted, {rig.image_size[0]}x{rig.image_size[1]}; "
          "target: 200 frames of 512² in <= 60 s\n")
    print("| stage | seconds |")
    print("| --- | ---: |")
    for r in rows:
        print(f"| {r['stage']} | {r['seconds']:.2f} |")
    print(f"| **total** | **{total:.2f}** ({rig.num_frames / total:.1f} frames/s) |")
    print(f"\nmachine: {json.dumps(machine)}")
    out = ROOT / "bench" / "results" / "face.json"
    out.write_text(json.dumps({"video": args.video.name, "frames": rig.num_frames, "total_s": round(total, 2),
                               "rows": rows, "machine": machine}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
