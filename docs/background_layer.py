"""The background layer seen from new viewpoints: docs/background_layer.png.

    .venv/bin/python docs/background_layer.py

`invrender scene` on the demo's sample photo with its camera, once without the background layer
(`--background-band 0`) and once with the default, each rendering a 20-degree orbit (Cycles, 16 samples).
The sheet shows the first and last orbit frames, without the layer on the left and with it on the right: where
the world (cream) shows through beside the objects on the left, the right shows the continued background.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "sample_photo"
FRAMES = 3


def orbit(band: str, out: Path) -> list[np.ndarray]:
    """The orbit frames (H, W, 3) uint8 of `invrender scene --background-band band`, rendered into out."""
    subprocess.run([str(Path(sys.executable).parent / "invrender"), "scene", f"{SAMPLE}.png", "--camera",
                    f"{SAMPLE}_camera.json", "-o", str(out / "scene.blend"), "--novel-views", str(FRAMES),
                    "--views-dir", str(out / "views"), "--orbit-deg", "20", "--samples", "16",
                    "--background-band", band], check=True, capture_output=True)
    return [np.asarray(Image.open(out / "views" / f"view_{k:04d}.png").convert("RGB")) for k in (1, FRAMES)]


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        without, with_layer = (orbit(band, Path(tmp) / name) for band, name in (("0", "off"), ("0.04", "on")))
    gap = np.full((without[0].shape[0], 6, 3), 255, np.uint8)
    rows = [np.concatenate([a, gap, b], axis=1) for a, b in zip(without, with_layer, strict=True)]
    sheet = np.concatenate([rows[0], np.full((6, rows[0].shape[1], 3), 255, np.uint8), rows[1]], axis=0)
    Image.fromarray(sheet).save(ROOT / "docs" / "background_layer.png")
    print(f"wrote {ROOT / 'docs' / 'background_layer.png'}")


if __name__ == "__main__":
    main()
