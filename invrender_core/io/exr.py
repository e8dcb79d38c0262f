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


def _read_attributes(f, path: Path) -> dict[str, tuple[str, bytes]]:
    """One header: attributes (name\\0 type\\0 int32 size, value) until an empty name."""
    attributes: dict[str, tuple[str, bytes]] = {}
    while True:
        name = _read_name(f, path, "attribute name")
        if not name:
            return attributes
        type_name = _read_name(f, path, "attribute type")
        (size,) = struct.unpack("<i", _read_exact(f, 4, path, f"size of {name}"))
        if size < 0:
            raise UnreadableImageError(f"{path} has a corrupt EXR header (attribute {name!r} has "
                                       f"size {size}): export it again")
        attributes[name] = (type_name, _read_exact(f, size, path, f"value of {name}"))


def _header(attributes: dict[str, tuple[str, bytes]], version: int, path: Path) -> ExrHeader:
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


def read_exr_headers(path) -> tuple[list[ExrHeader], int]:
    """Parse every header of an EXR file without touching pixel data: (one header per part, the byte offset
    where the headers end and the offset tables begin).

    Layout: int32 magic 20000630, int32 version/flags, then one header (attributes until an empty name); a
    multi-part file (Blender 5.0's multilayer EXR) has one header per part and one more empty name after the
    last. Raises UnreadableImageError for a missing/truncated/corrupt file and UnsupportedImageError when the
    file is not an EXR.
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
        headers = [_header(_read_attributes(f, path), version, path)]
        while version & _MULTIPART_FLAG:
            if _read_exact(f, 1, path, "end of the part headers") == b"\0":
                break
            f.seek(-1, 1)
            headers.append(_header(_read_attributes(f, path), version, path))
        return headers, f.tell()


def read_exr_header(path) -> ExrHeader:
    """The (first) header of an EXR file (see read_exr_headers)."""
    return read_exr_headers(path)[0][0]


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

    PIZ compression (lossless wavelet): 27 % smaller than ZIPS at every size, and faster on large photos. The seven
    maps of a decomposition, encoded one after another: 24 MP 16-17 s and 620 MB against ZIPS's 31-34 s and 872 MB
    (ZIP 35 s and 806 MB, none 4.7 s and 1191 MB), 6 MP 5.9 s against 8.1 s, but 1 MP 1.5 s against 1.1 s.
    OpenCV, Blender and OpenEXR read it; `read_exr_channels` (for the layered files Blender renders) does not.
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
        ok, buf = cv2.imencode(".exr", arr, [cv2.IMWRITE_EXR_TYPE, cv2.IMWRITE_EXR_TYPE_FLOAT,
                                                cv2.IMWRITE_EXR_COMPRESSION, cv2.IMWRITE_EXR_COMPRESSION_PIZ])
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


# ----------------------------------------------------------------------------------------------------
# Multilayer EXR: every channel by name, in plain numpy (no OpenEXR package needed)
#
# A scanline file is: magic, version, header attributes, an offset table (one int64 file position per
# chunk), then chunks: int32 first row, int32 byte count, data. A chunk holds `lines` rows; each row holds
# every channel's `width` samples in the (sorted) channel-list order. ZIP data is zlib over the row bytes
# after two reversible steps: split into even- and odd-indexed bytes, then byte deltas (+128, mod 256).
# A chunk whose byte count equals its raw size is stored uncompressed (the writer keeps it smaller).

EXR_COMPRESSIONS = {0: ("none", 1), 2: ("zips", 1), 3: ("zip", 16)}  # id: (name, rows per chunk)
_PIXEL_DTYPES = {0: np.dtype("<u4"), 1: np.dtype("<f2"), 2: np.dtype("<f4")}


def _channel_samplings(value: bytes) -> list[tuple[int, int]]:
    """(x, y) sampling of each channel of a chlist (see _parse_chlist for the layout)."""
    out, pos = [], 0
    while value[pos:pos + 1] not in (b"\0", b""):
        end = value.index(b"\0", pos)
        out.append(struct.unpack_from("<2i", value, end + 1 + 8))
        pos = end + 1 + 16
    return out


def _zip_decode(data: bytes, size: int, path: Path) -> np.ndarray:
    import zlib

    try:
        raw = np.frombuffer(zlib.decompress(data), dtype=np.uint8)
    except zlib.error as e:
        raise UnreadableImageError(f"{path} has corrupt ZIP data ({one_line(e)}): export it again") from e
    if raw.size != size:
        raise UnreadableImageError(f"{path} has a ZIP chunk of {raw.size} bytes instead of {size}: export it again")
    deltas = raw.copy()
    deltas[1:] -= 128  # uint8 arithmetic wraps: mod 256, as the format wants
    mixed = np.cumsum(deltas, dtype=np.uint8)
    out = np.empty_like(mixed)
    half = (size + 1) // 2
    out[0::2], out[1::2] = mixed[:half], mixed[half:]
    return out


def _zip_encode(raw: np.ndarray) -> bytes:
    import zlib

    half = (raw.size + 1) // 2
    mixed = np.empty_like(raw)
    mixed[:half], mixed[half:] = raw[0::2], raw[1::2]
    deltas = np.empty_like(raw)
    deltas[0] = mixed[0]
    deltas[1:] = mixed[1:] - mixed[:-1] + np.uint8(128)  # uint8 arithmetic wraps: mod 256
    return zlib.compress(deltas.tobytes())


def read_exr_channels(path) -> dict[str, np.ndarray]:
    """Every channel of a scanline EXR -> {channel name: (H, W) array}, row 0 = top.

    Reads what Blender writes as multilayer EXR ("ViewLayer.Depth.Z", ...; Blender 5.0 writes it as one part per
    pass) as well as plain files, with no compression, ZIPS or ZIP; half and float channels come back as
    float32, uint channels as uint32. Raises UnsupportedImageError for tiled, deep, subsampled or otherwise
    compressed files and UnreadableImageError for truncated or corrupt ones.
    """
    path = Path(path)
    headers, table = read_exr_headers(path)
    multipart = headers[0].multipart
    chunk_counts = [_check_readable(header, path) for header in headers]
    data = np.fromfile(path, dtype=np.uint8)
    first_chunk = table + 8 * sum(chunk_counts)
    if data.size < first_chunk:
        raise UnreadableImageError(f"{path} ends inside its EXR offset table: the file is truncated; export it "
                                   f"again")
    out: dict[str, np.ndarray] = {}
    for part, (header, chunks) in enumerate(zip(headers, chunk_counts, strict=True)):
        offsets = np.frombuffer(data[table:table + 8 * chunks].tobytes(), dtype="<i8")
        table += 8 * chunks
        out.update(_read_part(data, path, header, offsets, first_chunk, part if multipart else None))
    return out


def _check_readable(header: ExrHeader, path: Path) -> int:
    """Refuse what read_exr_channels does not read (one-line errors); return the part's chunk count."""
    part_type = header.attributes.get("type", ("", b"scanlineimage"))[1].rstrip(b"\0")
    if header.deep or "tiles" in header.attributes or part_type != b"scanlineimage":
        kind = "deep" if header.deep or part_type.startswith(b"deep") else "tiled"
        raise UnsupportedImageError(f"{path} is a {kind} EXR, which read_exr_channels does not read: re-save it "
                                    f"as a scanline EXR")
    compression = header.attributes.get("compression", ("", b"\0"))[1]
    code = compression[0] if len(compression) == 1 else -1
    if code not in EXR_COMPRESSIONS:
        raise UnsupportedImageError(f"{path} uses EXR compression {code}, which read_exr_channels does not read: "
                                    f"re-save it with ZIP or no compression")
    if any(s != (1, 1) for s in _channel_samplings(header.attributes["channels"][1])):
        raise UnsupportedImageError(f"{path} has subsampled EXR channels: re-save it at full resolution")
    if any(t not in _PIXEL_DTYPES for t in header.pixel_types):
        raise UnsupportedImageError(f"{path} has unknown EXR pixel types {header.pixel_types}: export it again")
    chunks = -(-header.height // EXR_COMPRESSIONS[code][1])
    if header.multipart:  # a multi-part header must say it, and it must agree
        count = header.attributes.get("chunkCount", ("", b""))[1]
        if len(count) != 4 or struct.unpack("<i", count)[0] != chunks:
            raise UnreadableImageError(f"{path} has a missing or wrong chunkCount in a part header: export it "
                                       f"again")
    return chunks


def _read_part(data: np.ndarray, path: Path, header: ExrHeader, offsets: np.ndarray, first_chunk: int,
               part: int | None) -> dict[str, np.ndarray]:
    """The channels of one scanline part from the file's bytes; offsets: its offset table; part: its number in a
    multi-part file (each chunk then starts with it), None in a single-part one."""
    width, height = header.width, header.height
    code = header.attributes.get("compression", ("", b"\0"))[1][0]
    y_min = struct.unpack("<4i", header.attributes["dataWindow"][1])[1]
    lines = EXR_COMPRESSIONS[code][1]
    # One row of one chunk: each channel's samples one after the other (fields named by index: any name works).
    row = np.dtype([(f"c{i}", _PIXEL_DTYPES[t], (width,)) for i, t in enumerate(header.pixel_types)])
    out = {name: np.empty((height, width), _PIXEL_DTYPES[t] if t == 0 else np.float32)
           for name, t in zip(header.channels, header.pixel_types, strict=True)}
    prefix = 0 if part is None else 4
    for offset in offsets:
        if not first_chunk <= offset <= data.size - 8 - prefix:
            raise UnreadableImageError(f"{path} has an EXR chunk outside the file: the file is truncated or "
                                       f"corrupt; export it again")
        if part is not None and struct.unpack("<i", data[offset:offset + 4].tobytes())[0] != part:
            raise UnreadableImageError(f"{path} has an EXR chunk filed under the wrong part: the file is corrupt; "
                                       f"export it again")
        offset += prefix
        y, size = struct.unpack("<2i", data[offset:offset + 8].tobytes())
        first = y - y_min
        n = min(lines, height - first)
        if first < 0 or first % lines or n <= 0 or size < 0 or offset + 8 + size > data.size:
            raise UnreadableImageError(f"{path} has a corrupt EXR chunk (row {y}, {size} bytes): the file is "
                                       f"truncated or corrupt; export it again")
        raw = data[offset + 8:offset + 8 + size]
        if code != 0 and size != n * row.itemsize:  # a chunk that did not shrink is stored as it is
            raw = _zip_decode(raw.tobytes(), n * row.itemsize, path)
        if raw.size != n * row.itemsize:
            raise UnreadableImageError(f"{path} has an EXR chunk of {raw.size} bytes instead of "
                                       f"{n * row.itemsize}: export it again")
        rows = np.frombuffer(raw.tobytes(), dtype=row)  # (n,) records of (width,) samples per channel
        for i, name in enumerate(header.channels):
            out[name][first:first + n] = rows[f"c{i}"]
    return out


def write_exr_channels(path, channels: dict[str, np.ndarray], compression: str = "zip",
                       metadata: dict[str, str] | None = None) -> None:
    """Write a single-part scanline float32 EXR with one channel per entry of `channels` {name: (H, W)}.

    Layered names ("albedo.R", "depth.Z") make a multilayer file that Blender, Nuke and read_exr_channels
    read by layer; plain "R", "G", "B", "A" are the default layer. compression: "zip" (16-row chunks) or
    "none"; metadata: extra string attributes for the header. Writes `path` only (any suffix): callers that
    want atomic replacement write a temporary name and rename. ValueError for bad shapes or names,
    ImageWriteError when the file cannot be written.
    """
    path = Path(path)
    if compression not in ("zip", "none"):
        raise ValueError(f"write_exr_channels compression must be 'zip' or 'none', got {compression!r}")
    if not channels:
        raise ValueError(f"write_exr_channels needs at least one channel for {path}")
    shapes = {name: np.shape(a) for name, a in channels.items()}
    shape = next(iter(shapes.values()))
    if len(shape) != 2 or 0 in shape or any(s != shape for s in shapes.values()):
        raise ValueError(f"write_exr_channels needs channels of one non-empty (H, W) shape, got {shapes} for "
                         f"{path}")
    for name in [*channels, *(metadata or {})]:
        if not (0 < len(name) < _MAX_NAME_BYTES and "\0" not in name and name.isascii()):
            raise ValueError(f"EXR channel and attribute names must be 1 to 255 ASCII characters without NUL, "
                             f"got {name!r}")
    height, width = shape
    names = sorted(channels)  # EXR lists channels sorted by name (bytes; ASCII sorts the same)
    code, lines = (3, 16) if compression == "zip" else (0, 1)

    def attribute(name: str, type_name: str, value: bytes) -> bytes:
        return (name.encode("latin-1") + b"\0" + type_name.encode("latin-1") + b"\0"
                + struct.pack("<i", len(value)) + value)

    chlist = b"".join(n.encode("latin-1") + b"\0" + struct.pack("<iB3x2i", 2, 0, 1, 1) for n in names) + b"\0"
    window = struct.pack("<4i", 0, 0, width - 1, height - 1)
    attributes = [("channels", "chlist", chlist), ("compression", "compression", bytes([code])),
                  ("dataWindow", "box2i", window), ("displayWindow", "box2i", window),
                  ("lineOrder", "lineOrder", b"\0"), ("pixelAspectRatio", "float", struct.pack("<f", 1.0)),
                  ("screenWindowCenter", "v2f", struct.pack("<2f", 0.0, 0.0)),
                  ("screenWindowWidth", "float", struct.pack("<f", 1.0))]
    attributes += [(k, "string", v.encode("utf-8")) for k, v in sorted((metadata or {}).items())]
    long_names = any(len(n) > 31 for n in names + [a[0] for a in attributes])
    header = struct.pack("<2i", EXR_MAGIC, 2 | (_LONG_NAMES_FLAG if long_names else 0))
    header += b"".join(attribute(*a) for a in attributes) + b"\0"
    # (H, C, W) float32 little-endian: each row holds every channel's samples in the sorted order.
    pixels = np.stack([np.asarray(channels[n], dtype="<f4") for n in names], axis=1)
    chunks, position = [], len(header) + 8 * (-(-height // lines))
    for first in range(0, height, lines):
        raw = np.frombuffer(np.ascontiguousarray(pixels[first:first + lines]).tobytes(), dtype=np.uint8)
        data = raw.tobytes()
        if code == 3:
            packed = _zip_encode(raw)
            data = packed if len(packed) < len(data) else data
        chunks.append(struct.pack("<2i", first, len(data)) + data)
    offsets = np.cumsum([position] + [len(c) for c in chunks[:-1]]).astype("<i8")
    try:
        with open(path, "wb") as f:
            f.write(header)
            f.write(offsets.tobytes())
            for chunk in chunks:
                f.write(chunk)
    except OSError as e:
        raise ImageWriteError(f"could not write {path} ({one_line(e.strerror or e)}): "
                              f"check that the folder exists and is writable") from e
