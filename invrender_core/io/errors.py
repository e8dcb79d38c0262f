"""Errors raised by image input/output.

Every message is one line that names the file and says what to do, because the add-on shows it as
a single status-bar report and the CLI prints it as one line.
"""

from __future__ import annotations


class ImageError(ValueError):
    """Base class: an input image that cannot be used."""


class UnreadableImageError(ImageError):
    """Missing file, or truncated/corrupt data."""


class UnsupportedImageError(ImageError):
    """Not an image, or an image format/pixel layout this package does not read."""


class ImageTooLargeError(ImageError):
    """More pixels than the allowed limit (refused from the header, before decoding)."""


class ImageTooSmallError(ImageError):
    """Width or height below the minimum side."""


class ImageWriteError(OSError):
    """An image could not be encoded or written (an OSError: the target is what failed)."""


def one_line(text: object) -> str:
    """Collapse a library message onto one line so that reports stay single-line."""
    return " ".join(str(text).split())
