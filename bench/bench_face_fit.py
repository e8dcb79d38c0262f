"""Benchmark of the morphable-model fit (`invrender_core.face.fit`) with the real Surrey Face Model.

    .venv/bin/python bench/bench_face_fit.py [--points 2000] [--frames 10 30 100] [--threads 1 2] [--quick]

Data: ../shared/data/eos/sfm_shape_3448.bin (3448 vertices, K = 63 identity components, E = 6
expressions). Every frame: a random identity (shared by all frames of a video), random expression, head
pose (yaw +-45, pitch +-20, roll +-10 degrees) at 600 mm, focal 800 px in a 640x480 image, N random points
on the camera-facing triangles, projected, with 1 px Gaussian noise and 10 % gross outliers (anywhere on
the face). Timed:
- `fit_frame` per frame (known focal and estimated focal), the median over the frames;
- `fit_frames` on F frames at once (one identity, one focal), frames/s = F / time;
- `inverse_sh_frames` (albedo shared by F frames + per-frame SH), defaults, colours = albedo * E(n).
Each BLAS thread count runs in a fresh child process (OPENBLAS/OMP/MKL_NUM_THREADS set before numpy is
imported). The target: fit_frames >= 30 frames/s at N = 2000 on 2 CPU cores. Accuracy columns: mean
rotation error (degrees) and mean RMS reprojection error of the kept points (px). Prints markdown tables
and the machine, and writes bench/results/face_fit.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import common  # noqa: E402 - bench/common.py, beside this script

MODEL = ROOT.parent / "shared" / "data" / "eos" / "sfm_shape_3448.bin"
SIZE = (640, 480)
FOCAL = 800.0
DISTANCE = 600.0
NOISE_PX = 1.0
OUTLIERS = 0.1
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def make_frames(model, n_frames: int, n_points: int, seed: int = 0):
    """(correspondences, true rotations) of a synthetic video: one identity, per-frame expression and pose."""
    import numpy as np

    from invrender_core.face.fit import Correspondences, vertex_normals
    from invrender_core.face.synthetic import rotation_from_euler
    from invrender_core.sh import directional, shading

    rng = np.random.default_rng(seed)
    identity = rng.standard_normal(model.num_identity)
    light = directional([0.3, 0.5, 0.8], [2.0, 1.8, 1.5])
    light[0] += 0.4
    albedo = np.array([0.6, 0.45, 0.35])
    corrs, rotations = [], []
    for _ in range(n_frames):
        R = rotation_from_euler(rng.uniform(-45, 45), rng.uniform(-20, 20), rng.uniform(-10, 10))
        t = np.array([rng.uniform(-20, 20), rng.uniform(-20, 20), -DISTANCE])
        V = model.vertices(identity, rng.uniform(0, 0.6, model.num_expressions)).astype(np.float64) @ R.T + t
        tri = model.triangles
        face_normal = np.cross(V[tri[:, 1]] - V[tri[:, 0]], V[tri[:, 2]] - V[tri[:, 0]])
        visible = np.flatnonzero(face_normal[:, 2] > 0)
        ids = rng.choice(visible, n_points)
        bary = rng.dirichlet([1.0, 1.0, 1.0], n_points)
        P = np.einsum("nj,njk->nk", bary, V[tri[ids]])
        uv = np.stack([SIZE[0] / 2 + FOCAL * P[:, 0] / -P[:, 2], SIZE[1] / 2 - FOCAL * P[:, 1] / -P[:, 2]], -1)
        pixels = uv + NOISE_PX * rng.standard_normal(uv.shape)
        bad = rng.permutation(n_points)[: int(OUTLIERS * n_points)]
        pixels[bad] = rng.uniform(uv.min(axis=0), uv.max(axis=0), (len(bad), 2))
        normals = np.einsum("nj,njk->nk", bary, vertex_normals(V, tri)[tri[ids]])
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        colours = np.clip(albedo * shading(normals, light), 0.0, None)
        corrs.append(Correspondences(pixels, ids, bary, np.ones(n_points), colours))
        rotations.append(R)
    return corrs, rotations


def angle_deg(A, B) -> float:
    import numpy as np

    return float(np.degrees(np.arccos(np.clip((np.trace(A.T @ B) - 1.0) / 2.0, -1.0, 1.0))))


def child(n_points: int, frame_counts: list[int], sh_counts: list[int]) -> dict:
    """All timings at one BLAS thread count, in this (fresh) process."""
    import numpy as np

    from invrender_core.face.fit import fit_frame, fit_frames, inverse_sh_frames
    from invrender_core.face.morphable_model import load_model

    model = load_model(MODEL)
    n_max = max(frame_counts + [20])
    corrs, rotations = make_frames(model, n_max, n_points)
    fit_frame(model, corrs[0], SIZE, focal=FOCAL)  # warm up
    rows = []
    for focal in (FOCAL, None):
        times, errors, rms = [], [], []
        for corr, R in zip(corrs[:20], rotations[:20], strict=True):
            start = time.perf_counter()
            fit = fit_frame(model, corr, SIZE, focal=focal)
            times.append(time.perf_counter() - start)
            errors.append(angle_deg(fit.rotation, R))
            rms.append(fit.rms_px)
        rows.append({"call": "fit_frame", "focal": "known" if focal else "estimated", "frames": 1,
                     "seconds": float(np.median(times)), "frames_per_s": 1.0 / float(np.median(times)),
                     "rotation_error_deg": float(np.mean(errors)), "rms_px": float(np.mean(rms))})
    for n_frames in frame_counts:
        for focal in (FOCAL, None):
            start = time.perf_counter()
            _, fits = fit_frames(model, corrs[:n_frames], SIZE, focal=focal)
            seconds = time.perf_counter() - start
            rows.append({"call": "fit_frames", "focal": "known" if focal else "estimated", "frames": n_frames,
                         "seconds": seconds, "frames_per_s": n_frames / seconds,
                         "rotation_error_deg": float(np.mean([angle_deg(f.rotation, R) for f, R in
                                                              zip(fits, rotations, strict=False)])),
                         "rms_px": float(np.mean([f.rms_px for f in fits])),
                         "focal_px": fits[0].focal})
    sh_rows = []
    for n_frames in sh_counts:
        _, fits = fit_frames(model, corrs[:n_frames], SIZE, focal=FOCAL)
        start = time.perf_counter()
        inverse_sh_frames(model, fits, corrs[:n_frames])
        seconds = time.perf_counter() - start
        sh_rows.append({"call": "inverse_sh_frames", "frames": n_frames, "seconds": seconds})
    return {"threads": os.environ.get("OPENBLAS_NUM_THREADS"), "fit": rows, "inverse_sh": sh_rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2000, help="correspondences per frame")
    parser.add_argument("--frames", type=int, nargs="+", default=[10, 30, 100], help="fit_frames video lengths")
    parser.add_argument("--sh-frames", type=int, nargs="+", default=[1, 10, 30], help="inverse_sh_frames lengths")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="BLAS thread counts")
    parser.add_argument("--quick", action="store_true", help="small runs only (a smoke run)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "face_fit.json")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        n_points, frames, sh_frames = json.loads(args.child[0])
        print(json.dumps(child(n_points, frames, sh_frames)))
        return
    if not MODEL.is_file():
        sys.exit(f"{MODEL} not found: this benchmark needs the Surrey Face Model from ../shared/data")
    if args.quick:
        args.frames, args.sh_frames, args.threads = [10], [1], [1]

    info = common.machine()
    import scipy

    info["scipy"] = scipy.__version__
    print(f"machine: {info['cpu']}, {info['usable_cpus']} usable of {info['logical_cpus']} logical CPUs, "
          f"load average {info['load_average_at_start'][0]:.2f} at start; python {info['python']}, "
          f"numpy {info['numpy']}, scipy {info['scipy']}")
    print(f"model: {MODEL.name}; {args.points} correspondences per frame, {NOISE_PX:g} px noise, "
          f"{OUTLIERS:.0%} outliers, {SIZE[0]}x{SIZE[1]}, focal {FOCAL:g} px, {DISTANCE:g} mm\n")
    results = []
    for threads in args.threads:
        for name in THREAD_VARIABLES:
            os.environ[name] = str(threads)
        out = common.run_child(__file__, [json.dumps([args.points, args.frames, args.sh_frames])], 1800.0)
        results.append(out)
        print(f"  BLAS threads {threads}: done", flush=True)

    print("\n| BLAS threads | call | focal | frames | seconds | frames/s | rotation err deg | RMS px |")
    print("|---" * 8 + "|")
    for out in results:
        for r in out["fit"]:
            print(f"| {out['threads']} | {r['call']} | {r['focal']} | {r['frames']} | {r['seconds']:.3f} "
                  f"| {r['frames_per_s']:.1f} | {r['rotation_error_deg']:.2f} | {r['rms_px']:.2f} |")
    print("\n| BLAS threads | call | frames | seconds |")
    print("|---" * 4 + "|")
    for out in results:
        for r in out["inverse_sh"]:
            print(f"| {out['threads']} | {r['call']} | {r['frames']} | {r['seconds']:.2f} |")
    load_end = os.getloadavg()[0]
    print(f"\nload average at the end: {load_end:.2f} (other processes on the machine slow the timings down)")

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"machine": info, "load_average_at_end": load_end, "points": args.points,
                                       "noise_px": NOISE_PX, "outliers": OUTLIERS, "image_size": SIZE,
                                       "focal_px": FOCAL, "distance_mm": DISTANCE, "runs": results}, indent=2)
                           + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
