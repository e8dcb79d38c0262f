"""load_image on real photos from ../shared/data (skipped when that folder is absent)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from invrender_core.io import load_image, srgb_to_linear

DATA = Path(__file__).parents[2].parent / "shared" / "data"
PHOTOS = [
    "megadepth_demo/demo.jpg",
    "megadepth_demo/demo_2.jpg",
    "kitti_outdoor/000000_image_2.png",
    "kitti_outdoor/000002_image_2.png",
]


@pytest.mark.parametrize("name", PHOTOS)
def test_real_photo(name):
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    img = load_image(path)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    h, w = reference.shape[:2]
    assert img.rgb.shape == (h, w, 3) and img.rgb.dtype == np.float32
    assert img.original_size == (w, h)
    assert np.isfinite(img.rgb).all() and img.rgb.min() >= 0.0 and img.rgb.max() <= 1.0
    assert img.rgb.std() > 0.01  # a real picture, not a flat fill
    assert img.bit_depth == 8
    np.testing.assert_allclose(img.rgb, srgb_to_linear(reference / 255.0), atol=1e-6)
    cam = img.camera()
    assert (cam.width, cam.height) == (w, h) and 0 < cam.fov_x_deg < 180
