"""Benchmark of scene.decompose (photo -> albedo, shading, shadow, normals, depth, fusion) on a 1-megapixel photo.

    .venv/bin/python bench/bench_decompose.py [--quick] [--devices cpu cuda] [--photo-size W H --output FILE]

Photo: samples/sample_photo.png (384x256) upscaled bilinearly to 1224x816 (1.0 megapixels; --photo-size 6000 4000
for a 24-megapixel camera's), written as a PNG so that decoding is part of the run. Networks: the shipped irn-small
and depth-small (with their registry configs, as `invrender decompose` runs them) where a configuration has their
widths; other widths (the width-0.25 InverseRenderNet a GPU would train) are randomly initialised, registered in a
temporary weights folder and loaded by name (sha256 check included), as in real use. Random weights cost the same
network time as trained ones; fusion's iteration count depends on the values.

Every configuration runs in a fresh child process: a warm-up decompose of a tiny image first (imports and
first-call costs), then the peak resident set size (VmHWM) is reset (/proc/self/clear_refs) and the timed
decompose + write_estimate runs; "peak RSS" is the process's peak during that run (Python, torch, numpy and
all maps included), "max RSS" the whole child's (ru_maxrss). GPU rows also give torch's peak CUDA memory.
Stage times come from decompose's metadata ("models" includes loading the photo). Prints a markdown table and
the machine, and writes bench/results/decompose.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402 - bench/common.py, beside this script
from common import reset_peak, status_mb  # noqa: E402

PHOTO_SIZE = (1224, 816)
# (IRN width, depth width, max_side)
CONFIGS = ((0.125, 0.25, 256), (0.125, 0.25, 320), (0.25, 0.25, 320), (0.125, 0.25, 512))
QUICK_CONFIGS = ((0.125, 0.25, 320),)  # decompose's default working size
STAGES = ("models", "irn", "depth", "upsample", "lighting", "fusion")


def make_photo(path: Path, size: tuple[int, int]) -> None:
    from invrender_core.io import load_image, resize_linear, write_png

    sample = load_image(ROOT / "samples" / "sample_photo.png").rgb
    write_png(path, resize_linear(sample, *size))


def child(photo: str, irn_width: float, depth_width: float, max_side: int, device: str) -> dict:
    """One timed decompose in this (fresh) process."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from invrender_core import scene
    from invrender_core.nets import weights
    from invrender_core.nets.depth import MegaDepthHourglass
    from invrender_core.nets.irn import InverseRenderNet

    torch.manual_seed(0)
    shipped = shipped_widths() == (irn_width, depth_width)
    with tempfile.TemporaryDirectory(prefix="bench-weights-") as tmp:  # the registered weights go with it
        folder = Path(tmp)  # searched before the shipped weights: empty unless random ones are registered
        if not shipped:
            for name, arch, model in (("irn-bench", "irn", InverseRenderNet(width=irn_width)),
                                      ("depth-bench", "megadepth", MegaDepthHourglass(width=depth_width))):
                source = folder / f"{name}-source.safetensors"
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(source))
                weights.register_shipped(source, name, arch, {"width": irn_width if arch == "irn" else depth_width},
                                         licence="bench", card_markdown="random init", folder=folder)
        names = (scene.DEFAULT_IRN, scene.DEFAULT_DEPTH) if shipped else ("irn-bench", "depth-bench")
        kwargs = dict(irn=names[0], depth=names[1], weights_dir=folder, device=device, max_side=max_side)
        scene.decompose(np.random.default_rng(0).random((48, 64, 3)).astype(np.float32), **kwargs)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        rss_before = status_mb("VmRSS")
        peak_is_own = reset_peak()
        start = time.perf_counter()
        estimate = scene.decompose(photo, **kwargs)
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            scene.write_estimate(estimate, Path(out) / "maps")
        write_s = time.perf_counter() - t
        total = time.perf_counter() - start
    meta = estimate.metadata
    return {"device": device, "networks": "shipped" if shipped else "random init", "irn_width": irn_width,
            "depth_width": depth_width, "max_side": max_side,
            "working_size": meta["working_size"], "fusion_size": meta["fusion_size"],
            "stages_s": {k: meta["timings_s"][k] for k in STAGES}, "decompose_s": meta["timings_s"]["total"],
            "write_s": write_s, "total_s": total, "rss_before_mb": rss_before, "peak_rss_mb": status_mb("VmHWM"),
            "peak_is_run_only": peak_is_own,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
            "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
            "torch_threads": torch.get_num_threads(), "warnings": meta.get("warnings", [])}


def shipped_widths() -> tuple[float, float]:
    """(IRN width, depth width) of the shipped default networks."""
    from invrender_core import scene
    from invrender_core.nets import weights

    entries = weights.read_registry(weights.shipped_weights_dir() / weights.REGISTRY_FILE)
    return entries[scene.DEFAULT_IRN].config["width"], entries[scene.DEFAULT_DEPTH].config["width"]


def machine() -> dict:
    import torch

    info = {**common.machine(), "torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], help="default: cpu, and cuda if available")
    parser.add_argument("--quick", action="store_true", help="one configuration only (a smoke run)")
    parser.add_argument("--photo-size", nargs=2, type=int, default=PHOTO_SIZE, metavar=("W", "H"))
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "decompose.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        photo, irn_width, depth_width, max_side, device = args.child
        print(json.dumps(child(photo, float(irn_width), float(depth_width), int(max_side), device)))
        return

    info = machine()
    devices = args.devices or (["cpu", "cuda"] if info["cuda_available"] else ["cpu"])
    print(f"machine: {info['cpu']}, {info['usable_cpus']} usable of {info['logical_cpus']} logical CPUs, "
          f"load average {info['load_average_at_start'][0]:.2f} at start; python {info['python']}, "
          f"numpy {info['numpy']}, torch {info['torch']}" + (f"; GPU {info['gpu']}" if "gpu" in info else "") + "\n")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        width, height = args.photo_size
        photo = Path(folder) / f"photo_{width}x{height}.png"
        make_photo(photo, (width, height))
        for device in devices:
            for irn_width, depth_width, max_side in QUICK_CONFIGS if args.quick else CONFIGS:
                child_args = [str(photo), str(irn_width), str(depth_width), str(max_side), device]
                row = common.run_child(__file__, child_args, 1200.0)
                rows.append(row)
                print(f"  {device} irn {irn_width} depth {depth_width} max_side {max_side}: "
                      f"{row['total_s']:.2f} s", flush=True)

    header = ("| device | networks | irn w | depth w | working | fusion grid | " + " | ".join(f"{s} s" for s in STAGES)
              + " | decompose s | write s | peak RSS MB | CUDA peak MB |")
    print(f"\nPhoto {width}x{height}:\n\n" + header + "\n" + "|---" * (len(STAGES) + 10) + "|")
    for r in rows:
        cuda = f"{r['cuda_peak_mb']:.0f}" if r["cuda_peak_mb"] is not None else "-"
        (ww, wh), (fw, fh) = r["working_size"], r["fusion_size"]
        print(f"| {r['device']} | {r['networks']} | {r['irn_width']} | {r['depth_width']} | {ww}x{wh} | {fw}x{fh} | "
              + " | ".join(f"{r['stages_s'][s]:.2f}" for s in STAGES)
              + f" | {r['decompose_s']:.2f} | {r['write_s']:.2f} | {r['peak_rss_mb']:.0f} | {cuda} |")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": info, "photo_size": [width, height], "runs": rows}
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
