"""sky.detect_sky on drawn photos with a known sky, and on real photos at hand-labelled points."""

from pathlib import Path

import numpy as np
import pytest

from invrender_core import scene
from invrender_core.io import load_image, resize_linear
from invrender_core.sky import SKY_EDGE_REACH, detect_sky, extend_sky

DATA = Path(__file__).parents[1].parent / "shared" / "data"
H, W, HORIZON = 128, 192, 40


def street(sky_colour=(0.45, 0.6, 0.9), seed=0) -> np.ndarray:
    """Linear photo (H, W, 3): a smooth sky gradient above row HORIZON, textured brown ground and walls below,
    and a smooth white wall (rows 60-100, columns 20-80) that does not reach the sky."""
    rng = np.random.default_rng(seed)
    v = np.arange(H)[:, None, None] / H
    sky = np.asarray(sky_colour) * (1.0 - 0.3 * v) + np.zeros((H, W, 3))
    bricks = ((np.arange(H)[:, None] // 4 + np.arange(W)[None] // 8) % 2)[..., None]
    ground = (0.12 + 0.1 * bricks) * np.array([1.0, 0.75, 0.55]) + 0.03 * rng.random((H, W, 3))
    img = np.where(v * H < HORIZON, sky, ground)
    img[60:100, 20:80] = 0.8  # white, smooth, bright: everything sky is, except reaching the top
    return (img + 0.002 * rng.standard_normal((H, W, 3))).astype(np.float32)


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("colour", [(0.45, 0.6, 0.9), (0.7, 0.72, 0.75)], ids=["blue", "overcast"])
def test_finds_the_sky_and_not_the_white_wall(colour):
    found = detect_sky(street(colour))
    # All of it but the few rows the gradient's blur reaches from the horizon, and nothing below those.
    assert found[:HORIZON - 4].all() and not found[HORIZON + 3:].any()
    assert not found[60:100, 20:80].any()


def test_a_plain_facade_with_windows_reaching_the_top_is_not_sky():
    img = street()
    sky_luminance = float(img[:HORIZON, :120].mean())
    img[:HORIZON + 20, 120:] = sky_luminance  # grey wall as bright as the blue sky, from above the frame down
    for r in range(4, HORIZON + 12, 12):
        for c in range(128, W - 8, 16):
            img[r:r + 6, c:c + 8] = 0.05  # dark windows
    found = detect_sky(img)
    truth = np.zeros((H, W), bool)
    truth[:HORIZON, :120] = True
    assert not found[:, 122:].any()  # the roofline is a colour edge: the wall is its own region, full of holes
    assert iou(found, truth) > 0.85


def test_no_sky_in_textured_or_warm_photos():
    img = street()
    img[:HORIZON] = street()[HORIZON:2 * HORIZON]  # the top is bricks too
    assert not detect_sky(img).any()
    warm = street(sky_colour=(0.9, 0.6, 0.4))  # smooth, bright, reaching the top, but red: a sunlit wall
    assert not detect_sky(warm).any()
    with pytest.raises(ValueError, match="H, W, 3"):
        detect_sky(np.zeros((10, 10)))


@pytest.mark.parametrize("colour", [(0.45, 0.6, 0.9), (0.7, 0.72, 0.75)], ids=["blue", "overcast"])
def test_extend_sky_reaches_the_horizon_and_stops_there(colour):
    # detect_sky stops a few rows short of the sky's edge; at 4x the resolution that was a band of ground-lit sky.
    photo = street(colour)
    found = detect_sky(photo)
    assert not found[:HORIZON].all()  # the gap that extend_sky closes
    grown = extend_sky(photo, found, SKY_EDGE_REACH)
    np.testing.assert_array_equal(grown, np.arange(H)[:, None] < HORIZON + np.zeros(W, bool))
    big = resize_linear(photo, 4 * W, 4 * H)
    coarse = resize_linear(found.astype(np.float32), 4 * W, 4 * H) > 0.5
    grown = extend_sky(big, coarse, 4 * SKY_EDGE_REACH)
    assert grown[:4 * HORIZON - 2].all() and not grown[4 * HORIZON + 2:].any()
    np.testing.assert_array_equal(extend_sky(photo, np.zeros((H, W), bool), 5), np.zeros((H, W), bool))


def test_decompose_leaves_the_sky_out_of_fusion_and_the_mesh(tmp_path):
    from invrender_core.train.synthetic import register_untrained_networks

    register_untrained_networks(tmp_path)
    img = street()
    est = scene.decompose(img, device="cpu", irn="irn-test", depth="depth-test", weights_dir=tmp_path)
    assert est.sky[:HORIZON - 4].all() and not est.sky[HORIZON + 3:].any()
    assert est.metadata["sky_fraction"] == pytest.approx(est.sky.mean(), abs=1e-6)
    assert (est.confidence[est.sky] == 0).all()
    np.testing.assert_array_equal(est.depth_fused[est.sky], est.depth[est.sky])  # kept, not fused
    uvs = scene.scene_assets(est, name="street")["uvs"]  # u = (j + 0.5) / W, v = 1 - (i + 0.5) / H ...
    rows = np.clip(np.round((1.0 - uvs[:, 1]) * H - 0.5).astype(int), 0, H - 1)  # ... or 0 or 1 on the edges
    cols = np.clip(np.round(uvs[:, 0] * W - 0.5).astype(int), 0, W - 1)
    assert len(uvs) > 0.5 * (~est.sky).sum() and not est.sky[rows, cols].any()  # no vertex on a sky pixel


@pytest.mark.parametrize("name, sky_points, ground_points, fraction", [
    # (x, y) in the full photo, labelled by hand
    ("kitti_outdoor/000002_image_2.png", [(700, 20), (690, 50), (1050, 15)], [(250, 200), (650, 300), (1000, 200)],
     (0.03, 0.12)),
    ("opensfm_berlin/01.jpg", [], [(100, 100), (500, 50)], (0.0, 0.005)),
])
def test_real_photos_at_hand_labelled_points(name, sky_points, ground_points, fraction):
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} not available")
    photo = load_image(path).rgb
    h, w = photo.shape[:2]
    work_w, work_h = scene.working_size(w, h)
    found = detect_sky(resize_linear(photo, work_w, work_h))
    assert fraction[0] <= found.mean() <= fraction[1]
    for (x, y), expected in [(p, True) for p in sky_points] + [(p, False) for p in ground_points]:
        assert found[int(y * work_h / h), int(x * work_w / w)] == expected, (x, y)
