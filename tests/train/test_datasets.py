"""Training datasets over the multiview format: shapes, geometry of pairs under crop/flip, determinism, no ground
truth read, input-derived masks, evaluation views."""


import numpy as np
import pytest
import torch

from invrender_core.io import srgb_to_linear
from invrender_core.train import datasets
from invrender_core.train.data import write_view
from invrender_core.train.datasets import (
    DepthDataset,
    EvalViews,
    ViewPairDataset,
    decode_srgb8,
    flip_camera,
    frustum_overlap,
    open_source,
    sky_from_mvs,
)
from invrender_core.train.synthetic import intrinsics, look_at, make_dataset, render


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("mv"))


@pytest.fixture(scope="module")
def plane_root(tmp_path_factory):
    """Ground plane only: nothing occludes, so every co-visible pixel can be checked exactly."""
    return make_dataset(tmp_path_factory.mktemp("plane"), sphere=False)


def backproject_world(depth, K, c2w, rows, cols):
    """World points (N, 3) of pixels (rows, cols) of a view with planar depth (H, W)."""
    d = depth[rows, cols]
    x = (cols + 0.5 - K[0, 2]) / K[0, 0] * d
    y = -(rows + 0.5 - K[1, 2]) / K[1, 1] * d
    p = np.stack([x, y, -d], -1)
    return p @ c2w[:3, :3].T + c2w[:3, 3]


def project(points, K, c2w):
    """World points (N, 3) -> pixel (u, v) (N, 2) and planar depth (N,)."""
    p = (points - c2w[:3, 3]) @ c2w[:3, :3]  # inverse rotation: R^T (X - C)
    d = -p[:, 2]
    return np.stack([K[0, 2] + K[0, 0] * p[:, 0] / d, K[1, 2] - K[1, 1] * p[:, 1] / d], -1), d


def assert_pair_consistent(item, min_checked=50):
    """Every plane pixel of view i with depth lands in view j where j's depth agrees with the projected depth.

    On a plane, inverse depth is affine in pixel coordinates, so bilinear interpolation of 1 / depth_j between
    pixel centres is exact: agreement to 1e-4 means K, pose, crop and flip of both views are consistent.
    """
    di, dj = item["depth_i"][0].double().numpy(), item["depth_j"][0].double().numpy()
    Ki, Kj = item["K_i"].double().numpy(), item["K_j"].double().numpy()
    Ti, Tj = item["cam_to_world_i"].double().numpy(), item["cam_to_world_j"].double().numpy()
    rows, cols = np.nonzero(di > 0)
    uv, z = project(backproject_world(di, Ki, Ti, rows, cols), Kj, Tj)
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5  # continuous index coordinates (pixel centres at integers)
    c0, r0 = np.floor(x).astype(int), np.floor(y).astype(int)
    inside = (c0 >= 0) & (c0 < dj.shape[1] - 1) & (r0 >= 0) & (r0 < dj.shape[0] - 1) & (z > 0)
    x, y, c0, r0, z = x[inside], y[inside], c0[inside], r0[inside], z[inside]
    corners = np.stack([dj[r0, c0], dj[r0, c0 + 1], dj[r0 + 1, c0], dj[r0 + 1, c0 + 1]])
    ok = (corners > 0).all(0)
    assert ok.sum() >= min_checked, "too few co-visible pixels to test the pair's geometry"
    inv = 1.0 / np.where(corners > 0, corners, 1.0)
    fx, fy = x - c0, y - r0
    inv_j = ((1 - fy) * ((1 - fx) * inv[0] + fx * inv[1]) + fy * ((1 - fx) * inv[2] + fx * inv[3]))[ok]
    np.testing.assert_allclose(1.0 / inv_j, z[ok], rtol=1e-4)


# ---------- helpers ----------

def test_decode_srgb8_matches_formula():
    codes = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    np.testing.assert_allclose(decode_srgb8(codes), srgb_to_linear(codes / 255.0), rtol=1e-6, atol=1e-7)
    assert decode_srgb8(codes).dtype == np.float32
    with pytest.raises(ValueError, match="uint8"):
        decode_srgb8(codes.astype(np.float32))


