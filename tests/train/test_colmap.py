"""COLMAP dense workspaces: text and binary models, dense arrays, the y-down/z-forward -> y-up/z-back conversion,
resampling, and the workspace as a training source. The fixture is written here from a known synthetic scene
(a tilted plane seen by two cameras), independently of the loader."""

import math
import shutil
import struct

import numpy as np
import pytest
import torch

from invrender_core.io import cv2, srgb_to_linear
from invrender_core.train import colmap
from invrender_core.train.colmap import (
    ColmapScenes,
    ColmapWorkspace,
    cam_to_world_from_colmap,
    qvec_to_rotmat,
    read_array,
    read_model,
    resize_depth_nearest,
)
from invrender_core.train.datasets import DepthDataset, ViewPairDataset, open_source
from invrender_core.train.synthetic import look_at

PLANE_N = np.array([0.1, 0.2, 1.0]) / np.linalg.norm([0.1, 0.2, 1.0])  # plane n . X = PLANE_D (world)
PLANE_D = -0.3
F = np.diag([1.0, -1.0, -1.0])


def rotmat_to_qvec(r):
    """(3, 3) rotation -> unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method)."""
    t = np.trace(r)
    if t > 0:
        s = 2 * math.sqrt(1 + t)
        q = [s / 4, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2 * math.sqrt(1 + r[i, i] - r[j, j] - r[k, k])
        q = [0.0] * 4
        q[0] = (r[k, j] - r[j, k]) / s
        q[1 + i] = s / 4
        q[1 + j] = (r[j, i] + r[i, j]) / s
        q[1 + k] = (r[k, i] + r[i, k]) / s
    q = np.array(q)
    return q if q[0] >= 0 else -q


def plane_depth(K, c2w, w, h):
    """Planar depth (H, W) of the plane seen through each pixel centre of a camera (ours), exact."""
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], -(v - K[1, 2]) / K[1, 1], -np.ones_like(u)], -1)
    d = d_cam @ c2w[:3, :3].T
    o = c2w[:3, 3]
    return (PLANE_D - PLANE_N @ o) / (d @ PLANE_N)  # t along a ray with camera z = -1 is the planar depth


def write_colmap_array(path, array):
    """COLMAP's dense array format, written independently of the reader: header + column-major float32."""
    a = np.asarray(array, np.float32)
    if a.ndim == 2:
        a = a[..., None]
    h, w, c = a.shape
    with open(path, "wb") as f:
        f.write(f"{w}&{h}&{c}&".encode())
        f.write(np.asfortranarray(a.transpose(1, 0, 2)).tobytes(order="F"))  # (W, H, C) column-major


# The scene: camera 1 PINHOLE at full resolution, camera 2 SIMPLE_RADIAL whose depth map is half-size (as
# patch_match_stereo --max_image_size leaves it).
W, H = 64, 48
CAMS = {
    1: ("PINHOLE", (50.0, 52.0, 31.3, 24.6), look_at((4.0, -1.0, 3.0), (0.0, 0.0, 0.0), 0.2)),
    2: ("SIMPLE_RADIAL", (45.0, 32.0, 24.0, 0.01), look_at((3.0, 2.0, 2.5), (0.2, 0.1, 0.0), -0.3)),
}
NAMES = {1: "left.png", 2: "sub/right.png"}  # a name with a folder, as COLMAP allows


def K_of(model, params):
    if model == "PINHOLE":
        fx, fy, cx, cy = params
    else:
        fx = fy = params[0]
        cx, cy = params[1], params[2]
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def colmap_pose(c2w):
    """Our cam_to_world -> COLMAP (R, t) with X_cam = R X_world + t in its y-down, z-forward frame."""
    r = F @ c2w[:3, :3].T
    return r, -r @ c2w[:3, 3]


def photo(cam_id):
    rng = np.random.default_rng(cam_id)
    return rng.integers(0, 256, (H, W, 3), dtype=np.uint8)


