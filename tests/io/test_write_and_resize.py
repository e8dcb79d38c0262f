"""write_png, save_preview_sheet and resize_linear against analytic values."""

import numpy as np
import pytest
from PIL import Image

from invrender_core.io import ImageWriteError, linear_to_srgb, resize_linear, save_preview_sheet, write_png

# --- write_png -------------------------------------------------------------------------------------------


def test_write_png_encodes_srgb_and_clips(tmp_path):
    lin = np.array([[[0.0, 0.18, 0.5], [1.0, 2.0, -1.0]]], np.float32).repeat(16, axis=0)
    write_png(tmp_path / "p.png", lin)
    codes = np.asarray(Image.open(tmp_path / "p.png"))
    assert codes.shape == (16, 2, 3) and codes.dtype == np.uint8
    assert tuple(codes[0, 0]) == (0, round(0.461356 * 255), round(0.735357 * 255))
    assert tuple(codes[0, 1]) == (255, 255, 0)


def test_write_png_alpha_and_any_suffix(tmp_path):
    lin = np.full((16, 16, 3), 0.5, np.float32)
    alpha = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    write_png(tmp_path / ".preview.tmp", lin, alpha)
    im = Image.open(tmp_path / ".preview.tmp")
    assert im.format == "PNG" and im.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(im)[..., 3], np.floor(alpha * 255 + 0.5).astype(np.uint8))


def test_write_png_shape_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        write_png(tmp_path / "p.png", np.zeros((16, 16)))
    with pytest.raises(ValueError, match=r"\(16, 8\)"):
        write_png(tmp_path / "p.png", np.zeros((16, 16, 3)), alpha=np.zeros((16, 8)))
    with pytest.raises(ImageWriteError):
        write_png(tmp_path / "no" / "p.png", np.zeros((16, 16, 3)))


# --- save_preview_sheet ----------------------------------------------------------------------------------


def test_preview_sheet_layout_and_values(tmp_path):
    tiles = [
        ("photo", np.full((32, 64, 3), 0.5, np.float32)),  # linear RGB -> sRGB code 188
        ("shadow", np.full((32, 64), 0.25, np.float32)),  # scalar map -> grey code 64, no curve
        ("normals", np.full((64, 64, 3), 0.0, np.float32)),
        ("depth", np.full((16, 64, 1), 1.0, np.float32)),
        ("conf", np.full((32, 64), 2.0, np.float32)),  # clipped
    ]
    save_preview_sheet(tmp_path / "s.png", tiles, tile_width=100)
    sheet = np.asarray(Image.open(tmp_path / "s.png").convert("RGB"))
    # 5 tiles -> 3 columns x 2 rows; row heights = 24-px label band + tallest tile (50, then 100)
    assert sheet.shape == (24 + 100 + 24 + 50, 300, 3)
    expected_photo = round(float(linear_to_srgb(np.float64(0.5))) * 255)
    assert tuple(sheet[24 + 25, 50]) == (expected_photo,) * 3
    assert tuple(sheet[24 + 25, 150]) == (64, 64, 64)
    assert tuple(sheet[24 + 50, 250]) == (0, 0, 0)
    assert tuple(sheet[124 + 24 + 10, 50]) == (255, 255, 255)
    assert tuple(sheet[124 + 24 + 25, 150]) == (255, 255, 255)
    assert (sheet[:24, :100] > 200).any()  # the label was drawn in the band
    assert tuple(sheet[124 + 24 + 40, 50]) == (32, 32, 32)  # background below the short depth tile


def test_preview_sheet_columns(tmp_path):
    tiles = [(str(k), np.full((10, 20), k / 5, np.float32)) for k in range(6)]
    save_preview_sheet(tmp_path / "s.png", tiles, tile_width=20, columns=6)
    sheet = np.asarray(Image.open(tmp_path / "s.png").convert("RGB"))
    assert sheet.shape == (24 + 10, 6 * 20, 3)  # one row of six
    assert tuple(sheet[24 + 5, 5 * 20 + 10]) == (255, 255, 255)
    with pytest.raises(ValueError, match="columns"):
        save_preview_sheet(tmp_path / "s.png", tiles, columns=0)


def test_preview_sheet_errors(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        save_preview_sheet(tmp_path / "s.png", [])
    with pytest.raises(ValueError, match=r"'bad'.*\(16, 16, 2\)"):
        save_preview_sheet(tmp_path / "s.png", [("bad", np.zeros((16, 16, 2)))])


# --- resize_linear ---------------------------------------------------------------------------------------


def test_downscale_is_block_mean():
    img = np.random.default_rng(0).random((8, 12, 3)).astype(np.float32)
    out = resize_linear(img, 6, 4)
    expected = img.reshape(4, 2, 6, 2, 3).mean(axis=(1, 3))
    assert out.shape == (4, 6, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_upscale_is_pixel_centre_bilinear():
    ramp = np.tile(np.arange(4, dtype=np.float64), (3, 1))  # value = column index
    out = resize_linear(ramp, 8, 3)
    assert out.dtype == np.float64
    # output column j samples source x = (j + 0.5) / 2 - 0.5; edges clamp
    x = np.clip((np.arange(8) + 0.5) / 2 - 0.5, 0, 3)
    np.testing.assert_allclose(out, np.tile(x, (3, 1)), atol=1e-12)


def test_mixed_scaling_and_channels():
    img = np.full((10, 40, 5), 0.3, np.float32)
    out = resize_linear(img, 20, 30)  # shrink width, grow height
    assert out.shape == (30, 20, 5)
    np.testing.assert_allclose(out, 0.3, atol=1e-6)
    one = resize_linear(np.ones((10, 10, 1), np.float32), 5, 5)
    assert one.shape == (5, 5, 1)
    same = np.random.default_rng(1).random((7, 9)).astype(np.float32)
    np.testing.assert_array_equal(resize_linear(same, 9, 7), same)


@pytest.mark.parametrize("size", [(9, 7), (9, 3), (4, 7), (18, 14)])
def test_resize_returns_a_new_array_and_leaves_its_input(size):
    img = np.random.default_rng(2).random((7, 9, 3)).astype(np.float32)
    before = img.copy()
    out = resize_linear(img, *size)
    out += 1.0  # callers may change what they get
    np.testing.assert_array_equal(img, before)


@pytest.mark.parametrize(
    ("img", "size", "match"),
    [
        (np.zeros(16, np.float32), (4, 4), r"\(H, W\)"),
        (np.zeros((4, 4), np.uint8), (2, 2), "float"),
        (np.zeros((4, 4), np.float32), (0, 2), "positive"),
        (np.zeros((4, 4), np.float32), (2.5, 2), "positive"),
    ],
)
def test_resize_errors(img, size, match):
    with pytest.raises(ValueError, match=match):
        resize_linear(img, *size)


def test_resize_of_many_channels_matches_channel_by_channel():
    rng = np.random.default_rng(3)
    img = rng.random((12, 18, 7)).astype(np.float32)
    for size in ((6, 4), (30, 20)):
        out = resize_linear(img, *size)
        assert out.shape == (size[1], size[0], 7)
        for c in range(7):
            np.testing.assert_allclose(out[..., c], resize_linear(img[..., c], *size), atol=1e-6)