def test_sky_from_mvs_marks_holes_above_all_depth_of_their_column():
    depth = np.ones((6, 7), np.float32)
    depth[0:2, 1:3] = 0  # above everything in columns 1-2: sky
    depth[2:4, 1] = 0  # ... and column 1's hole continues: still above all of column 1's depth
    depth[3, 2] = 0  # joins that hole sideways, but lies below depth of column 2: not sky
    depth[4, 4] = 0  # interior hole: not sky
    depth[3:6, 0] = 0  # open to the bottom only: not sky
    depth[:, 6] = 0  # a column without any depth: sky
    depth[0, 5] = np.nan  # not finite counts as missing
    expected = np.zeros((6, 7), bool)
    expected[0:4, 1] = expected[0:2, 2] = expected[:, 6] = expected[0, 5] = True
    np.testing.assert_array_equal(sky_from_mvs(depth), expected)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        sky_from_mvs(np.ones((2, 3, 1)))


def test_frustum_overlap_same_and_opposite_cameras():
    K, w, h = intrinsics(40, 30), 40, 30
    c2w = look_at((5, 0, 2.5))
    depth, *_ = render(K, c2w, w, h)
    assert frustum_overlap(depth, K, c2w, K, c2w, (h, w)) == 1.0
    behind = look_at((5.0, 0, 2.5), target=(10.0, 0, 2.5))  # same place, looking away from the scene
    assert frustum_overlap(depth, K, c2w, K, behind, (h, w)) == 0.0
    assert frustum_overlap(np.zeros((h, w)), K, c2w, K, c2w, (h, w)) == 0.0
    with pytest.raises(ValueError, match=r"K_j must have shape \(3, 3\)"):
        frustum_overlap(depth, K, c2w, K[:2], c2w, (h, w))


def test_flip_camera_mirrors_projection_and_stays_rigid():
    K, w = intrinsics(40, 30), 40
    K[0, 2] = 17.3  # off-centre principal point: the flip must move it
    c2w = look_at((3, -4, 2))
    Kf, c2wf = flip_camera(K, c2w, w)
    assert Kf[0, 2] == pytest.approx(w - 17.3)
    assert np.linalg.det(c2wf[:3, :3]) == pytest.approx(1.0)
    points = np.array([[0.3, -0.2, 0.7], [1.0, 1.0, 0.0], [-0.5, 0.4, 1.5]])
    uv, d = project(points, K, c2w)
    mirrored = points * [-1, 1, 1]  # the world is mirrored in x with the image
    uvf, df = project(mirrored, Kf, c2wf)
    np.testing.assert_allclose(uvf[:, 0], w - uv[:, 0], atol=1e-9)
    np.testing.assert_allclose(uvf[:, 1], uv[:, 1], atol=1e-9)
    np.testing.assert_allclose(df, d, atol=1e-12)
    K2, c2w2 = flip_camera(Kf, c2wf, w)
    np.testing.assert_allclose(K2, K)
    np.testing.assert_allclose(c2w2, c2w, atol=1e-15)


# ---------- ViewPairDataset ----------

