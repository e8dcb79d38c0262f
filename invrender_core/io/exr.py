"""OpenEXR reading and writing (float32, standard channel names) and a small header parser.

The header parser lets callers learn the size and channel names of an EXR without decoding pixels:
`load_image` uses it to refuse huge files first, and the tests use it to check the channel names
that `write_exr` produced.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._cv import cv2
from .errors import ImageWriteError, UnreadableImageError, UnsupportedImageError, one_line

EXR_MAGIC = 20000630
EXR_MAGIC_BYTES = struct.pack("<i", EXR_MAGIC)
_TILED_FLAG, _LONG_NAMES_FLAG, _DEEP_FLAG, _MULTIPART_FLAG = 0x200, 0x400, 0x800, 0x1000
_MAX_NAME_BYTES = 256  # 31 chars normally, 255 with the long-names flag, plus the terminating NUL
PIXEL_TYPE_NAMES = {0: "uint", 1: "half", 2: "float"}


@dataclass(frozen=True)
class ExrHeader:
    """What the first header of an EXR file says: data window size, channels, raw attributes."""

    width: int
    height: int
    channels: tuple[str, ...]  # in file order (EXR stores them sorted by name)
    pixel_types: tuple[int, ...]  # per channel: 0 uint, 1 half, 2 float
    multipart: bool = False
    deep: bool = False
    # attribute name -> (type name, raw little-endian value)
    attributes: dict[str, tuple[str, bytes]] = field(default_factory=dict, repr=False)


def _read_exact(f, n: int, path: Path, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise UnreadableImageError(f"{path} ends inside its EXR header ({what}): the file is truncated; "
                                   f"copy or export it again")
    return data


def _read_name(f, path: Path, what: str) -> str:
    out = bytearray()
    while True:
        b = _read_exact(f, 1, path, what)
        if b == b"\0":
            return out.decode("latin-1")
        out += b
        if len(out) >= _MAX_NAME_BYTES:
            raise UnreadableImageError(f"{path} has a corrupt EXR header (an unterminated {what}): "
                                       f"export it again")


def _parse_chlist(value: bytes, path: Path) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """chlist: per channel name\\0, int32 type, uint8 pLinear, 3 reserved, int32 x/y sampling; then \\0."""
    names, types, pos = [], [], 0
    while True:
        end = value.find(b"\0", pos)
        if end < 0:
            raise UnreadableImageError(f"{path} has a corrupt EXR channel list: export it again")
        if end == pos:  # empty name terminates the list
            return tuple(names), tuple(types)
        if end + 1 + 16 > len(value):
            raise UnreadableImageError(f"{path} has a corrupt EXR channel list: export it again")
        names.append(value[pos:end].decode("latin-1"))
        types.append(struct.unpack_from("<i", value, end + 1)[0])
        pos = end + 1 + 16


def read_exr_header(path) -> ExrHeader:
    """Parse the (first) header of an EXR file without touching pixel data.

    Layout: int32 magic 20000630, int32 version/flags, then attributes (name\\0 type\\0 int32 size,
    value) until an empty name. Raises UnreadableImageError for a missing/truncated/corrupt file and
    UnsupportedImageError when the file is not an EXR.
    """
    path = Path(path)
    try:
        f = open(path, "rb")  # closed by the `with` below; open errors get their own message
    except OSError as e:
        raise UnreadableImageError(f"{path} cannot be opened ({one_line(e.strerror or e)}): "
                                   f"check the path and permissions") from e
    with f:
        head = f.read(8)
        if len(head) < 4 or head[:4] != EXR_MAGIC_BYTES:
            raise UnsupportedImageError(f"{path} is not an OpenEXR file (no EXR magic number): "
                                        f"give an .exr file written by Blender, OpenCV or invrender")
        if len(head) < 8:
            raise UnreadableImageError(f"{path} ends inside its EXR header: the file is truncated; "
                                       f"copy or export it again")
        (version,) = struct.unpack("<i", head[4:8])
        if version & 0xFF != 2:
            raise UnsupportedImageError(f"{path} is OpenEXR version {version & 0xFF}, only version 2 is "
                                        f"supported: re-save it with a current tool")
        attributes: dict[str, tuple[str, bytes]] = {}
        while True:
            name = _read_name(f, path, "attribute name")
            if not name:
                break
            type_name = _read_name(f, path, "attribute type")
            (size,) = struct.unpack("<i", _read_exact(f, 4, path, f"size of {name}"))
            if size < 0:
                raise UnreadableImageError(f"{path} has a corrupt EXR header (attribute {name!r} has "
                                           f"size {size}): export it again")
            attributes[name] = (type_name, _read_exact(f, size, path, f"value of {name}"))

    if "dataWindow" not in attributes or len(attributes["dataWindow"][1]) != 16:
        raise UnreadableImageError(f"{path} has no valid dataWindow in its EXR header: export it again")
    x_min, y_min, x_max, y_max = struct.unpack("<4i", attributes["dataWindow"][1])
    width, height = x_max - x_min + 1, y_max - y_min + 1
    if width <= 0 or height <= 0:
        raise UnreadableImageError(f"{path} has an empty EXR dataWindow ({x_min},{y_min})-({x_max},{y_max}): "
                                   f"export it again")
    if "channels" not in attributes:
        raise UnreadableImageError(f"{path} has no channel list in its EXR header: export it again")
    channels, pixel_types = _parse_chlist(attributes["channels"][1], path)
    return ExrHeader(width, height, channels, pixel_types, multipart=bool(version & _MULTIPART_FLAG),
                     deep=bool(version & _DEEP_FLAG), attributes=attributes)


def cv_decode(path: Path, what: str = "") -> np.ndarray:
    """OpenCV decode with IMREAD_UNCHANGED (no orientation applied, 16-bit and float kept; BGR order)."""
    try:
        img = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except (OSError, cv2.error) as e:
        raise UnreadableImageError(f"{path} could not be decoded{what} ({one_line(e)}): the file may be "
                                   f"truncated or corrupt; export it again") from e
    if img is None:
        raise UnreadableImageError(f"{path} could not be decoded{what}: the file may be truncated or "
                                   f"corrupt; export it again")
    return img


def _decode_exr(path: Path, header: ExrHeader) -> np.ndarray:
    """Decode an EXR with standard channels -> float32 (H, W) for Y, (H, W, 3) RGB or (H, W, 4) RGBA."""
    if header.multipart or header.deep:
        kind = "multi-part (e.g. a Blender multilayer file)" if header.multipart else "deep"
        raise UnsupportedImageError(f"{path} is a {kind} EXR, which is not supported: save a single-layer "
                                    f"EXR with R,G,B or Y channels")
    names = set(header.channels)
    if not ({"R", "G", "B"} <= names or "Y" in names):
        raise UnsupportedImageError(f"{path} has EXR channels {list(header.channels)}, not R,G,B or Y: "
                                    f"save it with standard channel names")
    img = cv_decode(path, " as EXR")
    if img.shape[:2] != (header.height, header.width):
        raise UnreadableImageError(f"{path} decoded to {img.shape[1]}x{img.shape[0]} but its header says "
                                   f"{header.width}x{header.height}: export it again")
    img = img.astype(np.float32, copy=False)
    if img.ndim == 3 and img.shape[2] == 3:
        img = img[..., ::-1]  # OpenCV gives BGR
    elif img.ndim == 3 and img.shape[2] == 4:
        img = img[..., [2, 1, 0, 3]]  # BGRA -> RGBA
    elif img.ndim != 2:
        raise UnsupportedImageError(f"{path} decoded to an unexpected layout {img.shape}: save it with "
                                    f"R,G,B or Y channels")
    return np.ascontiguousarray(img)


def read_exr(path) -> np.ndarray:
    """Read an EXR -> float32 (H, W) for a Y-only file, (H, W, 3) RGB otherwise (alpha is dropped).

    Values are returned as stored (linear, may be outside [0, 1]); half channels become float32.
    """
    path = Path(path)
    img = _decode_exr(path, read_exr_header(path))
    if img.ndim == 3:
        img = np.ascontiguousarray(img[..., :3])
    return img


def write_exr(path, array) -> None:
    """Write a float32 EXR: (H, W) or (H, W, 1) -> channel "Y"; (H, W, 3) -> channels "R", "G", "B".

    Writes `path` only (whatever its suffix); callers wanting atomic replacement write to a temporary
    path and rename. Raises ValueError for other shapes and ImageWriteError if encoding/writing fails.
    """
    path = Path(path)
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise ValueError(f"write_exr needs shape (H, W), (H, W, 1) or (H, W, 3), got {np.shape(array)} "
                         f"for {path}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"write_exr needs a non-empty (H, W) or (H, W, 3) image, got shape {arr.shape} "
                         f"for {path}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
            or arr.dtype == np.bool_):
        raise ValueError(f"write_exr needs numeric data, got dtype {arr.dtype} for {path}")
    arr = arr.astype(np.float32)
    if arr.ndim == 3:
        arr = arr[..., ::-1]  # RGB -> BGR: OpenCV names the channels B, G, R from its own order
    arr = np.ascontiguousarray(arr)
    try:
        ok, buf = cv2.imencode(".exr", arr, [cv2.IMWRITE_EXR_TYPE, cv2.IMWRITE_EXR_TYPE_FLOAT])
    except cv2.error as e:
        raise ImageWriteError(f"could not encode {path} as EXR ({one_line(e)}): "
                              f"check free space in the temporary folder") from e
    if not ok:
        raise ImageWriteError(f"could not encode {path} as EXR: check free space in the temporary folder")
    try:
        path.write_bytes(buf.tobytes())
    except OSError as e:
        raise ImageWriteError(f"could not write {path} ({one_line(e.strerror or e)}): "
                              f"check that the folder exists and is writable") from e
