"""read_exr_channels / write_exr_channels: against OpenCV's OpenEXR in both directions, layered round trips,
compression, and failure modes."""

import zlib
from pathlib import Path

import numpy as np
import pytest

from invrender_core.io import ImageWriteError, UnreadableImageError, UnsupportedImageError, read_exr, read_exr_header
from invrender_core.io._cv import cv2
from invrender_core.io.exr import read_exr_channels, read_exr_headers, write_exr_channels

# The same 12x20 render of Blender's default cube, written as multilayer EXR by Blender 4.5 (one part) and by
# Blender 5.0 (one part per pass); data/render_multilayer_fixture.py makes them.
FIXTURES = Path(__file__).parent / "data"

CV_COMPRESSIONS = {"none": cv2.IMWRITE_EXR_COMPRESSION_NO, "zips": cv2.IMWRITE_EXR_COMPRESSION_ZIPS,
                   "zip": cv2.IMWRITE_EXR_COMPRESSION_ZIP}


def _image(shape, seed=0):
    """Smooth ramps (which ZIP shrinks) plus noise and values far from [0, 1]."""
    rng = np.random.default_rng(seed)
    h, w = shape[:2]
    ramp = np.linspace(-3, 40, h * w).reshape(h, w)[..., None] * np.array([1.0, 0.5, -0.25])
    return (ramp + rng.normal(0, 0.01, (h, w, 3))).astype(np.float32)


@pytest.mark.parametrize("compression", sorted(CV_COMPRESSIONS))
@pytest.mark.parametrize("half", [False, True])
def test_reads_what_opencv_writes(tmp_path, compression, half):
    img = _image((37, 29))  # 37 rows: the last ZIP chunk is partial
    path = tmp_path / "cv.exr"
    params = [cv2.IMWRITE_EXR_COMPRESSION, CV_COMPRESSIONS[compression],
              cv2.IMWRITE_EXR_TYPE, cv2.IMWRITE_EXR_TYPE_HALF if half else cv2.IMWRITE_EXR_TYPE_FLOAT]
    assert cv2.imwrite(str(path), img[..., ::-1], params)
    channels = read_exr_channels(path)
    assert sorted(channels) == ["B", "G", "R"]
    expected = img.astype(np.float16).astype(np.float32) if half else img
    for i, name in enumerate("RGB"):
        assert channels[name].dtype == np.float32 and channels[name].shape == (37, 29)
        np.testing.assert_array_equal(channels[name], expected[..., i])


@pytest.mark.parametrize("compression", ["zip", "none"])
def test_opencv_reads_what_we_write(tmp_path, compression):
    img = _image((35, 23), seed=1)
    write_exr_channels(tmp_path / "rgb.exr", {c: img[..., i] for i, c in enumerate("RGB")}, compression)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "rgb.exr"), cv2.IMREAD_UNCHANGED)[..., ::-1], img)
    write_exr_channels(tmp_path / "y.exr", {"Y": img[..., 1]}, compression)
    np.testing.assert_array_equal(read_exr(tmp_path / "y.exr"), img[..., 1])  # read_exr decodes with OpenCV


def test_layered_round_trip_keeps_names_values_and_metadata(tmp_path):
    rng = np.random.default_rng(2)
    channels = {name: rng.normal(0, 100, (20, 17)).astype(np.float32)
                for name in ("A", "B", "G", "R", "albedo.R", "depth.Z", "normal.X", "ViewLayer.shadow.X",
                             "a.layer.with.a.name.longer.than.31.characters.Y")}
    channels["depth.Z"][0, :3] = [np.inf, -np.inf, np.nan]
    channels["A"][:] = 1.0  # constant: compresses, while the noisy channels are stored as they are
    write_exr_channels(tmp_path / "l.exr", channels, metadata={"invrender/normal": "world frame, unit"})
    header = read_exr_header(tmp_path / "l.exr")
    assert list(header.channels) == sorted(channels)
    assert header.attributes["invrender/normal"] == ("string", b"world frame, unit")
    back = read_exr_channels(tmp_path / "l.exr")
    assert back.keys() == channels.keys()
    for name, values in channels.items():
        np.testing.assert_array_equal(back[name], values)


def test_zip_shrinks_smooth_data(tmp_path):
    ramp = {c: np.tile(np.linspace(0, 1, 256, dtype=np.float32), (64, 1)) for c in "RGB"}
    write_exr_channels(tmp_path / "z.exr", ramp, "zip")
    write_exr_channels(tmp_path / "n.exr", ramp, "none")
    raw = 64 * 256 * 3 * 4
    assert (tmp_path / "n.exr").stat().st_size > raw
    assert (tmp_path / "z.exr").stat().st_size < raw / 3
    for path in ("z.exr", "n.exr"):
        np.testing.assert_array_equal(read_exr_channels(tmp_path / path)["G"], ramp["G"])