def test_pairs_shapes_dtypes_and_masks(data_root, plane_root):
    ds = ViewPairDataset(data_root, augment=False)
    assert len(ds) == 2 * 3  # two train scenes of three views
    item = ds[4]
    for x in "ij":
        assert item[f"image_{x}"].shape == (3, 32, 48) and item[f"image_{x}"].dtype == torch.float32
        for key in ("depth", "valid", "sky"):
            assert item[f"{key}_{x}"].shape == (1, 32, 48) and item[f"{key}_{x}"].dtype == torch.float32
        assert item[f"K_{x}"].shape == (3, 3) and item[f"cam_to_world_{x}"].shape == (4, 4)
        torch.testing.assert_close(item[f"valid_{x}"], (item[f"depth_{x}"] > 0).float())
        # The synthetic MVS has no holes, so the estimated sky is exactly the true sky (no geometry).
        torch.testing.assert_close(item[f"sky_{x}"], (item[f"depth_{x}"] == 0).float())
    assert int(item["scene"]) == 1 and int(item["view_i"]) == 1 and int(item["view_j"]) != 1
    raw = np.load(data_root / "scene_00001" / "view_01.npz")
    np.testing.assert_allclose(item["image_i"].numpy().transpose(1, 2, 0), srgb_to_linear(raw["image"] / 255.0),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(item["depth_i"][0].numpy(), raw["depth_mvs"])
    assert_pair_consistent(ViewPairDataset(plane_root, augment=False)[4])


def test_pairs_geometry_survives_crop_flip_and_exposure(plane_root):
    ds = ViewPairDataset(plane_root, crop=(24, 32), seed=3, augment=True)
    flipped = 0
    for epoch in range(3):
        ds.set_epoch(epoch)
        for index in range(len(ds)):
            item = ds[index]
            assert item["image_i"].shape == (3, 24, 32) and item["depth_j"].shape == (1, 24, 32)
            assert_pair_consistent(item)
            for x in "ij":
                assert np.linalg.det(item[f"cam_to_world_{x}"][:3, :3].double().numpy()) == pytest.approx(1.0,
                                                                                                           abs=1e-5)
            flipped += int(item["flipped"])
    assert 0 < flipped < 3 * len(ds)  # both branches of the flip were exercised


def test_exposure_gain_is_shared_by_both_views(data_root):
    plain = ViewPairDataset(data_root, augment=False)
    aug = ViewPairDataset(data_root, augment=True, flip=False, max_gain=1.5, seed=11)
    ratios = []
    for index in range(len(plain)):
        a, b = plain[index], aug[index]
        if int(a["view_j"]) != int(b["view_j"]):
            continue  # the partner draw may differ between the two seeds
        gains = []
        for x in "ij":
            p, q = a[f"image_{x}"], b[f"image_{x}"]
            ok = (p > 0.02) & (q < 0.999)  # unsaturated
            gains.append((q[ok] / p[ok]).numpy())
        assert np.ptp(gains[0]) < 1e-4 and np.ptp(gains[1]) < 1e-4  # one factor per view ...
        assert gains[0][0] == pytest.approx(gains[1][0], rel=1e-5)  # ... the same for both
        ratios.append(gains[0][0])
    assert ratios and all(1 / 1.5 - 1e-6 <= r <= 1.5 + 1e-6 for r in ratios)


def test_pairs_are_deterministic_per_seed_epoch_index(data_root):
    a = ViewPairDataset(data_root, crop=(16, 32), seed=5)
    b = ViewPairDataset(data_root, crop=(16, 32), seed=5)
    for key, value in a[3].items():
        torch.testing.assert_close(value, b[3][key], rtol=0, atol=0)
    draws = set()
    for epoch in range(8):
        a.set_epoch(epoch)
        item = a[3]
        draws.add((int(item["view_j"]), int(item["flipped"]), float(item["image_i"].sum())))
    assert len(draws) > 1  # the epoch changes the random choices


def test_partner_has_overlap(tmp_path):
    # Views 0 and 1 look at the scene from nearby; view 2 stands at the same place as view 1 but looks away.
    eyes = [(5, 0, 2.5), (4.5, 2, 2.5), (4.5, 2, 2.5)]
    root = make_dataset(tmp_path, scenes=1, views=3, heldout=0, eyes=eyes)
    d = root / "scene_00000" / "view_02.npz"
    arrays = dict(np.load(d))
    arrays["cam_to_world"] = look_at((4.5, 2, 2.5), target=(9, 4, 2.5))
    write_view(d, arrays)
    ds = ViewPairDataset(root, min_overlap=0.3)
    for epoch in range(6):
        ds.set_epoch(epoch)
        assert int(ds[0]["view_j"]) == 1  # never the view facing away


def record_npz_reads(monkeypatch) -> list[str]:
    """Make np.load record the name of every array read from an .npz; returns the (growing) list of names."""
    accessed = []
    real_load = np.load

    class Recorder:
        def __init__(self, z):
            self.z, self.files = z, z.files

        def __getitem__(self, key):
            accessed.append(key)
            return self.z[key]

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.z.close()

    monkeypatch.setattr(np, "load", lambda *a, **k: Recorder(real_load(*a, **k)))
    return accessed


def test_training_datasets_never_read_ground_truth(data_root, monkeypatch):
    accessed = record_npz_reads(monkeypatch)
    pairs = ViewPairDataset(data_root, crop=(16, 16))
    for index in range(len(pairs)):
        pairs[index]
    depth = DepthDataset(data_root)
    for index in range(len(depth)):
        depth[index]
    assert accessed and not [k for k in accessed if k.startswith("gt_") or k == "sky_mask"]


@pytest.fixture(scope="module")
def two_light_root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("two_light"), second_light=True)


def test_second_light_pairs_are_one_view_under_both_lights(two_light_root, data_root):
    pairs = ViewPairDataset(two_light_root, augment=False, second_light=1.0)
    for index in range(len(pairs)):
        item = pairs[index]
        assert int(item["view_j"]) == int(item["view_i"]) and float(item["same_light"]) == 0.0
        scene, view = pairs.items[index]
        with np.load(pairs.source.describe(scene, view)) as z:
            expected = decode_srgb8(z["relight_image"])
        np.testing.assert_array_equal(item["image_j"].numpy().transpose(1, 2, 0), expected)
        assert not torch.equal(item["image_i"], item["image_j"])  # the light moved
        for key in ("depth", "K", "cam_to_world"):
            assert torch.equal(item[f"{key}_i"], item[f"{key}_j"])
    # By default, and on data without a second photo, every pair shares one light and has two views.
    for ds in (ViewPairDataset(two_light_root, augment=False), ViewPairDataset(data_root, second_light=1.0)):
        items = [ds[k] for k in range(len(ds))]
        assert all(float(it["same_light"]) == 1.0 and int(it["view_j"]) != int(it["view_i"]) for it in items)
    mixed = ViewPairDataset(two_light_root, seed=4, second_light=0.5)
    shares = [float(mixed[k]["same_light"]) for k in range(len(mixed))]
    assert 0.0 in shares and 1.0 in shares
    with pytest.raises(ValueError, match="second_light"):
        ViewPairDataset(two_light_root, second_light=1.5)


