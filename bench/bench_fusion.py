"""Benchmark of fusion.fuse (Nehab et al. 2005) on the analytic sphere-in-front-of-a-plane scene.

    .venv/bin/python bench/bench_fusion.py [--sizes 0.25 0.5 1 2 4] [--lsqr-limit 60] [--quick]

Scene: geometry.synthetic_sphere_plane seen by a 60 degree 4:3 camera, exact normals, input depth
with 2 % white relative noise, stored as float32 maps (as read from EXR). Every (size, solver) runs in
a fresh child process, so that its peak memory is its own: the peak resident set size (VmHWM) is
reset just before fuse() is called (/proc/self/clear_refs) and read after it, so it counts the
process (Python, numpy, the input maps: about 0.2 GB) plus everything fuse() allocates. Times are
fuse()'s own: build (checks, rows, matrix), setup (AMG hierarchy), solve (iterations); imports are
warmed up on a tiny problem first. lsqr runs on the rows themselves and is given up at sizes after
the first one that takes longer than --lsqr-limit seconds. A second table shows accuracy against
the solver tolerance at 1 megapixel, for the default lam and for a low-confidence case
(confidence 0.01 everywhere, where the normals carry far more weight and CG needs a good
preconditioner).

Error: RMS relative depth error against the exact depth, without the one-pixel band on either side
of the sphere's silhouette (see tests/test_fusion.py). Prints markdown tables and the machine, and
writes bench/results/fusion.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402 - bench/common.py, beside this script
from common import reset_peak, status_mb  # noqa: E402

NOISE = 0.02
THRESHOLD = 0.2  # above the 2.8 % pixel-to-pixel spread of the noisy input, far below the silhouette step
SIZES_MP = (0.25, 0.5, 1.0, 2.0, 4.0)
TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def image_size(megapixels: float) -> tuple[int, int]:
    """4:3 width and height (multiples of 4) with about that many megapixels."""
    width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5 / 4)) * 4
    return width, width * 3 // 4


def make_scene(width: int, height: int):
    """(camera, exact depth float64, noisy depth float32, normals float32, band bool) for one size."""
    import numpy as np

    from invrender_core import geometry
    from invrender_core.camera import Camera

    camera = Camera.from_fov(width, height, 60.0)
    depth, normals, _ = geometry.synthetic_sphere_plane(camera)
    rng = np.random.default_rng(0)
    noisy = (depth * (1.0 + NOISE * rng.standard_normal(depth.shape))).astype(np.float32)
    band = geometry.depth_discontinuities(depth, 0.05)
    return camera, depth, noisy, normals.astype(np.float32), band


def relative_rms(estimate, depth, band) -> float:
    import numpy as np

    keep = ~band
    return float(np.sqrt(np.mean(np.square(estimate[keep] / depth[keep] - 1.0))))


def child_size(megapixels: float, solver: str) -> dict:
    """One fuse() call at one size, in this (fresh) process."""
    import numpy as np

    from invrender_core import fusion
    from invrender_core.camera import Camera

    tiny = Camera.from_fov(40, 30, 60.0)  # warm imports and first-call costs
    fusion.fuse(np.full((30, 40), 2.0, np.float32), np.tile(np.float32([0, 0, 1]), (30, 40, 1)), tiny,
                solver=solver)
    width, height = image_size(megapixels)
    camera, depth, noisy, normals, band = make_scene(width, height)
    gc.collect()
    rss_before = status_mb("VmRSS")
    peak_is_own = reset_peak()
    start = time.perf_counter()
    fused, info = fusion.fuse(noisy, normals, camera, solver=solver, discontinuity_threshold=THRESHOLD,
                              return_info=True)
    total = time.perf_counter() - start
    return {"megapixels": width * height / 1e6, "width": width, "height": height, "solver": solver,
            "build_s": info.build_s, "setup_s": info.setup_s, "solve_s": info.solve_s, "total_s": total,
            "iterations": info.iterations, "residual": info.residual, "converged": info.converged,
            "rss_before_mb": rss_before, "peak_rss_mb": status_mb("VmHWM"), "peak_is_fuse_only": peak_is_own,
            "input_error": relative_rms(noisy, depth, band), "fused_error": relative_rms(fused, depth, band)}


def child_tolerance(megapixels: float) -> list[dict]:
    """Accuracy and time against tol, default lam and a low-confidence case, in this process."""
    import numpy as np

    from invrender_core import fusion

    width, height = image_size(megapixels)
    camera, depth, noisy, normals, band = make_scene(width, height)
    rows = []
    for case, confidence in (("default", None), ("confidence 0.01", np.full(depth.shape, 0.01))):
        kwargs = dict(confidence=confidence, discontinuity_threshold=THRESHOLD)
        reference = fusion.fuse(noisy, normals, camera, tol=1e-10, maxiter=500, **kwargs)
        error_ref = relative_rms(reference, depth, band)
        for solver in ("amg", "cg-jacobi"):
            for tol in TOLERANCES:
                fused, info = fusion.fuse(noisy, normals, camera, solver=solver, tol=tol, return_info=True,
                                          **kwargs)
                rows.append({"case": case, "solver": solver, "tol": tol, "iterations": info.iterations,
                             "solve_s": info.setup_s + info.solve_s,
                             "fused_error": relative_rms(fused, depth, band),
                             "converged_error": error_ref,
                             "difference_to_converged": relative_rms(fused, reference, np.zeros_like(band))})
    return rows


def machine() -> dict:
    import pyamg
    import scipy

    return {**common.machine(), "scipy": scipy.__version__, "pyamg": pyamg.__version__}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=list(SIZES_MP), help="megapixels")
    parser.add_argument("--lsqr-limit", type=float, default=60.0, help="seconds; then no lsqr")
    parser.add_argument("--tolerance-size", type=float, default=1.0, help="megapixels, tolerance table")
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "fusion.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        out = child_size(float(rest[0]), rest[1]) if kind == "size" else child_tolerance(float(rest[0]))
        print(json.dumps(out))
        return
    if args.quick:
        args.sizes, args.tolerance_size = [0.05, 0.1], 0.1

    info = machine()
    print(f"machine: {info['cpu']}, {info['usable_cpus']} usable of {info['logical_cpus']} logical CPUs, "
          f"load average {info['load_average_at_start'][0]:.2f} at start; python {info['python']}, "
          f"numpy {info['numpy']}, scipy {info['scipy']}, pyamg {info['pyamg']}\n")
    rows, lsqr_given_up = [], None
    for mp in args.sizes:
        for solver in ("amg", "cg-jacobi", "lsqr"):
            if solver == "lsqr" and lsqr_given_up is not None:
                continue
            timeout = args.lsqr_limit if solver == "lsqr" else 600.0
            row = common.run_child(__file__, ["size", str(mp), solver], timeout)
            if row is None:
                lsqr_given_up = mp
                print(f"  lsqr at {mp} MP took more than {args.lsqr_limit:.0f} s: not run at larger sizes",
                      flush=True)
                continue
            rows.append(row)
            print(f"  {row['megapixels']:.2f} MP {solver}: {row['total_s']:.2f} s", flush=True)
    header = ("| MP | size | solver | build s | setup s | solve s | total s | iterations | peak RSS MB "
              "| input err | fused err |")
    print("\n" + header + "\n" + "|---" * 11 + "|")
    for r in rows:
        print(f"| {r['megapixels']:.2f} | {r['width']}x{r['height']} | {r['solver']} | {r['build_s']:.2f} "
              f"| {r['setup_s']:.2f} | {r['solve_s']:.2f} | {r['total_s']:.2f} | {r['iterations']} "
              f"| {r['peak_rss_mb']:.0f} | {r['input_error']:.4f} | {r['fused_error']:.5f} |")
    if lsqr_given_up is not None:
        print(f"\nlsqr: given up from {lsqr_given_up} MP on (over {args.lsqr_limit:.0f} s).")

    tolerance_rows = common.run_child(__file__, ["tolerance", str(args.tolerance_size)], 1200.0) or []
    print(f"\nAccuracy against tol at {args.tolerance_size} MP (error: RMS relative, vs truth; "
          "difference: vs the converged solution):\n")
    print("| case | solver | tol | iterations | setup+solve s | fused err | difference to converged |")
    print("|---" * 7 + "|")
    for r in tolerance_rows:
        print(f"| {r['case']} | {r['solver']} | {r['tol']:.0e} | {r['iterations']} | {r['solve_s']:.2f} "
              f"| {r['fused_error']:.5f} | {r['difference_to_converged']:.1e} |")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": info, "noise": NOISE, "discontinuity_threshold": THRESHOLD,
                                       "lsqr_limit_s": args.lsqr_limit, "lsqr_given_up_at_mp": lsqr_given_up,
                                       "sizes": rows, "tolerance": tolerance_rows}, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
