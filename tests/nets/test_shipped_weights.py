"""The weights the package ships: registered, intact, strict-loadable, documented, and better than trivial
answers on the demo's sample photo (rendered separately from the training data, with exact normals and depth)."""

from pathlib import Path

import numpy as np
import pytest

from invrender_core import relight, scene
from invrender_core.camera import Camera
from invrender_core.io import load_image, read_exr
from invrender_core.nets import weights
from invrender_core.train import metrics
from invrender_core.train.depth_losses import si_log_rmse

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SHIPPED = (scene.DEFAULT_IRN, scene.DEFAULT_DEPTH, scene.DEFAULT_SHADOW_NET, relight.DEFAULT_REFINER)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_are_registered_intact_and_documented(name):
    folder = weights.shipped_weights_dir()
    entry = weights.read_registry(folder / weights.REGISTRY_FILE)[name]
    assert weights.sha256_of(folder / entry.file) == entry.sha256
    card = (folder / entry.card_file).read_text()
    for required in ("held-out", "invrender train", "seed", "steps"):
        assert required in card, f"{entry.card_file} does not mention {required!r}"
    model = weights.load_named(name, weights_dir=folder)  # strict load into the registered architecture
    assert not model.training


@pytest.fixture(scope="module")
def sample_estimate():
    photo = load_image(SAMPLES / "sample_photo.png")
    camera = Camera.from_dict(scene.read_json(SAMPLES / "sample_photo_camera.json"))
    return scene.decompose(photo, camera=camera, device="cpu", weights_dir=weights.shipped_weights_dir())


def test_shipped_normals_beat_flat_normals_on_the_sample_photo(sample_estimate):
    truth = read_exr(SAMPLES / "sample_photo_normal.exr")
    everywhere = np.ones(truth.shape[:2], bool)
    flat = np.broadcast_to([0.0, 0.0, 1.0], truth.shape)
    predicted = metrics.normal_angular_error(sample_estimate.normals, truth, everywhere)
    assert predicted < metrics.normal_angular_error(flat, truth, everywhere) - 10  # degrees


def test_shipped_depth_beats_a_constant_on_the_sample_photo(sample_estimate):
    truth = read_exr(SAMPLES / "sample_photo_depth.exr")  # 1 % noise: far below the errors compared here
    valid = np.isfinite(truth) & (truth > 0)
    constant = si_log_rmse(np.ones_like(truth), truth, valid)
    assert si_log_rmse(sample_estimate.depth, truth, valid) < 0.8 * constant
    fused = sample_estimate.depth_fused
    ok = valid & np.isfinite(fused) & (fused > 0)
    assert si_log_rmse(np.where(ok, fused, 1.0), truth, ok) < 0.8 * constant
