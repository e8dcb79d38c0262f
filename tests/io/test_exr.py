"""write_exr / read_exr round trips, channel names from the header parser, and failure modes."""

import struct

import numpy as np
import pytest

from invrender_core.io import (
    ImageWriteError,
    UnreadableImageError,
    UnsupportedImageError,
    read_exr,
    read_exr_header,
    write_exr,
)
from invrender_core.io._cv import cv2

FLOAT = 2  # EXR pixel type
PIZ = 4  # EXR compression code


def test_y_round_trip_and_channel_name(tmp_path):
    rng = np.random.default_rng(1)
    depth = (rng.random((17, 23)) * 100 - 20).astype(np.float32)
    depth[0, 0], depth[1, 1] = 1e6, np.inf
    write_exr(tmp_path / "d.exr", depth)
    header = read_exr_header(tmp_path / "d.exr")
    assert header.channels == ("Y",)
    assert header.pixel_types == (FLOAT,)
    assert (header.width, header.height) == (23, 17)
    back = read_exr(tmp_path / "d.exr")
    assert back.shape == (17, 23) and back.dtype == np.float32
    np.testing.assert_array_equal(back, depth)

    write_exr(tmp_path / "d1.exr", depth[..., None])  # (H, W, 1) is also a Y file
    assert read_exr_header(tmp_path / "d1.exr").channels == ("Y",)
    np.testing.assert_array_equal(read_exr(tmp_path / "d1.exr"), depth)


def test_rgb_round_trip_keeps_channel_order(tmp_path):
    rng = np.random.default_rng(2)
    img = rng.normal(size=(19, 21, 3)).astype(np.float32)
    img[..., 0] += 10.0  # R, G, B distinguishable by magnitude
    img[..., 2] -= 10.0
    path = tmp_path / "n.exr"
    write_exr(path, img)
    raw = path.read_bytes()
    assert raw[:4] == struct.pack("<i", 20000630) and b"channels\0chlist\0" in raw
    header = read_exr_header(path)
    assert sorted(header.channels) == ["B", "G", "R"]
    assert header.pixel_types == (FLOAT,) * 3
    back = read_exr(path)
    assert back.shape == (19, 21, 3)
    np.testing.assert_array_equal(back, img)
    # an independent decoder agrees on which channel is which (OpenCV returns BGR)
    np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1], img)


def test_written_with_piz_losslessly_to_the_bit(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.normal(size=(35, 13, 3)).astype(np.float32) * np.float32(1e3)
    img[0, 0], img[1, 1], img[2, 2], img[3, 3] = np.nan, np.inf, -0.0, 1e-42  # NaN, infinity, -0, a denormal
    write_exr(tmp_path / "n.exr", img)
    assert read_exr_header(tmp_path / "n.exr").attributes["compression"][1] == bytes([PIZ])
    np.testing.assert_array_equal(read_exr(tmp_path / "n.exr").view(np.uint32), img.view(np.uint32))


def test_float64_and_int_input_written_as_float32(tmp_path):
    write_exr(tmp_path / "a.exr", np.full((16, 16), 0.1, dtype=np.float64))
    np.testing.assert_array_equal(read_exr(tmp_path / "a.exr"), np.float32(0.1))
    write_exr(tmp_path / "b.exr", np.arange(16 * 16 * 3).reshape(16, 16, 3))
    assert read_exr(tmp_path / "b.exr")[15, 15, 2] == 16 * 16 * 3 - 1


def test_any_suffix_is_written(tmp_path):
    write_exr(tmp_path / ".albedo.tmp", np.ones((16, 16, 3), np.float32))
    assert read_exr_header(tmp_path / ".albedo.tmp").channels == ("B", "G", "R")


@pytest.mark.parametrize("shape", [(16,), (16, 16, 2), (16, 16, 4), (2, 16, 16, 3), (0, 16)])
def test_bad_shapes(tmp_path, shape):
    with pytest.raises(ValueError, match=r"\(H, W"):
        write_exr(tmp_path / "x.exr", np.zeros(shape, np.float32))
    assert not (tmp_path / "x.exr").exists()


def test_write_failure_is_clear(tmp_path):
    with pytest.raises(ImageWriteError, match="missing"):
        write_exr(tmp_path / "missing" / "x.exr", np.zeros((16, 16), np.float32))


def test_rgba_file_reads_as_rgb(tmp_path):
    bgra = np.random.default_rng(3).random((16, 18, 4)).astype(np.float32)
    cv2.imwrite(str(tmp_path / "a.exr"), bgra)
    assert sorted(read_exr_header(tmp_path / "a.exr").channels) == ["A", "B", "G", "R"]
    np.testing.assert_array_equal(read_exr(tmp_path / "a.exr"), bgra[..., 2::-1])


def test_forged_header_parses_without_pixels(tmp_path, exr_header_bytes):
    (tmp_path / "big.exr").write_bytes(exr_header_bytes(20000, 20000))
    header = read_exr_header(tmp_path / "big.exr")
    assert (header.width, header.height) == (20000, 20000)
    assert header.channels == ("B", "G", "R")
    with pytest.raises(UnreadableImageError):
        read_exr(tmp_path / "big.exr")  # no pixel data: decoding must fail cleanly


def test_nonstandard_channels_refused(tmp_path, exr_header_bytes):
    (tmp_path / "z.exr").write_bytes(exr_header_bytes(16, 16, channels=("Z",)))
    with pytest.raises(UnsupportedImageError, match=r"\['Z'\]"):
        read_exr(tmp_path / "z.exr")


def test_truncated_and_foreign_files(tmp_path):
    write_exr(tmp_path / "a.exr", np.random.default_rng(4).random((64, 64, 3)).astype(np.float32))
    data = (tmp_path / "a.exr").read_bytes()
    (tmp_path / "half.exr").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError):
        read_exr(tmp_path / "half.exr")
    (tmp_path / "head.exr").write_bytes(data[:40])  # cut inside the header
    with pytest.raises(UnreadableImageError, match="truncated"):
        read_exr_header(tmp_path / "head.exr")
    (tmp_path / "t.exr").write_text("not an exr\n")
    with pytest.raises(UnsupportedImageError, match="not an OpenEXR"):
        read_exr(tmp_path / "t.exr")
    with pytest.raises(UnreadableImageError, match="nope.exr"):
        read_exr(tmp_path / "nope.exr")