def test_second_light_pairs_never_read_ground_truth(two_light_root, monkeypatch):
    accessed = record_npz_reads(monkeypatch)
    pairs = ViewPairDataset(two_light_root, second_light=1.0)
    for index in range(len(pairs)):
        pairs[index]
    assert "relight_image" in accessed
    assert set(accessed) <= {"image", "depth_mvs", "K", "cam_to_world", "exposure", "relight_image"}


def test_single_view_scenes_are_refused(tmp_path):
    root = make_dataset(tmp_path, scenes=1, views=1, heldout=0)
    with pytest.raises(ValueError, match="two or more views"):
        ViewPairDataset(root)
    assert len(DepthDataset(root)) == 1


def test_crop_errors(data_root):
    with pytest.raises(ValueError, match=r"crop must be \(height, width\)"):
        ViewPairDataset(data_root, crop=(16,))
    ds = ViewPairDataset(data_root, crop=(64, 64))
    with pytest.raises(ValueError, match="larger than"):
        ds[0]


def test_open_source_errors(tmp_path, data_root):
    with pytest.raises(FileNotFoundError, match="neither a multiview dataset"):
        open_source(tmp_path)
    with pytest.raises(FileNotFoundError, match="no dataset folder"):
        open_source(tmp_path / "missing")
    with pytest.raises(TypeError, match="neither a folder nor a scene source"):
        open_source(object())
    assert isinstance(open_source(data_root, "heldout"), datasets.MultiviewScenes)


# ---------- DepthDataset ----------

def test_depth_dataset_items(data_root):
    ds = DepthDataset(data_root, augment=False)
    assert len(ds) == 6
    item = ds[2]
    assert item["image"].shape == (3, 32, 48) and item["depth"].shape == (1, 32, 48)
    torch.testing.assert_close(item["mask"], (item["depth"] > 0).float())
    raw = np.load(data_root / "scene_00000" / "view_02.npz")
    np.testing.assert_array_equal(item["depth"][0].numpy(), raw["depth_mvs"])
    held = DepthDataset(data_root, "heldout", augment=False)
    assert len(held) == 3


def test_depth_dataset_flip_flips_image_and_depth_together(data_root):
    plain = DepthDataset(data_root, augment=False)
    aug = DepthDataset(data_root, augment=True, max_gain=1.0, seed=2)
    seen = set()
    for epoch in range(6):
        aug.set_epoch(epoch)
        a, b = plain[0], aug[0]
        flipped = not torch.equal(a["image"], b["image"])  # the checker texture is not mirror-symmetric
        if flipped:
            torch.testing.assert_close(b["depth"], a["depth"].flip(-1), rtol=0, atol=0)
            torch.testing.assert_close(b["image"], a["image"].flip(-1), rtol=0, atol=0)
        else:
            torch.testing.assert_close(b["depth"], a["depth"], rtol=0, atol=0)
        seen.add(flipped)
    assert seen == {True, False}


# ---------- EvalViews ----------

def test_eval_views_carry_ground_truth(data_root):
    views = EvalViews(data_root)
    assert len(views) == 3
    v = views[1]
    assert v["name"] == "scene_00002/view_01.npz"
    assert v["image"].dtype == np.float32 and v["image"].shape == (32, 48, 3)
    for key in ("gt_normal", "gt_albedo", "gt_shadow"):
        assert v[key].dtype == np.float32
    np.testing.assert_array_equal(v["sky_mask"], v["gt_depth"] == 0)
    assert v["gt_sh_camera"].shape == (9, 3)
    few = EvalViews(data_root, "train", max_views=2)
    assert [p.name for p in few.paths] == ["view_00.npz", "view_02.npz"]  # first and last of the 6, spread
    assert [p.parent.name for p in few.paths] == ["scene_00000", "scene_00001"]
    with pytest.raises(ValueError, match="max_views"):
        EvalViews(data_root, max_views=0)
