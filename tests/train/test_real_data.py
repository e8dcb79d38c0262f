from pathlib import Path

import numpy as np
import pytest

from invrender_core.train import real_data

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
KITTI = SHARED / "kitti_outdoor"


def _calib():
    # Velodyne: x forward, y left, z up -> camera: x right, y down, z forward.
    tr = np.array([[0.0, -1.0, 0.0, 0.1], [0.0, 0.0, -1.0, -0.2], [1.0, 0.0, 0.0, 0.3]])
    P2 = np.array([[500.0, 0.0, 320.0, 40.0], [0.0, 500.0, 120.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    return {"P2": P2, "R0_rect": np.eye(3), "Tr_velo_to_cam": tr}


def test_project_lidar_places_a_point_where_the_pinhole_says():
    calib = _calib()
    # A point 10 m ahead, 1 m left, 0.5 m up in the velodyne frame -> camera (x=-1+0.1, y=-0.5-0.2, z=10.3).
    points = np.array([[10.0, 1.0, 0.5, 0.0], [20.0, 1.0, 0.5, 0.0], [-5.0, 0.0, 0.0, 0.0]])
    depth = real_data.project_lidar(points, calib, 640, 240)
    x, y, z = -0.9, -0.7, 10.3
    u = int(np.floor((500 * x + 320 * z + 40) / z))
    v = int(np.floor((500 * y + 120 * z) / z))
    assert depth[v, u] == pytest.approx(z, rel=1e-6)
    assert np.count_nonzero(depth) == 2  # the point behind the car is dropped; the far one elsewhere


def test_project_lidar_keeps_the_nearest_point_per_pixel():
    calib = _calib()
    calib["Tr_velo_to_cam"][:, 3] = 0.0  # camera at the scanner, so p and 2p lie on one ray
    calib["P2"][0, 3] = 0.0
    points = np.array([[20.0, 0.2, 0.4, 0.0], [10.0, 0.1, 0.2, 0.0], [30.0, 0.3, 0.6, 0.0]])
    depth = real_data.project_lidar(points, calib, 640, 240)
    assert np.count_nonzero(depth) == 1
    assert depth.max() == pytest.approx(10.0, abs=1e-5)


def test_motorcycle_depth_formula():
    d = np.array([[10.0, np.inf], [0.0, 50.0]], dtype=np.float32)
    depth = real_data.motorcycle_depth_from_disparity(d)
    f, b, doffs = real_data.MOTORCYCLE_FOCAL, real_data.MOTORCYCLE_BASELINE_MM, real_data.MOTORCYCLE_DOFFS
    assert depth[0, 0] == pytest.approx(f * b / (10.0 + doffs), rel=1e-6)
    assert depth[0, 1] == 0 and depth[1, 0] == 0


def test_middlebury_motorcycle_depth_is_plausible():
    pytest.importorskip("skimage")
    image, depth, camera = real_data.middlebury_motorcycle()
    assert image.shape[:2] == depth.shape == (camera.height, camera.width)
    valid = depth > 0
    assert valid.mean() > 0.9
    # The motorcycle stands 2-3 m from the cameras (Middlebury 2014 scenes span roughly 1-5 m).
    assert 1500 < np.median(depth[valid]) < 3500


@pytest.mark.skipif(not KITTI.is_dir(), reason="../shared/data/kitti_outdoor not present")
def test_kitti_frame_lidar_depth():
    from PIL import Image

    w, h = Image.open(KITTI / "000002_image_2.png").size
    depth = real_data.kitti_lidar_depth(KITTI / "000002_calib.txt", KITTI / "000002_velodyne.bin", w, h)
    valid = depth > 0
    assert 0.02 < valid.mean() < 0.2  # a 64-beam scan covers a few percent of the pixels
    assert 2.0 < np.median(depth[valid]) < 40.0  # street-scene distances in metres
    # LiDAR covers the lower part of the image: the road, not the sky
    assert valid[: h // 4].mean() < valid[h // 2:].mean()


def test_depth_scores_of_an_exact_estimate_and_a_constant():
    from types import SimpleNamespace

    from invrender_core.train.evaluate_real import depth_scores

    rng = np.random.default_rng(0)
    gt = rng.uniform(2.0, 20.0, (12, 16)).astype(np.float32)
    gt[0, :4] = 0  # unknown (no LiDAR return)
    exact = SimpleNamespace(depth=3.0 * gt + (gt == 0), depth_fused=0.5 * gt)  # any scale: SI metric
    scores = depth_scores(exact, gt)
    assert scores["depth_silog"] == pytest.approx(0.0, abs=1e-6)
    assert scores["fused_silog"] == pytest.approx(0.0, abs=1e-6)
    assert scores["pixels_scored"] == gt.size - 4
    log_gt = np.log(gt[gt > 0])
    assert scores["constant_silog"] == pytest.approx(float(log_gt.std()), rel=1e-5)