def test_unsupported_compression_and_layouts(tmp_path):
    img = _image((16, 16))
    assert cv2.imwrite(str(tmp_path / "piz.exr"), img,
                       [cv2.IMWRITE_EXR_COMPRESSION, cv2.IMWRITE_EXR_COMPRESSION_PIZ])
    with pytest.raises(UnsupportedImageError, match="ZIP or no compression"):
        read_exr_channels(tmp_path / "piz.exr")
    (tmp_path / "t.exr").write_text("not an exr\n")
    with pytest.raises(UnsupportedImageError, match="not an OpenEXR"):
        read_exr_channels(tmp_path / "t.exr")


def test_truncated_and_corrupt_files(tmp_path):
    channels = {c: np.tile(np.linspace(0, k, 30, dtype=np.float32), (40, 1)) for k, c in enumerate("RGB")}
    write_exr_channels(tmp_path / "a.exr", channels)
    data = (tmp_path / "a.exr").read_bytes()
    (tmp_path / "cut.exr").write_bytes(data[:-100])
    with pytest.raises(UnreadableImageError, match="truncated"):
        read_exr_channels(tmp_path / "cut.exr")
    # Corrupt the first chunk's ZIP stream (its data starts 8 bytes after the first offset).
    _, table = read_exr_headers(tmp_path / "a.exr")
    first = int.from_bytes(data[table:table + 8], "little")
    assert zlib.decompressobj().decompress(data[first + 8:first + 40])  # it is a zlib stream
    broken = bytearray(data)
    broken[first + 8:first + 12] = b"\xff\xff\xff\xff"
    (tmp_path / "bad.exr").write_bytes(bytes(broken))
    with pytest.raises(UnreadableImageError, match="corrupt"):
        read_exr_channels(tmp_path / "bad.exr")
    with pytest.raises(UnreadableImageError, match="nope.exr"):
        read_exr_channels(tmp_path / "nope.exr")


def test_blender_5_multipart_multilayer_reads_like_blender_4_5_single_part():
    single = read_exr_channels(FIXTURES / "blender4.5_multilayer.exr")
    headers, _ = read_exr_headers(FIXTURES / "blender5.0_multilayer.exr")
    assert headers[0].multipart and [h.attributes["name"][1] for h in headers] == [
        b"ViewLayer.Combined", b"ViewLayer.Depth", b"ViewLayer.Normal"]
    parts = read_exr_channels(FIXTURES / "blender5.0_multilayer.exr")
    assert sorted(parts) == sorted(single) and "ViewLayer.Depth.Z" in parts
    for name in ("ViewLayer.Depth.Z", "ViewLayer.Normal.X", "ViewLayer.Normal.Y", "ViewLayer.Normal.Z"):
        assert parts[name].shape == (20, 12)
        np.testing.assert_array_equal(parts[name], single[name])  # geometry passes: rays through pixel centres
    cube = parts["ViewLayer.Depth.Z"] < 1e9  # the background's depth is 1e10
    assert 20 < cube.sum() < 240
    normal = np.stack([parts[f"ViewLayer.Normal.{c}"] for c in "XYZ"], -1)[cube]
    np.testing.assert_allclose(np.linalg.norm(normal, axis=-1), 1.0, atol=1e-5)
    # Combined differs by one sample's noise between the two Blenders, nothing more.
    assert np.abs(parts["ViewLayer.Combined.R"] - single["ViewLayer.Combined.R"]).max() < 0.05


def test_truncated_and_corrupt_multipart_files(tmp_path):
    data = (FIXTURES / "blender5.0_multilayer.exr").read_bytes()
    (tmp_path / "cut.exr").write_bytes(data[:-200])
    with pytest.raises(UnreadableImageError, match="truncated"):
        read_exr_channels(tmp_path / "cut.exr")
    _, table = read_exr_headers(FIXTURES / "blender5.0_multilayer.exr")
    first = int.from_bytes(data[table:table + 8], "little")  # part 0's first chunk: int32 part number, then rows
    broken = bytearray(data)
    broken[first:first + 4] = (2).to_bytes(4, "little")
    (tmp_path / "wrong_part.exr").write_bytes(bytes(broken))
    with pytest.raises(UnreadableImageError, match="wrong part"):
        read_exr_channels(tmp_path / "wrong_part.exr")
    (tmp_path / "cut_headers.exr").write_bytes(data[:table - 1])  # without the empty header that ends the list
    with pytest.raises(UnreadableImageError, match="truncated"):
        read_exr_channels(tmp_path / "cut_headers.exr")


def test_writer_refuses_bad_input(tmp_path):
    good = np.zeros((4, 5), np.float32)
    for channels, match in (({}, "at least one"), ({"R": good, "G": np.zeros((5, 4))}, "one non-empty"),
                            ({"R": np.zeros((4, 5, 3))}, "one non-empty"), ({"R": np.zeros((0, 5))}, "non-empty"),
                            ({"": good}, "names"), ({"é": good}, "ASCII"), ({"x" * 300: good}, "255")):
        with pytest.raises(ValueError, match=match):
            write_exr_channels(tmp_path / "x.exr", channels)
    with pytest.raises(ValueError, match="compression"):
        write_exr_channels(tmp_path / "x.exr", {"R": good}, compression="piz")
    assert not (tmp_path / "x.exr").exists()
    with pytest.raises(ImageWriteError, match="missing"):
        write_exr_channels(tmp_path / "missing" / "x.exr", {"R": good})
