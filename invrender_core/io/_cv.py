"""OpenCV with its OpenEXR codec enabled.

OpenCV disables EXR unless this variable is set before cv2 is imported (a security default), so every
io module takes cv2 from here.
"""

import os

os.environ["OPENCV_IO_ENABLE_OPENEXR"] = "1"

import cv2  # noqa: E402

# Every caller turns OpenCV's failures (None from imdecode, a closed capture) into its own one-line error; OpenCV's
# log lines ("[ERROR:0@0.1] global imdecode_ ...") would print a second, unexplained line beside it.
cv2.setLogLevel(0)  # LOG_LEVEL_SILENT

__all__ = ["cv2"]