def write_workspace(root, binary=False, missing_depth=False, model_dir="sparse"):
    (root / "images" / "sub").mkdir(parents=True)
    (root / model_dir).mkdir(parents=True, exist_ok=True)
    (root / "stereo" / "depth_maps" / "sub").mkdir(parents=True)
    sparse = root / model_dir
    for cam_id, (model, params, c2w) in CAMS.items():
        cv2.imwrite(str(root / "images" / NAMES[cam_id]), photo(cam_id)[..., ::-1])  # RGB -> OpenCV's BGR
        K = K_of(model, params)
        if cam_id == 1:
            depth = plane_depth(K, c2w, W, H)
        else:
            half = K.copy()
            half[:2] *= 0.5
            depth = plane_depth(half, c2w, W // 2, H // 2)
        depth[0, 0] = -1.0  # COLMAP marks failures with values <= 0
        if not (missing_depth and cam_id == 2):
            write_colmap_array(root / "stereo" / "depth_maps" / f"{NAMES[cam_id]}.geometric.bin", depth)
    if binary:
        with open(sparse / "cameras.bin", "wb") as f:
            f.write(struct.pack("<Q", len(CAMS)))
            for cam_id, (model, params, _) in CAMS.items():
                model_id = {"PINHOLE": 1, "SIMPLE_RADIAL": 2}[model]
                f.write(struct.pack("<IiQQ", cam_id, model_id, W, H) + struct.pack(f"<{len(params)}d", *params))
        with open(sparse / "images.bin", "wb") as f:
            f.write(struct.pack("<Q", len(CAMS)))
            for cam_id, (_, _, c2w) in CAMS.items():
                r, t = colmap_pose(c2w)
                f.write(struct.pack("<I7dI", 10 + cam_id, *rotmat_to_qvec(r), *t, cam_id))
                f.write(NAMES[cam_id].encode() + b"\0")
                points = [(1.5, 2.5, 7), (3.0, 4.0, -1)] if cam_id == 1 else []
                f.write(struct.pack("<Q", len(points)))
                for p in points:
                    f.write(struct.pack("<ddq", *p))
    else:
        lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
        lines += [f"{cam_id} {model} {W} {H} " + " ".join(repr(p) for p in params)
                  for cam_id, (model, params, _) in CAMS.items()]
        (sparse / "cameras.txt").write_text("\n".join(lines) + "\n")
        lines = ["# Image list with two lines of data per image:", "", "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, "
                 "CAMERA_ID, NAME", "#   POINTS2D[] as (X, Y, POINT3D_ID)"]
        for cam_id, (_, _, c2w) in CAMS.items():
            r, t = colmap_pose(c2w)
            lines.append(" ".join(repr(float(v)) for v in (*rotmat_to_qvec(r), *t)).join(
                [f"{10 + cam_id} ", f" {cam_id} {NAMES[cam_id]}"]))
            lines.append("1.5 2.5 7 3.0 4.0 -1" if cam_id == 1 else "")  # image 2 observes no point
        (sparse / "images.txt").write_text("\n".join(lines) + "\n")
        (sparse / "points3D.txt").write_text("# 3D point list\n7 0.1 0.2 -0.325 128 128 128 0.5 11 0\n")
    return root


@pytest.fixture
def workspace(tmp_path):
    return write_workspace(tmp_path / "ws")


def colmap_project(points, cam_id):
    """COLMAP's own projection (X_cam = R X + t, pixel = K X_cam / z): pixel (N, 2), z (N,)."""
    model, params, c2w = CAMS[cam_id]
    r, t = colmap_pose(c2w)
    x = (points @ r.T + t) @ K_of(model, params).T
    return x[:, :2] / x[:, 2:], x[:, 2]


def our_project(points, K, c2w):
    p = (points - c2w[:3, 3]) @ c2w[:3, :3]
    d = -p[:, 2]
    return np.stack([K[0, 2] + K[0, 0] * p[:, 0] / d, K[1, 2] - K[1, 1] * p[:, 1] / d], -1), d


# ---------- conversions ----------

def test_qvec_roundtrip_and_pose_conversion():
    for cam_id, (_, _, c2w) in CAMS.items():
        r, t = colmap_pose(c2w)
        np.testing.assert_allclose(qvec_to_rotmat(rotmat_to_qvec(r)), r, atol=1e-12)
        ours = cam_to_world_from_colmap(rotmat_to_qvec(r), t)
        np.testing.assert_allclose(ours, c2w, atol=1e-12)
        assert np.linalg.det(ours[:3, :3]) == pytest.approx(1.0), cam_id
    # Identity pose: COLMAP's camera looks down +z with y down; ours looks down -z with y up.
    np.testing.assert_allclose(cam_to_world_from_colmap((1, 0, 0, 0), (0, 0, 0))[:3, :3], F)
    # An unnormalised quaternion is normalised, as COLMAP does.
    np.testing.assert_allclose(qvec_to_rotmat((2.0, 0, 0, 0)), np.eye(3))
    with pytest.raises(ValueError, match=r"qvec must have shape \(4,\)"):
        qvec_to_rotmat((1, 0, 0))


def test_read_array_is_column_major_with_channels(tmp_path):
    a = np.arange(5 * 3 * 2, dtype=np.float32).reshape(3, 5, 2) * 0.5 - 3  # H=3, W=5, C=2, all distinct
    write_colmap_array(tmp_path / "a.bin", a)
    np.testing.assert_array_equal(read_array(tmp_path / "a.bin"), a)
    write_colmap_array(tmp_path / "d.bin", a[..., 0])
    np.testing.assert_array_equal(read_array(tmp_path / "d.bin"), a[..., 0])
    # The layout itself, spelled out: the first value is (x=0, y=0), the second (x=1, y=0).
    raw = np.frombuffer((tmp_path / "d.bin").read_bytes()[len(b"5&3&1&"):], np.float32)
    assert raw[1] == a[0, 1, 0] and raw[5] == a[1, 0, 0]


def test_read_array_errors(tmp_path):
    (tmp_path / "bad.bin").write_bytes(b"no header at all" * 4)
    with pytest.raises(ValueError, match="not a COLMAP array"):
        read_array(tmp_path / "bad.bin")
    (tmp_path / "short.bin").write_bytes(b"4&4&1&" + np.zeros(3, np.float32).tobytes())
    with pytest.raises(ValueError, match="says 4x4x1 but the file holds 3 values"):
        read_array(tmp_path / "short.bin")


def test_resize_depth_nearest_takes_pixel_centres():
    d = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(resize_depth_nearest(d, 8, 6), d.repeat(2, 0).repeat(2, 1))
    np.testing.assert_array_equal(resize_depth_nearest(d, 2, 3), d[:, [1, 3]])  # floor((j + .5) * 4 / 2)


# ---------- models ----------

def test_text_and_binary_models_agree(tmp_path):
    cams_t, imgs_t = read_model(write_workspace(tmp_path / "t") / "sparse")
    cams_b, imgs_b = read_model(write_workspace(tmp_path / "b", binary=True) / "sparse")
    assert cams_t == cams_b
    assert sorted(imgs_t) == sorted(imgs_b) == [11, 12]
    for k in imgs_t:
        assert imgs_t[k].name == imgs_b[k].name == NAMES[k - 10]
        np.testing.assert_allclose(imgs_t[k].cam_to_world, imgs_b[k].cam_to_world, atol=1e-12)
        np.testing.assert_allclose(imgs_t[k].cam_to_world, CAMS[k - 10][2], atol=1e-12)
        model, params, _ = CAMS[k - 10]
        np.testing.assert_allclose(cams_t[imgs_t[k].camera_id].K, K_of(model, params))


def test_model_under_sparse_0_and_missing_model(tmp_path):
    ws = ColmapWorkspace(write_workspace(tmp_path / "a", model_dir="sparse/0"))
    assert ws.views == sorted(NAMES.values())
    with pytest.raises(FileNotFoundError, match="no COLMAP model"):
        read_model(tmp_path)


def test_unsupported_camera_model_is_refused_with_the_fix(workspace):
    text = (workspace / "sparse" / "cameras.txt").read_text()
    (workspace / "sparse" / "cameras.txt").write_text(
        text.replace("SIMPLE_RADIAL 64 48 45.0 32.0 24.0 0.01", "OPENCV 64 48 45.0 45.0 32.0 24.0 0.01 0 0 0"))
    with pytest.raises(ValueError, match="cameras.txt: .*image_undistorter"):  # names the file
        ColmapWorkspace(workspace)


def test_a_model_that_is_not_utf8_names_its_file(tmp_path):
    ws = write_workspace(tmp_path / "b", binary=True)
    data = (ws / "sparse" / "images.bin").read_bytes()
    (ws / "sparse" / "images.bin").write_bytes(data.replace(b"left.png", b"l\xe9ft.png"))
    with pytest.raises(ValueError, match="images.bin: an image name is not UTF-8"):
        read_model(ws / "sparse")


def test_truncated_binary_model(tmp_path):
    ws = write_workspace(tmp_path / "b", binary=True)
    data = (ws / "sparse" / "images.bin").read_bytes()
    (ws / "sparse" / "images.bin").write_bytes(data[:40])
    with pytest.raises(ValueError, match="truncated"):
        read_model(ws / "sparse")


# ---------- workspace: poses, intrinsics, depth and photos round trip ----------

def test_workspace_views_round_trip(workspace):
    ws = ColmapWorkspace(workspace)
    assert ws.views == ["left.png", "sub/right.png"] and ws.skipped == []
    for cam_id, name in NAMES.items():
        model, params, c2w = CAMS[cam_id]
        v = ws.load_view(name)
        np.testing.assert_allclose(v["K"], K_of(model, params))
        np.testing.assert_allclose(v["cam_to_world"], c2w, atol=1e-12)
        np.testing.assert_allclose(v["image"], srgb_to_linear(photo(cam_id) / 255.0), rtol=1e-5, atol=1e-7)
        assert v["depth_mvs"].shape == (H, W) and v["depth_mvs"].dtype == np.float32
        assert v["depth_mvs"][0, 0] == 0  # COLMAP's -1 became "missing"
        K = K_of(model, params)
        if cam_id == 1:
            expected = plane_depth(K, c2w, W, H)
        else:  # the half-size map, nearest-upsampled
            half = K.copy()
            half[:2] *= 0.5
            expected = plane_depth(half, c2w, W // 2, H // 2).repeat(2, 0).repeat(2, 1)
        expected[: 2 if cam_id == 2 else 1, : 2 if cam_id == 2 else 1] = 0
        np.testing.assert_allclose(v["depth_mvs"], expected, rtol=1e-6)


def test_points_project_the_same_in_both_conventions(workspace):
    ws = ColmapWorkspace(workspace)
    # Points on the plane in front of both cameras.
    rng = np.random.default_rng(0)
    xy = rng.uniform(-0.5, 0.5, (20, 2))
    points = np.c_[xy, (PLANE_D - PLANE_N[:2] @ xy.T) / PLANE_N[2]]
    for cam_id, name in NAMES.items():
        K, c2w, size = ws.camera(name)
        assert size == (H, W)
        uv, d = our_project(points, K, c2w)
        uv_c, z_c = colmap_project(points, cam_id)
        np.testing.assert_allclose(uv, uv_c, atol=1e-9)
        np.testing.assert_allclose(d, z_c, atol=1e-12)
        assert (d > 0).all()


def test_depth_of_one_view_lands_on_the_other(workspace):
    """Back-project view 1 with its loaded depth, project into view 2 with its loaded camera: the point lies
    on the plane, and its depth in view 2 is the plane's depth along view 2's ray through that pixel."""
    ws = ColmapWorkspace(workspace)
    v1, v2 = ws.load_view("left.png"), ws.load_view("sub/right.png")
    rows, cols = np.nonzero(v1["depth_mvs"] > 0)
    d = v1["depth_mvs"][rows, cols].astype(np.float64)
    K1, T1 = v1["K"], v1["cam_to_world"]
    p_cam = np.stack([(cols + 0.5 - K1[0, 2]) / K1[0, 0] * d, -(rows + 0.5 - K1[1, 2]) / K1[1, 1] * d, -d], -1)
    world = p_cam @ T1[:3, :3].T + T1[:3, 3]
    np.testing.assert_allclose(world @ PLANE_N, PLANE_D, atol=1e-5)
    uv, z = our_project(world, v2["K"], v2["cam_to_world"])
    inside = (uv[:, 0] > 0) & (uv[:, 0] < W) & (uv[:, 1] > 0) & (uv[:, 1] < H)
    assert inside.sum() > 100
    K2, T2 = v2["K"], v2["cam_to_world"]
    u, v = uv[inside, 0], uv[inside, 1]
    ray = np.stack([(u - K2[0, 2]) / K2[0, 0], -(v - K2[1, 2]) / K2[1, 1], -np.ones_like(u)], -1) @ T2[:3, :3].T
    np.testing.assert_allclose((PLANE_D - PLANE_N @ T2[:3, 3]) / (ray @ PLANE_N), z[inside], rtol=1e-5)


def test_views_without_depth_are_skipped(tmp_path):
    ws = ColmapWorkspace(write_workspace(tmp_path / "ws", missing_depth=True))
    assert ws.views == ["left.png"] and ws.skipped == ["sub/right.png"]
    with pytest.raises(ValueError, match="depth_type"):
        ColmapWorkspace(tmp_path / "ws", depth_type="fused")


def test_photo_size_must_match_camera(workspace):
    cv2.imwrite(str(workspace / "images" / "left.png"), np.zeros((10, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="undistorted images"):
        ColmapWorkspace(workspace).load_view("left.png")


# ---------- as a training source ----------

def test_colmap_scenes_resample_and_feed_the_datasets(tmp_path):
    root = tmp_path / "many"
    write_workspace(root / "a")
    write_workspace(root / "b", binary=True)
    scenes = ColmapScenes(root, size=(32, 16))
    assert [name for name, _ in scenes.scenes] == [str(root / "a"), str(root / "b")]
    K, c2w, size = scenes.camera(0, 0)
    assert size == (16, 32)
    np.testing.assert_allclose(K, [[50.0 * 32 / 64, 0, 31.3 * 32 / 64], [0, 52.0 * 16 / 48, 24.6 * 16 / 48],
                                   [0, 0, 1]])
    pairs = ViewPairDataset(scenes, augment=False, min_overlap=0.0)
    assert len(pairs) == 4
    with pytest.raises(ValueError, match="second photo"):  # a capture has one light per photo
        ViewPairDataset(scenes, second_light=0.5)
    item = pairs[1]
    assert item["image_i"].shape == (3, 16, 32) and item["depth_j"].shape == (1, 16, 32)
    torch.testing.assert_close(item["K_i"], torch.tensor(scenes.camera(0, 1)[0], dtype=torch.float32))
    # Area resampling of the linear photo, 64x48 -> 32x16: each output pixel is the mean of a 3 x 2 block.
    full = srgb_to_linear(photo(2) / 255.0)
    np.testing.assert_allclose(item["image_i"][:, 0, 0].numpy(), full[:3, :2].mean((0, 1)), rtol=1e-5)
    # Depth: nearest pixel centre, i.e. source pixel (floor((i + .5) * 24 / 16), floor((j + .5) * 32 / 32)).
    half_depth = read_array(root / "a" / "stereo" / "depth_maps" / "sub" / "right.png.geometric.bin")
    rows = ((np.arange(16) + 0.5) * 24 / 16).astype(int)
    expected = np.where(half_depth > 0, half_depth, 0)[rows][:, np.arange(32)]
    np.testing.assert_array_equal(item["depth_i"][0].numpy(), expected)
    assert len(DepthDataset(scenes)) == 4
    with pytest.raises(ValueError, match="size must be"):
        ColmapScenes(root, size=(32,))


def test_capture_problems_are_named_before_training(tmp_path):
    """Cameras of different sizes need --colmap-size; a project root without depth maps points to the dense
    workspace; a depth map of another image's shape is refused rather than stretched."""
    mixed = write_workspace(tmp_path / "mixed")
    text = (mixed / "sparse" / "cameras.txt").read_text()
    (mixed / "sparse" / "cameras.txt").write_text(text.replace("PINHOLE 64 48", "PINHOLE 80 48"))
    with pytest.raises(ValueError, match="different sizes .64x48, 80x48.: give --colmap-size"):
        ColmapScenes(mixed)
    assert len(ColmapScenes(mixed, size=(32, 16)).scenes) == 1

    project = write_workspace(tmp_path / "project")
    shutil.rmtree(project / "stereo")
    with pytest.raises(ValueError, match="has a depth map .*dense workspace"):
        ColmapScenes(project)

    transposed = write_workspace(tmp_path / "transposed")
    left = transposed / "stereo" / "depth_maps" / "left.png.geometric.bin"
    write_colmap_array(left, np.ones((64, 48), np.float32))
    with pytest.raises(ValueError, match="left.png.geometric.bin is 48x64, not of its 64x48 image's shape"):
        ColmapWorkspace(transposed).load_view("left.png")


def test_irn_training_on_a_capture_skips_the_held_out_evaluation(workspace):
    from invrender_core.train.irn_task import IRNTask

    task = IRNTask(data=ColmapScenes(workspace, size=(32, 16)), width=1 / 16)
    assert task.evaluate(task.model) == {}  # no ground truth to score a capture against (it crashed before)


def test_open_source_detects_workspaces(workspace):
    src = open_source(workspace)
    assert isinstance(src, colmap.ColmapScenes) and len(src.scenes) == 1
    with pytest.raises(ValueError, match="no 'heldout' split"):
        open_source(workspace, "heldout")
