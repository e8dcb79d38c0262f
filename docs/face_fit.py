"""Contact sheets of the face tool on the real videos: the fitted mesh drawn over frames.

    .venv/bin/python docs/face_fit.py [--frames 4] [--out docs/face_fit]

For each video in ../shared/data/videos: `invrender_core.face.pipeline.fit_face` on the whole clip (shipped
network, Surrey model from ../shared/data/eos), then `--frames` frames spread through it, each shown as the
frame, the frame with the posed mesh's edges and the model's landmark vertices (green) drawn over it, and the
shaded fitted mesh (its albedo texture under the frame's fitted SH lighting) rendered by the project's
rasteriser. One JPEG per video.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
TILE = 256


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "face_fit")
    args = ap.parse_args(argv)

    from invrender_core import sh
    from invrender_core.camera import Camera
    from invrender_core.face import pipeline, video
    from invrender_core.face.morphable_model import load_model
    from invrender_core.face.render import rasterize, vertex_normals
    from invrender_core.face.texture import sample_bilinear
    from invrender_core.io._cv import cv2
    from invrender_core.io.colour import linear_to_srgb

    model_file = DATA / "eos" / "sfm_shape_3448.bin"
    if not model_file.exists():
        print(f"error: {model_file} not found: this script reads the Surrey model and the videos of the shared "
              f"data folder", file=sys.stderr)
        return 2
    model = load_model(model_file)
    edges = np.unique(np.sort(np.concatenate([model.triangles[:, [0, 1]], model.triangles[:, [1, 2]],
                                              model.triangles[:, [2, 0]]]), axis=1), axis=0)[::3]
    landmarks = np.array(list(model.landmarks.values()))
    args.out.mkdir(parents=True, exist_ok=True)
    for path in sorted((DATA / "videos").glob("*.mp4")):
        rig = pipeline.fit_face(path, model)
        w, h = rig.image_size
        picks = np.linspace(0, rig.num_frames - 1, args.frames).round().astype(int)
        wanted = {int(rig.frames[k]): k for k in picks}
        rows = []
        with video.iter_frames(video.open_source(path)) as reader:
            for index, rgb in reader:
                if index not in wanted:
                    continue
                k = wanted[index]
                f = float(rig.focal[k])
                camera = Camera(w, h, f, f, w / 2, h / 2)
                posed = rig.vertices(k).astype(np.float64)
                uv, _ = camera.project(posed)
                overlay = rgb.copy()
                for a, b in edges:
                    cv2.line(overlay, tuple(np.round(uv[a]).astype(int)), tuple(np.round(uv[b]).astype(int)),
                             (255, 255, 255), 1, cv2.LINE_AA)
                for p in uv[landmarks]:
                    cv2.circle(overlay, tuple(np.round(p).astype(int)), max(2, w // 160), (0, 255, 0), -1)
                overlay = cv2.addWeighted(rgb, 0.45, overlay, 0.55, 0)
                raster = rasterize(posed, rig.triangles, camera)
                normals = raster.interpolate(vertex_normals(posed, rig.triangles), rig.triangles)
                texel = raster.interpolate(rig.uvs.astype(np.float64), rig.triangles)  # (H, W, 2), v up
                s = rig.albedo.shape[0]
                albedo = sample_bilinear(rig.albedo, np.stack([texel[..., 0] * s, (1 - texel[..., 1]) * s],
                                                              -1).reshape(-1, 2)).reshape(h, w, 3)
                shaded = albedo * np.maximum(sh.shading(normals, rig.sh[k]), 0) * raster.mask[..., None]
                render = np.round(linear_to_srgb(np.clip(shaded, 0, 1)) * 255).astype(np.uint8)
                tiles = [cv2.resize(im, (TILE, round(TILE * h / w)), interpolation=cv2.INTER_AREA)
                         for im in (rgb, overlay, render)]
                rows.append(np.concatenate(tiles, axis=1))
        sheet = np.concatenate(rows, axis=0)
        out = args.out / f"{path.stem}.jpg"
        cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        print(f"wrote {out} ({rig.num_frames} frames fitted)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
