"""Shared helpers for the io tests."""

import struct

import pytest

FLOAT = 2  # EXR pixel type


def _exr_header_bytes(width, height, channels=("B", "G", "R")):
    """A valid scanline EXR header (no offset table, no pixels) claiming width x height."""

    def attr(name, type_name, value):
        return name.encode() + b"\0" + type_name.encode() + b"\0" + struct.pack("<i", len(value)) + value

    chlist = b"".join(c.encode() + b"\0" + struct.pack("<iB3xii", FLOAT, 0, 1, 1) for c in channels) + b"\0"
    box = struct.pack("<4i", 0, 0, width - 1, height - 1)
    return (struct.pack("<ii", 20000630, 2)
            + attr("channels", "chlist", chlist)
            + attr("compression", "compression", b"\0")
            + attr("dataWindow", "box2i", box)
            + attr("displayWindow", "box2i", box)
            + attr("lineOrder", "lineOrder", b"\0")
            + attr("pixelAspectRatio", "float", struct.pack("<f", 1.0))
            + attr("screenWindowCenter", "v2f", struct.pack("<ff", 0.0, 0.0))
            + attr("screenWindowWidth", "float", struct.pack("<f", 1.0))
            + b"\0")


@pytest.fixture
def exr_header_bytes():
    """Builder of forged EXR headers: exr_header_bytes(width, height, channels=("B", "G", "R")) -> bytes."""
    return _exr_header_bytes
