"""load_image over real files generated in tmp_path: formats, bit depths, orientation, EXIF, limits."""

import math
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from invrender_core.camera import FULL_FRAME_DIAGONAL_MM
from invrender_core.io import (
    ImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    UnreadableImageError,
    UnsupportedImageError,
    load_image,
    read_exr,
    srgb_to_linear,
    write_exr,
)
from invrender_core.io._cv import cv2


def _lin(codes, maxval=255):
    """Expected linear value of integer codes, computed in float64 then rounded to float32."""
    return srgb_to_linear(np.asarray(codes, np.float64) / maxval).astype(np.float32)


def _noise(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8).squeeze()


def _blocks(h, w, seed=0):
    """Asymmetric image of random 8x8 solid blocks: survives JPEG q100 almost exactly."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return np.repeat(np.repeat(small, 8, axis=0), 8, axis=1)


def _png_claiming(path, width, height):
    """A PNG whose (valid) IHDR claims width x height but whose data is only a 16x16 image."""
    Image.new("1", (16, 16)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = ihdr[4:12]
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    path.write_bytes(bytes(data))


# --- PNG ----------------------------------------------------------------------------------------------


def test_png_8bit_rgb(tmp_path):
    codes = _noise(20, 30)
    Image.fromarray(codes).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.rgb.shape == (20, 30, 3) and img.rgb.dtype == np.float32
    np.testing.assert_array_equal(img.rgb, _lin(codes))
    assert img.alpha is None and img.bit_depth == 8 and img.focal_35mm is None
    assert img.original_size == (30, 20) and img.path == tmp_path / "a.png"
    assert img.rgb.min() >= 0.0 and img.rgb.max() <= 1.0


def test_png_16bit_rgb_keeps_precision(tmp_path):
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 65536, (18, 24, 3), dtype=np.uint16)
    codes[0, 0] = (1000, 1001, 65535)  # neighbours that 8-bit would merge
    cv2.imwrite(str(tmp_path / "a.png"), codes[..., ::-1])  # OpenCV writes BGR
    img = load_image(tmp_path / "a.png")
    assert img.bit_depth == 16
    np.testing.assert_array_equal(img.rgb, _lin(codes, 65535))
    assert img.rgb[0, 0, 0] == np.float32(srgb_to_linear(np.float64(1000 / 65535)))
    assert img.rgb[0, 0, 0] != img.rgb[0, 0, 1]
    assert abs(img.rgb[0, 0, 0] - srgb_to_linear(np.float64(4 / 255))) > 1e-5  # not via 8 bits


def test_png_16bit_grey_and_rgba(tmp_path):
    rng = np.random.default_rng(2)
    grey = rng.integers(0, 65536, (16, 20), dtype=np.uint16)
    grey[0, 0] = 1000
    cv2.imwrite(str(tmp_path / "g.png"), grey)
    img = load_image(tmp_path / "g.png")
    assert img.bit_depth == 16 and img.rgb.shape == (16, 20, 3)
    for c in range(3):
        np.testing.assert_array_equal(img.rgb[..., c], _lin(grey, 65535))

    bgra = rng.integers(0, 65536, (16, 20, 4), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    img = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(img.rgb, _lin(bgra[..., 2::-1], 65535))
    np.testing.assert_allclose(img.alpha, bgra[..., 3] / 65535, atol=1e-7)


def test_png_grey_expanded(tmp_path):
    grey = _noise(16, 17, 1)
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    img = load_image(tmp_path / "g.png")
    assert img.rgb.shape == (16, 17, 3) and img.alpha is None
    np.testing.assert_array_equal(img.rgb, np.repeat(_lin(grey)[..., None], 3, axis=2))


def test_png_grey_alpha_and_rgba_alpha_split(tmp_path):
    la = _noise(16, 18, 2, seed=3)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    img = load_image(tmp_path / "la.png")
    np.testing.assert_array_equal(img.rgb[..., 1], _lin(la[..., 0]))
    np.testing.assert_allclose(img.alpha, la[..., 1] / 255, atol=1e-7)  # alpha is linear, not sRGB

    rgba = _noise(16, 18, 4, seed=4)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    img = load_image(tmp_path / "rgba.png")
    assert img.rgb.shape == (16, 18, 3) and img.alpha.shape == (16, 18) and img.alpha.dtype == np.float32
    np.testing.assert_array_equal(img.rgb, _lin(rgba[..., :3]))
    np.testing.assert_allclose(img.alpha, rgba[..., 3] / 255, atol=1e-7)


def test_png_palette_with_and_without_transparency(tmp_path):
    pal = Image.fromarray(_blocks(16, 24)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    img = load_image(tmp_path / "p.png")
    np.testing.assert_array_equal(img.rgb, _lin(np.asarray(pal.convert("RGB"))))
    assert img.alpha is None

    index = np.asarray(pal)
    pal.save(tmp_path / "pt.png", transparency=int(index[0, 0]))
    img = load_image(tmp_path / "pt.png")
    np.testing.assert_array_equal(img.alpha, np.where(index == index[0, 0], 0.0, 1.0))


def test_png_1bit(tmp_path):
    bits = np.zeros((16, 16), bool)
    bits[:, 8:] = True
    Image.fromarray(bits).save(tmp_path / "b.png")
    img = load_image(tmp_path / "b.png")
    assert img.bit_depth == 8
    np.testing.assert_array_equal(img.rgb[:, :8], 0.0)
    np.testing.assert_array_equal(img.rgb[:, 8:], 1.0)


# --- EXIF orientation and focal length -----------------------------------------------------------------

# The transform that, applied to the upright image, gives what a camera stores with each tag.
_STORED = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # stored turned 90 ccw; the tag says "rotate 90 cw to view"
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def _save_oriented(path, upright, orientation, **kwargs):
    stored = Image.fromarray(upright)
    if _STORED[orientation] is not None:
        stored = stored.transpose(_STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, exif=exif.tobytes(), **kwargs)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation(tmp_path, orientation):
    upright = _blocks(32, 48)  # not square and no symmetry: every wrong layout is detectable
    path = tmp_path / f"o{orientation}.jpg"
    _save_oriented(path, upright, orientation, quality=100, subsampling=0)
    # the test's construction agrees with Pillow's own reading of the tag
    assert np.abs(np.asarray(ImageOps.exif_transpose(Image.open(path))).astype(int) - upright).max() < 8
    img = load_image(path)
    assert img.rgb.shape == (32, 48, 3) and img.original_size == (48, 32)
    assert np.abs(img.rgb - _lin(upright)).max() < 0.03
    assert np.abs(img.rgb[:, ::-1] - _lin(upright)).max() > 0.3  # a mirrored result would fail


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_png_and_tiff_orientation(tmp_path, suffix):
    upright = _blocks(16, 32)
    _save_oriented(tmp_path / f"a{suffix}", upright, 6)
    img = load_image(tmp_path / f"a{suffix}")
    np.testing.assert_array_equal(img.rgb, _lin(upright))


def test_exif_focal_35mm_gives_camera(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8769)[0xA405] = 28  # FocalLengthIn35mmFilm
    Image.fromarray(_blocks(48, 64)).save(tmp_path / "f.jpg", exif=exif.tobytes())
    img = load_image(tmp_path / "f.jpg")
    assert img.focal_35mm == 28.0
    cam = img.camera()
    assert (cam.width, cam.height) == (48, 64)  # after orientation 6
    f_px = 28.0 * math.hypot(48, 64) / FULL_FRAME_DIAGONAL_MM  # matched on the diagonal
    assert cam.fx == pytest.approx(f_px)
    assert cam.fov_x_deg == pytest.approx(math.degrees(2 * math.atan(24 / f_px)))
    assert img.camera(fov_x_deg=50.0).fov_x_deg == pytest.approx(50.0)  # explicit override wins


def test_exif_focal_from_focal_plane_resolution(tmp_path):
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    sub[0x920A] = 4.0  # FocalLength, mm
    sub[0xA20E] = sub[0xA20F] = 100.0  # FocalPlaneX/YResolution: pixels per cm
    sub[0xA210] = 3  # unit: cm -> a 64x48 image covers a 6.4 x 4.8 mm sensor, diagonal 8 mm
    Image.fromarray(_blocks(48, 64)).save(tmp_path / "f.jpg", exif=exif.tobytes())
    assert load_image(tmp_path / "f.jpg").focal_35mm == pytest.approx(4.0 * FULL_FRAME_DIAGONAL_MM / 8.0)


def test_no_exif_uses_default_fov(tmp_path):
    Image.fromarray(_blocks(48, 64)).save(tmp_path / "f.jpg")
    img = load_image(tmp_path / "f.jpg")
    assert img.focal_35mm is None
    assert img.camera().fov_x_deg == pytest.approx(60.0)


# --- WebP --------------------------------------------------------------------------------------------------


def test_webp_lossless_is_exact_with_alpha_and_orientation(tmp_path):
    codes = _noise(20, 30, c=4)
    Image.fromarray(codes).save(tmp_path / "a.webp", lossless=True, exact=True)  # exact: keeps RGB where alpha is 0
    img = load_image(tmp_path / "a.webp")
    assert img.bit_depth == 8 and img.original_size == (30, 20)
    np.testing.assert_array_equal(img.rgb, _lin(codes[..., :3]))
    np.testing.assert_array_equal(img.alpha, codes[..., 3] / np.float32(255))
    upright = _blocks(16, 32)
    _save_oriented(tmp_path / "o.webp", upright, 6, lossless=True)
    np.testing.assert_array_equal(load_image(tmp_path / "o.webp").rgb, _lin(upright))


def test_webp_lossy_and_first_frame_of_an_animation(tmp_path):
    upright = _blocks(32, 48)
    Image.fromarray(upright).save(tmp_path / "a.webp", quality=100)
    error = np.abs(load_image(tmp_path / "a.webp").rgb - _lin(upright))  # lossy: its colour is subsampled 2x2
    assert error.mean() < 0.04 and np.abs(_lin(upright)[:, ::-1] - _lin(upright)).mean() > 0.2
    first, second = Image.fromarray(upright), Image.fromarray(255 - upright)
    first.save(tmp_path / "anim.webp", save_all=True, append_images=[second], lossless=True)
    np.testing.assert_array_equal(load_image(tmp_path / "anim.webp").rgb, _lin(upright))


# --- TIFF, EXR, HDR --------------------------------------------------------------------------------------


def test_tiff_8_and_16_bit(tmp_path):
    codes8 = _noise(16, 20, seed=5)
    Image.fromarray(codes8).save(tmp_path / "a.tif")
    img = load_image(tmp_path / "a.tif")
    assert img.bit_depth == 8
    np.testing.assert_array_equal(img.rgb, _lin(codes8))

    codes16 = np.random.default_rng(6).integers(0, 65536, (16, 20, 3), dtype=np.uint16)
    codes16[0, 0] = (1000, 1001, 1002)
    cv2.imwrite(str(tmp_path / "b.tif"), codes16[..., ::-1])
    img = load_image(tmp_path / "b.tif")
    assert img.bit_depth == 16
    np.testing.assert_array_equal(img.rgb, _lin(codes16, 65535))


def test_exr_loaded_as_linear_values(tmp_path):
    hdr = np.random.default_rng(7).random((16, 24, 3)).astype(np.float32) * 5.0
    write_exr(tmp_path / "a.exr", hdr)
    img = load_image(tmp_path / "a.exr")
    assert img.bit_depth == 32 and img.alpha is None and img.original_size == (24, 16)
    np.testing.assert_array_equal(img.rgb, hdr)  # no sRGB curve, values above 1 kept
    write_exr(tmp_path / "y.exr", hdr[..., 0])
    np.testing.assert_array_equal(load_image(tmp_path / "y.exr").rgb, np.repeat(hdr[..., :1], 3, axis=2))


def test_hdr_round_trip(tmp_path):
    rgb = np.random.default_rng(8).random((20, 30, 3)).astype(np.float32) * 8.0 + 0.01
    cv2.imwrite(str(tmp_path / "a.hdr"), rgb[..., ::-1])
    img = load_image(tmp_path / "a.hdr")
    assert img.rgb.shape == (20, 30, 3) and img.bit_depth == 32
    # RGBE: 8-bit mantissas with one shared exponent, so the error scales with the pixel's largest channel
    assert np.all(np.abs(img.rgb - rgb) <= rgb.max(axis=2, keepdims=True) / 128)
    assert img.rgb.max() > 7.0


# --- limits ----------------------------------------------------------------------------------------------


def test_too_large_by_limit(tmp_path):
    Image.fromarray(_noise(40, 50)).save(tmp_path / "a.png")
    with pytest.raises(ImageTooLargeError) as info:
        load_image(tmp_path / "a.png", max_megapixels=0.001)
    assert str(info.value) == (f"{tmp_path / 'a.png'} is 50x40 = 0.002 megapixels, above the 0.001-megapixel "
                               f"limit: downscale it")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the 200-MP retry below
def test_too_large_png_refused_from_header(tmp_path):
    # the IHDR claims 12000x9000 but the data is for 16x16: decoding would fail, so this error proves
    # the refusal happened from the header alone
    _png_claiming(tmp_path / "big.png", 12000, 9000)
    with pytest.raises(ImageTooLargeError, match="12000x9000 = 108 megapixels, above the 64-megapixel"):
        load_image(tmp_path / "big.png")
    with pytest.raises(UnreadableImageError):
        load_image(tmp_path / "big.png", max_megapixels=200)


def test_decompression_bomb_becomes_too_large(tmp_path):
    _png_claiming(tmp_path / "bomb.png", 20000, 20000)  # above twice Pillow's own pixel limit
    with pytest.raises(ImageTooLargeError, match="decompression-bomb"):
        load_image(tmp_path / "bomb.png", max_megapixels=1000)


def test_too_large_exr_and_hdr_refused_from_header(tmp_path, exr_header_bytes):
    (tmp_path / "big.exr").write_bytes(exr_header_bytes(20000, 20000))  # header only, no pixels
    with pytest.raises(ImageTooLargeError, match="20000x20000 = 400 megapixels"):
        load_image(tmp_path / "big.exr")
    (tmp_path / "big.hdr").write_bytes(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 9000 +X 12000\n")
    with pytest.raises(ImageTooLargeError, match="12000x9000"):
        load_image(tmp_path / "big.hdr")


@pytest.mark.parametrize("size", [(15, 40), (40, 15)])
def test_too_small(tmp_path, size):
    Image.fromarray(_noise(size[1], size[0])).save(tmp_path / "s.png")
    with pytest.raises(ImageTooSmallError, match="16-pixel minimum"):
        load_image(tmp_path / "s.png")


def test_minimum_size_accepted(tmp_path):
    Image.fromarray(_noise(16, 16)).save(tmp_path / "s.png")
    assert load_image(tmp_path / "s.png").rgb.shape == (16, 16, 3)


# --- damaged and wrong files -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif", ".webp", ".png16", ".exr", ".hdr"])
def test_truncated_files(tmp_path, suffix):
    path = tmp_path / f"full{suffix}"
    noise = _noise(128, 160, seed=9)
    if suffix == ".png16":
        cv2.imwrite(str(path.with_suffix(".png")), noise.astype(np.uint16) * 257)
        path = path.with_suffix(".png")
    elif suffix == ".exr":
        write_exr(path, noise.astype(np.float32))
    elif suffix == ".hdr":
        cv2.imwrite(str(path), noise.astype(np.float32))
    else:
        Image.fromarray(noise).save(path)
    data = path.read_bytes()
    cut = tmp_path / f"cut{path.suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match=r"cut\.\w+ .*truncated or corrupt"):
        load_image(cut)


def test_header_cut_short(tmp_path):
    Image.fromarray(_noise(64, 64)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes((tmp_path / "a.png").read_bytes()[:20])
    with pytest.raises(UnreadableImageError):
        load_image(tmp_path / "b.png")


def test_text_and_video_named_png(tmp_path):
    (tmp_path / "notes.png").write_text("this is not a picture\n" * 10)
    with pytest.raises(UnsupportedImageError, match="notes.png"):
        load_image(tmp_path / "notes.png")
    video = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + bytes(range(256)) * 8
    (tmp_path / "clip.png").write_bytes(video)
    with pytest.raises(UnsupportedImageError, match=r"clip.png is a video \(MP4/MOV\), not a photo"):
        load_image(tmp_path / "clip.png")


@pytest.mark.parametrize("brand", [b"heic", b"mif1", b"avif"])
def test_phone_heif_and_avif_photos_are_named_in_the_error(tmp_path, brand):
    (tmp_path / "IMG_0001.jpg").write_bytes(b"\x00\x00\x00\x1cftyp" + brand + bytes(4) + b"mif1heic" + bytes(256))
    with pytest.raises(UnsupportedImageError, match="HEIC/HEIF or AVIF image .* convert it to JPEG or PNG"):
        load_image(tmp_path / "IMG_0001.jpg")


def test_unsupported_format(tmp_path):
    Image.fromarray(_noise(20, 20)).save(tmp_path / "a.png", format="GIF")
    with pytest.raises(UnsupportedImageError, match="GIF"):
        load_image(tmp_path / "a.png")


def test_missing_empty_and_folder(tmp_path):
    with pytest.raises(UnreadableImageError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(UnreadableImageError, match="empty"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(UnreadableImageError, match="folder"):
        load_image(tmp_path)


def test_errors_are_value_errors_with_one_line_messages(tmp_path):
    (tmp_path / "t.png").write_text("x\ny\n")
    for call in (lambda: load_image(tmp_path / "t.png"), lambda: load_image(tmp_path / "none.png")):
        with pytest.raises(ImageError) as info:
            call()
        assert isinstance(info.value, ValueError)
        assert "\n" not in str(info.value) and ": " in str(info.value)
    with pytest.raises(ValueError, match="max_megapixels"):
        load_image(tmp_path / "t.png", max_megapixels=0)


def test_exr_written_by_write_exr_loads_identically(tmp_path):
    # load_image and read_exr share one decoder
    rgb = np.random.default_rng(10).random((16, 16, 3)).astype(np.float32)
    write_exr(tmp_path / "a.exr", rgb)
    np.testing.assert_array_equal(load_image(tmp_path / "a.exr").rgb, read_exr(tmp_path / "a.exr"))


def test_image_signatures_are_those_of_the_files_load_image_reads(tmp_path):
    from invrender_core.io.images import has_image_signature

    codes = _noise(20, 24)
    paths = []
    for name, options in [("a.png", {}), ("a.jpg", {}), ("little_endian.tif", {}), ("a.webp", {"lossless": True})]:
        Image.fromarray(codes).save(tmp_path / name, **options)
        paths.append(tmp_path / name)
    Image.fromarray(codes[..., 0].astype(">u2")).save(tmp_path / "big_endian.tif")  # 16-bit big-endian: "MM"
    write_exr(tmp_path / "a.exr", np.ones((4, 4, 3), np.float32))
    cv2.imwrite(str(tmp_path / "a.hdr"), np.ones((4, 4, 3), np.float32))
    paths += [tmp_path / "big_endian.tif", tmp_path / "a.exr", tmp_path / "a.hdr"]
    heads = [p.read_bytes()[:64] for p in paths]
    assert all(has_image_signature(h) for h in heads)
    assert heads[2][:2] == b"II" and heads[4][:2] == b"MM"
    not_images = [b"\x00\x00\x00\x18ftypmp42", b"RIFF\x00\x00\x00\x00AVI LIST", b"hello, world", b"GIF89a"]
    assert not any(has_image_signature(h) for h in not_images)


def test_a_floating_point_tiff_is_named_as_a_tiff_with_what_to_use(tmp_path):
    path = tmp_path / "render.tif"
    cv2.imwrite(str(path), np.full((16, 16, 3), 2.5, np.float32))  # OpenCV writes 32-bit float samples
    with pytest.raises(UnsupportedImageError, match="render.tif is a TIFF of a kind that cannot be read.*EXR"):
        load_image(path)
