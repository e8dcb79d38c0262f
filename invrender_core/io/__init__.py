"""Image, EXR and colour input/output for the InvRender core (never imports bpy).

Inside the core, images are float32 (H, W, 3) linear RGB; sRGB exists only at this boundary.
"""

from ._cv import cv2  # noqa: F401 - first, so OpenCV's EXR codec is enabled before anyone uses cv2
from .colour import linear_to_srgb, srgb_to_linear
from .errors import (
    ImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    ImageWriteError,
    UnreadableImageError,
    UnsupportedImageError,
)
from .exr import ExrHeader, read_exr, read_exr_channels, read_exr_header, write_exr, write_exr_channels
from .images import (
    DEFAULT_MAX_MEGAPIXELS,
    MIN_SIDE,
    LoadedImage,
    load_image,
    resize_linear,
    save_preview_sheet,
    srgb_lut,
    write_png,
)

__all__ = [
    "DEFAULT_MAX_MEGAPIXELS",
    "MIN_SIDE",
    "ExrHeader",
    "ImageError",
    "ImageTooLargeError",
    "ImageTooSmallError",
    "ImageWriteError",
    "LoadedImage",
    "UnreadableImageError",
    "UnsupportedImageError",
    "linear_to_srgb",
    "load_image",
    "read_exr",
    "read_exr_channels",
    "read_exr_header",
    "resize_linear",
    "save_preview_sheet",
    "srgb_lut",
    "srgb_to_linear",
    "write_exr",
    "write_exr_channels",
    "write_png",
]
