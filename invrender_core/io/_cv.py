"""OpenCV with its OpenEXR codec enabled.

OpenCV disables EXR unless this variable is set before cv2 is imported (a security default), so every
io module takes cv2 from here.
"""

import os

os.environ["OPENCV_IO_ENABLE_OPENEXR"] = "1"

import cv2  # noqa: E402

__all__ = ["cv2"]
